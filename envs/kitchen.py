"""Kitchen: gymnasium-robotics' FrankaKitchen-v1 with four tasks (microwave, kettle, light switch, slide
cabinet), dict observations, the p1..p4 count in info["num_completed"] and a 280-step limit."""
from __future__ import annotations

import os
from typing import Any

os.environ.setdefault("MUJOCO_GL", "egl")  # headless rendering (videos, image obs), as envs/robosuite_tasks.py does

import gymnasium as gym  # noqa: E402
import mujoco  # noqa: E402
import numpy as np  # noqa: E402
from gymnasium import spaces  # noqa: E402
from gymnasium_robotics.envs.franka_kitchen.franka_env import DEFAULT_CAMERA_CONFIG  # noqa: E402
from gymnasium_robotics.envs.franka_kitchen.kitchen_env import KitchenEnv as _FrankaKitchen  # noqa: E402

TASKS = ("microwave", "kettle", "light switch", "slide cabinet")


class KitchenEnv(gym.Env):
    """Dict observations {"robot_qpos" [9], "robot_qvel" [9], "object_qpos" [21]} (FrankaKitchen's noisy
    readings), optionally "image" uint8 [H, W, 3] from its default camera; actions are its 9 joint
    velocities in [-1, 1]. reward = tasks done / 4; info: is_success, num_completed, completed (in order) and
    completed_at (the step of each: it tells a policy too slow for the 280 steps from one that stalls)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 12}
    STATE_DIM = 30 + 29  # qpos, qvel

    def __init__(self, image: bool = False, render_size: int = 96, video_size: int = 256, max_steps: int = 280,
                 tasks: tuple[str, ...] | list[str] = TASKS) -> None:
        self.kitchen = _FrankaKitchen(tasks_to_complete=list(tasks))
        self.model, self.data = self.kitchen.model, self.kitchen.data
        self.model.vis.quality.shadowsize = 0  # offscreen frames 40x cheaper (docs notes)
        self.model.vis.global_.offwidth = max(self.model.vis.global_.offwidth, video_size)
        self.model.vis.global_.offheight = max(self.model.vis.global_.offheight, video_size)
        self.tasks, self.n_tasks = list(tasks), len(tasks)
        self.image, self.render_size, self.video_size, self.max_steps = image, render_size, video_size, max_steps
        self.render_mode = "rgb_array"
        self._renderers: dict[int, mujoco.Renderer] = {}
        self._camera = mujoco.MjvCamera()  # FrankaKitchen's default view
        self._camera.distance, self._camera.azimuth = DEFAULT_CAMERA_CONFIG["distance"], DEFAULT_CAMERA_CONFIG["azimuth"]
        self._camera.elevation, self._camera.lookat[:] = DEFAULT_CAMERA_CONFIG["elevation"], DEFAULT_CAMERA_CONFIG["lookat"]
        self.action_space = spaces.Box(-1.0, 1.0, shape=(9,), dtype=np.float32)
        obs = {"robot_qpos": spaces.Box(-np.inf, np.inf, shape=(9,), dtype=np.float32),
               "robot_qvel": spaces.Box(-np.inf, np.inf, shape=(9,), dtype=np.float32),
               "object_qpos": spaces.Box(-np.inf, np.inf, shape=(21,), dtype=np.float32)}
        if image:
            obs["image"] = spaces.Box(0, 255, shape=(render_size, render_size, 3), dtype=np.uint8)
        self.observation_space = spaces.Dict(obs)
        self.completed: list[str] = []
        self.completed_at: list[int] = []  # the step at which each of `completed` was done
        self.steps = 0

    def get_state(self) -> np.ndarray:
        """Flat simulator state [qpos (30), qvel (29)]."""
        return np.concatenate([self.data.qpos, self.data.qvel])

    def set_state(self, state: np.ndarray) -> None:
        """Restore a get_state() output (tasks already done are not restored: call it right after reset)."""
        state = np.asarray(state, dtype=np.float64)
        if state.shape != (self.STATE_DIM,):
            raise ValueError(f"a Kitchen state has {self.STATE_DIM} values (qpos 30, qvel 29), got shape {state.shape}")
        self.kitchen.robot_env.set_state(state[:30], state[30:])
        self.kitchen.robot_env._get_obs()  # the velocity action integrates from the last joint reading

    def _observe(self, raw: dict[str, Any]) -> dict[str, np.ndarray]:
        flat = raw["observation"].astype(np.float32)
        obs = {"robot_qpos": flat[:9], "robot_qvel": flat[9:18], "object_qpos": flat[18:39]}
        if self.image:
            obs["image"] = self._render(self.render_size)
        return obs

    def _info(self) -> dict[str, Any]:
        done = len(self.completed)
        return {"is_success": done == self.n_tasks, "num_completed": done, "completed": list(self.completed),
                "completed_at": list(self.completed_at)}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """FrankaKitchen's fixed start (the seed drives its observation noise), or options={"state": ...}."""
        super().reset(seed=seed)
        raw, _ = self.kitchen.reset(seed=seed)
        state = (options or {}).get("state")
        if state is not None:
            self.set_state(state)
            raw = self.kitchen._get_obs(self.kitchen.robot_env._get_obs())
        self.completed, self.completed_at, self.steps = [], [], 0
        return self._observe(raw), self._info()

    def step(self, action: np.ndarray):
        raw, _, terminated, _, info = self.kitchen.step(np.asarray(action, dtype=np.float64).reshape(9))
        self.steps += 1
        completed = list(info["episode_task_completions"])
        self.completed_at += [self.steps] * (len(completed) - len(self.completed))
        self.completed = completed
        info = self._info()
        return self._observe(raw), info["num_completed"] / self.n_tasks, bool(terminated), self.steps >= self.max_steps, info

    def _render(self, size: int) -> np.ndarray:
        if size not in self._renderers:
            self._renderers[size] = mujoco.Renderer(self.model, size, size)
        renderer = self._renderers[size]
        renderer.update_scene(self.data, camera=self._camera)
        return renderer.render()

    def render(self) -> np.ndarray:
        return self._render(self.video_size)

    def close(self) -> None:
        for renderer in self._renderers.values():
            renderer.close()
        self._renderers.clear()
        self.kitchen.close()


def make_kitchen_env(image: bool = False, render_size: int = 96, max_steps: int = 280) -> KitchenEnv:
    """The Kitchen env of a task config (`env._target_: drift_policy.envs.kitchen.make_kitchen_env`)."""
    return KitchenEnv(image=image, render_size=render_size, max_steps=max_steps)
