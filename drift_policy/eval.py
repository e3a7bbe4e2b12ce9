"""Evaluate a saved policy with Diffusion Policy's protocol: `python eval_policy.py --rollouts 50` (installed:
`python -m drift_policy.eval` or `drift-eval`), or its ONNX export with the same runner, seeds and metrics: `python eval_policy.py --onnx policy.onnx`.

Episode i runs seed seed_start + i for both the env and the policy's sampling noise, so a score depends
only on (policy, seeds). Writes eval.json (mean_score, success_rate and p1..pK with standard errors,
the same over Diffusion Policy's 50 test seeds 100000-100049 when they are included, per-episode records,
predict_action latency) and a few videos beside the policy, each with a PNG filmstrip of 8 of its frames (one image
that git can hold and a README can show), and prints a summary table.

`--set KEY=VALUE` replaces a saved inference setting for this evaluation (sampler=ddim num_inference_steps=10 for a
diffusion policy, sample_noise_scale=0.5 for a drift policy), recorded in eval.json under "overrides".

`--ensemble DECAY` executes ACT's temporal ensemble (a plan every step, each step the average of every valid
prediction for it, weights exp(-DECAY * i), i = 0 the oldest); `--replan-every K` alone replans every K steps
without averaging. By default either writes beside the plain eval, to eval_ensemble<DECAY>[_replan<K>] or
eval_replan<K>.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from drift_policy.cli import non_negative_float, non_negative_int, positive_int, setting
from drift_policy.evaluation import evaluate

RUNS = Path("outputs/runs")


def latest_policy(runs: Path = RUNS) -> Path:
    """The most recently saved policy under outputs/runs/*/policy."""
    saved = sorted(runs.glob("*/policy/model.safetensors"), key=lambda p: p.stat().st_mtime)
    if not saved:
        raise FileNotFoundError(f"no saved policy under {runs.resolve()}/*/policy: train one with `python train_policy.py task=push_t`, "
                                "or pass --checkpoint <run>/policy")
    return saved[-1].parent


def _with_se(result: dict, key: str) -> str:
    return f"{result[key]:.3f} ± {result[key + '_se']:.3f}"


def summary_table(result: dict) -> str:
    """Markdown rows: metrics as mean ± standard error, and the DP-test-seed subset when present."""
    metrics = ["mean_score", "success_rate"] + [k for k in result if k.startswith("p") and k[1:].isdigit()]
    rows = [("task", result["task"]), ("policy", f"{result['policy_type']} ({result['nfe']} NFE)"),
            ("rollouts (seeds)", f"{result['rollouts']} ({result['seed_start']}-{result['seed_start'] + result['rollouts'] - 1})")]
    if "overrides" in result:
        rows.append(("settings", ", ".join(f"{k}={v}" for k, v in result["overrides"].items())))
    if "execution" in result:
        rows.append(("execution", execution_label(result["execution"])))
    rows += [(k, _with_se(result, k)) for k in metrics]
    if "dp_test_seeds" in result:
        subset = result["dp_test_seeds"]
        label = f"DP test seeds {subset['seeds'][0]}-{subset['seeds'][1]}"
        rows += [(f"{k}, {label}", _with_se(subset, k)) for k in metrics if k in subset]
    latency = result["latency_batch1_ms"]
    rows += [(f"latency batch 1 p50 / p99 ms ({result['device']})", f"{latency['p50']:.2f} / {latency['p99']:.2f}")]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"| {k:<{width}} | {v} |" for k, v in rows)


def execution_label(execution: dict) -> str:
    """eval.json's "execution" in words."""
    how = "receding horizon" if execution["decay"] is None else f"temporal ensemble, decay {execution['decay']:g}"
    return f"{how}, a plan every {execution['replan_every']} steps, one action per policy call"


def mode_suffix(ensemble: float | None, replan_every: int | None, overrides: dict | None = None) -> str:
    """The default output folder's suffix for an execution mode and overrides ('' for the policy as saved), so that
    its eval does not replace the plain one."""
    settings = "".join(f"_{key}{value}" for key, value in (overrides or {}).items())
    return settings + (f"_ensemble{ensemble:g}" if ensemble is not None else "") + (f"_replan{replan_every}" if replan_every else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", type=Path, default=None, help="a saved policy folder (default: the latest run's)")
    source.add_argument("--onnx", type=Path, default=None, help="an exported policy (export_onnx's .onnx, its .json beside it), run by onnxruntime")
    parser.add_argument("--rollouts", type=positive_int, default=50)
    parser.add_argument("--seed-start", type=int, default=100000, help="episode i uses seed seed_start + i")
    parser.add_argument("--n-envs", type=positive_int, default=None, help="parallel env processes (default: one per core)")
    parser.add_argument("--videos", type=non_negative_int, default=4, help="number of episodes to record")
    parser.add_argument("--device", default="cpu", help="torch device for the policy: cpu, cuda, cuda:1 ...")
    parser.add_argument("--ensemble", type=non_negative_float, default=None, metavar="DECAY",
                        help="ACT's temporal ensembling: query the policy every step and execute the weighted average of "
                             "every valid prediction for the step, weights exp(-DECAY * i), i = 0 the oldest (0: a plain mean)")
    parser.add_argument("--replan-every", type=positive_int, default=None, metavar="K",
                        help="plan every K steps, K in 1..T - To + 1 (with --ensemble, default 1; alone: plain receding "
                             "horizon, K actions of each plan executed)")
    parser.add_argument("--set", type=setting, action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="replace a saved inference setting, e.g. sample_noise_scale=0.5 or sampler=ddim (repeatable)")
    parser.add_argument("--output", type=Path, default=None, help="default: <run>/eval, or <name>_eval beside an .onnx file "
                        "(+ _<KEY><VALUE>, _ensemble<DECAY> and/or _replan<K> with those flags)")
    args = parser.parse_args()
    if args.onnx is not None:
        if args.onnx.suffix != ".onnx" or not args.onnx.is_file():
            parser.error(f"--onnx {args.onnx} is not an .onnx file: pass a file written by drift_policy.export.export_onnx")
        policy_path = args.onnx
    elif args.checkpoint is None:
        policy_path = latest_policy()
        print(f"--checkpoint not given: evaluating the most recently saved policy, {policy_path.resolve()}")
    elif not args.checkpoint.is_dir():
        parser.error(f"--checkpoint {args.checkpoint} is not a folder: pass the policy folder of a run (outputs/runs/<name>/policy)")
    else:
        policy_path = args.checkpoint
    overrides = dict(args.overrides)
    if overrides and args.onnx is not None:
        parser.error("--set changes a policy folder's settings; an exported graph has them baked in: export again instead")
    name = "eval" + mode_suffix(args.ensemble, args.replan_every, overrides)
    out_dir = args.output or (policy_path.with_name(f"{policy_path.stem}_{name}") if args.onnx else policy_path.parent / name)
    result = evaluate(policy_path, args.rollouts, args.seed_start, args.n_envs, args.videos, out_dir, args.device,
                      ensemble=args.ensemble, replan_every=args.replan_every, overrides=overrides)
    print(summary_table(result))
    print(f"wrote {out_dir.resolve() / 'eval.json'}")


if __name__ == "__main__":
    main()
