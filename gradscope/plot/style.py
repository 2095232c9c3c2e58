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

from gradscope.plot.ticks import log_scale, mark_not_recorded  # noqa: E402,F401  (re-exported)

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
               title: str | None = None, sharex: bool = False, sharey: bool = False,
               height_ratios: Sequence[float] | None = None) -> tuple[Figure, np.ndarray]:
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
    height_ratios : sequence of float, optional
        Relative row heights (``nrows`` of them); the figure height is then
        ``panel_size[1] * sum(height_ratios)``.

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
    if height_ratios is not None and len(height_ratios) != nrows:
        raise ValueError(f"height_ratios needs {nrows} values (one per row), got {len(height_ratios)}")
    height = panel_size[1] * (sum(height_ratios) if height_ratios is not None else nrows)
    with plt.rc_context(_RC):
        fig, axes = plt.subplots(nrows, ncols, figsize=(panel_size[0] * ncols, height),
                                 squeeze=False, sharex=sharex, sharey=sharey, layout="constrained",
                                 gridspec_kw={"height_ratios": list(height_ratios)} if height_ratios else None)
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
    """Label both axes (with units), set the panel title and optional log scales (readable decade ticks)."""
    ax.set_xlabel(xlabel, fontsize=_RC["axes.labelsize"])
    # a second line (what the loss is) must not touch the subscripts of the first
    ax.set_ylabel(ylabel, fontsize=_RC["axes.labelsize"], linespacing=1.6)
    if title:
        ax.set_title(title, fontsize=_RC["axes.titlesize"])
    if logx:
        log_scale(ax, "x")
    if logy:
        log_scale(ax, "y")


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
    handles, _ = ax.get_legend_handles_labels()
    if handles:
        ax.legend(frameon=False, fontsize=_RC["legend.fontsize"], **kwargs)


def figure_legend(fig: Figure, ax: Axes, ncol: int | None = None, *, axes: Iterable[Axes] | None = None,
                  title: str | None = None, loc: str = "outside lower center") -> None:
    """One legend for the whole figure, below the panels, from ``ax``'s labelled artists.

    Used by grids of small panels where a legend inside a panel would hide data.
    With ``axes``, the labelled artists of all of them are gathered (each label
    once), so a series drawn only in a later panel is still in the legend.
    """
    handles, labels = [], []
    for each in ([ax] if axes is None else axes):
        for handle, label in zip(*each.get_legend_handles_labels()):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    if handles:
        if ncol is None:
            # as many columns as fit across the figure (a clipped legend entry is worse than a second row)
            entry = 0.065 * max(len(label) for label in labels) + 0.5
            ncol = max(1, min(len(labels), 4, int(fig.get_figwidth() // entry)))
        fig.legend(handles, labels, loc=loc, ncol=ncol, title=title,
                   frameon=False, fontsize=_RC["legend.fontsize"], title_fontsize=_RC["legend.fontsize"])


def close_all(figures: Iterable[Figure]) -> None:
    """Close ``figures`` (after an error, so a half-drawn set does not stay in pyplot's memory)."""
    for fig in figures:
        plt.close(fig)


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
