"""Readable ticks for log axes, and the "not recorded" placeholder of an empty panel.

matplotlib's default log ticks label minor ticks on short ranges
(``1.18x10^-1, 1.17x10^-1, ...``, one label per tick, overlapping) and leave
a range inside one decade with a single label or none. :func:`log_scale`
puts a log axis on a :class:`ReadableLogLocator` instead, which, from the
axis's view limits at draw time, picks

1. whole decades (``10^-3, 10^-2, ...``, every n-th decade when there are
   many), when at least two fall inside the view;
2. else ``1, 2, 5 x 10^k`` when at least two of those fall inside;
3. else a few evenly spaced round numbers (``0.042, 0.044, 0.046``), the
   view being too short a range for log spacing to show.

:class:`ReadableLogFormatter` writes them as plain decimals between 0.001 and
10000 and as ``m x 10^k`` (``m`` an integer or a short decimal) outside.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.ticker import Formatter, Locator, MaxNLocator, NullFormatter

#: Most labelled ticks on one log axis.
MAX_LOG_LABELS = 6
#: Plain decimals are written for ticks within this range; powers of ten outside it.
PLAIN_RANGE = (1e-3, 1e4)
#: A log axis spans at least this factor (see :func:`log_scale`).
MIN_LOG_FACTOR = 2.0
NOT_RECORDED = "not recorded"
#: Legend label of the marks :func:`mark_zeros` draws.
ZERO_LABEL = "exactly 0 (axis edge)"
_ZERO_GID = "gradscope-zero"
_EPS = 1e-9


def readable_log_ticks(vmin: float, vmax: float, max_labels: int = MAX_LOG_LABELS) -> tuple[list[float], str]:
    """Major tick values inside ``[vmin, vmax]`` of a log axis and which rule chose them.

    Returns
    -------
    ticks : list of float
    kind : str
        ``"decade"``, ``"125"`` or ``"plain"`` (see the module docstring); ``"none"`` for an empty range.

    Examples
    --------
    >>> readable_log_ticks(3e-5, 2.0)
    ([0.0001, 0.001, 0.01, 0.1, 1.0], 'decade')
    >>> readable_log_ticks(0.15, 0.9)
    ([0.2, 0.5], '125')
    >>> readable_log_ticks(0.0415, 0.0462)[0]
    [0.042, 0.044, 0.046]
    """
    lo, hi = sorted((float(vmin), float(vmax)))
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= 0:
        return [], "none"
    lo = max(lo, hi * 1e-300)
    low_exp, high_exp = math.log10(lo), math.log10(hi)
    first, last = math.ceil(low_exp - _EPS), math.floor(high_exp + _EPS)
    if last - first + 1 >= 2:
        stride = math.ceil((last - first + 1) / max_labels)
        # multiples of the stride, so a thinned axis still reads 10^-4, 10^-2, 10^0 (not -3, -1, 1)
        return [10.0 ** k for k in range(first, last + 1) if k % stride == 0], "decade"
    candidates = [m * 10.0 ** k for k in range(first - 1, last + 2) for m in (1, 2, 5)]
    inside = sorted(_round(c) for c in candidates if lo * (1 - _EPS) <= c <= hi * (1 + _EPS))
    if len(inside) >= 2:
        return inside, "125"
    values = MaxNLocator(nbins=4, steps=[1, 2, 5, 10]).tick_values(lo, hi)
    return [_round(v) for v in values if lo * (1 - _EPS) <= v <= hi * (1 + _EPS) and v > 0], "plain"


def _round(value: float) -> float:
    # 0.1 * 3 is 0.30000000000000004: round to 12 significant digits so labels and tests see 0.3
    return float(f"{value:.12g}")


class ReadableLogLocator(Locator):
    """Major ticks of a log axis by :func:`readable_log_ticks`, recomputed from the view limits at draw time."""

    def __init__(self, max_labels: int = MAX_LOG_LABELS) -> None:
        self.max_labels = max_labels

    def __call__(self) -> list[float]:
        return self.tick_values(*self.axis.get_view_interval())

    def tick_values(self, vmin: float, vmax: float) -> list[float]:
        return readable_log_ticks(vmin, vmax, self.max_labels)[0]


class ReadableLogMinorLocator(Locator):
    """Unlabelled ``2..9 x 10^k`` minor ticks, only when the major ticks are decades a few apart."""

    def __call__(self) -> list[float]:
        return self.tick_values(*self.axis.get_view_interval())

    def tick_values(self, vmin: float, vmax: float) -> list[float]:
        _, kind = readable_log_ticks(vmin, vmax)
        lo, hi = sorted((vmin, vmax))
        if kind != "decade" or lo <= 0 or math.log10(hi / lo) > 6:
            return []
        exps = range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
        return [m * 10.0 ** k for k in exps for m in range(2, 10) if lo <= m * 10.0 ** k <= hi]


class ReadableLogFormatter(Formatter):
    """Labels for :class:`ReadableLogLocator` ticks: plain decimals, or ``m x 10^k`` far from 1."""

    def __call__(self, x: float, pos: int | None = None) -> str:
        return format_tick_values([x])[0]

    def format_ticks(self, values: Sequence[float]) -> list[str]:
        return format_tick_values(values)


def format_tick_values(values: Sequence[float]) -> list[str]:
    """Tick labels with as few significant digits as write each value exactly (and so distinctly).

    Examples
    --------
    >>> format_tick_values([0.01, 0.1, 1.0, 10.0])
    ['0.01', '0.1', '1', '10']
    >>> format_tick_values([1e-6, 1e-4])
    ['$\\\\mathdefault{10^{-6}}$', '$\\\\mathdefault{10^{-4}}$']
    >>> format_tick_values([0.3355, 0.336, 0.3365])
    ['0.3355', '0.336', '0.3365']
    """
    values = [float(v) for v in values]
    if not values:
        return []
    positive = [abs(v) for v in values if v != 0]
    plain = all(PLAIN_RANGE[0] <= v < PLAIN_RANGE[1] for v in positive)
    for digits in range(1, 7):
        # a label rounded away from its tick (0.1125 written 0.113) would misplace the scale
        if all(v == 0 or abs(float(f"{v:.{digits}g}") - v) <= 1e-9 * abs(v) for v in values):
            break
    return [_label(v, digits, plain) for v in values]


def _label(value: float, digits: int, plain: bool) -> str:
    if value == 0:
        return "0"
    if plain:
        text = f"{value:.{digits}g}"
        if "e" not in text:
            return text
        value = float(text)
        return f"{value:f}".rstrip("0").rstrip(".")
    exponent = math.floor(math.log10(abs(value)) + _EPS)
    mantissa = float(f"{value / 10.0 ** exponent:.{digits}g}")
    if mantissa == 10:
        mantissa, exponent = 1.0, exponent + 1
    if mantissa == 1:
        return rf"$\mathdefault{{10^{{{exponent}}}}}$"
    return rf"$\mathdefault{{{mantissa:g}\times10^{{{exponent}}}}}$"


def log_scale(ax: Axes, axis: str = "y", min_factor: float = MIN_LOG_FACTOR) -> None:
    """Put ``ax``'s ``axis`` (``"x"`` or ``"y"``) on a log scale with readable ticks.

    Values <= 0 are masked (a gap in the line) rather than clipped to a tiny
    number that would stretch the axis over hundreds of decades. On a y axis,
    values that are exactly 0 (a gradient that vanished) are drawn as small
    triangles on the axis's bottom edge in their line's color, labelled
    :data:`ZERO_LABEL`, so the gap does not read as "not recorded". When the
    lines already drawn span less than a factor ``min_factor``, the view is
    widened to that factor around them: a log axis shows ratios, and zooming
    into a 0.1% wiggle would both exaggerate it and need 4-digit tick labels.

    Examples
    --------
    >>> from gradscope.plot import style
    >>> fig, axes = style.new_figure()
    >>> _ = axes[0, 0].plot([1, 2], [0.0415, 0.0462])
    >>> log_scale(axes[0, 0])
    >>> axes[0, 0].get_yscale()
    'log'
    """
    if axis not in ("x", "y"):
        raise ValueError(f"unknown axis {axis!r}; valid choices: 'x', 'y'")
    target = ax.xaxis if axis == "x" else ax.yaxis
    (ax.set_xscale if axis == "x" else ax.set_yscale)("log", nonpositive="mask")
    target.set_major_locator(ReadableLogLocator())
    target.set_major_formatter(ReadableLogFormatter())
    target.set_minor_locator(ReadableLogMinorLocator())
    target.set_minor_formatter(NullFormatter())
    # axes sharing this axis share its limits: widen only for what all of them show, or data would be clipped
    shared = (ax.get_shared_x_axes() if axis == "x" else ax.get_shared_y_axes()).get_siblings(ax)
    try:
        data = [np.asarray(line.get_xdata() if axis == "x" else line.get_ydata(), dtype=float).ravel()
                for each in shared for line in each.lines]
    except (TypeError, ValueError):  # dates or categories: leave the limits to matplotlib
        data = []
    data = np.concatenate(data) if data else np.empty(0)
    data = data[np.isfinite(data) & (data > 0)]
    if data.size and data.max() / data.min() < min_factor:
        middle, half = math.sqrt(data.max() * data.min()), math.sqrt(min_factor)
        (ax.set_xlim if axis == "x" else ax.set_ylim)(middle / half, middle * half)
    if axis == "y":
        mark_zeros(ax)


def mark_zeros(ax: Axes) -> int:
    """Draw the exact zeros of ``ax``'s lines as triangles on its bottom edge; return how many were drawn.

    A log axis has no 0, and a line's gap there looks like missing data, where the value is the
    vanished gradient a reader looks for. Each line's zeros are drawn once, in its color; the first
    marks of an axes carry :data:`ZERO_LABEL` for the legend.
    """
    drawn = 0
    labelled = any(line.get_gid() == _ZERO_GID for line in ax.lines)
    for line in list(ax.lines):
        if line.get_gid() == _ZERO_GID or getattr(line, "_gradscope_zeros_marked", False):
            continue
        try:
            x, y = np.asarray(line.get_xdata(), dtype=float), np.asarray(line.get_ydata(), dtype=float)
        except (TypeError, ValueError):  # dates or categories
            continue
        zero = y == 0
        if x.shape != y.shape or not zero.any():
            continue
        line._gradscope_zeros_marked = True  # drawn once, even when log_scale runs again
        # x in data coordinates, y in axes coordinates: 0 is the bottom edge whatever the limits
        ax.plot(x[zero], np.zeros(int(zero.sum())), transform=ax.get_xaxis_transform(), linestyle="none",
                marker="v", markersize=4, color=line.get_color(), clip_on=False,
                label="_nolegend_" if labelled else ZERO_LABEL, gid=_ZERO_GID)
        labelled, drawn = True, drawn + int(zero.sum())
    return drawn


def can_log(values: Sequence[float] | np.ndarray) -> bool:
    """Whether a log axis can show ``values``: some are > 0 and none are < 0 (zeros become gaps)."""
    arr = np.asarray(values, dtype=float)
    arr = arr[np.isfinite(arr)]
    return bool(arr.size and (arr > 0).any() and not (arr < 0).any())


def has_data(values: Sequence[float] | np.ndarray) -> bool:
    """Whether ``values`` hold a finite number other than 0 (an all-0 statistic was not observed)."""
    arr = np.asarray(values, dtype=float)
    return bool((np.isfinite(arr) & (arr != 0)).any())


def mark_not_recorded(ax: Axes, detail: str | None = None) -> None:
    """Replace an empty panel's axes by the words "not recorded" (and why), so it is not read as data."""
    text = NOT_RECORDED if not detail else f"{NOT_RECORDED}\n({detail})"
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=9, color="#777777")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
