"""Policies side by side at the same wall-clock training budget: same data, seeds and evaluation.

    python bench/compare.py --minutes 20                       # drift vs diffusion (DDPM-100) on Push-T state
    python bench/compare.py --minutes 10 --name ablation --arms \\
        "G8=policy=drift" "G4=policy=drift policy.n_generated=4" "obs32=policy=drift train.batch_size=32"
    python bench/compare.py --minutes 20 --train-seeds 42 43 --arms "drift=policy=drift" "wd=policy=drift train.weight_decay=0.1"

Each arm trains for --minutes (the LR schedule ends with the budget), then runs --rollouts episodes from
seed 100000 (the first 50 are Diffusion Policy's test seeds, reported as a subset too). Prints one markdown
table of mean ± standard error, then each arm's per-seed difference from the first arm and, for mean_score tasks, its
count of episodes whose max reward stayed under 0.5 (where Push-T's mean_score gaps live: stalls), and writes bench/results/<name>.{md,json}.
With --train-seeds each arm trains once per seed (runs <arm>@seed<S>, `seed=S`): the paired differences then average
each evaluation seed over an arm's runs, since one training run of drift on Push-T moves mean_score by ~0.03. Resumable: an arm whose result
is already in <name>.json with the same resolved config, budget and rollouts is not run again; a killed arm resumes its
training from the last checkpoint (clock and LR schedule kept) and re-runs only the evaluations it had not finished.
Run it alone (`flock /tmp/cpu.lock chrt -f 10 python bench/compare.py ...`): the budget is wall-clock.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
from pathlib import Path

from drift_policy.budget import DEFAULT_ARMS, arm_config, arm_run_dir, parse_arm, run_arm
from drift_policy.cli import non_negative_int, positive_float, positive_int
from drift_policy.evaluation import markdown_table, pooled_paired_difference
from drift_policy.tasks import load_task

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=positive_float, default=20.0, help="training budget for EACH arm")
    parser.add_argument("--task", default="push_t")
    parser.add_argument("--rollouts", type=positive_int, default=200)
    parser.add_argument("--n-envs", type=positive_int, default=10, help="parallel env processes during evaluation")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--arms", nargs="+", default=DEFAULT_ARMS, help="name=train_policy overrides (space-separated)")
    parser.add_argument("--name", default="compare", help="results go to bench/results/<name>.{md,json}")
    parser.add_argument("--train-seeds", type=non_negative_int, nargs="+", default=None, metavar="S",
                        help="train each arm once per seed (runs <arm>@seed<S>); paired differences average an arm's runs")
    parser.add_argument("--curve-rollouts", type=non_negative_int, default=0, help="score the policy at 25/50/75%% of the budget on this many episodes too")
    parser.add_argument("overrides", nargs="*", help="train_policy.py overrides applied to every arm")
    args = parser.parse_args()
    try:
        arms = [parse_arm(a) for a in args.arms]
    except ValueError as err:
        parser.error(f"--arms: {err}")
    out = RESULTS / f"{args.name}.json"
    setting = {"task": args.task, "minutes": args.minutes, "rollouts": args.rollouts, "device": args.device, "overrides": args.overrides}
    done = json.loads(out.read_text()) if out.exists() else {}
    if done.get("setting") != setting:
        done = {"setting": setting, "arms": {}}
    runs = {name: [(f"{name}@seed{seed}", [*overrides, f"seed={seed}"]) for seed in args.train_seeds]
            if args.train_seeds else [(name, overrides)] for name, overrides in arms}
    for name, overrides in (run for arm_runs in runs.values() for run in arm_runs):
        config = arm_config(args.task, [*overrides, *args.overrides])
        if done["arms"].get(name, {}).get("config") == config:
            print(f"{name}: already measured, see {out}")
            continue
        done["arms"][name] = run_arm(name, overrides, task=args.task, minutes=args.minutes,
                                     run_dir=arm_run_dir(RESULTS, args.name, args.task, name, args.minutes, config),
                                     rollouts=args.rollouts, n_envs=args.n_envs, device=args.device,
                                     curve_rollouts=args.curve_rollouts, extra_overrides=args.overrides) | {"config": config}
        done["machine"] = f"{os.cpu_count()}-core {platform.machine()}, torch on {args.device}"
        done["date"] = datetime.date.today().isoformat()
        RESULTS.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(done, indent=2))
        print(done["arms"][name]["row"], flush=True)
    measured = [(arm, [done["arms"][name] for name, _ in arm_runs]) for arm, arm_runs in runs.items()]
    table = markdown_table([run["row"] for _, arm_runs in measured for run in arm_runs])
    header = (f"{args.task}, {args.minutes:g} min of training per arm on {args.device}, {args.rollouts} episodes from seed 100000 "
              f"(mean ± standard error), {done['date']}")
    report = header + "\n\n" + table + "\n"
    if len(arms) > 1:
        pooled = f", each seed averaged over an arm's {len(args.train_seeds)} training runs" if args.train_seeds else ""
        report += (f"\nPaired against {arms[0][0]} (mean ± standard error of the per-seed difference{pooled}):\n\n"
                   + markdown_table(paired_rows(measured)) + "\n")
    if "mean_score" in load_task(args.task).metrics:
        report += f"\nEpisodes whose max reward stayed under 0.5: {low_score_counts(measured)}\n"
    print(report)
    out.with_suffix(".md").write_text(report)


def paired_rows(arms: list[tuple[str, list[dict]]]) -> list[dict[str, str]]:
    """One row per arm after the first: each metric's per-seed difference from the first arm, mean ± standard error;
    an arm is its list of runs (one per training seed), averaged per evaluation seed."""
    (base_name, base), *others = arms
    diffs = [(name, pooled_paired_difference([r["episodes"] for r in runs], [r["episodes"] for r in base]))
             for name, runs in others]
    metrics = sorted({k for _, d in diffs for k in d if not k.endswith("_se")}, key=lambda k: (k.startswith("p"), k))
    return [{"arm": f"{name} - {base_name}", **{k: f"{d[k]:+.3f} ± {d[k + '_se']:.3f}" if k in d else "—" for k in metrics}}
            for name, d in diffs]


def low_score_counts(arms: list[tuple[str, list[dict]]], below: float = 0.5) -> str:
    """Per arm (per run of it, '/'-separated), how many episodes never reached `below` reward: a few near-zero
    episodes move mean_score more than the rest together (Push-T at 20 minutes: drift's 12 stalls are its whole gap)."""
    return ", ".join(f"{name} " + " / ".join(str(sum(e["max_reward"] < below for e in run["episodes"])) for run in runs)
                     for name, runs in arms)


if __name__ == "__main__":
    main()
