"""TemporalEnsemble: plain chunk execution reproduced exactly, ACT's weights (oldest first) by hand, argument errors,
and one Push-T evaluation through it."""
import json
import math
import sys

import numpy as np
import pytest
import torch

from drift_policy.ensemble import TemporalEnsemble
from drift_policy.eval import main, summary_table
from drift_policy.evaluation import evaluate
from drift_policy.policies import Policy


class CountingChunks:
    """A fake policy (To=2, T=5: a plan covers 4 steps) whose call c predicts chunk[j] = 100 c + j + 1000 row."""

    obs_meta = {"x": {"shape": [1], "type": "low_dim"}}
    n_obs_steps, horizon = 2, 5

    def __init__(self) -> None:
        self.calls = 0

    def predict_action(self, obs, full_chunk=False, generator=None):
        assert full_chunk
        rows = len(obs["x"]) if np.ndim(obs["x"]) == 3 else 1
        chunk = 100.0 * self.calls + np.arange(self.horizon)[None, :, None] + 1000.0 * np.arange(rows)[:, None, None]
        self.calls += 1
        return chunk if np.ndim(obs["x"]) == 3 else chunk[0]


def _histories(rows: int) -> dict[str, np.ndarray]:
    return {"x": np.zeros((rows, 2, 1), dtype=np.float32)}


def _run(ensemble: TemporalEnsemble, steps: int, rows: int = 2) -> np.ndarray:
    """The actions of `steps` calls, [steps, rows]."""
    ensemble.reset()
    return np.array([ensemble.predict_action(_histories(rows))[:, 0, 0] for _ in range(steps)])


def test_each_step_is_acts_weighted_average_of_the_valid_predictions_oldest_first():
    fake = CountingChunks()
    actions = _run(TemporalEnsemble(fake, decay=0.5, replan_every=1), steps=6)
    assert fake.calls == 6
    # step t's prediction by plan c (made at step c) is chunk[To - 1 + t - c] = 100 c + 1 + t - c, valid while t - c < 4
    w = [1.0, math.exp(-0.5), math.exp(-1.0), math.exp(-1.5)]  # exp(-m i), i = 0 for the oldest prediction
    assert actions[0, 0] == 1.0  # plan 0 alone
    assert actions[3, 0] == pytest.approx((4 * w[0] + 103 * w[1] + 202 * w[2] + 301 * w[3]) / sum(w))  # plans 0..3
    assert actions[5, 0] == pytest.approx((204 * w[0] + 303 * w[1] + 402 * w[2] + 501 * w[3]) / sum(w))  # plan 1 expired
    np.testing.assert_allclose(actions[:, 1], actions[:, 0] + 1000, rtol=1e-12)  # each row keeps its own predictions


def test_a_large_decay_follows_the_oldest_plan_and_zero_is_a_plain_mean_of_sparser_plans():
    oldest = _run(TemporalEnsemble(CountingChunks(), decay=50.0), steps=4)[:, 0]
    np.testing.assert_allclose(oldest, [1, 2, 3, 4], atol=1e-9)  # plan 0's chunk[1..4], not the newest plans'
    fake = CountingChunks()
    mean = _run(TemporalEnsemble(fake, decay=0.0, replan_every=2), steps=5)[:, 0]
    assert fake.calls == 3  # plans at steps 0, 2, 4
    # step 3: plan 0 (chunk[4] = 4) and plan 1 made at step 2 (chunk[2] = 102); step 4: plans 1 and 2 (plan 0 expired)
    np.testing.assert_allclose(mean, [1, 2, (3 + 101) / 2, (4 + 102) / 2, (103 + 201) / 2])


def test_step_keeps_the_history_and_returns_one_action():
    ensemble = TemporalEnsemble(CountingChunks(), decay=0.0)
    ensemble.reset()
    first = ensemble.step({"x": np.array([0.0], dtype=np.float32)})
    assert first.shape == (1,) and first[0] == 1.0
    assert ensemble.step({"x": np.array([1.0], dtype=np.float32)})[0] == pytest.approx((2 + 101) / 2)


@pytest.mark.parametrize("settings, message", [
    ({"replan_every": 0}, r"replan_every must be a whole number of steps in 1\.\.4, got 0: a plan covers T - To \+ 1 = 4 steps"),
    ({"replan_every": 5}, r"in 1\.\.4, got 5: .*plan at least that often"),
    ({"replan_every": 2.0}, r"in 1\.\.4, got 2\.0"),
    ({"decay": -0.1}, r"decay must be a finite number >= 0, got -0\.1: ACT's m, weights exp\(-m \* i\) with i = 0 for the oldest"),
    ({"decay": float("nan")}, r"decay must be a finite number >= 0, got nan"),
    ({"decay": float("inf")}, r"decay must be a finite number >= 0, got inf"),
])
def test_settings_out_of_range_are_refused_naming_the_fix(settings, message):
    with pytest.raises(ValueError, match=message):
        TemporalEnsemble(CountingChunks(), **settings)


def test_a_new_batch_size_within_an_episode_asks_for_reset():
    ensemble = TemporalEnsemble(CountingChunks())
    _run(ensemble, steps=2, rows=2)
    with pytest.raises(ValueError, match=r"got a batch of 3 observations after planning for 2: call reset\(\)"):
        ensemble.predict_action(_histories(3))
    ensemble.reset()
    assert ensemble.predict_action(_histories(3)).shape == (3, 1, 1)


@pytest.fixture(scope="module")
def tiny_policy_dir(tmp_path_factory, save_tiny_policy):
    return save_tiny_policy(tmp_path_factory.mktemp("ensemble") / "policy")


def _frames(steps: int, rows: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Observations in Push-T's range (pixels), [rows, ...] per key."""
    rng = np.random.default_rng(seed)
    return [{"keypoint": rng.uniform(50, 450, (rows, 18)).astype(np.float32),
             "agent_pos": rng.uniform(50, 450, (rows, 2)).astype(np.float32)} for _ in range(steps)]


def test_no_averaging_and_a_plan_every_ta_steps_is_exactly_policy_steps_chunk_execution(tiny_policy_dir):
    policy = Policy.from_pretrained(tiny_policy_dir)
    frames = [{k: v[0] for k, v in f.items()} for f in _frames(20, rows=1)]
    plain = TemporalEnsemble(policy, decay=None, replan_every=policy.n_action_steps)
    torch.manual_seed(3)
    policy.reset()
    expected = [policy.step(f) for f in frames]
    torch.manual_seed(3)
    plain.reset()
    np.testing.assert_array_equal([plain.step(f) for f in frames], expected)
    # the runner's path: batched histories and one generator per row, planning at steps 0, 8, 16
    histories = [{k: np.stack([v, v + 1], axis=1) for k, v in f.items()} for f in _frames(20, rows=2, seed=1)]
    generators = lambda: [torch.Generator().manual_seed(s) for s in (5, 6)]  # noqa: E731
    reference, noise = generators(), generators()
    chunks = {t: policy.predict_action(histories[t], generator=reference) for t in (0, 8, 16)}
    plain.reset()
    for t, history in enumerate(histories):
        np.testing.assert_array_equal(plain.predict_action(history, generator=noise)[:, 0], chunks[t - t % 8][:, t % 8])


def test_an_ensembled_push_t_evaluation_records_its_mode_and_plans_every_k_steps(tiny_policy_dir, tmp_path, monkeypatch):
    plans, calls = [], []
    predict, step = Policy.predict_action, TemporalEnsemble.predict_action
    monkeypatch.setattr(Policy, "predict_action", lambda self, obs, full_chunk=False, generator=None: (
        plans.append(full_chunk) or predict(self, obs, full_chunk, generator)))
    monkeypatch.setattr(TemporalEnsemble, "predict_action", lambda self, obs, generator=None: (
        calls.append(1) or step(self, obs, generator)))
    result = evaluate(tiny_policy_dir, rollouts=2, seed_start=100000, n_envs=1, videos=0, out_dir=tmp_path / "eval",
                      ensemble=0.01, replan_every=2)
    mode = {"mode": "temporal_ensemble", "decay": 0.01, "replan_every": 2}
    assert json.loads((tmp_path / "eval" / "eval.json").read_text())["execution"] == mode == result["execution"]
    assert [e["steps"] for e in result["episodes"]] == [16, 16]  # task.max_steps=16, one env step per call
    assert len(calls) == 32 and plans.count(True) == 16  # 2 rounds of 16 calls (n_envs=1), a plan every 2nd
    assert "temporal ensemble, decay 0.01, a plan every 2 steps" in summary_table(result)


def test_the_cli_refuses_a_negative_decay_and_evaluate_a_replan_gap_beyond_the_chunk(tiny_policy_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["eval_policy.py", "--ensemble", "-1"])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 2 and "argument --ensemble: must be a finite number >= 0, got -1" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"replan_every must be a whole number of steps in 1\.\.15, got 16"):
        evaluate(tiny_policy_dir, rollouts=1, seed_start=100000, n_envs=1, videos=0, out_dir=tmp_path / "eval", replan_every=16)
