"""Where a position-controlled policy's chunks lead, call by call, in one evaluation episode: to see why it stalls.

Replays episode `--seed` exactly as `eval_policy.py` runs it (the env and the policy's sampling noise seeded by the
episode seed) and, at every policy call, also draws --samples chunks for the same observation from a separate
noise stream. Per call it prints the reward so far, the agent's displacement over the observation history, the spread
of the sampled chunks' end points, and the median distance from the agent of each chunk step (the executed steps are
To-1 .. To+Ta-2). First it prints the same distances for the demos' own windows, binned by the agent's motion over
the history, as the reference a call is read against. For tasks whose actions are target positions in the space of an
observation key (Push-T: agent_pos).

    python bench/chunk_probe.py <run>/policy --seed 100025
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from drift_policy.data.replay_buffer import ReplayBuffer
from drift_policy.envs.multistep import MultiStepWrapper
from drift_policy.policies import Policy
from drift_policy.tasks import load_task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("policy", help="a saved policy directory")
    parser.add_argument("--seed", type=int, required=True, help="the episode seed, as in eval.json")
    parser.add_argument("--samples", type=int, default=32, help="chunks drawn per call to see their spread")
    parser.add_argument("--pos-key", default="agent_pos", help="the observation key whose space the actions are targets in")
    args = parser.parse_args()
    policy = Policy.from_pretrained(args.policy)
    task = policy.config.task
    if args.pos_key not in policy.obs_meta or list(policy.obs_meta[args.pos_key]["shape"]) != [policy.action_dim]:
        parser.error(f"--pos-key {args.pos_key!r}: the policy's actions are not target positions of that observation "
                     f"(its keys: {sorted(policy.obs_meta)}); this probe is for position-controlled tasks such as push_t")
    shown = sorted({0, policy.n_obs_steps - 1, policy.n_obs_steps + policy.n_action_steps - 2, policy.horizon - 1,
                    (policy.horizon - 1) // 2})
    print(f"chunk steps shown: {shown} (executed: {policy.n_obs_steps - 1}..{policy.n_obs_steps + policy.n_action_steps - 2})")
    spec = load_task(task)
    print_demo_reference(spec.make_dataset(), args.pos_key, policy.n_obs_steps, policy.horizon, shown)
    env = MultiStepWrapper(spec.make_env(), task["n_obs_steps"], task["n_action_steps"], task["max_steps"])
    obs, _ = env.reset(seed=args.seed)
    acting, probing = torch.Generator().manual_seed(args.seed), torch.Generator().manual_seed(0)
    reward, done, call = 0.0, False, 0
    while not done:
        agent = obs[args.pos_key][-1]
        batch = {k: np.repeat(v[None], args.samples, 0) for k, v in obs.items()}
        chunks = policy.predict_action(batch, full_chunk=True, generator=probing)  # [samples, T, Da]
        ends = chunks[:, -1]
        spread = np.linalg.norm(ends[:, None] - ends[None], axis=-1).sum() / (args.samples * (args.samples - 1))
        lead = np.median(np.linalg.norm(chunks - agent, axis=-1), axis=0)
        moved = np.linalg.norm(agent - obs[args.pos_key][0])
        print(f"call {call:3d}  agent {np.round(agent).astype(int)}  reward {reward:.2f}  moved {moved:5.1f}  "
              f"end spread {spread:5.1f}  distance from agent per step {np.round(lead[shown]).astype(int)}")
        action = policy.predict_action({k: v[None] for k, v in obs.items()}, generator=[acting])[0]
        obs, r, terminated, truncated, _ = env.step(action)
        reward, done, call = max(reward, float(r)), terminated or truncated, call + 1


def print_demo_reference(demos: ReplayBuffer, pos_key: str, n_obs_steps: int, horizon: int, shown: list[int]) -> None:
    """For every demo window (history of n_obs_steps, then a chunk of horizon actions from the history's first step):
    the median distance of each shown chunk step from the latest position, per bin of motion over the history."""
    pos, actions = demos.data[pos_key], demos.data["action"]
    moved, leads = [], []
    for i in range(demos.n_episodes):
        episode = demos.episode_slice(i)
        for first in range(episode.start, episode.stop - horizon + 1):
            latest = pos[first + n_obs_steps - 1]
            moved.append(np.linalg.norm(latest - pos[first]))
            leads.append(np.linalg.norm(actions[first:first + horizon][shown] - latest, axis=-1))
    moved, leads = np.array(moved), np.array(leads)
    print(f"demos ({len(moved):,} windows): median distance from the agent per shown step, by motion over the history")
    for low, high in [(0, 2), (2, 5), (5, 10), (10, 20), (20, np.inf)]:
        rows = (moved >= low) & (moved < high)
        print(f"  moved {low:>2}-{high:<3} px  {rows.sum():6,d} windows  {np.round(np.median(leads[rows], axis=0)).astype(int)}")


if __name__ == "__main__":
    main()
