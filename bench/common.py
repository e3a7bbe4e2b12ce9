"""Helpers shared by the benchmark scripts: config composition, budgeted training, tables."""
from __future__ import annotations

import json
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


def train_for_minutes(minutes: float, overrides: Sequence[str], run_dir: Path,
                      snapshots: Sequence[float] = ()) -> tuple[Path, dict[str, Any]]:
    """Train for a wall-clock budget (the LR schedule ends with it); returns (policy dir, facts). A run killed at any
    point resumes from its last checkpoint with its clock and LR schedule; a finished run returns at once. The EMA
    policy is also saved at each `snapshots` fraction of the budget (<run_dir>/snapshots) for a learning curve."""
    cfg = compose_cfg([*overrides, "train.num_steps=null", f"train.max_minutes={minutes}", "train.eval_every=0",
                       "train.final_eval=false", "train.resume=true", f"train.snapshots=[{','.join(map(str, snapshots))}]"])
    policy_dir = train(cfg, run_dir)
    summary = json.loads((run_dir / "train_summary.json").read_text())
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    step_times = [r["train/step_time_s"] for r in rows if "train/step_time_s" in r][1:]  # skip the warm-up window
    final_lr = [r["train/lr"] for r in rows if "train/lr" in r][-1]
    return policy_dir, {"train_minutes": summary["train_minutes"], "steps": summary["step"],
                        "step_time_s": sum(step_times) / max(len(step_times), 1), "final_lr": final_lr}


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """Rows of dicts with the same keys as a markdown table (floats to 3 decimals)."""
    keys = list(rows[0])
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(fmt(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines)
