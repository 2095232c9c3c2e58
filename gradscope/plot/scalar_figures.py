"""The run figures drawn from the scalars table: input-gradient slopes and losses.

A GAN run of gradscope's trainer logs ``loss_d``, ``loss_g``, ``d_real`` and
``d_fake``; any other run logs what its code passed to
``Recorder.log_scalars``. Every scalar whose name contains ``loss`` is drawn
as a loss, so ``rec.log_scalars(step, {"loss": ...})`` has its figure too.
"""
from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
from matplotlib.figure import Figure

from gradscope.plot import style
from gradscope.plot.selection import LabelledRun, last_per_step, thin
from gradscope.plot.ticks import can_log, log_scale

#: The trainer's scalars, in the order their panels appear, with their axis labels.
GAN_SCALARS: tuple[tuple[str, str], ...] = (("loss_d", "D loss L_D"), ("loss_g", "G loss L_G"),
                                            ("d_real", "mean D(real)"), ("d_fake", "mean D(fake)"))
MAX_LOSS_PANELS = 6
#: Shortest loss trace drawn with a running mean (shorter ones are drawn as logged).
MIN_SMOOTHED = 20
#: Opacity of a raw loss trace under its running mean.
RAW_ALPHA = 0.35


def draw_slopes(loaded: Sequence[LabelledRun], f: str = "f") -> Figure | None:
    """Per-sample input-gradient norms ``||grad_x f(x)||`` per batch kind (mean line, min-max band)."""
    kinds = sorted({name.split("_")[1] for item in loaded for name in item.run.scalars["name"].unique()
                    if name.startswith("slope_") and name.count("_") == 2})
    if not kinds:
        return None
    fig, axes = style.new_figure(1, len(kinds), panel_size=(3.6, 2.7), sharey=True,
                                 title=f"Input-gradient norm ||grad_x {f}(x)|| per sample, vs step\n"
                                       "line: batch mean; band: min to max")
    values = []
    for col, kind in enumerate(kinds):
        ax = axes[0, col]
        for r, item in enumerate(loaded):
            wide = _scalar_wide(item.run, [f"slope_{kind}_{s}" for s in ("min", "mean", "max")])
            if wide is None:
                continue
            ax.plot(wide.index, wide[f"slope_{kind}_mean"], label=item.label, **style.series_style(r))
            ax.fill_between(wide.index, wide[f"slope_{kind}_min"], wide[f"slope_{kind}_max"],
                            color=style.color(r), alpha=0.2, linewidth=0)
            values.extend(wide.to_numpy().ravel())
        style.label_axes(ax, "step", f"||grad_x {f}(x)||" if col == 0 else "", f"{kind} batch")
        style.integer_ticks(ax)
    if style.wants_log(values) and can_log(values):
        for ax in axes.flat:
            log_scale(ax, "y")
    style.legend(axes[0, 0])
    return fig


def _scalar_wide(run, names: Sequence[str]) -> pd.DataFrame | None:
    rows = run.scalars[run.scalars["name"].isin(names)]
    if rows.empty:
        return None
    wide = thin(rows).pivot_table(index="step", columns="name", values="value", aggfunc="last")
    return wide if all(n in wide for n in names) else None


def loss_scalars(loaded: Sequence[LabelledRun]) -> list[tuple[str, str]]:
    """``(scalar name, axis label)`` of the losses (and D outputs) the runs logged, GAN ones first."""
    names = {str(n) for item in loaded for n in item.run.scalars["name"].unique()}
    known = [(name, label) for name, label in GAN_SCALARS if name in names]
    taken = {name for name, _ in known}
    others = sorted(n for n in names if "loss" in n.lower() and n not in taken)
    return (known + [(n, n) for n in others])[:MAX_LOSS_PANELS]


def smoothing_window(n_values: int) -> int:
    """Values in the centred running mean of a loss trace of ``n_values`` logged values (odd; 1: none).

    About 5 % of the trace, at least 5 values; traces of fewer than :data:`MIN_SMOOTHED` values are not smoothed.

    Examples
    --------
    >>> smoothing_window(10), smoothing_window(60), smoothing_window(1000)
    (1, 5, 51)
    """
    if n_values < MIN_SMOOTHED:
        return 1
    return max(5, n_values // 20) | 1


def smooth(values: pd.Series, window: int) -> pd.Series:
    """Centred running mean over ``window`` values (shorter at the ends, never shifted)."""
    if window <= 1:
        return values
    return values.rolling(window, center=True, min_periods=1).mean()


def draw_losses(loaded: Sequence[LabelledRun], gan: bool = False, loss_name: str | None = None) -> Figure | None:
    """Losses (and, in a GAN run, mean D outputs) vs step, one panel per logged scalar.

    Each trace is drawn faint as logged and bold as its centred running mean
    (:func:`smoothing_window`), so the trend shows through the minibatch noise;
    the mean is taken over every logged value before long traces are thinned for drawing.
    A scalar named ``loss`` of a non-GAN run is the loss ``L``, described by ``loss_name`` when given.
    """
    present = loss_scalars(loaded)
    if not present:
        return None
    if loss_name and not gan:
        present = [(n, f"loss L: {loss_name}" if n == "loss" else label) for n, label in present]
    traces = {}
    for name, _ in present:
        for r, item in enumerate(loaded):
            rows = item.run.scalars[item.run.scalars["name"] == name]
            if not rows.empty:
                traces[name, r] = last_per_step(rows)
    windows = {smoothing_window(len(trace)) for trace in traces.values()}
    title = "Losses and discriminator outputs vs step" if gan else "Losses vs step"
    if max(windows) > 1:
        over = (f"{max(windows)} logged values" if len(windows) == 1
                else "about 5 % of each run's logged values")
        title += f"\nfaint: every logged value; bold: centred running mean over {over}"
    ncols = min(len(present), 4)
    nrows = -(-len(present) // ncols)
    fig, axes = style.new_figure(nrows, ncols, panel_size=(max(2.8, 8.8 / ncols), 2.5), title=title)
    for ax in axes.flat[len(present):]:
        ax.set_visible(False)
    for ax, (name, label) in zip(axes.flat, present):
        for r, item in enumerate(loaded):
            if (name, r) not in traces:
                continue
            trace = traces[name, r]
            window = smoothing_window(len(trace))
            frame = thin(pd.DataFrame({"step": trace.index, "raw": trace.to_numpy(),
                                       "mean": smooth(trace, window).to_numpy()}))
            if window > 1:
                ax.plot(frame["step"], frame["raw"], color=style.color(r), alpha=RAW_ALPHA, linewidth=0.7)
                ax.plot(frame["step"], frame["mean"], label=item.label, **style.series_style(r))
            else:
                ax.plot(frame["step"], frame["raw"], label=item.label, **style.series_style(r))
        style.label_axes(ax, "step (generator updates)" if gan else "step", label, label)
        style.integer_ticks(ax)
    style.figure_legend(fig, axes.flat[0], axes=axes.flat)
    return fig
