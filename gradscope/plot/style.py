"""The one figure style of gradscope: palette, sizes, labelled axes, PNG + PDF output.

Every figure the project draws (run plots, analyses, the report) goes through
:func:`new_figure` and :func:`save_figure`, so all of them share a
colour-blind-safe palette (Okabe & Ito 2008), font sizes, a grid, and the
same output formats. :func:`save_figure` refuses to leave a file over
:data:`MAX_FIGURE_BYTES`: it first lowers the PNG resolution and rasterizes
dense artists in the PDF, and raises if that is still not enough.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

#: Okabe-Ito palette: distinguishable under the common colour-vision deficiencies.
PALETTE: tuple[str, ...] = (
    "#0072B2",  # blue
    "#D55E00",  # vermillion
    "#009E73",  # bluish green
    "#CC79A7",  # reddish purple
    "#E69F00",  # orange
    "#56B4E9",  # sky blue
    "#000000",  # black
    "#F0E442",  # yellow: last, it is faint on white
)
#: Line styles cycled together with colours so series stay apart in grey-scale prints.
LINESTYLES: tuple[str, ...] = ("-", "--", "-.", ":")
#: Colour of theory lines and bounds, drawn dashed.
THEORY_COLOR = "#555555"
#: Hard limit on every written figure file.
MAX_FIGURE_BYTES = 300 * 1024
FORMATS: tuple[str, ...] = ("png", "pdf")
DEFAULT_DPI = 120

_RC = {
    "figure.dpi": DEFAULT_DPI,
    "savefig.dpi": DEFAULT_DPI,
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "legend.fontsize": 7.5,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "lines.linewidth": 1.4,
    "pdf.fonttype": 42,
    "svg.fonttype": "none",
}


def color(index: int) -> str:
    """Colour number ``index`` of the palette (cycled)."""
    return PALETTE[index % len(PALETTE)]


def linestyle(index: int) -> str:
    """Line style matching :func:`color` for series ``index`` (changes once per palette cycle)."""
    return LINESTYLES[(index // len(PALETTE)) % len(LINESTYLES)]


def series_style(index: int) -> dict[str, str]:
    """Keyword arguments (colour, line style) for the ``index``-th series of a plot."""
    return {"color": color(index), "linestyle": linestyle(index)}


def new_figure(nrows: int = 1, ncols: int = 1, *, panel_size: tuple[float, float] = (3.6, 2.7),
               title: str | None = None, sharex: bool = False, sharey: bool = False
               ) -> tuple[Figure, np.ndarray]:
    """A figure with the project style and a 2-D array of axes.

    Parameters
    ----------
    nrows, ncols : int
        Grid of panels.
    panel_size : (float, float)
        Width and height of one panel in inches.
    title : str, optional
        Figure title (say what the figure shows).
    sharex, sharey : bool
        Passed to :func:`matplotlib.pyplot.subplots`.

    Returns
    -------
    fig, axes : Figure and ndarray of Axes with shape ``(nrows, ncols)``

    Examples
    --------
    >>> fig, axes = new_figure(1, 2, title="demo")
    >>> axes.shape
    (1, 2)
    >>> plt.close(fig)
    """
    if nrows < 1 or ncols < 1:
        raise ValueError(f"nrows and ncols must be >= 1, got {nrows}, {ncols}")
    with plt.rc_context(_RC):
        fig, axes = plt.subplots(nrows, ncols, figsize=(panel_size[0] * ncols, panel_size[1] * nrows),
                                 squeeze=False, sharex=sharex, sharey=sharey,
                                 layout="constrained")
    for ax in axes.flat:
        _apply_axes_style(ax)
    if title:
        fig.suptitle(title, fontsize=_RC["axes.titlesize"] + 1)
    return fig, axes


def _apply_axes_style(ax: Axes) -> None:
    ax.set_prop_cycle(color=list(PALETTE))
    ax.grid(True, alpha=_RC["grid.alpha"])
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.tick_params(labelsize=_RC["xtick.labelsize"])


def label_axes(ax: Axes, xlabel: str, ylabel: str, title: str | None = None, *,
               logx: bool = False, logy: bool = False) -> None:
    """Label both axes (with units), set the panel title and optional log scales."""
    ax.set_xlabel(xlabel, fontsize=_RC["axes.labelsize"])
    ax.set_ylabel(ylabel, fontsize=_RC["axes.labelsize"])
    if title:
        ax.set_title(title, fontsize=_RC["axes.titlesize"])
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    _quiet_minor_labels(ax)


def _quiet_minor_labels(ax: Axes) -> None:
    # matplotlib labels minor log ticks on short ranges; beyond a decade they collide with the major labels
    from matplotlib.ticker import NullFormatter

    for axis, limits in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
        low, high = sorted(limits)
        if axis.get_scale() == "log" and low > 0 and high / low >= 10:
            axis.set_minor_formatter(NullFormatter())


def wants_log(values: Iterable[float], decades: float = 1.5) -> bool:
    """Whether positive ``values`` span more than ``decades`` orders of magnitude (use a log axis)."""
    arr = np.asarray(list(values), dtype=float)
    arr = arr[np.isfinite(arr) & (arr > 0)]
    if arr.size < 2:
        return False
    return bool(np.log10(arr.max() / arr.min()) > decades)


def theory_line(ax: Axes, y: float, label: str, *, index: int = 0) -> None:
    """A horizontal dashed reference line (a bound or a prediction) with a legend label."""
    ax.axhline(y, color=THEORY_COLOR, linestyle=LINESTYLES[1 + index % 3], linewidth=1.0,
               label=label, zorder=1)


def legend(ax: Axes, **kwargs) -> None:
    """A compact legend, only when the panel has labelled artists."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(frameon=False, fontsize=_RC["legend.fontsize"], **kwargs)


def figure_legend(fig: Figure, ax: Axes, ncol: int | None = None) -> None:
    """One legend for the whole figure, below the panels, from ``ax``'s labelled artists.

    Used by grids of small panels where a legend inside a panel would hide data.
    """
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncol=ncol or min(len(labels), 4),
                   frameon=False, fontsize=_RC["legend.fontsize"])


def integer_ticks(ax: Axes, axis: str = "x") -> None:
    """Only integer ticks on ``axis`` (layer indices, counts)."""
    from matplotlib.ticker import MaxNLocator

    (ax.xaxis if axis == "x" else ax.yaxis).set_major_locator(MaxNLocator(integer=True))


def save_figure(fig: Figure, stem: str | Path, *, formats: Sequence[str] = FORMATS,
                max_bytes: int = MAX_FIGURE_BYTES, close: bool = True) -> list[Path]:
    """Write ``fig`` as ``stem.png`` and ``stem.pdf``; return the paths.

    Each file is checked against ``max_bytes``: an oversized PNG is written
    again at lower resolution, an oversized PDF with its dense artists
    rasterized; if a file is still too large a ``ValueError`` says which.

    Parameters
    ----------
    fig : Figure
        The figure (from :func:`new_figure`).
    stem : str or Path
        Output path without extension; parent directories are created.
    formats : sequence of str
        Subset of ``("png", "pdf")``.
    max_bytes : int
        Size limit per file.
    close : bool
        Close the figure afterwards (frees memory in long loops).

    Examples
    --------
    >>> import tempfile
    >>> fig, axes = new_figure()
    >>> _ = axes[0, 0].plot([1, 2, 3])
    >>> paths = save_figure(fig, Path(tempfile.mkdtemp()) / "demo")
    >>> [p.suffix for p in paths]
    ['.png', '.pdf']
    """
    stem = Path(stem)
    for fmt in formats:
        if fmt not in FORMATS:
            raise ValueError(f"unknown figure format {fmt!r}; valid choices: {', '.join(FORMATS)}")
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    try:
        for fmt in formats:
            path = stem.with_name(stem.name + "." + fmt)
            _write_within(fig, path, fmt, max_bytes)
            paths.append(path)
    finally:
        if close:
            plt.close(fig)
    return paths


def _write_within(fig: Figure, path: Path, fmt: str, max_bytes: int) -> None:
    metadata = {"Creator": "gradscope"} if fmt == "pdf" else {"Software": "gradscope"}
    for dpi in (DEFAULT_DPI, 90, 60):
        if fmt == "pdf" and dpi != DEFAULT_DPI:
            # Vector output of many points is what grows; rasterize the data artists only.
            for ax in fig.axes:
                for artist in (*ax.lines, *ax.collections):
                    artist.set_rasterized(True)
        fig.savefig(path, format=fmt, dpi=dpi, metadata=metadata)
        if path.stat().st_size <= max_bytes:
            return
    raise ValueError(f"figure {path} is {path.stat().st_size} bytes, over the {max_bytes}-byte limit; "
                     "plot fewer points")
