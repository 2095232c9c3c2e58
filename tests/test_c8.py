"""C8: SN vs BSSN verdict logic on synthetic grids, and a real (reduced) sweep through the machinery."""
from __future__ import annotations

import pandas as pd
import pytest

from analyses import c8_quality as c8


def _summary(collapsed_ssn, collapsed_bssn, modes_ssn, modes_bssn):
    rows = []
    for norm, collapsed, modes in (("ssn", collapsed_ssn, modes_ssn), ("bssn", collapsed_bssn, modes_bssn)):
        for seed, (flag, value) in enumerate(zip(collapsed, modes)):
            rows.append({"dataset": "cifar10", "norm": norm, "scale": 1.0, "seed": seed, "status": "done",
                         "collapsed": flag, "final_modes": value, "run": f"{norm}-{seed}"})
    return pd.DataFrame(rows)


def test_clear_evidence_holds_and_thin_evidence_is_inconclusive():
    clear = c8.quality_checks(_summary([True, True, False, True], [False] * 4, [2, 3, 8, 1], [8, 8, 8, 7]), "small")
    quality, collapse = clear
    assert collapse.verdict == "holds" and collapse.measured == pytest.approx(0.75)
    assert quality.verdict == "inconclusive"  # seed 2 is a tie: not every pair favours BSSN
    better = c8.quality_checks(_summary([False] * 4, [False] * 4, [2, 3, 4, 1], [8, 8, 8, 7]), "small")
    assert better[0].verdict == "holds" and better[1].verdict == "inconclusive"
    few = c8.quality_checks(_summary([True, True], [False, False], [1, 1], [8, 8]), "small")
    assert few[1].verdict == "inconclusive"  # fewer than MIN_RUNS runs per method
    reverse = c8.quality_checks(_summary([False] * 4, [True] * 4, [8] * 4, [1] * 4), "small")
    assert [c.verdict for c in reverse] == ["violated", "violated"]
    assert [c.verdict for c in c8.quality_checks(_summary([False] * 4, [True] * 4, [8] * 4, [1] * 4), "tiny")] \
        == ["inconclusive", "inconclusive"]
    assert not any(c.must_hold for c in clear + reverse)


def test_runs_unlike_the_rest_of_the_sweep_make_the_comparison_inconclusive():
    summary = _summary([False] * 4, [True] * 4, [8] * 4, [1] * 4).assign(unlike_sweep="")
    summary.loc[summary["norm"] == "ssn", "unlike_sweep"] = "ema 0.0 vs 0.99"
    (check,) = c8.quality_checks(summary, "small")
    assert check.verdict == "inconclusive" and check.measured == 4 and "ssn-0: ema 0.0 vs 0.99" in check.detail
    clean = c8.quality_checks(summary.assign(unlike_sweep=""), "small")
    assert [c.verdict for c in clean] == ["violated", "violated"]


def test_reduced_sweep_runs_end_to_end(tmp_path, monkeypatch):
    grids = {"ring8": {"base": {"iterations": 12, "batch-size": 32, "eval-every": 6, "eval-samples": 500},
                       "scales": [1.4], "seeds": 1},
             "digits": {"base": {"image-size": 8, "iterations": 8, "batch-size": 16, "eval-every": 4,
                                 "eval-samples": 200, "eval-metrics": "fid"}, "scales": [1.4], "seeds": 1}}
    monkeypatch.setitem(c8.PARAMS, "tiny", {"max_parallel": 2, "grids": grids})
    result = c8.run("tiny", tmp_path, seed=0)
    assert result.ok and not any(c.must_hold for c in result.checks)
    identity, *image_checks = result.checks
    assert identity.quantity.startswith("ring8") and identity.verdict == "holds" and identity.measured == 0.0
    assert [c.verdict for c in image_checks] == ["inconclusive", "inconclusive"]
    runs = result.tables["c8_runs"]
    assert sorted(runs["norm"]) == ["bssn", "bssn", "ssn", "ssn"] and (runs["status"] == "done").all()
    history = result.tables["c8_quality_history"]
    digits = history[history["dataset"] == "digits"]
    assert set(digits["step"]) == {0, 4, 8} and set(digits["metric"]) == {"digits_fid"}
    assert any(p.name == "c8_quality.png" for p in result.figures)
    assert all(0 < p.stat().st_size < 300 * 1024 for p in result.figures)
