"""The paper's Table 7 on this library: every task trained and evaluated, drift vs diffusion, one command.

    python bench/table.py                                    # lift can block_push push_t kitchen tool_hang, 30 min per arm
    python bench/table.py --tasks block_push --minutes-per-arm 0.5 --rollouts 10 --demos 50   # a smoke run

For each task: makes the demonstrations when they are missing (default: Diffusion Policy's counts, Lift/Can/
ToolHang 200, BlockPush 1,000, Kitchen 566; Push-T uses its shipped 206), trains drift and diffusion (DDPM-100)
for the same wall-clock minutes with the same U-Net and data (bench/compare.py's run_arm), evaluates each on
--rollouts episodes from seed 100000 with the task's max_steps, and prints one markdown table: the paper's DP and
Drift numbers beside ours (mean ± standard error), steps, budget, NFE and predict_action latency. For BlockPush
and Kitchen a column gives the mode balance: how the successful rollouts split over push / task orders, beside
the demonstrations' split (each demo's order as the env counted it, stored by data.generate). A task that cannot
run (no expert yet, simulator missing, a dataset of another task) gets a row saying why.
Each arm's EMA policy is also scored at 25/50/75% of its budget on --curve-rollouts episodes (the learning curve,
docs/figures/table_<task>.png). Results: bench/results/table.{md,json}. Resumable: a killed run keeps the arms already
measured with the same budget, rollouts, demos and device, and a killed arm resumes from its last checkpoint. Run it alone (`flock /tmp/cpu.lock chrt -f 10 python ...`).
"""
from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import h5py
from omegaconf import DictConfig, OmegaConf

os.environ.setdefault("MUJOCO_GL", "egl")  # the evaluation records videos of MuJoCo envs; benchmarks run headless
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import RESULTS, ROOT, markdown_table  # noqa: E402
from bench.compare import DEFAULT_ARMS, parse_arm, run_arm  # noqa: E402
from drift_policy.cli import non_negative_int, positive_float, positive_int  # noqa: E402
from drift_policy.evaluation import mode_shares, successful_orders  # noqa: E402


@dataclass(frozen=True)
class TaskSpec:
    """A Table 7 row: observation type, the metrics DP reports, the paper's numbers (None: not reported) and
    DP's number of demonstrations (None: the task ships its dataset)."""

    obs: str
    metrics: tuple[str, ...]
    paper_dp: tuple[float | None, ...]
    paper_drift: tuple[float | None, ...]
    dp_demos: int | None


KITCHEN = ("p1", "p2", "p3", "p4")
TASKS = {
    "lift": TaskSpec("state", ("success_rate",), (0.98,), (1.00,), 200),
    "can": TaskSpec("state", ("success_rate",), (0.96,), (0.98,), 200),
    "tool_hang": TaskSpec("state", ("success_rate",), (0.30,), (0.38,), 200),
    "push_t": TaskSpec("state", ("mean_score", "success_rate"), (0.91, None), (0.86, None), None),
    "block_push": TaskSpec("state", ("p1", "p2"), (0.36, 0.11), (0.56, 0.16), 1000),
    "kitchen": TaskSpec("state", KITCHEN, (1.00, 1.00, 1.00, 0.99), (1.00, 1.00, 0.99, 0.96), 566),
    "lift_image": TaskSpec("visual", ("success_rate",), (1.00,), (1.00,), 200),
    "can_image": TaskSpec("visual", ("success_rate",), (0.97,), (0.99,), 200),
    "tool_hang_image": TaskSpec("visual", ("success_rate",), (0.73,), (0.67,), 200),
    "push_t_image": TaskSpec("visual", ("mean_score", "success_rate"), (0.84, None), (0.86, None), None),
}
DEFAULT_TASKS = ["lift", "can", "block_push", "push_t", "kitchen", "tool_hang"]
MULTIMODAL = {"block_push", "kitchen"}  # episodes carry info["completed"] as "order"; the table shows their split
PIP_PACKAGES = {"robosuite": "robosuite", "gymnasium_robotics": "gymnasium-robotics", "mujoco": "mujoco",
                "gym_pusht": "gym-pusht", "pymunk": "pymunk", "h5py": "h5py"}
ARMS = dict(sorted((parse_arm(a) for a in DEFAULT_ARMS), key=lambda arm: arm[0] != "diffusion"))  # DP first, as in the paper
ARM_LABELS = {"diffusion": "DP", "drift": "Drift"}


class TaskUnavailable(Exception):
    """A task that cannot be trained here; the message goes into its table row."""


def task_config(name: str) -> DictConfig:
    """configs/task/<name>.yaml, for a task the table knows."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; the table knows {', '.join(TASKS)}")
    return OmegaConf.load(ROOT / "configs" / "task" / f"{name}.yaml")


def require_simulator(task: DictConfig) -> None:
    """Import the task's env module; a missing simulator is TaskUnavailable naming the pip package."""
    module = task.env._target_.rsplit(".", 1)[0]
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as err:
        missing = (err.name or "").split(".")[0]
        if missing in PIP_PACKAGES:
            raise TaskUnavailable(f"{task.name}: its simulator {missing!r} is not installed (`pip install {PIP_PACKAGES[missing]}`)") from err
        raise TaskUnavailable(f"{task.name}: importing its env {module} failed: {err}") from err


def check_dataset(task: DictConfig, path: Path) -> int:
    """The number of demos in a robomimic hdf5, refused (ValueError) when it was made for another task: its
    expert_task / image attrs or its obs keys do not match the task config."""
    with h5py.File(path, "r") as f:
        wanted, made = task.generate.task, f.attrs.get("expert_task")
        if made is not None and made != wanted:
            raise ValueError(f"{path} holds demonstrations of {made!r} (its expert_task attr), not {wanted!r} as task "
                             f"{task.name} needs: delete it (it is remade on the next run) or point task.dataset.path elsewhere")
        if made is not None and bool(f.attrs.get("expert_image", False)) != bool(task.generate.get("image", False)):
            raise ValueError(f"{path} was made with image={bool(f.attrs['expert_image'])} but task {task.name} needs "
                             f"image={bool(task.generate.get('image', False))}: delete it or point task.dataset.path elsewhere")
        demos = f["data"]
        have = set(demos[next(iter(demos))]["obs"]) if len(demos) else set()
        missing = sorted(set(task.dataset.obs_keys) - have)
        if missing:
            raise ValueError(f"{path} lacks obs keys {missing} of task {task.name} (it has {sorted(have)}): "
                             "a dataset of another task? Delete it or point task.dataset.path elsewhere")
        return len(demos)


def prepare_demos(task: DictConfig, demos: int) -> int | None:
    """Make sure the task's dataset exists with at least `demos` demonstrations (remaking it larger when
    needed: the expert's attempt i always uses scene i, so a larger file starts with the smaller one's
    demos); returns how many the file holds (None for a shipped dataset)."""
    path = ROOT / task.dataset.path
    if "generate" not in task:
        if not path.exists():
            raise TaskUnavailable(f"{task.name}: dataset {task.dataset.path} is missing (see data/README.md)")
        return None
    have = check_dataset(task, path) if path.exists() else 0
    if have >= demos:
        return have
    from data.generate import generate  # imported lazily: it pulls in the simulators

    print(f"{task.name}: {task.dataset.path} has {have} demos, making {demos} with the scripted expert", flush=True)
    try:
        generate(task.generate.task, path, demos, image=bool(task.generate.get("image", False)))
    except (ValueError, ModuleNotFoundError, RuntimeError) as err:  # no expert for the task yet, or it fails too often
        raise TaskUnavailable(f"{task.name}: cannot make its demonstrations: {err}") from err
    return demos


def demo_orders(path: Path) -> list[list[str]] | None:
    """Each demo's order (its "order" attr from data.generate), or None when the file predates them."""
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
    task = task_config(name)
    try:
        require_simulator(task)
        entry["demos"] = prepare_demos(task, args.demos or TASKS[name].dp_demos or 0)
    except (TaskUnavailable, ValueError) as err:
        entry["unavailable"] = str(err)
        print(f"{name}: not run: {err}", file=sys.stderr, flush=True)
        save()
        return
    entry.pop("unavailable", None)
    overrides = [f"task.max_train_episodes={args.demos}"] if args.demos and "generate" in task else []
    setting = {"minutes": args.minutes_per_arm, "rollouts": args.rollouts, "device": args.device,
               "demos": args.demos or TASKS[name].dp_demos, "overrides": overrides, "curve_rollouts": args.curve_rollouts}
    if name in MULTIMODAL:
        orders = demo_orders(ROOT / task.dataset.path)
        entry["demo_modes"] = None if orders is None else {"n": len(orders), "shares": mode_shares(orders)}
    for arm, arm_overrides in ARMS.items():
        previous = entry["arms"].get(arm)
        if previous and previous["setting"] == {**setting, "arm": arm_overrides}:
            print(f"{name} / {arm}: already measured", flush=True)
            continue
        ns = argparse.Namespace(name="table", task=name, minutes=args.minutes_per_arm, device=args.device, rollouts=args.rollouts,
                                n_envs=args.n_envs, overrides=overrides, curve_rollouts=args.curve_rollouts)
        entry["arms"][arm] = {**run_arm(arm, arm_overrides, ns), "setting": {**setting, "arm": arm_overrides}}
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
        spec, entry = TASKS[name], done["tasks"].get(name, {"arms": {}})
        measured = {arm: entry["arms"].get(arm) for arm in arms}

        def both(fact) -> str:  # the DP and Drift values of one fact, side by side
            return " / ".join(fact(measured[a]) if measured[a] else "—" for a in arms)
        modes_col = ""
        if name in MULTIMODAL and "unavailable" not in entry:
            demo = entry.get("demo_modes")
            modes = sorted(demo["shares"]) if demo else []
            cells = [f"demos {mode_cell(demo['shares'], modes, demo['n']) if demo else 'orders not recorded (the file predates them: delete it to remake)'}"]
            for arm in arms:
                if measured[arm]:
                    orders = successful_orders(measured[arm]["episodes"])
                    cells.append(f"{ARM_LABELS[arm]} {mode_cell(mode_shares(orders) if orders else {}, modes, len(orders))}")
            modes_col = "; ".join(cells)
            legend.append(f"{name} modes, in cell order: " + " | ".join(modes or ["(none recorded)"]))
        for i, metric in enumerate(spec.metrics):
            row = {"task": name, "obs": spec.obs, "metric": metric, "paper DP": _paper(spec.paper_dp[i]),
                   "paper Drift": _paper(spec.paper_drift[i])}
            if "unavailable" in entry:
                row.update({"DP (ours)": f"not run: {entry['unavailable']}", "Drift (ours)": "—"})
            else:
                row.update({f"{ARM_LABELS[a]} (ours)": _pm(measured[a]["result"], metric) if measured[a] else "pending" for a in arms})
            last = i == len(spec.metrics) - 1 and "unavailable" not in entry
            row["mode balance (successes)"] = modes_col if last else ""
            row["steps DP / Drift"] = both(lambda m: str(m["train"]["steps"])) if last else ""
            row["budget min"] = both(lambda m: f"{m['setting']['minutes']:g}") if last else ""
            row["NFE DP / Drift"] = both(lambda m: str(m["result"]["nfe"])) if last else ""
            row["latency ms DP / Drift"] = both(lambda m: f"{m['result']['latency_batch1_ms']['p50']:.2f}") if last else ""
            row["demos"] = str(entry.get("demos") or "shipped") if last else ""
            rows.append(row)
    return rows, legend


def headline_metric(name: str) -> str:
    """The metric a task's learning curve shows: mean_score where DP reports it, else its hardest stage."""
    metrics = TASKS[name].metrics
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
    parser.add_argument("--figures", type=Path, default=ROOT / "docs" / "figures", help="where the learning-curve PNGs go")
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
