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
from gradscope.plot.selection import LabelledRun, thin
from gradscope.plot.ticks import can_log, log_scale

#: The trainer's scalars, in the order their panels appear, with their axis labels.
GAN_SCALARS: tuple[tuple[str, str], ...] = (("loss_d", "D loss L_D"), ("loss_g", "G loss L_G"),
                                            ("d_real", "mean D(real)"), ("d_fake", "mean D(fake)"))
MAX_LOSS_PANELS = 6


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


def draw_losses(loaded: Sequence[LabelledRun], gan: bool = False, loss_name: str | None = None) -> Figure | None:
    """Losses (and, in a GAN run, mean D outputs) vs step, one panel per logged scalar.

    A scalar named ``loss`` of a non-GAN run is the loss ``L``, described by ``loss_name`` when given.
    """
    present = loss_scalars(loaded)
    if not present:
        return None
    if loss_name and not gan:
        present = [(n, f"loss L: {loss_name}" if n == "loss" else label) for n, label in present]
    title = "Losses and discriminator outputs vs step" if gan else "Losses vs step"
    fig, axes = style.new_figure(1, len(present), panel_size=(max(2.8, 6.0 / len(present)), 2.4), title=title)
    for col, (name, label) in enumerate(present):
        ax = axes[0, col]
        for r, item in enumerate(loaded):
            rows = thin(item.run.scalars[item.run.scalars["name"] == name])
            if not rows.empty:
                ax.plot(rows["step"], rows["value"], label=item.label, **style.series_style(r))
        style.label_axes(ax, "step", label, label)
        style.integer_ticks(ax)
    style.figure_legend(fig, axes[0, 0], axes=axes.flat)
    return fig
