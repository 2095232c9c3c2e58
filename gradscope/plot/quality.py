"""The sample-quality figure: FID, IS, KID (and the 2D mode metrics) of each run vs step, runs overlaid.

One panel per logged metric (:func:`gradscope.plot.metric_info.quality_metrics`),
one marked line per run, the metric's spread (``*_std``) as a band, and the
real-vs-real floor as a dashed line where it is known for the sample count the
runs were evaluated on (``eval_samples`` of their configuration).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from gradscope.plot import style
from gradscope.plot.metric_info import floor_for, metric_info, quality_metrics
from gradscope.plot.selection import LabelledRun, last_per_step, thin
from gradscope.plot.ticks import can_log, log_scale

#: Most metric panels in the figure (an extra one is listed in the report's table only).
MAX_QUALITY_PANELS = 6
#: Legend entry of the dashed real-vs-real line (the same in every panel, so listed once).
FLOOR_LABEL = "real-vs-real floor"


def eval_samples(item: LabelledRun) -> int | None:
    """How many generated samples each evaluation of the run used (its config's ``eval_samples``)."""
    value = (item.run.config or {}).get("eval_samples")
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def logged_quality_metrics(loaded: Sequence[LabelledRun]) -> list[str]:
    """The sample-quality metrics any of the runs logged, in display order."""
    return quality_metrics({str(n) for item in loaded for n in item.run.scalars["name"].unique()})


def metric_series(run, name: str) -> pd.Series:
    """One scalar of ``run`` as a series indexed by step (the last value logged at each step, NaN included)."""
    return last_per_step(run.scalars[run.scalars["name"] == name])



def draw_quality(loaded: Sequence[LabelledRun], step_label: str = "step") -> Figure | None:
    """Sample-quality metrics vs step, one panel per metric, one line per run; ``None`` when none was logged."""
    names = logged_quality_metrics(loaded)[:MAX_QUALITY_PANELS]
    if not names:
        return None
    counts = sorted({n for n in map(eval_samples, loaded) if n is not None})
    ncols = min(3, len(names))
    nrows = -(-len(names) // ncols)
    floors = {name: sorted({floor_for(name, n) for n in (counts or [None])} - {None}, key=lambda f: f.value)
              for name in names}
    spreads = {name: metric_info(name).std_name for name in names}
    has_spread = any(not metric_series(item.run, std).empty for std in filter(None, spreads.values())
                     for item in loaded)
    on = f" on {counts[0]:,} generated samples" if len(counts) == 1 else ""
    keys = (["band: std over splits / subsets"] if has_spread else []) + (
        ["dashed: real-vs-real floor on the same sample count"] if any(floors.values()) else [])
    title = f"Sample quality vs step (markers: evaluations{on})" + ("\n" + "; ".join(keys) if keys else "")
    fig, axes = style.new_figure(nrows, ncols, panel_size=(max(3.2, 8.4 / ncols), 2.8), title=title)
    for ax in axes.flat[len(names):]:
        ax.set_visible(False)
    for ax, name in zip(axes.flat, names):
        info = metric_info(name)
        values: list[float] = []
        for r, item in enumerate(loaded):
            series = metric_series(item.run, name)
            if series.empty:
                continue
            frame = thin(series.rename("value").reset_index())
            ax.plot(frame["step"], frame["value"], marker="o", markersize=3, label=item.label,
                    **style.series_style(r))
            values.extend(frame["value"].tolist())
            spread = metric_series(item.run, spreads[name]) if spreads[name] else pd.Series(dtype=float)
            if not spread.empty:
                both = pd.concat([series.rename("mean"), spread.rename("std")], axis=1, join="inner")
                ax.fill_between(both.index, both["mean"] - both["std"], both["mean"] + both["std"],
                                color=style.color(r), alpha=0.18, linewidth=0)
        for floor in floors[name]:
            count = f"{floor.n_samples:,} samples" if floor.n_samples else "any sample count"
            style.theory_line(ax, floor.value, f"{FLOOR_LABEL} ({count})")
            ax.annotate(f"real data: {floor.value:g}", xy=(1.0, floor.value), xycoords=("axes fraction", "data"),
                        ha="right", va="bottom", fontsize=7, color=style.THEORY_COLOR)
            values.append(floor.value)
        style.label_axes(ax, step_label, info.axis_label(), info.short)
        style.integer_ticks(ax)
        finite = np.asarray(values, dtype=float)
        if style.wants_log(finite) and can_log(finite):
            log_scale(ax, "y")
        else:
            ax.ticklabel_format(axis="y", useOffset=False)  # 1.0004, not "+1" and 0.0004
    style.figure_legend(fig, axes.flat[0], axes=axes.flat)
    return fig
