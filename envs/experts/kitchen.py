"""Scripted Kitchen expert: the four tasks in a random order, each a short list of end-effector waypoints
built from the simulator's object poses (privileged information), tracked by damped-least-squares inverse
kinematics (mujoco jacobians) that outputs FrankaKitchen's joint-velocity actions. The microwave door is
grasped by its handle and swung round its hinge; the kettle is pushed along the stove top toward the top-left
burner (see Status); the light switch and the slide cabinet are pushed sideways with the closed gripper.
Each episode also draws its own speeds and small waypoint offsets, so demonstrations vary beyond the order.

Status: microwave, light switch and slide cabinet work; the kettle does not yet. Pushed at its front face from
HOME, the arm folds against its base and stalls after about 8 cm (the task needs about 12 cm; pushing higher
catches the handle posts). Fixing it needs per-waypoint orientations (a top-down grasp of the handle, then
lift and carry), which DLSController does not have yet. The three working tasks also take 210-280 steps of
the 280 allowed, so all four need faster transits as well."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import mujoco
import numpy as np

from envs.kitchen import TASKS, KitchenEnv

OPEN, CLOSE = 1.0, -1.0
# Gripper pointing forward (+y), fingers opening along world x: FrankaKitchen's start pose, kept throughout.
FORWARD = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
GRASP_DEPTH = 0.03   # a handle sits this far ahead of the end-effector site when held between the fingertips
FINGER_REACH = 0.05  # the closed fingertips end this far ahead of the site
FINGER_SIDE = 0.045  # site to a pushed bar's centre when pushing with the side of the closed fingers
ARM_DOFS = 7
# FrankaKitchen starts with the shoulder pitched back against its limit, a posture from which the forward
# targets are out of reach; this one (found offline by collision-checked IK over random starts) reaches the waypoints below.
# The expert first moves there in joint space and then keeps it as the null-space preference.
HOME = np.array([0.7, 0.29, 0.33, -2.52, -2.12, 0.1, 2.8])
HOME_TOL = 0.1  # rad: close enough to HOME to start the tasks
RAD_PER_ACTION = 2.0 * 0.08  # an action of 1 moves a joint 2 rad/s for one 0.08 s step


@dataclass
class Waypoint:
    """Where the end-effector site goes, the gripper command, the speed (m/step) and when it counts as reached."""

    pos: np.ndarray
    grip: float = CLOSE
    speed: float = 0.04
    tol: float = 0.015
    hold: int = 0       # extra steps spent at the waypoint once reached (e.g. to close the gripper)
    timeout: int = 40


class DLSController:
    """Joint-velocity actions that move the end-effector site toward a position at a capped speed while
    holding the FORWARD orientation, with a null-space pull toward HOME. FrankaKitchen turns an action into
    a position target (last joint reading + 2 rad/s * action * dt), so the controller keeps its own joint
    reference, integrates the IK step into it (which removes the arm's sag under gravity) and asks for it."""

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
        """Toward a joint configuration at the actions' speed limit."""
        q = self.data.qpos[:ARM_DOFS]
        return self._request(q + np.clip(target - q, -RAD_PER_ACTION, RAD_PER_ACTION), grip)

    def position(self) -> np.ndarray:
        return self.data.site_xpos[self.site].copy()

    def action(self, target: np.ndarray, speed: float, grip: float) -> np.ndarray:
        jacp, jacr = np.zeros((3, self.model.nv)), np.zeros((3, self.model.nv))
        mujoco.mj_jacSite(self.model, self.data, jacp, jacr, self.site)
        jac = np.vstack([jacp[:, :ARM_DOFS], jacr[:, :ARM_DOFS]])
        move = target - self.position()
        move *= min(1.0, speed / max(float(np.linalg.norm(move)), 1e-9))
        rot = self.data.site_xmat[self.site].reshape(3, 3)
        turn = 0.5 * sum(np.cross(rot[:, i], FORWARD[:, i]) for i in range(3))
        twist = np.concatenate([move, 0.5 * turn])
        q = self.reference
        free = np.ones(ARM_DOFS)
        for _ in range(ARM_DOFS):  # joints that would cross a limit are frozen and the rest re-solved
            masked = jac * free
            pinv = masked.T @ np.linalg.inv(masked @ masked.T + self.damping ** 2 * np.eye(6))
            dq = pinv @ twist + free * ((np.eye(ARM_DOFS) - pinv @ masked) @ (0.05 * (HOME - q)))
            blocked = ((q + dq < self.low) & (dq < 0)) | ((q + dq > self.high) & (dq > 0))
            if not blocked.any():
                break
            free[blocked] = 0.0
        return self._request(q + dq, grip)


def _site(env: KitchenEnv, name: str) -> np.ndarray:
    return env.data.site(name).xpos.copy()


def _microwave(env: KitchenEnv, rng: np.random.Generator) -> list[Waypoint]:
    """Grasp the vertical handle, swing it round the door hinge by about 0.7 rad, let go, back off."""
    handle = _site(env, "microhandle_site") + np.array([0, 0, rng.uniform(-0.05, 0.05)])
    hinge = env.data.joint("microwave").xanchor.copy()
    back = np.array([0.0, GRASP_DEPTH, 0.0])
    arc = []
    for angle in np.linspace(0, -rng.uniform(0.65, 0.8), 8)[1:]:
        c, s = np.cos(angle), np.sin(angle)
        offset = handle - hinge
        arc.append(Waypoint(hinge + np.array([c * offset[0] - s * offset[1], s * offset[0] + c * offset[1], offset[2]]) - back,
                            CLOSE, speed=0.03, tol=0.02))
    last = arc[-1].pos
    return [Waypoint(handle - back - [0, 0.12, 0], OPEN), Waypoint(handle - back, OPEN, speed=0.015, tol=0.008),
            Waypoint(handle - back, CLOSE, hold=4), *arc, Waypoint(last, OPEN, hold=3),
            Waypoint(last - [0, 0.1, 0], OPEN, tol=0.04, timeout=12)]


def _kettle(env: KitchenEnv, rng: np.random.Generator) -> list[Waypoint]:
    """Slide the kettle forward from the bottom-left burner toward the top-left one, pushing its front face,
    until it is within the task's 0.3 threshold (about 0.2 m of travel; further is out of the arm's reach)."""
    kettle = env.data.qpos[23:26].copy()
    front = np.array([kettle[0] + rng.uniform(-0.02, 0.02), kettle[1] - 0.122 - FINGER_REACH, kettle[2] + 0.1])
    goal_y = kettle[1] + rng.uniform(0.19, 0.23) - 0.122 - FINGER_REACH
    return [Waypoint(front + [0, -0.12, 0.12], timeout=25), Waypoint(front - [0, 0.01, 0], speed=0.02, tol=0.01, timeout=20),
            Waypoint(np.array([-0.23, goal_y, front[2]]), speed=0.015, tol=0.01, timeout=25),
            Waypoint(np.array([-0.23, goal_y - 0.12, front[2] + 0.15]), tol=0.04, timeout=12)]


def _push_sideways(centre: np.ndarray, side: float, travel: float) -> list[Waypoint]:
    """Put the closed fingers beside a bar (on the `side` of it, +-1 along x) and push it by `travel` along -side x."""
    start = centre + np.array([side * FINGER_SIDE, -0.015, 0.0])
    end = start + np.array([-side * travel, 0, 0])
    return [Waypoint(start + [side * 0.02, -0.12, 0]), Waypoint(start, speed=0.02, tol=0.01),
            Waypoint(end, speed=0.02, tol=0.012, timeout=20), Waypoint(end + [0, -0.12, 0], tol=0.04, timeout=12)]


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
    return {"env_name": "FrankaKitchen-v1", "type": 2, "env_target": "envs.kitchen.make_kitchen_env",
            "tasks": list(TASKS),
            "env_kwargs": {"image": image, "render_size": kw.get("render_size", 96), "max_steps": kw.get("max_steps", 280)}}


def collect_episode(seed: int, image: bool = False, tasks: list[str] | None = None, **kw: Any) -> dict[str, Any]:
    """One expert episode: the four tasks (or just `tasks`) in an order drawn from `seed`. Returns obs (key -> [T, ...]),
    actions [T, 9], states [T, 59], rewards [T], success, num_completed, plan (the order tried) and order
    (the tasks in the order the env counted them done)."""
    env = KitchenEnv(**env_args(image, **kw)["env_kwargs"])
    rng = np.random.default_rng(seed)
    tasks = list(TASKS if tasks is None else tasks)
    if not set(tasks) <= set(PLANS):
        raise ValueError(f"unknown kitchen tasks {sorted(set(tasks) - set(PLANS))}; choose from {sorted(PLANS)}")
    plan = [tasks[i] for i in rng.permutation(len(tasks))]
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

    while not done and np.abs(env.data.qpos[:ARM_DOFS] - HOME).max() > HOME_TOL:
        act(controller.joint_action(HOME, CLOSE))
    for task in plan:
        for wp in PLANS[task](env, rng):
            spent = held = 0
            while not done and held <= wp.hold and spent < wp.timeout:
                act(controller.action(wp.pos, wp.speed * speed, wp.grip))
                spent += 1
                held += np.linalg.norm(controller.position() - wp.pos) < wp.tol
    env.close()
    return {"obs": {k: np.stack([o[k] for o in record["obs"]]) for k in obs}, "actions": np.stack(record["actions"]),
            "states": np.stack(record["states"]), "rewards": np.asarray(record["rewards"], dtype=np.float32),
            "success": bool(info["is_success"]), "num_completed": int(info["num_completed"]), "plan": plan,
            "order": list(info["completed"])}
