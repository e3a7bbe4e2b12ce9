"""Scripted robosuite experts and drift_policy.demos.generate: Lift episodes succeed, vary between seeds, and write robomimic files."""
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

import drift_policy.demos.generate as gen
from drift_policy.envs.experts.robosuite import collect_episode, env_args


@pytest.fixture(scope="module")
def episodes():
    return [collect_episode(seed, task="lift") for seed in range(3)]


def test_lift_expert_succeeds_three_times(episodes):
    for ep in episodes:
        assert ep["success"]
        steps = len(ep["actions"])
        assert 20 < steps < 400 and ep["actions"].shape == (steps, 7) and ep["states"].shape[0] == steps
        assert np.abs(ep["actions"]).max() <= 1.0
        assert all(len(v) == steps for v in ep["obs"].values())
        # success (cube 4 cm above the table, i.e. 2 cm above rest) comes one step after the last record
        assert ep["obs"]["object"][-1, 2] > ep["obs"]["object"][5, 2] + 0.01


def test_demonstrations_vary_and_are_reproducible(episodes):
    lengths = {len(ep["actions"]) for ep in episodes}
    assert len(lengths) > 1  # random speeds and waypoints: no fixed path
    again = collect_episode(0, task="lift")
    np.testing.assert_array_equal(again["actions"], episodes[0]["actions"])
    assert env_args(task="lift")["env_kwargs"]["controller_configs"]["body_parts"]["right"]["input_type"] == "delta"


def test_generate_cli_writes_robomimic_layout(tmp_path, capsys):
    out = tmp_path / "lift.hdf5"
    stats = gen.main(["--task", "lift", "--episodes", "1", "--out", str(out), "--seed", "5", "--workers", "1"])
    assert stats["successes"] == 1 and stats["attempts"] >= 1 and stats["wall_time_s"] > 0
    assert "expert success 1/" in capsys.readouterr().out
    with h5py.File(out) as f:
        demo = f["data/demo_0"]
        assert {"actions", "states", "obs", "rewards", "dones"} <= set(demo)
        assert demo.attrs["num_samples"] == len(demo["actions"]) and demo.attrs["seed"] == 5
        assert '"env_name": "Lift"' in f["data"].attrs["env_args"]
    assert not out.with_name("lift.hdf5.partial").exists()


def test_registry_errors():
    with pytest.raises(ValueError, match="no scripted expert for task 'push_t'; tasks with one: .*lift"):
        gen.generate("push_t", "unused.hdf5", episodes=1)
    with pytest.raises(ValueError, match="unknown task 'stack'; choose one of"):
        gen.generate("stack", "unused.hdf5", episodes=1)
    with pytest.raises(ValueError, match="no scripted robosuite expert for task 'block_push'"):
        collect_episode(0, task="block_push")


def test_sigterm_during_generation_never_leaves_an_incomplete_dataset(tmp_path):
    out = tmp_path / "lift.hdf5"
    partial = out.with_name("lift.hdf5.partial")
    proc = subprocess.Popen([sys.executable, "-m", "drift_policy.demos.generate", "--task", "lift", "--episodes", "50", "--out", str(out)],
                            cwd=Path(__file__).resolve().parents[1], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not partial.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "drift_policy.demos.generate ended before the signal"
    proc.terminate()
    assert proc.wait(timeout=60) != 0  # 143, or 1 when the signal lands inside a C extension's import
    assert not out.exists()  # the dataset path only ever holds a complete file
    with h5py.File(partial) as f:  # what was made is kept, readable, for the same command to continue
        assert len(f["data"]) <= f.attrs["expert_attempts"] < 50


def test_an_interrupted_generation_continues_and_a_shorter_file_is_extended(tmp_path, monkeypatch):
    """Demos made before a Ctrl-C are kept and not made again; asking the same file for more extends it."""
    import drift_policy.envs.experts.robosuite as expert
    calls, real = [], expert.collect_episode

    def interrupted_on_third(seed, **kw):
        calls.append(seed)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(seed, **kw)

    monkeypatch.setattr(expert, "collect_episode", interrupted_on_third)
    out = tmp_path / "lift.hdf5"
    with pytest.raises(KeyboardInterrupt):
        gen.generate("lift", out, episodes=3, seed=7, workers=1)  # in this process, where the patch is
    assert not out.exists() and calls == [7, 8, 9]
    stats = gen.generate("lift", out, episodes=3, seed=7, workers=1)  # the same command again
    assert calls[3] == 9 and stats["attempts"] == len(calls) - 1  # resumes at the interrupted attempt, none repeated
    stats = gen.generate("lift", out, episodes=4, seed=7, workers=1)  # more of the same file
    assert stats["successes"] == 4 and stats["attempts"] == len(calls) - 1
    with h5py.File(out) as f:
        seeds = [int(f[f"data/demo_{i}"].attrs["seed"]) for i in range(4)]
        assert seeds == sorted(set(seeds)) and seeds[0] == 7 and f.attrs["expert_attempts"] == stats["attempts"]
        np.testing.assert_array_equal(f["data/demo_0/actions"], real(7, task="lift")["actions"])
    assert not out.with_name("lift.hdf5.partial").exists()
