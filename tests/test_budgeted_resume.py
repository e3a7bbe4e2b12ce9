"""Budgeted (wall-clock) arms (drift_policy.budget) survive being killed: training resumes with its clock and LR
schedule, a finished arm whose evaluation was killed re-runs only the evaluation, and learning-curve snapshots are
kept across the kill. Arms keep the run directories that bench/table.py and bench/compare.py resume from."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from drift_policy.budget import arm_config, arm_run_dir, compose_cfg, parse_arm, run_arm

ROOT = Path(__file__).resolve().parents[1]
TINY = ["policy.unet.down_dims=[8,16,32]", "train.batch_size=4", "train.warmup_steps=1", "train.log_every=1",
        "train.checkpoint_every=5", "num_threads=1"]
BUDGET_MIN = 0.25


def _checkpoint_step(run_dir: Path) -> int:
    try:
        return torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=False)["step"]
    except Exception:  # not written yet, or being replaced
        return 0


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_killed_budgeted_run_resumes_with_its_clock_and_lr_schedule(tmp_path):
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "train_policy.py", f"hydra.run.dir={run_dir}", *TINY, "train.num_steps=null",
           f"train.max_minutes={BUDGET_MIN}", "train.eval_every=0", "train.final_eval=false", "train.snapshots=[0.25]"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while proc.poll() is None and time.time() < deadline and not (run_dir / "snapshots" / "25pct" / "snapshot.json").exists():
        time.sleep(0.05)
    time.sleep(1.0)
    assert proc.poll() is None, "the run ended before it could be killed mid-budget"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    state = torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=False)
    killed_seconds = state["train_seconds"]
    assert 0 < killed_seconds < 60 * BUDGET_MIN and state["step"] >= 5

    started = time.perf_counter()
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert f"Resuming {run_dir} at step {state['step']}" in result.stdout
    summary = json.loads((run_dir / "train_summary.json").read_text())
    # the clock continued: the whole run trained about one budget, not one budget after the kill
    assert BUDGET_MIN <= summary["train_minutes"] < BUDGET_MIN + 0.1
    assert time.perf_counter() - started < 60 * BUDGET_MIN - killed_seconds + 40  # + start-up, not a second budget
    # the LR schedule continued from the checkpoint's progress and reached ~0 at the end of the budget
    resumed = [r for r in _rows(run_dir) if r["step"] > state["step"] and "train/progress" in r]
    assert resumed[0]["train/progress"] >= killed_seconds / (60 * BUDGET_MIN) - 1e-9
    assert resumed[-1]["train/lr"] < 1e-3 * compose_cfg([]).train.lr + 1e-12
    # the snapshot saved before the kill is still there, not saved again
    assert json.loads((run_dir / "snapshots" / "25pct" / "snapshot.json").read_text())["step"] <= state["step"] + 5


def test_arms_parse_and_name_their_run_dirs_as_the_resumed_benchmarks_expect(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the package's configs, not the cwd's
    assert compose_cfg(["task=lift", "policy=diffusion"]).task.name == "lift"
    assert parse_arm("G4=policy=drift policy.n_generated=4") == ("G4", ["policy=drift", "policy.n_generated=4"])
    with pytest.raises(ValueError, match="must look like 'name=policy=drift"):
        parse_arm("=policy=drift")
    g4, g2 = arm_config("push_t", ["policy=drift", "policy.n_generated=4"]), arm_config("push_t", ["policy=drift", "policy.n_generated=2"])
    assert g4["policy"]["n_generated"] == 4 and g4["train"]["batch_size"] == compose_cfg([]).train.batch_size
    assert arm_run_dir(tmp_path, "table", "push_t", "drift", 30.0, g4).name.startswith("table_push_t_drift_30min_")
    # a changed config (here G, as a changed default would) gets a run of its own, never the old checkpoint
    assert arm_run_dir(tmp_path, "table", "push_t", "drift", 30.0, g4) == arm_run_dir(tmp_path, "table", "push_t", "drift", 30.0, dict(g4))
    assert arm_run_dir(tmp_path, "table", "push_t", "drift", 30.0, g4) != arm_run_dir(tmp_path, "table", "push_t", "drift", 30.0, g2)
    # the budget sets num_steps & co. itself, so their defaults do not re-measure an arm; what it learns with does
    assert arm_config("push_t", ["train.num_steps=5", "train.eval_every=3"]) == arm_config("push_t", [])
    assert arm_config("push_t", ["train.lr=1e-5"]) != arm_config("push_t", [])


def test_a_tasks_own_policy_file_sets_only_its_policy_on_that_task():
    # configs/task_policy/can_drift.yaml: Can's drift arm is the ChunkMLP at G=8; DP on Can and drift elsewhere keep the defaults
    can_drift, can_dp, push_t_drift = (arm_config(task, [f"policy={policy}"]) for task, policy in
                                       (("can", "drift"), ("can", "diffusion"), ("push_t", "drift")))
    assert (can_drift["policy"]["backbone"], can_drift["policy"]["n_generated"]) == ("mlp", 8)
    assert "backbone" not in can_dp["policy"] and "backbone" not in push_t_drift["policy"]
    assert push_t_drift["policy"]["n_generated"] == compose_cfg([]).policy.n_generated
    assert arm_config("can", ["policy=drift", "policy.n_generated=4"])["policy"]["n_generated"] == 4  # the command line wins


def test_a_finished_arm_whose_evaluation_was_killed_reruns_only_the_evaluation(tmp_path):
    run_dir = arm_run_dir(tmp_path / "results", "t", "push_t", "drift", 0.05, {})
    arm = dict(task="push_t", minutes=0.05, run_dir=run_dir, rollouts=2, n_envs=1, device="cpu", curve_rollouts=1,
               extra_overrides=[*TINY, "task.max_steps=16"])
    first = run_arm("drift", ["policy=drift"], **arm)
    assert run_dir.parent == tmp_path / "results" / "runs" and (run_dir / "eval" / "eval.json").exists()
    assert list(first) == ["row", "overrides", "result", "episodes", "train", "curve"]
    assert [p["rollouts"] for p in first["curve"]] == [1, 1, 1, 2]  # 25/50/75% snapshots, then the final evaluation
    speeds = first["train"]["reference_step_ms"]  # the machine's speed, measured once when training started
    assert len(speeds) == 1 and 0 < speeds[0] < 10_000 and first["row"]["ref step ms"] == f"{speeds[0]:.0f}"
    checkpoint_mtime = (run_dir / "checkpoints" / "latest.pt").stat().st_mtime_ns
    rows = _rows(run_dir)

    eval_json = run_dir / "eval" / "eval.json"
    kept = eval_json.stat().st_mtime_ns
    again = run_arm("drift", ["policy=drift"], **arm)  # everything done: nothing re-run
    assert eval_json.stat().st_mtime_ns == kept and again["train"]["steps"] == first["train"]["steps"]

    eval_json.unlink()  # an evaluation killed before it wrote its result
    third = run_arm("drift", ["policy=drift"], **arm)
    assert eval_json.exists() and third["result"]["rollouts"] == 2
    assert third["train"]["steps"] == first["train"]["steps"] and _rows(run_dir) == rows  # no training step taken
    assert third["train"]["reference_step_ms"] == speeds  # a finished run does not measure the machine again
    assert (run_dir / "checkpoints" / "latest.pt").stat().st_mtime_ns >= checkpoint_mtime
    assert [e["max_reward"] for e in third["episodes"]] == pytest.approx([e["max_reward"] for e in first["episodes"]], abs=1e-6)
