"""An MLP over the flattened action chunk with FiLM conditioning: a cheaper alternative to the 1-D U-Net for low-dim
tasks on CPU (policy.backbone=mlp), with the same interface as ConditionalUnet1D."""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from drift_policy.models.unet1d import check_conditioning, timestep_mlp, with_timestep


class FiLMMLPBlock(nn.Module):
    """Pre-norm residual block LayerNorm -> Linear -> Mish -> Linear; the conditioning scales and shifts the features
    after the Mish, as FiLMResBlock does between its convolutions."""

    def __init__(self, dim: int, cond_dim: int) -> None:
        super().__init__()
        self.norm, self.fc1, self.fc2 = nn.LayerNorm(dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.film = nn.Linear(cond_dim, 2 * dim)

    def forward(self, h: Tensor, cond: Tensor) -> Tensor:
        """h [B, dim], cond [B, cond_dim] (already through Mish) -> [B, dim]."""
        scale, bias = self.film(cond).chunk(2, dim=-1)
        return h + self.fc2(F.mish(self.fc1(self.norm(h))) * scale + bias)


class ChunkMLP(nn.Module):
    """Action chunk x [B, T, Da] + cond [B, cond_dim] (+ timestep [B]) -> [B, T, Da], the chunk as one T*Da vector.

    With time_embed_dim=None it is a one-step drift generator; with it set, a diffusion denoiser.
    """

    def __init__(self, action_dim: int, cond_dim: int, horizon: int, hidden_dim: int = 512, n_blocks: int = 3,
                 time_embed_dim: int | None = None) -> None:
        super().__init__()
        self.action_dim, self.cond_dim, self.horizon, self.time_embed_dim = action_dim, cond_dim, horizon, time_embed_dim
        if time_embed_dim is not None:
            self.time_mlp = timestep_mlp(time_embed_dim)  # the name the weight checks look for (policies/base.py)
            cond_dim += time_embed_dim
        self.inp = nn.Linear(horizon * action_dim + cond_dim, hidden_dim)
        self.blocks = nn.ModuleList([FiLMMLPBlock(hidden_dim, cond_dim) for _ in range(n_blocks)])
        self.head = nn.Sequential(nn.LayerNorm(hidden_dim), nn.Linear(hidden_dim, horizon * action_dim))

    def forward(self, x: Tensor, cond: Tensor, timestep: Tensor | None = None) -> Tensor:
        self._check_inputs(x, cond, timestep)
        if timestep is not None:
            cond = with_timestep(self.time_mlp, cond, timestep)
        h = self.inp(torch.cat([x.flatten(1), cond], dim=-1))
        film_cond = F.mish(cond)  # shared input activation of every block's FiLM layer, computed once
        for block in self.blocks:
            h = block(h, film_cond)
        return self.head(h).unflatten(1, (self.horizon, self.action_dim))

    def _check_inputs(self, x: Tensor, cond: Tensor, timestep: Tensor | None) -> None:
        if x.dim() != 3 or x.shape[1:] != (self.horizon, self.action_dim):
            raise ValueError(f"x must be [B, {self.horizon}, {self.action_dim}] (the MLP's horizon and action_dim), "
                             f"got {tuple(x.shape)}")
        check_conditioning("MLP", x.shape[0], cond, timestep, self.cond_dim, self.time_embed_dim)
