"""Drift vs Diffusion Policy on Push-T state: same data, network, budget and 50 test seeds.

    python bench/compare.py --minutes 20 [--rollouts 50] [--diffusion-sampler ddpm --diffusion-steps 100]

Prints one table (mean_score, success_rate, NFE per chunk, predict_action latency p50/p95 at batch 1,
training step time, parameters) and writes it as bench/results/compare.{md,json}.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import RESULTS, markdown_table, train_for_minutes  # noqa: E402
from drift_policy.policies import Policy  # noqa: E402
from eval_policy import evaluate  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=20.0, help="training budget for EACH policy")
    parser.add_argument("--task", default="push_t")
    parser.add_argument("--rollouts", type=int, default=50)
    parser.add_argument("--n-envs", type=int, default=10, help="parallel env processes during evaluation")
    parser.add_argument("--diffusion-sampler", default="ddpm", choices=["ddpm", "ddim"])
    parser.add_argument("--diffusion-steps", type=int, default=100)
    parser.add_argument("overrides", nargs="*", help="train_policy.py overrides applied to both policies")
    args = parser.parse_args()
    policies = {"drift": ["policy=drift"],
                "diffusion": ["policy=diffusion", f"policy.sampler={args.diffusion_sampler}",
                              f"policy.num_inference_steps={args.diffusion_steps}"]}
    rows = []
    for name, policy_overrides in policies.items():
        run_dir = RESULTS / "runs" / f"compare_{args.task}_{name}_{args.minutes:g}min"
        policy_dir, facts = train_for_minutes(args.minutes, [f"task={args.task}", *policy_overrides, *args.overrides], run_dir)
        result = evaluate(policy_dir, args.rollouts, 100000, args.n_envs, 2, run_dir / "eval")
        params = sum(p.numel() for p in Policy.from_pretrained(policy_dir).parameters())
        rows.append({"policy": name, "mean_score": result["mean_score"], "success_rate": result["success_rate"],
                     "nfe": result["nfe"], "latency_p50_ms": result["latency_batch1_ms"]["p50"],
                     "latency_p95_ms": result["latency_batch1_ms"]["p95"], "train_step_s": facts["step_time_s"],
                     "steps": facts["steps"], "train_min": facts["train_minutes"], "params_M": params / 1e6})
        print(rows[-1], flush=True)
    table = markdown_table(rows)
    print(table)
    (RESULTS / "compare.md").write_text(f"budget {args.minutes:g} min per policy, {args.rollouts} rollouts\n\n{table}\n")
    (RESULTS / "compare.json").write_text(json.dumps({"minutes": args.minutes, "rows": rows, "overrides": args.overrides}, indent=2))


if __name__ == "__main__":
    main()
