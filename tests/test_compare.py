"""bench/compare.py's report on a measured screen: the paired differences and the low-score counts."""
from __future__ import annotations

import json
from pathlib import Path

from bench.compare import low_score_counts, paired_rows

SCREEN = Path(__file__).resolve().parents[1] / "bench" / "measured" / "pusht_20min_obsnoise.json"


def test_report_counts_the_stalls_and_pairs_each_arm_with_the_first():
    arms = json.loads(SCREEN.read_text())["arms"]
    picked = [(name, arms[name]) for name in ("drift", "diffusion", "to1")]
    assert low_score_counts(picked) == "drift 12, diffusion 4, to1 6"
    rows = paired_rows(picked)
    assert [row["arm"] for row in rows] == ["diffusion - drift", "to1 - drift"]
    assert rows[0]["mean_score"] == "+0.036 ± 0.015" and rows[1]["success_rate"] == "-0.115 ± 0.047"
