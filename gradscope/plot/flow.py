"""The gradient-flow figure: per-layer statistics from input to output, one line per chosen step.

Where :mod:`gradscope.plot.runs` draws one small panel per layer against the
step, this figure turns the table the other way: layers on the x axis in the
order they run (``layer_index``), one line per chosen step, so a gradient
that vanishes towards the input, or a variance that grows layer by layer,
is one glance. It is drawn for any recorded model, 3 layers or 1000:

- up to :data:`NAMED_TICKS_UP_TO` layers, every tick is labelled with the
  layer's (shortened, unambiguous) ``named_modules`` path;
- beyond, ticks are layer indices and a table under the panels maps each
  index to its path; the width never exceeds ``max_width`` inches.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, MaxNLocator

from gradscope.plot import style
from gradscope.plot.labels import (
    loss_symbol,
    short_layer_names,
    stat_label,
    stat_meaning,
    uses_loss,
    with_note,
)
from gradscope.plot.selection import (
    LabelledRun,
    RunLike,
    choose_net,
    choose_phase,
    layers_of,
    load_runs,
)
from gradscope.plot.ticks import can_log, has_data, log_scale, mark_not_recorded
from gradscope.record.stats import STATS

#: Statistics drawn by default (those recorded): the backward signal, the weight gradient, the forward signal.
FLOW_STATS: tuple[str, ...] = ("grad_out_norm", "grad_w_raw_norm", "act_out_var")
DEFAULT_FLOW_STEPS = 5
MAX_FLOW_STEPS = 12
#: Widest figure in inches (fits a page or a screen; more layers get closer together instead).
MAX_FLOW_WIDTH = 12.0
#: Most layers whose names label the x axis; more get index ticks and a name table.
NAMED_TICKS_UP_TO = 30
STEP_WORDS = ("first", "last")
_TABLE_CHARS = 40
_TABLE_MAX_COLUMNS = 8
_TABLE_MAX_ROWS = 25
_PANEL_HEIGHT = 2.4
_CHAR_INCHES = 0.06  # width of one tick-label character at 7 pt


def plot_gradient_flow(runs: RunLike | Sequence[RunLike], *, stats: Sequence[str] | None = None,
                       steps: Sequence[int | str] | None = None, n_steps: int = DEFAULT_FLOW_STEPS,
                       net: str | None = None, phase: str | None = None, loss_name: str | None = None,
                       max_width: float = MAX_FLOW_WIDTH) -> Figure:
    """Per-layer statistics at chosen steps, layers from input to output on the x axis.

    Parameters
    ----------
    runs : run directory, :class:`~gradscope.record.Run` or :class:`LabelledRun`, or a sequence of them
        One panel per run and statistic (runs stacked).
    stats : sequence of str, optional
        Per-layer statistics, one panel each (default: those of :data:`FLOW_STATS` that were recorded).
        Any recorded name works, including ones gradscope does not know; a known statistic that was
        not recorded gets a panel saying so.
    steps : sequence of int or "first" / "last", optional
        Steps to draw, one line each (at most :data:`MAX_FLOW_STEPS`); each must have been recorded.
    n_steps : int
        Without ``steps``: this many recorded steps, evenly spaced from the first to the last.
    net, phase : str, optional
        Which net and phase (default ``D`` / ``d`` in a GAN run, else the only net and ``train``).
    loss_name : str, optional
        What the loss ``L`` is (``"cross-entropy"``), written under gradient axes.
    max_width : float
        Figure width cap in inches.

    Returns
    -------
    matplotlib.figure.Figure
        Save it with :func:`gradscope.plot.style.save_figure` or ``fig.savefig``.

    Examples
    --------
    >>> import torch, gradscope
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    >>> with gradscope.Recorder(model, every=1, alerts=[]) as rec:
    ...     for step in range(3):
    ...         model(torch.randn(16, 4)).pow(2).mean().backward()
    ...         rec.step(step)
    ...     run = rec.run()
    >>> fig = gradscope.plot_gradient_flow(run, stats=["grad_out_norm"], loss_name="MSE")
    >>> [line.get_label() for line in fig.axes[0].lines]
    ['0', '1', '2']
    """
    fig = draw_gradient_flow(load_runs(runs), stats=stats, steps=steps, n_steps=n_steps, net=net, phase=phase,
                             loss_name=loss_name, max_width=max_width)
    if fig is None:
        raise ValueError(f"none of {', '.join(FLOW_STATS)} was recorded; pass stats= with recorded statistics")
    return fig


def draw_gradient_flow(loaded: Sequence[LabelledRun], *, stats: Sequence[str] | None = None,
                       steps: Sequence[int | str] | None = None, n_steps: int = DEFAULT_FLOW_STEPS,
                       net: str | None = None, phase: str | None = None, loss_name: str | None = None,
                       max_width: float = MAX_FLOW_WIDTH) -> Figure | None:
    """:func:`plot_gradient_flow` on loaded runs; ``None`` when no default statistic was recorded."""
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or not 1 <= n_steps <= MAX_FLOW_STEPS:
        raise ValueError(f"n_steps must be an integer from 1 to {MAX_FLOW_STEPS}, got {n_steps!r}")
    if not isinstance(max_width, (int, float)) or not 4.0 <= max_width <= 100.0:
        raise ValueError(f"max_width must be a number of inches from 4 to 100, got {max_width!r}")
    net = choose_net(loaded, net)
    phase = choose_phase(loaded, net, phase)
    tables = [layers_of(item.run, net, phase) for item in loaded]
    chosen = _choose_stats(tables, stats, net, phase)
    if not chosen:
        return None
    panels = []  # (run, stat, wide table or None, steps)
    for item, table in zip(loaded, tables):
        wanted = _choose_steps(table[table["stat"].isin(chosen)], steps, n_steps, net, phase, item.label)
        for stat in chosen:
            panels.append((item, stat, flow_table(table, stat), wanted))
    return _draw(panels, loaded, net, phase, loss_name, max_width)


def flow_table(layers: pd.DataFrame, stat: str) -> pd.DataFrame | None:
    """One statistic as a wide table: a row per step, a column per layer from input to output.

    Columns are ordered by ``layer_index`` (then name, for per-parameter rows
    that share their module's index); ``None`` when ``stat`` has no rows.
    """
    rows = layers[layers["stat"] == stat]
    if rows.empty:
        return None
    order = (rows.groupby("layer", sort=False)["layer_index"].min().reset_index()
             .sort_values(["layer_index", "layer"], kind="mergesort")["layer"].tolist())
    wide = rows.pivot_table(index="step", columns="layer", values="value", aggfunc="last")
    return wide[order]


def _choose_stats(tables: Sequence[pd.DataFrame], stats: Sequence[str] | None, net, phase) -> list[str]:
    recorded = list(dict.fromkeys(str(s) for t in tables for s in t["stat"].unique()))
    if stats is None:
        return [s for s in FLOW_STATS if s in recorded]
    if isinstance(stats, str):
        stats = [stats]
    chosen = list(dict.fromkeys(stats))
    if not chosen:
        raise ValueError(f"choose at least one statistic; recorded: {', '.join(recorded)}")
    for stat in chosen:
        if stat not in recorded and stat not in STATS:
            raise ValueError(f"unknown statistic {stat!r} for net {net!r}, phase {phase!r}; valid choices: "
                             f"{', '.join(recorded) or 'none recorded'}")
    return chosen


def _choose_steps(rows: pd.DataFrame, steps, n_steps: int, net, phase, label: str) -> list[int]:
    recorded = np.sort(rows["step"].unique()).astype(int)
    if steps is None:
        if not len(recorded):
            return []
        picks = np.unique(np.linspace(0, len(recorded) - 1, min(n_steps, len(recorded))).round().astype(int))
        return [int(recorded[i]) for i in picks]
    if isinstance(steps, (int, str)):
        steps = [steps]
    wanted = []
    for step in steps:
        if step in STEP_WORDS:
            if not len(recorded):
                continue
            step = int(recorded[0] if step == "first" else recorded[-1])
        elif isinstance(step, bool) or not isinstance(step, (int, np.integer)):
            raise ValueError(f"steps must be integers or 'first' / 'last', got {step!r}")
        elif len(recorded) and int(step) not in set(recorded.tolist()):
            raise ValueError(f"step {step} was not recorded in {label} (net {net!r}, phase {phase!r}); "
                             f"recorded steps: {_describe_steps(recorded)}")
        wanted.append(int(step))
    wanted = sorted(set(wanted))
    if not wanted and len(recorded):
        raise ValueError("choose at least one step")
    if len(wanted) > MAX_FLOW_STEPS:
        raise ValueError(f"choose at most {MAX_FLOW_STEPS} steps (one line each), got {len(wanted)}")
    return wanted


def _describe_steps(recorded: np.ndarray) -> str:
    if len(recorded) <= 8:
        return ", ".join(map(str, recorded))
    return f"{', '.join(map(str, recorded[:3]))}, ..., {', '.join(map(str, recorded[-2:]))} ({len(recorded)} steps)"


def _draw(panels, loaded, net, phase, loss_name, max_width) -> Figure:
    orders = [tuple(wide.columns) if wide is not None else () for _, _, wide, _ in panels]
    longest = max(len(o) for o in orders)
    named = longest <= NAMED_TICKS_UP_TO
    tables = list(dict.fromkeys(o for o in orders if o)) if not named else []
    names = short_layer_names([n for o in orders for n in o])
    chars = max((len(names[n]) for o in orders for n in o), default=0)
    # wide enough for the layer names side by side when that fits under max_width
    width = min(max_width, max(6.5, 3.0 + 0.16 * longest, 1.9 + 1.1 * chars * _CHAR_INCHES * longest * named))
    # names wider than their share of the axis are rotated and need room under each panel
    rotate = named and chars * _CHAR_INCHES > (width - 1.8) / max(longest, 1)
    tick_room = min(1.5, 0.8 * chars * _CHAR_INCHES) if rotate else 0.0
    ratios = [1.0 + tick_room / _PANEL_HEIGHT] * len(panels)
    layouts = [_table_layout(order, width) for order in tables]
    ratios += [(0.45 + 0.14 * rows) / _PANEL_HEIGHT for rows, _ in layouts]
    fig, axes = style.new_figure(len(ratios), 1, panel_size=(width, _PANEL_HEIGHT), height_ratios=ratios,
                                 title=f"Gradient flow: per-layer statistics from input to output at chosen steps\n"
                                       f"net {net}, phase {phase}")
    nets = {n for item in loaded for n in item.run.nets()}
    for ax, (item, stat, wide, steps), order in zip(axes[:, 0], panels, orders):
        phases = set(item.run.phases())
        loss = loss_symbol(nets, phases, phase, item.run.config, loss_name)
        ylabel = with_note(stat_label(stat, loss), loss) if uses_loss(stat) else stat_label(stat)
        title = stat_meaning(stat) if len(loaded) == 1 else f"{item.label}: {stat_meaning(stat)}"
        table_number = tables.index(order) + 1 if order in tables and len(tables) > 1 else None
        _panel(ax, wide, steps, [names[n] for n in order], named, rotate, table_number)
        xlabel = ("layer (input \u2192 output)" if named else
                  "layer index (input \u2192 output); names in the table below")
        style.label_axes(ax, xlabel, ylabel, title)
    for ax, order, (rows, columns) in zip(axes[len(panels):, 0], tables, layouts):
        heading = "layer index: name" if len(tables) == 1 else f"table {tables.index(order) + 1}: layer index: name"
        full = short_layer_names(order, max_chars=_TABLE_CHARS)
        _name_table(ax, [full[n] for n in order], rows, columns, heading)
    style.figure_legend(fig, axes[0, 0], ncol=1, axes=axes[: len(panels), 0], title="step",
                        loc="outside right upper")
    return fig


def _panel(ax: Axes, wide: pd.DataFrame | None, steps: list[int], labels: list[str], named: bool, rotate: bool,
           table_number: int | None) -> None:
    if wide is None:
        mark_not_recorded(ax, "no rows of this statistic")
        return
    present = [s for s in steps if s in wide.index]
    values = wide.loc[present].to_numpy(dtype=float) if present else np.empty((0, wide.shape[1]))
    if not has_data(values):
        mark_not_recorded(ax, "every value is 0" if values.size and np.isfinite(values).any() else "at these steps")
        return
    logy = can_log(values)
    cmap = colormaps["viridis"]
    x = np.arange(wide.shape[1])
    for i, step in enumerate(present):
        y = wide.loc[step].to_numpy(dtype=float)  # a 0 on the log axis is marked on its edge by log_scale
        shade = cmap(0.85 * i / max(len(present) - 1, 1))
        ax.plot(x, y, color=shade, marker="o" if len(x) <= 40 else None, markersize=3, label=str(step))
    missing = [s for s in steps if s not in wide.index]
    if missing:
        ax.text(0.99, 0.02, f"step {', '.join(map(str, missing))}: not recorded", transform=ax.transAxes,
                ha="right", va="bottom", fontsize=7, color="#777777")
    if logy:
        log_scale(ax, "y")
    ax.set_xlim(-0.5, len(x) - 0.5)
    if named:
        ax.xaxis.set_major_locator(FixedLocator(x))
        ax.set_xticklabels(labels, rotation=40 if rotate else 0, ha="right" if rotate else "center",
                           rotation_mode="anchor", fontsize=7)
        ax.grid(False, axis="x")
    else:
        ax.xaxis.set_major_locator(MaxNLocator(nbins=20, integer=True, steps=[1, 2, 5, 10]))
        if len(x) <= 200:  # one small tick per layer, while they stay apart
            ax.xaxis.set_minor_locator(FixedLocator(x))
            ax.tick_params(axis="x", which="minor", length=2)
        if table_number is not None:
            ax.text(0.0, 1.0, f"names: table {table_number}", transform=ax.transAxes, fontsize=7, va="bottom")


def _table_layout(order: Sequence[str], width: float) -> tuple[int, int]:
    names = short_layer_names(order, max_chars=_TABLE_CHARS)
    chars = len(str(len(order) - 1)) + 2 + max(len(names[n]) for n in order)
    fit = max(1, int((width - 0.4) / (chars * 0.065 + 0.25)))  # monospace 7 pt: ~0.065 in per character
    columns = min(_TABLE_MAX_COLUMNS, fit, len(order))
    return min(math.ceil(len(order) / columns), _TABLE_MAX_ROWS), columns


def _name_table(ax: Axes, labels: list[str], rows: int, columns: int, heading: str) -> None:
    ax.axis("off")
    # a very deep net lists every k-th layer, so the table stays a few inches tall
    every = math.ceil(len(labels) / (rows * columns))
    shown = list(range(0, len(labels), every))
    if every > 1:
        heading += f" (every {every}th layer)"
    ax.set_title(heading, fontsize=8, loc="left")
    digits = len(str(len(labels) - 1))
    for c in range(columns):
        chunk = shown[c * rows:(c + 1) * rows]
        text = "\n".join(f"{i:>{digits}}  {labels[i]}" for i in chunk)
        ax.text(c / columns, 1.0, text, transform=ax.transAxes, ha="left", va="top", fontsize=7,
                family="monospace", linespacing=1.25)
