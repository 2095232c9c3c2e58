"""The standard figures of recorded runs, several runs overlaid and labelled by their normalization.

:func:`run_figures` draws (and :func:`plot_runs` writes, PNG and PDF), for one
net and phase (by default ``D`` in its own updates ``d`` for a GAN run, the
only net and ``train`` for a ``Recorder(model)`` run):

=================  ==========================================================================
``grad_norms``     back-propagated gradient norm ``||dL/d output||`` per layer vs step (log y)
``sigma``          the sigma each normalized layer is divided by, the exact sigma of the raw
                   weight of layers that are not normalized, and the exact operator norm of the
                   effective weight, each where recorded
``lecun_ratio``    ``fan_in * Var(W_eff)`` per layer vs step with the SN prediction
                   ``fan_in / (sqrt(m) + sqrt(n))^2`` and LeCun's 1
``variance_ratios`` forward and backward variance gains per layer (median over steps, IQR band)
``gradient_flow``  per-layer statistics from input to output at chosen steps (:mod:`.flow`)
``slopes``         per-sample ``||grad_x f(x)||`` on the recorded batches (mean, min-max band)
``quality``        sample-quality metrics (FID, IS, KID, modes covered) vs step, with the
                   real-vs-real floor where known (:mod:`.quality`, :mod:`.metric_info`)
``losses``         losses (and mean D outputs of a GAN) vs step, raw faint, running mean bold
=================  ==========================================================================

Gradients are of the loss ``L`` (``loss_name`` says what it is); in a GAN run
of gradscope's trainer, of D's loss ``L_D`` in phase ``d`` and of G's loss
``L_G`` in phase ``g``. Panels are titled by the layer's ``named_modules``
path (shortened when long, never ambiguously); a figure whose statistics no
run recorded is skipped (and maps to ``None`` / ``[]``).
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from gradscope.plot import style
from gradscope.plot.flow import DEFAULT_FLOW_STEPS, draw_gradient_flow
from gradscope.plot.labels import (
    LossSymbol,
    is_gan_run,
    loss_symbol,
    merge_symbols,
    short_layer_names,
    with_note,
)
from gradscope.plot.quality import draw_quality
from gradscope.plot.quantities import layer_prediction_table, variance_ratios
from gradscope.plot.scalar_figures import draw_losses, draw_slopes
from gradscope.plot.selection import (
    MAX_POINTS,
    LabelledRun,
    RunLike,
    choose_net,
    choose_phase,
    layers_of,
    load_runs,
    thin,
)
from gradscope.plot.ticks import can_log, has_data, log_scale, mark_not_recorded

__all__ = ["FIGURES", "MAX_PANELS", "MAX_POINTS", "LabelledRun", "load_runs", "plot_runs", "run_figures"]

FIGURES: tuple[str, ...] = ("grad_norms", "sigma", "lecun_ratio", "variance_ratios", "gradient_flow", "slopes",
                            "quality", "losses")
#: Most per-layer panels in one figure; a deeper net shows evenly spaced layers (gradient_flow shows all).
MAX_PANELS = 16
_SIGMA_SERIES = (
    ("sigma", "sigma the layer is divided by", {"linestyle": "-"}),
    ("sigma_raw_fwd", "sigma of the raw weight (layer not normalized)", {"linestyle": "--"}),
    ("sigma_op", "operator norm of W_eff", {"linestyle": ":", "marker": ".", "markersize": 4}),
)


def plot_runs(runs: Sequence[RunLike], out: str | os.PathLike, *, net: str | None = None,
              phase: str | None = None, figures: Sequence[str] = FIGURES, loss_name: str | None = None,
              flow_stats: Sequence[str] | None = None, flow_steps: Sequence[int | str] | None = None,
              flow_n_steps: int = DEFAULT_FLOW_STEPS) -> dict[str, list[Path]]:
    """Draw the standard figures of ``runs`` into ``out`` (PNG and PDF each).

    Parameters
    ----------
    runs : sequence of run directories, :class:`~gradscope.record.Run` or :class:`LabelledRun`
        Runs to overlay.
    out : path
        Output directory (created).
    net, phase, figures, loss_name, flow_stats, flow_steps, flow_n_steps
        As for :func:`run_figures`.

    Returns
    -------
    dict
        Figure name -> written paths; a skipped figure maps to ``[]``.

    Examples
    --------
    >>> plot_runs(["runs/sn", "runs/bssn"], "plots")  # doctest: +SKIP
    >>> plot_runs(["runs/mine"], "plots", loss_name="cross-entropy", flow_steps=[0, 500, "last"])  # doctest: +SKIP
    """
    drawn = run_figures(runs, net=net, phase=phase, figures=figures, loss_name=loss_name, flow_stats=flow_stats,
                        flow_steps=flow_steps, flow_n_steps=flow_n_steps)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    return {name: style.save_figure(fig, out / name) if fig is not None else [] for name, fig in drawn.items()}


def run_figures(runs: Sequence[RunLike], *, net: str | None = None, phase: str | None = None,
                figures: Sequence[str] = FIGURES, loss_name: str | None = None,
                flow_stats: Sequence[str] | None = None, flow_steps: Sequence[int | str] | None = None,
                flow_n_steps: int = DEFAULT_FLOW_STEPS) -> dict[str, Figure | None]:
    """The standard figures of ``runs`` as open matplotlib figures (``None`` for a skipped one).

    Parameters
    ----------
    runs : sequence of run directories, :class:`~gradscope.record.Run` or :class:`LabelledRun`
        Runs to overlay.
    net : str, optional
        Which recorded net's layers (default ``"D"`` when recorded, else the only net, e.g. ``"model"``).
    phase : str, optional
        Which phase's layer statistics (default ``"d"``, D's own updates, else ``"train"``, else the first).
    figures : sequence of str
        Subset of :data:`FIGURES`.
    loss_name : str, optional
        What the loss ``L`` is (``"cross-entropy"``); written on the gradient axes.
    flow_stats, flow_steps, flow_n_steps
        ``stats``, ``steps`` and ``n_steps`` of the ``gradient_flow`` figure
        (:func:`gradscope.plot.flow.plot_gradient_flow`).

    Returns
    -------
    dict
        Figure name -> :class:`~matplotlib.figure.Figure` or ``None``, in the order of ``figures``.

    Examples
    --------
    >>> figs = run_figures(["runs/mine"], figures=["grad_norms"], loss_name="MSE")  # doctest: +SKIP
    >>> figs["grad_norms"].axes[0].get_title()  # doctest: +SKIP
    'encoder.0'
    """
    if isinstance(figures, str):
        figures = [figures]
    for name in figures:
        if name not in FIGURES:
            raise ValueError(f"unknown figure {name!r}; valid choices: {', '.join(FIGURES)}")
    loaded = load_runs(runs)
    net = choose_net(loaded, net)
    phase = choose_phase(loaded, net, phase)
    loss = merge_symbols([_loss_of(item, phase, loss_name) for item in loaded])
    tables = [layers_of(item.run, net, phase) for item in loaded]
    where = f"net {net}, phase {phase}"
    drawers = {
        "grad_norms": lambda: _per_layer(
            loaded, tables, [("grad_out_norm", None, {})], f"Back-propagated gradient norm per layer vs step\n{where}",
            with_note(f"||d{loss.symbol}/d output||", loss), logy=True),
        "sigma": lambda: _sigma(loaded, tables, where),
        "lecun_ratio": lambda: _lecun(loaded, tables, net, where),
        "variance_ratios": lambda: _ratios(loaded, tables, loss, where),
        "gradient_flow": lambda: draw_gradient_flow(loaded, stats=flow_stats, steps=flow_steps,
                                                    n_steps=flow_n_steps, net=net, phase=phase, loss_name=loss_name),
        "slopes": lambda: draw_slopes(loaded, "D" if _is_gan(loaded) else "f"),
        "quality": lambda: draw_quality(loaded, "step (generator updates)" if _is_gan(loaded) else "step"),
        "losses": lambda: draw_losses(loaded, gan=_is_gan(loaded), loss_name=loss_name),
    }
    drawn: dict[str, Figure | None] = {}
    try:
        for name in figures:
            drawn[name] = drawers[name]()
    except BaseException:
        style.close_all(f for f in drawn.values() if f is not None)
        raise
    return drawn


def _is_gan(loaded: Sequence[LabelledRun]) -> bool:
    return any(is_gan_run(set(item.run.nets()), set(item.run.phases())) for item in loaded)


def _loss_of(item: LabelledRun, phase: str | None, loss_name: str | None) -> LossSymbol:
    return loss_symbol(set(item.run.nets()), set(item.run.phases()), phase or "", item.run.config, loss_name)


def _layer_order(tables: Sequence[pd.DataFrame], stats: Sequence[str]) -> list[str]:
    rows = pd.concat([t[t["stat"].isin(stats)][["layer_index", "layer"]] for t in tables])
    first = rows.groupby("layer")["layer_index"].min().reset_index()
    return first.sort_values(["layer_index", "layer"], kind="mergesort")["layer"].tolist()


def _spread(order: list[str], most: int = MAX_PANELS) -> list[str]:
    if len(order) <= most:
        return order
    return [order[i] for i in np.unique(np.linspace(0, len(order) - 1, most).round().astype(int))]


def _layer_grid(n: int, title: str):
    ncols = min(4, n)
    nrows = -(-n // ncols)
    fig, axes = style.new_figure(nrows, ncols, panel_size=(max(2.7, 7.0 / ncols), 2.0), title=title)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, axes


def _per_layer(loaded, tables, series, title, ylabel, *, logy=False, reference=None):
    """One panel per layer (titled by its path), one line per run and series ``(stat, description, style)``."""
    stats = [stat for stat, _, _ in series]
    order = _layer_order(tables, stats)
    if not order:
        return None
    shown = _spread(order)
    if len(shown) < len(order):
        title += f"; {len(shown)} of {len(order)} layers, evenly spaced (gradient_flow shows all)"
    names = short_layer_names(order)
    fig, axes = _layer_grid(len(shown), title)
    for panel, (ax, layer) in enumerate(zip(axes.flat, shown)):
        values = []
        for r, (item, table) in enumerate(zip(loaded, tables)):
            for s, (stat, what, kwargs) in enumerate(series):
                rows = thin(table[(table["layer"] == layer) & (table["stat"] == stat)])
                if rows.empty:
                    continue
                label = what if len(loaded) == 1 and what else item.label if not what else f"{item.label}: {what}"
                ax.plot(rows["step"], rows["value"], label=label,
                        **{"color": style.color(r), "linestyle": style.LINESTYLES[s % len(style.LINESTYLES)],
                           **kwargs})
                values.extend(rows["value"].tolist())
        # the quantity is the same in every panel: say it once per row, leaving the panels room
        style.label_axes(ax, "step", ylabel if panel % axes.shape[1] == 0 else "", names[layer])
        style.integer_ticks(ax)
        if not has_data(values):
            for line in list(ax.lines):
                line.remove()
            mark_not_recorded(ax, "every value is 0" if values else None)
            continue
        if reference is not None:
            reference(ax, layer)
        if (logy or style.wants_log(values)) and can_log(values):
            log_scale(ax, "y")
    style.figure_legend(fig, axes.flat[0], axes=axes.flat)
    return fig


def _sigma(loaded, tables, where):
    # A layer without a normalization has no "sigma" buffer: its raw weight's sigma is its own series,
    # exact (sigma_raw_fwd) where recorded, else the recorder's power-iteration estimate (sigma_fwd).
    merged = []
    for t in tables:
        normalized = set(t.loc[t["stat"] == "sigma", "layer"])
        exact = set(t.loc[t["stat"] == "sigma_raw_fwd", "layer"])
        plain = ~t["layer"].isin(normalized)
        raw = t[plain & ((t["stat"] == "sigma_raw_fwd") | ((t["stat"] == "sigma_fwd") & ~t["layer"].isin(exact)))]
        merged.append(pd.concat([t[t["stat"].isin(["sigma", "sigma_op"])], raw.assign(stat="sigma_raw_fwd")]))
    return _per_layer(loaded, merged, _SIGMA_SERIES, f"Spectral norms per layer vs step\n{where}", "spectral norm")


def _lecun(loaded, tables, net, where):
    predictions = {}
    for item in reversed(loaded):
        predictions.update(layer_prediction_table(item.run.architecture, net, normalized_only=True))

    def reference(ax, layer):
        if layer in predictions:
            style.theory_line(ax, predictions[layer], "SN theory (1+sqrt(m/n))^-2")
        ax.axhline(1.0, color=style.THEORY_COLOR, linewidth=0.8, linestyle=":", label="LeCun (1)")

    return _per_layer(loaded, tables, [("lecun_ratio", None, {})],
                      f"LeCun ratio fan_in * Var(W_eff) per layer vs step\n{where}", "fan_in * Var(W_eff)",
                      reference=reference)


def _ratios(loaded, tables, loss: LossSymbol, where):
    ratios = [variance_ratios(t) for t in tables]
    if all(r.empty for r in ratios):
        return None
    fig, axes = style.new_figure(1, 2, panel_size=(3.6, 2.8), sharey=True,
                                 title=f"Variance gain per layer, median over steps (band: quartiles)\n{where}")
    d = f"d{loss.symbol}"
    for col, direction in enumerate(("forward", "backward")):
        ax = axes[0, col]
        drawn = []
        for r, (item, frame) in enumerate(zip(loaded, ratios)):
            rows = frame[(frame["direction"] == direction) & np.isfinite(frame["ratio"]) & (frame["ratio"] > 0)]
            if rows.empty:
                continue
            stats = rows.groupby("layer_index")["ratio"].describe()
            ax.plot(stats.index, stats["50%"], marker="o", markersize=3, label=item.label, **style.series_style(r))
            ax.fill_between(stats.index, stats["25%"], stats["75%"], color=style.color(r), alpha=0.2, linewidth=0)
            drawn.extend(stats["50%"].tolist())
        what = (r"Var($a_t$) / Var($a_{t-1}$)" if direction == "forward"
                else f"Var(${d}/da_{{t-1}}$) / Var(${d}/da_t$)")
        title = f"{direction} ({loss.note()})" if col and loss.note() else direction
        style.label_axes(ax, "layer index t (input \u2192 output)", what, title)
        if not drawn:
            mark_not_recorded(ax)
            continue
        ax.axhline(1.0, color=style.THEORY_COLOR, linestyle="--", linewidth=1.0, label="1 (variance kept)")
        log_scale(ax, "y")
        style.integer_ticks(ax)
    style.figure_legend(fig, axes[0, 0], axes=axes.flat)
    return fig

