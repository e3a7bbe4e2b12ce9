"""Scripted Kitchen expert: the four tasks in a random order, each a short list of end-effector waypoints (position
and orientation) built from the simulator's object poses (privileged information), tracked by damped-least-squares
inverse kinematics (mujoco jacobians) that outputs FrankaKitchen's joint-velocity actions. Each task starts with a
joint-space move to the inverse kinematics of its first waypoint (the fastest transit the joints allow). The
microwave door is grasped by its handle and swung round its hinge; the kettle's handle bar is grasped from above,
lifted, carried toward the top-left burner and set down; the light switch and the slide cabinet are pushed
sideways with the closed gripper. Each episode also draws its own order, speeds and small waypoint offsets, so
demonstrations vary beyond the order.

The microwave always comes last (the other three in any of their 6 orders): with its door open, the arm's later
transits swept it shut again. Measured over 50 seeded episodes in data/README.md.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import mujoco
import numpy as np
from scipy.spatial.transform import Rotation

from drift_policy.envs.kitchen import TASKS, KitchenEnv

OPEN, CLOSE = 1.0, -1.0
# Gripper pointing forward (+y), fingers opening along world x: FrankaKitchen's start pose, kept throughout.
FORWARD = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
GRASP_DEPTH = 0.03   # a handle sits this far ahead of the end-effector site when held between the fingertips
FINGER_SIDE = 0.045  # site to a pushed bar's centre when pushing with the side of the closed fingers
ARM_DOFS = 7
# FrankaKitchen starts with the shoulder pitched back against its limit, a posture from which the forward
# targets are out of reach; this one (found offline by collision-checked IK over random starts) reaches them and is
# the null-space preference (and inverse-kinematics seed) of the forward-facing waypoints.
HOME = np.array([0.7, 0.29, 0.33, -2.52, -2.12, 0.1, 2.8])
# The kettle's handle grasp: gripper pointing down, fingers opening along world y.
KETTLE_GRIP = np.diag([1.0, -1.0, -1.0])
KETTLE_POSTURE = np.array([0.72, -0.1, -0.06, -2.57, -0.01, 0.89, 2.24])  # KETTLE_GRIP above the handle (offline IK)
# The gripper's yaw per radian of door swing while it pulls the microwave handle round: with a fixed orientation
# the arm ran out of reach at a 0.44-0.51 rad door (threshold 0.45); with -0.5 the door reached 0.86-0.97 rad
# (microwave alone, seeds 0-5), in half the steps.
ARC_TURN = -0.5
KETTLE_GOAL_X = -0.23  # FrankaKitchen's kettle goal (top-left burner) is at x -0.23, y 0.75
# Each task starts with a joint-space move to the inverse kinematics of its first waypoint, until every joint is
# within POSTURE_TOL (rad) of it.
POSTURE_TOL, POSTURE_TIMEOUT = 0.08, 50
RAD_PER_ACTION = 2.0 * 0.08  # an action of 1 moves a joint 2 rad/s for one 0.08 s step
# What the joints can follow in one 0.08 s step: their position servos (87 / 12 N m) against joint damping
# (100 / 10 N m s/rad) allow about 0.87 rad/s on the shoulder and elbow and 1.2 rad/s on the wrist, less under load.
JOINT_STEP = np.array([0.07, 0.07, 0.07, 0.07, 0.09, 0.09, 0.09])
TURN_STEP = 0.12  # rad/step of end-effector rotation
ROT_TOL = 0.2  # rad: orientation error at which a waypoint counts as reached


@dataclass
class Waypoint:
    """Where the end-effector site goes and how it is held there: orientation, gripper command, speed (m/step),
    the joint posture the redundant DOF drift toward, and when the waypoint counts as reached."""

    pos: np.ndarray
    grip: float = CLOSE
    speed: float = 0.04
    tol: float = 0.015
    hold: int = 0       # extra steps spent at the waypoint once reached (e.g. to close the gripper)
    timeout: int = 40
    rot: np.ndarray = field(default_factory=lambda: FORWARD)
    posture: np.ndarray = field(default_factory=lambda: HOME)


class DLSController:
    """Joint-velocity actions that move the end-effector site toward a waypoint's position and orientation at
    capped linear, angular and joint speeds (damped least squares on mujoco's site jacobian), with a null-space
    pull toward the waypoint's posture. FrankaKitchen turns an action into a position target (last joint reading +
    2 rad/s * action * dt), so the controller keeps its own joint reference, integrates the IK step into it (which
    removes the arm's sag under gravity) and asks for it."""

    def __init__(self, env: KitchenEnv, damping: float = 0.05, margin: float = 0.05) -> None:
        self.model, self.data, self.damping = env.model, env.data, damping
        self.site = env.model.site("end_effector").id
        bounds = env.kitchen.robot_env.robot_pos_bound[:ARM_DOFS]  # the env clips its targets to these
        self.low = np.maximum(env.model.jnt_range[:ARM_DOFS, 0], bounds[:, 0]) + margin
        self.high = np.minimum(env.model.jnt_range[:ARM_DOFS, 1], bounds[:, 1]) - margin
        self.reference = self.data.qpos[:ARM_DOFS].copy()

    def _request(self, reference: np.ndarray, grip: float) -> np.ndarray:
        q = self.data.qpos[:ARM_DOFS]
        self.reference = q + np.clip(np.clip(reference, self.low, self.high) - q, -0.3, 0.3)  # bounded wind-up
        return np.concatenate([np.clip((self.reference - q) / RAD_PER_ACTION, -1, 1), [grip, grip]]).astype(np.float32)

    def joint_action(self, target: np.ndarray, grip: float) -> np.ndarray:
        """Toward a joint configuration along a straight line in joint space, as fast as the actions allow."""
        q = self.data.qpos[:ARM_DOFS]
        step = target - q
        return self._request(q + step / max(1.0, float(np.max(np.abs(step))) / RAD_PER_ACTION), grip)

    def solve(self, wp: Waypoint, iterations: int = 200) -> np.ndarray:
        """Joint configuration that puts the site at the waypoint's pose, near its posture (kinematics only, on a
        scratch copy of the simulator data)."""
        data = mujoco.MjData(self.model)
        data.qpos[:] = self.data.qpos
        data.qpos[:ARM_DOFS] = wp.posture
        jacp, jacr = np.zeros((3, self.model.nv)), np.zeros((3, self.model.nv))
        for _ in range(iterations):
            mujoco.mj_kinematics(self.model, data)
            mujoco.mj_comPos(self.model, data)
            mujoco.mj_jacSite(self.model, data, jacp, jacr, self.site)
            jac = np.vstack([jacp[:, :ARM_DOFS], jacr[:, :ARM_DOFS]])
            error = np.concatenate([wp.pos - data.site_xpos[self.site],
                                    Rotation.from_matrix(wp.rot @ data.site_xmat[self.site].reshape(3, 3).T).as_rotvec()])
            pinv = jac.T @ np.linalg.inv(jac @ jac.T + 1e-4 * np.eye(6))
            q = data.qpos[:ARM_DOFS]
            step = pinv @ error + (np.eye(ARM_DOFS) - pinv @ jac) @ (0.1 * (wp.posture - q))
            data.qpos[:ARM_DOFS] = np.clip(q + 0.5 * step, self.low, self.high)
        return data.qpos[:ARM_DOFS].copy()

    def position(self) -> np.ndarray:
        return self.data.site_xpos[self.site].copy()

    def rotation_error(self, rot: np.ndarray) -> float:
        """Angle (rad) between the site's orientation and `rot`."""
        return float(np.linalg.norm(Rotation.from_matrix(rot @ self.data.site_xmat[self.site].reshape(3, 3).T).as_rotvec()))

    def action(self, wp: Waypoint, speed: float) -> np.ndarray:
        jacp, jacr = np.zeros((3, self.model.nv)), np.zeros((3, self.model.nv))
        mujoco.mj_jacSite(self.model, self.data, jacp, jacr, self.site)
        jac = np.vstack([jacp[:, :ARM_DOFS], jacr[:, :ARM_DOFS]])
        move = wp.pos - self.position()
        move *= min(1.0, speed / max(float(np.linalg.norm(move)), 1e-9))
        turn = Rotation.from_matrix(wp.rot @ self.data.site_xmat[self.site].reshape(3, 3).T).as_rotvec()
        turn *= min(1.0, TURN_STEP / max(float(np.linalg.norm(turn)), 1e-9))
        twist = np.concatenate([move, turn])
        q = self.reference
        free = np.ones(ARM_DOFS)
        for _ in range(ARM_DOFS):  # joints that would cross a limit are frozen and the rest re-solved
            masked = jac * free
            pinv = masked.T @ np.linalg.inv(masked @ masked.T + self.damping ** 2 * np.eye(6))
            dq = pinv @ twist + free * ((np.eye(ARM_DOFS) - pinv @ masked) @ (0.05 * (wp.posture - q)))
            blocked = ((q + dq < self.low) & (dq < 0)) | ((q + dq > self.high) & (dq > 0))
            if not blocked.any():
                break
            free[blocked] = 0.0
        dq /= max(1.0, float(np.max(np.abs(dq) / JOINT_STEP)))  # slow the whole motion, keeping the path straight
        return self._request(q + dq, wp.grip)


def _site(env: KitchenEnv, name: str) -> np.ndarray:
    return env.data.site(name).xpos.copy()


def _microwave(env: KitchenEnv, rng: np.random.Generator) -> list[Waypoint]:
    """Grasp the vertical handle, swing it round the door hinge by about 0.9 rad (it springs back a little once
    let go), let go, back off upward (clear of the kettle on the way to the next task)."""
    handle = _site(env, "microhandle_site") + np.array([0, 0, rng.uniform(-0.05, 0.05)])
    hinge = env.data.joint("microwave").xanchor.copy()
    back = np.array([0.0, GRASP_DEPTH, 0.0])
    arc = []
    for angle in np.linspace(0, -rng.uniform(0.8, 0.95), 6)[1:]:
        turn = Rotation.from_euler("z", angle).as_matrix()
        arc.append(Waypoint(hinge + turn @ (handle - hinge) - turn @ back, CLOSE, speed=0.04, tol=0.025,
                            rot=Rotation.from_euler("z", ARC_TURN * angle).as_matrix() @ FORWARD))
    last = arc[-1].pos
    return [Waypoint(handle - back - [0, 0.08, 0], OPEN, speed=0.06, tol=0.025),
            Waypoint(handle - back, OPEN, speed=0.025, tol=0.008), Waypoint(handle - back, CLOSE, hold=3), *arc,
            Waypoint(last, OPEN, tol=0.06, hold=2, rot=arc[-1].rot),
            Waypoint(last + [0, -0.08, 0.08], OPEN, tol=0.04, timeout=8)]


def _kettle(env: KitchenEnv, rng: np.random.Generator) -> list[Waypoint]:
    """Grasp the kettle's handle bar from above, lift it, carry it forward toward the top-left burner and set it
    down within the task's 0.3 threshold (kettle y >= 0.46; beyond about y = 0.55 the wrist meets the oven's knobs)."""
    handle = _site(env, "kettle_site")  # the middle of the handle bar, which runs along x
    grasp = handle + np.array([rng.uniform(-0.02, 0.02), 0.0, 0.0]) - GRASP_DEPTH * KETTLE_GRIP[:, 2]
    carry_z = grasp[2] + rng.uniform(0.06, 0.09)
    place = np.array([KETTLE_GOAL_X + (handle[0] - env.data.qpos[23]) + rng.uniform(-0.02, 0.02),
                      rng.uniform(0.5, 0.54) + (grasp[1] - env.data.qpos[24]), grasp[2] + 0.01])
    down = dict(rot=KETTLE_GRIP, posture=KETTLE_POSTURE)
    return [Waypoint(grasp - rng.uniform(0.18, 0.22) * KETTLE_GRIP[:, 2], OPEN, speed=0.06, tol=0.03, **down),
            Waypoint(grasp - 0.05 * KETTLE_GRIP[:, 2], OPEN, speed=0.06, tol=0.015, **down),
            Waypoint(grasp, OPEN, speed=0.03, tol=0.008, **down), Waypoint(grasp, CLOSE, hold=3, **down),
            Waypoint(np.array([*grasp[:2], carry_z]), CLOSE, speed=0.04, tol=0.025, **down),
            Waypoint(np.array([*place[:2], carry_z]), CLOSE, speed=0.05, tol=0.025, **down),
            Waypoint(place, CLOSE, speed=0.03, tol=0.015, timeout=15, **down),
            Waypoint(place, OPEN, tol=0.03, hold=2, **down),
            Waypoint(place + [0, 0, 0.08], OPEN, speed=0.05, tol=0.04, timeout=8, **down)]


def _push_sideways(centre: np.ndarray, side: float, travel: float) -> list[Waypoint]:
    """Put the closed fingers beside a bar (on the `side` of it, +-1 along x), push it by `travel` along -side x,
    and back off downward (a joint-space move from up here to the microwave would sweep into the hinge cabinet)."""
    start = centre + np.array([side * FINGER_SIDE, -0.015, 0.0])
    end = start + np.array([-side * travel, 0, 0])
    return [Waypoint(start + [side * 0.02, -0.08, 0], speed=0.06, tol=0.025), Waypoint(start, speed=0.03, tol=0.012),
            Waypoint(end, speed=0.03, tol=0.03, timeout=15), Waypoint(end + [0, -0.08, -0.12], tol=0.04, timeout=8)]


def _light_switch(env: KitchenEnv, rng: np.random.Generator) -> list[Waypoint]:
    """Push the switch lever's tip to the left."""
    tip = _site(env, "light_site") + np.array([0.006, 0.01, 0.0])  # the lever capsule's centre
    return _push_sideways(tip, +1.0, rng.uniform(0.07, 0.09))


def _slide_cabinet(env: KitchenEnv, rng: np.random.Generator) -> list[Waypoint]:
    """Push the sliding door's vertical handle to the right, low on the bar where the arm reaches easily."""
    handle = _site(env, "slide_site") + np.array([0.0, 0.0, -rng.uniform(0.08, 0.12)])
    return _push_sideways(handle, -1.0, rng.uniform(0.22, 0.28))


PLANS: dict[str, Callable[[KitchenEnv, np.random.Generator], list[Waypoint]]] = {
    "microwave": _microwave, "kettle": _kettle, "light switch": _light_switch, "slide cabinet": _slide_cabinet}


def env_args(image: bool = False, **kw: Any) -> dict[str, Any]:
    """JSON-able recipe of the env the demos come from (robomimic's data.attrs["env_args"]; type 2 = gym env):
    `env_target(**env_kwargs)` rebuilds it."""
    return {"env_name": "FrankaKitchen-v1", "type": 2, "env_target": "drift_policy.envs.kitchen.make_kitchen_env",
            "tasks": list(TASKS),
            "env_kwargs": {"image": image, "render_size": kw.get("render_size", 96), "max_steps": kw.get("max_steps", 280)}}


def collect_episode(seed: int, image: bool = False, tasks: list[str] | None = None, **kw: Any) -> dict[str, Any]:
    """One expert episode: the four tasks (or just `tasks`) in an order drawn from `seed`. Returns obs (key -> [T, ...]),
    actions [T, 9], states [T, 59], rewards [T], success, num_completed, plan (the order tried), order (the tasks
    in the order the env counted them done), phases ({task: done}) and trace ((task, steps, reached, position
    error, rotation error) per joint-space move and waypoint, for diagnosing failures)."""
    env = KitchenEnv(**env_args(image, **kw)["env_kwargs"])
    rng = np.random.default_rng(seed)
    tasks = list(TASKS if tasks is None else tasks)
    if not set(tasks) <= set(PLANS):
        raise ValueError(f"unknown kitchen tasks {sorted(set(tasks) - set(PLANS))}; choose from {sorted(PLANS)}")
    plan = [tasks[i] for i in rng.permutation(len(tasks))]
    plan.sort(key=lambda task: task == "microwave")  # last: the arm's later sweeps would shut an open door again
    speed = rng.uniform(0.8, 1.2)
    controller = DLSController(env)
    obs, info = env.reset(seed=seed)
    record: dict[str, list] = {"obs": [], "actions": [], "states": [], "rewards": []}
    done = False

    def act(action: np.ndarray) -> None:
        nonlocal obs, info, done
        record["obs"].append(obs)
        record["states"].append(env.get_state())
        obs, reward, terminated, truncated, info = env.step(action)
        record["actions"].append(action)
        record["rewards"].append(reward)
        done = terminated or truncated

    trace = []
    for task in plan:
        waypoints = PLANS[task](env, rng)
        start, spent = controller.solve(waypoints[0]), 0  # a joint-space move to the approach is the fastest
        while not done and np.abs(env.data.qpos[:ARM_DOFS] - start).max() > POSTURE_TOL and spent < POSTURE_TIMEOUT:
            act(controller.joint_action(start, waypoints[0].grip))
            spent += 1
        trace.append((task, spent, spent < POSTURE_TIMEOUT, float(np.linalg.norm(controller.position() - waypoints[0].pos)),
                      controller.rotation_error(waypoints[0].rot)))
        for wp in waypoints:
            spent = held = 0
            while not done and held <= wp.hold and spent < wp.timeout:
                act(controller.action(wp, wp.speed * speed))
                spent += 1
                held += (np.linalg.norm(controller.position() - wp.pos) < wp.tol
                         and controller.rotation_error(wp.rot) < ROT_TOL)
            trace.append((task, spent, held > wp.hold, float(np.linalg.norm(controller.position() - wp.pos)),
                          controller.rotation_error(wp.rot)))
    env.close()
    return {"obs": {k: np.stack([o[k] for o in record["obs"]]) for k in obs}, "actions": np.stack(record["actions"]),
            "states": np.stack(record["states"]), "rewards": np.asarray(record["rewards"], dtype=np.float32),
            "success": bool(info["is_success"]), "num_completed": int(info["num_completed"]), "plan": plan,
            "order": list(info["completed"]), "phases": {task: task in info["completed"] for task in plan},
            "trace": trace}
