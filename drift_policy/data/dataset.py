"""Training samples {"obs": {key: [To, ...]}, "action": [T, Da]} from a replay buffer, split by episode."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from drift_policy.data.replay_buffer import ReplayBuffer
from drift_policy.data.sampler import SequenceSampler

SPLITS = ("train", "val")


def split_episodes(n_episodes: int, val_ratio: float, max_train_episodes: int | None,
                   seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint sorted (train, val) episode ids, deterministic in seed (Diffusion Policy's rule: at least one
    validation episode when val_ratio > 0, at least one training episode; max_train_episodes subsamples)."""
    if not 0 <= val_ratio < 1:
        raise ValueError(f"val_ratio must be in [0, 1), got {val_ratio}")
    if max_train_episodes is not None and max_train_episodes < 1:
        raise ValueError(f"max_train_episodes must be >= 1 or None, got {max_train_episodes}")
    n_val = 0 if val_ratio == 0 else min(max(1, round(n_episodes * val_ratio)), n_episodes - 1)
    order = np.random.default_rng(seed).permutation(n_episodes)
    val, train = order[:n_val], order[n_val:]
    return np.sort(train[:max_train_episodes]), np.sort(val)


class PolicyDataset(Dataset):
    """Sequence windows over the episodes of one split; `get_batch` gathers many at once (the fast path)."""

    def __init__(self, buffer: ReplayBuffer, obs_keys: Sequence[str], horizon: int, n_obs_steps: int,
                 n_action_steps: int, val_ratio: float = 0.02, max_train_episodes: int | None = None,
                 seed: int = 42, split: str = "train") -> None:
        missing = [k for k in [*obs_keys, "action"] if k not in buffer.data]
        if missing:
            raise ValueError(f"the replay buffer has no {missing}; it has {sorted(buffer.data)}. "
                             "Make the task's shape_meta keys match its dataset reader")
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        for key in [*obs_keys, "action"]:
            values = buffer.data[key]
            if np.issubdtype(values.dtype, np.floating) and not np.isfinite(values).all():
                step = int(np.flatnonzero(~np.isfinite(values.reshape(len(values), -1)).all(axis=1))[0])
                episode = int(np.searchsorted(buffer.episode_ends, step, side="right"))
                raise ValueError(f"the dataset's {key!r} holds NaN or inf (first at step {step}, episode {episode}): the "
                                 "normaliser and the loss would turn it into NaN weights. Fix or drop those steps in the source file")
        if not 1 <= n_obs_steps <= horizon or not 1 <= n_action_steps <= horizon:
            raise ValueError(f"need 1 <= n_obs_steps, n_action_steps <= horizon, got To={n_obs_steps}, "
                             f"Ta={n_action_steps}, T={horizon}")
        self.buffer, self.obs_keys, self.split = buffer, list(obs_keys), split
        self.horizon, self.n_obs_steps, self.n_action_steps = horizon, n_obs_steps, n_action_steps
        self.val_ratio, self.max_train_episodes, self.seed = val_ratio, max_train_episodes, seed
        train, val = split_episodes(buffer.n_episodes, val_ratio, max_train_episodes, seed)
        self.episodes = train if split == "train" else val
        self._neighbor_index: tuple[torch.Tensor, torch.Tensor] | None = None  # built on first neighbor_actions call
        self.sampler = SequenceSampler(buffer.episode_ends, horizon, pad_before=n_obs_steps - 1,
                                       pad_after=n_action_steps - 1, episodes=self.episodes)
        if split == "train" and len(self.sampler) == 0:
            raise ValueError(f"no training windows: every training episode is shorter than horizon - Ta + 1 = "
                             f"{horizon - n_action_steps + 1} steps")

    def val_split(self) -> "PolicyDataset":
        """The validation episodes of the same split (same seed and ratio)."""
        return PolicyDataset(self.buffer, self.obs_keys, self.horizon, self.n_obs_steps, self.n_action_steps,
                             self.val_ratio, self.max_train_episodes, self.seed, split="val")

    def __len__(self) -> int:
        return len(self.sampler)

    def get_batch(self, indices: np.ndarray) -> dict:
        """Samples of many windows at once by fancy indexing: obs [B, To, ...] (images stay uint8), action [B, T, Da]."""
        indices = np.asarray(indices, dtype=np.int64)
        if indices.size and (indices.min() < -len(self) or indices.max() >= len(self)):
            raise IndexError(f"window index out of range for a {self.split} dataset of {len(self)} windows")
        keys = [*self.obs_keys, "action"]
        sample = self.sampler.sample({k: self.buffer.data[k] for k in keys}, indices,
                                     n_steps={k: self.n_obs_steps for k in self.obs_keys})
        tensors = {k: torch.from_numpy(v) for k, v in sample.items()}
        return {"obs": {k: tensors[k] for k in self.obs_keys}, "action": tensors["action"]}

    def neighbor_actions(self, indices: np.ndarray, k: int) -> torch.Tensor:
        """Action chunks [B, k, T, Da] of the k windows of OTHER episodes whose low-dim observation histories are
        nearest (L2 after per-dimension min-max scaling) to each window's: extra positives for a drift group, since
        near-identical observations in other demonstrations show other valid ways to act."""
        if self._neighbor_index is None:
            self._neighbor_index = self._build_neighbor_index()
        features, episode = self._neighbor_index
        indices = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        distances = torch.cdist(features[indices], features)  # [B, N]; 64 x 25k x 40 on Push-T: about 2 ms
        distances[episode[indices][:, None] == episode[None, :]] = torch.inf
        nearest = distances.topk(k, dim=1, largest=False).indices  # [B, k]
        return self.get_batch(nearest.flatten().numpy())["action"].view(len(indices), k, self.horizon, -1)

    def _build_neighbor_index(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Scaled low-dim observation histories of every window [N, To * D] and each window's episode [N]."""
        low_dim = [k for k in self.obs_keys if self.buffer.data[k].dtype != np.uint8]
        if not low_dim:
            raise ValueError("extra positives need low-dim observation keys to find neighbours; this task has only images")
        if len(self.episodes) < 2:
            raise ValueError("extra positives come from other episodes; this split has a single episode")
        obs = self.sampler.sample({k: self.buffer.data[k] for k in low_dim}, np.arange(len(self)),
                                  n_steps={k: self.n_obs_steps for k in low_dim})
        parts = []
        for key in low_dim:
            data = self.buffer.data[key].astype(np.float32)
            span = np.maximum(data.max(axis=0) - data.min(axis=0), 1e-6)
            parts.append((obs[key].astype(np.float32) / span).reshape(len(self), -1))
        window_starts = self.sampler.indices[:, 0]
        episode = np.searchsorted(self.buffer.episode_ends, window_starts, side="right")
        return torch.from_numpy(np.concatenate(parts, axis=1)), torch.from_numpy(episode)

    def __getitem__(self, index: int) -> dict:
        batch = self.get_batch(np.array([index]))
        return {"obs": {k: v[0] for k, v in batch["obs"].items()}, "action": batch["action"][0]}

    def normalizer_data(self) -> dict[str, np.ndarray]:
        """Every step's low-dim observations and actions (of all episodes, as Diffusion Policy fits its
        normaliser on the whole buffer); uint8 images are left out, they are not normalised."""
        return {k: self.buffer.data[k] for k in [*self.obs_keys, "action"] if self.buffer.data[k].dtype != np.uint8}
