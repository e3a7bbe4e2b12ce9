"""bench/image_gen_levers.py without training: arm parsing, which arms share the MAE, the judge and MAE copies, resuming
from result.json and the table; and the demo's lever options reaching the composed hydra configs."""
import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from bench.image_gen_levers import Arm, Budget, load_result, mae_sources, main, parse_arms, render, run_arms
from image_gen.demo_mnist import compose_config, generator_overrides, mae_overrides, parse_options

MINUTES = 10.0
BUDGET = Budget(minutes=MINUTES)


def fake_result(args: list[str], alphas=(1.0, 2.0, 2.5), steps: int = 1800) -> dict:
    """A result.json as demo_mnist writes it, for the options these arguments give."""
    guidance = [{"alpha": a, "accuracy": 0.8 + 0.05 * a, "fid": 100.0 / a} for a in alphas]
    best = min(guidance, key=lambda r: r["fid"])
    return {"judge_heldout_accuracy": 0.979, "fid_floor": 1.25, "best_alpha": best["alpha"], "best": best,
            "guidance": guidance, "generator_steps": steps, "generator_train_minutes": 10.02, "minutes": 12.5,
            "options": OmegaConf.to_container(parse_options(args))}


class FakeDemo:
    """Stands in for demo_mnist.py: records whether an arm found a judge / MAE in place, "trains" what is missing (a
    marker naming the arm) and writes result.json."""

    def __init__(self) -> None:
        self.runs: list[tuple[str, bool, bool]] = []

    def __call__(self, args: list[str]) -> None:
        out = Path(parse_options(args).out)
        self.runs.append((out.name, (out / "judge" / "judge.json").exists(), (out / "mae" / "encoder.json").exists()))
        for part, marker in (("judge", "judge.json"), ("mae", "encoder.json")):
            if not (out / part).exists():
                (out / part).mkdir(parents=True)
                (out / part / marker).write_text(json.dumps({"trained_by": out.name}))
        (out / "result.json").write_text(json.dumps(fake_result(args)))


def trained_by(part: Path) -> str:
    """The arm whose FakeDemo run made this judge/ or mae/ directory."""
    return json.loads(next(part.iterdir()).read_text())["trained_by"]


def test_arms_parse_into_names_and_demo_overrides():
    arms = parse_arms(["baseline=", "stem1=mae_stem_stride=1",
                       "mix=n_gen=32 generator_set=['feature.patch_sizes=[4]',feature.raw=false]"])
    assert arms == [Arm("baseline", ()), Arm("stem1", ("mae_stem_stride=1",)),
                    Arm("mix", ("n_gen=32", "generator_set=['feature.patch_sizes=[4]',feature.raw=false]"))]


@pytest.mark.parametrize("texts, message", [
    (["n_gen"], r"arm 'n_gen' needs a name: write 'name=key=value \.\.\.'"),
    (["=n_gen=32"], "needs a name"),
    (["../up=n_gen=32"], "needs a name"),
    (["gen32=n_gen=32 32"], r"arm 'gen32': '32' is not key=value"),
    (["short=minutes=5"], "arm 'short': minutes is set by the bench for every arm"),
    (["typo=n_gens=32"], r"arm 'typo': not DemoOptions overrides \(image_gen/demo_mnist.py\)"),
    (["a=", "b=n_gen=8", "a=n_gen=32"], r"arm names given more than once: a; .* give every arm its own name"),
])
def test_bad_arms_are_refused_with_the_problem_and_the_fix(texts, message):
    with pytest.raises(ValueError, match=message):
        parse_arms(texts)


def test_the_command_line_names_a_bad_arm_before_anything_runs(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr("sys.argv", ["image_gen_levers.py", "--minutes", "10", "--out", str(tmp_path), "--arms", "baseline=",
                                     "gen32"])
    with pytest.raises(SystemExit):
        main()
    assert "--arms: arm 'gen32' needs a name" in capsys.readouterr().err and not any(tmp_path.iterdir())


def test_only_arms_that_change_the_mae_options_train_an_mae_of_their_own():
    arms = parse_arms(["baseline=", "gen32=n_gen=32 generator_set=[feature.raw=false]", "stem1=mae_stem_stride=1",
                       "mae600=mae_steps=600", "stem1_gen32=mae_stem_stride=1 n_gen=32",
                       "wide=mae_set=[encoder.width=32]"])
    assert mae_sources(arms) == {"baseline": None, "gen32": "baseline", "stem1": None, "mae600": None,
                                 "stem1_gen32": "stem1", "wide": None}


def test_arms_get_the_first_arms_judge_and_a_shared_mae_and_finished_arms_are_read_back(tmp_path):
    arms = parse_arms(["baseline=", "gen32=n_gen=32", "stem1=mae_stem_stride=1",
                       "stem1_ema=mae_stem_stride=1 ema_decay=0.99"])
    demo = FakeDemo()
    results = run_arms(arms, tmp_path, BUDGET, demo)
    # (arm, found a judge, found an MAE): the reference trains both; stem1 trains its own MAE, which stem1_ema reuses
    assert demo.runs == [("baseline", False, False), ("gen32", True, True), ("stem1", True, False),
                         ("stem1_ema", True, True)]
    assert [trained_by(tmp_path / arm.name / "judge") for arm in arms] == ["baseline"] * 4
    assert [trained_by(tmp_path / arm.name / "mae") for arm in arms] == ["baseline", "baseline", "stem1", "stem1"]
    assert [r["options"]["n_gen"] for r in results] == [16, 32, 16, 16] and not list(tmp_path.glob("*/*.partial"))
    assert {r["options"]["minutes"] for r in results} == {MINUTES} and {r["options"]["steps"] for r in results} == {None}

    demo.runs.clear()
    assert run_arms(arms, tmp_path, BUDGET, demo) == results and demo.runs == []  # all read back, none run again


def test_a_budget_of_steps_reaches_every_arm_and_a_minutes_result_is_not_taken_for_it(tmp_path):
    arms = parse_arms(["baseline=", "lr1e-3=lr=1e-3"])
    results = run_arms(arms, tmp_path, Budget(steps=1000), FakeDemo())
    assert [(r["options"]["steps"], r["options"]["minutes"], r["options"]["lr"]) for r in results] == [
        (1000, None, 4e-3), (1000, None, 1e-3)]
    with pytest.raises(ValueError, match=r"baseline/result.json was run with other options"):
        run_arms(arms, tmp_path, BUDGET, FakeDemo())
    for wrong in ({}, {"minutes": 22.0, "steps": 1000}):
        with pytest.raises(ValueError, match="give a budget of minutes or of steps, not both or neither"):
            Budget(**wrong)


def test_a_result_run_with_other_options_is_refused_before_any_arm_runs(tmp_path):
    (tmp_path / "gen32").mkdir()
    (tmp_path / "gen32" / "result.json").write_text(json.dumps(fake_result([f"out={tmp_path / 'gen32'}", "n_gen=64"])))
    demo = FakeDemo()
    with pytest.raises(ValueError, match=r"gen32/result.json was run with other options .* give the arm another name"):
        run_arms(parse_arms(["baseline=", "gen32=n_gen=32"]), tmp_path, BUDGET, demo)
    assert demo.runs == []
    assert load_result(Arm("other", ()), tmp_path, BUDGET) is None


def test_the_table_has_one_row_per_arm_from_the_result_files(tmp_path):
    arms = parse_arms(["baseline=", "no_alpha1=alphas=[2.0,3.0]"])
    results = [fake_result([]), fake_result(["alphas=[2.0,3.0]"], alphas=(2.0, 3.0), steps=12345)]
    (tmp_path / "baseline" / "run").mkdir(parents=True)  # the baseline logged step 750's evaluation; no_alpha1 nothing
    (tmp_path / "baseline" / "run" / "metrics.jsonl").write_text("\n".join(json.dumps(row) for row in [
        {"step": 750, "loss/drift": 99.0, "lr": 4.79e-4}, {"step": 500, "eval/accuracy_alpha2": 0.1, "eval/fid_alpha2": 900.0},
        {"step": 750, "eval/accuracy_alpha1": 0.3, "eval/accuracy_alpha2": 0.523, "eval/fid_alpha2": 271.312}]))
    text = render(arms, results, "title line", tmp_path, 750)
    title, blank, head, rule, *rows = text.splitlines()
    assert (title, blank) == ("title line", "")
    assert head == ("| arm | overrides | generator steps | train min | best alpha | accuracy (best) | FID (best) "
                    "| FID / floor (best) | accuracy (alpha 1) | FID (alpha 1) | step 750: accuracy / FID (alpha 2), lr |")
    assert rows == ["| baseline | (defaults) | 1,800 | 10.0 | 2.5 | 92.5% | 40.00 | 32.0 | 85.0% | 100.00 | 52.3% / 271.31, 4.8e-04 |",
                    "| no_alpha1 | alphas=[2.0,3.0] | 12,345 | 10.0 | 3 | 95.0% | 33.33 | 26.7 | - | - | - |"]


def test_the_demo_levers_reach_the_composed_configs():
    opts = parse_options(["mae_stem_stride=1", "mae_set=[encoder.width=32,mae.mask_ratio=0.75]", "model=tiny",
                          "ema_decay=0.99", "lr_schedule=constant", "queue_push=64",
                          "generator_set=['feature.patch_sizes=[4]',feature.raw=false,queue.per_class=256]"])
    mae = compose_config("mae", mae_overrides(opts, Path("mae")))
    assert (mae.encoder.stem_stride, mae.encoder.width, mae.mae.mask_ratio) == (1, 32, 0.75)
    cfg = compose_config("train", generator_overrides(opts, Path("mae"), Path("run")))
    assert (cfg.model.width, cfg.optim.ema_decay, cfg.optim.schedule) == (96, 0.99, "constant")
    assert (cfg.queue.push_per_step, cfg.queue.per_class) == (64, 256)
    assert (list(cfg.feature.patch_sizes), cfg.feature.raw) == ([4], False)


def test_the_demo_defaults_are_the_lever_table_winners():
    """image_gen/README.md's levers: LR 4e-3, 2x2 and 4x4 pixel-patch fields, the absolute position table, 4 registers,
    24 minutes."""
    opts = parse_options([])
    assert compose_config("mae", mae_overrides(opts, Path("mae"))).encoder.stem_stride == 2
    cfg = compose_config("train", generator_overrides(opts, Path("mae"), Path("run")))
    assert (cfg.model.width, cfg.model.patch_size, cfg.optim.ema_decay, cfg.optim.schedule) == (128, 4, 0.995, "cosine")
    assert (cfg.queue.push_per_step, list(cfg.feature.patch_sizes), cfg.feature.raw) == (128, [2, 4], True)
    assert (cfg.optim.lr, list(cfg.feature.raw_patches), cfg.model.abs_pos_embed) == (4e-3, [2, 4], True)
    assert cfg.model.num_registers == 4
    assert (cfg.train.steps, cfg.train.max_minutes, cfg.batch.n_gen) == (None, 24.0, 16)
