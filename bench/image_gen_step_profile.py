"""Where an MNIST-demo generator step's time goes on CPU: median ms per phase over timed training steps
(after warm-up) of the demo's own config: the queue push and the batch draw, the generator forward, the encoder
features of the generated / positive / unconditional samples, the drift loss, backward, optimiser (with the
gradient clip) and EMA.

    python bench/image_gen_step_profile.py                                 # the demo's defaults
    python bench/image_gen_step_profile.py --steps 30 --set n_gen=32 "temperatures=[0.02,0.05,0.2]"

`--set` takes DemoOptions fields as key=value (n_gen, n_pos, n_unc, temperatures, threads, out, cache_dir ...).
The MNIST cache is built if missing; the encoder is the demo's `out`/mae when it exists, else a MAE trained
for a few steps (its features are meaningless, their cost is not). Run it alone on the machine
(`flock /tmp/cpu.lock chrt -f 10 python bench/image_gen_step_profile.py`): other jobs, even niced ones,
stretch torch's multi-threaded kernels.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader

from drift_policy.evaluation import markdown_table
from image_gen.demo_mnist import compose_config, generator_overrides, mae_overrides, parse_options
from image_gen.image_data import ResumableSampler, prepare_dataset
from image_gen.loss import feature_drift_loss
from image_gen.models.generator import DriftDiT
from image_gen.queues import SampleQueues
from image_gen.train_mae import train_mae
from image_gen.trainer import (batch_unconditional_weight, build_features, draw_batch, drift_config,
                               generate_groups, step_generator)

WARMUP_STEPS = 3
TIMING_MAE_STEPS = 5


def profile(cfg: DictConfig, steps: int) -> dict[str, float]:
    """Median ms of every phase of the trainer's step, timed one after the other within each step."""
    data = prepare_dataset(cfg.data)
    torch.manual_seed(cfg.seed)
    generator = DriftDiT(num_classes=cfg.data.num_classes, **cfg.model)
    features = build_features(cfg)
    ema = AveragedModel(generator, multi_avg_fn=get_ema_multi_avg_fn(cfg.optim.ema_decay), use_buffers=True)
    opt = torch.optim.AdamW(generator.parameters(), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas),
                            weight_decay=cfg.optim.weight_decay)
    shape = tuple(data[0][0].shape)
    queues = SampleQueues(cfg.data.num_classes, shape, cfg.queue.per_class, cfg.queue.unconditional,
                          dtype=getattr(torch, cfg.queue.dtype))
    loader = iter(DataLoader(data, batch_size=cfg.queue.push_per_step, drop_last=True,
                             sampler=ResumableSampler(len(data), cfg.seed)))
    b, config = cfg.batch, drift_config(cfg)
    while len(queues.ready_classes(b.n_pos)) < b.n_classes or queues.unconditional.filled()[0] < b.n_unc:
        queues.push(*next(loader))
    times: dict[str, list[float]] = {}
    for step in range(WARMUP_STEPS + steps):
        marks = [("start", time.perf_counter())]

        def mark(phase: str) -> None:
            marks.append((phase, time.perf_counter()))

        queues.push(*next(loader))
        mark("queue push (loader + push)")
        batch = draw_batch(queues, generator, cfg, step_generator(cfg.seed, step, 0))
        mark("draw batch (queues)")
        x = generate_groups(generator, batch)
        mark("generator forward")
        with torch.no_grad():
            pos = features(batch.pos.flatten(0, 1).to(x.dtype))  # the queues hold float16
            mark("features: positives")
            unc = features(batch.unc.flatten(0, 1).to(x.dtype)) if batch.unc is not None else None
            mark("features: unconditional")
        gen = features(x)
        mark("features: generated")
        loss, _ = feature_drift_loss(gen, pos, len(batch.labels), unc, batch_unconditional_weight(batch), config,
                                     cfg.drift.chunk_groups)
        mark("drift loss")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        mark("backward")
        nn.utils.clip_grad_norm_(generator.parameters(), cfg.optim.grad_clip)
        opt.step()
        mark("optimizer (clip + AdamW)")
        ema.update_parameters(generator)
        mark("EMA")
        if step >= WARMUP_STEPS:
            for (_, t0), (phase, t1) in zip(marks, marks[1:]):
                times.setdefault(phase, []).append(1e3 * (t1 - t0))
            times.setdefault("step", []).append(1e3 * (marks[-1][1] - marks[0][1]))
    return {phase: statistics.median(ms) for phase, ms in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help=f"timed steps (after {WARMUP_STEPS} warm-up steps)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="DemoOptions overrides")
    args = parser.parse_args()
    opts = parse_options(args.set)
    if opts.device != "cpu":
        parser.error("this profiles the CPU step: leave device=cpu")
    torch.set_num_threads(opts.threads)
    with tempfile.TemporaryDirectory() as tmp:
        mae_dir = Path(opts.out) / "mae"
        if not (mae_dir / "encoder.json").exists():
            mae_dir, opts.mae_steps = Path(tmp) / "mae", TIMING_MAE_STEPS
            print(f"no MAE in {Path(opts.out) / 'mae'}: trained one for {TIMING_MAE_STEPS} steps; "
                  "the profile is of timing only")
            train_mae(compose_config("mae", mae_overrides(opts, mae_dir)))
        cfg = compose_config("train", generator_overrides(opts, mae_dir, Path(tmp) / "run"))
        ms = profile(cfg, args.steps)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {cfg.batch.n_classes} classes x "
          f"(n_gen {cfg.batch.n_gen}, n_pos {cfg.batch.n_pos}, n_unc {cfg.batch.n_unc}), temperatures "
          f"{list(cfg.drift.temperatures)}, encoder {mae_dir}; median of {args.steps} steps")
    step = ms.pop("step")
    rows = [{"phase": phase, "median ms": value, "share of step": f"{100 * value / step:.1f}%"}
            for phase, value in ms.items()]
    print(markdown_table(rows + [{"phase": "step (median)", "median ms": step, "share of step": "100%"}]))


if __name__ == "__main__":
    main()
