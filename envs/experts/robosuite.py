"""Scripted experts for Lift, Can and ToolHang: randomised waypoints tracked with robosuite's delta OSC_POSE actions.

Each episode draws its own via points, approach heights, grasp offsets and yaw (among the object's symmetric
grasps), speeds and smoothing, so demonstrations differ in path and timing like human ones rather than replaying
one fixed trajectory. Actions are stored as robosuite's delta commands, as in robomimic's datasets; the reader
converts them to absolute poses. Experts read the simulator's true object poses (privileged information).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy.spatial.transform import Rotation

from drift_policy.envs.robosuite_tasks import RobosuiteEnv, env_args as task_env_args
from drift_policy.tasks import load_task

OPEN, CLOSE = -1.0, 1.0
ROT_GAIN = 3.0  # rotation action per radian of orientation error (one action unit turns the goal 0.5 rad)
# Gripper pointing down, fingers closing along world x: the pose every top-down grasp is a yaw of.
DOWN = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])


@dataclass
class Waypoint:
    """Where the gripper site goes, the gripper command on the way, and how it gets there."""

    pos: np.ndarray
    rot: np.ndarray  # 3x3 target orientation of the end effector
    grip: float = OPEN
    speed: float = 1.0  # largest positional action (units of 5 cm goal offset)
    tol: float = 0.01  # metres: reached when closer than this ...
    hold: int = 0  # ... and then held for this many steps
    noise: float = 0.0  # amplitude of smooth random perturbation on the way (free-space motion only)
    timeout: int = 60


def yaw_rot(yaw: float, tilt: np.ndarray | None = None) -> np.ndarray:
    """Top-down gripper turned by `yaw` about world z (then by an optional extra rotation matrix `tilt`)."""
    rot = Rotation.from_euler("z", yaw).as_matrix() @ DOWN
    return rot if tilt is None else tilt @ rot


def body_yaw(quat_wxyz: np.ndarray) -> float:
    matrix = Rotation.from_quat(np.roll(quat_wxyz, -1)).as_matrix()
    return float(np.arctan2(matrix[1, 0], matrix[0, 0]))


def symmetric_yaw(yaw: float, period: float, rng: np.random.Generator, limit: float = np.deg2rad(75)) -> float:
    """One of the grasp yaws yaw + k * period within +-limit of the home pose, picked at random (multimodal data)."""
    base = (yaw + period / 2) % period - period / 2
    options = [base + k * period for k in range(-4, 5) if abs(base + k * period) <= limit]
    return float(rng.choice(options)) if options else base


class Follower:
    """Turns waypoints into smooth delta actions: proportional tracking, a speed cap, and a rate limit that
    gives bell-shaped velocity profiles; the gain, rate limit and noise are drawn per episode."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.gain = rng.uniform(12.0, 20.0)  # action units per metre of error
        self.rate = rng.uniform(0.12, 0.25)  # largest change of the positional action per step
        self.prev = np.zeros(3)
        self.noise = np.zeros(3)

    def action(self, pos: np.ndarray, rot: np.ndarray, wp: Waypoint) -> np.ndarray:
        error = wp.pos - pos
        desired = error * self.gain
        norm = np.linalg.norm(desired)
        if norm > wp.speed:
            desired *= wp.speed / norm
        self.noise = 0.9 * self.noise + self.rng.normal(0.0, 0.3, 3) * wp.noise
        desired = desired + self.noise * min(1.0, np.linalg.norm(error) / 0.05)
        self.prev = self.prev + np.clip(desired - self.prev, -self.rate, self.rate)
        rot_error = Rotation.from_matrix(wp.rot @ rot.T).as_rotvec()
        rot_action = np.clip(rot_error * ROT_GAIN, -1.0, 1.0)
        return np.concatenate([np.clip(self.prev, -1.0, 1.0), rot_action, [wp.grip]]).astype(np.float32)


def _eef(env: RobosuiteEnv) -> tuple[np.ndarray, np.ndarray]:
    site = env.env.robots[0].eef_site_id["right"]
    data = env.env.sim.data
    return np.array(data.site_xpos[site]), np.array(data.site_xmat[site]).reshape(3, 3)


def _body(env: RobosuiteEnv, body_id: int) -> tuple[np.ndarray, np.ndarray]:
    data = env.env.sim.data
    return np.array(data.body_xpos[body_id]), np.array(data.body_xquat[body_id])


def _via(start: np.ndarray, goal: np.ndarray, rng: np.random.Generator, lift: float) -> np.ndarray:
    """A random point part-way from start to goal, raised and pushed sideways, so paths vary."""
    point = start + rng.uniform(0.3, 0.7) * (goal - start)
    return point + np.array([*rng.normal(0.0, 0.04, 2), rng.uniform(0.0, lift)])


def lift_plan(env: RobosuiteEnv, rng: np.random.Generator) -> list[Waypoint]:
    """Approach the cube (optionally through a via point), descend, grasp, lift."""
    cube_pos, cube_quat = _body(env, env.env.cube_body_id)
    rot = yaw_rot(symmetric_yaw(body_yaw(cube_quat), np.pi / 2, rng))
    above = cube_pos + np.array([*rng.normal(0.0, 0.004, 2), rng.uniform(0.04, 0.10)])
    grasp = cube_pos + np.array([*rng.normal(0.0, 0.003, 2), rng.uniform(-0.012, 0.002)])
    start, _ = _eef(env)
    plan = []
    if rng.random() < 0.5:
        plan.append(Waypoint(_via(start, above, rng, 0.05), rot, speed=rng.uniform(0.6, 1.0), tol=0.03,
                             noise=rng.uniform(0.0, 0.3)))
    plan += [
        Waypoint(above, rot, speed=rng.uniform(0.6, 1.0), tol=0.012, noise=rng.uniform(0.0, 0.2)),
        Waypoint(grasp, rot, speed=rng.uniform(0.3, 0.6), tol=0.006, hold=int(rng.integers(0, 3))),
        Waypoint(grasp, rot, CLOSE, tol=0.02, hold=int(rng.integers(6, 12))),
        Waypoint(grasp + np.array([*rng.normal(0.0, 0.02, 2), rng.uniform(0.10, 0.18)]), rot, CLOSE,
                 speed=rng.uniform(0.5, 1.0), tol=0.01, hold=20),
    ]
    return plan


def can_plan(env: RobosuiteEnv, rng: np.random.Generator) -> list[Waypoint]:
    """Top-down grasp of the can in bin 1, carry it over the wall, drop it in its quadrant of bin 2, back off."""
    suite = env.env
    can_pos, _ = _body(env, suite.obj_body_id["Can"])
    rot = yaw_rot(rng.uniform(-0.5, 0.5))
    carry_rot = yaw_rot(rng.uniform(-0.5, 0.5))
    # the corner of the can's quadrant of bin 2 nearest the robot: the far corner is at the edge of Panda's reach
    low_x, low_y = suite.bin2_pos[0], suite.bin2_pos[1]
    target = np.array([low_x + rng.uniform(0.04, 0.08), low_y + rng.uniform(0.04, 0.09)])
    above = can_pos + np.array([*rng.normal(0.0, 0.004, 2), rng.uniform(0.06, 0.12)])
    grasp = can_pos + np.array([*rng.normal(0.0, 0.003, 2), rng.uniform(0.015, 0.03)])  # palm clears the lid
    carry_z = rng.uniform(0.98, 1.04)
    drop = np.array([target[0], target[1], rng.uniform(0.94, 0.98)])
    start, _ = _eef(env)
    plan = []
    if rng.random() < 0.5:
        plan.append(Waypoint(_via(start, above, rng, 0.04), rot, speed=rng.uniform(0.6, 1.0), tol=0.03,
                             noise=rng.uniform(0.0, 0.3)))
    plan += [
        Waypoint(above, rot, speed=rng.uniform(0.6, 1.0), tol=0.012, noise=rng.uniform(0.0, 0.2)),
        Waypoint(grasp, rot, speed=rng.uniform(0.3, 0.6), tol=0.006, hold=int(rng.integers(0, 3))),
        Waypoint(grasp, rot, CLOSE, tol=0.02, hold=int(rng.integers(6, 12))),
        Waypoint(np.array([*grasp[:2], carry_z]), rot, CLOSE, speed=rng.uniform(0.6, 1.0), tol=0.02),
        Waypoint(np.array([*_via(grasp, drop, rng, 0.0)[:2], carry_z + rng.uniform(0.0, 0.04)]), carry_rot, CLOSE,
                 speed=rng.uniform(0.7, 1.0), tol=0.04, noise=rng.uniform(0.0, 0.2)),
        Waypoint(np.array([*drop[:2], carry_z]), carry_rot, CLOSE, speed=rng.uniform(0.6, 1.0), tol=0.015),
        Waypoint(drop, carry_rot, CLOSE, speed=rng.uniform(0.4, 0.7), tol=0.01),
        Waypoint(drop, carry_rot, OPEN, tol=0.03, hold=int(rng.integers(4, 8))),
        Waypoint(drop + np.array([0.0, 0.0, rng.uniform(0.08, 0.14)]), carry_rot, OPEN, speed=rng.uniform(0.5, 1.0),
                 hold=20),
    ]
    return plan


PLANS: dict[str, Callable[[RobosuiteEnv, np.random.Generator], list[Waypoint]]] = {
    "lift": lift_plan,
    "can": can_plan,
}
_ENVS: dict[tuple[str, bool], RobosuiteEnv] = {}


def _env(task: str, image: bool) -> RobosuiteEnv:
    """One delta-action env per (task, image) in a process: building one costs seconds."""
    if (task, image) not in _ENVS:
        _ENVS[(task, image)] = RobosuiteEnv(task_env_args(task, image=image), abs_action=False)
    return _ENVS[(task, image)]


def env_args(image: bool = False, task: str = "lift", **kw) -> dict:
    """robomimic env_args of the env the expert acts in (delta OSC_POSE actions)."""
    return task_env_args(task, image=image, abs_action=False)


def collect_episode(seed: int, image: bool = False, task: str = "lift", **kw) -> dict:
    """One scripted episode from scene `seed`: obs {key: [T, ...]}, actions [T, 7] (delta), states [T, S],
    success; it stops at the first successful step, as robomimic's demonstrations do."""
    if task not in PLANS:
        raise ValueError(f"no scripted robosuite expert for task {task!r}; experts exist for {sorted(PLANS)}")
    env = _env(task, image)
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    plan = PLANS[task](env, rng)
    follower = Follower(rng)
    record: dict[str, list] = {"obs": [], "actions": [], "states": []}
    index, held, spent, success = 0, 0, 0, False
    for _ in range(load_task(task).max_steps):
        wp = plan[index]
        pos, rot = _eef(env)
        action = follower.action(pos, rot, wp)
        record["obs"].append(obs)
        record["states"].append(env.get_state())
        record["actions"].append(action)
        obs, _, success, _, _ = env.step(action)
        if success:
            break
        spent += 1
        pos, _ = _eef(env)
        if np.linalg.norm(wp.pos - pos) < wp.tol or spent >= wp.timeout:
            held += 1
        if held > wp.hold:
            if index == len(plan) - 1:
                break
            index, held, spent = index + 1, 0, 0
    return {
        "obs": {k: np.stack([o[k] for o in record["obs"]]) for k in env.obs_keys},
        "actions": np.stack(record["actions"]),
        "states": np.stack(record["states"]),
        "success": bool(success),
    }
