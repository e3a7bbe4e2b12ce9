"""Scripted expert for robosuite ToolHang, built on the Lift/Can expert's Follower (see docs/tool_hang_expert.md).

Two sub-tasks. The frame: a top-down grasp across its grip, lift, turn it flat about z and then upright (tip down)
with its hook bar pointing away from the robot (B = world +x), carry the tip over the stand's cavity, push it to
the cavity floor, let go. The tool: a top-down grasp across its grip, lift, turn it flat so its handle lies across
B, carry the large ring (hole1) over the lip at the bar's free end, pitch the tool about its handle (the gripper
turns from pointing down toward pointing back at the robot), lower the ring onto THREAD_PATH, along which it hooks
under the bar's end and past the lip (it cannot pass the lip head-on: its 19.4 mm hole is 0.1 mm smaller than
bar + lip), slide it along the bar, let go, back off; the tool swings down and hangs.

With B = +x both held poses are clear of Panda's joint limits and of its wrist singularity (joint 6 = pi): the
upright frame is held with the gripper pointing -y (a forearm roll, joint 5 ~ -1.2), the pitched tool with it
pointing back toward the robot (joints 2, 4 and 6 bend in the arm's plane, joint 6 away from pi). With B = -x the
tool's pose was at the elbow's and wrist's limits, with B = +y the frame's (docs, section 10).

Targets are read live from the simulator every step (privileged state): the objects drop ~3 cm right after reset,
and a held object is servoed on (one of its points is driven to a goal, with an integral term against the
payload's sag) so slip in the grasp is corrected. Large turns are rate-limited (see Move.turn_rate). Each episode
draws its own approach offsets, heights, speeds, grasp points, holds and turn rates from the episode's rng, as the
Lift/Can experts do. Panda's fingers close along the gripper's x column (yaw_rot(yaw) points it at heading
yaw + 90 deg).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy.spatial.transform import Rotation

from drift_policy.envs.experts.robosuite import (CLOSE, OPEN, Follower, Waypoint, _env, _eef, env_args as _env_args,
                                                 yaw_rot)
from drift_policy.envs.robosuite_tasks import RobosuiteEnv
from drift_policy.tasks import load_task

Z = np.array([0.0, 0.0, 1.0])
B = np.array([1.0, 0.0, 0.0])  # the hook bar's direction (rod -> free end) once the frame stands in the stand
HOLE1 = np.array([-0.09353, 0.0, 0.0])  # the large ring's centre in the tool's frame (the body sits on the grip)
# Threading path of the ring's centre, relative to frame_hang_site (centre of the bar's free-end face):
# (s: mm along the bar toward the rod, h: mm above the bar's centre line, beta: degrees of the ring's axis above B;
# beta = 90 is the tool lying flat). The ring, pitched to 60 deg, comes down over the lip post to the first point;
# its free-side edge then swings under the bar's end (docs/tool_hang_expert.md, sections 5 and 10).
THREAD_PATH = [(3.5, 9.5, 60.0), (4.0, 2.5, 55.0), (7.0, 1.5, 45.0), (10.0, 0.5, 35.0), (14.0, 0.0, 25.0)]
BETA_ENTRY = np.deg2rad(THREAD_PATH[0][2])  # the ring is pitched to this in free space, then lowered onto the path

Target = Callable[[], tuple[np.ndarray, np.ndarray, np.ndarray]]  # -> gripper goal pos, goal rot, error to reach


@dataclass
class Move:
    """A gripper goal recomputed every step; reached when |error| < tol and the orientation is within rot_tol."""

    target: Target
    grip: float = OPEN
    speed: float = 1.0
    tol: float = 0.01
    rot_tol: float = np.inf  # radians
    hold: int = 0
    noise: float = 0.0
    timeout: int = 60
    turn_rate: float = np.inf  # largest orientation error commanded per step (radians): large turns made fast
    #                            swing Panda's wrist through joint 5 into its limits instead of turning joint 7


Stage = Callable[[], list[Move]]  # builds its moves from the simulator when the episode reaches it


def _site(env: RobosuiteEnv, key: str) -> np.ndarray:
    return np.array(env.env.sim.data.site_xpos[env.env.obj_site_id[key]])


def _geom(env: RobosuiteEnv, name: str) -> np.ndarray:
    return np.array(env.env.sim.data.geom_xpos[env.env.sim.model.geom_name2id(name)])


def _body(env: RobosuiteEnv, key: str) -> tuple[np.ndarray, np.ndarray]:
    data, body = env.env.sim.data, env.env.obj_body_id[key]
    return np.array(data.body_xpos[body]), np.array(data.body_xmat[body]).reshape(3, 3)


def _heading(v: np.ndarray) -> float:
    return float(np.arctan2(v[1], v[0]))


def _wrap(angle: float) -> float:
    return float((angle + np.pi) % (2 * np.pi) - np.pi)


def _angle(r0: np.ndarray, r1: np.ndarray) -> float:
    return float(np.linalg.norm(Rotation.from_matrix(r1 @ r0.T).as_rotvec()))


def _toward(r0: np.ndarray, r1: np.ndarray, step: float) -> np.ndarray:
    """The rotation `step` radians from r0 toward r1 along the geodesic (r1 if closer)."""
    rotvec = Rotation.from_matrix(r1 @ r0.T).as_rotvec()
    angle = np.linalg.norm(rotvec)
    return r1 if angle <= step else Rotation.from_rotvec(rotvec * step / angle).as_matrix() @ r0


def _cavity(env: RobosuiteEnv) -> tuple[np.ndarray, float, float]:
    """Centre (x, y) of the stand's mount cavity (between the four wall geoms, not under stand_mount_site), the
    height of its rim and of its floor."""
    suite, model = env.env, env.env.sim.model
    walls = [suite.obj_geom_id[f"stand_wall_{i}"] for i in range(4)]
    centre = np.mean([suite.sim.data.geom_xpos[g] for g in walls], axis=0)
    base = suite.obj_geom_id["stand_base"]
    floor = float(suite.sim.data.geom_xpos[base][2] + model.geom_size[base][2])
    return centre[:2], float(centre[2] + model.geom_size[walls[0]][2]), floor


def _frame_upright() -> np.ndarray:
    """HookFrame orientation standing on its tip with its bar (local -x) along B: columns local x, y, z."""
    return np.column_stack([-B, -np.cross(Z, B), Z])


def _tool_pitched(beta: float, handle: np.ndarray) -> np.ndarray:
    """Tool orientation with its handle (local x, ring -> grip) along `handle` (horizontal, across B) and the ring's
    axis (local z) raised `beta` above B: beta = 90 deg is the tool lying flat. Turning beta turns the tool about
    the handle's line, which holds both the grip and the ring, so the ring stays put while the gripper pitches."""
    axis = np.cos(beta) * B + np.sin(beta) * Z
    return np.column_stack([handle, np.cross(axis, handle), axis])


def _free(env: RobosuiteEnv, pos: Callable[[], np.ndarray], rot: Callable[[], np.ndarray], **kw) -> Move:
    """Gripper to pos() with orientation rot()."""

    def target() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        goal = pos()
        return goal, rot(), goal - _eef(env)[0]

    return Move(target, **kw)


class Held:
    """An object in the hand. Its moves bring one of its points to a goal and the object to a goal orientation,
    taking the grasp as rigid over one step; an integral term, shared by all of the object's moves (the sag under
    its weight persists between them), cancels the delta OSC's steady error near the goal. With `fixed_grasp`, the
    gripper's orientation comes from the grasp as it was at the object's first move instead of from the object's
    orientation now: an object that pivots between the pads (about the closing axis, where the pads give no
    torsional friction) then stays pivoted, where a servo on its orientation would keep turning the wrist."""

    def __init__(self, env: RobosuiteEnv, rot: Callable[[], np.ndarray], ki: float, limit: float = 0.02,
                 window: float = 0.005, fixed_grasp: bool = False) -> None:
        self.env, self.rot, self.ki, self.limit, self.window = env, rot, ki, limit, window
        self.bias = np.zeros(3)
        self.grasp: np.ndarray | None = None  # the object's orientation in the gripper's frame, when fixed
        self.fixed_grasp = fixed_grasp

    def move(self, point: Callable[[], np.ndarray], goal: Callable[[], np.ndarray],
             goal_rot: Callable[[], np.ndarray], integrate: bool = True, **kw) -> Move:
        def target() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            eef_pos, eef_rot = _eef(self.env)
            if self.grasp is None and self.fixed_grasp:
                self.grasp = eef_rot.T @ self.rot()
            error = goal() - point()
            if integrate and np.linalg.norm(error) < self.window:  # near the goal only: no wind-up on the way
                self.bias = np.clip(self.bias + self.ki * error, -self.limit, self.limit)
            grasp = self.grasp if self.grasp is not None else eef_rot.T @ self.rot()
            return eef_pos + error + self.bias, goal_rot() @ grasp.T, error

        return Move(target, **kw)


def _latched(env: RobosuiteEnv, offset: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]],
             **kw) -> Move:
    """A goal fixed relative to the gripper's pose when the move starts: offset(pos, rot) -> (pos, rot)."""
    goal: list[tuple[np.ndarray, np.ndarray]] = []

    def target() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos, rot = _eef(env)
        if not goal:
            goal.append(offset(pos, rot))
        return goal[0][0], goal[0][1], goal[0][0] - pos

    return Move(target, **kw)


# Top-down gripper yaws (as in yaw_rot) that Panda's joint 7 reaches: near robosuite's home pose it turns the hand by
# about -1 rad per rad of yaw from q7 = 0.81 and stops at +-2.90 (measured; the other joints take part too).
YAW_RANGE = (np.deg2rad(-125.0), np.deg2rad(165.0))


def _grasp_yaw(closing: np.ndarray, turn: float, now: float) -> float:
    """Yaw (as in yaw_rot) of a top-down grasp closing along `closing` (either finger order) that stays within
    YAW_RANGE at the grasp and after the object is turned by `turn` about z; of two, the one nearer the gripper's
    yaw `now`. The fingers close along the gripper's x column, which yaw_rot(yaw) points at heading yaw + 90 deg."""
    options = []
    for yaw in (_heading(closing) - np.pi / 2, _heading(closing) + np.pi / 2):
        yaw = _wrap(yaw)
        for start in (yaw, yaw + 2 * np.pi, yaw - 2 * np.pi):
            if all(YAW_RANGE[0] <= a <= YAW_RANGE[1] for a in (start, start + turn)):
                options.append(start)
    if not options:
        raise RuntimeError(f"no grasp yaw keeps the wrist in range for a {np.degrees(turn):.0f} deg turn")
    return min(options, key=lambda a: abs(a - now))


def _yaw_now(env: RobosuiteEnv) -> float:
    """The gripper's yaw as in yaw_rot (meaningful when it points roughly down)."""
    return _heading(_eef(env)[1][:, 0]) - np.pi / 2


def _frame_plan(env: RobosuiteEnv, rng: np.random.Generator) -> list[Move | Stage]:
    """Grasp the frame's grip from above, lift, turn it upright (bar along B), insert the tip into the cavity."""
    frame_rot = lambda: _body(env, "frame")[1]
    grip = lambda: _geom(env, "frame_grip_frame")
    tip = lambda: _site(env, "frame_tip_site")
    cavity, rim, floor = _cavity(env)  # the stand is fixed (no placement tolerance) and weighs 8.8 kg

    # Fingers close across the grip (frame local x); the frame then turns flat about z until local x is along -B.
    x0 = frame_rot()[:, 0]
    turn = _wrap(_heading(-B) - _heading(x0))
    yaw = _grasp_yaw(x0, turn, _wrap(_yaw_now(env)))
    offset = yaw - _heading(x0)  # kept if the frame turns a little while it settles
    grasp_rot = lambda: yaw_rot(_heading(frame_rot()[:, 0]) + offset)
    along, dz = rng.uniform(-0.008, 0.006), rng.uniform(0.002, 0.005)  # along the rod (+: toward the bar), up
    grasp = lambda: grip() + along * frame_rot()[:, 2] + dz * Z
    plan: list[Move | Stage] = _grasp_from_above(env, rng, grasp, grasp_rot, timeout=150)

    def turn_and_insert() -> list[Move]:
        held = Held(env, frame_rot, ki=rng.uniform(0.05, 0.15))
        lifted = frame_rot()
        flat = Rotation.from_euler("z", turn).as_matrix() @ lifted
        upright = _frame_upright()
        xy = grip()[:2] + rng.normal(0.0, 0.01, 2)
        clear = np.array([*xy, rng.uniform(0.87, 0.90)])  # the flat frame's underside clears the tool (top ~0.83)
        # turn flat while rising high enough for the tip (18.7 cm below the grip once upright) to clear the stand
        high = np.array([*xy, rng.uniform(1.15, 1.19)])
        # then pitch upright on the way to the cavity; the grip is right above the tip once the frame stands
        over = np.array([*cavity + rng.normal(0.0, 0.005, 2), rim + rng.uniform(0.02, 0.04) + 0.18695])
        entry = np.array([*cavity, rim + rng.uniform(0.006, 0.010)])
        seated = lambda: np.array([*tip()[:2], floor - 0.002])  # down only (the walls guide it), pushing on the floor
        rate = rng.uniform(0.10, 0.15)
        return [
            held.move(grip, lambda: clear, lambda: lifted, integrate=False, grip=CLOSE, speed=rng.uniform(0.4, 0.7),
                      tol=0.015),
            held.move(grip, lambda: high, lambda: flat, integrate=False, grip=CLOSE, speed=rng.uniform(0.5, 0.9),
                      tol=0.02, rot_tol=0.1, turn_rate=rate, timeout=100),
            held.move(grip, lambda: over, lambda: upright, integrate=False, grip=CLOSE, speed=rng.uniform(0.4, 0.7),
                      tol=0.01, rot_tol=0.08, turn_rate=rate, noise=rng.uniform(0.0, 0.1), timeout=100),
            held.move(tip, lambda: entry, lambda: upright, grip=CLOSE, speed=rng.uniform(0.15, 0.3), tol=0.002,
                      hold=int(rng.integers(2, 4))),
            held.move(tip, seated, lambda: upright, grip=CLOSE, speed=rng.uniform(0.3, 0.5), tol=0.004,
                      hold=int(rng.integers(2, 4)), timeout=80),
        ]

    back, rise = rng.uniform(0.07, 0.10), rng.uniform(0.08, 0.12)
    plan += [
        turn_and_insert,
        _latched(env, lambda p, r: (p, r), grip=OPEN, tol=0.03, hold=int(rng.integers(4, 8))),
        # back off along the gripper's approach (its z column) and rise clear of the frame's top (~1.05 m) before
        # turning back to pointing down: the fingers swing ~10 cm while the wrist turns
        _latched(env, lambda p, r: (p - back * r[:, 2], r), speed=rng.uniform(0.4, 0.8), tol=0.02),
        _latched(env, lambda p, r: (p + rise * Z, r), speed=rng.uniform(0.5, 0.9), tol=0.02),
    ]
    return plan


def _tool_plan(env: RobosuiteEnv, rng: np.random.Generator) -> list[Move | Stage]:
    """Grasp the tool's grip from above, lift, hook its ring over the bar's free end, slide it on, let go."""
    tool_rot = lambda: _body(env, "tool")[1]
    grip = lambda: _body(env, "tool")[0]  # the tool's body sits at the centre of its grip box
    ring = lambda: _body(env, "tool")[0] + tool_rot() @ HOLE1
    hang = lambda: _site(env, "frame_hang_site")

    def bar() -> np.ndarray:
        """The bar's direction (rod -> free end) as the frame stands: B, give or take its yaw in the cavity (up to
        ~25 deg; goals along a fixed B then push the ring sideways against the bar)."""
        along = hang() - _site(env, "frame_intersection_site")
        return along / np.linalg.norm(along)

    # Fingers close across the grip (tool local y); the still-flat tool then turns about z until its handle
    # (local x, ring -> grip) lies across B, on whichever side needs the smaller turn (the ring is symmetric).
    y0, x0 = tool_rot()[:, 1], tool_rot()[:, 0]
    handle = np.cross(Z, B) if np.dot(np.cross(Z, B), x0) >= 0 else -np.cross(Z, B)
    turn = _wrap(_heading(handle) - _heading(x0))
    yaw = _grasp_yaw(y0, turn, _wrap(_yaw_now(env)))
    offset = yaw - _heading(y0)
    grasp_rot = lambda: yaw_rot(_heading(tool_rot()[:, 1]) + offset)
    along, dz = rng.uniform(-0.012, 0.012), rng.uniform(0.0, 0.004)  # along the 8 cm grip, up
    grasp = lambda: grip() + along * tool_rot()[:, 0] + dz * Z
    # the frame's back-off leaves the gripper beside the frame's top (~1.05 m), on its far side from the tool:
    # climb before crossing over it (a straight path to the tool knocks the frame out of the stand)
    climb = rng.uniform(1.20, 1.24)
    plan: list[Move | Stage] = [
        _latched(env, lambda p, r: (np.array([*p[:2], max(p[2], climb)]), r), speed=rng.uniform(0.5, 0.9), tol=0.02),
        *_grasp_from_above(env, rng, grasp, grasp_rot, timeout=120),
    ]

    def hook() -> list[Move]:
        held = Held(env, tool_rot, ki=rng.uniform(0.1, 0.2), fixed_grasp=True)
        lifted = tool_rot()
        flat = _tool_pitched(np.pi / 2, handle)
        on_bar = lambda s, h: (lambda: hang() - s * bar() + h * Z)
        lift = np.array([*grip()[:2], rng.uniform(1.10, 1.14)])  # the flat tool then passes over the frame (top 1.05)
        speed, high = rng.uniform(0.08, 0.15), rng.uniform(0.05, 0.07)
        moves = [
            held.move(grip, lambda: lift, lambda: lifted, integrate=False, grip=CLOSE, speed=rng.uniform(0.5, 0.9),
                      tol=0.02),
            held.move(grip, lambda: lift, lambda: flat, integrate=False, grip=CLOSE, speed=0.5, tol=0.02,
                      rot_tol=0.1, timeout=40),
            held.move(ring, on_bar(0.0035 + rng.normal(0.0, 0.003), high), lambda: flat, grip=CLOSE,
                      speed=rng.uniform(0.5, 0.8), tol=0.01, rot_tol=0.1, noise=rng.uniform(0.0, 0.1)),
            # pitch high above the lip: the ring may swing a few mm while the wrist turns
            held.move(ring, on_bar(0.0035, high), lambda: _tool_pitched(BETA_ENTRY, handle), grip=CLOSE, speed=0.5,
                      tol=0.005, rot_tol=0.08, turn_rate=rng.uniform(0.06, 0.10), timeout=100),
        ]
        for s, h, beta in THREAD_PATH:
            pitched = lambda b=np.deg2rad(beta): _tool_pitched(b, handle)
            moves.append(held.move(ring, on_bar(s / 1000, h / 1000), pitched, grip=CLOSE, speed=speed, tol=0.0015,
                                   rot_tol=0.05, hold=int(rng.integers(1, 4)), turn_rate=0.08, timeout=40))
        # slide on along the bar; any depth past ~15 mm holds, and friction stalls the ring up to ~7 mm short (the
        # integral term acts only within 5 mm), so a loose tolerance saves the steps a timeout would cost
        s_final, beta_final = rng.uniform(0.025, 0.045), np.deg2rad(rng.uniform(15.0, 25.0))
        moves.append(held.move(ring, on_bar(s_final, 0.0), lambda: _tool_pitched(beta_final, handle), grip=CLOSE,
                               speed=rng.uniform(0.1, 0.25), tol=0.01, hold=int(rng.integers(2, 5))))
        return moves

    back, rise = rng.uniform(0.06, 0.10), rng.uniform(0.05, 0.10)
    plan += [
        hook,
        _latched(env, lambda p, r: (p, r), grip=OPEN, tol=0.03, hold=int(rng.integers(4, 8))),
        # slide the fingers off the grip along the approach; the tool then swings down on the bar
        _latched(env, lambda p, r: (p - back * r[:, 2] + 0.01 * Z, r), speed=rng.uniform(0.3, 0.6), tol=0.02),
        _latched(env, lambda p, r: (p + rise * Z, r), speed=rng.uniform(0.4, 0.8), tol=0.02, hold=20),
    ]
    return plan


def tool_hang_plan(env: RobosuiteEnv, rng: np.random.Generator) -> list[Move | Stage]:
    """The frame's moves, then the tool's (built once the frame stands, since they read its pose)."""
    return [*_frame_plan(env, rng), lambda: _tool_plan(env, rng)]


def env_args(image: bool = False, task: str = "tool_hang", **kw) -> dict:
    """robomimic env_args of the env the expert acts in (delta OSC_POSE actions)."""
    return _env_args(image=image, task=task)


class Expert:
    """Turns a plan into actions with a Follower: a move is done once reached (or timed out) and held; a Stage is
    expanded into its moves when the plan reaches it."""

    def __init__(self, plan: list[Move | Stage], rng: np.random.Generator) -> None:
        self.plan, self.follower = list(plan), Follower(rng)
        self.index, self.held, self.spent = 0, 0, 0

    def act(self, env: RobosuiteEnv) -> np.ndarray | None:
        """The next action, or None when the plan is over."""
        while True:
            while not isinstance(self.plan[self.index], Move):
                self.plan[self.index:self.index + 1] = self.plan[self.index]()
            move = self.plan[self.index]
            pos, rot = _eef(env)
            goal, goal_rot, error = move.target()
            if self.spent > 0:
                reached = np.linalg.norm(error) < move.tol and _angle(rot, goal_rot) < move.rot_tol
                self.held += int(reached or self.spent >= move.timeout)
                if self.held > move.hold:
                    if self.index == len(self.plan) - 1:
                        return None
                    self.index, self.held, self.spent = self.index + 1, 0, 0
                    continue
            self.spent += 1
            command = Waypoint(goal, _toward(rot, goal_rot, move.turn_rate), move.grip, move.speed, noise=move.noise)
            return self.follower.action(pos, rot, command)


def collect_episode(seed: int, image: bool = False, task: str = "tool_hang", **kw) -> dict:
    """One scripted episode from scene `seed`: obs {key: [T, ...]}, actions [T, 7] (delta), states [T, S], success,
    and phases (whether the frame was assembled at some step); it stops at the first successful step."""
    env = _env(task, image)
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    expert = Expert(tool_hang_plan(env, rng), rng)
    record: dict[str, list] = {"obs": [], "actions": [], "states": []}
    success = assembled = False
    for _ in range(load_task(task).max_steps):
        action = expert.act(env)
        if action is None:
            break
        record["obs"].append(obs)
        record["states"].append(env.get_state())
        record["actions"].append(action)
        obs, _, success, _, _ = env.step(action)
        assembled = assembled or bool(env.env._check_frame_assembled())
        if success:
            break
    return {
        "obs": {k: np.stack([o[k] for o in record["obs"]]) for k in env.obs_keys},
        "actions": np.stack(record["actions"]),
        "states": np.stack(record["states"]),
        "success": bool(success),
        "phases": {"frame_assembled": assembled, "tool_hung": bool(success)},
    }


def _grasp_from_above(env: RobosuiteEnv, rng: np.random.Generator, grasp: Callable[[], np.ndarray],
                      grasp_rot: Callable[[], np.ndarray], timeout: int) -> list[Move]:
    """Hover a random 6-12 cm above the grasp point at the grasp heading, descend onto it and close the fingers."""
    above = rng.uniform(0.06, 0.12) * Z
    return [
        _free(env, lambda: grasp() + above, grasp_rot, speed=rng.uniform(0.6, 1.0), tol=0.012, rot_tol=0.1,
              noise=rng.uniform(0.0, 0.2), turn_rate=rng.uniform(0.12, 0.18), timeout=timeout),
        _free(env, grasp, grasp_rot, speed=rng.uniform(0.3, 0.6), tol=0.005, hold=int(rng.integers(0, 3))),
        _latched(env, lambda p, r: (p, r), grip=CLOSE, tol=0.02, hold=int(rng.integers(6, 12))),
    ]
