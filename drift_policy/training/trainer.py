"""The training loop shared by every policy: dataset -> normaliser -> policy -> optimiser, with EMA,
periodic rollouts, logs, atomic checkpoints and resume."""
from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from diffusers.training_utils import EMAModel
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from drift_policy.data.dataset import PolicyDataset
from drift_policy.demos.generate import ensure_demonstrations
from drift_policy.evaluation import make_runner
from drift_policy.policies import Policy
from drift_policy.tasks import load_task
from drift_policy.training.checkpoint import CHECKPOINT, load_checkpoint, save_checkpoint
from drift_policy.training.logging import RunLogger
from drift_policy.training.schedule import LRSchedule
from drift_policy.training.stopping import TrainingStopped, stop_requests

POLICY_DIR = "policy"
SNAPSHOT_DIR = "snapshots"  # <run>/snapshots/<pct>pct: the EMA policy at train.snapshots fractions of the budget


def snapshot_name(fraction: float) -> str:
    return f"{round(100 * fraction):02d}pct"


# Parts of the config that must not change between a run and its resumption; of the task, only what shapes the
# training data (its dataset's path, env, metrics and expert may change: a moved data root must not block a resume).
IDENTITY_KEYS = ("task", "policy", "seed", "train.batch_size", "train.num_steps", "train.max_minutes", "train.lr")
TASK_IDENTITY_KEYS = ("shape_meta", "horizon", "n_obs_steps", "n_action_steps", "max_train_episodes", "val_ratio")


def build_dataset(task: DictConfig, split: str = "train", seed: int = 42) -> PolicyDataset:
    """The task's replay buffer (made by its scripted expert on first use) as a sequence dataset."""
    definition = load_task(task)
    ensure_demonstrations(definition)
    buffer = definition.make_dataset()
    return PolicyDataset(
        buffer, obs_keys=list(task.shape_meta.obs), horizon=task.horizon, n_obs_steps=task.n_obs_steps,
        n_action_steps=task.n_action_steps, val_ratio=task.get("val_ratio", 0.02),
        max_train_episodes=task.get("max_train_episodes"), seed=seed, split=split,
    )


def build_policy(cfg: DictConfig) -> Policy:
    """Instantiate the configured policy for the task; the task config is saved inside it for eval."""
    task = cfg.task
    policy_cfg = OmegaConf.to_container(cfg.policy, resolve=True)
    policy_cfg.pop("name", None)
    # a task may set encoder defaults (e.g. a CPU-sized ResNet for its cameras); the policy's keys win
    task_encoder = OmegaConf.to_container(task.obs_encoder, resolve=True) if "obs_encoder" in task else {}
    policy_cfg["obs_encoder"] = {**task_encoder, **policy_cfg.get("obs_encoder", {})}
    return hydra.utils.instantiate(
        policy_cfg, shape_meta=OmegaConf.to_container(task.shape_meta, resolve=True),
        n_obs_steps=task.n_obs_steps, horizon=task.horizon, n_action_steps=task.n_action_steps,
        task=OmegaConf.to_container(task, resolve=True), _recursive_=False,  # the task's _target_s stay data
    )


def _identity(cfg: DictConfig) -> dict[str, Any]:
    values = {key: OmegaConf.select(cfg, key) for key in IDENTITY_KEYS}
    return {k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v for k, v in values.items()}


def _comparable(identity: dict[str, Any]) -> dict[str, Any]:
    """An identity (this run's, or one saved in a checkpoint) reduced to what a resumption must keep."""
    task = identity.get("task") or {}
    dataset = {k: v for k, v in (task.get("dataset") or {}).items() if k not in ("path", "_target_")}
    return {**identity, "task": {**{k: task.get(k) for k in TASK_IDENTITY_KEYS}, "dataset": dataset}}


def train(cfg: DictConfig, run_dir: Path) -> Path:
    """Train (or resume) the run in run_dir; returns the saved policy directory (EMA weights)."""
    run_dir = Path(run_dir)
    torch.manual_seed(cfg.seed)
    if cfg.get("num_threads"):
        torch.set_num_threads(int(cfg.num_threads))
    device = torch.device(cfg.device)
    tc = cfg.train
    for key in ("batch_size", "log_every", "checkpoint_every"):
        if not isinstance(tc.get(key), int) or tc.get(key) < 1:
            raise ValueError(f"train.{key} must be a positive integer, got {tc.get(key)!r}")

    dataset = build_dataset(cfg.task, "train", cfg.seed)
    val_dataset = dataset.val_split()
    policy = build_policy(cfg)
    policy.fit_normalizer(dataset.normalizer_data())
    policy.to(device)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=tc.lr, betas=tuple(tc.betas), weight_decay=tc.weight_decay)
    schedule = LRSchedule(tc.lr, tc.lr_scheduler, tc.warmup_steps, tc.get("num_steps"), tc.get("max_minutes"))
    ema = EMAModel(policy.parameters(), decay=tc.ema.max_decay, use_ema_warmup=True, power=tc.ema.power)
    rng = np.random.default_rng(cfg.seed)
    step, train_seconds = 0, 0.0  # train_seconds: wall-clock spent training (periodic evaluations excluded)

    state = load_checkpoint(run_dir) if tc.resume else None
    if state is not None:
        saved, now = _comparable(state["identity"]), _comparable(_identity(cfg))
        if saved != now:
            changed = [k for k in IDENTITY_KEYS if saved.get(k) != now.get(k)]
            raise ValueError(f"{run_dir} holds a checkpoint of a different config (changed: {changed}). "
                             f"Start a new run with run_name=<new name>, or train.resume=false to overwrite it.")
        policy.load_state_dict(state["policy"])
        optimizer.load_state_dict(state["optimizer"])
        ema.load_state_dict(state["ema"])
        rng.bit_generator.state = state["numpy_rng"]
        torch.set_rng_state(state["torch_rng"])
        step, train_seconds = state["step"], state["train_seconds"]
        print(f"Resuming {run_dir} at step {step}")

    logger = RunLogger(run_dir, resume_step=step)  # drops rows logged after the checkpoint (all, on a fresh start)
    OmegaConf.save(cfg, run_dir / "config.yaml")

    def checkpoint() -> None:
        save_checkpoint(run_dir, {
            "step": step, "identity": _identity(cfg), "policy": policy.state_dict(), "optimizer": optimizer.state_dict(),
            "train_seconds": train_seconds, "ema": ema.state_dict(), "numpy_rng": rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
        })

    def ema_policy() -> Policy:
        averaged = copy.deepcopy(policy)
        ema.copy_to(averaged.parameters())
        return averaged.eval()

    def evaluate() -> dict[str, float]:
        averaged = ema_policy()
        metrics: dict[str, float] = {}
        if len(val_dataset) > 0:
            batch = val_dataset.get_batch(np.arange(min(len(val_dataset), 256)))
            with torch.inference_mode():
                obs = _to(batch["obs"], device)
                pred = averaged.generate(obs, averaged.draw_noise(len(batch["action"]), device))
            metrics["eval/val_action_mse"] = float(((pred.cpu() - batch["action"]) ** 2).mean())
        if tc.eval_rollouts > 0:
            runner = make_runner(policy.config.task, tc.eval_rollouts, seed_start=cfg.eval_seed_start)
            result = runner.run(averaged)
            metrics.update({"eval/mean_score": result["mean_score"], "eval/success_rate": result["success_rate"]})
        return metrics

    def log_window() -> None:
        """Mean loss and step time of the steps since the last log, the LR and budget used."""
        nonlocal window, step_start
        seconds = (time.perf_counter() - step_start) / len(window)
        metrics = {"train/loss": float(np.mean(window)), "train/lr": lr, "train/step_time_s": seconds,
                   "train/progress": progress, **info}
        logger.log(step, metrics)
        bar.set_postfix(loss=f"{metrics['train/loss']:.4f}", s_per_step=f"{seconds:.3f}", budget=f"{progress:.0%}")
        window, step_start = [], time.perf_counter()

    def progress_now() -> float:
        return schedule.progress(step, train_seconds + time.perf_counter() - clock)

    def save_snapshot(fraction: float) -> None:
        """The EMA policy at this point of the budget, for a learning curve (evaluated after training)."""
        directory = ema_policy().save_pretrained(run_dir / SNAPSHOT_DIR / snapshot_name(fraction))
        (directory / "snapshot.json").write_text(json.dumps({"fraction": fraction, "step": step, "train_minutes": train_seconds / 60}))

    # fractions of the budget not yet saved (a resumed run keeps those it saved before it was stopped)
    pending_snapshots = sorted(f for f in tc.get("snapshots") or [] if not (run_dir / SNAPSHOT_DIR / snapshot_name(f) / "snapshot.json").exists())
    if any(not 0 < f < 1 for f in pending_snapshots):
        raise ValueError(f"train.snapshots are fractions of the budget in (0, 1), got {list(tc.snapshots)}")

    policy.train()
    bar = tqdm(total=tc.get("num_steps"), initial=step, desc="train", dynamic_ncols=True)
    window: list[float] = []
    step_start = clock = time.perf_counter()
    with stop_requests() as stop:  # SIGTERM / Ctrl-C: checkpoint at the next step boundary, then TrainingStopped
        while (progress := schedule.progress(step, train_seconds + time.perf_counter() - clock)) < 1.0:
            if stop:
                train_seconds += time.perf_counter() - clock
                checkpoint()
                bar.close()
                logger.close()
                raise TrainingStopped(f"stopped by {stop[0].name} at step {step}: checkpoint saved to {run_dir / CHECKPOINT}; "
                                      f"run the same command to resume")
            lr = schedule(step, progress)
            for group in optimizer.param_groups:
                group["lr"] = lr
            indices = rng.integers(0, len(dataset), size=tc.batch_size)
            batch = dataset.get_batch(indices)
            batch = {"obs": _to(batch["obs"], device), "action": batch["action"].to(device)}
            if policy.extra_positives:
                batch["neighbor_action"] = dataset.neighbor_actions(indices, policy.extra_positives).to(device)
            loss, info = policy.compute_loss(batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {loss.item()} at step {step}; lower train.lr or check the dataset for NaN")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if tc.get("grad_clip"):
                torch.nn.utils.clip_grad_norm_(policy.parameters(), tc.grad_clip)
            optimizer.step()
            ema.step(policy.parameters())
            step += 1
            window.append(loss.item())
            bar.update(1)
            if step % tc.log_every == 0:
                log_window()
            if step % tc.checkpoint_every == 0:
                now = time.perf_counter()
                train_seconds, clock = train_seconds + now - clock, now
                checkpoint()
            if pending_snapshots and progress_now() >= pending_snapshots[0]:
                train_seconds += time.perf_counter() - clock
                save_snapshot(pending_snapshots.pop(0))
                clock = time.perf_counter()  # saving is not training time
            if tc.eval_every and step % tc.eval_every == 0 and schedule.progress(step, 0.0) < 1.0:
                train_seconds += time.perf_counter() - clock
                metrics = evaluate()
                logger.log(step, metrics)
                bar.write(f"step {step}: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
                policy.train()
                clock = step_start = time.perf_counter()  # the evaluation's time is not training time
    if window:
        log_window()
    bar.close()

    train_seconds += time.perf_counter() - clock
    checkpoint()
    policy_dir = ema_policy().save_pretrained(run_dir / POLICY_DIR)
    final = evaluate() if tc.final_eval else {}
    if final:
        logger.log(step, final)
        print("final: " + ", ".join(f"{k}={v:.4f}" for k, v in final.items()))
    (run_dir / "train_summary.json").write_text(json.dumps({"step": step, "train_minutes": train_seconds / 60, **final}, indent=2))
    logger.plot()
    logger.close()
    return policy_dir


def _to(obs: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in obs.items()}
