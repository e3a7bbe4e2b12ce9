"""Helpers shared by the benchmark scripts: config composition, budgeted training, tables."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from drift_policy.training.trainer import train

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def compose_cfg(overrides: Sequence[str]) -> DictConfig:
    """The train_policy config with hydra overrides, as the command line would build it."""
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base=None):
        return compose("train_policy", overrides=list(overrides))


def measured_step_time(overrides: Sequence[str], run_dir: Path, steps: int = 25) -> float:
    """Seconds per training step of this config on this machine (a short throwaway run)."""
    cfg = compose_cfg([*overrides, f"train.num_steps={steps}", "train.log_every=5", "train.eval_every=0",
                       "train.final_eval=false", "train.resume=false", "train.warmup_steps=1"])
    train(cfg, run_dir)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    times = [r["train/step_time_s"] for r in rows if "train/step_time_s" in r][1:]  # skip the warm-up window
    return sum(times) / len(times)


def train_for_minutes(minutes: float, overrides: Sequence[str], run_dir: Path) -> tuple[Path, dict[str, Any]]:
    """Train with the LR schedule sized to the wall-clock budget; returns (policy dir, facts)."""
    step_time = measured_step_time(overrides, run_dir.with_name(run_dir.name + "_calibration"))
    num_steps = max(10, math.floor(0.97 * 60 * minutes / step_time))
    cfg = compose_cfg([*overrides, f"train.num_steps={num_steps}", f"train.max_minutes={minutes}",
                       "train.eval_every=0", "train.final_eval=false", "train.resume=false"])
    import time

    start = time.monotonic()
    policy_dir = train(cfg, run_dir)
    summary = json.loads((run_dir / "train_summary.json").read_text())
    return policy_dir, {"train_minutes": (time.monotonic() - start) / 60, "steps": summary["step"],
                        "planned_steps": num_steps, "step_time_s": step_time}


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """Rows of dicts with the same keys as a markdown table (floats to 3 decimals)."""
    keys = list(rows[0])
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(fmt(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines)
