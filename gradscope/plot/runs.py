"""The standard figures of recorded runs, several runs overlaid and labelled by their normalization.

:func:`plot_runs` draws, for one net (default the discriminator ``D`` in its
own update phase ``d``):

=================  ==========================================================================
``grad_norms``     back-propagated gradient norm ``||dL/dh_t||`` per layer vs step (log y)
``sigma``          the sigma each layer is divided by (raw sigma when not normalized) vs step,
                   with the exact operator norm of the effective weight where recorded
``lecun_ratio``    ``fan_in * Var(W_eff)`` per layer vs step with the SN prediction
                   ``fan_in / (sqrt(m) + sqrt(n))^2`` and LeCun's 1
``variance_ratios`` forward and backward variance gains per layer (median over steps, IQR band)
``slopes``         per-sample ``||grad_x D||`` on real and fake batches (mean, min-max band)
``losses``         losses and mean D outputs vs step
=================  ==========================================================================

A figure whose statistics no run recorded is skipped (and listed in the return value).
"""
from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from gradscope.plot import style
from gradscope.plot.quantities import layer_prediction_table, run_label, unique_labels, variance_ratios
from gradscope.record import Run, load_run

FIGURES: tuple[str, ...] = ("grad_norms", "sigma", "lecun_ratio", "variance_ratios", "slopes", "losses")
MAX_POINTS = 400
_LOSS_SCALARS = (("loss_d", "D loss"), ("loss_g", "G loss"), ("d_real", "mean D(real)"), ("d_fake", "mean D(fake)"))


@dataclass(frozen=True)
class LabelledRun:
    """A loaded run and its legend label."""

    label: str
    run: Run


def load_runs(paths: Sequence[str | os.PathLike]) -> list[LabelledRun]:
    """Load run directories and label them by normalization (made unique with the directory name)."""
    if not paths:
        raise ValueError("give at least one run directory")
    runs = [load_run(p) for p in paths]
    names = [Path(p).name or str(p) for p in paths]
    labels = unique_labels([run_label(r.config, n) for r, n in zip(runs, names)], names)
    return [LabelledRun(label, run) for label, run in zip(labels, runs)]


def plot_runs(runs: Sequence[str | os.PathLike | LabelledRun], out: str | os.PathLike, *, net: str = "D",
              phase: str | None = "d", figures: Sequence[str] = FIGURES) -> dict[str, list[Path]]:
    """Draw the standard figures of ``runs`` into ``out`` (PNG and PDF each).

    Parameters
    ----------
    runs : sequence of run directories or :class:`LabelledRun`
        Runs to overlay.
    out : path
        Output directory (created).
    net : str
        Which recorded net's layers to plot (``"D"`` in GAN runs, ``"model"`` for a single module).
    phase : str or None
        Which phase's layer statistics (``"d"``: the net's own updates); ``None`` when runs have one phase.
    figures : sequence of str
        Subset of :data:`FIGURES`.

    Returns
    -------
    dict
        Figure name -> written paths; a skipped figure maps to ``[]``.

    Examples
    --------
    >>> plot_runs(["runs/sn", "runs/bssn"], "plots")  # doctest: +SKIP
    """
    for name in figures:
        if name not in FIGURES:
            raise ValueError(f"unknown figure {name!r}; valid choices: {', '.join(FIGURES)}")
    loaded = [r if isinstance(r, LabelledRun) else None for r in runs]
    if any(r is None for r in loaded):
        loaded = load_runs([r for r in runs if not isinstance(r, LabelledRun)]) + [r for r in loaded if r]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    layer_tables = [_layers_of(r.run, net, phase) for r in loaded]
    nets = sorted({n for r in loaded for n in r.run.layers["net"].unique()})
    if nets and net not in nets:
        raise ValueError(f"no statistics recorded for net {net!r}; recorded nets: {', '.join(nets)}")
    drawers = {
        "grad_norms": lambda: _per_layer(loaded, layer_tables, ["grad_out_norm"],
                                         "Back-propagated gradient norm per layer", "||dL/d output|| (log)",
                                         logy=True),
        "sigma": lambda: _sigma(loaded, layer_tables),
        "lecun_ratio": lambda: _lecun(loaded, layer_tables, net),
        "variance_ratios": lambda: _ratios(loaded, layer_tables),
        "slopes": lambda: _slopes(loaded),
        "losses": lambda: _losses(loaded),
    }
    written: dict[str, list[Path]] = {}
    for name in figures:
        fig = drawers[name]()
        written[name] = style.save_figure(fig, out / name) if fig is not None else []
    return written


def _layers_of(run: Run, net: str, phase: str | None) -> pd.DataFrame:
    rows = run.layers[run.layers["net"] == net]
    if phase is not None and phase in set(rows["phase"]):
        rows = rows[rows["phase"] == phase]
    elif rows["phase"].nunique() > 1:
        rows = rows[rows["phase"] == sorted(rows["phase"].unique())[0]]
    return rows


def _thin(frame: pd.DataFrame, column: str = "step") -> pd.DataFrame:
    steps = np.sort(frame[column].unique())
    if len(steps) <= MAX_POINTS:
        return frame
    keep = set(steps[np.linspace(0, len(steps) - 1, MAX_POINTS).round().astype(int)])
    return frame[frame[column].isin(keep)]


def _layer_grid(order: list[tuple[int, str]], title: str):
    ncols = min(4, len(order))
    nrows = math.ceil(len(order) / ncols)
    fig, axes = style.new_figure(nrows, ncols, panel_size=(2.5, 1.9), title=title)
    for ax in axes.flat[len(order):]:
        ax.set_visible(False)
    return fig, axes


def _layer_order(tables: Sequence[pd.DataFrame], stats: Sequence[str]) -> list[tuple[int, str]]:
    rows = pd.concat([t[t["stat"].isin(stats)][["layer_index", "layer"]] for t in tables])
    return sorted(set(map(tuple, rows.drop_duplicates().to_numpy().tolist())))


def _per_layer(loaded, tables, stats, title, ylabel, *, logy=False, styles=None, reference=None):
    order = _layer_order(tables, stats)
    if not order:
        return None
    fig, axes = _layer_grid(order, title)
    for panel, (index, layer) in enumerate(order):
        ax = axes.flat[panel]
        for r, (item, table) in enumerate(zip(loaded, tables)):
            for s, stat in enumerate(stats):
                rows = _thin(table[(table["layer"] == layer) & (table["stat"] == stat)])
                if rows.empty:
                    continue
                kwargs = {"color": style.color(r), "linestyle": style.LINESTYLES[s % len(style.LINESTYLES)]}
                if styles:
                    kwargs.update(styles.get(stat, {}))
                label = item.label if s == 0 else f"{item.label} ({stat})"
                ax.plot(rows["step"], rows["value"], label=label if panel == 0 else None, **kwargs)
        if reference is not None:
            reference(ax, layer, panel == 0)
        values = pd.concat([t[(t["layer"] == layer) & t["stat"].isin(stats)]["value"] for t in tables])
        style.label_axes(ax, "step", ylabel, f"{index}: {layer}", logy=logy or style.wants_log(values))
    style.figure_legend(fig, axes.flat[0])
    return fig


def _sigma(loaded, tables):
    # Unnormalized layers have no "sigma" buffer: show their raw weight's exact sigma instead.
    merged = []
    for t in tables:
        normalized = set(t.loc[t["stat"] == "sigma", "layer"])
        raw = t[(t["stat"] == "sigma_raw_fwd") & ~t["layer"].isin(normalized)].assign(stat="sigma")
        merged.append(pd.concat([t[t["stat"].isin(["sigma", "sigma_op"])], raw]))
    return _per_layer(loaded, merged, ["sigma", "sigma_op"],
                      "Spectral norms per layer: divisor sigma (solid), operator norm of W_eff (dotted)",
                      "spectral norm", styles={"sigma_op": {"linestyle": ":", "marker": ".", "markersize": 3}})


def _lecun(loaded, tables, net):
    predictions = {}
    for item in reversed(loaded):
        predictions.update(layer_prediction_table(item.run.architecture, net))

    def reference(ax, layer, first):
        if layer in predictions:
            style.theory_line(ax, predictions[layer], "SN theory (1+sqrt(m/n))^-2" if first else None)
        ax.axhline(1.0, color=style.THEORY_COLOR, linewidth=0.8, linestyle=":",
                   label="LeCun (1)" if first else None)

    return _per_layer(loaded, tables, ["lecun_ratio"], "LeCun ratio fan_in * Var(W_eff) per layer",
                      "fan_in * Var(W_eff)", reference=reference)


def _ratios(loaded, tables):
    ratios = [variance_ratios(t) for t in tables]
    if all(r.empty for r in ratios):
        return None
    fig, axes = style.new_figure(1, 2, panel_size=(3.4, 2.6), sharey=True,
                                 title="Variance gain per layer (median over steps, band: quartiles)")
    for col, direction in enumerate(("forward", "backward")):
        ax = axes[0, col]
        for r, (item, frame) in enumerate(zip(loaded, ratios)):
            rows = frame[(frame["direction"] == direction) & np.isfinite(frame["ratio"]) & (frame["ratio"] > 0)]
            if rows.empty:
                continue
            stats = rows.groupby("layer_index")["ratio"].describe()
            ax.plot(stats.index, stats["50%"], marker="o", markersize=3, label=item.label, **style.series_style(r))
            ax.fill_between(stats.index, stats["25%"], stats["75%"], color=style.color(r), alpha=0.2, linewidth=0)
        ax.axhline(1.0, color=style.THEORY_COLOR, linestyle="--", linewidth=1.0, label="1 (variance kept)")
        what = (r"Var($a_t$) / Var($a_{t-1}$)" if direction == "forward"
                else r"Var($\partial D/\partial a_{t-1}$) / Var($\partial D/\partial a_t$)")
        style.label_axes(ax, "layer index t (input -> output)", what, f"{direction}", logy=True)
        style.integer_ticks(ax)
    style.legend(axes[0, 0])
    return fig


def _slopes(loaded):
    kinds = sorted({name.split("_")[1] for item in loaded for name in item.run.scalars["name"].unique()
                    if name.startswith("slope_") and name.count("_") == 2})
    if not kinds:
        return None
    fig, axes = style.new_figure(1, len(kinds), panel_size=(3.4, 2.6), sharey=True,
                                 title="Input-gradient norm ||grad_x D(x)|| per sample (mean; band: min-max)")
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
        style.label_axes(ax, "step", "||grad_x D(x)||", f"{kind} batch")
    for ax in axes.flat:
        if style.wants_log(values):
            ax.set_yscale("log")
    style.legend(axes[0, 0])
    return fig


def _scalar_wide(run: Run, names: Sequence[str]) -> pd.DataFrame | None:
    rows = run.scalars[run.scalars["name"].isin(names)]
    if rows.empty:
        return None
    wide = _thin(rows).pivot_table(index="step", columns="name", values="value", aggfunc="last")
    return wide if all(n in wide for n in names) else None


def _losses(loaded):
    present = [(name, label) for name, label in _LOSS_SCALARS
               if any(name in set(item.run.scalars["name"]) for item in loaded)]
    if not present:
        return None
    fig, axes = style.new_figure(1, len(present), panel_size=(2.7, 2.3), title="Losses and discriminator outputs")
    for col, (name, label) in enumerate(present):
        ax = axes[0, col]
        for r, item in enumerate(loaded):
            rows = _thin(item.run.scalars[item.run.scalars["name"] == name])
            if not rows.empty:
                ax.plot(rows["step"], rows["value"], label=item.label, **style.series_style(r))
        style.label_axes(ax, "step", label, label)
    style.legend(axes[0, 0])
    return fig
