"""Receding-horizon stepping: observation history in, a chunk of actions out (Diffusion Policy's wrapper)."""
from __future__ import annotations

from collections import deque
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces


class MultiStepWrapper(gym.Wrapper):
    """Observations become [To, ...] histories (the first repeated after reset); step() executes
    up to Ta actions, stopping at termination or max_episode_steps; reward = max over those steps.
    After the episode ends, step() is a no-op that repeats the last result, so vectorised rollouts can
    keep stepping finished envs. With `recording` on, an RGB frame is kept after every step (`pop_frames`)."""

    def __init__(self, env: gym.Env, n_obs_steps: int, n_action_steps: int, max_episode_steps: int) -> None:
        super().__init__(env)
        self.n_obs_steps, self.n_action_steps, self.max_episode_steps = n_obs_steps, n_action_steps, max_episode_steps
        self.observation_space = spaces.Dict({
            k: spaces.Box(np.repeat(s.low[None], n_obs_steps, 0), np.repeat(s.high[None], n_obs_steps, 0), dtype=s.dtype)
            for k, s in env.observation_space.spaces.items()
        })
        act = env.action_space
        self.action_space = spaces.Box(np.repeat(act.low[None], n_action_steps, 0), np.repeat(act.high[None], n_action_steps, 0), dtype=act.dtype)
        self.history: deque[dict[str, np.ndarray]] = deque(maxlen=n_obs_steps)
        self.recording = False
        self.frames: list[np.ndarray] = []
        self.steps = 0
        self.last: tuple | None = None  # the final step's result once the episode has ended

    def _stacked(self) -> dict[str, np.ndarray]:
        return {k: np.stack([h[k] for h in self.history]) for k in self.history[0]}

    def reset(self, **kwargs: Any):
        obs, info = self.env.reset(**kwargs)
        self.history.clear()
        self.history.extend([obs] * self.n_obs_steps)
        self.steps, self.last, self.frames = 0, None, ([self.env.render()] if self.recording else [])
        return self._stacked(), info

    def step(self, actions: np.ndarray):
        actions = np.asarray(actions)
        if actions.ndim != 2:
            raise ValueError(f"expected an action chunk [Ta, Da], got shape {actions.shape}")
        if self.last is not None:
            return self.last
        rewards, terminated, truncated, info, success = [], False, False, {}, False
        for action in actions[: self.n_action_steps]:
            obs, reward, terminated, truncated, info = self.env.step(action)
            self.history.append(obs)
            self.steps += 1
            rewards.append(reward)
            success = success or bool(info.get("is_success", False))
            if self.recording:
                self.frames.append(self.env.render())
            truncated = truncated or self.steps >= self.max_episode_steps
            if terminated or truncated:
                break
        result = (self._stacked(), float(max(rewards)), terminated, truncated, {**info, "is_success": success})
        if terminated or truncated:
            self.last = result
        return result

    def pop_frames(self) -> list[np.ndarray]:
        """The frames recorded since the last reset (and forget them)."""
        frames, self.frames = self.frames, []
        return frames
