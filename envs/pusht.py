"""Push-T through gym-pusht, with Diffusion Policy's observations and test-seed initial states."""
from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gym_pusht.envs.pusht import PushTEnv as GymPushT
from gymnasium import spaces

# The 9 T-block keypoints of Diffusion Policy's dataset in the block's frame (pixels). gym-pusht exposes
# 8 other keypoints, so these were fitted from the dataset's (keypoint, block pose) rows: every row of
# the 25,650 agrees with them to 0.03 px (tests/test_envs_pusht.py checks the env against the data).
BLOCK_KEYPOINTS = np.array([
    [9.27, 90.04], [-60.98, -1.19], [60.91, -1.39], [-0.27, 25.54], [-14.07, 122.82],
    [39.00, 32.86], [-39.97, 32.73], [-16.82, 62.86], [23.54, -1.70],
])


def block_keypoints(block_pose: np.ndarray) -> np.ndarray:
    """[18] keypoints (x0, y0, x1, ...) of the T at pose (x, y, angle), as the dataset lays them out."""
    c, s = np.cos(block_pose[2]), np.sin(block_pose[2])
    rotation = np.array([[c, -s], [s, c]])
    return (BLOCK_KEYPOINTS @ rotation.T + block_pose[:2]).reshape(-1).astype(np.float32)


def dp_initial_state(seed: int) -> np.ndarray:
    """Diffusion Policy's initial state for a seed (agent xy, block xy, block angle), so seeds
    100000+ give the same test episodes as its evaluation."""
    rs = np.random.RandomState(seed=seed)
    return np.array([rs.randint(50, 450), rs.randint(50, 450), rs.randint(100, 400), rs.randint(100, 400),
                     rs.randn() * 2 * np.pi - np.pi], dtype=np.float64)


class _DPPushT(GymPushT):
    """gym-pusht with Diffusion Policy's (non-legacy) state setting: the block's angle is set before its
    position, so a dataset state puts the T exactly where the demonstration had it."""

    def _set_state(self, state: np.ndarray) -> None:
        self.agent.position = list(state[:2])
        self.block.angle = state[4]
        self.block.position = list(state[2:4])
        self.space.step(self.dt)


class PushTEnv(gym.Wrapper):
    """Dict observations {"keypoint" [18], "agent_pos" [2]} or {"image" uint8 [96, 96, 3], "agent_pos" [2]};
    reward = clip(coverage / 0.95, 0, 1); info has is_success and coverage; render() gives RGB frames."""

    def __init__(self, obs_type: str = "state", render_size: int = 96, video_size: int = 256) -> None:
        if obs_type not in ("state", "image"):
            raise ValueError(f"obs_type must be 'state' or 'image', got {obs_type!r}")
        inner = "state" if obs_type == "state" else "pixels_agent_pos"  # "state" is the cheapest to compute
        super().__init__(_DPPushT(obs_type=inner, render_mode="rgb_array", observation_width=render_size,
                                  observation_height=render_size, visualization_width=video_size,
                                  visualization_height=video_size))
        self.obs_type = obs_type
        agent = spaces.Box(0, 512, shape=(2,), dtype=np.float32)
        self.observation_space = spaces.Dict(
            {"keypoint": spaces.Box(-512, 1024, shape=(18,), dtype=np.float32), "agent_pos": agent} if obs_type == "state"
            else {"image": spaces.Box(0, 255, shape=(render_size, render_size, 3), dtype=np.uint8), "agent_pos": agent})

    def _observe(self, raw: Any) -> dict[str, np.ndarray]:
        agent_pos = np.array(self.env.agent.position, dtype=np.float32)
        if self.obs_type == "image":
            return {"image": np.asarray(raw["pixels"], dtype=np.uint8), "agent_pos": agent_pos}
        pose = np.array([*self.env.block.position, self.env.block.angle])
        return {"keypoint": block_keypoints(pose), "agent_pos": agent_pos}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        options = dict(options or {})
        if seed is not None and options.get("reset_to_state") is None:
            options["reset_to_state"] = dp_initial_state(seed)
        raw, info = self.env.reset(seed=seed, options=options)
        return self._observe(raw), info

    def step(self, action: np.ndarray):
        raw, reward, terminated, truncated, info = self.env.step(np.asarray(action, dtype=np.float64))
        return self._observe(raw), float(reward), terminated, truncated, info


def make_pusht_env(obs_type: str = "state", render_size: int = 96) -> PushTEnv:
    """The Push-T env of a task config (`env._target_: envs.pusht.make_pusht_env`)."""
    return PushTEnv(obs_type=obs_type, render_size=render_size)
