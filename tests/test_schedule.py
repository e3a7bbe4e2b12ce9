"""The LR schedule ends with the budget: steps, wall-clock minutes, or whichever comes first."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from drift_policy.training.schedule import LRSchedule

ROOT = Path(__file__).resolve().parents[1]


def test_step_budget_warms_up_then_follows_the_cosine_to_zero():
    schedule = LRSchedule(1e-3, "cosine", warmup_steps=10, num_steps=100, max_minutes=None)
    assert schedule(0, schedule.progress(0, 0.0)) == pytest.approx(1e-4)
    assert schedule(50, schedule.progress(50, 1e6)) == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert schedule(99, schedule.progress(99, 0.0)) < 1e-6 and schedule.progress(100, 0.0) == 1.0


def test_time_budget_sets_progress_and_the_earlier_budget_wins():
    by_time = LRSchedule(1e-3, "cosine", 0, num_steps=None, max_minutes=2.0)
    assert by_time.progress(10**9, 60.0) == pytest.approx(0.5) and by_time(5, 0.5) == pytest.approx(5e-4)
    both = LRSchedule(1e-3, "constant", 0, num_steps=1000, max_minutes=1.0)
    assert both.progress(100, 30.0) == pytest.approx(0.5) and both.progress(900, 30.0) == pytest.approx(0.9)
    assert both(5, 0.99) == pytest.approx(1e-3)


@pytest.mark.parametrize("kwargs, message", [
    (dict(kind="linear"), "must be 'cosine' or 'constant'"),
    (dict(num_steps=None, max_minutes=None), "set a budget"),
    (dict(num_steps=0), "num_steps must be >= 1"),
])
def test_bad_schedule_settings_are_refused(kwargs, message):
    settings = dict(lr=1e-3, kind="cosine", warmup_steps=0, num_steps=10, max_minutes=None) | kwargs
    with pytest.raises(ValueError, match=message):
        LRSchedule(**settings)


def test_a_minutes_budget_run_stops_on_time_with_the_lr_at_zero(tmp_path):
    cmd = [sys.executable, "train_policy.py", f"hydra.run.dir={tmp_path}", "policy.unet.down_dims=[16,32,64]", "train.batch_size=8",
           "train.warmup_steps=5", "train.log_every=5", "train.final_eval=false", "train.eval_every=0", "num_threads=1",
           "train.num_steps=null", "train.max_minutes=0.05"]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "train_summary.json").read_text())
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    lrs = [r["train/lr"] for r in rows if "train/lr" in r]
    assert 0.05 <= summary["train_minutes"] < 0.05 + 0.02 and summary["step"] > 10
    assert max(lrs) > 1e-4 and lrs[-1] < 1e-3 * max(lrs)  # the cosine ran its course within the budget
