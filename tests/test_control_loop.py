"""The real-time executor of examples/control_loop.py on the real Push-T env: plan alignment and deadline misses."""
import importlib.util
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from drift_policy.envs.pusht import PushTEnv

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "control_loop.py"
spec = importlib.util.spec_from_file_location("control_loop", SCRIPT)
control_loop = sys.modules["control_loop"] = importlib.util.module_from_spec(spec)  # an example script, not a package
spec.loader.exec_module(control_loop)


class Recorder(gym.Wrapper):
    """Keeps every action the loop applied."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.applied: list[np.ndarray] = []

    def step(self, action):
        self.applied.append(np.array(action))
        return self.env.step(action)


def test_a_late_plan_is_a_deadline_miss_holding_the_last_action_then_runs_aligned_in_time():
    """Plan n is chunk[j] = (100 + 50 n, 100 + 10 j); plan 1 takes 0.3 s, six ticks at 20 Hz, with a 1-tick lead."""
    plans = []

    def infer(obs):
        if plans:
            time.sleep(0.3)
        plans.append(obs)
        return np.array([[100.0 + 50 * (len(plans) - 1), 100.0 + 10 * j] for j in range(16)], dtype=np.float32)

    env = Recorder(PushTEnv())
    episode = control_loop.run_episode(infer, env, n_obs_steps=2, n_action_steps=8, horizon=16, hz=20, steps=16, lead=1, seed=0)
    applied = np.array(env.applied)
    assert episode.steps == len(applied) == 16 and len(episode.latencies_ms) == 2 and episode.latencies_ms[1] >= 300
    # plan 0 (made from tick 0's observation) gives tick k its action j = To - 1 + k
    np.testing.assert_array_equal(applied[:8], [[100, 100 + 10 * (1 + k)] for k in range(8)])
    # plan 1 is requested at tick 7 and arrives about tick 13: ticks 8.. hold tick 7's action, each a miss
    assert 5 <= episode.misses <= 8
    np.testing.assert_array_equal(applied[8 : 8 + episode.misses], [applied[7]] * episode.misses)
    # once it arrives, tick k runs plan 1's action for k: j = To - 1 + k - 7 (its first actions were for past ticks)
    arrived = 8 + episode.misses
    np.testing.assert_array_equal(applied[arrived:], [[150, 100 + 10 * (1 + k - 7)] for k in range(arrived, 16)])


def test_the_lead_must_leave_a_whole_plan_after_the_inference_ticks():
    with pytest.raises(ValueError, match=r"lead must be 1..7 ticks"):
        control_loop.run_episode(lambda obs: None, PushTEnv(), 2, 8, 16, hz=10, steps=10, lead=8, seed=0)
