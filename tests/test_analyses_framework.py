"""The analyses framework: verdict logic, results on disk, registry, the check / reproduce commands."""
from __future__ import annotations

import argparse
import json
import math
import types

import pandas as pd
import pytest

from analyses import check_cli, registry, reproduce_cli, runner
from analyses.common import (AnalysisResult, Check, check_at_least, check_at_most, check_between, check_close,
                             format_checks, load_result, scale_params, write_table)
from gradscope import cli


def test_bound_checks_decide_on_the_right_side():
    assert check_at_most("C1", "q", 1.0, 1.0).verdict == "holds"
    assert check_at_most("C1", "q", 1.01, 1.0, rtol=0).verdict == "violated"
    assert check_at_most("C1", "q", math.inf, 1.0).verdict == "violated"
    assert check_at_most("C1", "q", math.nan, 1.0).verdict == "violated"
    assert check_at_most("C1", "q", 0.5, math.nan).verdict == "inconclusive"
    assert check_at_least("C6", "q", 0.99, 1.0, rtol=0).verdict == "violated"
    assert check_at_least("C6", "q", 0.99, 1.0, rtol=0.02).verdict == "holds"
    assert check_between("C6", "q", 3.5, 1.0, 3.0).verdict == "violated"
    assert check_between("C6", "q", 0.5, 1.0, 3.0).verdict == "violated"


def test_close_check_has_an_inconclusive_band():
    assert check_close("C5", "q", 1.04, 1.0, rtol=0.05).verdict == "holds"
    assert check_close("C5", "q", 1.10, 1.0, rtol=0.05, inconclusive_rtol=0.2).verdict == "inconclusive"
    assert check_close("C5", "q", 1.30, 1.0, rtol=0.05, inconclusive_rtol=0.2).verdict == "violated"
    assert check_close("C5", "q", 0.70, 1.0, rtol=0.05).verdict == "violated"
    with pytest.raises(ValueError, match="inconclusive_rtol"):
        check_close("C5", "q", 1.0, 1.0, rtol=0.1, inconclusive_rtol=0.05)


def test_only_failing_must_hold_checks_fail_a_result():
    soft = check_at_most("C7", "q", 2.0, 1.0, must_hold=False)
    hard = check_at_most("C7", "q", 2.0, 1.0)
    assert soft.ok and not hard.ok
    assert AnalysisResult("C7", "t", "tiny", checks=[soft]).ok
    assert not AnalysisResult("C7", "t", "tiny", checks=[soft, hard]).ok
    with pytest.raises(ValueError, match="verdict"):
        Check("C1", "q", 1.0, 1.0, "maybe")


def test_result_writes_tables_checks_and_summary(tmp_path):
    result = AnalysisResult("C9", "a title", "tiny", out=tmp_path)
    table = pd.DataFrame({"x": [1, 2], "y": [0.5, 0.25]})
    path = result.add_table("c9_data", table)
    result.add(check_at_most("C9", "y max", 0.5, 1.0), check_close("C9", "y", 0.3, 0.25, rtol=0.1, must_hold=False))
    result.save()
    assert pd.read_csv(path).equals(table)
    checks = pd.read_csv(tmp_path / "checks.csv")
    assert list(checks["verdict"]) == ["holds", "violated"]
    summary = load_result(tmp_path)
    assert summary["ok"] is True and summary["tables"] == ["c9_data.csv"]
    assert summary["checks"][0]["bound_or_prediction"] == 1.0
    with pytest.raises(FileNotFoundError):
        load_result(tmp_path / "missing")
    with pytest.raises(ValueError, match="bare file stem"):
        write_table(table, tmp_path, "a/b")


def test_format_checks_lists_every_column_and_marks_must_hold():
    text = format_checks([check_at_most("C1", "grad norm", 0.5, 1.0),
                          check_close("C5", "ratio", 0.3, 0.25, rtol=0.05, must_hold=False)])
    header, rule, first, second = text.splitlines()
    assert header.split() == ["claim", "quantity", "measured", "bound/prediction", "verdict"]
    assert first.startswith("C1") and first.endswith("holds *") and "<= 1" in first
    assert second.endswith("violated") and "~ 0.25" in second


def test_scales_and_names_are_validated_in_one_line():
    with pytest.raises(ValueError, match="unknown scale 'huge'; valid choices: 'tiny', 'small', 'paper'"):
        scale_params("huge", {"tiny": {}, "small": {}, "paper": {}})
    assert registry.parse_names("C5, c1") == ["c1", "c5"]
    assert registry.parse_names(None) == list(registry.NAMES)
    assert registry.normalize_name("c6_strict") == "c6"
    with pytest.raises(ValueError, match="unknown analysis 'C9'; valid choices: c1"):
        registry.parse_names("C1,C9")


def test_registry_finds_the_analysis_modules_lazily():
    found = registry.available()
    assert found["c5"] == "analyses.c5_lecun" and found["c6"] == "analyses.c6_strict"
    assert found["c7"] == "analyses.c7_bidirectional"
    module = registry.load("C6")
    assert module.CLAIM == "C6" and callable(module.run)


def _fake(verdict: str | None, *, must_hold: bool = True) -> types.ModuleType:
    module = types.ModuleType("fake_analysis")
    module.CLAIM, module.TITLE = "C9", "fake"

    def run(scale, out, seed=0):
        if verdict is None:
            raise RuntimeError("boom")
        check = Check("C9", "planted", 2.0, 1.0, verdict, must_hold, "<=")
        return AnalysisResult("C9", "fake", scale, checks=[check], out=out)

    module.run = run
    return module


@pytest.mark.parametrize("verdict, must_hold, code", [("holds", True, 0), ("violated", True, 1),
                                                      ("violated", False, 0), ("inconclusive", True, 1)])
def test_check_exit_code_follows_must_hold_verdicts(monkeypatch, capsys, verdict, must_hold, code):
    monkeypatch.setattr(registry, "load", lambda name: _fake(verdict, must_hold=must_hold))
    args = argparse.Namespace(scale="tiny", only="C1", seed=0, out=None)
    assert check_cli.execute(args) == code
    out = capsys.readouterr().out
    assert "planted" in out and verdict in out


def test_a_crashing_or_missing_analysis_is_reported_not_raised(monkeypatch, tmp_path):
    monkeypatch.setattr(registry, "load", lambda name: _fake(None))
    outcome = runner.run_selected(["c1"], "tiny", tmp_path, progress=None)
    assert not outcome.ok and "RuntimeError: boom" in outcome.errors["c1"]
    monkeypatch.undo()
    monkeypatch.setattr(registry, "module_name", lambda name: None)
    with pytest.raises(registry.AnalysisUnavailable, match="no module"):
        registry.load("c3")
    outcome = runner.run_selected(["c3"], "tiny", tmp_path, progress=None)
    assert outcome.exit_code() == 1 and "no module" in outcome.report()


def test_reproduce_writes_each_analysis_into_its_folder(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(registry, "load", lambda name: _fake("holds"))
    args = argparse.Namespace(names=["c2", "C4"], all=False, scale="small", out=tmp_path, seed=1)
    assert reproduce_cli.execute(args) == 0
    for name in ("c2", "c4"):
        summary = json.loads((tmp_path / name / "result.json").read_text())
        assert summary["scale"] == "small" and "seed 1" in summary["notes"][-1]
    with pytest.raises(ValueError, match="or pass --all"):
        reproduce_cli.execute(argparse.Namespace(names=[], all=False, scale="tiny", out=tmp_path, seed=0))
    with pytest.raises(ValueError, match="not both"):
        reproduce_cli.execute(argparse.Namespace(names=["c1"], all=True, scale="tiny", out=tmp_path, seed=0))


def test_bad_input_through_the_dispatcher_is_one_line_exit_2(capsys, tmp_path):
    assert cli.main(["check", "--scale", "huge"]) == 2
    assert capsys.readouterr().err.strip() == (
        "gradscope check: error: unknown scale 'huge'; valid choices: 'tiny', 'small', 'paper'")
    assert cli.main(["reproduce", "c42", "--out", str(tmp_path)]) == 2
    assert "unknown analysis 'c42'" in capsys.readouterr().err


@pytest.mark.slow
def test_check_c5_c6_at_tiny_scale_exits_0(capsys):
    assert cli.main(["check", "--only", "C5,C6", "--scale", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "C5" in out and "C6" in out and "-> OK" in out and "violated *" not in out


def test_an_analysis_training_run_can_be_regenerated_in_place(tmp_path):
    from analyses.training import train_run

    settings = {"dataset": "ring8", "iterations": 3, "batch_size": 16, "seed": 0}
    first, _ = train_run(tmp_path / "run", **settings)
    again, result = train_run(tmp_path / "run", **settings)
    assert result.state == "done"
    pd.testing.assert_frame_equal(first.scalars, again.scalars)
