"""bench/compare.py's report on measured screens: the paired differences (one training run per arm, or several
pooled per evaluation seed) and the low-score counts."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.compare import low_score_counts, paired_rows
from drift_policy.evaluation import paired_difference, pooled_paired_difference

MEASURED = Path(__file__).resolve().parents[1] / "bench" / "measured"


def _arms(name: str) -> dict:
    return json.loads((MEASURED / name).read_text())["arms"]


def test_report_counts_the_stalls_and_pairs_each_arm_with_the_first():
    arms = _arms("pusht_20min_obsnoise.json")
    picked = [(name, [arms[name]]) for name in ("drift", "diffusion", "to1")]
    assert low_score_counts(picked) == "drift 12, diffusion 4, to1 6"
    rows = paired_rows(picked)
    assert [row["arm"] for row in rows] == ["diffusion - drift", "to1 - drift"]
    assert rows[0]["mean_score"] == "+0.036 ± 0.015" and rows[1]["success_rate"] == "-0.115 ± 0.047"


def test_two_training_runs_of_an_arm_pool_per_evaluation_seed():
    """The two 20-minute drift controls of 2026-12-07 as one arm of two runs: pooled per seed, the paired mean is the
    average of the two single-run paired means, and its error is smaller than either's."""
    morning, afternoon = _arms("pusht_20min_obsnoise.json")["drift"], _arms("pusht_20min_unexec.json")["drift"]
    lever = _arms("pusht_20min_unexec.json")["unexec0"]
    singles = [paired_difference(lever["episodes"], run["episodes"]) for run in (morning, afternoon)]
    pooled = pooled_paired_difference([lever["episodes"]], [morning["episodes"], afternoon["episodes"]])
    assert pooled["mean_score"] == pytest.approx((singles[0]["mean_score"] + singles[1]["mean_score"]) / 2)
    assert pooled["mean_score_se"] < min(s["mean_score_se"] for s in singles)
    assert low_score_counts([("drift", [morning, afternoon])]) == "drift 12 / 18"
    with pytest.raises(ValueError, match="same seeds"):
        pooled_paired_difference([lever["episodes"][:100]], [morning["episodes"]])
