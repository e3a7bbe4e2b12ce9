"""The observation rules, in one place for Policy, OnnxPolicy and ObsEncoder: every key, each value a history
[B, To, ...] (or an unbatched [To, ...] at the policy's input), one batch size, images uint8, low-dim values real
and finite as float32. Every input error names the key and what was expected."""
from __future__ import annotations

from collections import deque
from typing import Any, Mapping

import numpy as np
import torch
from torch import Tensor


def check_keys(obs: Any, obs_meta: Mapping[str, Mapping]) -> None:
    """obs must be a dict holding every observation key."""
    if not isinstance(obs, Mapping):
        raise ValueError(f"obs must be a dict with keys {sorted(obs_meta)}, got {type(obs).__name__}")
    missing = [k for k in obs_meta if k not in obs]
    if missing:
        raise ValueError(f"obs is missing key(s) {missing}; expected keys {sorted(obs_meta)}")


def check_layout(obs: Mapping[str, np.ndarray | Tensor], obs_meta: Mapping[str, Mapping], n_obs_steps: int,
                 batched_only: bool = False) -> bool:
    """Keys, shapes, dtypes and batch sizes of a history (numpy or torch, nothing copied); returns whether it is
    batched. batched_only refuses unbatched [To, ...] values (the encoder's input)."""
    check_keys(obs, obs_meta)
    batched, sizes = None, {}
    for key, meta in obs_meta.items():
        value = obs[key]
        item = (n_obs_steps, *meta["shape"])  # rgb shapes are [H, W, 3], as stored
        is_batched = tuple(value.shape[1:]) == item
        if not is_batched and (batched_only or tuple(value.shape) != item):
            expected = f"(B, {', '.join(map(str, item))})" + ("" if batched_only else f" or {item}")
            raise ValueError(f"obs[{key!r}] has shape {tuple(value.shape)}; expected {expected}")
        if batched is not None and is_batched != batched:
            raise ValueError(f"obs[{key!r}] is {'' if is_batched else 'not '}batched while other keys are {'' if batched else 'not '}")
        batched, sizes[key] = is_batched, len(value) if is_batched else 1
        if meta.get("type") == "rgb":
            if not _is_uint8(value.dtype):
                raise ValueError(f"obs[{key!r}] is an image and must be uint8 [.., H, W, 3] (0-255), got {value.dtype}")
        elif not _is_real(value.dtype):
            raise ValueError(f"obs[{key!r}] has dtype {value.dtype}; low-dim observations must be real numbers (cast to float32)")
    if len(set(sizes.values())) > 1 or 0 in sizes.values():
        raise ValueError(f"obs needs the same batch size B >= 1 for every key, got {sizes}")
    return bool(batched)


def finite_float32(key: str, value: np.ndarray) -> np.ndarray:
    """A low-dim value as float32 (no copy when it already is), refused when NaN or infinite after the cast."""
    with np.errstate(over="ignore"):
        value = value.astype(np.float32, copy=False)
    if not np.isfinite(value).all():  # after the cast: 1e300 becomes inf
        raise ValueError(f"obs[{key!r}] contains NaN or infinite values (or values beyond float32's 3.4e38)")
    return value


def check_obs_history(obs: Mapping[str, np.ndarray | Tensor], obs_meta: Mapping[str, Mapping], n_obs_steps: int,
                      ) -> tuple[dict[str, np.ndarray], bool, bool]:
    """predict_action's input rules (check_layout, then finite low-dim values). Returns (batched numpy arrays with
    low-dim as float32, whether the input was batched, whether it was numpy)."""
    check_keys(obs, obs_meta)
    as_numpy = not isinstance(next(iter(obs.values())), Tensor)
    arrays = {k: np.asarray(obs[k].detach().cpu() if isinstance(obs[k], Tensor) else obs[k]) for k in obs_meta}
    batched = check_layout(arrays, obs_meta, n_obs_steps)
    for key, meta in obs_meta.items():
        value = arrays[key] if meta.get("type") == "rgb" else finite_float32(key, arrays[key])
        arrays[key] = value if batched else value[None]
    return arrays, batched, as_numpy


def check_frame(obs: Mapping[str, np.ndarray | Tensor], obs_meta: Mapping[str, Mapping]) -> dict[str, np.ndarray]:
    """One observation of a step(obs) loop: every key, each value one frame of its shape, under predict_action's rules."""
    check_keys(obs, obs_meta)
    frame = {}
    for key, meta in obs_meta.items():
        value = obs[key]
        value = np.asarray(value.cpu() if isinstance(value, Tensor) else value)
        shape = tuple(meta["shape"])
        if value.shape != shape:
            history = value.ndim > len(shape) and value.shape[value.ndim - len(shape):] == shape
            raise ValueError(f"obs[{key!r}] has shape {value.shape}; step(obs) takes one frame of shape {shape}" +
                             ("; pass histories [To, ...] or [B, To, ...] to predict_action" if history else ""))
        frame[key] = value[None]  # a one-step history
    arrays, _, _ = check_obs_history(frame, obs_meta, n_obs_steps=1)
    return {k: v[0, 0] for k, v in arrays.items()}


class ObsHistory:
    """The last n_obs_steps observations of a step(obs) loop, each checked as it comes, as predict_action's history."""

    def __init__(self, obs_meta: Mapping[str, Mapping], n_obs_steps: int) -> None:
        self.obs_meta, self.n_obs_steps = obs_meta, n_obs_steps
        self.frames: deque[dict[str, np.ndarray]] = deque(maxlen=n_obs_steps)

    def clear(self) -> None:
        """Forget every observation (start of an episode)."""
        self.frames.clear()

    def append(self, obs: Mapping[str, np.ndarray | Tensor]) -> None:
        """Check one observation (a frame per key) and keep it, dropping the oldest beyond n_obs_steps."""
        self.frames.append(check_frame(obs, self.obs_meta))

    def stacked(self) -> dict[str, np.ndarray]:
        """{key: [To, ...]}, the first observation repeated until there are To (padded like the dataset)."""
        frames = list(self.frames)
        frames = [frames[0]] * (self.n_obs_steps - len(frames)) + frames
        return {k: np.stack([f[k] for f in frames]) for k in self.obs_meta}


def _is_uint8(dtype: np.dtype | torch.dtype) -> bool:
    return dtype == torch.uint8 if isinstance(dtype, torch.dtype) else dtype == np.uint8


def _is_real(dtype: np.dtype | torch.dtype) -> bool:
    """Booleans, integers and floats (not complex numbers, strings or objects)."""
    if isinstance(dtype, torch.dtype):
        return not dtype.is_complex
    return dtype == np.bool_ or np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)
