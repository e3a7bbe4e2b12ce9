"""BlockPush: a MuJoCo re-creation of Diffusion Policy's multimodal block pushing (the original, from IBC,
runs on pybullet with an xArm). A planar cylindrical pusher moves two blocks into two target squares, in
any order and any assignment; metrics p1 (one block in a target) and p2 (both)."""
from __future__ import annotations

from itertools import permutations
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np
from gymnasium import spaces

BLOCK_HALF = 0.02        # blocks are 4 cm cubes
PUSHER_RADIUS = 0.015
TARGET_HALF = 0.05       # targets are drawn as 10 cm squares
GOAL_TOLERANCE = 0.05    # a block is in a target when its centre is within 5 cm of the target's (IBC's value)
WORKSPACE = np.array([[-0.3, -0.3], [0.3, 0.3]])  # pusher xy bounds (metres)
MAX_MOVE = 0.03          # the pusher's target moves at most 3 cm per 0.1 s control step
CONTROL_DT, PHYSICS_DT = 0.1, 0.002

_XML = f"""
<mujoco model="block_push">
  <option timestep="{PHYSICS_DT}"/>
  <visual><quality shadowsize="0"/><global offwidth="256" offheight="256"/></visual>
  <default><geom friction="0.5 0.005 0.0001"/></default>
  <worldbody>
    <light pos="0 0 2" dir="0 0 -1" diffuse="0.8 0.8 0.8"/>
    <camera name="top" pos="0 0 0.85" xyaxes="1 0 0 0 1 0" fovy="45"/>
    <geom name="table" type="plane" size="0.4 0.4 0.01" rgba="0.85 0.85 0.8 1"/>
    <body name="target0" pos="0 0 0.0005">
      <geom type="box" size="{TARGET_HALF} {TARGET_HALF} 0.0005" rgba="0.9 0.3 0.3 0.5" contype="0" conaffinity="0"/>
    </body>
    <body name="target1" pos="0 0 0.0005">
      <geom type="box" size="{TARGET_HALF} {TARGET_HALF} 0.0005" rgba="0.3 0.8 0.3 0.5" contype="0" conaffinity="0"/>
    </body>
    <body name="block0" pos="0 0 {BLOCK_HALF}">
      <freejoint/><geom type="box" size="{BLOCK_HALF} {BLOCK_HALF} {BLOCK_HALF}" mass="0.05" rgba="0.8 0.1 0.1 1"/>
    </body>
    <body name="block1" pos="0 0 {BLOCK_HALF}">
      <freejoint/><geom type="box" size="{BLOCK_HALF} {BLOCK_HALF} {BLOCK_HALF}" mass="0.05" rgba="0.1 0.6 0.1 1"/>
    </body>
    <body name="pusher" pos="0 0 0.03">
      <joint name="px" type="slide" axis="1 0 0" damping="20"/>
      <joint name="py" type="slide" axis="0 1 0" damping="20"/>
      <geom type="cylinder" size="{PUSHER_RADIUS} 0.025" mass="1" rgba="0.2 0.2 0.9 1"/>
    </body>
  </worldbody>
  <contact><exclude body1="world" body2="pusher"/></contact>
  <actuator>
    <position joint="px" kp="400"/>
    <position joint="py" kp="400"/>
  </actuator>
</mujoco>
"""


def block_in_targets(block_xy: np.ndarray, target_xy: np.ndarray, tolerance: float = GOAL_TOLERANCE) -> int:
    """Most blocks sitting in distinct targets: block_xy [B, 2], target_xy [K, 2] -> 0..min(B, K)."""
    inside = np.linalg.norm(block_xy[:, None] - target_xy[None], axis=-1) < tolerance
    if inside.shape[0] > inside.shape[1]:
        inside = inside.T
    rows, cols = inside.shape
    return int(max(sum(inside[r, c] for r, c in zip(range(rows), chosen)) for chosen in permutations(range(cols), rows)))


def _yaw(quat: np.ndarray) -> float:
    """Heading of a block (quaternion wxyz), folded into [-pi/4, pi/4) since a cube looks the same every 90 degrees."""
    w, x, y, z = quat
    yaw = np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))
    return float((yaw + np.pi / 4) % (np.pi / 2) - np.pi / 4)


class BlockPushEnv(gym.Env):
    """Dict observations {"block_poses" [6], "effector_pos" [2], "target_poses" [6]} ((x, y, yaw) per block and
    target, metres/radians), optionally "image" uint8 [H, W, 3] from a top camera; the action is the pusher's
    target xy (absolute, metres). reward = blocks in targets / 2; info: is_success, num_completed and completed,
    the episode's push order so far ("block{b}->target{t}" in the order the blocks first entered a free target,
    the task's mode: 2 orders x 2 assignments)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}
    STATE_DIM = 7 + 7 + 2 + 6 + 6 + 2 + 6  # qpos, qvel (blocks, pusher), target poses

    def __init__(self, image: bool = False, render_size: int = 96, video_size: int = 256, max_steps: int = 350) -> None:
        self.model = mujoco.MjModel.from_xml_string(_XML)
        self.data = mujoco.MjData(self.model)
        self.frame_skip = round(CONTROL_DT / PHYSICS_DT)
        self.image, self.render_size, self.video_size, self.max_steps = image, render_size, video_size, max_steps
        self.render_mode = "rgb_array"
        self._renderers: dict[int, mujoco.Renderer] = {}
        self._targets = [self.model.body(f"target{k}").id for k in range(2)]
        self.action_space = spaces.Box(WORKSPACE[0].astype(np.float32), WORKSPACE[1].astype(np.float32))
        obs = {"block_poses": spaces.Box(-1, 1, shape=(6,), dtype=np.float32),
               "effector_pos": spaces.Box(-1, 1, shape=(2,), dtype=np.float32),
               "target_poses": spaces.Box(-1, 1, shape=(6,), dtype=np.float32)}
        if image:
            obs["image"] = spaces.Box(0, 255, shape=(render_size, render_size, 3), dtype=np.uint8)
        self.observation_space = spaces.Dict(obs)
        self.steps = 0
        self.completed: list[tuple[int, int]] = []  # (block, target) pairs in the order they happened
        self.completed_at: list[int] = []  # the step at which each entered

    # ---- state -------------------------------------------------------------------------------------
    def target_poses(self) -> np.ndarray:
        """[2, 3] (x, y, yaw) of the targets."""
        return np.array([[*self.model.body_pos[b][:2], 2 * np.arctan2(self.model.body_quat[b][3], self.model.body_quat[b][0])]
                         for b in self._targets])

    def get_state(self) -> np.ndarray:
        """Flat simulator state [qpos, qvel, target poses], enough to restore an episode exactly."""
        return np.concatenate([self.data.qpos, self.data.qvel, self.target_poses().reshape(-1)])

    def set_state(self, state: np.ndarray) -> None:
        """Restore a state from get_state() (the pusher's target is put where the pusher is)."""
        state = np.asarray(state, dtype=np.float64)
        if state.shape != (self.STATE_DIM,):
            raise ValueError(f"a BlockPush state has {self.STATE_DIM} values (qpos, qvel, target poses), got shape {state.shape}")
        nq, nv = self.model.nq, self.model.nv
        self.data.qpos[:], self.data.qvel[:] = state[:nq], state[nq:nq + nv]
        for b, (x, y, yaw) in zip(self._targets, state[nq + nv:].reshape(2, 3)):
            self.model.body_pos[b][:2] = x, y
            self.model.body_quat[b] = np.cos(yaw / 2), 0, 0, np.sin(yaw / 2)
        self.data.ctrl[:] = self.data.qpos[14:16]
        mujoco.mj_forward(self.model, self.data)

    def _sample_state(self) -> np.ndarray:
        """Blocks side by side near the centre, targets side by side at the far edge, pusher at the near edge."""
        rng = self.np_random
        blocks = np.array([[-0.1, -0.05], [0.1, -0.05]]) + rng.uniform(-0.03, 0.03, size=(2, 2))
        targets = np.array([[-0.12, 0.2], [0.12, 0.2]]) + rng.uniform(-0.02, 0.02, size=(2, 2))
        qpos = np.zeros(self.model.nq)
        for i, (xy, yaw) in enumerate(zip(blocks, rng.uniform(-np.pi / 4, np.pi / 4, size=2))):
            qpos[7 * i:7 * i + 7] = *xy, BLOCK_HALF, np.cos(yaw / 2), 0, 0, np.sin(yaw / 2)
        qpos[14:16] = rng.uniform(-0.05, 0.05), -0.25
        yaws = rng.uniform(-np.pi / 4, np.pi / 4, size=(2, 1))
        return np.concatenate([qpos, np.zeros(self.model.nv), np.hstack([targets, yaws]).reshape(-1)])

    # ---- gymnasium API -----------------------------------------------------------------------------
    def block_xy(self) -> np.ndarray:
        return np.stack([self.data.qpos[0:2], self.data.qpos[7:9]])

    def num_completed(self) -> int:
        """Blocks in distinct targets (0, 1 or 2)."""
        return block_in_targets(self.block_xy(), self.target_poses()[:, :2])

    def _record_entries(self) -> None:
        """Append (block, target) the first time a block sits in a target that no earlier block entered."""
        inside = np.linalg.norm(self.block_xy()[:, None] - self.target_poses()[None, :, :2], axis=-1) < GOAL_TOLERANCE
        for block, target in zip(*np.nonzero(inside)):
            if all(block != b and target != t for b, t in self.completed):
                self.completed.append((int(block), int(target)))
                self.completed_at.append(self.steps)

    def _observe(self) -> dict[str, np.ndarray]:
        blocks = [[*self.data.qpos[7 * i:7 * i + 2], _yaw(self.data.qpos[7 * i + 3:7 * i + 7])] for i in range(2)]
        obs = {"block_poses": np.asarray(blocks, dtype=np.float32).reshape(-1),
               "effector_pos": self.data.qpos[14:16].astype(np.float32),
               "target_poses": self.target_poses().astype(np.float32).reshape(-1)}
        if self.image:
            obs["image"] = self._render(self.render_size)
        return obs

    def _info(self) -> dict[str, Any]:
        done = self.num_completed()
        return {"is_success": done == 2, "num_completed": done, "completed": [f"block{b}->target{t}" for b, t in self.completed],
                "completed_at": list(self.completed_at)}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Random layout from the seed, or options={"state": get_state() output} to restore one."""
        super().reset(seed=seed)
        state = (options or {}).get("state")
        self.set_state(self._sample_state() if state is None else state)
        self.steps, self.completed, self.completed_at = 0, [], []
        return self._observe(), self._info()

    def step(self, action: np.ndarray):
        action = np.asarray(action, dtype=np.float64).reshape(2)
        here = self.data.qpos[14:16]
        move = np.clip(action, WORKSPACE[0], WORKSPACE[1]) - here
        self.data.ctrl[:] = here + move * min(1.0, MAX_MOVE / max(np.linalg.norm(move), 1e-9))
        mujoco.mj_step(self.model, self.data, nstep=self.frame_skip)
        self.steps += 1
        self._record_entries()
        info = self._info()
        return self._observe(), info["num_completed"] / 2, info["is_success"], self.steps >= self.max_steps, info

    def _render(self, size: int) -> np.ndarray:
        if size not in self._renderers:
            self._renderers[size] = mujoco.Renderer(self.model, size, size)
        renderer = self._renderers[size]
        renderer.update_scene(self.data, camera="top")
        return renderer.render()

    def render(self) -> np.ndarray:
        return self._render(self.video_size)

    def close(self) -> None:
        for renderer in self._renderers.values():
            renderer.close()
        self._renderers.clear()


def make_block_push_env(image: bool = False, render_size: int = 96, max_steps: int = 350) -> BlockPushEnv:
    """The BlockPush env of a task config (`env._target_: drift_policy.envs.block_push.make_block_push_env`)."""
    return BlockPushEnv(image=image, render_size=render_size, max_steps=max_steps)
