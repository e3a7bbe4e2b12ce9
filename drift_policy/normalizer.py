"""Per-key min-max normalisation to [-1, 1], fitted on the dataset and saved with the policy."""
from __future__ import annotations

from typing import Mapping

import numpy as np
import torch
from torch import Tensor, nn

# A dimension whose range is below this is constant in the data: it maps to 0 instead of dividing by ~0.
MIN_RANGE = 1e-4
SCALE, OFFSET = "__scale", "__offset"  # buffer names are <key>__scale and <key>__offset


class Normalizer(nn.Module):
    """x_n = (x - offset) * scale per key and dimension, held in buffers (they follow .to() and the state dict,
    but are not parameters); keys that were never fitted, such as RGB images, pass through unchanged."""

    @property
    def keys(self) -> list[str]:
        return sorted(name.removesuffix(SCALE) for name, _ in self.named_buffers() if name.endswith(SCALE))

    @property
    def device(self) -> torch.device:
        buffer = next(self.buffers(), None)
        return torch.device("cpu") if buffer is None else buffer.device

    def fit(self, data: Mapping[str, np.ndarray | Tensor]) -> None:
        """Fit each key on its [N, ...] samples, per dimension over N: min -> -1, max -> 1."""
        for key, values in data.items():
            if "." in key or not key:
                raise ValueError(f"normalizer keys must be non-empty and free of '.', got {key!r}")
            values = torch.as_tensor(np.asarray(values), dtype=torch.float64)
            if values.ndim < 1 or len(values) == 0:
                raise ValueError(f"normalizer data for {key!r} must be [N, ...] with N >= 1, got shape {tuple(values.shape)}")
            if not torch.isfinite(values).all():
                raise ValueError(f"normalizer data for {key!r} contains NaN or infinite values; clean the dataset")
            lo, hi = values.amin(0), values.amax(0)
            span = hi - lo
            constant = span < MIN_RANGE
            scale = torch.where(constant, torch.ones_like(span), 2.0 / span.clamp_min(MIN_RANGE))
            offset = torch.where(constant, lo, (lo + hi) / 2)
            self.register_buffer(key + SCALE, scale.float().to(self.device))
            self.register_buffer(key + OFFSET, offset.float().to(self.device))

    def _stats(self, key: str) -> tuple[Tensor, Tensor] | None:
        if not self._buffers:
            raise RuntimeError("Normalizer is not fitted: call fit() on the dataset's normalizer_data() "
                               "(or load a saved policy) before normalising")
        if key + SCALE not in self._buffers:
            return None
        return self._buffers[key + SCALE], self._buffers[key + OFFSET]

    def normalize(self, key: str, x: Tensor | np.ndarray) -> Tensor:
        """Env units -> [-1, 1] on the fitted range; keys that were not fitted come back unchanged."""
        stats = self._stats(key)
        x = self._as_tensor(x)
        return x if stats is None else (x - stats[1]) * stats[0]

    def unnormalize(self, key: str, x: Tensor | np.ndarray) -> Tensor:
        """[-1, 1] -> env units; keys that were not fitted come back unchanged."""
        stats = self._stats(key)
        x = self._as_tensor(x)
        return x if stats is None else x / stats[0] + stats[1]

    def normalize_dict(self, obs: Mapping[str, Tensor | np.ndarray]) -> dict[str, Tensor]:
        """normalize() applied to every entry of an observation dict."""
        return {k: self.normalize(k, v) for k, v in obs.items()}

    def unnormalize_dict(self, obs: Mapping[str, Tensor | np.ndarray]) -> dict[str, Tensor]:
        """unnormalize() applied to every entry of a dict."""
        return {k: self.unnormalize(k, v) for k, v in obs.items()}

    def load_state_dict(self, state_dict: Mapping[str, Tensor], strict: bool = True, assign: bool = False):  # type: ignore[override]
        """Create the saved keys' buffers first, so a fresh Normalizer loads saved statistics."""
        bad = [name for name in state_dict if not name.endswith((SCALE, OFFSET))]
        if bad:
            raise ValueError(f"not a Normalizer state dict: unexpected entries {bad[:5]} (expected <key>{SCALE} / <key>{OFFSET})")
        for name, value in state_dict.items():
            self.register_buffer(name, torch.empty_like(value, device=self.device))
        return super().load_state_dict(state_dict, strict, assign)

    def _as_tensor(self, x: Tensor | np.ndarray) -> Tensor:
        return x if isinstance(x, Tensor) else torch.as_tensor(x, device=self.device)
