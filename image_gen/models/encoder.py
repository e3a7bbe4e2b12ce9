"""The feature space of the drift loss: a ResNet-style encoder (basic blocks, GroupNorm) pre-trained as an MAE.

The paper cannot make ImageNet work without a feature encoder: the kernel needs a space where similar
images are close. The encoder runs on the generator's own space (SD-VAE latents or pixels), so no
decoder is needed in the training loop; it returns the map of every stage for the multi-scale loss.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 32 groups (fewer for narrow toy encoders)."""
    groups = next(g for g in (32, 16, 8, 4, 2, 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


class BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convs) with GroupNorm; strided 1x1 shortcut when the shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.norm1 = group_norm(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.norm2 = group_norm(c_out)
        self.shortcut = (
            nn.Identity() if stride == 1 and c_in == c_out
            else nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), group_norm(c_out))
        )

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.norm1(self.conv1(x)))
        return F.relu(self.norm2(self.conv2(y)) + self.shortcut(x))


class ResNetEncoder(nn.Module):
    """encoder(x [B, C, H, W]) -> list of stage maps; stage i has width * 2^i channels and stride stem_stride * 2^i.

    stem_stride 2 halves the first map of pixel inputs (MNIST 28 -> 14): 4x fewer per-location drift groups.
    """

    # Keep only the stage outputs for backward and recompute the blocks inside (set by the trainer).
    checkpointing: bool = False

    def __init__(self, in_channels: int = 4, width: int = 64, blocks: Sequence[int] = (3, 4, 6, 3),
                 stem_stride: int = 1) -> None:
        super().__init__()
        self.config: dict[str, Any] = dict(in_channels=in_channels, width=width, blocks=list(blocks),
                                           stem_stride=stem_stride)
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, stem_stride, 1, bias=False), group_norm(width),
                                  nn.ReLU())
        stages, c_in = [], width
        for i, n in enumerate(blocks):
            c_out = width * 2**i
            stages.append(nn.Sequential(*(BasicBlock(c_in if j == 0 else c_out, c_out, 2 if i and j == 0 else 1)
                                          for j in range(n))))
            c_in = c_out
        self.stages = nn.ModuleList(stages)

    @property
    def stage_channels(self) -> list[int]:
        return [self.config["width"] * 2**i for i in range(len(self.stages))]

    def forward(self, x: Tensor) -> list[Tensor]:
        maps, x = [], self.stem(x)
        for stage in self.stages:
            if self.checkpointing and torch.is_grad_enabled():
                x = checkpoint(stage, x, use_reentrant=False)
            else:
                x = stage(x)
            maps.append(x)
        return maps

    def save(self, directory: str | Path) -> None:
        """encoder.json + encoder.safetensors: everything `ResNetEncoder.load` needs."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "encoder.json").write_text(json.dumps(self.config))
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, directory / "encoder.safetensors")

    @classmethod
    def load(cls, directory: str | Path) -> "ResNetEncoder":
        directory = Path(directory)
        if not (directory / "encoder.json").exists():
            raise FileNotFoundError(
                f"no encoder.json in {directory}; pre-train one with `python image_gen/train_mae.py` "
                "or set feature.encoder_path to its output directory"
            )
        encoder = cls(**json.loads((directory / "encoder.json").read_text()))
        encoder.load_state_dict(load_file(directory / "encoder.safetensors"))
        return encoder


class MAE(nn.Module):
    """Masked autoencoder on the encoder: zero a random mask_ratio of patch x patch cells, reconstruct them.

    The decoder is FPN-like (every stage projected, upsampled to the input size and summed), small on
    purpose: the encoder, not the decoder, must carry the information.
    """

    def __init__(self, encoder: ResNetEncoder, patch: int = 2, mask_ratio: float = 0.5, decoder_width: int = 128) -> None:
        super().__init__()
        if not 0 < mask_ratio < 1:
            raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
        self.encoder, self.patch, self.mask_ratio = encoder, patch, mask_ratio
        self.lateral = nn.ModuleList(nn.Conv2d(c, decoder_width, 1) for c in encoder.stage_channels)
        self.head = nn.Sequential(
            group_norm(decoder_width), nn.SiLU(), nn.Conv2d(decoder_width, decoder_width, 3, 1, 1),
            group_norm(decoder_width), nn.SiLU(), nn.Conv2d(decoder_width, encoder.config["in_channels"], 3, 1, 1),
        )

    def random_mask(self, x: Tensor) -> Tensor:
        """[B, 1, H, W] with 1 on masked cells: exactly round(mask_ratio * cells) cells per image."""
        b, _, h, w = x.shape
        gh, gw = h // self.patch, w // self.patch
        n_mask = round(self.mask_ratio * gh * gw)
        ranks = torch.rand(b, gh * gw, device=x.device).argsort(1).argsort(1)
        mask = (ranks < n_mask).float().view(b, 1, gh, gw)
        return F.interpolate(mask, scale_factor=self.patch, mode="nearest")

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(loss: mean squared error on the masked cells, reconstruction, mask)."""
        mask = self.random_mask(x)
        maps = self.encoder(x * (1 - mask))
        size = x.shape[-2:]
        fused = sum(F.interpolate(lat(m), size=size, mode="bilinear", align_corners=False)
                    for lat, m in zip(self.lateral, maps))
        recon = self.head(fused)
        err = (recon - x).pow(2).mean(1, keepdim=True)
        loss = (err * mask).sum() / mask.sum().clamp_min(1)
        return loss, recon, mask
