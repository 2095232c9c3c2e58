"""The stability figures of a sweep summary: collapse fraction, final quality and quality vs c per method.

Drawn from the table of :func:`gradscope.sweep.summary_table` (its ``collapsed``
column follows the collapse rule of :mod:`gradscope.sweep.summarize`):

``collapse_fraction``  collapsed finished runs per method, each bar labelled ``k of n``;
                       when none collapsed the panel says so instead of showing empty bars;
``final_quality_box``  final FID (image data) or modes covered (2D mixtures) per method,
                       box plot with every run drawn as a point; counts and FIDs start at 0,
                       modes end at the data's mode count, the collapse threshold drawn;
``quality_vs_scale``   mean and std of the final quality over seeds against the scale c
                       (only when the sweep varies c).

Titles and labels are wrapped to the figure's width, so none is clipped.
"""
from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pandas as pd

from gradscope.plot import style
from gradscope.sweep.summarize import (
    FID_COLLAPSE_FACTOR,
    FINISHED,
    MODES_COLLAPSE_FRACTION,
)

#: Average width of a character, in units of the font size (DejaVu Sans), to wrap titles to a width.
_CHAR_WIDTH = 0.6


def _wrap(text: str, width_in: float, fontsize: float) -> str:
    """``text`` broken into lines that fit ``width_in`` inches at ``fontsize`` points."""
    chars = max(12, int(width_in * 72 / (_CHAR_WIDTH * fontsize)))
    return "\n".join(textwrap.wrap(text, chars, break_on_hyphens=False))


def _figure(title: str, n_methods: int) -> tuple:
    fig, axes = style.new_figure(1, 1, panel_size=(max(4.8, 1.1 * n_methods + 2.0), 3.4))
    fig.suptitle(_wrap(title, fig.get_figwidth() - 0.2, 11), fontsize=11)
    return fig, axes[0, 0]


def _floor_at_zero(ax) -> None:
    """Keep matplotlib's range for a non-negative quantity (FID), but never below 0."""
    low, high = ax.get_ylim()
    ax.set_ylim(max(low, 0.0), high)


def _quality(table: pd.DataFrame) -> tuple[str | None, str, float | None]:
    """The quality column, its axis label and the data's mode count (``None`` for FID)."""
    if "final_fid" in table and table["final_fid"].notna().any():
        metric = table["fid_metric"].dropna().iloc[0].replace("_", " ")
        return "final_fid", f"final FID ({metric})\n(lower is better)", None
    if "final_modes" in table and table["final_modes"].notna().any():
        totals = table["modes_total"].dropna() if "modes_total" in table else pd.Series(dtype=float)
        total = float(totals.max()) if len(totals) else None
        of = f"of {total:g}, " if total else ""
        return "final_modes", f"final modes covered\n({of}higher is better)", total
    return None, "", None


def collapse_rule(column: str | None) -> str:
    """The collapse rule in a few words, for the quality metric the sweep has (see the module docstring)."""
    if column == "final_fid":
        return f"diverged, or final FID > {FID_COLLAPSE_FACTOR:g} x its best"
    if column == "final_modes":
        return "diverged, or covers under half the modes at the end"
    return "diverged (no quality metric recorded)"


def _grouping(finished: pd.DataFrame) -> str:
    """The column the runs are grouped by: ``"method"`` over the whole grid when the sweep compares methods,
    ``"setting"`` (the grid's values but the seed) when it studies one method over several settings."""
    if finished["method"].nunique() > 1 or "setting" not in finished or finished["setting"].nunique() < 2:
        return "method"
    return "setting"


def _group_text(finished: pd.DataFrame, by: str) -> tuple[str, str]:
    """The x axis label and the title's words of a grouping."""
    if by == "method":
        return "normalization", "per method (whole grid)"
    return f"grid setting ({', '.join(sorted(finished['method'].dropna().unique()))})", "per grid setting, over seeds"


def collapse_figure(finished: pd.DataFrame, methods: list[str], rule: str, output: Path,
                    by: str = "method") -> list[Path]:
    """Fraction of collapsed runs per method (or other ``by`` column), labelled ``k of n``; a plain message
    when none collapsed."""
    xlabel, words = _group_text(finished, by)
    fig, ax = _figure(f"Collapsed runs {words.removesuffix(' (whole grid)')}", len(methods))
    ax.set_title(_wrap(f"collapsed = {rule}", fig.get_figwidth() - 0.6, 9), fontsize=9)
    flags = [finished[finished[by] == m]["collapsed"].astype(float) for m in methods]
    collapsed = [int(f.sum()) for f in flags]
    counts = [len(f) for f in flags]
    fractions = [k / n if n else 0.0 for k, n in zip(collapsed, counts)]
    x = np.arange(len(methods))
    ax.bar(x, fractions, color=[style.color(i) for i in range(len(methods))], width=0.6)
    for xi, k, n, frac in zip(x, collapsed, counts, fractions):
        ax.text(xi, frac + 0.03, f"{k} of {n}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, methods)
    ax.set_xlim(-0.6, len(methods) - 0.4)
    ax.set_ylim(0, 1.12)
    if sum(collapsed) == 0:
        ax.text(0.5, 0.55, f"No collapses:\nnone of the {sum(counts)} finished runs collapsed",
                transform=ax.transAxes, ha="center", va="center", fontsize=10,
                bbox={"boxstyle": "round", "facecolor": "white", "edgecolor": "0.7"})
    style.label_axes(ax, xlabel, "collapsed runs (fraction)")
    return style.save_figure(fig, output / "collapse_fraction")


def quality_box_figure(finished: pd.DataFrame, methods: list[str], column: str, label: str,
                       total: float | None, output: Path, by: str = "method") -> list[Path]:
    """Final quality per method (or other ``by`` column): box plot and every run as a point, on an axis that
    starts at 0."""
    xlabel, words = _group_text(finished, by)
    fig, ax = _figure(f"Final sample quality {words}", len(methods))
    data = [finished[finished[by] == m][column].dropna().to_numpy(dtype=float) for m in methods]
    ax.boxplot(data, showmeans=True, showfliers=False, widths=0.5)  # every run is drawn as a point
    rng = np.random.default_rng(0)
    for i, values in enumerate(data):
        ax.scatter(i + 1 + rng.uniform(-0.12, 0.12, len(values)), values, s=14, color=style.color(i),
                   alpha=0.8, zorder=3)
    ax.set_xticks(range(1, len(methods) + 1), [f"{m}\n(n={len(v)})" for m, v in zip(methods, data)])
    finite = np.concatenate([v[np.isfinite(v)] for v in data]) if data else np.array([])
    top = float(finite.max()) if finite.size else 1.0
    if total is not None:
        style.theory_line(ax, MODES_COLLAPSE_FRACTION * total, "collapse threshold (half the modes)")
        style.legend(ax, loc="upper right")
        ax.set_ylim(0, max(total, top) + 0.5)
        style.integer_ticks(ax, "y")
    else:
        _floor_at_zero(ax)
    style.label_axes(ax, xlabel, label)
    return style.save_figure(fig, output / "final_quality_box")


def quality_vs_scale_figure(finished: pd.DataFrame, methods: list[str], column: str, label: str,
                            total: float | None, output: Path) -> list[Path]:
    """Mean and std over seeds of the final quality against the scale c, one line per method."""
    fig, ax = _figure("Sample quality vs scale c (mean and std over seeds)", len(methods))
    top = 1.0
    for i, method in enumerate(methods):
        stats = (finished[finished["method"] == method].groupby("scale")[column]
                 .agg(["mean", "std"]).reset_index().sort_values("scale"))
        std = np.nan_to_num(stats["std"].to_numpy())
        ax.errorbar(stats["scale"], stats["mean"], yerr=std, label=method, capsize=3, marker="o",
                    **style.series_style(i))
        top = max(top, float(np.nanmax(stats["mean"].to_numpy() + std)) if len(stats) else 0.0)
    if total is not None:
        ax.set_ylim(0, max(total, top) + 0.5)
        style.integer_ticks(ax, "y")
    else:
        _floor_at_zero(ax)
    style.label_axes(ax, "scale c (multiplier of every normalized D layer)", label)
    style.legend(ax)
    return style.save_figure(fig, output / "quality_vs_scale")


def stability_figures(table: pd.DataFrame, output: Path) -> list[Path]:
    """The figures of the module docstring for the finished runs of ``table``, written into ``output``."""
    output = Path(output)
    finished = table[table["status"].isin(FINISHED)] if "status" in table else table.iloc[:0]
    if finished.empty or "method" not in finished:
        return []
    methods = sorted(finished["method"].dropna().unique())
    by = _grouping(finished)
    groups = methods if by == "method" else list(dict.fromkeys(finished[by].dropna()))  # in the grid's order
    column, label, total = _quality(finished)
    paths = collapse_figure(finished, groups, collapse_rule(column), output, by=by)
    if column is None:
        return paths
    paths += quality_box_figure(finished, groups, column, label, total, output, by=by)
    if finished["scale"].nunique() > 1:
        paths += quality_vs_scale_figure(finished, methods, column, label, total, output)
    return paths
