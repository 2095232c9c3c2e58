"""The report's sweep sections: the summary table and stability figures of ``gradscope sweep summarize``.

A sweep directory (``gradscope sweep SPEC --out DIR``) holds ``manifest.json``,
its runs under ``runs/``, and, once summarized, ``summary.csv`` (one row per
run) and the figures beside it (:mod:`gradscope.sweep.figures`). The report
shows what the summary wrote; it computes nothing of its own, so the table and
figures are the ones the sweep's collapse rule produced.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from gradscope.plot.metric_info import metric_info
from gradscope.plot.report_html import esc, image, table

SUMMARY = "summary.csv"
MANIFEST = "manifest.json"
#: The summary's figures in the order they are shown; other PNG files beside summary.csv follow, by name.
FIGURE_ORDER = ("collapse_fraction", "final_quality_box", "quality_vs_scale")
#: Columns shown first, when present; the rest follow in the file's order.
_FIRST = ("run", "method", "scale", "seed", "status", "final_fid", "best_fid", "final_is", "best_is",
          "final_modes", "best_modes", "collapsed", "collapse_reason", "alerts")


def is_sweep(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a sweep directory (a manifest or a summary, and no run of its own)."""
    path = Path(path)
    return (path.is_dir() and not (path / "config.json").is_file()
            and ((path / MANIFEST).is_file() or (path / SUMMARY).is_file()))


def sweep_figures(folder: Path) -> list[Path]:
    """The PNG figures beside the summary, known ones first."""
    pngs = {p.stem: p for p in folder.glob("*.png") if p.is_file()}
    known = [pngs.pop(name) for name in FIGURE_ORDER if name in pngs]
    return known + [pngs[name] for name in sorted(pngs)]


def _metric_words(summary: pd.DataFrame) -> str:
    items = []
    for column in ("fid_metric", "is_metric", "modes_metric"):
        if column in summary:
            for name in summary[column].dropna().unique():
                info = metric_info(str(name))
                if info is not None:
                    kind = column.split("_")[0]
                    items.append(f"<li><code>final_{kind}</code> / <code>best_{kind}</code>: the run's last and "
                                 f"best {esc(info.short)} ({esc(info.better)} is better)</li>")
    return f"<ul class='muted'>{''.join(items)}</ul>" if items else ""


def _collapsed_row(row) -> str | None:
    return "bad" if str(row.get("collapsed")).lower() in ("true", "1", "1.0") else None


def sweep_section(folder: str | os.PathLike) -> str:
    """The HTML of one sweep: status counts, ``summary.csv`` as a table, and its figures."""
    folder = Path(folder)
    parts = [f"<h3>{esc(folder.name)} <span class='muted'>{esc(folder)}</span></h3>"]
    if not (folder / SUMMARY).is_file():
        parts.append(f"<p>No <code>{SUMMARY}</code> yet: run <code>gradscope sweep summarize {esc(folder)}</code>, "
                     "then write the report again.</p>")
        return "\n".join(parts)
    summary = pd.read_csv(folder / SUMMARY)
    if "status" in summary:
        counts = summary["status"].value_counts()
        parts.append("<p>" + esc(f"{len(summary)} runs: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
                     + "</p>")
    if "collapsed" in summary and "method" in summary:
        judged = summary[summary["collapsed"].notna()]
        if len(judged):
            flags = judged["collapsed"].astype(str).str.lower().isin(["true", "1", "1.0"])
            per = flags.groupby(judged["method"]).agg(["sum", "size"])
            parts.append("<p>collapsed (finished runs): " + esc(", ".join(
                f"{method} {int(row['sum'])} of {int(row['size'])}" for method, row in per.iterrows())) + "</p>")
    columns = [c for c in _FIRST if c in summary] + [c for c in summary.columns if c not in _FIRST]
    rows = summary.astype(object).where(summary.notna(), None).to_dict("records")
    parts.append(f"<div class='scroll'>{table(rows, columns, row_class=_collapsed_row, css='sweep-summary')}</div>")
    parts.append(_metric_words(summary))
    for path in sweep_figures(folder):
        parts.append(f"<h4>{esc(path.stem.replace('_', ' '))}</h4>"
                     + image(path, f"sweep {folder.name}: {path.stem}", css="figure", data_figure=path.stem))
    return "\n".join(parts)


def sweeps_section(folders: Sequence[str | os.PathLike]) -> str:
    """All sweep sections, one after the other."""
    return "\n".join(sweep_section(folder) for folder in folders)
