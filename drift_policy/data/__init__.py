"""Datasets: replay buffers, sequence windows and format readers."""
from drift_policy.data.dataset import PolicyDataset
from drift_policy.data.pusht import load_pusht
from drift_policy.data.replay_buffer import ReplayBuffer
from drift_policy.data.sampler import SequenceSampler

__all__ = ["PolicyDataset", "ReplayBuffer", "SequenceSampler", "load_pusht"]
