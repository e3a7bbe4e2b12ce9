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
    assert json.loads((trained / "train_summary.json").read_text())["step"] == 30


def test_same_seed_gives_the_same_weights(trained, tmp_path):
    _train(tmp_path / "again", "train.num_steps=30")
    for key, value in _weights(trained).items():
        torch.testing.assert_close(_weights(tmp_path / "again")[key], value, rtol=0, atol=0)


def test_killed_run_resumes_at_its_checkpoint_and_ends_where_an_unbroken_run_does(trained, tmp_path):
    run_dir = tmp_path / "killed"
    proc = _train(run_dir, "train.num_steps=30", "train.checkpoint_every=5", wait=False)
    checkpoint = run_dir / "checkpoints" / "latest.pt"
    deadline = time.time() + 120
    while not checkpoint.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = torch.load(checkpoint, weights_only=False)["step"]
    assert 0 < killed_at < 30, "the run finished before it could be killed; the test needs a slower run"
    result = _train(run_dir, "train.num_steps=30", "train.checkpoint_every=5")
    assert f"Resuming {run_dir} at step {killed_at}" in result.stdout
    for key, value in _weights(trained).items():  # same seed, same data order: same weights as unbroken
        torch.testing.assert_close(_weights(run_dir)[key], value, rtol=0, atol=0)


def test_resuming_with_another_config_is_refused(trained, tmp_path):
    run_dir = tmp_path / "mismatch"
    _train(run_dir, "train.num_steps=5")
    cmd = [sys.executable, "train_policy.py", f"hydra.run.dir={run_dir}", *FAST, "train.num_steps=5", "policy.n_generated=4"]
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
