"""Per-key min-max normalisation to [-1, 1], fitted on the dataset and saved with the policy."""
from __future__ import annotations

from typing import Mapping

import numpy as np
import torch
from torch import Tensor, nn

# (ParameterDict names cannot hold '.', so entries are named '<key>__scale' and '<key>__offset'.)
# A dimension whose range is below this is constant in the data: it maps to 0 instead of dividing by ~0.
MIN_RANGE = 1e-4


class Normalizer(nn.Module):
    """Holds scale/offset buffers per key (so they move with .to() and live in the state dict)."""

    def __init__(self) -> None:
        super().__init__()
        self.stats = nn.ParameterDict()

    @property
    def keys(self) -> list[str]:
        return sorted({k.rsplit("__", 1)[0] for k in self.stats})

    @property
    def device(self) -> torch.device:
        return next(iter(self.stats.values())).device if len(self.stats) else torch.device("cpu")

    def fit(self, data: Mapping[str, np.ndarray | Tensor]) -> None:
        """Fit each key on its [N, ...] array: x_n = (x - offset) * scale, with min -> -1 and max -> 1."""
        for key, values in data.items():
            values = torch.as_tensor(np.asarray(values), dtype=torch.float32).flatten(0, -2)
            if not torch.isfinite(values).all():
                raise ValueError(f"normalizer data for {key!r} contains NaN or infinite values; clean the dataset")
            lo, hi = values.min(0).values, values.max(0).values
            span = hi - lo
            constant = span < MIN_RANGE
            scale = torch.where(constant, torch.ones_like(span), 2.0 / span.clamp_min(MIN_RANGE))
            offset = torch.where(constant, lo, lo + span / 2)
            self.stats[f"{key}__scale"] = nn.Parameter(scale, requires_grad=False)
            self.stats[f"{key}__offset"] = nn.Parameter(offset, requires_grad=False)

    def _get(self, key: str) -> tuple[Tensor, Tensor] | None:
        if not len(self.stats):
            raise RuntimeError("Normalizer is not fitted: call fit() on the dataset (or load a saved policy)")
        if f"{key}__scale" not in self.stats:
            return None
        return self.stats[f"{key}__scale"], self.stats[f"{key}__offset"]

    def normalize(self, key: str, x: Tensor) -> Tensor:
        """Env units -> [-1, 1]; keys that were not fitted (images) pass through unchanged."""
        stats = self._get(key)
        return x if stats is None else (x - stats[1]) * stats[0]

    def unnormalize(self, key: str, x: Tensor) -> Tensor:
        """[-1, 1] -> env units."""
        stats = self._get(key)
        return x if stats is None else x / stats[0] + stats[1]

    def normalize_dict(self, obs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {k: self.normalize(k, v) for k, v in obs.items()}

    def load_state_dict(self, state_dict: Mapping[str, Tensor], strict: bool = True, assign: bool = False):  # type: ignore[override]
        """Recreate the per-key entries first, so a fresh Normalizer loads saved stats."""
        for name, value in state_dict.items():
            self.stats[name.removeprefix("stats.")] = nn.Parameter(value.clone(), requires_grad=False)
        return super().load_state_dict(state_dict, strict, assign)
