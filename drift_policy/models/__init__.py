"""Networks: the action generator / denoiser and the observation encoders."""
from drift_policy.models.chunk_mlp import ChunkMLP
from drift_policy.models.obs_encoder import ObsEncoder
from drift_policy.models.unet1d import ConditionalUnet1D

__all__ = ["ChunkMLP", "ConditionalUnet1D", "ObsEncoder"]
