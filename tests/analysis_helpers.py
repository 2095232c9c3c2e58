"""Assertions shared by the tests of the claim analyses (tests/test_c*.py)."""
from __future__ import annotations

from analyses.common import HOLDS, AnalysisResult, Check


def holding_must_checks(result: AnalysisResult) -> list[Check]:
    """Assert that ``result`` passes and every one of its must-hold checks holds; return those checks.

    ``result.ok`` alone would accept an ``inconclusive`` must-hold check, so its verdicts are
    asserted one by one; callers assert how many there are, which catches a check that
    silently stopped being produced.
    """
    assert result.ok, [c for c in result.checks if not c.ok]
    must = [c for c in result.checks if c.must_hold]
    assert all(c.verdict == HOLDS for c in must), [c for c in must if c.verdict != HOLDS]
    return must
