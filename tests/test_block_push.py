"""BlockPush (MuJoCo): reset/step contract, the p1/p2 metric on hand-made states, state round trips, and the
scripted expert's success and multimodality."""
import json

import numpy as np
import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from drift_policy.envs.block_push import BLOCK_HALF, MAX_MOVE, BlockPushEnv, block_in_targets
from drift_policy.envs.experts.block_push import collect_episode, env_args


def _place(env: BlockPushEnv, blocks: list[tuple[float, float]]) -> None:
    """Put the blocks at the given xy (upright, at rest) keeping the targets and pusher where they are."""
    state = env.get_state()
    for i, (x, y) in enumerate(blocks):
        state[7 * i:7 * i + 7] = x, y, BLOCK_HALF, 1, 0, 0, 0
    env.set_state(state)


def test_reset_step_contract():
    env = BlockPushEnv()
    obs, info = env.reset(seed=3)
    assert set(obs) == {"block_poses", "effector_pos", "target_poses"}
    assert all(obs[k].dtype == np.float32 and obs[k] in env.observation_space[k] for k in obs)
    assert info == {"is_success": False, "num_completed": 0, "completed": [], "completed_at": []}
    again, _ = env.reset(seed=3)
    assert all(np.array_equal(obs[k], again[k]) for k in obs)  # a seed fixes the layout
    start = obs["effector_pos"].copy()
    obs, reward, terminated, truncated, info = env.step(start + np.array([0.5, 0.0]))
    assert 0.02 < obs["effector_pos"][0] - start[0] <= MAX_MOVE + 1e-3  # the far target is reached at limited speed
    assert reward == 0.0 and not terminated and not truncated and info["num_completed"] == 0


def test_truncates_at_max_steps():
    env = BlockPushEnv(max_steps=5)
    obs, _ = env.reset(seed=0)
    truncated = [env.step(obs["effector_pos"])[3] for _ in range(5)]
    assert truncated == [False] * 4 + [True]


def test_metric_on_hand_made_states():
    env = BlockPushEnv()
    env.reset(seed=1)
    targets = env.target_poses()[:, :2]
    far = [(-0.25, -0.2), (0.25, -0.2)]
    cases = {0: far, 1: [tuple(targets[1] + 0.03), far[1]], 2: [tuple(targets[1]), tuple(targets[0] - 0.02)]}
    for expected, blocks in cases.items():
        _place(env, blocks)
        obs, reward, terminated, _, info = env.step(env.get_state()[14:16])
        assert info["num_completed"] == expected and reward == expected / 2
        assert terminated == info["is_success"] == (expected == 2)
    # Both blocks in the same target count once: p2 needs a block in each target.
    assert block_in_targets(np.array([targets[0], targets[0] + 0.02]), targets) == 1
    assert block_in_targets(np.array([targets[0] + 0.06, targets[1]]), targets) == 1  # 6 cm off is outside


def test_state_round_trip_and_bad_state():
    env = BlockPushEnv()
    env.reset(seed=5)
    for _ in range(3):
        env.step(np.array([0.0, 0.0]))
    state = env.get_state()
    other = BlockPushEnv()
    other.reset(options={"state": state})
    np.testing.assert_allclose(other.get_state(), state)
    with pytest.raises(ValueError, match="36 values"):
        other.set_state(state[:-1])


def test_image_observation():
    env = BlockPushEnv(image=True, render_size=64)
    obs, _ = env.reset(seed=0)
    assert obs["image"].shape == (64, 64, 3) and obs["image"].dtype == np.uint8 and obs["image"].std() > 1
    assert env.render().shape == (256, 256, 3)
    env.close()


@pytest.mark.parametrize("seed", [0, 1])
def test_expert_succeeds(seed):
    ep = collect_episode(seed)
    steps = len(ep["actions"])
    assert ep["success"] and ep["num_completed"] == 2 and steps < 350
    assert ep["actions"].shape == (steps, 2) and ep["states"].shape == (steps, BlockPushEnv.STATE_DIM)
    assert all(v.shape[0] == steps for v in ep["obs"].values())
    # Replaying the recorded actions from the first state reproduces the episode (the demo is consistent).
    env = BlockPushEnv()
    env.reset(options={"state": ep["states"][0]})
    for action in ep["actions"]:
        *_, info = env.step(action)
    assert info["is_success"]
    kwargs = json.loads(json.dumps(env_args()))["env_kwargs"]
    assert kwargs == {"image": False, "render_size": 96, "max_steps": 350}


def test_expert_is_multimodal():
    orders = {tuple(collect_episode(seed)["order"]) for seed in range(12)}
    assert len(orders) >= 3  # block order x target assignment: 4 modes


def test_task_config_builds_env():
    cfg = OmegaConf.load("configs/task/block_push.yaml")
    env = instantiate(cfg.env)
    obs, _ = env.reset(seed=0)
    assert {k: list(v.shape) for k, v in obs.items()} == {k: list(v.shape) for k, v in cfg.shape_meta.obs.items()}
    assert env.action_space.shape == tuple(cfg.shape_meta.action.shape)
