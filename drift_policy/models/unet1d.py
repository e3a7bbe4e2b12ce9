"""1-D temporal U-Net over an action chunk with FiLM conditioning (Diffusion Policy's ConditionalUnet1D
design, written anew). With time_embed_dim=None it is the one-step drift generator: noise in, chunk out.

Plain nn.Conv1d: re-measured on the 2-core CPU (bench/step_profile.py --conv), an unfold+matmul convolution is 8%
faster at batch-1 inference but 1.5-1.8x slower to train (fwd+bwd 70 vs 48 ms at 64 chunks, 574 vs 326 ms at 512)."""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F


def conv_block(c_in: int, c_out: int, kernel_size: int, n_groups: int) -> nn.Sequential:
    """Conv1d -> GroupNorm -> Mish, length-preserving for odd kernel sizes."""
    return nn.Sequential(nn.Conv1d(c_in, c_out, kernel_size, padding=kernel_size // 2), nn.GroupNorm(n_groups, c_out), nn.Mish())


class FiLMResBlock(nn.Module):
    """Two conv blocks; the conditioning vector scales and shifts every channel in between."""

    def __init__(self, c_in: int, c_out: int, cond_dim: int, kernel_size: int, n_groups: int) -> None:
        super().__init__()
        self.conv1 = conv_block(c_in, c_out, kernel_size, n_groups)
        self.conv2 = conv_block(c_out, c_out, kernel_size, n_groups)
        self.film = nn.Linear(cond_dim, 2 * c_out)
        self.skip = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        """x [B, C_in, T], cond [B, cond_dim] (already through Mish) -> [B, C_out, T]."""
        scale, bias = self.film(cond).unsqueeze(-1).chunk(2, dim=1)
        return self.conv2(self.conv1(x) * scale + bias) + self.skip(x)


class SinusoidalEmbedding(nn.Module):
    """[B] diffusion steps -> [B, dim] sin/cos features (frequencies precomputed once)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        if dim < 4 or dim % 2:
            raise ValueError(f"time_embed_dim must be an even number >= 4 (or None for no timestep), got {dim}")
        half = dim // 2
        self.register_buffer("freqs", torch.exp(-math.log(10000) * torch.arange(half) / (half - 1)), persistent=False)

    def forward(self, t: Tensor) -> Tensor:
        angles = t.float()[:, None] * self.freqs
        return torch.cat([angles.sin(), angles.cos()], dim=-1)


def timestep_mlp(dim: int) -> nn.Sequential:
    """[B] diffusion steps -> [B, dim] learned step embedding: sin/cos features through a small MLP."""
    return nn.Sequential(SinusoidalEmbedding(dim), nn.Linear(dim, 4 * dim), nn.Mish(), nn.Linear(4 * dim, dim))


def with_timestep(time_mlp: nn.Module, cond: Tensor, timestep: Tensor) -> Tensor:
    """cond [B, C] with the step embedding [B, E] in front: [B, E + C] (a scalar or [1] timestep serves the batch)."""
    t = timestep.expand(cond.shape[0]) if timestep.dim() == 0 or timestep.shape[0] == 1 else timestep
    return torch.cat([time_mlp(t), cond], dim=-1)


def check_conditioning(net: str, batch: int, cond: Tensor, timestep: Tensor | None, cond_dim: int,
                       time_embed_dim: int | None) -> None:
    """The checks every backbone makes on its conditioning: a timestep iff built with one, cond [B, cond_dim]."""
    if (timestep is None) != (time_embed_dim is None):
        raise ValueError(f"this {net} takes no timestep (it was built with time_embed_dim=None)" if time_embed_dim is None
                         else f"this {net} needs a timestep [B] (it was built with time_embed_dim set)")
    if cond.shape != (batch, cond_dim):
        raise ValueError(f"cond must be [B, {cond_dim}] with B={batch}, got {tuple(cond.shape)}")
    if timestep is not None and (timestep.dim() > 1 or timestep.numel() not in (1, batch)):
        raise ValueError(f"timestep must be a scalar or [B] with B={batch}, got {tuple(timestep.shape)}")


class ConditionalUnet1D(nn.Module):
    """Action chunk x [B, T, Da] (channel-last) + cond [B, cond_dim] (+ timestep [B]) -> [B, T, Da].

    Each level has two FiLM residual blocks; every level but the last halves T, and the up path doubles
    it back, so T must be divisible by 2 ** (len(down_dims) - 1).
    """

    def __init__(self, action_dim: int, cond_dim: int, down_dims: Sequence[int] = (64, 128, 256), kernel_size: int = 5,
                 n_groups: int = 8, time_embed_dim: int | None = 128) -> None:
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd so convolutions keep the horizon length, got {kernel_size}")
        if not down_dims or any(d % n_groups for d in down_dims):
            raise ValueError(f"down_dims must be non-empty and divisible by n_groups={n_groups}, got {tuple(down_dims)}")
        self.action_dim, self.cond_dim, self.time_embed_dim = action_dim, cond_dim, time_embed_dim
        self.horizon_divisor = 2 ** (len(down_dims) - 1)
        if time_embed_dim is not None:
            self.time_mlp = timestep_mlp(time_embed_dim)
            cond_dim += time_embed_dim
        dims = [action_dim, *down_dims]
        block = lambda i, o: FiLMResBlock(i, o, cond_dim, kernel_size, n_groups)  # noqa: E731
        self.down = nn.ModuleList()
        for level, (c_in, c_out) in enumerate(zip(dims[:-1], dims[1:])):
            last = level == len(down_dims) - 1
            self.down.append(nn.ModuleList([block(c_in, c_out), block(c_out, c_out),
                                            nn.Identity() if last else nn.Conv1d(c_out, c_out, 3, 2, 1)]))
        self.mid = nn.ModuleList([block(down_dims[-1], down_dims[-1]), block(down_dims[-1], down_dims[-1])])
        self.up = nn.ModuleList()
        for c_in, c_out in reversed(list(zip(dims[1:-1], dims[2:]))):  # every up level doubles T back
            self.up.append(nn.ModuleList([block(2 * c_out, c_in), block(c_in, c_in), nn.ConvTranspose1d(c_in, c_in, 4, 2, 1)]))
        self.head = nn.Sequential(conv_block(down_dims[0], down_dims[0], kernel_size, n_groups), nn.Conv1d(down_dims[0], action_dim, 1))

    def forward(self, x: Tensor, cond: Tensor, timestep: Tensor | None = None) -> Tensor:
        self._check_inputs(x, cond, timestep)
        if timestep is not None:
            cond = with_timestep(self.time_mlp, cond, timestep)
        cond = F.mish(cond)  # shared input activation of every block's FiLM layer, computed once
        h, skips = x.transpose(1, 2), []
        for res1, res2, downsample in self.down:
            h = res2(res1(h, cond), cond)
            skips.append(h)
            h = downsample(h)
        for res in self.mid:
            h = res(h, cond)
        for res1, res2, upsample in self.up:
            h = upsample(res2(res1(torch.cat([h, skips.pop()], dim=1), cond), cond))
        return self.head(h).transpose(1, 2)

    def _check_inputs(self, x: Tensor, cond: Tensor, timestep: Tensor | None) -> None:
        if x.dim() != 3 or x.shape[2] != self.action_dim:
            raise ValueError(f"x must be [B, T, {self.action_dim}] (channel-last), got {tuple(x.shape)}")
        if x.shape[1] % self.horizon_divisor:
            raise ValueError(f"the horizon T={x.shape[1]} must be divisible by {self.horizon_divisor} "
                             f"for {len(self.down)} U-Net levels; pad the chunk or use fewer down_dims")
        check_conditioning("U-Net", x.shape[0], cond, timestep, self.cond_dim, self.time_embed_dim)
