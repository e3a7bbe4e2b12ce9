"""Training end to end through the real scripts: smoke run, kill + resume, determinism, evaluation."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from drift_policy.training.logging import RunLogger

ROOT = Path(__file__).resolve().parents[1]
FAST = [
    "policy.unet.down_dims=[16,32,64]", "train.batch_size=8", "train.warmup_steps=5", "train.log_every=5",
    "train.eval_rollouts=0", "train.final_eval=false", "train.eval_every=0", "num_threads=1",
]


def _train(run_dir: Path, *overrides: str, wait: bool = True) -> subprocess.Popen | subprocess.CompletedProcess:
    cmd = [sys.executable, "train_policy.py", f"hydra.run.dir={run_dir}", *FAST, *overrides]
    if not wait:
        return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


def _weights(run_dir: Path) -> dict:
    return load_file(str(run_dir / "policy" / "model.safetensors"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("runs") / "smoke"
    _train(run_dir, "train.num_steps=30")
    return run_dir


def test_smoke_run_logs_finite_loss_and_saves_everything(trained):
    rows = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train/loss"] for r in rows if "train/loss" in r]
    assert len(losses) == 6 and all(map(lambda v: v == v and abs(v) < 1e6, losses))
    for name in ("policy/config.json", "policy/model.safetensors", "policy/normalizer.safetensors",
                 "checkpoints/latest.pt", "curves.png", "config.yaml"):
        assert (trained / name).exists(), name
    assert not list(trained.glob("*.log")), "hydra's job log file stayed empty; it is switched off"
    assert json.loads((trained / "train_summary.json").read_text())["step"] == 30


def test_same_seed_gives_the_same_weights(trained, tmp_path):
    _train(tmp_path / "again", "train.num_steps=30")
    for key, value in _weights(trained).items():
        torch.testing.assert_close(_weights(tmp_path / "again")[key], value, rtol=0, atol=0)


def test_killed_run_resumes_at_its_checkpoint_and_ends_where_an_unbroken_run_does(trained, tmp_path):
    """Killed after logging step 15 with its checkpoint at step 10: the resumed run re-logs 15 once."""
    run_dir = tmp_path / "killed"
    proc = _train(run_dir, "train.num_steps=30", "train.checkpoint_every=10", wait=False)
    deadline = time.time() + 120
    while 15 not in _metric_steps(run_dir) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=False)["step"]
    assert killed_at == 10 and _metric_steps(run_dir) == [5, 10, 15], "not killed between step 15 and 20; needs a slower run"
    result = _train(run_dir, "train.num_steps=30", "train.checkpoint_every=10")
    assert f"Resuming {run_dir} at step {killed_at}" in result.stdout
    for key, value in _weights(trained).items():  # same seed, same data order: same weights as unbroken
        torch.testing.assert_close(_weights(run_dir)[key], value, rtol=0, atol=0)
    # the rows logged after the checkpoint were dropped, not duplicated: both logs read like the unbroken run's
    assert _metric_steps(run_dir) == _metric_steps(trained) == [5, 10, 15, 20, 25, 30]
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [5, 10, 15, 20, 25, 30]


def test_resumed_log_keeps_rows_up_to_the_checkpoint_and_skips_a_cut_off_line(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 5}\n{"step": 10}\n{"step": 15}\n{"step": 20, "train/lo')
    logger = RunLogger(tmp_path, resume_step=10)
    logger.log(15, {"train/loss": 1.0})
    logger.close()
    assert _metric_steps(tmp_path) == [5, 10, 15]


def _metric_steps(run_dir: Path) -> list[int]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line)["step"] for line in path.read_text().splitlines()] if path.exists() else []


def test_a_run_that_fails_before_its_first_checkpoint_leaves_no_folder(tmp_path):
    cmd = [sys.executable, "train_policy.py", f"hydra.run.dir={tmp_path / 'bad'}", *FAST, "train.batch_size=0"]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "train.batch_size must be a positive integer, got 0" in result.stderr
    assert not (tmp_path / "bad").exists()


def test_resuming_with_another_config_is_refused(trained, tmp_path):
    run_dir = tmp_path / "mismatch"
    _train(run_dir, "train.num_steps=5")
    cmd = [sys.executable, "train_policy.py", f"hydra.run.dir={run_dir}", *FAST, "train.num_steps=5", "policy.n_generated=6"]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "different config" in result.stderr + result.stdout


@pytest.mark.parametrize("policy_args", [[], ["policy=diffusion", "policy.sampler=ddim", "policy.num_inference_steps=4"]],
                         ids=["drift", "diffusion"])
def test_two_rollout_evaluation_through_eval_policy(tmp_path, policy_args):
    run_dir = tmp_path / "run"
    _train(run_dir, "train.num_steps=5", "task.max_steps=40", *policy_args)
    out = tmp_path / "eval"
    result = subprocess.run([sys.executable, "eval_policy.py", "--checkpoint", str(run_dir / "policy"), "--rollouts", "2",
                             "--videos", "1", "--output", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads((out / "eval.json").read_text())
    assert len(report["episodes"]) == 2 and [e["seed"] for e in report["episodes"]] == [100000, 100001]
    assert 0.0 <= report["mean_score"] <= 1.0 and 0.0 <= report["success_rate"] <= 1.0
    assert report["latency_batch1_ms"]["p50"] > 0 and report["nfe"] == (1 if not policy_args else 4)
    assert "mean_score" in result.stdout and len(list((out / "videos").glob("*.mp4"))) == 1
