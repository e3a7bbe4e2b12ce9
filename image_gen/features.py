"""The multi-scale feature set on which the drift loss is computed.

For every stage map [B, C, H, W] of the encoder: the H*W per-location vectors, the global mean and
std, and the mean and std of every 2x2 and 4x4 patch; plus the raw input flattened to one vector and, optionally,
its non-overlapping k x k pixel patches as vectors (a local pixel-level scale that sees single-pixel noise).
Each feature is a set of L vectors of dim C, returned as [B, L, C]; the loss treats each of the L
vectors as its own kernel space (one drift field per location) and each feature as its own scale.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch.nn.functional as F
from torch import Tensor, nn


def _tokens(x: Tensor) -> Tensor:
    """[B, C, H, W] -> [B, H*W, C]."""
    return x.flatten(2).transpose(1, 2)


def _std(mean_sq: Tensor, mean: Tensor) -> Tensor:
    return (mean_sq - mean.pow(2)).clamp_min(1e-6).sqrt()


def map_features(x: Tensor, name: str, patch_sizes: Sequence[int] = (2, 4)) -> dict[str, Tensor]:
    """Per-location, global mean/std and patch mean/std of one map [B, C, H, W], each [B, L, C]."""
    feats = {f"{name}.loc": _tokens(x)}
    mean, mean_sq = x.mean((2, 3)), x.pow(2).mean((2, 3))
    feats[f"{name}.mean"], feats[f"{name}.std"] = mean[:, None], _std(mean_sq, mean)[:, None]
    for p in patch_sizes:
        # A patch as large as the map repeats the global statistics: skip it.
        if x.shape[-1] > p and x.shape[-2] > p and x.shape[-1] % p == 0 and x.shape[-2] % p == 0:
            pm, pm_sq = F.avg_pool2d(x, p), F.avg_pool2d(x.pow(2), p)
            feats[f"{name}.p{p}mean"], feats[f"{name}.p{p}std"] = _tokens(pm), _tokens(_std(pm_sq, pm))
    return feats


class MultiScaleFeatures(nn.Module):
    """features(x) -> {name: [B, L, C]} from a frozen encoder (or none: raw input only).

    The encoder is frozen but differentiable: gradients reach the generator through it.
    """

    def __init__(self, encoder: Optional[nn.Module] = None, patch_sizes: Sequence[int] = (2, 4), raw: bool = True,
                 raw_patches: Sequence[int] = ()) -> None:
        super().__init__()
        if encoder is None and not raw and not raw_patches:
            raise ValueError("no features: give an encoder, keep raw=True or set raw_patches")
        if any(k < 1 for k in raw_patches):
            raise ValueError(f"raw_patches are patch sizes in pixels (>= 1), got {list(raw_patches)}")
        self.encoder, self.patch_sizes, self.raw, self.raw_patches = encoder, tuple(patch_sizes), raw, tuple(raw_patches)
        if encoder is not None:
            encoder.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> "MultiScaleFeatures":
        """The encoder stays in eval mode whatever the trainer does."""
        super().train(mode)
        if self.encoder is not None:
            self.encoder.eval()
        return self

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        feats: dict[str, Tensor] = {}
        if self.raw:
            feats["raw"] = x.flatten(1)[:, None]
        for k in self.raw_patches:  # [B, C*k*k, L] -> [B, L, C*k*k]; a border narrower than k is left out
            feats[f"raw.p{k}"] = F.unfold(x, kernel_size=k, stride=k).transpose(1, 2)
        if self.encoder is not None:
            for i, m in enumerate(self.encoder(x)):
                feats |= map_features(m.float(), f"stage{i}", self.patch_sizes)
        return feats


def pooled_features(encoder: nn.Module, x: Tensor) -> Tensor:
    """Global mean of the last stage [B, C]: the embedding used for the encoder-space FID."""
    return encoder(x)[-1].float().mean((2, 3))


__all__ = ["MultiScaleFeatures", "map_features", "pooled_features"]
