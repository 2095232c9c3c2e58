"""The ``gradscope check`` printout: fits 100 columns, marks planted rows, ends with one verdict per claim.

The analyses are replaced by fakes returning fixed checks (the real planted cases of C1 and C3 among
them), so the printout is tested in well under a second; the analyses themselves are tested in
tests/test_c*.py.
"""
from __future__ import annotations

import argparse
import re
import types

import pytest

from analyses import c1_exploding, c3_curvature, check_cli, registry
from analyses.common import AnalysisResult, Check, check_at_most, check_close, planted
from analyses.report import CLAIM_VERDICTS, claim_verdict, format_table
from gradscope import cli

LONG = ("popular SN, SNDCGAN at init and after training: max ||grad_W_t D||_F / (||x|| prod_{i!=t} sigma_op) "
        "over every conv layer and every probe input (bound 2 as the paper states it)")
VERDICT_RE = re.compile(r"^(C\d)\s+(" + "|".join(CLAIM_VERDICTS) + r")\s{2,}\S")


@pytest.fixture(scope="module")
def real_planted() -> list[Check]:
    """The real planted counter-examples of C1 and C3 (and the must-hold checks on the same nets)."""
    return c1_exploding.planted_checks()[0] + c3_curvature.planted_check()[0]


def _checks(real_planted: list[Check]) -> dict[str, list[Check]]:
    c1 = [check_at_most("C1", LONG, 0.3, 1.0), *[c for c in real_planted if c.claim == "C1"]]
    c3 = [c for c in real_planted if c.claim == "C3"]
    c5 = [check_close("C5", "fan_in Var(W/sigma), 64x64, worst draw", 0.27, 0.25, rtol=0.15),
          check_at_most("C5", "SN as trained (power-iteration sigma): max |fan_in Var(W_eff) / pred - 1| " * 2,
                        0.59, 0.25, rtol=0, must_hold=False)]
    c7 = [check_at_most("C7", "init: distance from 1, BSN vs SN (c = 1)", 0.77, 0.73, must_hold=False)]
    return {"c1": c1, "c3": c3, "c5": c5, "c7": c7}


def _run_check(monkeypatch, capsys, checks: dict[str, list[Check]], *, wide: bool = False,
               broken: str | None = None) -> tuple[int, list[str]]:
    def load(name: str) -> types.ModuleType:
        module = types.ModuleType(f"fake_{name}")
        module.CLAIM, module.TITLE = name.upper(), "fake"

        def run(scale, out, seed=0):
            if name == broken:
                raise RuntimeError("boom " + "and a very long explanation of why " * 5)
            return AnalysisResult(name.upper(), "fake", scale, checks=list(checks[name]), out=out)

        module.run = run
        return module

    monkeypatch.setattr(registry, "load", load)
    only = ",".join(sorted(checks) + ([broken] if broken and broken not in checks else []))
    args = argparse.Namespace(scale="tiny", only=only, seed=0, out=None, wide=wide)
    code = check_cli.execute(args)
    return code, capsys.readouterr().out.splitlines()


def _rows(lines: list[str]) -> list[tuple[str, str]]:
    """(claim, verdict label) of every table row, read back from the printout."""
    rows = []
    for line in lines[2:]:
        if not line.strip():
            break
        if line[:2] in {f"C{i}" for i in range(10)}:
            rows.append((line.split()[0], re.split(r"\s{2,}", line.strip())[-1]))
    return rows


def _verdict_from_labels(labels: list[str]) -> str:
    """The claim rule of analyses/report.py, written again from the printed labels alone."""
    must = [label[:-2] for label in labels if label.endswith(" *")]
    plants = [label.split()[0] for label in labels if label.endswith("(planted)")]
    reported = [label for label in labels if not label.endswith((" *", "(planted)"))]
    if "violated" in must:
        return "does not hold"
    if must and all(v == "holds" for v in must + reported) and all(v == "violated" for v in plants):
        return "holds"
    return "inconclusive"


def test_output_fits_100_columns_marks_planted_rows_and_ends_with_claim_verdicts(
        monkeypatch, capsys, real_planted):
    checks = _checks(real_planted)
    code, lines = _run_check(monkeypatch, capsys, checks)
    assert code == 0
    assert max(len(line) for line in lines) <= 100
    rows = _rows(lines)
    assert len(rows) == sum(len(v) for v in checks.values())
    planted_rows = [label for _, label in rows if "planted" in label]
    assert planted_rows == ["violated (planted)"] * 4  # three of C1, one of C3
    assert ("C1", "holds *") in rows and ("C5", "violated") in rows
    # one line per claim, after the table, agreeing with the rows above it
    verdicts = dict(VERDICT_RE.match(line).groups() for line in lines if VERDICT_RE.match(line))
    assert list(verdicts) == ["C1", "C3", "C5", "C7"]
    for claim, verdict in verdicts.items():
        assert verdict == _verdict_from_labels([label for c, label in rows if c == claim]), claim
    assert verdicts == {"C1": "holds", "C3": "holds", "C5": "inconclusive", "C7": "inconclusive"}
    assert lines[-1].endswith("-> OK")
    assert next(i for i, line in enumerate(lines) if VERDICT_RE.match(line)) > len(rows)


def test_wide_prints_every_row_on_one_line(monkeypatch, capsys, real_planted):
    checks = _checks(real_planted)
    _, lines = _run_check(monkeypatch, capsys, checks, wide=True)
    assert any(LONG in line for line in lines) and max(len(line) for line in lines) > 100
    assert len(_rows(lines)) == sum(len(v) for v in checks.values())
    assert sum(line.endswith("violated (planted)") for line in lines) == 4


def test_a_violated_must_hold_check_fails_its_claim_and_a_crash_is_inconclusive(monkeypatch, capsys):
    checks = {"c2": [check_at_most("C2", "Euler identity residual", 1e-3, 1e-9),
                     planted(check_at_most("C2", "planted: no SN", 3.0, 1.0))]}
    code, lines = _run_check(monkeypatch, capsys, checks, broken="c4")
    assert code == 1 and lines[-1].endswith("-> FAIL")
    assert max(len(line) for line in lines) <= 100
    verdicts = dict(VERDICT_RE.match(line).groups() for line in lines if VERDICT_RE.match(line))
    assert verdicts == {"C2": "does not hold", "C4": "inconclusive"}
    assert any(line.startswith("C4  error: RuntimeError: boom") for line in lines)
    assert ("C2", "violated *") in _rows(lines)


def test_claim_rule_and_planted_marks():
    bound = check_at_most("C1", "q", 0.5, 1.0)
    plant = planted(check_at_most("C1", "planted: q", 2.0, 1.0))
    soft = check_at_most("C1", "r", 2.0, 1.0, must_hold=False)
    assert claim_verdict([bound, plant]) == "holds"
    assert claim_verdict([bound, plant, soft]) == "inconclusive"  # a reported violation never refutes
    assert claim_verdict([bound, planted(check_at_most("C1", "planted: q", 0.5, 1.0))]) == "inconclusive"
    assert claim_verdict([plant]) == "inconclusive"  # no must-hold check
    assert claim_verdict([check_at_most("C1", "q", 2.0, 1.0), plant]) == "does not hold"
    assert claim_verdict([bound], failed=True) == "inconclusive"
    assert plant.role == "planted" and bound.role == "must hold" and soft.role == "reported"
    with pytest.raises(ValueError, match="a planted check is built to be violated; it cannot be must-hold"):
        Check("C1", "q", 2.0, 1.0, "violated", must_hold=True, planted=True)
    with pytest.raises(ValueError, match="width 40 leaves"):
        format_table([bound], width=40)


def test_the_real_planted_cases_are_flagged(real_planted):
    flagged = [c for c in real_planted if c.planted]
    assert len(flagged) == 4 and all(c.quantity.startswith("planted:") for c in flagged)
    assert all(c.verdict == "violated" and not c.must_hold for c in flagged)
    assert all(c.must_hold and c.verdict == "holds" for c in real_planted if not c.planted)


def test_check_help_names_wide(capsys):
    with pytest.raises(SystemExit):
        cli.main(["check", "--help"])
    text = capsys.readouterr().out
    assert "--wide" in text and "100 columns" in text
