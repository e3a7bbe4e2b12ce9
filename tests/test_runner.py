"""EnvRunner on real Push-T worker processes with a policy that replays real demonstrations."""
import functools
from pathlib import Path

import gymnasium as gym
import imageio
import numpy as np
import pytest
import zarr

from drift_policy.envs.multistep import MultiStepWrapper
from drift_policy.envs.pusht import make_pusht_env
from drift_policy.envs.runner import EnvRunner, filmstrip, video_stem

PUSHT = Path(__file__).resolve().parents[1] / "data/pusht/pusht_cchi_v7_replay.zarr"
DEMOS = {0: 51, 1: 205}  # seed -> demo: 51 (73 steps) ends at coverage 0.9531 (success); 205 (49 steps) at 0.9096
MAX_STEPS = 80


def _load_demos() -> dict[int, dict[str, np.ndarray]]:
    root = zarr.open(str(PUSHT), mode="r")
    ends = root["meta/episode_ends"][:]
    state, action = root["data/state"][:].astype(np.float64), root["data/action"][:]
    return {i: {"state": state[ends[i - 1] : ends[i]], "action": action[ends[i - 1] : ends[i]]} for i in DEMOS.values()}


class DemoStart(gym.Wrapper):
    """The real Push-T env, starting episode `seed` from the first recorded state of demo DEMOS[seed]."""

    def __init__(self, env: gym.Env, starts: dict[int, np.ndarray]) -> None:
        super().__init__(env)
        self.starts = starts

    def reset(self, *, seed=None, options=None):
        return self.env.reset(seed=seed, options={"reset_to_state": self.starts[seed]})


def make_env(starts: dict[int, np.ndarray]) -> gym.Env:
    return DemoStart(make_pusht_env("state"), starts)


class DemoReplay:
    """Recognises each row's demo from its first observation, then plays its actions 8 at a time (holding the last)."""

    def __init__(self, demos: dict[int, dict[str, np.ndarray]]) -> None:
        self.demos, self.calls, self.rows = demos, 0, []

    def reset(self) -> None:
        self.calls, self.rows = 0, []

    def predict_action(self, obs: dict[str, np.ndarray], generator=None) -> np.ndarray:
        if self.calls == 0:
            first = {i: d["state"][0, :2] for i, d in self.demos.items()}
            self.rows = [min(first, key=lambda i: np.abs(first[i] - pos).max()) for pos in obs["agent_pos"][:, -1]]
        offsets = np.arange(8) + 8 * self.calls
        self.calls += 1
        return np.stack([self.demos[i]["action"][np.minimum(offsets, len(self.demos[i]["action"]) - 1)] for i in self.rows])


@pytest.fixture(scope="module")
def demos():
    return _load_demos()


def _sequential(demos, seed: int) -> dict:
    """The same episode in this process, without the runner: the reference numbers."""
    env = MultiStepWrapper(make_env({s: demos[d]["state"][0] for s, d in DEMOS.items()}), 2, 8, MAX_STEPS)
    policy = DemoReplay({DEMOS[seed]: demos[DEMOS[seed]]})
    obs, _ = env.reset(seed=seed)
    rewards, success, done = [], False, False
    while not done:
        obs, reward, terminated, truncated, info = env.step(policy.predict_action({k: v[None] for k, v in obs.items()})[0])
        rewards.append(reward)
        success |= info["is_success"]
        done = terminated or truncated
    return {"seed": seed, "max_reward": max(rewards), "success": success, "steps": env.steps}


def test_two_rollouts_in_worker_processes(demos, tmp_path):
    starts = {seed: demos[demo]["state"][0] for seed, demo in DEMOS.items()}
    runner = EnvRunner(functools.partial(make_env, starts), n_obs_steps=2, n_action_steps=8, max_steps=MAX_STEPS,
                       n_rollouts=2, seed_start=0, n_envs=2, n_videos=1, video_dir=tmp_path)
    result = runner.run(DemoReplay(demos))

    # Same episodes as in this process; rewards only to the last bits (gym-pusht's coverage sums its shapes in
    # the order of a pymunk set, which differs between processes).
    expected = [_sequential(demos, 0), _sequential(demos, 1)]
    assert result["episodes"] == [{**e, "max_reward": pytest.approx(e["max_reward"], rel=1e-9)} for e in expected]
    first, second = result["episodes"]
    assert first["success"] and first["steps"] == 73 and first["max_reward"] == 1.0  # terminates at coverage > 0.95
    assert not second["success"] and second["steps"] == MAX_STEPS
    # Measured: the demo ends at coverage 0.9096; holding its last target for 31 more steps pushes it to 0.9450.
    assert second["max_reward"] == pytest.approx(0.99478, abs=1e-4)
    assert result["mean_score"] == pytest.approx((first["max_reward"] + second["max_reward"]) / 2)
    assert result["success_rate"] == 0.5 and not any(k.startswith("p1") for k in result)
    assert 0 < result["latency_ms"]["p50"] <= result["latency_ms"]["p95"]

    assert result["videos"] == [str(tmp_path / "seed0_success_score1.00.mp4")]
    reader = imageio.get_reader(result["videos"][0])
    assert reader.get_meta_data()["fps"] == 10 and reader.count_frames() == 73 + 1  # reset frame + one per step
    assert reader.get_data(0).shape == (256, 256, 3)
    # The filmstrip beside it: 8 of the 74 frames, the first and the last among them, 2-px white separators.
    assert result["filmstrips"] == [str(tmp_path / "seed0_success_score1.00.png")]
    strip = imageio.v3.imread(result["filmstrips"][0])
    assert strip.dtype == np.uint8 and strip.shape == (256, 8 * 256 + 7 * 2, 3)
    assert (strip[:, 256:258] == 255).all() and (strip[:, -258:-256] == 255).all()
    for tile, frame in ((strip[:, :256], 0), (strip[:, -256:], 73)):  # the MP4 is lossy: close, not equal
        assert np.abs(tile.astype(float) - reader.get_data(frame)).mean() < 2  # measured 0.4; swapped 5.0


class Hold:
    """Keeps the agent where it is, so the block never moves."""

    def reset(self) -> None:
        pass

    def predict_action(self, obs: dict[str, np.ndarray], generator=None) -> np.ndarray:
        return np.repeat(obs["agent_pos"][:, -1:], 8, axis=1)


@pytest.mark.parametrize("n_envs", [1, 2])  # one in-process env; two processes with an idle env in round 2
def test_seeded_rounds_keep_the_initial_coverage_when_nothing_moves(n_envs):
    result = EnvRunner(make_pusht_env, 2, 8, max_steps=16, n_rollouts=3, n_envs=n_envs).run(Hold())
    env = make_pusht_env()
    initial = [min(1.0, env.reset(seed=s)[1]["coverage"] / 0.95) for s in (100000, 100001, 100002)]
    assert [e["seed"] for e in result["episodes"]] == [100000, 100001, 100002]
    assert [e["steps"] for e in result["episodes"]] == [16, 16, 16]
    np.testing.assert_allclose([e["max_reward"] for e in result["episodes"]], initial, rtol=0, atol=1e-9)
    assert max(initial) > 0 and result["mean_score"] == pytest.approx(np.mean(initial))
    assert result["videos"] == result["filmstrips"] == []


def _columns(*values: int) -> list[int]:
    """A filmstrip's row of 3-px tiles of the given values, with 2-px white separators."""
    return [column for v in values for column in (255, 255, v, v, v)][2:]


def test_filmstrip_spaces_frames_evenly_in_order():
    frames = [np.full((4, 3, 3), i, dtype=np.uint8) for i in range(15)]  # frame i filled with i
    strip = filmstrip(frames)
    assert strip.shape == (4, 8 * 3 + 7 * 2, 3) and strip.dtype == np.uint8
    assert (strip == strip[:1, :, :1]).all() and strip[0, :, 0].tolist() == _columns(0, 2, 4, 6, 8, 10, 12, 14)
    assert filmstrip(frames[:3])[0, :, 0].tolist() == _columns(0, 1, 2)  # fewer frames than 8: all of them
    assert filmstrip(frames, n_frames=2)[0, :, 0].tolist() == _columns(0, 14)
    np.testing.assert_array_equal(filmstrip(frames[5:6]), frames[5])
    with pytest.raises(ValueError, match="at least one frame"):
        filmstrip([])
    with pytest.raises(ValueError, match="n_frames must be >= 1"):
        filmstrip(frames, n_frames=0)


def test_runner_argument_errors():
    with pytest.raises(ValueError, match="n_videos > 0 needs a video_dir"):
        EnvRunner(make_pusht_env, 2, 8, 300, n_videos=2)
    with pytest.raises(ValueError, match="n_rollouts must be >= 1"):
        EnvRunner(make_pusht_env, 2, 8, 300, n_rollouts=0)
    for bad in (0, -1):
        with pytest.raises(ValueError, match=f"n_envs must be >= 1 .*got {bad}"):
            EnvRunner(make_pusht_env, 2, 8, 300, n_envs=bad)


def _noise_driven_policy():
    """A Push-T drift policy whose actions are saturated functions of its sampling noise: the agent darts
    between workspace corners picked by the noise and pushes the block, so every outcome depends on the noise."""
    from hydra import compose, initialize_config_dir
    import torch
    from drift_policy.training.trainer import build_dataset, build_policy

    with initialize_config_dir(config_dir=str(Path(__file__).resolve().parents[1] / "configs"), version_base=None):
        cfg = compose("train_policy", overrides=["policy.unet.down_dims=[16,32,64]", "task.max_steps=64"])
    torch.manual_seed(0)
    policy = build_policy(cfg)
    policy.fit_normalizer(build_dataset(cfg.task).normalizer_data())
    with torch.no_grad():
        policy.model.head[-1].weight.mul_(300.0)
    return policy.eval()


def test_an_episode_score_depends_only_on_policy_and_seed_not_on_n_envs():
    from drift_policy.evaluation import make_runner

    policy = _noise_driven_policy()
    task = policy.config.task
    scores = {n: [e["max_reward"] for e in make_runner(task, 4, 100000, n_envs=n).run(policy)["episodes"]] for n in (1, 3)}
    np.testing.assert_allclose(scores[1], scores[3], rtol=0, atol=1e-9)
    env = make_pusht_env()
    initial = [min(1.0, env.reset(seed=s)[1]["coverage"] / 0.95) for s in range(100000, 100004)]
    assert not np.allclose(scores[1], initial, atol=1e-3)  # the policy really pushes the block: the test can fail
    again = [e["max_reward"] for e in make_runner(task, 2, 100001, n_envs=1).run(policy)["episodes"]]
    np.testing.assert_allclose(again, scores[1][1:3], rtol=0, atol=1e-9)  # a seed's score does not depend on its position


def test_standard_errors_and_stage_rates_of_episode_metrics():
    from drift_policy.envs.runner import episode_metrics

    episodes = [{"max_reward": r, "success": s, "num_completed": c} for r, s, c in [(1.0, True, 2), (0.5, False, 1), (0.0, False, 0)]]
    m = episode_metrics(episodes)
    assert m["mean_score"] == pytest.approx(0.5) and m["mean_score_se"] == pytest.approx(0.5 / np.sqrt(3))
    assert m["success_rate"] == pytest.approx(1 / 3) and m["success_rate_se"] == pytest.approx(np.std([1, 0, 0], ddof=1) / np.sqrt(3))
    assert m["p1"] == pytest.approx(2 / 3) and m["p2"] == pytest.approx(1 / 3) and "p3" not in m


def test_a_near_miss_video_is_not_named_as_a_perfect_score():
    # Push-T reward 0.9996 is coverage 0.9496 < 0.95: a failure, which rounding to 2 decimals would call score1.00
    assert video_stem({"seed": 100000, "success": False, "max_reward": 0.9996}) == "seed100000_fail_score0.99"
    assert video_stem({"seed": 7, "success": True, "max_reward": 1.0}) == "seed7_success_score1.00"


def test_paired_difference_matches_seeds_and_shares_their_difficulty():
    from drift_policy.envs.runner import paired_difference

    def episodes(rewards, seeds, completed):
        return [{"seed": s, "max_reward": r, "success": r == 1.0, "num_completed": c} for r, s, c in zip(rewards, seeds, completed)]

    base = episodes([0.2, 0.9, 1.0, 0.4], [7, 8, 9, 10], [0, 1, 1, 0])
    # the same per-seed gains, listed in another order: matched by seed, not by position
    ours = episodes([1.0, 0.5, 1.0, 0.3], [9, 10, 8, 7], [2, 1, 2, 1])
    d = paired_difference(ours, base)
    gains = np.array([0.1, 0.1, 0.0, 0.1])  # seeds 7, 8, 9, 10
    assert d["mean_score"] == pytest.approx(gains.mean()) and d["mean_score_se"] == pytest.approx(np.std(gains, ddof=1) / 2)
    assert d["success_rate"] == pytest.approx(0.25)  # seed 8 becomes a success
    assert d["p1"] == pytest.approx(0.5) and d["p2"] == pytest.approx(0.5)  # stages up to the most either run completed
    with pytest.raises(ValueError, match="same seeds"):
        paired_difference(ours[:3], base)
