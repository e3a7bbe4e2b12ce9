"""Evaluate a saved policy with Diffusion Policy's protocol: `python eval_policy.py --rollouts 50`.

Episode i runs seed seed_start + i for both the env and the policy's sampling noise, so a score depends
only on (policy, seeds). Writes eval.json (mean_score, success_rate and p1..pK with standard errors,
the same over Diffusion Policy's 50 test seeds 100000-100049 when they are included, per-episode records,
predict_action latency) and a few videos beside the policy, and prints a summary table.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from drift_policy.policies import Policy
from drift_policy.training.trainer import make_runner
from envs.runner import episode_metrics

RUNS = Path("outputs/runs")
DP_TEST_SEEDS = range(100000, 100050)  # Diffusion Policy's Push-T test initial states


def latest_policy(runs: Path = RUNS) -> Path:
    """The most recently saved policy under outputs/runs/*/policy."""
    saved = sorted(runs.glob("*/policy/model.safetensors"), key=lambda p: p.stat().st_mtime)
    if not saved:
        raise FileNotFoundError(f"no saved policy under {runs.resolve()}/*/policy: train one with `python train_policy.py task=push_t`, "
                                "or pass --checkpoint <run>/policy")
    return saved[-1].parent


def batch1_latency_ms(policy: Policy, obs: dict[str, np.ndarray], calls: int = 50) -> dict[str, float]:
    """predict_action wall time for one observation history, after a few warm-up calls."""
    times = []
    for i in tqdm(range(5 + calls), desc=f"latency, batch 1 ({policy.nfe} NFE)", dynamic_ncols=True, leave=False):
        start = time.perf_counter()
        policy.predict_action(obs)
        if i >= 5:
            times.append(1e3 * (time.perf_counter() - start))
    return {"p50": float(np.percentile(times, 50)), "p95": float(np.percentile(times, 95)), "p99": float(np.percentile(times, 99))}


def load_for_eval(policy_dir: Path, device: str) -> Policy:
    """The saved policy on `device`, refused with the reason when it cannot be evaluated in a simulator."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device} asked for, but torch sees no CUDA device here; use --device cpu")
    policy = Policy.from_pretrained(policy_dir, device=device)
    task = policy.init_kwargs.get("task") or {}
    missing = [k for k in ("name", "env", "max_steps", "n_obs_steps", "n_action_steps") if k not in task]
    if missing:
        raise ValueError(f"{policy_dir / 'config.json'} has no task config to build an env from (missing task keys {missing}). "
                         "Policies trained by train_policy.py carry it; when building a policy in Python, pass "
                         "task=<the task yaml as a dict> (e.g. OmegaConf.to_container(cfg.task, resolve=True)) before save_pretrained.")
    return policy


def evaluate(policy_dir: Path, rollouts: int, seed_start: int, n_envs: int | None, videos: int, out_dir: Path,
             device: str = "cpu") -> dict:
    """Run the rollouts and write eval.json; returns its content."""
    policy_dir, out_dir = Path(policy_dir).resolve(), Path(out_dir).resolve()
    policy = load_for_eval(policy_dir, device)
    task = policy.init_kwargs["task"]
    runner = make_runner(task, rollouts, seed_start, n_envs=n_envs, n_videos=videos, video_dir=out_dir / "videos")
    result = runner.run(policy)
    dp_test = [e for e in result["episodes"] if e["seed"] in DP_TEST_SEEDS]
    if dp_test and len(dp_test) < len(result["episodes"]):
        result["dp_test_seeds"] = {"seeds": [dp_test[0]["seed"], dp_test[-1]["seed"]], "n": len(dp_test), **episode_metrics(dp_test)}
    env = runner.env_fn()
    first_obs, _ = env.reset(seed=seed_start)
    env.close()
    history = {k: np.stack([first_obs[k]] * policy.n_obs_steps) for k in policy.obs_meta}
    result["latency_batch1_ms"] = batch1_latency_ms(policy, history)
    result.update(policy=str(policy_dir), policy_type=policy.policy_type, task=task["name"], nfe=policy.nfe,
                  rollouts=rollouts, seed_start=seed_start, device=device)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "eval.json").write_text(json.dumps(result, indent=2, default=str))
    return result


def _with_se(result: dict, key: str) -> str:
    return f"{result[key]:.3f} ± {result[key + '_se']:.3f}"


def summary_table(result: dict) -> str:
    """Markdown rows: metrics as mean ± standard error, and the DP-test-seed subset when present."""
    metrics = ["mean_score", "success_rate"] + [k for k in result if k.startswith("p") and k[1:].isdigit()]
    rows = [("task", result["task"]), ("policy", f"{result['policy_type']} ({result['nfe']} NFE)"),
            ("rollouts (seeds)", f"{result['rollouts']} ({result['seed_start']}-{result['seed_start'] + result['rollouts'] - 1})")]
    rows += [(k, _with_se(result, k)) for k in metrics]
    if "dp_test_seeds" in result:
        subset = result["dp_test_seeds"]
        label = f"DP test seeds {subset['seeds'][0]}-{subset['seeds'][1]}"
        rows += [(f"{k}, {label}", _with_se(subset, k)) for k in metrics if k in subset]
    latency = result["latency_batch1_ms"]
    rows += [(f"latency batch 1 p50 / p99 ms ({result['device']})", f"{latency['p50']:.2f} / {latency['p99']:.2f}")]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"| {k:<{width}} | {v} |" for k, v in rows)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=None, help="a saved policy folder (default: the latest run's)")
    parser.add_argument("--rollouts", type=positive_int, default=50)
    parser.add_argument("--seed-start", type=int, default=100000, help="episode i uses seed seed_start + i")
    parser.add_argument("--n-envs", type=positive_int, default=None, help="parallel env processes (default: one per core)")
    parser.add_argument("--videos", type=int, default=4, help="number of episodes to record")
    parser.add_argument("--device", default="cpu", help="torch device for the policy: cpu, cuda, cuda:1 ...")
    parser.add_argument("--output", type=Path, default=None, help="default: <run>/eval")
    args = parser.parse_args()
    if args.checkpoint is None:
        policy_dir = latest_policy()
        print(f"--checkpoint not given: evaluating the most recently saved policy, {policy_dir.resolve()}")
    else:
        policy_dir = args.checkpoint
    out_dir = args.output or policy_dir.parent / "eval"
    result = evaluate(policy_dir, args.rollouts, args.seed_start, args.n_envs, args.videos, out_dir, args.device)
    print(summary_table(result))
    print(f"wrote {out_dir.resolve() / 'eval.json'}")


if __name__ == "__main__":
    main()
