"""Windows of `horizon` steps over episodes with Diffusion Policy's edge padding.

An episode of length L yields the windows starting at -pad_before ... L - horizon + pad_after; steps
outside the episode repeat its first or last step, so the first observations and the last actions
are trained on. Windows are precomputed as absolute step indices, so a batch is one fancy index.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np


class SequenceSampler:
    """`indices[w]` are the `horizon` buffer steps of window w (already clamped to its episode's edges)."""

    def __init__(self, episode_ends: np.ndarray, horizon: int, pad_before: int = 0, pad_after: int = 0,
                 episodes: Sequence[int] | np.ndarray | None = None) -> None:
        if horizon < 1 or pad_before < 0 or pad_after < 0:
            raise ValueError(f"need horizon >= 1 and non-negative padding, got horizon={horizon}, "
                             f"pad_before={pad_before}, pad_after={pad_after}")
        episode_ends = np.asarray(episode_ends, dtype=np.int64)
        episodes = np.arange(len(episode_ends)) if episodes is None else np.asarray(episodes, dtype=np.int64)
        starts = np.concatenate([[0], episode_ends[:-1]])
        windows = [np.zeros((0, horizon), dtype=np.int64)]
        for i in episodes:
            start, length = int(starts[i]), int(episode_ends[i] - starts[i])
            first = np.arange(-pad_before, length - horizon + pad_after + 1)  # empty for too-short episodes, as in DP
            offsets = np.clip(first[:, None] + np.arange(horizon)[None, :], 0, length - 1)
            windows.append(start + offsets)
        self.indices = np.concatenate(windows)
        self.horizon = horizon

    def __len__(self) -> int:
        return len(self.indices)

    def sample(self, data: Mapping[str, np.ndarray], windows: np.ndarray,
               n_steps: Mapping[str, int] | None = None) -> dict[str, np.ndarray]:
        """{key: data[key] at windows' steps} -> [B, n, ...], with n = n_steps[key] first steps (default all)."""
        steps = self.indices[np.asarray(windows)]
        n_steps = n_steps or {}
        return {key: np.take(data[key], steps[:, : n_steps.get(key, self.horizon)], axis=0) for key in data}
