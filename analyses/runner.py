"""Run a selection of analyses and collect their checks, turning failures into reported errors.

Shared by ``gradscope check`` and ``gradscope reproduce``: an analysis that is
missing, fails to import or raises while running is reported as an ``error``
row and makes the overall outcome a failure, but does not stop the others.
"""
from __future__ import annotations

import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from analyses import registry
from analyses.common import AnalysisResult, Check, check_scale
from analyses.report import WIDTH, format_report


@dataclass
class Outcome:
    """Results of the analyses that ran and the one-line errors of those that did not."""

    results: dict[str, AnalysisResult] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def checks(self) -> list[Check]:
        return [c for r in self.results.values() for c in r.checks]

    @property
    def ok(self) -> bool:
        """Every selected analysis ran and every must-hold check holds."""
        return not self.errors and all(r.ok for r in self.results.values())

    def exit_code(self) -> int:
        return 0 if self.ok else 1

    def report(self, width: int | None = WIDTH) -> str:
        """The checks table, one line per error, one verdict per claim and the overall line (last).

        Every line fits ``width`` columns; ``None`` prints each row on one line
        (see :mod:`analyses.report`).
        """
        return format_report(self.results, self.errors, self.ok, width)


def run_selected(names: list[str], scale: str, out: Path, seed: int = 0,
                 progress: TextIO | None = sys.stderr, from_results: Path | None = None,
                 dataset: str | None = None, train: bool = True) -> Outcome:
    """Run ``names`` at ``scale``, each into ``out/<name>``; never raises for a failing analysis.

    With ``from_results``, each analysis redraws from ``from_results/<name>`` instead of running.
    """
    check_scale(scale)
    outcome = Outcome()
    for name in names:
        if progress is not None:
            print(f"[gradscope] {name.upper()} at scale {scale} ...", file=progress, flush=True)
        try:
            source = None if from_results is None else Path(from_results) / name
            outcome.results[name] = registry.run_analysis(name, scale, Path(out) / name, seed=seed,
                                                          from_results=source, dataset=dataset, train=train)
        except registry.AnalysisUnavailable as exc:
            outcome.errors[name] = str(exc)
        except Exception as exc:  # report, keep going: one broken analysis must not hide the rest
            where = traceback.extract_tb(exc.__traceback__)[-1]
            outcome.errors[name] = (f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
                                    f"({Path(where.filename).name}:{where.lineno})")
    return outcome
