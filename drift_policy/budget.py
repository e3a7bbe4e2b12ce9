"""Train for a wall-clock budget, then evaluate: the arms of bench/compare.py and bench/table.py.

An arm is a name and train_policy overrides ("drift=policy=drift"). `run_arm` trains it for `minutes` (the LR
schedule ends with the budget) and runs Diffusion Policy's evaluation from seed 100000. Everything resumes: a killed
arm continues training from its last checkpoint (clock and LR schedule kept) and re-runs only the evaluations it had
not finished; a finished one returns at once.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import statistics
import time
from pathlib import Path
from typing import Any, Sequence

from hydra import compose, initialize_config_module
import torch
from omegaconf import DictConfig, OmegaConf

from drift_policy.evaluation import episode_metrics, evaluate_once
from drift_policy.models.unet1d import ConditionalUnet1D
from drift_policy.policies import Policy
from drift_policy.training.trainer import SNAPSHOT_DIR, train

__all__ = ["CURVE", "DEFAULT_ARMS", "reference_step_ms", "compose_cfg", "arm_config", "train_for_minutes", "parse_arm", "arm_run_dir", "run_arm"]

CURVE = (0.25, 0.5, 0.75)  # fractions of the budget at which a learning curve evaluates the EMA policy
DEFAULT_ARMS = ["drift=policy=drift", "diffusion=policy=diffusion policy.sampler=ddpm policy.num_inference_steps=100"]
# The train settings a budgeted run sets itself (train_for_minutes), so their defaults cannot change what an arm learns.
BUDGET_KEYS = ("num_steps", "max_minutes", "eval_every", "final_eval", "resume", "snapshots")


def compose_cfg(overrides: Sequence[str]) -> DictConfig:
    """The train_policy config of the installed package with hydra overrides, as the command line builds it."""
    with initialize_config_module(config_module="drift_policy.configs", version_base=None):
        return compose("train_policy", overrides=list(overrides))


def arm_config(task: str, overrides: Sequence[str]) -> dict[str, Any]:
    """The resolved policy and training settings an arm trains with on `task`. Benchmarks keep them with a measured
    arm and reuse the arm only while they are unchanged, so a changed default re-measures it instead of passing off
    the old numbers as the new config's. BUDGET_KEYS are left out: the budget overrides them."""
    cfg = compose_cfg([f"task={task}", *overrides])
    train = {k: v for k, v in OmegaConf.to_container(cfg.train, resolve=True).items() if k not in BUDGET_KEYS}
    return {"seed": cfg.seed, "policy": OmegaConf.to_container(cfg.policy, resolve=True), "train": train}


def reference_step_ms(steps: int = 15, warmup: int = 3) -> float:
    """Median ms of one fixed training step (a 32-64-128 U-Net, 64 Push-T-sized chunks, forward, backward, Adam): the
    machine's speed, recorded with each budgeted run, since the same minutes give different step counts on machines
    of one kind (0.05 vs 0.09 s per Push-T DP step seen here). Fixed here, not read from the configs, so it stays
    comparable across versions."""
    generator = torch.Generator().manual_seed(0)
    net = ConditionalUnet1D(action_dim=2, cond_dim=40, down_dims=(32, 64, 128))
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
    x, cond, t = torch.randn(64, 16, 2, generator=generator), torch.randn(64, 40, generator=generator), torch.zeros(64)
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        loss = net(x, cond, t).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(1e3 * (time.perf_counter() - start))
    return statistics.median(times[warmup:])


def _log_machine_speed(run_dir: Path) -> list[float]:
    """Append this machine's reference_step_ms to <run_dir>/machine_speed.jsonl unless the run has finished training
    (a resumed arm may train on several machines); returns every value recorded for the run."""
    log = run_dir / "machine_speed.jsonl"
    if not (run_dir / "train_summary.json").exists():
        run_dir.mkdir(parents=True, exist_ok=True)
        record = {"reference_step_ms": round(reference_step_ms(), 2), "time": datetime.datetime.now().isoformat(timespec="seconds")}
        with log.open("a") as f:
            f.write(json.dumps(record) + "\n")
    return [json.loads(line)["reference_step_ms"] for line in log.read_text().splitlines()] if log.exists() else []


def train_for_minutes(minutes: float, overrides: Sequence[str], run_dir: Path,
                      snapshots: Sequence[float] = ()) -> tuple[Path, dict[str, Any]]:
    """Train for a wall-clock budget (the LR schedule ends with it); returns (policy dir, facts). A run killed at any
    point resumes from its last checkpoint with its clock and LR schedule; a finished run returns at once. The EMA
    policy is also saved at each `snapshots` fraction of the budget (<run_dir>/snapshots) for a learning curve."""
    cfg = compose_cfg([*overrides, "train.num_steps=null", f"train.max_minutes={minutes}", "train.eval_every=0",
                       "train.final_eval=false", "train.resume=true", f"train.snapshots=[{','.join(map(str, snapshots))}]"])
    speeds = _log_machine_speed(run_dir)
    policy_dir = train(cfg, run_dir)
    summary = json.loads((run_dir / "train_summary.json").read_text())
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    step_times = [r["train/step_time_s"] for r in rows if "train/step_time_s" in r][1:]  # skip the warm-up window
    final_lr = [r["train/lr"] for r in rows if "train/lr" in r][-1]
    return policy_dir, {"train_minutes": summary["train_minutes"], "steps": summary["step"],
                        "step_time_s": sum(step_times) / max(len(step_times), 1), "final_lr": final_lr,
                        "reference_step_ms": speeds}


def parse_arm(text: str) -> tuple[str, list[str]]:
    """'name=override override ...' -> (name, overrides); ValueError when it has no name."""
    name, sep, overrides = text.partition("=")
    if not sep or not name:
        raise ValueError(f"arm {text!r} must look like 'name=policy=drift policy.n_generated=4'")
    return name, overrides.split()


def arm_run_dir(results: Path, name: str, task: str, arm: str, minutes: float, config: dict[str, Any]) -> Path:
    """Where an arm of the benchmark `name` trains and evaluates: <results>/runs/<name>_<task>_<arm>_<minutes>min_<hash>,
    the hash of its `arm_config`, so an arm whose config changed starts a run of its own instead of resuming the old one."""
    digest = hashlib.sha1(json.dumps(config, sort_keys=True).encode()).hexdigest()[:8]
    return results / "runs" / f"{name}_{task}_{arm}_{minutes:g}min_{digest}"


def run_arm(arm: str, overrides: Sequence[str], *, task: str, minutes: float, run_dir: Path, rollouts: int, n_envs: int,
            device: str, curve_rollouts: int = 0, extra_overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Train one arm (its overrides, then `extra_overrides`) for the budget in run_dir and evaluate it; returns the
    table row plus the facts behind it (row, overrides, result, episodes, train, curve). With curve_rollouts > 0 the
    EMA policy at CURVE fractions of the budget is scored on that many episodes too (curve: ends with the final one)."""
    policy_dir, facts = train_for_minutes(minutes, [f"task={task}", f"device={device}", *overrides, *extra_overrides],
                                          run_dir, snapshots=CURVE if curve_rollouts else ())
    result = evaluate_once(policy_dir, rollouts, n_envs, 2, run_dir / "eval", device)
    curve = []
    for snapshot in sorted((run_dir / SNAPSHOT_DIR).glob("*pct")) if curve_rollouts else []:
        point = evaluate_once(snapshot, curve_rollouts, n_envs, 0, run_dir / "curve" / snapshot.name, device)
        meta = json.loads((snapshot / "snapshot.json").read_text())
        curve.append({"minutes": meta["train_minutes"], "steps": meta["step"], "rollouts": curve_rollouts, **episode_metrics(point["episodes"])})
    if curve:
        curve.append({"minutes": facts["train_minutes"], "steps": facts["steps"], "rollouts": rollouts, **episode_metrics(result["episodes"])})
    params = sum(p.numel() for p in Policy.from_pretrained(policy_dir).parameters())
    row = {"arm": arm, "mean_score": _pm(result, "mean_score"), "success": _pm(result, "success_rate")}
    if "dp_test_seeds" in result:
        subset = result["dp_test_seeds"]
        row.update({"mean_score (first 50)": _pm(subset, "mean_score"), "success (first 50)": _pm(subset, "success_rate")})
    row.update({"NFE": result["nfe"], "latency p50 ms": round(result["latency_batch1_ms"]["p50"], 2), "steps": facts["steps"],
                "s/step": round(facts["step_time_s"], 3), "final lr": f"{facts['final_lr']:.1e}", "params M": round(params / 1e6, 2),
                "ref step ms": " / ".join(f"{v:.0f}" for v in facts["reference_step_ms"]) or "—"})
    return {"row": row, "overrides": list(overrides), "result": {k: v for k, v in result.items() if k != "episodes"},
            "episodes": result["episodes"], "train": facts, "curve": curve}


def _pm(result: dict[str, Any], key: str) -> str:
    return f"{result[key]:.3f} ± {result[key + '_se']:.3f}"
