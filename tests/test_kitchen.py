"""Kitchen (FrankaKitchen-v1, four tasks): reset/step contract, the p1..p4 count on hand-made states, state
round trips, and what the scripted IK expert achieves (three of the four tasks; the kettle is not yet done)."""
import numpy as np
import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from envs.experts.kitchen import collect_episode
from envs.kitchen import TASKS, KitchenEnv

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
    assert info == {"is_success": False, "num_completed": 0, "completed": []}
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
        assert terminated == info["is_success"] == (k == 4)


def test_truncates_and_rejects_bad_state():
    env = KitchenEnv(max_steps=3)
    env.reset(seed=1)
    assert [env.step(np.zeros(9))[3] for _ in range(3)] == [False, False, True]
    with pytest.raises(ValueError, match="59 values"):
        env.set_state(np.zeros(30))
    env.close()


def test_expert_opens_microwave_and_pushes_switch_and_cabinet():
    """The IK expert reaches HOME from FrankaKitchen's start and completes the three tasks it can do, in its order."""
    ep = collect_episode(1, tasks=["light switch", "slide cabinet", "microwave"])
    assert ep["num_completed"] == 3 and ep["order"] == ep["plan"]
    steps = len(ep["actions"])
    assert ep["actions"].shape == (steps, 9) and np.abs(ep["actions"]).max() <= 1
    assert ep["states"].shape == (steps, KitchenEnv.STATE_DIM) and all(len(v) == steps for v in ep["obs"].values())
    with pytest.raises(ValueError, match="unknown kitchen tasks"):
        collect_episode(0, tasks=["oven"])


def test_task_config_builds_env():
    cfg = OmegaConf.load("configs/task/kitchen.yaml")
    env = instantiate(cfg.env)
    obs, _ = env.reset(seed=0)
    assert all(list(obs[k].shape) == list(v.shape) for k, v in cfg.shape_meta.obs.items())
    assert env.action_space.shape == tuple(cfg.shape_meta.action.shape) and env.n_tasks == len(TASKS) == 4
    env.close()
