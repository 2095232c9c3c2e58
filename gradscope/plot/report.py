"""One self-contained HTML report of recorded runs, sweeps and analysis verdicts.

Everything is inside the file: figures as base64 PNG ``data:`` URIs, styles
inline, no scripts and no external links, so it can be mailed, archived or
opened offline. Sections, in reading order:

- **Runs**: one row per run, in the colour it has in every figure;
- **Sample quality**: the last value of each metric per run (best in bold, the
  real-data floor where known), the metrics vs step, and what each metric
  means (:mod:`.metric_info`);
- **Samples**: each run's first, middle and last saved sample grid;
- **Losses**: raw traces faint, running means bold;
- **Layer statistics**: the other standard figures (:mod:`gradscope.plot.runs`);
- **Alerts**: per run, events grouped by rule, net and statistic;
- **Sweeps**: ``summary.csv`` and the stability figures of a summarized sweep folder;
- **Theory checks**: verdict tables and figures of analysis output directories
  (``result.json`` as written by ``gradscope reproduce`` / ``check --out``);
- **Run details**: configuration and provenance.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gradscope.plot import style
from gradscope.plot.report_html import CSS, esc, figure_image, fmt, image, table
from gradscope.plot.report_runs import (
    MAX_ALERT_ROWS,
    alerts_section,
    details_section,
    metric_explanations,
    metrics_table,
    overview,
    samples_section,
)
from gradscope.plot.report_sweeps import is_sweep, sweeps_section
from gradscope.plot.runs import FIGURES, LabelledRun, load_runs, run_figures
from gradscope.record.storage import atomic_write_text

__all__ = ["MAX_ALERT_ROWS", "build_report", "find_analyses", "write_report"]

_VERDICT_CLASS = {"holds": "ok", "violated": "bad", "inconclusive": "meh"}
#: The figures with sections of their own; the other standard figures go under "Layer statistics".
_CURVES = ("quality", "losses")
_FIGURE_TITLES = {
    "grad_norms": "Back-propagated gradient norm per layer", "sigma": "Spectral norms per layer",
    "lecun_ratio": "LeCun ratio per layer", "variance_ratios": "Forward and backward variance gains",
    "gradient_flow": "Gradient flow through the layers", "slopes": "Input-gradient norms",
}


def _analysis_section(folder: Path) -> str:
    result = json.loads((folder / "result.json").read_text())
    checks = result.get("checks", [])
    parts = [f"<h3>{esc(result.get('claim', '?'))}: {esc(result.get('title', ''))}</h3>",
             f"<p>scale <code>{esc(result.get('scale', '?'))}</code>; must-hold checks "
             f"{'all hold' if result.get('ok') else '<b>do not all hold</b>'}</p>"]
    rows = [{**c, "bound": f"{c.get('relation', '')} {fmt(c.get('bound_or_prediction'))}",
             "must hold": "yes" if c.get("must_hold") else ""} for c in checks]
    parts.append(table(rows, ["quantity", "measured", "bound", "verdict", "must hold", "detail"],
                        row_class=lambda r: _VERDICT_CLASS.get(r.get("verdict"))))
    for note in result.get("notes", []):
        parts.append(f"<p class='muted'>{esc(note)}</p>")
    for name in result.get("figures", []):
        path = folder / name
        if path.suffix == ".png" and path.is_file():
            parts.append(image(path, f"{result.get('claim')} {path.stem}", css="figure", data_figure=path.stem))
    return "\n".join(parts)


def find_analyses(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Analysis result directories under ``paths`` (the path itself or its direct children)."""
    found = []
    for path in map(Path, paths):
        if (path / "result.json").is_file():
            found.append(path)
        elif path.is_dir():
            found += sorted(p for p in path.iterdir() if (p / "result.json").is_file())
        else:
            raise FileNotFoundError(f"no analysis directory {path}")
    return found


def _figures(loaded: Sequence[LabelledRun], names: Sequence[str], folder: Path, **kwargs: Any) -> dict[str, str]:
    """Figure name -> embedded ``<img>`` (``""`` for a figure no run recorded)."""
    drawn = run_figures(loaded, figures=list(names), **kwargs)
    embedded: dict[str, str] = {}
    try:
        for name, fig in drawn.items():
            embedded[name] = figure_image(fig, name, folder, name.replace("_", " ")) if fig is not None else ""
    except BaseException:
        style.close_all(fig for name, fig in drawn.items() if fig is not None and name not in embedded)
        raise
    return embedded


def _run_sections(loaded: Sequence[LabelledRun], figures: Sequence[str], **kwargs: Any) -> list[str]:
    with tempfile.TemporaryDirectory(prefix="gradscope-report-") as tmp:
        drawn = _figures(loaded, figures, Path(tmp), **kwargs)
    body = ["<h2 id='runs'>Runs</h2>", overview(loaded),
            "<h2 id='quality'>Sample quality</h2>", "<h3>Final metrics</h3>",
            "<p class='muted'>The last evaluation of each run; bold: the best run per metric.</p>",
            metrics_table(loaded)]
    if drawn.get("quality"):
        body += ["<h3>Metrics vs step</h3>", drawn["quality"]]
    body += [metric_explanations(loaded), "<h2 id='samples'>Samples</h2>", samples_section(loaded)]
    if drawn.get("losses"):
        body += ["<h2 id='losses'>Losses</h2>", drawn["losses"]]
    layer_figures = [name for name in figures if name not in _CURVES]
    if layer_figures:
        body.append("<h2 id='layers'>Layer statistics</h2>")
        for name in layer_figures:
            if drawn[name]:
                body.append(f"<h3>{esc(_FIGURE_TITLES.get(name, name))}</h3>" + drawn[name])
        skipped = [name for name in figures if not drawn[name]]
        if skipped:
            body.append(f"<p class='muted'>not recorded in these runs: {esc(', '.join(skipped))}</p>")
    body += ["<h2 id='alerts'>Alerts</h2>", alerts_section(loaded)]
    return body


def build_report(runs: Sequence[str | os.PathLike] = (), analyses: Sequence[str | os.PathLike] = (), *,
                 sweeps: Sequence[str | os.PathLike] = (), title: str = "gradscope report", net: str | None = None,
                 figures: Sequence[str] = FIGURES, loss_name: str | None = None) -> str:
    """The report as one HTML string.

    Parameters
    ----------
    runs : sequence of run directories
        Recorded runs (``gradscope run`` output), drawn overlaid, one colour each. A sweep
        directory among them is shown as a sweep (as if passed in ``sweeps``).
    analyses : sequence of directories
        Analysis outputs holding ``result.json`` (or folders of them, e.g. a ``reproduce --out`` directory).
    sweeps : sequence of directories
        Sweep directories (``gradscope sweep --out``); their ``summary.csv`` and figures are shown.
    title : str
        Page title.
    net : str, optional
        Which net's layers the run figures show (default ``D`` when recorded, else the only net).
    figures : sequence of str
        Which standard run figures to embed (default all of :data:`gradscope.plot.runs.FIGURES`).
    loss_name : str, optional
        What the loss ``L`` of a non-GAN run is, written on the gradient axes.
    """
    sweeps = list(sweeps) + [path for path in runs if is_sweep(path)]
    runs = [path for path in runs if not is_sweep(path)]
    if not runs and not analyses and not sweeps:
        raise ValueError("give at least one run directory, sweep directory or analysis directory")
    for name in figures:
        if name not in FIGURES:
            raise ValueError(f"unknown figure {name!r}; valid choices: {', '.join(FIGURES)}")
    loaded = load_runs(runs) if runs else []
    folders = find_analyses(analyses) if analyses else []
    contents = ([("runs", "Runs"), ("quality", "Sample quality"), ("samples", "Samples"), ("alerts", "Alerts")]
                if loaded else []) + ([("sweeps", "Sweeps")] if sweeps else []) + (
                [("checks", "Theory checks")] if folders else []) + ([("details", "Run details")] if loaded else [])
    body = [f"<h1>{esc(title)}</h1>",
            f"<p class='muted'>generated {esc(_dt.datetime.now().isoformat(timespec='seconds'))} by gradscope</p>",
            "<nav>" + "".join(f"<a href='#{key}'>{esc(words)}</a>" for key, words in contents) + "</nav>"]
    if loaded:
        body += _run_sections(loaded, figures, net=net, loss_name=loss_name)
    if sweeps:
        body += ["<h2 id='sweeps'>Sweeps</h2>", sweeps_section(sweeps)]
    if folders:
        body.append("<h2 id='checks'>Theory checks</h2>")
        body += [_analysis_section(folder) for folder in folders]
    if loaded:
        body += ["<h2 id='details'>Run details</h2>", details_section(loaded)]
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<title>{esc(title)}</title><style>{CSS}</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")


def write_report(out: str | os.PathLike, runs: Sequence[str | os.PathLike] = (),
                 analyses: Sequence[str | os.PathLike] = (), **kwargs: Any) -> Path:
    """Write :func:`build_report` as one self-contained HTML file; return its path.

    Parent directories are created, and the file is replaced atomically, so an
    interrupted call never leaves a half-written report over an older one.

    Parameters
    ----------
    out : path
        The ``.html`` file to write.
    runs, analyses, **kwargs
        As for :func:`build_report`.

    Examples
    --------
    >>> import gradscope
    >>> gradscope.write_report("report.html", runs=["runs/sn", "runs/bssn"])  # doctest: +SKIP
    PosixPath('report.html')
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, build_report(runs, analyses, **kwargs))
    return out

