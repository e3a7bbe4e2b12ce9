"""Scripted BlockPush expert: picks the block order and the target assignment at random (4 modes), then
for each block goes round the blocks to a point behind it and pushes it along the line to its target.
Each episode also draws its own speed, so demonstrations differ in timing as well as in mode. The expert
reads the true block and target poses (the low-dim observation)."""
from __future__ import annotations

from typing import Any

import numpy as np

from drift_policy.envs.block_push import BLOCK_HALF, MAX_MOVE, PUSHER_RADIUS, BlockPushEnv

CONTACT = BLOCK_HALF * 1.2 + PUSHER_RADIUS     # pusher centre to block centre while pushing
CLEARANCE = BLOCK_HALF * 1.42 + PUSHER_RADIUS + 0.012  # how far the pusher keeps from blocks it is not pushing
PLACED = 0.012                                 # a block this close to its target's centre is done


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-9)


def _detour(start: np.ndarray, goal: np.ndarray, obstacles: np.ndarray) -> np.ndarray:
    """The next waypoint from start towards goal: goal itself, or a point beside the first block in the way."""
    seg = goal - start
    length2 = max(float(seg @ seg), 1e-12)
    hits = []
    for centre in obstacles:
        t = float(np.clip((centre - start) @ seg / length2, 0.0, 1.0))
        closest = start + t * seg
        if np.linalg.norm(closest - centre) < CLEARANCE:
            hits.append((t, centre, closest))
    if not hits:
        return goal
    _, centre, closest = min(hits, key=lambda h: h[0])
    away = closest - centre
    if np.linalg.norm(away) < 1e-6:  # the path runs through the centre: pass on the left of it
        away = np.array([-seg[1], seg[0]])
    return centre + _unit(away) * (CLEARANCE + 0.02)


class BlockPushExpert:
    """Closed-loop pushing expert for one episode; `plan` is [(block, target), (block, target)]."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.plan = list(zip(rng.permutation(2).tolist(), rng.permutation(2).tolist()))
        self.speed = MAX_MOVE * rng.uniform(0.6, 1.0)
        self.stage = 0
        self.pushing = False

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """The pusher target (absolute xy, within the episode's speed of the pusher) for this observation."""
        blocks = obs["block_poses"].reshape(2, 3)[:, :2].astype(np.float64)
        targets = obs["target_poses"].reshape(2, 3)[:, :2].astype(np.float64)
        effector = obs["effector_pos"].astype(np.float64)
        while self.stage < len(self.plan):
            block, target = self.plan[self.stage]
            if np.linalg.norm(targets[target] - blocks[block]) > PLACED:
                break
            self.stage, self.pushing = self.stage + 1, False
        if self.stage == len(self.plan):
            return effector.astype(np.float32)
        block, target = self.plan[self.stage]
        here, goal = blocks[block], targets[target]
        direction = _unit(goal - here)
        rel = effector - here
        behind = -float(rel @ direction)
        lateral = float(np.linalg.norm(rel + behind * direction))
        if self.pushing:
            self.pushing = lateral < 0.02 and CONTACT - 0.015 < behind < CONTACT + 0.03
        else:
            self.pushing = lateral < 0.008 and CONTACT - 0.005 < behind < CLEARANCE + 0.015
        if self.pushing:
            step = min(self.speed, float(np.linalg.norm(goal - here)) + 0.005)
            desired = here - direction * CONTACT + direction * step
        else:
            approach = here - direction * (CLEARANCE + 0.005)
            desired = _detour(effector, approach, blocks)
        move = desired - effector
        move *= min(1.0, self.speed / max(float(np.linalg.norm(move)), 1e-9))
        return (effector + move).astype(np.float32)


def env_args(image: bool = False, **kw: Any) -> dict[str, Any]:
    """JSON-able recipe of the env the demos come from (robomimic's data.attrs["env_args"]; type 2 = gym env):
    `env_target(**env_kwargs)` rebuilds it."""
    return {"env_name": "BlockPush", "type": 2, "env_target": "drift_policy.envs.block_push.make_block_push_env",
            "env_kwargs": {"image": image, "render_size": kw.get("render_size", 96), "max_steps": kw.get("max_steps", 350)}}


def collect_episode(seed: int, image: bool = False, **kw: Any) -> dict[str, Any]:
    """One expert episode from the env's layout for `seed`: obs (key -> [T, ...]), actions [T, 2],
    states [T, 36], rewards [T], success, num_completed, plan (the "block->target" pushes it meant to make, in turn)
    and order (the pushes as the env counted them: its info["completed"], the episode's mode)."""
    env = BlockPushEnv(**env_args(image, **kw)["env_kwargs"])
    expert = BlockPushExpert(np.random.default_rng(seed))
    obs, info = env.reset(seed=seed)
    frames: dict[str, list] = {k: [] for k in obs}
    actions, states, rewards = [], [], []
    done = False
    while not done:
        action = expert.act(obs)
        for k, v in obs.items():
            frames[k].append(v)
        states.append(env.get_state())
        obs, reward, terminated, truncated, info = env.step(action)
        actions.append(action)
        rewards.append(reward)
        done = terminated or truncated
    env.close()
    return {"obs": {k: np.stack(v) for k, v in frames.items()}, "actions": np.stack(actions), "states": np.stack(states),
            "rewards": np.asarray(rewards, dtype=np.float32), "success": bool(info["is_success"]),
            "num_completed": int(info["num_completed"]), "plan": [f"block{b}->target{t}" for b, t in expert.plan],
            "order": list(info["completed"])}
