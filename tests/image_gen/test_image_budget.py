"""A wall-clock budget (train.max_minutes): the run stops at the first step past it with the cosine LR run out,
evaluations are not training time, and a killed run resumes with its clock instead of training a second budget."""
import json
import time
from pathlib import Path

import pytest
import torch

from drift_policy.training.checkpoint import load_checkpoint
from drift_policy.training.schedule import LRSchedule
from image_gen.demo_mnist import compose_config, generator_overrides, parse_options
from image_gen.trainer import lr_schedule, train

torch.set_num_threads(1)

BUDGET_MIN, LR, WARMUP = 0.03, 1e-3, 2  # WARMUP: the toy config's optim.warmup_steps
TIMED = ["train.steps=null", f"train.max_minutes={BUDGET_MIN}", "optim.schedule=cosine", f"optim.lr={LR}"]
SCHEDULE = LRSchedule(LR, "cosine", WARMUP, None, BUDGET_MIN)


class Killed(Exception):
    pass


def _step_rows(run_dir) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "lr" in r]


def _expected_lrs(rows: list[dict]) -> list[float]:
    """The LR of every logged step: the schedule at the step before it and the clock when that step ended."""
    before = [(0, 0.0)] + [(r["step"], r["time/train_seconds"]) for r in rows[:-1]]
    return [SCHEDULE(step, SCHEDULE.progress(step, seconds)) for step, seconds in before]


def test_minutes_budget_stops_at_the_budget_with_the_lr_run_out_and_evaluations_excluded(toy_config):
    pause = 2.5  # longer than the whole budget
    evaluations = []

    def slow_first_evaluation(model) -> dict[str, float]:
        time.sleep(pause if not evaluations else 0.0)
        evaluations.append(model)
        return {"eval/score": 0.0}

    out = train(toy_config(*TIMED, "train.eval_every=2", "train.checkpoint_every=1000"), slow_first_evaluation)
    rows = _step_rows(out.parent)
    seconds = [r["time/train_seconds"] for r in rows]
    assert seconds[-2] < 60 * BUDGET_MIN <= seconds[-1]  # stopped at the first step past the budget
    assert len(rows) > 3 and seconds[2] - seconds[1] < pause  # the evaluation after step 2 did not use the budget
    assert [r["lr"] for r in rows] == pytest.approx(_expected_lrs(rows), rel=1e-9)
    assert rows[-1]["lr"] < 0.5 * LR  # the cosine followed the clock to its end
    state = load_checkpoint(out.parent)
    assert state["step"] == rows[-1]["step"] and state["train_seconds"] == seconds[-1]
    assert json.loads((out.parent / "train_summary.json").read_text()) == {"steps": state["step"],
                                                                            "train_minutes": seconds[-1] / 60}


def test_a_killed_minutes_run_resumes_with_its_clock_and_a_finished_one_trains_no_more(toy_config):
    cfg = toy_config(*TIMED, "train.eval_every=2")

    def kill(model) -> dict[str, float]:
        raise Killed

    with pytest.raises(Killed):
        train(cfg, kill)  # "killed" right after step 2's checkpoint
    run_dir = Path(cfg.run_dir)
    killed = load_checkpoint(run_dir)
    assert killed["step"] == 2 and 0 < killed["train_seconds"] < 60 * BUDGET_MIN

    train(cfg)  # the same command resumes at step 2 with the clock it had
    rows = _step_rows(run_dir)
    seconds = [r["time/train_seconds"] for r in rows]
    assert [r["step"] for r in rows] == list(range(1, len(rows) + 1)) and len(rows) > 2
    assert seconds[1] == killed["train_seconds"] and all(a < b for a, b in zip(seconds, seconds[1:]))
    assert seconds[-2] < 60 * BUDGET_MIN <= seconds[-1]  # one budget in all, not one more after the kill
    assert [r["lr"] for r in rows] == pytest.approx(_expected_lrs(rows), rel=1e-9)  # the LR continued with the clock

    done = load_checkpoint(run_dir)
    train(cfg)  # launched again: the budget is spent, so nothing trains
    again = load_checkpoint(run_dir)
    assert (done["step"], done["train_seconds"]) == (rows[-1]["step"], seconds[-1])
    assert (again["step"], again["train_seconds"]) == (done["step"], done["train_seconds"])
    assert _step_rows(run_dir) == rows


@pytest.mark.parametrize("extra, message", [
    (["optim.schedule=linear"], r"optim.schedule must be one of \['constant', 'constant_with_warmup', 'cosine'\]"),
    (["train.steps=null"], "set a budget: train.steps and/or train.max_minutes"),
])
def test_bad_schedule_or_budget_settings_are_refused(toy_config, extra, message):
    with pytest.raises(ValueError, match=message):
        lr_schedule(toy_config(*extra))


def test_the_old_constant_with_warmup_name_is_the_constant_schedule(toy_config):
    schedule = lr_schedule(toy_config("optim.schedule=constant_with_warmup", "optim.lr=1.0", "train.steps=10"))
    assert [schedule(s, schedule.progress(s, 0.0)) for s in (0, 1, 9)] == [0.5, 1.0, 1.0]


def test_the_demo_passes_minutes_to_the_generator_as_its_wall_clock_budget():
    def budget(*args: str) -> tuple:
        overrides = generator_overrides(parse_options(list(args)), Path("mae"), Path("run"))
        train_cfg = compose_config("train", overrides).train
        return train_cfg.steps, train_cfg.max_minutes

    assert budget() == (None, 24.0)
    assert budget("minutes=20") == (None, 20.0)
    assert budget("minutes=null", "steps=1800") == (1800, None)
    assert budget("steps=1800") == (1800, 24.0)  # both: the earlier ends the run
