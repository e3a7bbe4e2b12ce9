"""Train a policy on Push-T for a wall-clock budget, then evaluate it on 50 test seeds.

    python bench/push_t.py --minutes 20                      # drift policy, state observations
    python bench/push_t.py --minutes 60 --task push_t_image  # from pixels
    python bench/push_t.py --minutes 20 -- policy.n_generated=16   # any train_policy override after --
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import RESULTS, markdown_table, train_for_minutes  # noqa: E402
from eval_policy import evaluate  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--task", default="push_t")
    parser.add_argument("--policy", default="drift")
    parser.add_argument("--rollouts", type=int, default=50)
    parser.add_argument("overrides", nargs="*", help="train_policy.py overrides")
    args = parser.parse_args()
    name = f"{args.task}_{args.policy}_{args.minutes:g}min"
    run_dir = RESULTS / "runs" / name
    policy_dir, facts = train_for_minutes(args.minutes, [f"task={args.task}", f"policy={args.policy}", *args.overrides], run_dir)
    result = evaluate(policy_dir, args.rollouts, 100000, None, 4, run_dir / "eval")
    row = {"task": args.task, "policy": args.policy, "budget_min": args.minutes, "train_min": facts["train_minutes"],
           "steps": facts["steps"], "s_per_step": facts["step_time_s"], "mean_score": result["mean_score"],
           "success_rate": result["success_rate"], "latency_p50_ms": result["latency_batch1_ms"]["p50"]}
    table = markdown_table([row])
    print(table)
    (RESULTS / f"{name}.md").write_text(table + "\n")
    (RESULTS / f"{name}.json").write_text(json.dumps({**row, "overrides": args.overrides, "eval": str(run_dir / "eval")}, indent=2))


if __name__ == "__main__":
    main()
