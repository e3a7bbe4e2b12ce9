"""bench/table.py: mode balance from real BlockPush rollouts and demos, its errors, and the table it prints."""
from __future__ import annotations

import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from bench.table import TASKS, demo_orders, format_table, main, mode_cell, require_simulator
from drift_policy.demos.generate import generate
from drift_policy.evaluation import mode_shares, successful_orders
from drift_policy.tasks import Task, load_task
from drift_policy.envs.block_push import BlockPushEnv
from drift_policy.envs.experts.block_push import BlockPushExpert
from drift_policy.envs.runner import EnvRunner

SEEDS = [0, 2]  # the expert's plans for these scenes: block0->target0 first, and block0->target1 first


def task_reading(name: str, path: Path) -> Task:
    """The task of configs/task/<name>.yaml with its dataset at `path`."""
    cfg = OmegaConf.to_container(load_task(name).cfg)
    cfg["dataset"]["path"] = str(path)
    return load_task(cfg)


class ExpertPolicy:
    """The scripted expert as a ChunkPolicy (one action per chunk), one expert per episode seed in turn."""

    def __init__(self, seeds: list[int]) -> None:
        self.seeds, self.plans = list(seeds), []

    def reset(self) -> None:
        self.expert = BlockPushExpert(np.random.default_rng(self.seeds.pop(0)))
        self.plans.append([f"block{b}->target{t}" for b, t in self.expert.plan])

    def predict_action(self, obs: dict[str, np.ndarray], generator: list[torch.Generator]) -> np.ndarray:
        return self.expert.act({k: v[0, -1] for k, v in obs.items()})[None, None]


def test_runner_records_the_push_order_and_mode_shares_count_it():
    policy = ExpertPolicy(SEEDS)
    episodes = [episode for seed in SEEDS for episode in EnvRunner(
        BlockPushEnv, n_obs_steps=1, n_action_steps=1, max_steps=350, n_rollouts=1, seed_start=seed, n_envs=1).run(policy)["episodes"]]
    assert all(e["success"] for e in episodes)
    assert [e["order"] for e in episodes] == policy.plans  # the env counted the pushes the expert made
    for e in episodes:  # and the step of each push, within the episode
        assert len(e["completed_at"]) == len(e["order"]) and 0 < e["completed_at"][0] < e["completed_at"][-1] <= e["steps"]
    shares = mode_shares(successful_orders(episodes))
    assert shares == {", ".join(plan): 0.5 for plan in policy.plans} and len(shares) == 2
    assert mode_cell(shares, sorted(shares) + ["block1->target0, block0->target1"], 2).startswith("2/3 [0.50 0.50 0.00] n=2")
    assert successful_orders([{**episodes[0], "success": False}]) == []


def test_demos_keep_their_order_and_a_dataset_of_another_task_is_refused(tmp_path):
    path = tmp_path / "block_push.hdf5"
    generate("block_push", path, episodes=2, workers=1)
    orders = demo_orders(path)
    assert len(orders) == 2 and all(len(order) == 2 and order[0].startswith("block") for order in orders)
    assert task_reading("block_push", path).count_demos() == 2
    assert task_reading("block_push", tmp_path / "missing.hdf5").count_demos() == 0
    with pytest.raises(ValueError, match=r"holds demonstrations of 'block_push'.*not of 'lift'.*delete it"):
        task_reading("lift", path).count_demos()
    with h5py.File(path, "a") as f:  # a file without the expert's attrs (robomimic's own): the obs keys decide
        del f.attrs["expert_task"]
    with pytest.raises(ValueError, match=r"lacks obs keys \['object_qpos', 'robot_qpos'\] of task kitchen"):
        task_reading("kitchen", path).count_demos()


def test_unknown_task_and_missing_simulator_messages(monkeypatch, capsys):
    with pytest.raises(ValueError, match="unknown task 'blockpush'; choose one of .*block_push"):
        load_task("blockpush")
    with pytest.raises(SystemExit):
        main(["--tasks", "blockpush"])
    assert "unknown task(s) ['blockpush']; the table knows lift, can, " in capsys.readouterr().err
    monkeypatch.delitem(sys.modules, "drift_policy.envs.kitchen", raising=False)
    for name in [m for m in sys.modules if m.startswith("gymnasium_robotics.")]:  # loaded by earlier tests: hide them too
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "gymnasium_robotics", None)  # what an uninstalled package looks like to import
    with pytest.raises(Exception, match=r"kitchen: its simulator 'gymnasium_robotics' is not installed \(`pip install gymnasium-robotics`\)"):
        require_simulator(load_task("kitchen"))


def _arm(nfe: int, p1: float, p2: float, orders: list[list[str]], policy: dict | None = None) -> dict:
    episodes = [{"seed": 100000 + i, "success": True, "order": o} for i, o in enumerate(orders)]
    setting = {"minutes": 30.0, **({"config": {"policy": policy}} if policy else {})}
    return {"result": {"p1": p1, "p1_se": 0.05, "p2": p2, "p2_se": 0.04, "nfe": nfe, "latency_batch1_ms": {"p50": 3.14159}},
            "episodes": episodes, "train": {"steps": 1200}, "setting": setting}


def test_table_puts_paper_and_ours_side_by_side_and_shows_a_collapsed_mode():
    a, b = "block0->target0, block1->target1", "block1->target1, block0->target0"
    done = {"setting": {"minutes_per_arm": 30.0, "rollouts": 200, "device": "cpu"}, "machine": "2-core x86_64", "date": "2026-11-23",
            "tasks": {"block_push": {"demos": 1000, "demo_modes": {"n": 1000, "shares": {a: 0.5, b: 0.5}},
                                     "arms": {"diffusion": _arm(100, 0.40, 0.20, [[a], [b]], {"name": "diffusion"}),
                                              "drift": _arm(1, 0.60, 0.30, [[a]] * 3, {"backbone": "mlp", "n_generated": 8})}},
                      "tool_hang": {"arms": {}, "unavailable": "tool_hang: cannot make its demonstrations: no scripted expert"}}}
    text = format_table(done, ["block_push", "tool_hang"])
    lines = text.splitlines()
    p2 = next(line for line in lines if "| p2 |" in line)
    cells = [c.strip() for c in p2.strip("|").split("|")]
    assert cells[:7] == ["block_push", "state", "p2", "0.11", "0.16", "0.200 ± 0.040", "0.300 ± 0.040"]
    assert cells[7] == "—"  # the arms ran different seeds: no paired difference
    assert "demos 2/2 [0.50 0.50] n=1000" in cells[8] and "DP 2/2 [0.50 0.50] n=2" in cells[8] and "Drift 1/2 [1.00 0.00] n=3" in cells[8]
    # the network each arm trained (a task's own policy file may change drift's), then speeds: "?" for records before them
    assert cells[9:] == ["1200 / 1200", "30 / 30", "100 / 1", "U-Net / MLP, G=8", "3.14 / 3.14", "? / ?", "1000"]
    assert "| p1 | 0.36 | 0.56 | 0.400 ± 0.050 | 0.600 ± 0.050 |" in text
    assert "| tool_hang | state | success_rate | 0.30 | 0.38 | not run: tool_hang: cannot make its demonstrations" in text
    assert f"block_push modes, in cell order: {a} | {b}" in text
    assert load_task("kitchen").metrics == ["p1", "p2", "p3", "p4"]
    assert all(load_task(t).paper["obs"] in ("state", "visual") for t in TASKS)  # every row has the paper's numbers
    done["tasks"]["block_push"]["arms"]["drift"]["result"].pop("p2")  # no episode pushed both blocks: episode_metrics stops at p1
    assert "| p2 | 0.11 | 0.16 | 0.200 ± 0.040 | 0.000 ± 0.000 |" in format_table(done, ["block_push"])


def test_a_row_whose_arms_ran_on_machines_of_different_speed_is_flagged():
    arms = {"diffusion": _arm(100, 0.40, 0.20, []), "drift": _arm(1, 0.60, 0.30, [])}
    done = {"setting": {"minutes_per_arm": 30.0, "rollouts": 200, "device": "cpu"},
            "tasks": {"block_push": {"demos": 1000, "arms": arms}}}
    arms["diffusion"]["train"]["reference_step_ms"] = [50.0]
    arms["drift"]["train"]["reference_step_ms"] = [52.0, 56.0]  # resumed once, on a machine 12% slower: within tolerance
    text = format_table(done, ["block_push"])
    assert "| 50 / 52,56 |" in text and "machines of different speed" not in text
    arms["drift"]["train"]["reference_step_ms"] = [90.0]
    assert "block_push: its arms trained on machines of different speed (reference step 50-90 ms)" in format_table(done, ["block_push"])


def test_table_pairs_drift_and_dp_seed_by_seed_on_the_measured_table():
    import json

    done = json.loads((Path(__file__).resolve().parents[1] / "bench" / "measured" / "table.json").read_text())
    arms = done["tasks"]["push_t"]["arms"]
    row = next(line for line in format_table(done, ["push_t"]).splitlines() if "| mean_score |" in line)
    cells = [c.strip() for c in row.strip("|").split("|")]
    mean, se = (float(v) for v in cells[7].split(" ± "))
    # the mean of per-seed differences is the difference of the means; the pairing only changes the error
    assert mean == pytest.approx(arms["drift"]["result"]["mean_score"] - arms["diffusion"]["result"]["mean_score"], abs=1e-3)
    combined = np.hypot(arms["drift"]["result"]["mean_score_se"], arms["diffusion"]["result"]["mean_score_se"])
    assert 0 < se < combined  # the 200 shared initial states carry part of each arm's spread
