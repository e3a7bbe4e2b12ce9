"""Runs that survive what shared clusters and laptops do to them: SIGTERM/Ctrl-C, a full disk, a damaged checkpoint,
and an env worker killed mid-evaluation."""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

import drift_policy.atomic as atomic
from drift_policy.atomic import DiskFullError
from drift_policy.policies import Policy
from drift_policy.training.checkpoint import CHECKPOINT, PREVIOUS, load_checkpoint, save_checkpoint
from drift_policy.envs.pusht import make_pusht_env
from drift_policy.envs.runner import EnvRunner, EnvWorkerDied

ROOT = Path(__file__).resolve().parents[1]
REAL_WRITE = atomic._write_bytes
TINY = ["policy.unet.down_dims=[8,16,32]", "train.batch_size=4", "train.warmup_steps=1", "train.log_every=5",
        "train.checkpoint_every=1000", "train.eval_every=0", "train.final_eval=false", "num_threads=1", "train.num_steps=100000"]


def _start(run_dir: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "train_policy.py", f"hydra.run.dir={run_dir}", *TINY], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for_step_after(run_dir: Path, step: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Until the run logs a step after `step` (its loop is running)."""
    deadline, path = time.time() + timeout, run_dir / "metrics.jsonl"
    while time.time() < deadline and proc.poll() is None:
        rows = path.read_text().splitlines() if path.exists() else []
        if any(json.loads(row)["step"] > step for row in rows if row.endswith("}")):
            return
        time.sleep(0.05)
    raise AssertionError(f"the run never logged a step after {step}; exit code {proc.poll()}")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_writes_a_checkpoint_exits_0_and_the_same_command_resumes(tmp_path, signum):
    run_dir = tmp_path / "run"
    proc = _start(run_dir)
    _wait_for_step_after(run_dir, 0, proc)  # the loop is running; its first periodic checkpoint would come at step 1000
    proc.send_signal(signum)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out[-3000:]
    stopped = [line for line in out.splitlines() if line.startswith(f"stopped by {signum.name} at step ")]
    assert stopped and "run the same command to resume" in stopped[0], out[-2000:]
    step = int(stopped[0].split(" at step ")[1].split(":")[0])
    assert 0 < step < 1000 and torch.load(run_dir / CHECKPOINT, weights_only=False)["step"] == step

    proc = _start(run_dir)
    _wait_for_step_after(run_dir, step, proc)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0 and f"Resuming {run_dir} at step {step}" in out and "stopped by SIGTERM at step " in out, out[-2000:]
    assert torch.load(run_dir / CHECKPOINT, weights_only=False)["step"] > step


def _disk_full_after(n_writes: int, monkeypatch) -> None:
    """The n_writes+1-th file write fails with ENOSPC, as on a full disk."""
    calls = []

    def write(path: Path, data) -> None:
        calls.append(path)
        if len(calls) > n_writes:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        REAL_WRITE(path, data)

    monkeypatch.setattr(atomic, "_write_bytes", write)


def test_a_full_disk_keeps_the_previous_checkpoint_and_policy_and_names_path_and_free_space(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, {"step": 1})
    save_checkpoint(tmp_path, {"step": 2})
    shape_meta = {"obs": {"agent_pos": {"shape": [2], "type": "low_dim"}}, "action": {"shape": [2]}}
    policy = Policy.registry["drift"](shape_meta=shape_meta, unet={"down_dims": [8, 16, 32]})
    policy.fit_normalizer({"agent_pos": np.random.default_rng(0).random((50, 2)), "action": np.random.default_rng(1).random((50, 2))})
    policy.save_pretrained(tmp_path / "policy")
    before = {p.name: p.read_bytes() for p in (tmp_path / "policy").iterdir()}

    _disk_full_after(0, monkeypatch)
    with pytest.raises(DiskFullError, match=rf"no space left on the disk to write {tmp_path / CHECKPOINT} \(\d+\.\d (B|KiB|MiB|GiB) free\)"):
        save_checkpoint(tmp_path, {"step": 3})
    assert load_checkpoint(tmp_path)["step"] == 2 and torch.load(tmp_path / PREVIOUS)["step"] == 1

    _disk_full_after(1, monkeypatch)  # the weights are written, the normaliser is not: none of the three may change
    with torch.no_grad():
        next(policy.parameters()).add_(1.0)
    with pytest.raises(DiskFullError, match=r"normalizer.safetensors .* free\); the previous files there are intact"):
        policy.save_pretrained(tmp_path / "policy")
    assert {p.name: p.read_bytes() for p in (tmp_path / "policy").iterdir()} == before  # no .tmp left either


def test_train_stops_with_the_disk_full_error_and_the_run_resumes_from_its_last_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    overrides = [o for o in TINY if not o.startswith(("train.num_steps", "train.checkpoint_every"))]
    args = [sys.executable, "train_policy.py", f"hydra.run.dir={run_dir}", *overrides, "train.num_steps=10", "train.checkpoint_every=5"]
    # ENOSPC at the second checkpoint write (step 10), injected in the real process through a sitecustomize
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import errno, drift_policy.atomic as a\n"
        "real, n = a._write_bytes, []\n"
        "def write(path, data):\n"
        "    n.append(path)\n"
        "    if str(path).endswith('latest.pt.tmp') and sum(str(p).endswith('latest.pt.tmp') for p in n) == 2:\n"
        "        raise OSError(errno.ENOSPC, 'No space left on device', str(path))\n"
        "    real(path, data)\n"
        "a._write_bytes = write\n")
    env = {**os.environ, "PYTHONPATH": f"{hook}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    assert f"error: no space left on the disk to write {run_dir / CHECKPOINT}" in result.stderr and "free)" in result.stderr
    assert "Traceback" not in result.stderr
    assert torch.load(run_dir / CHECKPOINT, weights_only=False)["step"] == 5
    resumed = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0 and f"Resuming {run_dir} at step 5" in resumed.stdout, resumed.stderr[-2000:]


def test_a_truncated_latest_checkpoint_falls_back_to_the_previous_one(tmp_path):
    save_checkpoint(tmp_path, {"step": 200, "weights": torch.zeros(1000)})
    save_checkpoint(tmp_path, {"step": 400, "weights": torch.ones(1000)})
    latest = tmp_path / CHECKPOINT
    latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2])  # a crash mid-write on a disk without rename
    with pytest.warns(RuntimeWarning, match=r"latest.pt .* is unreadable: resuming from the previous one, .*previous.pt \(step 200\)"):
        assert load_checkpoint(tmp_path)["step"] == 200
    previous = tmp_path / PREVIOUS
    previous.write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match=r"no readable checkpoint in .*checkpoints.*train.resume=false"):
        load_checkpoint(tmp_path)
    assert load_checkpoint(tmp_path / "fresh") is None


class DieOnSeed(gym.Wrapper):
    """The real Push-T env, whose worker process kills itself (SIGKILL) 5 steps into the episode of one seed."""

    def __init__(self, seed: int) -> None:
        super().__init__(make_pusht_env("state"))
        self.die_on, self.seed, self.steps = seed, None, 0

    def reset(self, *, seed=None, options=None):
        self.seed, self.steps = seed, 0
        return self.env.reset(seed=seed, options=options)

    def step(self, action):
        self.steps += 1
        if self.seed == self.die_on and self.steps == 5:
            os.kill(os.getpid(), signal.SIGKILL)
        return self.env.step(action)


class Hold:
    """A policy that keeps the agent where it is."""

    def reset(self) -> None:
        pass

    def predict_action(self, obs, generator):
        return np.repeat(obs["agent_pos"][:, -1:], 8, axis=1)


def test_a_killed_env_worker_is_an_error_naming_the_episode_seed_not_a_hang():
    runner = EnvRunner(_die_on_100003, n_obs_steps=2, n_action_steps=8, max_steps=40, n_rollouts=4, n_envs=2)
    started = time.perf_counter()
    with pytest.raises(EnvWorkerDied, match=r"env worker 1 \(pid \d+\) ended with exit code -9 during the episode of seed 100003 \(step\)"):
        runner.run(Hold())
    assert time.perf_counter() - started < 60


def _die_on_100003() -> gym.Env:
    return DieOnSeed(100003)
