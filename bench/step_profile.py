"""Where a training step's time goes, per policy config: batch sampling, loss forward (and inside it the
U-Net forward and the drift field), backward, optimiser, EMA, and for image tasks the crop and the image
encoder's forward+backward. Median ms over timed steps.

    python bench/step_profile.py                                  # drift and diffusion, default configs
    python bench/step_profile.py --arms "drift=policy=drift policy.n_generated=4" "drift32=policy=drift train.batch_size=32"
    python bench/step_profile.py --arms "drift=task=push_t_image policy=drift" "diffusion=task=push_t_image policy=diffusion"
    python bench/step_profile.py --conv [--compile]               # also nn.Conv1d vs an unfold+matmul Conv1d (vs torch.compile)

Run it alone on the machine (`flock /tmp/cpu.lock chrt -f 10 python bench/step_profile.py`): other jobs,
even niced ones, stretch torch's multi-threaded kernels.
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import numpy as np
import torch
from diffusers.training_utils import EMAModel
from torch import nn
from torch.nn import functional as F

from drift_policy.budget import compose_cfg, parse_arm
from drift_policy.drift import drift_loss
from drift_policy.evaluation import markdown_table
from drift_policy.models import unet1d
from drift_policy.training.trainer import build_dataset, build_policy

DEFAULT_ARMS = ["drift=policy=drift", "diffusion=policy=diffusion"]


def median_ms(fn: Callable[[], object], steps: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(1e3 * (time.perf_counter() - start))
    return statistics.median(times)


def profile_arm(name: str, overrides: list[str], steps: int) -> dict:
    """Phase timings of one config's training step (the trainer's own calls, timed one by one)."""
    cfg = compose_cfg(overrides)
    torch.manual_seed(0)
    dataset = build_dataset(cfg.task)
    policy = build_policy(cfg)
    policy.fit_normalizer(dataset.normalizer_data())
    policy.train()
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-4)
    ema = EMAModel(policy.parameters(), decay=0.9999, use_ema_warmup=True, power=0.75)
    rng = np.random.default_rng(0)
    batch_size = cfg.train.batch_size
    get_batch = lambda: dataset.get_batch(rng.integers(0, len(dataset), size=batch_size))  # noqa: E731
    batch = get_batch()
    chunks = batch_size * getattr(policy, "n_generated", 1)
    cond = policy.encode(batch["obs"]).detach()
    x = torch.randn(chunks, policy.horizon, policy.action_dim)
    timestep = None if not policy.uses_timestep else torch.zeros(chunks, dtype=torch.long)
    big_cond = cond.repeat_interleave(chunks // batch_size, dim=0)

    def full_step() -> None:
        loss, _ = policy.compute_loss(get_batch())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        ema.step(policy.parameters())

    def forward_backward() -> None:
        loss, _ = policy.compute_loss(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()

    def unet_forward_backward() -> None:
        policy.model(x, big_cond, timestep).square().mean().backward()

    row = {"arm": name, "chunks_per_step": chunks,
           "step_ms": median_ms(full_step, steps),
           "get_batch_ms": median_ms(get_batch, steps),
           "loss_forward_ms": median_ms(lambda: policy.compute_loss(batch), steps),
           "fwd+bwd_ms": median_ms(forward_backward, steps),
           "unet_fwd+bwd_ms": median_ms(unet_forward_backward, steps),
           "optimizer_ms": median_ms(optimizer.step, steps),
           "ema_ms": median_ms(lambda: ema.step(policy.parameters()), steps)}
    if policy.obs_encoder.rgb_keys:  # visual tasks: the image path (crop + uint8 -> float, then the ResNets) on its own
        obs = policy.normalizer.normalize_dict(batch["obs"])
        frames = batch["obs"][policy.obs_encoder.rgb_keys[0]][:, -policy.obs_encoder.rgb_steps:].flatten(0, 1)  # the frames encoded
        row["crop_ms"] = median_ms(lambda: policy.obs_encoder._crop(frames), steps)
        row["encoder_fwd+bwd_ms"] = median_ms(lambda: policy.obs_encoder(obs).square().mean().backward(), steps)
    if hasattr(policy, "drift_config"):
        gen = torch.randn(batch_size, policy.n_generated, policy.horizon * policy.action_dim, requires_grad=True)
        pos = torch.randn(batch_size, 1, policy.horizon * policy.action_dim)
        row["drift_loss_fwd+bwd_ms"] = median_ms(lambda: drift_loss(gen, pos, config=policy.drift_config).loss.backward(), steps)
    return row


class MatmulConv1d(nn.Conv1d):
    """nn.Conv1d computed as one matmul over unfolded windows (the library's former CPU variant)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (k,), (p,), (s,) = self.kernel_size, self.padding, self.stride
        windows = F.pad(x, (p, p)).unfold(2, k, s).transpose(1, 2).flatten(2)
        return torch.addmm(self.bias, windows.flatten(0, 1), self.weight.flatten(1).t()).view(
            x.shape[0], -1, self.out_channels).transpose(1, 2)


def conv_comparison(steps: int, compile: bool) -> list[dict]:
    """Default drift U-Net (Push-T shapes): training fwd+bwd and inference, nn.Conv1d vs MatmulConv1d
    (and nn.Conv1d under torch.compile when asked)."""
    rows = []
    variants = [("nn.Conv1d", nn.Conv1d, False), ("unfold+matmul", MatmulConv1d, False)]
    for name, conv, compiled in variants + ([("nn.Conv1d, torch.compile", nn.Conv1d, True)] if compile else []):
        torch.manual_seed(0)
        model = unet1d.ConditionalUnet1D(2, 40, time_embed_dim=None)
        for module in model.modules():
            if type(module) is nn.Conv1d:
                module.__class__ = conv  # same parameters, other forward
        model = torch.compile(model) if compiled else model
        row = {"conv": name}
        for batch in (64, 512):
            x, c = torch.randn(batch, 16, 2), torch.randn(batch, 40)
            row[f"train_{batch}_ms"] = median_ms(lambda: model(x, c).square().mean().backward(), steps)
        with torch.inference_mode():
            for batch in (1, 10):
                x, c = torch.randn(batch, 16, 2), torch.randn(batch, 40)
                row[f"infer_{batch}_ms"] = median_ms(lambda: model(x, c), 10 * steps)
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arms", nargs="*", default=DEFAULT_ARMS, help="name=override override ...")
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--conv", action="store_true", help="also compare the two Conv1d implementations")
    parser.add_argument("--compile", action="store_true", help="with --conv: also time the U-Net under torch.compile")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    try:
        arms = [parse_arm(a) for a in args.arms]
    except ValueError as err:
        parser.error(f"--arms: {err}")
    rows = [profile_arm(name, overrides, args.steps) for name, overrides in arms]
    keys = sorted({k for r in rows for k in r}, key=lambda k: list(rows[0]).index(k) if k in rows[0] else 99)
    print(markdown_table([{k: r.get(k, "-") for k in keys} for r in rows]))
    if args.conv:
        print(markdown_table(conv_comparison(args.steps, args.compile)))


if __name__ == "__main__":
    main()
