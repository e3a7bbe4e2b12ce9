"""The drifting generator's training loop: queues -> per-class groups with guidance -> features -> drift loss.

Every step each process draws N_c classes from its queues; per class: N_gen generated samples (the
negatives), N_pos real positives of the class, N_unc real unconditional negatives weighted by the
class's guidance scale alpha, which the generator also receives. The drift statistics are per group
(stats_over="group" by default), so a class's loss does not depend on which classes share its batch
or its GPU: DDP over R processes computes exactly the single-process loss of the union of groups.
All randomness of a step comes from a generator seeded by (seed, step, rank), so resuming from an
atomic checkpoint replays the run an uninterrupted job would have made. The budget is train.steps,
train.max_minutes of training wall-clock (evaluations excluded, carried across resumes), or whichever
ends first; the LR schedule (the policies' LRSchedule) ends with it.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import PARAM_LIST, AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from drift_policy.drift import DriftConfig
from drift_policy.training.checkpoint import load_checkpoint, save_checkpoint
from drift_policy.training.logging import RunLogger
from drift_policy.training.schedule import LRSchedule
from drift_policy.training.stopping import TrainingStopped, stop_requests
from image_gen import distributed
from image_gen.features import MultiScaleFeatures
from image_gen.guidance import sample_alpha, unconditional_weight
from image_gen.image_data import ResumableSampler, prepare_dataset
from image_gen.loss import feature_drift_loss
from image_gen.models.encoder import ResNetEncoder
from image_gen.models.generator import DriftDiT
from image_gen.queues import SampleQueues

GENERATOR_DIR = "generator"
SUMMARY = "train_summary.json"
# optim.schedule -> LRSchedule kind; every schedule warms up linearly over optim.warmup_steps
SCHEDULES = {"cosine": "cosine", "constant": "constant", "constant_with_warmup": "constant"}


def ema_multi_avg_fn(decay: float, power: float | None) -> Callable[[PARAM_LIST, PARAM_LIST, Tensor], None]:
    """AveragedModel's update: a fixed decay, or with `power` the policy trainer's warm-up (diffusers' EMAModel)
    min(decay, 1 - (1 + n)^-power) after n updates, so the average does not keep the zero-output start for hundreds of
    steps (at 0.995 it still holds 8% of it at step 500)."""
    if power is None:
        return get_ema_multi_avg_fn(decay)

    @torch.no_grad()
    def update(ema_params: PARAM_LIST, params: PARAM_LIST, n_averaged: Tensor) -> None:
        weight = 1.0 - min(decay, 1.0 - (1.0 + float(n_averaged)) ** -power)
        torch._foreach_lerp_(ema_params, params, weight)

    return update


@dataclass
class DriftBatch:
    """One step's groups: G classes, N generated per class (noise and style), P positives, U unconditional."""

    labels: Tensor  # [G]
    alpha: Tensor  # [G]
    noise: Tensor  # [G*N, *shape], grouped by class
    style: Tensor  # [G*N, n_style]
    pos: Tensor  # [G, P, *shape]
    unc: Optional[Tensor]  # [G, U, *shape] or None (no guidance)

    def to(self, device: torch.device) -> "DriftBatch":
        moved = {k: (v.to(device, non_blocking=True) if isinstance(v, Tensor) else v) for k, v in vars(self).items()}
        return DriftBatch(**moved)


def step_generator(seed: int, step: int, rank: int) -> torch.Generator:
    """The RNG of one step of one process."""
    return torch.Generator().manual_seed(((seed * 1_000_003 + step) * 1_009 + rank) % 2**63)


def draw_batch(queues: SampleQueues, model: DriftDiT, cfg: DictConfig, rng: torch.Generator) -> DriftBatch:
    """Classes, guidance scales, positives, unconditional negatives, noise and style for one step."""
    b, g = cfg.batch, cfg.guidance
    labels = queues.sample_classes(b.n_classes, b.n_pos, rng)
    alpha = sample_alpha(b.n_classes, g.alpha_max, g.power, g.p_one, rng) if b.n_unc else torch.ones(b.n_classes)
    n = b.n_classes * b.n_gen
    noise = torch.randn(n, model.channels, model.input_size, model.input_size, generator=rng)
    style = torch.randint(0, model.style_vocab, (n, model.num_style_tokens), generator=rng)
    unc = queues.unconditional_negatives(b.n_classes, b.n_unc, rng) if b.n_unc else None
    return DriftBatch(labels, alpha, noise, style, queues.positives(labels, b.n_pos, rng), unc)


def generate_groups(model: nn.Module, batch: DriftBatch) -> Tensor:
    """The batch's generated samples [G*N, *shape], grouped by class."""
    n = batch.noise.shape[0] // len(batch.labels)
    return model(batch.noise, batch.labels.repeat_interleave(n), batch.alpha.repeat_interleave(n), batch.style)


def batch_unconditional_weight(batch: DriftBatch) -> Optional[Tensor]:
    """Per-class weight [G] of the unconditional negatives (None without guidance)."""
    if batch.unc is None:
        return None
    return unconditional_weight(batch.alpha, batch.noise.shape[0] // len(batch.labels), batch.unc.shape[1])


def drift_step_loss(model: nn.Module, features: MultiScaleFeatures, batch: DriftBatch, config: DriftConfig,
                    chunk_groups: Optional[int] = None) -> tuple[Tensor, dict[str, float]]:
    """Generate, embed, and sum the per-feature drift losses of a batch of class groups."""
    x = generate_groups(model, batch)
    with torch.no_grad():
        pos = features(batch.pos.flatten(0, 1).to(x.dtype))
        unc = features(batch.unc.flatten(0, 1).to(x.dtype)) if batch.unc is not None else None
    loss, info = feature_drift_loss(features(x), pos, len(batch.labels), unc, batch_unconditional_weight(batch),
                                    config, chunk_groups)
    return loss, info | {"guidance/alpha": batch.alpha.mean().item()}


def build_features(cfg: DictConfig) -> MultiScaleFeatures:
    """The frozen MAE encoder named by feature.encoder_path (or raw samples only when it is null)."""
    path = cfg.feature.encoder_path
    encoder = ResNetEncoder.load(path) if path else None
    return MultiScaleFeatures(encoder, patch_sizes=cfg.feature.patch_sizes, raw=cfg.feature.raw,
                              raw_patches=cfg.feature.raw_patches)


def drift_config(cfg: DictConfig) -> DriftConfig:
    return DriftConfig(temperatures=tuple(cfg.drift.temperatures), stats_over=cfg.drift.stats_over)


def lr_schedule(cfg: DictConfig) -> LRSchedule:
    """optim.schedule over the budget: train.steps and/or train.max_minutes, whichever ends first."""
    if cfg.optim.schedule not in SCHEDULES:
        raise ValueError(f"optim.schedule must be one of {sorted(SCHEDULES)} (linear warm-up over optim.warmup_steps, "
                         f"then constant or cosine to 0 at the end of the budget), got {cfg.optim.schedule!r}")
    if cfg.train.steps is None and cfg.train.max_minutes is None:
        raise ValueError("set a budget: train.steps and/or train.max_minutes (training wall-clock minutes)")
    return LRSchedule(cfg.optim.lr, SCHEDULES[cfg.optim.schedule], cfg.optim.warmup_steps, cfg.train.steps,
                      cfg.train.max_minutes)


def train(cfg: DictConfig, evaluate: Optional[Callable[[DriftDiT], dict[str, float]]] = None) -> Path:
    """Train until the budget ends, resuming from run_dir's checkpoint; returns the EMA generator directory.

    `evaluate(ema_generator) -> metrics` runs on rank 0 every train.eval_every steps (and at the end).
    """
    rank, world, device = distributed.setup(cfg.device)
    run_dir = Path(cfg.run_dir)
    data = prepare_dataset(cfg.data, rank)
    shape = tuple(data[0][0].shape)
    torch.manual_seed(cfg.seed)  # same initial weights on every rank and in every run of this seed
    generator = DriftDiT(num_classes=cfg.data.num_classes, **cfg.model)
    if shape != (generator.channels, generator.input_size, generator.input_size):
        raise ValueError(f"data samples are {shape} but the model makes "
                         f"{(generator.channels, generator.input_size, generator.input_size)}: "
                         "set model.channels and model.input_size to match the dataset")
    generator.to(device)
    features = build_features(cfg).to(device)
    generator.checkpointing = cfg.train.checkpointing
    if features.encoder is not None:
        features.encoder.checkpointing = cfg.train.checkpointing
    ema = AveragedModel(generator, multi_avg_fn=ema_multi_avg_fn(cfg.optim.ema_decay, cfg.optim.ema_power),
                        use_buffers=True)
    model = DistributedDataParallel(generator) if world > 1 else generator
    opt = torch.optim.AdamW(generator.parameters(), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas),
                            weight_decay=cfg.optim.weight_decay)
    schedule = lr_schedule(cfg)
    queues = SampleQueues(cfg.data.num_classes, shape, cfg.queue.per_class, cfg.queue.unconditional,
                          dtype=getattr(torch, cfg.queue.dtype))
    step, pushed, train_seconds = 0, 0, 0.0  # train_seconds: wall-clock spent training (evaluations excluded)
    ckpt = load_checkpoint(run_dir) if cfg.train.resume else None
    if ckpt is not None:
        generator.load_state_dict(ckpt["generator"])
        ema.load_state_dict(ckpt["ema"])
        opt.load_state_dict(ckpt["optimizer"])
        step, pushed = ckpt["step"], ckpt["pushed"]
        train_seconds = ckpt.get("train_seconds", 0.0)  # checkpoints from before the clock have none
        queue_state = load_checkpoint(run_dir / "queues" / f"rank{rank}")
        if queue_state is not None and queue_state["step"] == step:
            queues.load_state_dict(queue_state["queues"])  # else the queues refill from the data stream
    sampler = ResumableSampler(len(data), cfg.seed, rank, world, start=pushed * cfg.queue.push_per_step)
    loader = iter(DataLoader(data, batch_size=cfg.queue.push_per_step, sampler=sampler, drop_last=True,
                             num_workers=cfg.train.num_workers, persistent_workers=cfg.train.num_workers > 0))
    logger = RunLogger(run_dir, resume_step=step) if rank == 0 else None  # drops rows logged after the checkpoint
    if logger and ckpt is None:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    config, b = drift_config(cfg), cfg.batch
    timed = cfg.train.max_minutes is not None
    clock_start = time.perf_counter() - train_seconds  # the clock continues from the checkpoint's

    def clock() -> float:
        """Training seconds so far; under a minutes budget rank 0's, so every rank stops and sets its LR alike."""
        seconds = time.perf_counter() - clock_start
        return distributed.from_rank0(seconds, device) if timed else seconds

    progress = schedule.progress(step, train_seconds)
    last_logged, last_seconds = step, train_seconds
    bar = tqdm(total=cfg.train.steps, initial=step, desc="drift", disable=rank != 0)

    def checkpoint() -> None:
        """The queues of every rank, then rank 0's generator, EMA, optimiser and clock."""
        save_checkpoint(run_dir / "queues" / f"rank{rank}", {"step": step, "queues": queues.state_dict()})
        distributed.barrier()
        if rank == 0:
            save_checkpoint(run_dir, {"step": step, "pushed": pushed, "train_seconds": train_seconds,
                                      "generator": generator.state_dict(), "ema": ema.state_dict(),
                                      "optimizer": opt.state_dict()})

    filled = False
    with stop_requests() as stop:  # SIGTERM / Ctrl-C: checkpoint at the next step boundary, then TrainingStopped
        while progress < 1.0:
            if not distributed.all_true(not stop, device):  # a rank was signalled: every rank saves, then all stop
                train_seconds = clock()
                checkpoint()
                bar.close()
                raise TrainingStopped(f"stopped by {stop[0].name if stop else 'another rank'} at step {step}: checkpoint "
                                      f"saved in {run_dir}; run the same command to resume")
            x, y = next(loader)
            queues.push(x, y)
            pushed += 1
            if not filled:  # every rank fills its queues before any rank steps; queues only grow, so once is enough
                ready = len(queues.ready_classes(b.n_pos)) >= b.n_classes and queues.unconditional.filled()[0] >= b.n_unc
                filled = distributed.all_true(ready, device)
                if not filled:
                    continue
            lr = schedule(step, progress)
            for group in opt.param_groups:
                group["lr"] = lr
            batch = draw_batch(queues, generator, cfg, step_generator(cfg.seed, step, rank)).to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda" and cfg.train.bf16):
                loss, info = drift_step_loss(model, features, batch, config, cfg.drift.chunk_groups)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = nn.utils.clip_grad_norm_(generator.parameters(), cfg.optim.grad_clip)
            opt.step()
            ema.update_parameters(generator)
            step += 1
            train_seconds = clock()
            progress = schedule.progress(step, train_seconds)
            last = progress >= 1.0
            bar.update()
            if timed:
                bar.set_postfix(budget=f"{min(progress, 1.0):.0%}", refresh=False)
            if step % cfg.train.log_every == 0 or last:
                metrics = {"loss/drift": distributed.mean_over_ranks(loss).item(), "loss/grad_norm": grad_norm.item(),
                           "lr": lr, "speed/steps_per_s": (step - last_logged) / (train_seconds - last_seconds),
                           "time/train_seconds": train_seconds, **info}
                last_logged, last_seconds = step, train_seconds
                if logger:
                    logger.log(step, metrics)
            if step % cfg.train.checkpoint_every == 0 or last:
                checkpoint()
            if logger and evaluate and (step % cfg.train.eval_every == 0 or last):
                paused = time.perf_counter()
                logger.log(step, evaluate(ema.module.eval()))
                ema.module.train()
                clock_start += time.perf_counter() - paused  # the evaluation is not training time
    bar.close()
    if logger:
        ema.module.save_pretrained(run_dir / GENERATOR_DIR)
        (run_dir / SUMMARY).write_text(json.dumps({"steps": step, "train_minutes": train_seconds / 60}))
        logger.plot()
    distributed.barrier()
    return run_dir / GENERATOR_DIR
