"""Push-T (gym-pusht's PushT-v0 physics and rendering) with Diffusion Policy's observations and test seeds."""
from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pymunk
from gym_pusht.envs.pusht import PushTEnv as GymPushT
from gymnasium import spaces

OBS_TYPES = ("state", "image")

# The dataset's 9 T-block keypoints in the block's body frame (pixels). Diffusion Policy sampled them at
# random inside the T, so they are not gym-pusht's 8 vertices; these are the per-point medians of
# R(angle)^T (keypoint - position) over all 25,650 rows of data/pusht: 99.5% of the rows agree to 0.05 px
# (median 1.5e-5 px), and tests/test_envs_pusht.py checks the env's observations against the data.
BLOCK_KEYPOINTS = np.array([
    [9.2698, 90.0410], [-60.9835, -1.1867], [60.9128, -1.3934], [-0.2705, 25.5436], [-14.0649, 122.8159],
    [39.0027, 32.8574], [-39.9664, 32.7297], [-16.8243, 62.8632], [23.5415, -1.7003],
])
# The T's centre of gravity in its body frame, from gym-pusht's own construction of the block.
TEE_COG = np.array(GymPushT.add_tee(pymunk.Space(), (0, 0), 0)[0].center_of_gravity)


def _rotation(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s], [s, c]])


def block_keypoints(block_pose: np.ndarray) -> np.ndarray:
    """float32 [18] keypoints (x0, y0, x1, ...) of the T at pose (x, y, angle), laid out as the dataset's rows."""
    return (BLOCK_KEYPOINTS @ _rotation(block_pose[2]).T + block_pose[:2]).reshape(-1).astype(np.float32)


def dp_initial_state(seed: int) -> np.ndarray:
    """Diffusion Policy's sampled initial state for a seed: (agent x, y, block x, y, angle)."""
    rs = np.random.RandomState(seed=seed)
    return np.array([rs.randint(50, 450), rs.randint(50, 450), rs.randint(100, 400), rs.randint(100, 400),
                     rs.randn() * 2 * np.pi - np.pi], dtype=np.float64)


def legacy_pose(state: np.ndarray) -> np.ndarray:
    """The state that Diffusion Policy's legacy setter (position, then angle about the centre of gravity;
    `legacy_test: True` in its Push-T configs, and gym-pusht's reset_to_state) actually produces."""
    shift = TEE_COG - _rotation(state[4]) @ TEE_COG
    return np.concatenate([state[:2], state[2:4] + shift, state[4:5]])


class _ExactPushT(GymPushT):
    """gym-pusht whose reset_to_state puts the block exactly at the given pose (angle set before position),
    so a dataset row, which records the true pose, is reproduced exactly."""

    def _set_state(self, state: np.ndarray) -> None:
        self.agent.position = list(state[:2])
        self.block.angle = state[4]
        self.block.position = list(state[2:4])
        self.space.step(self.dt)


class PushTEnv(gym.Wrapper):
    """Dict observations {"keypoint" [18], "agent_pos" [2]} or {"image" uint8 [96, 96, 3], "agent_pos" [2]};
    reward = clip(coverage / 0.95, 0, 1), terminated at coverage > 0.95; info has is_success and coverage.
    reset(seed=s) starts from Diffusion Policy's initial state for s (seeds 100000+ are its test set);
    options={"reset_to_state": (agent x, y, block x, y, angle)} starts exactly there. render() is an RGB frame.
    Episodes are truncated after `max_steps` steps (None: never)."""

    def __init__(self, obs_type: str = "state", render_size: int = 96, video_size: int = 256,
                 max_steps: int | None = None) -> None:
        if obs_type not in OBS_TYPES:
            raise ValueError(f"obs_type must be one of {OBS_TYPES}, got {obs_type!r}")
        inner = "state" if obs_type == "state" else "pixels_agent_pos"  # "state" renders nothing
        super().__init__(_ExactPushT(obs_type=inner, render_mode="rgb_array", observation_width=render_size,
                                     observation_height=render_size, visualization_width=video_size,
                                     visualization_height=video_size))
        self.obs_type, self.max_steps, self.steps = obs_type, max_steps, 0
        agent = spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float32)
        self.observation_space = spaces.Dict(
            {"keypoint": spaces.Box(-np.inf, np.inf, shape=(18,), dtype=np.float32), "agent_pos": agent}
            if obs_type == "state" else
            {"image": spaces.Box(0, 255, shape=(render_size, render_size, 3), dtype=np.uint8), "agent_pos": agent})

    def _observe(self, raw: Any) -> dict[str, np.ndarray]:
        sim = self.env.unwrapped
        agent_pos = np.array(sim.agent.position, dtype=np.float32)
        if self.obs_type == "image":
            return {"image": np.asarray(raw["pixels"], dtype=np.uint8), "agent_pos": agent_pos}
        return {"keypoint": block_keypoints(np.array([*sim.block.position, sim.block.angle])), "agent_pos": agent_pos}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        options = dict(options or {})
        if options.get("reset_to_state") is None and seed is not None:
            options["reset_to_state"] = legacy_pose(dp_initial_state(seed))
        raw, info = self.env.reset(seed=seed, options=options)
        self.steps = 0
        info["coverage"] = self.env.unwrapped._get_coverage()
        return self._observe(raw), info

    def step(self, action: np.ndarray):
        """action: the agent's target position (x, y) in pixels. NaN/inf is refused; a target outside the
        512 x 512 workspace (the action space) is clipped to its edge, as gymnasium's ClipAction does: the
        agent is kinematic and passes through the walls, so a target of 1e6 sent it to about (3e5, -3e5)."""
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (2,):
            raise ValueError(f"Push-T action must be one target position (x, y) of shape (2,), got shape {action.shape}")
        if not np.isfinite(action).all():
            raise ValueError(f"Push-T action {action.tolist()} is not finite; the policy produced NaN or inf")
        action = np.clip(action, self.action_space.low, self.action_space.high)
        raw, reward, terminated, truncated, info = self.env.step(action)
        info["is_success"] = bool(info["is_success"])
        self.steps += 1
        truncated = bool(truncated) or (self.max_steps is not None and self.steps >= self.max_steps)
        return self._observe(raw), float(reward), bool(terminated), truncated, info


def make_pusht_env(obs_type: str = "state", render_size: int = 96, max_steps: int | None = None) -> PushTEnv:
    """The Push-T env of a task config (`env._target_: drift_policy.envs.pusht.make_pusht_env`)."""
    return PushTEnv(obs_type=obs_type, render_size=render_size, max_steps=max_steps)
