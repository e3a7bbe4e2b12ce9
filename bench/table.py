"""The paper's Table 7 on this library: every task trained and evaluated, drift vs diffusion, one command.

    python bench/table.py                                    # lift can block_push push_t kitchen tool_hang, 30 min per arm
    python bench/table.py --tasks block_push --minutes-per-arm 0.5 --rollouts 10 --demos 50   # a smoke run

For each task: makes the demonstrations when they are missing (default: Diffusion Policy's counts, Lift/Can/
ToolHang 200, BlockPush 1,000, Kitchen 566; Push-T uses its shipped 206), trains drift and diffusion (DDPM-100)
for the same wall-clock minutes with the same U-Net and data (drift_policy.budget.run_arm), evaluates each on
--rollouts episodes from seed 100000 with the task's max_steps, and prints one markdown table: the paper's DP and
Drift numbers beside ours (mean ± standard error), steps, budget, NFE and predict_action latency. For BlockPush
and Kitchen a column gives the mode balance: how the successful rollouts split over push / task orders, beside
the demonstrations' split (each demo's order as the env counted it, stored by drift_policy.demos.generate). A task that cannot
run (no expert yet, simulator missing, a dataset of another task) gets a row saying why.
Each arm records the machine's speed (drift_policy.budget.reference_step_ms) whenever its training starts; a row whose
arms ran on machines more than 15% apart is flagged under the table, since its minutes were not equal compute.
Each arm's EMA policy is also scored at 25/50/75% of its budget on --curve-rollouts episodes (the learning curve,
docs/figures/table_<task>.png). Results: bench/results/table.{md,json}. Resumable: a killed run keeps the arms already
measured with the same budget, rollouts, demos, device and resolved config (a changed default re-measures an arm), and
a killed arm resumes from its last checkpoint. Run it alone (`flock /tmp/cpu.lock chrt -f 10 python ...`).
"""
from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any, Callable

import h5py

os.environ.setdefault("MUJOCO_GL", "egl")  # the evaluation records videos of MuJoCo envs; benchmarks run headless

from drift_policy.budget import DEFAULT_ARMS, arm_config, arm_run_dir, parse_arm, run_arm  # noqa: E402
from drift_policy.cli import non_negative_int, positive_float, positive_int  # noqa: E402
from drift_policy.demos.generate import ensure_demonstrations  # noqa: E402
from drift_policy.evaluation import markdown_table, mode_shares, paired_difference, successful_orders  # noqa: E402
from drift_policy.tasks import Task, load_task  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
FIGURES = Path(__file__).resolve().parents[1] / "docs" / "figures"


# The table's rows; each task's metrics, the paper's numbers and DP's demo count are in configs/task/<name>.yaml.
TASKS = ["lift", "can", "tool_hang", "push_t", "block_push", "kitchen",
         "lift_image", "can_image", "tool_hang_image", "push_t_image"]
DEFAULT_TASKS = ["lift", "can", "block_push", "push_t", "kitchen", "tool_hang"]
PIP_PACKAGES = {"robosuite": "robosuite", "gymnasium_robotics": "gymnasium-robotics", "mujoco": "mujoco",
                "gym_pusht": "gym-pusht", "pymunk": "pymunk", "h5py": "h5py"}
ARMS = dict(sorted((parse_arm(a) for a in DEFAULT_ARMS), key=lambda arm: arm[0] != "diffusion"))  # DP first, as in the paper
ARM_LABELS = {"diffusion": "DP", "drift": "Drift"}
SPEED_TOLERANCE = 1.15  # a row whose arms' machines differ by more than this in reference step time is flagged


class TaskUnavailable(Exception):
    """A task that cannot be trained here; the message goes into its table row."""


def require_simulator(task: Task) -> None:
    """Import the task's env module; a missing simulator is TaskUnavailable naming the pip package."""
    module = task.cfg.env._target_.rsplit(".", 1)[0]
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as err:
        missing = (err.name or "").split(".")[0]
        if missing in PIP_PACKAGES:
            raise TaskUnavailable(f"{task.name}: its simulator {missing!r} is not installed (`pip install {PIP_PACKAGES[missing]}`)") from err
        raise TaskUnavailable(f"{task.name}: importing its env {module} failed: {err}") from err


def prepare_demos(task: Task, demos: int | None) -> int | None:
    """Make sure the task's dataset exists with at least `demos` demonstrations (remaking it larger when needed:
    the expert's attempt i always uses scene i, so a larger file starts with the smaller one's demos); returns
    how many the file holds (None for a shipped dataset)."""
    if task.expert is None:
        if not task.dataset_path.exists():
            raise TaskUnavailable(f"{task.name}: dataset {task.dataset_path} is missing (see data/README.md)")
        return None
    try:
        return ensure_demonstrations(task, demos)
    except (ModuleNotFoundError, RuntimeError) as err:  # no expert for the task yet, or it fails too often
        raise TaskUnavailable(f"{task.name}: cannot make its demonstrations: {err}") from err


def demo_orders(path: Path) -> list[list[str]] | None:
    """Each demo's order (its "order" attr from drift_policy.demos.generate), or None when the file predates them."""
    with h5py.File(path, "r") as f:
        attrs = [f["data"][name].attrs.get("order") for name in f["data"]]
    return None if any(a is None for a in attrs) else [json.loads(a) for a in attrs]


def mode_cell(shares: dict[str, float], modes: list[str], n: int) -> str:
    """'3/4 [0.50 0.25 0.25 0.00] n=8': modes present of those listed, shares in the listed order (modes
    outside the list follow), and the number of successes they come from."""
    listed = modes + [m for m in shares if m not in modes]
    values = " ".join(f"{shares.get(m, 0.0):.2f}" for m in listed)
    return f"{sum(m in shares for m in listed)}/{len(listed)} [{values}] n={n}" if n else "no successes"


def run_task(name: str, args: argparse.Namespace, done: dict[str, Any], save: Callable[[], None]) -> None:
    """Demos, then each arm not yet measured with this setting; results go into done["tasks"][name]."""
    entry = done["tasks"].setdefault(name, {"arms": {}})
    task = load_task(name)
    try:
        require_simulator(task)
        entry["demos"] = prepare_demos(task, args.demos)
    except (TaskUnavailable, ValueError) as err:
        entry["unavailable"] = str(err)
        print(f"{name}: not run: {err}", file=sys.stderr, flush=True)
        save()
        return
    entry.pop("unavailable", None)
    overrides = [f"task.max_train_episodes={args.demos}"] if args.demos and task.expert is not None else []
    setting = {"minutes": args.minutes_per_arm, "rollouts": args.rollouts, "device": args.device,
               "demos": args.demos or (task.expert.demos if task.expert else None), "overrides": overrides,
               "curve_rollouts": args.curve_rollouts}
    if task.multimodal:
        orders = demo_orders(task.dataset_path)
        entry["demo_modes"] = None if orders is None else {"n": len(orders), "shares": mode_shares(orders)}
    for arm, arm_overrides in ARMS.items():
        previous = entry["arms"].get(arm)
        arm_setting = {**setting, "arm": arm_overrides, "config": arm_config(name, [*arm_overrides, *overrides])}
        if previous and previous["setting"] == arm_setting:
            print(f"{name} / {arm}: already measured", flush=True)
            continue
        measured = run_arm(arm, arm_overrides, task=name, minutes=args.minutes_per_arm,
                           run_dir=arm_run_dir(RESULTS, "table", name, arm, args.minutes_per_arm, arm_setting["config"]), rollouts=args.rollouts,
                           n_envs=args.n_envs, device=args.device, curve_rollouts=args.curve_rollouts, extra_overrides=overrides)
        entry["arms"][arm] = {**measured, "setting": arm_setting}
        save()
        print(f"{name} / {arm}: {entry['arms'][arm]['row']}", flush=True)


def _paper(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def _pm(result: dict, metric: str) -> str:
    if metric not in result and metric[0] == "p" and metric[1:].isdigit():
        return "0.000 ± 0.000"  # episode_metrics lists p1..pK up to the most tasks any episode completed
    return f"{result[metric]:.3f} ± {result[metric + '_se']:.3f}"


def table_rows(done: dict[str, Any], tasks: list[str]) -> tuple[list[dict[str, str]], list[str]]:
    """One row per (task, metric) and the legend lines naming each multimodal task's modes in cell order."""
    rows, legend = [], []
    arms = list(ARMS)
    for name in tasks:
        task, entry = load_task(name), done["tasks"].get(name, {"arms": {}})
        measured = {arm: entry["arms"].get(arm) for arm in arms}

        def both(fact) -> str:  # the DP and Drift values of one fact, side by side
            return " / ".join(fact(measured[a]) if measured[a] else "—" for a in arms)
        modes_col = ""
        if task.multimodal and "unavailable" not in entry:
            demo = entry.get("demo_modes")
            modes = sorted(demo["shares"]) if demo else []
            cells = [f"demos {mode_cell(demo['shares'], modes, demo['n']) if demo else 'orders not recorded (the file predates them: delete it to remake)'}"]
            for arm in arms:
                if measured[arm]:
                    orders = successful_orders(measured[arm]["episodes"])
                    cells.append(f"{ARM_LABELS[arm]} {mode_cell(mode_shares(orders) if orders else {}, modes, len(orders))}")
            modes_col = "; ".join(cells)
            legend.append(f"{name} modes, in cell order: " + " | ".join(modes or ["(none recorded)"]))
        paired = _paired(measured)
        for i, metric in enumerate(task.metrics):
            row = {"task": name, "obs": task.paper["obs"], "metric": metric, "paper DP": _paper(task.paper["dp"][i]),
                   "paper Drift": _paper(task.paper["drift"][i])}
            if "unavailable" in entry:
                row.update({"DP (ours)": f"not run: {entry['unavailable']}", "Drift (ours)": "—"})
            else:
                row.update({f"{ARM_LABELS[a]} (ours)": _pm(measured[a]["result"], metric) if measured[a] else "pending" for a in arms})
            row["Drift - DP (paired)"] = ("—" if paired is None or "unavailable" in entry
                                          else "+0.000 ± 0.000" if metric not in paired else f"{paired[metric]:+.3f} ± {paired[metric + '_se']:.3f}")
            last = i == len(task.metrics) - 1 and "unavailable" not in entry
            row["mode balance (successes)"] = modes_col if last else ""
            row["steps DP / Drift"] = both(lambda m: str(m["train"]["steps"])) if last else ""
            row["budget min"] = both(lambda m: f"{m['setting']['minutes']:g}") if last else ""
            row["NFE DP / Drift"] = both(lambda m: str(m["result"]["nfe"])) if last else ""
            row["network DP / Drift"] = both(_network) if last else ""
            row["latency ms DP / Drift"] = both(lambda m: f"{m['result']['latency_batch1_ms']['p50']:.2f}") if last else ""
            row["reference step ms DP / Drift"] = both(_speeds) if last else ""
            row["demos"] = str(entry.get("demos") or "shipped") if last else ""
            rows.append(row)
        speeds = [v for arm in arms if measured[arm] for v in measured[arm]["train"].get("reference_step_ms", [])]
        if speeds and max(speeds) > SPEED_TOLERANCE * min(speeds):
            legend.append(f"{name}: its arms trained on machines of different speed (reference step {min(speeds):.0f}-"
                          f"{max(speeds):.0f} ms), so equal minutes were not equal compute: compare its steps, or re-run an arm")
    return rows, legend


def _paired(measured: dict[str, Any]) -> dict[str, float] | None:
    """Drift minus DP seed by seed (mean and standard error per metric), None unless both ran on the same seeds."""
    if not (measured["drift"] and measured["diffusion"]):
        return None
    try:
        return paired_difference(measured["drift"]["episodes"], measured["diffusion"]["episodes"])
    except ValueError:
        return None


def _network(measured: dict[str, Any]) -> str:
    """The arm's action network and, for drift, its G: a task may set its own (configs/task_policy), e.g. 'MLP, G=8'."""
    policy = measured["setting"].get("config", {}).get("policy")
    if policy is None:
        return "?"  # a record from before the resolved config was kept
    network = {"mlp": "MLP"}.get(policy.get("backbone", "unet"), "U-Net")
    return f"{network}, G={policy['n_generated']}" if "n_generated" in policy else network


def _speeds(measured: dict[str, Any]) -> str:
    """The machine's reference step (ms) at each start of an arm's training, '?' for records from before it was kept."""
    return ",".join(f"{v:.0f}" for v in measured["train"].get("reference_step_ms", [])) or "?"


def headline_metric(name: str) -> str:
    """The metric a task's learning curve shows: mean_score where DP reports it, else its hardest stage."""
    metrics = load_task(name).metrics
    return "mean_score" if "mean_score" in metrics else metrics[-1]


def plot_curves(name: str, entry: dict[str, Any], path: Path) -> Path | None:
    """Per arm, the headline metric (± standard error) against training minutes; None when no arm has a curve."""
    arms = {arm: entry["arms"][arm]["curve"] for arm in ARMS if entry.get("arms", {}).get(arm, {}).get("curve")}
    if not arms:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = headline_metric(name)
    fig, ax = plt.subplots(figsize=(4.2, 3.0), dpi=110)
    for arm, curve in arms.items():
        x = [p["minutes"] for p in curve]
        y = [p.get(metric, 0.0) for p in curve]
        se = [p.get(metric + "_se", 0.0) for p in curve]
        ax.errorbar(x, y, yerr=se, marker="o", capsize=3, label=f"{ARM_LABELS[arm]} (last: {curve[-1]['rollouts']} ep.)")
    ax.set(xlabel="training minutes", ylabel=metric, title=f"{name}: {metric} vs training time", ylim=(-0.02, 1.02))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def format_table(done: dict[str, Any], tasks: list[str]) -> str:
    """The markdown table with its header line and the mode legend."""
    s = done["setting"]
    rows, legend = table_rows(done, tasks)
    header = (f"Table 7 on drift-policy: {s['minutes_per_arm']:g} min of training per arm on {s['device']}, "
              f"{s['rollouts']} episodes from seed 100000 (mean ± standard error); DP = diffusion, DDPM-100; "
              f"{done.get('machine', '')}, {done.get('date', '')}")
    return "\n".join([header, "", markdown_table(rows), *(["", *legend] if legend else [])])


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=DEFAULT_TASKS, help=f"any of {', '.join(TASKS)}")
    parser.add_argument("--minutes-per-arm", type=positive_float, default=30.0, help="wall-clock training budget of each arm")
    parser.add_argument("--rollouts", type=positive_int, default=200)
    parser.add_argument("--demos", type=positive_int, default=None,
                        help="demonstrations per generated task (default: DP's count); Push-T always uses its 206")
    parser.add_argument("--n-envs", type=positive_int, default=10, help="parallel env processes during evaluation")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--curve-rollouts", type=non_negative_int, default=30,
                        help="episodes scoring each arm at 25/50/75%% of its budget (the learning curve; 0: none)")
    parser.add_argument("--figures", type=Path, default=FIGURES, help="where the learning-curve PNGs go")
    parser.add_argument("--output", type=Path, default=RESULTS / "table.json")
    args = parser.parse_args(argv)
    unknown = [t for t in args.tasks if t not in TASKS]
    if unknown:
        parser.error(f"unknown task(s) {unknown}; the table knows {', '.join(TASKS)}")
    done = json.loads(args.output.read_text()) if args.output.exists() else {"tasks": {}}
    done["setting"] = {"minutes_per_arm": args.minutes_per_arm, "rollouts": args.rollouts, "device": args.device}
    done.update(machine=f"{os.cpu_count()}-core {platform.machine()}, torch on {args.device}", date=datetime.date.today().isoformat())

    def save() -> None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(done, indent=2))

    for name in args.tasks:
        run_task(name, args, done, save)
        plot_curves(name, done["tasks"][name], args.figures / f"table_{name}.png")
    text = format_table(done, args.tasks)
    args.output.with_suffix(".md").write_text(text + "\n")
    print(text)
    return text


if __name__ == "__main__":
    main()
