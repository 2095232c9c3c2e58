"""The ``gradscope check`` printout: the checks table, one verdict per claim, the overall line.

Each row of the table is one :class:`~analyses.common.Check`; its verdict
column says what the row means for the claim:

``holds *``             a *must-hold* check (``*``): decides the claim and the exit code;
``violated (planted)``  a *planted* counter-example, built to break a bound outside the
                        claim's assumptions: ``violated`` is the expected outcome (the check
                        can fail), and it never decides the claim;
``holds`` (unmarked)    a *reported* measurement: context, not deciding on its own.

Claim verdict rule (:func:`claim_verdict`)
------------------------------------------
``does not hold``  some must-hold check is violated;
``holds``          at least one must-hold check, every must-hold and every reported
                   check holds, and every planted check is violated;
``inconclusive``   anything else: no must-hold check, a must-hold or reported check
                   inconclusive, a reported check violated (a reported check never
                   refutes a claim), a planted check that was not violated, or the
                   analysis failed to run.

By default every line fits :data:`WIDTH` columns (the quantity wraps inside its
column); ``width=None`` prints each row on one line, however long.
"""
from __future__ import annotations

import math
import textwrap
from collections import Counter
from collections.abc import Mapping, Sequence

from analyses.common import (
    HOLDS,
    INCONCLUSIVE,
    VERDICTS,
    VIOLATED,
    AnalysisResult,
    Check,
)

#: Columns the default printout fits in.
WIDTH = 100
DOES_NOT_HOLD = "does not hold"
#: The verdicts of a claim, from :func:`claim_verdict`.
CLAIM_VERDICTS: tuple[str, ...] = (HOLDS, DOES_NOT_HOLD, INCONCLUSIVE)
#: Column of the per-claim verdict in the claims section.
_CLAIM_VERDICT_WIDTH = max(map(len, CLAIM_VERDICTS)) + 2
_MIN_QUANTITY_WIDTH = 24
LEGEND = ("* must hold (decides the claim and the exit code); (planted) a counter-example built to "
          "break the bound, expected violated; unmarked rows are reported measurements, not deciding.")
RULE = ("A claim holds when its must-hold (*) and reported checks hold and its planted ones are "
        "violated; it does not hold when a must-hold check is violated; otherwise it is inconclusive.")


def verdict_label(check: Check) -> str:
    """The verdict with its role mark: ``"holds *"``, ``"violated (planted)"`` or the bare verdict (reported).

    Examples
    --------
    >>> from analyses.common import check_at_most, planted
    >>> verdict_label(check_at_most("C1", "q", 0.5, 1.0)), verdict_label(planted(check_at_most("C1", "q", 2, 1)))
    ('holds *', 'violated (planted)')
    """
    if check.must_hold:
        return f"{check.verdict} *"
    if check.planted:
        return f"{check.verdict} (planted)"
    return check.verdict


def _num(value: float) -> str:
    return str(value) if not math.isfinite(value) else f"{value:.4g}"


def format_table(checks: Sequence[Check], width: int | None = WIDTH) -> str:
    """The checks as a text table: claim, quantity, measured, bound/prediction, verdict.

    Parameters
    ----------
    checks : sequence of Check
        The rows, printed in order.
    width : int or None
        Fit every line in ``width`` columns by wrapping the quantity inside its
        column (continuation lines leave the other columns blank); ``None``: one
        line per row, the columns as wide as their longest cell.

    Returns
    -------
    str
        Header, a rule of dashes, then the rows.
    """
    header = ("claim", "quantity", "measured", "bound" if width else "bound/prediction", "verdict")
    rows = [(c.claim, c.quantity, _num(c.measured), f"{c.relation} {_num(c.bound_or_prediction)}",
             verdict_label(c)) for c in checks]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    if width is not None:
        quantity_width = width - sum(widths) + widths[1] - 2 * (len(header) - 1)
        if quantity_width < _MIN_QUANTITY_WIDTH:
            raise ValueError(f"width {width} leaves {quantity_width} columns for the quantity; "
                             f"use at least {width + _MIN_QUANTITY_WIDTH - quantity_width}")
        widths[1] = min(widths[1], quantity_width)

    def line(cells: Sequence[str]) -> str:
        return "  ".join(cell.ljust(w) for cell, w in zip(cells, widths)).rstrip()

    lines = [line(header), "  ".join("-" * w for w in widths)]
    for row in rows:
        pieces = textwrap.wrap(row[1], widths[1], break_on_hyphens=False) if width is not None else [row[1]]
        lines.append(line((row[0], pieces[0] if pieces else "", *row[2:])))
        lines += [line(("", piece, "", "", "")) for piece in pieces[1:]]
    return "\n".join(lines)


def claim_verdict(checks: Sequence[Check], *, failed: bool = False) -> str:
    """One claim's verdict from its checks, by the rule of the module docstring.

    Examples
    --------
    >>> from analyses.common import check_at_most, planted
    >>> bound, plant = check_at_most("C1", "q", 0.5, 1.0), planted(check_at_most("C1", "p", 2.0, 1.0))
    >>> claim_verdict([bound, plant]), claim_verdict([plant]), claim_verdict([check_at_most("C1", "q", 2, 1)])
    ('holds', 'inconclusive', 'does not hold')
    """
    if any(c.must_hold and c.verdict == VIOLATED for c in checks):
        return DOES_NOT_HOLD
    if failed or not any(c.must_hold for c in checks):
        return INCONCLUSIVE
    settled = all(c.verdict == (VIOLATED if c.planted else HOLDS) for c in checks)
    return HOLDS if settled else INCONCLUSIVE


def _counts(checks: Sequence[Check]) -> str:
    counted = Counter(c.verdict for c in checks)
    return ", ".join(f"{counted[v]} {'hold' if v == HOLDS and counted[v] > 1 else v}"
                     for v in VERDICTS if counted[v])


def claim_summary(checks: Sequence[Check]) -> str:
    """``"must-hold: 5 hold; planted: 3 violated (as built); reported: 4 hold"`` for one claim's checks."""
    parts = []
    for role, label in (("must hold", "must-hold"), ("planted", "planted"), ("reported", "reported")):
        mine = [c for c in checks if c.role == role]
        if mine:
            text = _counts(mine)
            if role == "planted":
                text += " (as built)" if all(c.verdict == VIOLATED for c in mine) else " (should be violated)"
            parts.append(f"{label}: {text}")
    if not any(c.must_hold for c in checks):
        parts.insert(0, "no must-hold check")
    return "; ".join(parts) or "no checks"


def claim_lines(results: Mapping[str, AnalysisResult], errors: Mapping[str, str],
                width: int | None = WIDTH) -> list[str]:
    """One line per claim (wrapped to ``width``): claim, its verdict, the counts behind it."""
    lines = []
    names = list(results) + [n for n in errors if n not in results]
    for name in names:
        result = results.get(name)
        checks = result.checks if result is not None else []
        label = result.claim if result is not None else name.upper()
        failed = name in errors
        detail = "failed to run (error above)" if failed else claim_summary(checks)
        head = f"{label:<4}{claim_verdict(checks, failed=failed):<{_CLAIM_VERDICT_WIDTH}}"
        lines += _wrap(head + detail, width, len(head))
    return lines


def _wrap(text: str, width: int | None, indent: int = 0) -> list[str]:
    if width is None:
        return [text]
    return textwrap.wrap(text, width, subsequent_indent=" " * indent, break_on_hyphens=False) or [""]


def format_report(results: Mapping[str, AnalysisResult], errors: Mapping[str, str], ok: bool,
                  width: int | None = WIDTH) -> str:
    """The whole printout: table, errors, legend, per-claim verdicts, then the overall verdict line last."""
    checks = [c for r in results.values() for c in r.checks]
    lines = [format_table(checks, width), ""] if checks else []
    for name, message in errors.items():
        lines += _wrap(f"{name.upper()}  error: {message}", width, len(name) + 2)
    if errors:
        lines.append("")
    if checks:
        lines += _wrap(LEGEND, width) + [""]
    lines += _wrap(RULE, width) + claim_lines(results, errors, width)
    failed = [c for c in checks if not c.ok]
    planted_violations = sum(c.planted and c.verdict == VIOLATED for c in checks)
    lines += _wrap(f"{len(results)} analyses ran, {len(errors)} failed; {sum(c.must_hold for c in checks)} "
                   f"must-hold checks, {len(failed)} not holding; {planted_violations} planted violated as "
                   f"built -> {'OK' if ok else 'FAIL'}", width)
    return "\n".join(lines)
