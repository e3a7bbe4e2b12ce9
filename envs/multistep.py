"""Receding-horizon stepping: observation history in, a chunk of actions out (Diffusion Policy's wrapper)."""
from __future__ import annotations

from collections import deque
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces


def _stacked_space(space: spaces.Box, n: int) -> spaces.Box:
    """The Box of n stacked samples of `space`."""
    return spaces.Box(np.repeat(space.low[None], n, 0), np.repeat(space.high[None], n, 0), dtype=space.dtype)


class MultiStepWrapper(gym.Wrapper):
    """Observations become [To, ...] histories per key (the first observation repeated after reset);
    step(actions [Ta, Da]) executes the actions in turn, stopping at termination or after max_episode_steps
    in all; reward = the max over the executed steps, info = the last step's info with is_success = any step.

    Once the episode has ended, step() repeats its final result without touching the env, so a vector env
    can keep stepping finished episodes. With `recording` set, an RGB frame is kept after reset and every
    step (`pop_frames`)."""

    def __init__(self, env: gym.Env, n_obs_steps: int, n_action_steps: int, max_episode_steps: int) -> None:
        super().__init__(env)
        if not isinstance(env.observation_space, spaces.Dict):
            raise ValueError(f"MultiStepWrapper needs dict observations, got {env.observation_space}")
        if min(n_obs_steps, n_action_steps, max_episode_steps) < 1:
            raise ValueError(f"n_obs_steps, n_action_steps and max_episode_steps must be >= 1, got "
                             f"{n_obs_steps}, {n_action_steps}, {max_episode_steps}")
        self.n_obs_steps, self.n_action_steps, self.max_episode_steps = n_obs_steps, n_action_steps, max_episode_steps
        self.observation_space = spaces.Dict({k: _stacked_space(s, n_obs_steps) for k, s in env.observation_space.items()})
        self.action_space = _stacked_space(env.action_space, n_action_steps)
        self.history: deque[dict[str, np.ndarray]] = deque(maxlen=n_obs_steps)
        self.recording = False
        self.frames: list[np.ndarray] = []
        self.steps = 0  # env steps executed in this episode
        self.final: tuple | None = None  # the last result, once the episode has ended

    def _stacked(self) -> dict[str, np.ndarray]:
        return {k: np.stack([obs[k] for obs in self.history]) for k in self.history[0]}

    def reset(self, **kwargs: Any) -> tuple[dict[str, np.ndarray], dict]:
        obs, info = self.env.reset(**kwargs)
        self.history.clear()
        self.history.extend([obs] * self.n_obs_steps)
        self.steps, self.final = 0, None
        self.frames = [self._frame()] if self.recording else []
        return self._stacked(), info

    def _frame(self) -> np.ndarray:
        """One RGB frame [H, W, 3] of the env, for a video."""
        frame = self.env.render()
        if frame is None or np.ndim(frame) != 3:
            raise ValueError(f"{type(self.env.unwrapped).__name__}.render() returned {None if frame is None else np.shape(frame)}, "
                             f"not an RGB frame [H, W, 3]: make the env with render_mode='rgb_array' to record videos")
        return frame

    def step(self, actions: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool, bool, dict]:
        actions = np.asarray(actions)
        if actions.ndim != 2 or len(actions) == 0:
            raise ValueError(f"expected an action chunk [Ta, Da], got shape {actions.shape}")
        if np.issubdtype(actions.dtype, np.number) and not np.isfinite(actions).all():
            bad = int(np.flatnonzero(~np.isfinite(actions).all(axis=1))[0])
            raise ValueError(f"action chunk row {bad} is {actions[bad].tolist()}: actions must be finite (NaN/inf from the policy?)")
        if self.final is not None:
            return self.final
        rewards, terminated, truncated, success, info = [], False, False, False, {}
        for action in actions:
            obs, reward, terminated, truncated, info = self.env.step(action)
            self.history.append(obs)
            self.steps += 1
            rewards.append(reward)
            success = success or bool(info.get("is_success", False))
            if self.recording:
                self.frames.append(self._frame())
            truncated = truncated or self.steps >= self.max_episode_steps
            if terminated or truncated:
                break
        result = (self._stacked(), float(max(rewards)), terminated, truncated, {**info, "is_success": success})
        if terminated or truncated:
            self.final = result
        return result

    def pop_frames(self) -> list[np.ndarray]:
        """The frames recorded since the last reset (and forget them)."""
        frames, self.frames = self.frames, []
        return frames
