"""Where a position-controlled policy's chunks lead, call by call, in one evaluation episode: to see why it stalls.

Replays episode `--seed` exactly as `eval_policy.py` runs it (the env and the policy's sampling noise seeded by the
episode seed) and, at every policy call, also draws --samples chunks for the same observation from a separate
noise stream. Per call it prints the reward so far, the agent's displacement over the observation history, the spread
of the sampled chunks' end points, and the median distance from the agent of each chunk step (the executed steps are
To-1 .. To+Ta-2). First it prints the same distances for the demos' own windows, binned by the agent's motion over
the history, as the reference a call is read against. With --neighbours K it also prints, per call, the K demo windows
nearest to the observation (every key over the history in units of its demo std, each key weighing the same): their distance, how far their
executed chunk ends lead from the latest position, and how well those leads agree in direction (resultant length:
1 all one way, 0 cancelling) with the length of their mean. A chunk that stays near the agent where the neighbours lead
far but cancel is the mean of several modes. For tasks whose actions are target positions in the space of an
observation key (Push-T: agent_pos).

    python bench/chunk_probe.py <run>/policy --seed 100025 [--neighbours 16]
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
    parser.add_argument("--neighbours", type=int, default=0, help="per call, the K nearest demo windows' executed leads")
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
    demos = spec.make_dataset()
    print_demo_reference(demos, args.pos_key, policy.n_obs_steps, policy.horizon, shown)
    if args.neighbours:
        executed_end = policy.n_obs_steps + policy.n_action_steps - 2
        windows = DemoWindows(demos, sorted(policy.obs_meta), args.pos_key, policy.n_obs_steps, policy.horizon, executed_end)
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
        if args.neighbours:
            print("          " + windows.describe(obs, args.neighbours))
        action = policy.predict_action({k: v[None] for k, v in obs.items()}, generator=[acting])[0]
        obs, r, terminated, truncated, _ = env.step(action)
        reward, done, call = max(reward, float(r)), terminated or truncated, call + 1


class DemoWindows:
    """Every demo window's observation history (standardised per key, each key scaled to weigh the same in a distance
    whatever its size: 2 agent coordinates count as much as 18 keypoint ones) and its executed chunk end's lead from the
    latest position, for nearest-neighbour lookups of a policy call's observation."""

    def __init__(self, demos: ReplayBuffer, keys: list[str], pos_key: str, n_obs_steps: int, horizon: int,
                 executed_end: int) -> None:
        self.keys, self.n_obs_steps = keys, n_obs_steps
        flat = {k: demos.data[k].reshape(len(demos.data[k]), -1).astype(np.float64) for k in keys}
        self.mean = {k: v.mean(0) for k, v in flat.items()}
        # per feature: its std times sqrt(the key's features), so each key adds its mean squared z-score to a distance
        self.std = {k: (v.std(0) + 1e-6) * np.sqrt(v.shape[1] * n_obs_steps) for k, v in flat.items()}
        first = window_starts(demos, horizon)
        history = first[:, None] + np.arange(n_obs_steps)  # [windows, To]
        self.features = np.concatenate([((flat[k][history] - self.mean[k]) / self.std[k]).reshape(len(first), -1)
                                        for k in keys], axis=1)  # key-major
        self.leads = demos.data["action"][first + executed_end] - demos.data[pos_key][first + n_obs_steps - 1]

    def describe(self, obs: dict[str, np.ndarray], k: int) -> str:
        """One line on the k windows nearest to `obs` ({key: [To, ...]}): distance (RMS z-score over keys), lead lengths, agreement."""
        query = np.concatenate([((obs[key].reshape(self.n_obs_steps, -1) - self.mean[key]) / self.std[key]).ravel()
                                for key in self.keys])
        distance = np.sqrt(((self.features - query) ** 2).sum(axis=1) / len(self.keys))
        nearest = np.argsort(distance)[:k]
        leads = self.leads[nearest]
        lengths = np.linalg.norm(leads, axis=-1)
        offsets, per_key = self.features[nearest[0]] - query, []
        for key in self.keys:  # the nearest window's distance per key, in the same units
            width = self.mean[key].size * self.n_obs_steps
            per_key.append(f"{key} {np.sqrt((offsets[:width] ** 2).sum()):.2f}")
            offsets = offsets[width:]
        resultant = np.linalg.norm((leads / np.maximum(lengths[:, None], 1e-9)).mean(0))
        return (f"{k} nearest demo windows: RMS distance {distance[nearest].min():.2f}-{distance[nearest].max():.2f} std "
                f"(nearest: {', '.join(per_key)}), "
                f"executed lead {np.median(lengths):.0f} px (median), directions agree {resultant:.2f}, "
                f"their mean lead {np.linalg.norm(leads.mean(0)):.0f} px")


def window_starts(demos: ReplayBuffer, horizon: int) -> np.ndarray:
    """The first step of every demo window of `horizon` steps that stays inside its episode."""
    return np.concatenate([np.arange(demos.episode_slice(i).start, demos.episode_slice(i).stop - horizon + 1)
                           for i in range(demos.n_episodes)])


def print_demo_reference(demos: ReplayBuffer, pos_key: str, n_obs_steps: int, horizon: int, shown: list[int]) -> None:
    """For every demo window (history of n_obs_steps, then a chunk of horizon actions from the history's first step):
    the median distance of each shown chunk step from the latest position, per bin of motion over the history."""
    pos, actions = demos.data[pos_key], demos.data["action"]
    first = window_starts(demos, horizon)
    latest = pos[first + n_obs_steps - 1]
    moved = np.linalg.norm(latest - pos[first], axis=-1)
    leads = np.linalg.norm(actions[first[:, None] + np.asarray(shown)] - latest[:, None], axis=-1)  # [windows, shown]
    print(f"demos ({len(moved):,} windows): median distance from the agent per shown step, by motion over the history")
    for low, high in [(0, 2), (2, 5), (5, 10), (10, 20), (20, np.inf)]:
        rows = (moved >= low) & (moved < high)
        print(f"  moved {low:>2}-{high:<3} px  {rows.sum():6,d} windows  {np.round(np.median(leads[rows], axis=0)).astype(int)}")


if __name__ == "__main__":
    main()
