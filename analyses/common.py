"""The framework every analysis follows: scales, checks, verdicts, results and their files.

An analysis module (``analyses/c5_lecun.py`` etc.) exposes

- ``CLAIM = "C5"`` and ``TITLE = "..."``;
- ``run(scale: str, out: Path, seed: int = 0) -> AnalysisResult``, which
  runs the experiment at ``scale`` (one of :data:`SCALES`), writes its tidy
  tables with :func:`write_table` and its figures with
  :func:`gradscope.plot.style.save_figure` into ``out``, and returns the
  tables, the :class:`Check` list and the figure paths.

A :class:`Check` compares one measured quantity with a bound or a prediction
and carries a verdict from :data:`VERDICTS`. ``must_hold`` marks the checks
whose failure means the claim (or gradscope) is wrong; ``gradscope check``
exits 1 when one of those does not hold. ``planted`` marks a counter-example
built to break a bound outside the claim's assumptions: it is expected to be
``violated`` (that shows the check can fail) and never decides the claim
(wrap it in :func:`planted`). Every other check is *reported*: shown for
context, not deciding. Build checks with
:func:`check_at_most` (a bound), :func:`check_close` (a prediction with a
relative tolerance) or :func:`check_between`, so verdict logic is written once.

Skeleton of an analysis module::

    CLAIM = "C9"
    TITLE = "What the claim says, in one line"
    PARAMS = {"tiny": {"steps": 5}, "small": {"steps": 500}, "paper": {"steps": 50_000}}

    def run(scale: str, out: Path, seed: int = 0) -> AnalysisResult:
        p, result = start_result(CLAIM, TITLE, scale, out, PARAMS)  # validates the scale
        table = ...                                # tidy DataFrame
        result.add_table("c9_quantity", table)     # -> out/c9_quantity.csv
        fig, axes = style.new_figure(1, 2, title="...")
        ...
        result.add_figure(fig, "c9_quantity")     # -> out/c9_quantity.png + .pdf
        result.add(check_at_most(CLAIM, "max ratio", measured, 1.0))
        return result

``analyses.registry.run_analysis`` (what the CLIs call) then writes
``checks.csv`` and ``result.json`` beside the tables.

Scales
------
``tiny``   CPU, well under a minute: used by the test suite and ``gradscope check``.
``small``  CPU, under 30 minutes: the gallery in ``figures/``.
``paper``  GPU, the reference setup of THEORY.md.
"""
from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from gradscope._checks import check_choice

SCALES: tuple[str, ...] = ("tiny", "small", "paper")
HOLDS, VIOLATED, INCONCLUSIVE = "holds", "violated", "inconclusive"
VERDICTS: tuple[str, ...] = (HOLDS, VIOLATED, INCONCLUSIVE)
#: Columns of the checks table (``checks.csv`` and the ``gradscope check`` printout).
CHECK_COLUMNS: tuple[str, ...] = ("claim", "quantity", "measured", "relation", "bound_or_prediction",
                                  "verdict", "must_hold", "detail", "planted")


def check_scale(scale: str) -> str:
    """Return ``scale`` if it is one of :data:`SCALES`, else raise a one-line ``ValueError``."""
    return check_choice("scale", scale, SCALES)


@dataclass(frozen=True)
class Check:
    """One measured quantity against its bound or prediction.

    Attributes
    ----------
    claim : str
        ``"C1"`` .. ``"C8"``.
    quantity : str
        What was measured, in words a reader of the table understands
        (e.g. ``"max sigma_op/sigma_fwd / ceil(k/stride), SNDCGAN D at init"``).
    measured : float
        The measured value.
    bound_or_prediction : float
        The bound it must respect or the value theory predicts.
    verdict : str
        One of :data:`VERDICTS`.
    must_hold : bool
        True when a violation means the claim or the code is wrong.
    relation : str
        How ``measured`` relates to the bound when it holds: ``"<="``, ``">="``,
        ``"~"`` (close to) or ``"in"`` (an interval).
    detail : str
        Tolerance used, sample size, or why the verdict is inconclusive.
    planted : bool
        True for a counter-example built to violate the bound (expected ``violated``,
        never must-hold); see :func:`planted`.
    """

    claim: str
    quantity: str
    measured: float
    bound_or_prediction: float
    verdict: str
    must_hold: bool = False
    relation: str = "~"
    detail: str = ""
    planted: bool = False

    def __post_init__(self) -> None:
        check_choice("verdict", self.verdict, VERDICTS)
        if self.planted and self.must_hold:
            raise ValueError(f"{self.claim}: a planted check is built to be violated; it cannot be must-hold")

    @property
    def role(self) -> str:
        """``"must hold"``, ``"planted"`` or ``"reported"`` (what the verdict means for the claim)."""
        return "must hold" if self.must_hold else "planted" if self.planted else "reported"

    @property
    def ok(self) -> bool:
        """False only for a must-hold check that does not hold."""
        return self.verdict == HOLDS or not self.must_hold


def planted(check: Check) -> Check:
    """``check`` marked as a planted counter-example: expected ``violated``, never must-hold.

    Examples
    --------
    >>> c = planted(check_at_most("C1", "planted: no SN, ||grad_x D||", 3.0, 1.0))
    >>> c.planted, c.must_hold, c.verdict, c.role
    (True, False, 'violated', 'planted')
    """
    return replace(check, planted=True, must_hold=False)


def check_at_most(claim: str, quantity: str, measured: float, bound: float, *,
                  rtol: float = 1e-6, must_hold: bool = True, detail: str = "") -> Check:
    """A bound check: holds when ``measured <= bound * (1 + rtol)``.

    A non-finite measurement is a violation (an exploding quantity is the
    thing bounds rule out); a non-finite bound makes the check inconclusive.

    Examples
    --------
    >>> check_at_most("C1", "gradient norm", 0.9, 1.0).verdict
    'holds'
    >>> check_at_most("C1", "gradient norm", 1.2, 1.0).verdict
    'violated'
    """
    return _bound_check(claim, quantity, measured, bound, "<=", rtol, must_hold, detail)


def check_at_least(claim: str, quantity: str, measured: float, bound: float, *,
                   rtol: float = 1e-6, must_hold: bool = True, detail: str = "") -> Check:
    """A lower-bound check: holds when ``measured >= bound * (1 - rtol)``.

    Examples
    --------
    >>> check_at_least("C6", "sigma_op / sigma_fwd", 1.3, 1.0).verdict
    'holds'
    """
    return _bound_check(claim, quantity, measured, bound, ">=", rtol, must_hold, detail)


def _bound_check(claim: str, quantity: str, measured: float, bound: float, relation: str, rtol: float,
                 must_hold: bool, detail: str) -> Check:
    if not math.isfinite(bound):
        verdict = INCONCLUSIVE
    elif not math.isfinite(measured):
        verdict = VIOLATED
    elif relation == "<=":
        verdict = HOLDS if measured <= bound * (1 + rtol) + 1e-12 else VIOLATED
    else:
        verdict = HOLDS if measured >= bound * (1 - rtol) - 1e-12 else VIOLATED
    return Check(claim, quantity, float(measured), float(bound), verdict, must_hold, relation,
                 _join(detail, f"rtol {rtol:g}" if rtol else ""))


def check_close(claim: str, quantity: str, measured: float, prediction: float, *,
                rtol: float, must_hold: bool = True, inconclusive_rtol: float | None = None,
                detail: str = "") -> Check:
    """A prediction check: holds when ``|measured - prediction| <= rtol * |prediction|``.

    With ``inconclusive_rtol`` (> ``rtol``) a miss by less than that tolerance is
    ``inconclusive`` rather than ``violated`` (theory is asymptotic, the sample finite).

    Examples
    --------
    >>> check_close("C5", "n * Var(W_bar)", 0.466, 0.462, rtol=0.05).verdict
    'holds'
    >>> check_close("C5", "n * Var(W_bar)", 0.6, 0.462, rtol=0.05).verdict
    'violated'
    """
    if inconclusive_rtol is not None and inconclusive_rtol < rtol:
        raise ValueError(f"inconclusive_rtol ({inconclusive_rtol}) must be >= rtol ({rtol})")
    if not (math.isfinite(measured) and math.isfinite(prediction)):
        verdict = VIOLATED if math.isfinite(prediction) else INCONCLUSIVE
    else:
        error = abs(measured - prediction)
        scale = abs(prediction)
        if error <= rtol * scale:
            verdict = HOLDS
        elif inconclusive_rtol is not None and error <= inconclusive_rtol * scale:
            verdict = INCONCLUSIVE
        else:
            verdict = VIOLATED
    tol = f"rtol {rtol:g}" + (f" (inconclusive up to {inconclusive_rtol:g})" if inconclusive_rtol else "")
    return Check(claim, quantity, float(measured), float(prediction), verdict, must_hold, "~",
                 _join(detail, tol))


def check_between(claim: str, quantity: str, measured: float, low: float, high: float, *,
                  rtol: float = 1e-6, must_hold: bool = True, detail: str = "") -> Check:
    """An interval check: holds when ``low(1 - rtol) <= measured <= high(1 + rtol)``.

    The check's ``bound_or_prediction`` is ``high``; ``low`` is named in ``detail``.

    Examples
    --------
    >>> check_between("C6", "sigma_op / sigma_fwd", 1.5, 1.0, 3.0).verdict
    'holds'
    """
    inside = low * (1 - rtol) - 1e-12 <= measured <= high * (1 + rtol) + 1e-12
    verdict = HOLDS if math.isfinite(measured) and inside else VIOLATED
    return Check(claim, quantity, float(measured), float(high), verdict, must_hold, "in",
                 _join(f"interval [{low:.4g}, {high:.4g}]", detail))


def _join(*parts: str) -> str:
    return "; ".join(p for p in parts if p)


@dataclass
class AnalysisResult:
    """What one analysis run produced.

    Attributes
    ----------
    claim, title, scale : str
        Which claim, in words, at which scale.
    checks : list of Check
        The verdicts.
    tables : dict of str -> DataFrame
        Tidy data by name; :meth:`save` (and :func:`write_table`) writes ``name.csv``.
    figures : list of Path
        Figure files written (PNG and PDF).
    out : Path or None
        The directory everything was written to.
    notes : list of str
        Free-text remarks for the report (e.g. which trainer was used).
    """

    claim: str
    title: str
    scale: str
    checks: list[Check] = field(default_factory=list)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    figures: list[Path] = field(default_factory=list)
    out: Path | None = None
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.out is not None:
            self.out = Path(self.out)

    @property
    def ok(self) -> bool:
        """True when every must-hold check holds."""
        return all(c.ok for c in self.checks)

    def checks_frame(self) -> pd.DataFrame:
        """The checks as a DataFrame with :data:`CHECK_COLUMNS`."""
        return checks_frame(self.checks)

    def add_table(self, name: str, table: pd.DataFrame) -> Path:
        """Keep ``table`` under ``name`` and write it now as ``out/name.csv``; return the path."""
        self.tables[name] = table
        return write_table(table, self._require_out(), name)

    def add_figure(self, fig, name: str) -> list[Path]:
        """Save ``fig`` as ``out/name.png`` and ``.pdf`` in the project style; return the paths."""
        from gradscope.plot.style import save_figure

        paths = save_figure(fig, self._require_out() / name)
        self.figures.extend(paths)
        return paths

    def add(self, *checks: Check) -> None:
        """Append checks."""
        self.checks.extend(checks)

    def _require_out(self) -> Path:
        if self.out is None:
            raise ValueError("AnalysisResult.out is not set; pass out= when creating the result")
        self.out = Path(self.out)
        self.out.mkdir(parents=True, exist_ok=True)
        return self.out

    def save(self, out: Path | None = None) -> Path:
        """Write ``checks.csv``, ``result.json`` and any table not yet on disk; return the directory."""
        out = Path(out or self.out or ".")
        out.mkdir(parents=True, exist_ok=True)
        for name, table in self.tables.items():
            if not (out / f"{name}.csv").exists():
                write_table(table, out, name)
        self.checks_frame().to_csv(out / "checks.csv", index=False)
        summary = {
            "claim": self.claim, "title": self.title, "scale": self.scale, "ok": self.ok,
            "checks": [asdict(c) for c in self.checks],
            "tables": sorted(f"{name}.csv" for name in self.tables),
            "figures": [_relative(p, out) for p in self.figures],
            "notes": list(self.notes),
        }
        (out / "result.json").write_text(json.dumps(summary, indent=2, default=_json_default))
        self.out = out
        return out


def checks_frame(checks: Iterable[Check]) -> pd.DataFrame:
    """Checks as a DataFrame with :data:`CHECK_COLUMNS` (also for checks from several analyses)."""
    rows = [asdict(c) for c in checks]
    return pd.DataFrame(rows, columns=list(CHECK_COLUMNS)) if rows else pd.DataFrame(columns=list(CHECK_COLUMNS))


def load_result(out: str | Path) -> dict:
    """Read back an analysis directory's ``result.json`` (as written by :meth:`AnalysisResult.save`)."""
    path = Path(out) / "result.json"
    if not path.is_file():
        raise FileNotFoundError(f"no analysis result at {path}")
    return json.loads(path.read_text())


def write_table(table: pd.DataFrame, out: str | Path, name: str) -> Path:
    """Write a tidy table as ``out/name.csv`` (directories created); return the path."""
    if not name or "/" in name or name.endswith(".csv"):
        raise ValueError(f"table name must be a bare file stem, got {name!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.csv"
    table.to_csv(path, index=False)
    return path


def format_checks(checks: Sequence[Check], width: int | None = None) -> str:
    """A plain-text table: claim, quantity, measured, bound/prediction, verdict.

    Must-hold verdicts are marked ``*``, planted ones ``(planted)``; with ``width``
    the quantity wraps so every line fits (:func:`analyses.report.format_table`).
    """
    from analyses.report import format_table

    return format_table(checks, width)


def _relative(path: Path, root: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


def _json_default(value):
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def scale_params(scale: str, table: dict[str, dict]) -> dict:
    """Pick the parameters of ``scale`` from a per-scale table, validating the scale.

    Examples
    --------
    >>> scale_params("tiny", {"tiny": {"steps": 5}, "small": {"steps": 500}, "paper": {"steps": 5000}})
    {'steps': 5}
    """
    check_scale(scale)
    missing = [s for s in SCALES if s not in table]
    if missing:
        raise ValueError(f"scale table lacks {', '.join(missing)}")
    return dict(table[scale])


def start_result(claim: str, title: str, scale: str, out: str | Path,
                 params: Mapping[str, Mapping[str, Any]]) -> tuple[dict, AnalysisResult]:
    """The opening of every analysis's ``run``: its parameters at ``scale`` and an empty result writing to ``out``.

    Parameters
    ----------
    claim, title : str
        The module's ``CLAIM`` and ``TITLE``.
    scale : str
        One of :data:`SCALES` (validated, one-line ``ValueError`` otherwise).
    out : path
        Directory the result's tables and figures go to; ``result.out`` is it as a ``Path``.
    params : mapping
        The module's per-scale parameter table (every scale of :data:`SCALES` present).

    Returns
    -------
    (dict, AnalysisResult)
        A copy of ``params[scale]`` and the result to fill.

    Examples
    --------
    >>> p, result = start_result("C9", "a claim", "tiny", "out", {s: {"steps": 5} for s in SCALES})
    >>> p, result.claim, result.out.name, result.checks
    ({'steps': 5}, 'C9', 'out', [])
    """
    chosen = scale_params(scale, params)
    return chosen, AnalysisResult(claim, title, scale, out=Path(out))
