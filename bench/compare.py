"""Policies side by side at the same wall-clock training budget: same data, seeds and evaluation.

    python bench/compare.py --minutes 20                       # drift vs diffusion (DDPM-100) on Push-T state
    python bench/compare.py --minutes 10 --name ablation --arms \\
        "G8=policy=drift" "G4=policy=drift policy.n_generated=4" "obs32=policy=drift train.batch_size=32"

Each arm trains for --minutes (the LR schedule ends with the budget), then runs --rollouts episodes from
seed 100000 (the first 50 are Diffusion Policy's test seeds, reported as a subset too). Prints one markdown
table of mean ± standard error and writes bench/results/<name>.{md,json}. Resumable: an arm whose result
is already in <name>.json with the same overrides, budget and rollouts is not run again; a killed arm resumes its
training from the last checkpoint (clock and LR schedule kept) and re-runs only the evaluations it had not finished.
Run it alone (`flock /tmp/cpu.lock chrt -f 10 python bench/compare.py ...`): the budget is wall-clock.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import RESULTS, markdown_table, train_for_minutes  # noqa: E402
from drift_policy.policies import Policy  # noqa: E402
from drift_policy.cli import non_negative_int, positive_float, positive_int  # noqa: E402
from drift_policy.evaluation import episode_metrics, evaluate_once  # noqa: E402
from drift_policy.training.trainer import SNAPSHOT_DIR  # noqa: E402

DEFAULT_ARMS = ["drift=policy=drift", "diffusion=policy=diffusion policy.sampler=ddpm policy.num_inference_steps=100"]


def parse_arm(text: str) -> tuple[str, list[str]]:
    """'name=override override ...' -> (name, overrides)."""
    name, sep, overrides = text.partition("=")
    if not sep or not name:
        raise SystemExit(f"--arms entry {text!r} must look like 'name=policy=drift policy.n_generated=4'")
    return name, overrides.split()


CURVE = (0.25, 0.5, 0.75)  # fractions of the budget at which a learning curve evaluates the EMA policy


def run_arm(name: str, overrides: list[str], args: argparse.Namespace) -> dict:
    """Train one arm for the budget and evaluate it; the row of the table plus the facts behind it. Resumable at any
    point. With args.curve_rollouts > 0 the EMA policy at CURVE fractions of the budget is scored on that many
    episodes too (result["curve"]: minutes and metrics, ending with the final evaluation)."""
    run_dir = RESULTS / "runs" / f"{args.name}_{args.task}_{name}_{args.minutes:g}min"
    curve_rollouts = getattr(args, "curve_rollouts", 0)
    policy_dir, facts = train_for_minutes(args.minutes, [f"task={args.task}", f"device={args.device}", *overrides, *args.overrides],
                                          run_dir, snapshots=CURVE if curve_rollouts else ())
    result = evaluate_once(policy_dir, args.rollouts, args.n_envs, 2, run_dir / "eval", args.device)
    curve = []
    for snapshot in sorted((run_dir / SNAPSHOT_DIR).glob("*pct")) if curve_rollouts else []:
        point = evaluate_once(snapshot, curve_rollouts, args.n_envs, 0, run_dir / "curve" / snapshot.name, args.device)
        meta = json.loads((snapshot / "snapshot.json").read_text())
        curve.append({"minutes": meta["train_minutes"], "steps": meta["step"], "rollouts": curve_rollouts, **episode_metrics(point["episodes"])})
    if curve:
        curve.append({"minutes": facts["train_minutes"], "steps": facts["steps"], "rollouts": args.rollouts, **episode_metrics(result["episodes"])})
    params = sum(p.numel() for p in Policy.from_pretrained(policy_dir).parameters())
    row = {"arm": name, "mean_score": _pm(result, "mean_score"), "success": _pm(result, "success_rate")}
    if "dp_test_seeds" in result:
        subset = result["dp_test_seeds"]
        row.update({"mean_score (first 50)": _pm(subset, "mean_score"), "success (first 50)": _pm(subset, "success_rate")})
    row.update({"NFE": result["nfe"], "latency p50 ms": round(result["latency_batch1_ms"]["p50"], 2), "steps": facts["steps"],
                "s/step": round(facts["step_time_s"], 3), "final lr": f"{facts['final_lr']:.1e}", "params M": round(params / 1e6, 2)})
    return {"row": row, "overrides": overrides, "result": {k: v for k, v in result.items() if k != "episodes"},
            "episodes": result["episodes"], "train": facts, "curve": curve}


def _pm(result: dict, key: str) -> str:
    return f"{result[key]:.3f} ± {result[key + '_se']:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=positive_float, default=20.0, help="training budget for EACH arm")
    parser.add_argument("--task", default="push_t")
    parser.add_argument("--rollouts", type=positive_int, default=200)
    parser.add_argument("--n-envs", type=positive_int, default=10, help="parallel env processes during evaluation")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--arms", nargs="+", default=DEFAULT_ARMS, help="name=train_policy overrides (space-separated)")
    parser.add_argument("--name", default="compare", help="results go to bench/results/<name>.{md,json}")
    parser.add_argument("--curve-rollouts", type=non_negative_int, default=0, help="score the policy at 25/50/75%% of the budget on this many episodes too")
    parser.add_argument("overrides", nargs="*", help="train_policy.py overrides applied to every arm")
    args = parser.parse_args()
    arms = [parse_arm(a) for a in args.arms]
    out = RESULTS / f"{args.name}.json"
    setting = {"task": args.task, "minutes": args.minutes, "rollouts": args.rollouts, "device": args.device, "overrides": args.overrides}
    done = json.loads(out.read_text()) if out.exists() else {}
    if done.get("setting") != setting:
        done = {"setting": setting, "arms": {}}
    for name, overrides in arms:
        if done["arms"].get(name, {}).get("overrides") == overrides:
            print(f"{name}: already measured, see {out}")
            continue
        done["arms"][name] = run_arm(name, overrides, args)
        done["machine"] = f"{os.cpu_count()}-core {platform.machine()}, torch on {args.device}"
        done["date"] = datetime.date.today().isoformat()
        RESULTS.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(done, indent=2))
        print(done["arms"][name]["row"], flush=True)
    table = markdown_table([done["arms"][name]["row"] for name, _ in arms])
    header = (f"{args.task}, {args.minutes:g} min of training per arm on {args.device}, {args.rollouts} episodes from seed 100000 "
              f"(mean ± standard error), {done['date']}")
    print(header + "\n\n" + table)
    out.with_suffix(".md").write_text(header + "\n\n" + table + "\n")


if __name__ == "__main__":
    main()
