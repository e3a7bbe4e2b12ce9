"""The MNIST demo's quality levers at one budget: one demo run per arm, then one markdown table.

    python bench/image_gen_levers.py --minutes 22 --out outputs/image_gen/levers --arms \\
        "baseline=" "stem1=mae_stem_stride=1" "gen32=n_gen=32" "paper_temps=temperatures=[0.02,0.05,0.2]"
    python bench/image_gen_levers.py --steps 1000 --out outputs/image_gen/levers_steps --arms "baseline=" "lr1e-3=lr=1e-3"

An arm is `name=` followed by DemoOptions overrides (image_gen/demo_mnist.py; list values as YAML, e.g.
"generator_set=['feature.patch_sizes=[4]',feature.raw=false]"). Each arm runs `image_gen/demo_mnist.py
out=<out>/<name> minutes=<minutes> steps=null <overrides>` (or `steps=<steps> minutes=null`), alone and one after
the other. A budget of minutes is what a user's run gets, and the one for levers that change a step's cost (n_gen,
the model's size); the steps it buys move with the machine's speed, so levers that leave a step's cost alone (LR,
EMA, position table) compare more cleanly at a budget of steps. Every arm is judged by
the first arm's judge (copied in before it runs), and reuses the MAE of the first arm with the same MAE options
(mae_steps, mae_stem_stride, mae_set ...): only an arm that changes them trains an MAE of its own. Resumable: an
arm with a result.json is read back, not run again (refused when it ran with other options); a killed arm resumes
its generator from its checkpoint. Writes <out>/levers.md and prints it: per arm the final guidance scores and the
alpha-2 evaluation at one step (--at-step) with the LR there (a step's evaluation does not move with the machine's
speed, but under a budget of minutes its place on the LR schedule does). Run it alone
(`flock /tmp/cpu.lock chrt -f 10 python bench/image_gen_levers.py ...`): a budget of minutes is wall-clock.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from drift_policy.cli import positive_float, positive_int
from drift_policy.evaluation import markdown_table
from image_gen.demo_mnist import mae_overrides, parse_options

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "image_gen" / "demo_mnist.py"
BENCH_KEYS = ("out", "minutes", "steps", "restart")  # set by the bench for every arm
ARM_NAME = re.compile(r"\w[\w.-]*")


@dataclass(frozen=True)
class Arm:
    name: str
    overrides: tuple[str, ...]


def parse_arm(text: str) -> Arm:
    """'name=key=value ...' -> Arm; ValueError naming the problem and the fix."""
    name, sep, rest = text.partition("=")
    if not sep or not ARM_NAME.fullmatch(name):
        raise ValueError(f"arm {text!r} needs a name: write 'name=key=value ...' (name: letters, digits, _ . -), "
                         "e.g. 'stem1=mae_stem_stride=1', or 'baseline=' for the defaults")
    arm = Arm(name, tuple(rest.split()))
    for override in arm.overrides:
        key, sep, _ = override.partition("=")
        if not sep:
            raise ValueError(f"arm {name!r}: {override!r} is not key=value (spaces separate overrides)")
        if key in BENCH_KEYS:
            raise ValueError(f"arm {name!r}: {key} is set by the bench for every arm ({', '.join(BENCH_KEYS)}); drop it")
    try:
        parse_options(list(arm.overrides))
    except OmegaConfBaseException as err:
        raise ValueError(f"arm {name!r}: not DemoOptions overrides (image_gen/demo_mnist.py): {err}") from None
    return arm


def parse_arms(texts: list[str]) -> list[Arm]:
    """Arms with distinct names, in the order given."""
    arms = [parse_arm(text) for text in texts]
    names = [arm.name for arm in arms]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise ValueError(f"arm names given more than once: {', '.join(twice)}; each arm runs in <out>/<name>, "
                         "so give every arm its own name")
    return arms


@dataclass(frozen=True)
class Budget:
    """Each arm's generator budget: wall-clock minutes (what a user's run gets) or steps (what the machine's speed
    does not move; right for levers that leave a step's cost alone)."""
    minutes: float | None = None
    steps: int | None = None

    def __post_init__(self) -> None:
        if (self.minutes is None) == (self.steps is None):
            raise ValueError("give a budget of minutes or of steps, not both or neither")

    def args(self) -> list[str]:
        return [f"minutes={_yaml(self.minutes)}", f"steps={_yaml(self.steps)}"]

    def __str__(self) -> str:
        return f"{self.minutes:g} min" if self.minutes is not None else f"{self.steps:,} steps"


def _yaml(value: float | int | None) -> str:
    return "null" if value is None else str(value)


def demo_args(arm: Arm, out: Path, budget: Budget) -> list[str]:
    """The demo's key=value arguments for one arm at the budget."""
    return [f"out={out / arm.name}", *budget.args(), *arm.overrides]


def mae_sources(arms: list[Arm]) -> dict[str, str | None]:
    """arm name -> the earlier arm whose MAE it reuses (the first with the same mae.yaml overrides); None: its own."""
    first: dict[tuple[str, ...], str] = {}
    sources = {}
    for arm in arms:
        options = tuple(mae_overrides(parse_options(list(arm.overrides)), Path("mae")))
        sources[arm.name] = first.get(options)
        first.setdefault(options, arm.name)
    return sources


def copy_once(src: Path, dst: Path) -> None:
    """Copy the directory src to dst unless dst exists, through a temporary name: a kill leaves no half copy."""
    if dst.exists():
        return
    partial = dst.with_name(dst.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(src, partial)
    partial.rename(dst)


def load_result(arm: Arm, out: Path, budget: Budget) -> dict[str, Any] | None:
    """The arm's result.json, None when it has not finished; ValueError when it ran with other options."""
    path = out / arm.name / "result.json"
    if not path.exists():
        return None
    result = json.loads(path.read_text())
    if result["options"] != OmegaConf.to_container(parse_options(demo_args(arm, out, budget))):
        raise ValueError(f"{path} was run with other options ({result['options']}); give the arm another name, "
                         "another --out, or delete its directory")
    return result


def run_demo(args: list[str]) -> None:
    """image_gen/demo_mnist.py with these arguments, from the repository root, its output streamed."""
    code = subprocess.run([sys.executable, str(DEMO), *args], cwd=ROOT).returncode
    if code:
        raise SystemExit(f"demo_mnist.py {shlex.join(args)} exited with {code}; the same command resumes "
                         "(finished arms are read back)")


def run_arms(arms: list[Arm], out: Path, budget: Budget,
             run: Callable[[list[str]], None] = run_demo) -> list[dict[str, Any]]:
    """Every arm's result, running the arms that have none; finished results are checked before any arm runs."""
    results = {arm.name: load_result(arm, out, budget) for arm in arms}
    sources, reference = mae_sources(arms), arms[0].name
    for arm in arms:
        if results[arm.name] is None:
            if arm.name != reference:
                copy_once(out / reference / "judge", out / arm.name / "judge")
            if sources[arm.name]:
                copy_once(out / sources[arm.name] / "mae", out / arm.name / "mae")
            run(demo_args(arm, out, budget))
            results[arm.name] = load_result(arm, out, budget)
    return [results[arm.name] for arm in arms]


def at_alpha(result: dict[str, Any], alpha: float) -> tuple[str, str]:
    """(judge accuracy, FID) at one guidance scale, '-' when it was not sampled."""
    row = next((r for r in result["guidance"] if r["alpha"] == alpha), None)
    return (f"{100 * row['accuracy']:.1f}%", f"{row['fid']:.2f}") if row else ("-", "-")


def eval_at(metrics: Path, step: int) -> dict[str, float] | None:
    """The evaluation the run logged at `step` in its metrics.jsonl (eval/accuracy_alpha2 ...) with that step's `lr`,
    None when it has none."""
    rows = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
    at_step = {key: value for row in rows if row["step"] == step for key, value in row.items()}
    return at_step if "eval/accuracy_alpha2" in at_step and "lr" in at_step else None


def table_row(arm: Arm, result: dict[str, Any], step: int, at_step: dict[str, float] | None) -> dict[str, str]:
    """One arm's row from its result.json, and its alpha-2 evaluation at one step (`at_step`, None: not reached)."""
    best = result["best"]
    accuracy_1, fid_1 = at_alpha(result, 1.0)
    return {"arm": arm.name, "overrides": " ".join(arm.overrides) or "(defaults)",
            "generator steps": f"{result['generator_steps']:,}", "train min": f"{result['generator_train_minutes']:.1f}",
            "best alpha": f"{best['alpha']:g}", "accuracy (best)": f"{100 * best['accuracy']:.1f}%",
            "FID (best)": f"{best['fid']:.2f}", "FID / floor (best)": f"{best['fid'] / result['fid_floor']:.1f}",
            "accuracy (alpha 1)": accuracy_1, "FID (alpha 1)": fid_1,
            f"step {step:,}: accuracy / FID (alpha 2), lr": "-" if at_step is None else
            f"{100 * at_step['eval/accuracy_alpha2']:.1f}% / {at_step['eval/fid_alpha2']:.2f}, {at_step['lr']:.1e}"}


def header(budget: Budget, command: str) -> str:
    """What the table was measured with: budget, date, machine and command."""
    machine = f"{os.cpu_count()}-core {platform.processor() or platform.uname().machine}"
    return (f"MNIST demo levers: {budget} of generator training per arm, "
            f"{datetime.date.today().isoformat()}, {machine}; `{command}`")


def render(arms: list[Arm], results: list[dict[str, Any]], title: str, out: Path, step: int) -> str:
    """The header line, a blank line and the table (each arm's step-`step` evaluation read from <out>/<arm>/run)."""
    rows = [table_row(arm, result, step, eval_at(out / arm.name / "run" / "metrics.jsonl", step))
            for arm, result in zip(arms, results)]
    return f"{title}\n\n{markdown_table(rows)}\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    budget = parser.add_mutually_exclusive_group(required=True)
    budget.add_argument("--minutes", type=positive_float, help="wall-clock generator budget of EACH arm")
    budget.add_argument("--steps", type=positive_int, help="generator steps of EACH arm (the LR schedule ends with them)")
    parser.add_argument("--out", type=Path, default=Path("outputs/image_gen/levers"), help="arms run in <out>/<name>")
    parser.add_argument("--arms", nargs="+", required=True, metavar="NAME=OVERRIDES",
                        help="'name=key=value ...' DemoOptions overrides; the first arm's judge scores every arm")
    parser.add_argument("--at-step", type=positive_int, default=750,
                        help="also compare the arms at this generator step (a multiple of the demo's eval_every, 250; "
                             "750 is reached by every arm of a 22-minute table), with the LR there: the schedule follows "
                             "the clock, so an arm that got fewer steps is further down its cosine at a given step")
    args = parser.parse_args()
    try:
        arms = parse_arms(args.arms)
    except ValueError as err:
        parser.error(f"--arms: {err}")
    out = args.out.resolve()
    try:
        results = run_arms(arms, out, Budget(args.minutes, args.steps))
    except ValueError as err:
        raise SystemExit(str(err)) from None
    text = render(arms, results, header(Budget(args.minutes, args.steps), shlex.join(["python", *sys.argv])), out,
                  args.at_step)
    (out / "levers.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
