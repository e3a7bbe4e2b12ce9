"""Evaluate a saved policy with Diffusion Policy's protocol: `python eval_policy.py --rollouts 50`.

Writes eval.json (mean_score, success_rate, per-episode records, predict_action latency) and a few
videos beside the policy, and prints a summary table.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from drift_policy.policies import Policy
from drift_policy.training.trainer import make_runner

RUNS = Path("outputs/runs")


def latest_policy(runs: Path = RUNS) -> Path:
    """The most recently saved policy under outputs/runs/*/policy."""
    saved = sorted(runs.glob("*/policy/model.safetensors"), key=lambda p: p.stat().st_mtime)
    if not saved:
        raise FileNotFoundError(f"no saved policy under {runs}/*/policy: train one with `python train_policy.py task=push_t`, "
                                "or pass --checkpoint <run>/policy")
    return saved[-1].parent


def batch1_latency_ms(policy: Policy, obs: dict[str, np.ndarray], calls: int = 50) -> dict[str, float]:
    """predict_action wall time for one observation history, after a few warm-up calls."""
    for _ in range(5):
        policy.predict_action(obs)
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        policy.predict_action(obs)
        times.append(1e3 * (time.perf_counter() - start))
    return {"p50": float(np.percentile(times, 50)), "p95": float(np.percentile(times, 95))}


def evaluate(policy_dir: Path, rollouts: int, seed_start: int, n_envs: int | None, videos: int, out_dir: Path) -> dict:
    """Run the rollouts and write eval.json; returns its content."""
    policy = Policy.from_pretrained(policy_dir)
    task = policy.init_kwargs["task"]
    runner = make_runner(task, rollouts, seed_start, n_envs=n_envs, n_videos=videos, video_dir=out_dir / "videos")
    torch.manual_seed(seed_start)
    result = runner.run(policy)
    env = runner.env_fn()
    first_obs, _ = env.reset(seed=seed_start)
    env.close()
    history = {k: np.stack([first_obs[k]] * policy.n_obs_steps) for k in policy.obs_meta}
    result["latency_batch1_ms"] = batch1_latency_ms(policy, history)
    result.update(policy=str(policy_dir), policy_type=policy.policy_type, task=task["name"], nfe=policy.nfe,
                  rollouts=rollouts, seed_start=seed_start)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "eval.json").write_text(json.dumps(result, indent=2, default=str))
    return result


def summary_table(result: dict) -> str:
    rows = [("task", result["task"]), ("policy", f"{result['policy_type']} ({result['nfe']} NFE)"),
            ("rollouts", result["rollouts"]), ("mean_score", f"{result['mean_score']:.3f}"),
            ("success_rate", f"{result['success_rate']:.3f}")]
    rows += [(k, f"{v:.3f}") for k, v in result.items() if k.startswith("p") and k[1:].isdigit()]
    rows += [("latency batch 1 p50 / p95 ms", f"{result['latency_batch1_ms']['p50']:.2f} / {result['latency_batch1_ms']['p95']:.2f}")]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"| {k:<{width}} | {v} |" for k, v in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=None, help="a saved policy folder (default: the latest run's)")
    parser.add_argument("--rollouts", type=int, default=50)
    parser.add_argument("--seed-start", type=int, default=100000, help="episode i uses seed seed_start + i")
    parser.add_argument("--n-envs", type=int, default=None, help="parallel env processes (default: one per core)")
    parser.add_argument("--videos", type=int, default=4, help="number of episodes to record")
    parser.add_argument("--output", type=Path, default=None, help="default: <run>/eval")
    args = parser.parse_args()
    policy_dir = args.checkpoint or latest_policy()
    out_dir = args.output or policy_dir.parent / "eval"
    result = evaluate(policy_dir, args.rollouts, args.seed_start, args.n_envs, args.videos, out_dir)
    print(summary_table(result))
    print(f"wrote {out_dir / 'eval.json'}")


if __name__ == "__main__":
    main()
