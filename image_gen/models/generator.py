"""The one-step drifting generator: a DiT-style transformer mapping (noise, class, alpha, style) to an image.

Follows the paper's appendix: patchified Gaussian noise, adaLN-zero conditioning, zero-initialised
output, SwiGLU MLPs, 2-D axial RoPE, RMSNorm, QK-norm, 16 in-context register tokens; the condition
is class embedding + sum of 32 random style embeddings (codebook of 64) + embedding of the guidance
scale alpha. There is no timestep: one forward pass is the whole sampler.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from diffusers.models.embeddings import TimestepEmbedding, get_timestep_embedding
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

# The paper's model sizes; patch 2 on 32x32x4 SD-VAE latents, patch 16 on 256x256x3 pixels.
GENERATOR_SIZES: dict[str, dict[str, int]] = {
    "B/2": dict(width=768, depth=12, heads=12, patch_size=2, input_size=32, channels=4),
    "L/2": dict(width=1024, depth=24, heads=16, patch_size=2, input_size=32, channels=4),
    "B/16": dict(width=768, depth=12, heads=12, patch_size=16, input_size=256, channels=3),
    "L/16": dict(width=1024, depth=24, heads=16, patch_size=16, input_size=256, channels=3),
}
ALPHA_FREQ_DIM = 256
# alpha lives in [1, ~4]; spread it over the sinusoidal frequencies the way diffusion timesteps are.
ALPHA_EMBED_SCALE = 100.0


def rope_2d(grid: int, head_dim: int, num_prefix: int, base: float = 10000.0) -> tuple[Tensor, Tensor]:
    """cos/sin tables [num_prefix + grid^2, head_dim] for axial 2-D RoPE; prefix tokens are not rotated."""
    if head_dim % 4:
        raise ValueError(f"2-D RoPE needs a head dim divisible by 4, got {head_dim}")
    freqs = base ** (-torch.arange(head_dim // 4, dtype=torch.float32) / (head_dim // 4))
    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    angles = torch.cat([rows.reshape(-1, 1) * freqs, cols.reshape(-1, 1) * freqs], dim=1)  # [L, hd/2]
    angles = torch.cat([angles.new_zeros(num_prefix, head_dim // 2), angles], dim=0)
    angles = torch.cat([angles, angles], dim=1)
    return angles.cos(), angles.sin()


def sincos_2d(grid: int, width: int, base: float = 10000.0) -> Tensor:
    """Fixed absolute position embedding [grid^2, width]: sin/cos of the row in one half of the width, of the column
    in the other (DiT's table)."""
    if width % 4:
        raise ValueError(f"a 2-D sin-cos embedding needs a width divisible by 4, got {width}")
    freqs = base ** (-torch.arange(width // 4, dtype=torch.float32) / (width // 4))
    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    angles = [axis.reshape(-1, 1).float() * freqs for axis in (rows, cols)]
    return torch.cat([f(a) for a in angles for f in (torch.sin, torch.cos)], dim=1)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate x [B, heads, L, hd] by the position tables (rotate-half convention)."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


class SwiGLU(nn.Module):
    """silu(W1 x) * (W2 x) -> W3; hidden = 2/3 of the usual 4x width keeps the parameter count of a GELU MLP."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.w12 = nn.Linear(width, 2 * hidden)
        self.w3 = nn.Linear(hidden, width)

    def forward(self, x: Tensor) -> Tensor:
        a, b = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(a) * b)


class RMSNorm(nn.RMSNorm):
    """nn.RMSNorm whose weight follows the input dtype: an fp32 weight on bf16 autocast activations would send
    rms_norm down its unfused, upcasting path (slower, and it saves fp32 copies for backward)."""

    def forward(self, x: Tensor) -> Tensor:
        weight = None if self.weight is None else self.weight.to(x.dtype)
        return F.rms_norm(x, self.normalized_shape, weight, self.eps)


class Attention(nn.Module):
    """Multi-head self-attention with RMS QK-norm and RoPE."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.q_norm = RMSNorm(width // heads, eps=1e-6)
        self.k_norm = RMSNorm(width // heads, eps=1e-6)
        self.proj = nn.Linear(width, width)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        b, length, width = x.shape
        q, k, v = self.qkv(x).view(b, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        q, k = apply_rope(self.q_norm(q), cos, sin), apply_rope(self.k_norm(k), cos, sin)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, length, width))


class Block(nn.Module):
    """Pre-norm transformer block whose norms are modulated and whose residuals are gated by the condition."""

    def __init__(self, width: int, heads: int, mlp_hidden: int) -> None:
        super().__init__()
        self.norm1 = nn.RMSNorm(width, eps=1e-6, elementwise_affine=False)
        self.attn = Attention(width, heads)
        self.norm2 = nn.RMSNorm(width, eps=1e-6, elementwise_affine=False)
        self.mlp = SwiGLU(width, mlp_hidden)
        self.ada = nn.Linear(width, 6 * width)

    def forward(self, x: Tensor, c: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(F.silu(c)).chunk(6, dim=-1)
        x = x + gate1[:, None] * self.attn(modulate(self.norm1(x), shift1, scale1), cos, sin)
        return x + gate2[:, None] * self.mlp(modulate(self.norm2(x), shift2, scale2))


class DriftDiT(nn.Module):
    """generator(noise [B, C, H, W], labels [B], alpha [B], style [B, 32] | None) -> sample [B, C, H, W]."""

    # Recompute each block in the backward pass instead of storing its activations (set by the trainer).
    checkpointing: bool = False

    def __init__(
        self,
        width: int,
        depth: int,
        heads: int,
        patch_size: int,
        input_size: int,
        channels: int,
        num_classes: int = 1000,
        num_registers: int = 16,
        num_style_tokens: int = 32,
        style_vocab: int = 64,
        mlp_ratio: float = 4.0,
        abs_pos_embed: bool = False,
        conv_head: int = 0,
    ) -> None:
        super().__init__()
        if input_size % patch_size:
            raise ValueError(f"input_size {input_size} is not a multiple of patch_size {patch_size}")
        self.config: dict[str, Any] = dict(
            width=width, depth=depth, heads=heads, patch_size=patch_size, input_size=input_size,
            channels=channels, num_classes=num_classes, num_registers=num_registers,
            num_style_tokens=num_style_tokens, style_vocab=style_vocab, mlp_ratio=mlp_ratio,
            abs_pos_embed=abs_pos_embed, conv_head=conv_head,
        )
        self.patch_size, self.input_size, self.channels = patch_size, input_size, channels
        self.num_style_tokens, self.style_vocab, self.num_classes = num_style_tokens, style_vocab, num_classes
        grid = input_size // patch_size

        self.patch_embed = nn.Conv2d(channels, width, kernel_size=patch_size, stride=patch_size)
        self.class_embed = nn.Embedding(num_classes, width)
        self.style_embed = nn.Embedding(style_vocab, width)
        self.alpha_embed = TimestepEmbedding(ALPHA_FREQ_DIM, width)
        # In-context tokens: learned per-token embeddings plus a projection of the condition.
        self.registers = nn.Parameter(torch.randn(1, num_registers, width) * 0.02)
        self.register_cond = nn.Linear(width, width)
        self.blocks = nn.ModuleList(
            Block(width, heads, int(2 * mlp_ratio * width / 3)) for _ in range(depth)
        )
        self.final_norm = nn.RMSNorm(width, eps=1e-6, elementwise_affine=False)
        self.final_ada = nn.Linear(width, 2 * width)
        self.out = nn.Linear(width, patch_size * patch_size * channels)
        cos, sin = rope_2d(grid, width // heads, num_registers)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        # RoPE alone tells a patch token its position only relative to others (and through the unrotated registers);
        # abs_pos_embed adds DiT's fixed table to the patch tokens, so each token knows where in the image it draws.
        self.register_buffer("pos_embed", sincos_2d(grid, width) if abs_pos_embed else None, persistent=False)
        # Each token's pixels come from one linear map, so nothing mixes pixels across token seams; conv_head=H adds a
        # residual 3x3 conv -> SiLU -> 3x3 conv (H channels) on the unpatchified image, as U-ViT ends. Zero-initialised
        # second conv: identity at the start. A lever against MNIST's dotted strokes (image_gen/README.md).
        self.head = nn.Sequential(nn.Conv2d(channels, conv_head, 3, padding=1), nn.SiLU(),
                                  nn.Conv2d(conv_head, channels, 3, padding=1)) if conv_head else None
        self._init_weights()

    def _init_weights(self) -> None:
        """Xavier linears, small embeddings, and zeros on every adaLN projection and the output (adaLN-zero)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.xavier_uniform_(self.patch_embed.weight.view(self.patch_embed.weight.shape[0], -1))
        nn.init.zeros_(self.patch_embed.bias)
        nn.init.normal_(self.class_embed.weight, std=0.02)
        nn.init.normal_(self.style_embed.weight, std=0.02)
        for linear in [b.ada for b in self.blocks] + [self.final_ada, self.out] + ([self.head[-1]] if self.head else []):
            nn.init.zeros_(linear.weight)
            nn.init.zeros_(linear.bias)

    def random_style(self, batch: int, device: torch.device | str | None = None) -> Tensor:
        """The 32 random codebook indices per sample: a second source of randomness besides the noise."""
        return torch.randint(0, self.style_vocab, (batch, self.num_style_tokens), device=device)

    def condition(self, labels: Tensor, alpha: Tensor, style: Tensor) -> Tensor:
        """class embedding + sum of style embeddings + alpha embedding -> [B, width]."""
        alpha_freq = get_timestep_embedding(alpha.float() * ALPHA_EMBED_SCALE, ALPHA_FREQ_DIM, flip_sin_to_cos=True)
        alpha_emb = self.alpha_embed(alpha_freq.to(self.class_embed.weight.dtype))
        return self.class_embed(labels) + self.style_embed(style).sum(1) + alpha_emb

    def forward(self, noise: Tensor, labels: Tensor, alpha: Tensor, style: Optional[Tensor] = None) -> Tensor:
        b, c, h, w = noise.shape
        if (c, h, w) != (self.channels, self.input_size, self.input_size):
            raise ValueError(
                f"noise must be [B, {self.channels}, {self.input_size}, {self.input_size}], got {tuple(noise.shape)}"
            )
        style = self.random_style(b, noise.device) if style is None else style
        cond = self.condition(labels, alpha.expand(b), style)
        tokens = self.patch_embed(noise).flatten(2).transpose(1, 2)  # [B, L, width]
        if self.pos_embed is not None:
            tokens = tokens + self.pos_embed
        registers = self.registers + self.register_cond(cond)[:, None]
        x = torch.cat([registers.expand(b, -1, -1), tokens], dim=1)
        for block in self.blocks:
            if self.checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, cond, self.rope_cos, self.rope_sin, use_reentrant=False)
            else:
                x = block(x, cond, self.rope_cos, self.rope_sin)
        shift, scale = self.final_ada(F.silu(cond)).chunk(2, dim=-1)
        x = self.out(modulate(self.final_norm(x[:, registers.shape[1]:]), shift, scale))
        p, grid = self.patch_size, self.input_size // self.patch_size
        x = x.view(b, grid, grid, p, p, c).permute(0, 5, 1, 3, 2, 4).reshape(b, c, h, w)  # [B, C, gh, p, gw, p] -> image
        return x if self.head is None else x + self.head(x)

    @torch.no_grad()
    def sample(self, labels: Tensor, alpha: float | Tensor = 1.0, generator: Optional[torch.Generator] = None) -> Tensor:
        """One-step samples for labels [B] at guidance scale alpha."""
        device = labels.device
        noise = torch.randn(
            labels.shape[0], self.channels, self.input_size, self.input_size, generator=generator, device=device
        )
        style = torch.randint(
            0, self.style_vocab, (labels.shape[0], self.num_style_tokens), generator=generator, device=device
        )
        alpha = torch.as_tensor(alpha, dtype=torch.float32, device=device).reshape(-1)
        return self(noise, labels, alpha, style)

    def save_pretrained(self, directory: str | Path) -> None:
        """config.json + model.safetensors: all `DriftDiT.from_pretrained` needs (no training config)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "config.json").write_text(json.dumps(self.config, indent=1))
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, directory / "model.safetensors")

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "DriftDiT":
        directory = Path(directory)
        if not (directory / "config.json").exists():
            raise FileNotFoundError(f"no generator in {directory}: expected config.json + model.safetensors "
                                    "as written by image_gen/train.py under <run_dir>/generator")
        model = cls(**json.loads((directory / "config.json").read_text()))
        model.load_state_dict(load_file(directory / "model.safetensors"))
        return model.eval()


def build_generator(size: str | None = None, **overrides: Any) -> DriftDiT:
    """A paper size ("B/2", "L/2", "B/16", "L/16") with optional overrides, or a custom model from overrides."""
    if size is not None and size not in GENERATOR_SIZES:
        raise ValueError(f"unknown generator size {size!r}; choose one of {sorted(GENERATOR_SIZES)} or None")
    return DriftDiT(**{**(GENERATOR_SIZES[size] if size else {}), **overrides})


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters (works on the meta device)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


__all__ = ["DriftDiT", "GENERATOR_SIZES", "build_generator", "count_parameters", "rope_2d", "apply_rope", "sincos_2d"]
