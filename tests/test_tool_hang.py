"""The scripted ToolHang expert (drift_policy.envs.experts.tool_hang) on a fixed seed: one full episode (at most the
task's 700 steps) inserts the frame into the stand and hangs the tool on it (issue #23)."""
import numpy as np
import pytest

from drift_policy.envs.experts import tool_hang
from drift_policy.tasks import load_task

SEED = 0


@pytest.fixture(scope="module")
def episode():
    return tool_hang.collect_episode(SEED, task="tool_hang")


def test_expert_inserts_the_frame(episode):
    steps = len(episode["actions"])
    assert steps <= load_task("tool_hang").max_steps
    assert episode["actions"].shape == (steps, 7) and episode["states"].shape[0] == steps
    assert np.abs(episode["actions"]).max() <= 1.0
    assert all(len(v) == steps for v in episode["obs"].values())
    assert episode["phases"]["frame_assembled"]


def test_expert_hangs_the_tool(episode):
    assert episode["success"] and episode["phases"]["tool_hung"]
