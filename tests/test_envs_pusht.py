"""The Push-T env against the real demonstrations (layout, dynamics, images), its seeds, and the multi-step wrapper."""
from pathlib import Path

import numpy as np
import pytest
import zarr
from gym_pusht.envs.pusht import PushTEnv as GymPushT

from drift_policy.envs.multistep import MultiStepWrapper
from drift_policy.envs.pusht import dp_initial_state, make_pusht_env

PUSHT = Path(__file__).resolve().parents[1] / "data/pusht/pusht_cchi_v7_replay.zarr"
GOAL_STATE = np.array([100.0, 100.0, 256.0, 256.0, np.pi / 4])  # block on its goal pose, agent far from it


@pytest.fixture(scope="module")
def demos() -> dict[str, np.ndarray]:
    root = zarr.open(str(PUSHT), mode="r")
    return {"state": root["data/state"][:].astype(np.float64), "keypoint": root["data/keypoint"][:].reshape(-1, 18),
            "action": root["data/action"][:], "ends": root["meta/episode_ends"][:]}


@pytest.fixture(scope="module")
def env():
    return make_pusht_env("state")


def _episode(demos, i: int) -> slice:
    return slice(0 if i == 0 else int(demos["ends"][i - 1]), int(demos["ends"][i]))


def test_spaces_and_observation_types():
    for obs_type, keys in (("state", {"keypoint": (18,), "agent_pos": (2,)}), ("image", {"image": (96, 96, 3), "agent_pos": (2,)})):
        env = make_pusht_env(obs_type)
        obs, info = env.reset(seed=0)
        assert {k: v.shape for k, v in obs.items()} == keys and obs in env.observation_space
        assert info["is_success"] is False and 0 <= info["coverage"] <= 1
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        assert obs in env.observation_space and isinstance(reward, float) and 0 <= reward <= 1
        assert obs["agent_pos"].dtype == np.float32 and (obs_type == "state" or obs["image"].dtype == np.uint8)
        assert env.render().shape == (256, 256, 3)
    with pytest.raises(ValueError, match="obs_type must be one of"):
        make_pusht_env("pixels")


def test_reset_seed_is_deterministic_and_steps_are_too(env):
    first, _ = env.reset(seed=7)
    after_first = env.step(np.array([300.0, 200.0]))[0]
    again, _ = env.reset(seed=7)
    np.testing.assert_array_equal(again["keypoint"], first["keypoint"])
    np.testing.assert_array_equal(env.step(np.array([300.0, 200.0]))[0]["keypoint"], after_first["keypoint"])
    assert not np.array_equal(env.reset(seed=8)[0]["keypoint"], first["keypoint"])


def test_seeds_give_diffusion_policys_test_states(env):
    """DP's test configs set legacy_test: True; gym-pusht's reset_to_state is that legacy setter."""
    reference = GymPushT(obs_type="state")
    for seed in (100000, 100001, 100049):
        expected, _ = reference.reset(options={"reset_to_state": dp_initial_state(seed)})
        env.reset(seed=seed)
        sim = env.unwrapped
        actual = [*sim.agent.position, *sim.block.position, sim.block.angle % (2 * np.pi)]
        np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-9)


def test_keypoint_observation_is_laid_out_as_the_dataset_rows(env, demos):
    rows = np.arange(0, len(demos["state"]), 50)
    deviation = []
    for row in rows:
        obs, _ = env.reset(options={"reset_to_state": demos["state"][row]})
        deviation.append(np.abs(obs["keypoint"] - demos["keypoint"][row]).max())
        np.testing.assert_array_equal(obs["agent_pos"], demos["state"][row, :2].astype(np.float32))
    deviation = np.array(deviation)
    # Measured over every 7th row: median 6e-5 px, 99.5% within 0.05 px (a few episode-start rows are 2 px off).
    assert np.median(deviation) < 1e-3 and np.mean(deviation < 0.05) > 0.98


def test_replaying_a_demo_reproduces_its_states_and_coverage(env, demos):
    """Episode 0 (161 steps): the env tracks every recorded step; its final coverage is 0.8898 (measured)."""
    steps = _episode(demos, 0)
    obs, _ = env.reset(options={"reset_to_state": demos["state"][steps.start]})
    for t in range(steps.start, steps.stop):
        np.testing.assert_allclose(obs["keypoint"], demos["keypoint"][t], rtol=0, atol=0.05)
        np.testing.assert_array_equal(obs["agent_pos"], demos["state"][t, :2].astype(np.float32))
        obs, reward, terminated, _, info = env.step(demos["action"][t])
    assert info["coverage"] == pytest.approx(0.889804, abs=1e-4) and not terminated
    assert reward == pytest.approx(0.889804 / 0.95, abs=1e-4)


def test_replaying_a_successful_demo_terminates_with_success(env, demos):
    """Episode 51 (73 steps) ends with coverage 0.9531 > 0.95 on its last action, as recorded."""
    steps = _episode(demos, 51)
    env.reset(options={"reset_to_state": demos["state"][steps.start]})
    results = [env.step(a) for a in demos["action"][steps]]
    assert [r[2] for r in results].index(True) == len(results) - 1
    _, reward, _, _, info = results[-1]
    assert reward == 1.0 and info["is_success"] is True and info["coverage"] == pytest.approx(0.953071, abs=1e-4)


def test_image_observation_matches_the_dataset_frames(demos):
    env = make_pusht_env("image")
    images = zarr.open(str(PUSHT), mode="r")["data/img"]
    for row in (0, 5000, 20000):
        obs, _ = env.reset(options={"reset_to_state": demos["state"][row]})
        assert np.abs(obs["image"].astype(np.float32) - images[row]).mean() < 0.5  # measured 0.03-0.12 of 255


def test_block_on_goal_is_full_reward_success_and_termination(env):
    env.reset(options={"reset_to_state": GOAL_STATE})
    _, reward, terminated, _, info = env.step(GOAL_STATE[:2])
    assert reward == 1.0 and terminated and info["is_success"] is True and info["coverage"] > 0.999


# --- MultiStepWrapper -------------------------------------------------------------------------------

def test_wrapper_history_starts_with_the_first_observation_repeated():
    wrapped = MultiStepWrapper(make_pusht_env(), n_obs_steps=2, n_action_steps=8, max_episode_steps=300)
    obs, _ = wrapped.reset(seed=3)
    assert obs["keypoint"].shape == (2, 18) and obs in wrapped.observation_space
    np.testing.assert_array_equal(obs["keypoint"][0], obs["keypoint"][1])
    assert wrapped.action_space.shape == (8, 2)


def test_wrapper_executes_the_chunk_in_turn_and_keeps_the_max_reward(env, demos):
    steps = _episode(demos, 1)
    start = {"options": {"reset_to_state": demos["state"][steps.start]}}
    wrapped = MultiStepWrapper(make_pusht_env(), n_obs_steps=2, n_action_steps=8, max_episode_steps=300)
    wrapped.reset(**start)
    env.reset(**start)
    plain = []
    for chunk in demos["action"][steps][:112].reshape(14, 8, 2):
        obs, reward, terminated, truncated, info = wrapped.step(chunk)
        rewards = []
        for action in chunk:
            plain_obs, plain_reward, _, _, plain_info = env.step(action)
            plain.append(plain_obs)
            rewards.append(plain_reward)
        np.testing.assert_allclose(obs["keypoint"], [plain[-2]["keypoint"], plain[-1]["keypoint"]], rtol=0, atol=1e-4)
        # Two envs agree only to the last bits: gym-pusht unions the block's shapes in the order of a pymunk
        # set (object addresses), so the coverage area is summed in a different order per process.
        assert reward == pytest.approx(max(rewards), rel=1e-9)
        assert info["coverage"] == pytest.approx(plain_info["coverage"], rel=1e-9)
        assert not (terminated or truncated)
    assert wrapped.steps == 112


def test_wrapper_stops_at_termination_and_then_repeats_the_final_step():
    wrapped = MultiStepWrapper(make_pusht_env(), n_obs_steps=2, n_action_steps=8, max_episode_steps=300)
    wrapped.reset(options={"reset_to_state": GOAL_STATE})
    chunk = np.repeat(GOAL_STATE[None, :2], 8, 0)
    obs, reward, terminated, truncated, info = wrapped.step(chunk)
    assert terminated and not truncated and reward == 1.0 and info["is_success"] is True and wrapped.steps == 1
    again = wrapped.step(chunk)
    assert again[1:4] == (1.0, True, False) and wrapped.steps == 1


def test_wrapper_truncates_at_max_episode_steps_and_checks_the_chunk_shape():
    wrapped = MultiStepWrapper(make_pusht_env(), n_obs_steps=2, n_action_steps=8, max_episode_steps=10)
    obs, _ = wrapped.reset(seed=0)
    chunk = np.repeat(obs["agent_pos"][-1:], 8, 0)
    assert wrapped.step(chunk)[3] is False and wrapped.steps == 8
    assert wrapped.step(chunk)[3] is True and wrapped.steps == 10
    with pytest.raises(ValueError, match=r"expected an action chunk \[Ta, Da\], got shape \(2,\)"):
        wrapped.step(np.zeros(2))


def test_non_finite_actions_are_refused_and_far_targets_clipped_to_the_workspace(env):
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"Push-T action \[nan, 100.0\] is not finite"):
        env.step(np.array([np.nan, 100.0]))
    with pytest.raises(ValueError, match=r"one target position \(x, y\) of shape \(2,\), got shape \(8, 2\)"):
        env.step(np.zeros((8, 2)))
    for _ in range(30):
        obs, *_ = env.step(np.array([1e6, -1e6]))
    np.testing.assert_allclose(obs["agent_pos"], [512, 0], atol=0.1)  # the corner, not (3e5, -3e5)
    wrapped = MultiStepWrapper(make_pusht_env(), n_obs_steps=2, n_action_steps=8, max_episode_steps=300)
    wrapped.reset(seed=0)
    chunk = np.full((8, 2), 200.0)
    chunk[3, 1] = np.inf
    with pytest.raises(ValueError, match=r"action chunk row 3 is \[200.0, inf\]: actions must be finite"):
        wrapped.step(chunk)
    assert wrapped.steps == 0
