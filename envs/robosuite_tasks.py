"""robosuite 1.5 single-arm tasks (Lift, PickPlaceCan, ToolHang) as gymnasium envs with robomimic's observation keys.

Actions are robosuite's OSC_POSE commands in the world frame. `abs_action=False`: robosuite's native delta action
[dx, dy, dz, rotvec (3), gripper] in [-1, 1] (0.05 m / 0.5 rad per unit). `abs_action=True`: the absolute target
pose [x, y, z, rot6d (6), gripper], rot6d being the first two rows of the rotation matrix (continuous, unlike the
axis-angle robosuite takes, which flips near the gripper-down pose) — Diffusion Policy's abs-action convention.
"""
from __future__ import annotations

import copy
import json
import os
from typing import Any, Mapping, Sequence

os.environ.setdefault("MUJOCO_GL", "egl")

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from scipy.spatial.transform import Rotation


# The robosuite environment class of each task; the rest of a task's facts are in configs/task/<task>.yaml.
ENV_NAMES = {"lift": "Lift", "can": "PickPlaceCan", "tool_hang": "ToolHang"}
LOW_DIM_KEYS = ("object", "robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos")
CAMERAS = ("agentview", "robot0_eye_in_hand")
IMAGE_SIZE = 84
DELTA_ACTION_DIM = 7
ABS_ACTION_DIM = 10


def rotvec_to_rot6d(rotvec: np.ndarray) -> np.ndarray:
    """[..., 3] axis-angle -> [..., 6] first two rows of the rotation matrix."""
    matrix = Rotation.from_rotvec(np.asarray(rotvec, dtype=np.float64).reshape(-1, 3)).as_matrix()
    return matrix[:, :2, :].reshape(*np.shape(rotvec)[:-1], 6)


def rot6d_to_rotvec(rot6d: np.ndarray) -> np.ndarray:
    """[..., 6] -> [..., 3] axis-angle, Gram-Schmidt on the two rows so any network output maps to a rotation."""
    rows = np.asarray(rot6d, dtype=np.float64).reshape(-1, 2, 3)
    b1 = rows[:, 0] / np.linalg.norm(rows[:, 0], axis=-1, keepdims=True)
    b2 = rows[:, 1] - np.sum(b1 * rows[:, 1], axis=-1, keepdims=True) * b1
    b2 /= np.linalg.norm(b2, axis=-1, keepdims=True)
    matrix = np.stack([b1, b2, np.cross(b1, b2)], axis=1)
    return Rotation.from_matrix(matrix).as_rotvec().reshape(*np.shape(rot6d)[:-1], 3)


def controller_config(abs_action: bool = False) -> dict:
    """robosuite's BASIC composite controller with an OSC_POSE arm in the world frame, delta or absolute input."""
    from robosuite.controllers import load_composite_controller_config

    config = load_composite_controller_config(controller="BASIC", robot="Panda")
    config["body_parts"] = {"right": config["body_parts"]["right"]}
    config["body_parts"]["right"].update(input_type="absolute" if abs_action else "delta", input_ref_frame="world")
    return config


def env_args(task: str, image: bool = False, abs_action: bool = False, image_size: int = IMAGE_SIZE) -> dict:
    """robomimic's env_args (env_name, type 1 = robosuite, env_kwargs for robosuite.make) of one of ENV_NAMES."""
    if task not in ENV_NAMES:
        raise ValueError(f"unknown robosuite task {task!r}; choose one of {sorted(ENV_NAMES)}")
    import robosuite

    return {
        "env_name": ENV_NAMES[task],
        "env_version": robosuite.__version__,
        "type": 1,
        "env_kwargs": {
            "robots": ["Panda"],
            "controller_configs": controller_config(abs_action),
            "has_renderer": False,
            "has_offscreen_renderer": image,
            "use_camera_obs": image,
            "use_object_obs": True,
            "ignore_done": True,
            "reward_shaping": False,
            "control_freq": 20,
            "camera_names": list(CAMERAS),
            "camera_heights": image_size,
            "camera_widths": image_size,
            "camera_depths": False,
        },
    }


def _modern_controller(config: Mapping[str, Any], abs_action: bool | None) -> dict:
    """A composite controller config from either robosuite >= 1.5 or a robomimic-era (<= 1.4) part config."""
    from robosuite.controllers.composite.composite_controller_factory import refactor_composite_controller_config

    config = copy.deepcopy(dict(config))
    if "body_parts" not in config:
        legacy_delta = config.pop("control_delta", True)
        config.setdefault("input_type", "delta" if legacy_delta else "absolute")
        config.setdefault("input_ref_frame", "world")  # robosuite <= 1.4 OSC worked in the world frame
        config = refactor_composite_controller_config(config, "Panda", ["right"])
        config["body_parts"] = {"right": config["body_parts"]["right"]}
    if abs_action is not None:
        for part in config["body_parts"].values():
            if str(part.get("type", "")).startswith("OSC"):
                part["input_type"] = "absolute" if abs_action else "delta"
    return config


class RobosuiteEnv(gym.Env):
    """Dict observations (robomimic keys: `object`, `robot0_eef_pos`, ..., `<camera>_image` uint8 HWC upright),
    reward 1.0 on the task's own success check, terminated on success, truncated after max_steps (None: never)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(self, env_args: Mapping[str, Any] | str, obs_keys: Sequence[str] | None = None,
                 abs_action: bool | None = None, max_steps: int | None = None, render_mode: str | None = None,
                 render_size: int = 256) -> None:
        import robosuite

        args = json.loads(env_args) if isinstance(env_args, str) else copy.deepcopy(dict(env_args))
        kwargs = dict(args.get("env_kwargs", {}))
        name = args.get("env_name")
        if name not in robosuite.ALL_ENVIRONMENTS:
            raise ValueError(f"env_args names robosuite env {name!r}, which robosuite {robosuite.__version__} lacks")
        kwargs["controller_configs"] = _modern_controller(kwargs.get("controller_configs") or controller_config(), abs_action)
        arm = kwargs["controller_configs"]["body_parts"]["right"]
        self.abs_action = arm.get("input_type") == "absolute"
        if obs_keys is None:
            use_cameras = kwargs.get("use_camera_obs", False)
            obs_keys = [*LOW_DIM_KEYS, *([f"{c}_image" for c in kwargs.get("camera_names", CAMERAS)] if use_cameras else [])]
        self.obs_keys = list(obs_keys)
        self.cameras = [k[: -len("_image")] for k in self.obs_keys if k.endswith("_image")]
        if self.cameras:
            kwargs.update(use_camera_obs=True, camera_names=self.cameras, camera_depths=False)
        else:
            kwargs["use_camera_obs"] = False
        kwargs.update(has_renderer=False, has_offscreen_renderer=bool(self.cameras) or render_mode == "rgb_array",
                      ignore_done=True, hard_reset=False)
        self.env = robosuite.make(name, **kwargs)
        self.env_args = {**args, "env_kwargs": {k: v for k, v in kwargs.items() if k != "hard_reset"}}
        self.max_steps = max_steps
        self.render_mode, self.render_size = render_mode, render_size
        self._steps = 0
        raw = self.env.reset()
        self._plain_rendering()
        self.observation_space = spaces.Dict({k: self._space(k, raw) for k in self.obs_keys})
        if self.abs_action:
            bound = np.array([np.inf] * 3 + [1.0] * 7, dtype=np.float32)
            self.action_space = spaces.Box(-bound, bound, dtype=np.float32)
        else:
            self.action_space = spaces.Box(-1.0, 1.0, shape=(DELTA_ACTION_DIM,), dtype=np.float32)

    def _space(self, key: str, raw: Mapping[str, np.ndarray]) -> spaces.Box:
        if key.endswith("_image"):
            h, w = self.env.camera_heights[0], self.env.camera_widths[0]
            return spaces.Box(0, 255, shape=(h, w, 3), dtype=np.uint8)
        source = "object-state" if key == "object" else key
        if source not in raw:
            raise ValueError(f"observation key {key!r} is not produced by {self.env.__class__.__name__}; "
                             f"it has {sorted(raw)} (`object` = `object-state`)")
        return spaces.Box(-np.inf, np.inf, shape=np.shape(raw[source]), dtype=np.float32)

    def _plain_rendering(self) -> None:
        """Shadows and reflections off: 84x84 frames render several times faster and look the same to a policy."""
        import mujoco

        context = self.env.sim._render_context_offscreen
        if context is not None:
            context.scn.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
            context.scn.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0

    def _observe(self, raw: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        obs = {}
        for key in self.obs_keys:
            if key.endswith("_image"):
                obs[key] = np.ascontiguousarray(raw[key][::-1])  # robosuite renders upside down (OpenGL)
            else:
                obs[key] = np.asarray(raw["object-state" if key == "object" else key], dtype=np.float32)
        return obs

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """New random scene (reproducible with `seed`), or the flattened sim state `options["state"]`."""
        super().reset(seed=seed)
        if seed is not None:  # reseed robosuite's own generator in place: its placement samplers hold it
            self.env.rng.bit_generator.state = np.random.default_rng(seed).bit_generator.state
        raw = self.env.reset()
        self._steps = 0
        state = (options or {}).get("state")
        if state is not None:
            raw = self.set_state(state)
        return self._observe(raw), {"is_success": self.is_success()}

    def set_state(self, state: np.ndarray) -> dict[str, np.ndarray]:
        """Put the simulator in a flattened MjSim state (robomimic's `states` rows); returns raw robosuite obs."""
        self.env.sim.set_state_from_flattened(np.asarray(state, dtype=np.float64))
        self.env.sim.forward()
        self.env.robots[0].composite_controller.update_state()
        for controller in self.env.robots[0].part_controllers.values():
            controller.update(force=True)
            if hasattr(controller, "reset_goal"):
                controller.reset_goal()
        return self.env._get_observations(force_update=True)

    def get_state(self) -> np.ndarray:
        return np.asarray(self.env.sim.get_state().flatten())

    def is_success(self) -> bool:
        return bool(self.env._check_success())

    def to_robosuite_action(self, action: np.ndarray) -> np.ndarray:
        """The 7-d command robosuite takes for an action of this env's action space."""
        action = np.asarray(action, dtype=np.float64)
        if action.shape != self.action_space.shape:
            raise ValueError(f"action has shape {action.shape}; this env takes {self.action_space.shape} "
                             f"({'absolute pos + rot6d + gripper' if self.abs_action else 'delta OSC_POSE + gripper'})")
        if not self.abs_action:
            return action
        return np.concatenate([action[:3], rot6d_to_rotvec(action[3:9]), action[9:]])

    def absolute_actions(self, states: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """[T, 10] absolute targets (pos, rot6d, gripper) that this env's delta controller set for each
        (state, delta action) pair: Diffusion Policy's conversion, replaying states through the controller."""
        if self.abs_action:
            raise ValueError("absolute_actions converts delta actions: build the env with abs_action=False")
        states, actions = np.asarray(states), np.asarray(actions, dtype=np.float64)
        if states.shape[1:] != self.get_state().shape:
            raise ValueError(f"states have {states.shape[1:]} entries but {self.env.__class__.__name__} on robosuite "
                             f"{self.env_args.get('env_version', '')} has {self.get_state().shape}: the dataset was made "
                             "with another simulator model, so its delta actions cannot be converted here")
        arm = self.env.robots[0].part_controllers["right"]
        out = np.empty((len(actions), ABS_ACTION_DIM))
        for t, (state, action) in enumerate(zip(states, actions)):
            self.set_state(state)
            scaled = arm.scale_action(action[:6])
            out[t, :3] = arm.compute_goal_pos(scaled[:3], goal_update_mode="achieved")
            out[t, 3:9] = arm.compute_goal_ori(scaled[3:6], goal_update_mode="achieved")[:2].reshape(6)
            out[t, 9] = action[6]
        return out

    def step(self, action: np.ndarray):
        raw, _, _, _ = self.env.step(self.to_robosuite_action(action))
        self._steps += 1
        success = self.is_success()
        return self._observe(raw), float(success), success, self.max_steps is not None and self._steps >= self.max_steps, {"is_success": success}

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array":
            return None
        frame = self.env.sim.render(width=self.render_size, height=self.render_size, camera_name="agentview")
        return np.ascontiguousarray(frame[::-1])

    def close(self) -> None:
        self.env.close()


def make_robosuite_env(task: str, image: bool = False, abs_action: bool = True, image_size: int = IMAGE_SIZE,
                       max_steps: int | None = None, render_mode: str | None = "rgb_array") -> RobosuiteEnv:
    """The env of a task config (`env._target_: drift_policy.envs.robosuite_tasks.make_robosuite_env`): low-dim keys, plus
    84x84 agentview and eye-in-hand images when `image`. It renders rgb_array frames for the evaluation's videos, as
    the other envs do (the offscreen context costs nothing per step: Lift 8.5-9.1 ms/step with it, 9.3-10.7 without)."""
    args = env_args(task, image=image, abs_action=abs_action, image_size=image_size)
    return RobosuiteEnv(args, abs_action=abs_action, max_steps=max_steps, render_mode=render_mode)
