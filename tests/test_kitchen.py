"""Kitchen (FrankaKitchen-v1, four tasks): reset/step contract, the p1..p4 count on hand-made states, state
round trips, the scripted IK expert doing all four tasks, and its demos through drift_policy.demos.generate and the reader."""
import numpy as np
import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

import drift_policy.demos.generate as gen
from drift_policy.data.robomimic_hdf5 import load_robomimic
from drift_policy.envs.experts.kitchen import collect_episode
from drift_policy.envs.kitchen import TASKS, KitchenEnv

# qpos indices and values that complete each task (FrankaKitchen's goals)
DONE = {"microwave": ([22], [-0.75]), "light switch": ([17, 18], [-0.69, -0.05]), "slide cabinet": ([19], [0.37]),
        "kettle": ([23, 24, 25, 26, 27, 28, 29], [-0.23, 0.75, 1.62, 0.99, 0.0, 0.0, -0.06])}


@pytest.fixture(scope="module")
def env():
    env = KitchenEnv()
    yield env
    env.close()


def test_reset_step_contract(env):
    obs, info = env.reset(seed=0)
    assert {k: v.shape for k, v in obs.items()} == {"robot_qpos": (9,), "robot_qvel": (9,), "object_qpos": (21,)}
    assert all(v.dtype == np.float32 for v in obs.values())
    assert info == {"is_success": False, "num_completed": 0, "completed": [], "completed_at": []}
    obs, reward, terminated, truncated, info = env.step(np.zeros(9))
    assert reward == 0.0 and not terminated and not truncated and info["num_completed"] == 0


def test_metric_on_hand_made_states(env):
    env.reset(seed=0)
    for k, task in enumerate(["slide cabinet", "microwave", "light switch", "kettle"], start=1):
        state = env.get_state()
        index, value = DONE[task]
        state[index] = value
        env.set_state(state)
        _, reward, terminated, _, info = env.step(np.zeros(9))
        assert info["num_completed"] == k and reward == k / 4 and info["completed"][-1] == task
        assert info["completed_at"] == list(range(1, k + 1))  # one task done per step here
        assert terminated == info["is_success"] == (k == 4)


def test_truncates_and_rejects_bad_state():
    env = KitchenEnv(max_steps=3)
    env.reset(seed=1)
    assert [env.step(np.zeros(9))[3] for _ in range(3)] == [False, False, True]
    with pytest.raises(ValueError, match="59 values"):
        env.set_state(np.zeros(30))
    env.close()


def test_expert_completes_all_four_tasks():
    """The IK expert does the four tasks (the kettle by a top-down handle grasp and carry) within the 280 steps,
    counted done in the order it planned them, with the microwave last."""
    ep = collect_episode(1)
    assert ep["success"] and ep["num_completed"] == 4 and ep["order"] == ep["plan"] and ep["plan"][-1] == "microwave"
    assert ep["phases"] == {task: True for task in TASKS}
    steps = len(ep["actions"])
    assert steps < 280 and ep["actions"].shape == (steps, 9) and np.abs(ep["actions"]).max() <= 1
    assert ep["states"].shape == (steps, KitchenEnv.STATE_DIM) and all(len(v) == steps for v in ep["obs"].values())
    kettle = ep["states"][-1][23:26]  # on the far burner's side of the stove, upright on it
    assert kettle[1] > 0.46 and abs(kettle[2] - 1.62) < 0.02
    with pytest.raises(ValueError, match="unknown kitchen tasks"):
        collect_episode(0, tasks=["oven"])


def test_generated_kitchen_demos_load(tmp_path):
    """drift_policy.demos.generate writes the expert's demos in robomimic's layout, and the task config's reader loads them."""
    out = tmp_path / "kitchen.hdf5"
    stats = gen.main(["--task", "kitchen", "--episodes", "1", "--out", str(out), "--seed", "1", "--workers", "1"])
    assert stats["successes"] == 1 and stats["phases"]["kettle"] == stats["attempts"]
    cfg = OmegaConf.load("configs/task/kitchen.yaml")
    buffer = load_robomimic(out, obs_keys=list(cfg.dataset.obs_keys))
    steps = buffer.episode_ends[-1]
    assert buffer.data["action"].shape == (steps, 9) and buffer.data["object_qpos"].shape == (steps, 21)


def test_task_config_builds_env():
    cfg = OmegaConf.load("configs/task/kitchen.yaml")
    env = instantiate(cfg.env)
    obs, _ = env.reset(seed=0)
    assert all(list(obs[k].shape) == list(v.shape) for k, v in cfg.shape_meta.obs.items())
    assert env.action_space.shape == tuple(cfg.shape_meta.action.shape) and env.n_tasks == len(TASKS) == 4
    env.close()
