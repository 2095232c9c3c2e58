"""One self-contained HTML report of recorded runs and analysis verdicts.

Everything is inside the file: figures as base64 PNG ``data:`` URIs, styles
inline, no scripts and no external links, so it can be mailed, archived or
opened offline. Sections: per run its configuration, status, provenance and
alerts; the standard figures (:mod:`gradscope.plot.runs`) overlaying all runs;
and, for analysis output directories (``result.json`` as written by
``gradscope reproduce`` / ``check --out``), their verdict tables and figures.
"""
from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from gradscope.plot.runs import FIGURES, LabelledRun, load_runs, plot_runs
from gradscope.record.storage import atomic_write_text

MAX_ALERT_ROWS = 50
_VERDICT_CLASS = {"holds": "ok", "violated": "bad", "inconclusive": "meh"}
_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:2em auto;max-width:1100px;
color:#222;padding:0 1em;line-height:1.4}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0;font-size:.88em}
td,th{border:1px solid #ddd;padding:.25em .5em;text-align:left;vertical-align:top}
th{background:#f3f3f3}code{background:#f6f6f6;padding:0 .2em}
img{max-width:100%;height:auto;border:1px solid #eee;margin:.4em 0}
.ok{background:#d9f0e3}.bad{background:#f8d7cf}.meh{background:#fbf0c9}
.muted{color:#777;font-size:.85em}
"""


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], row_class=None) -> str:
    head = "".join(f"<th>{_esc(c)}</th>" for c in columns)
    body = []
    for row in rows:
        cls = row_class(row) if row_class else None
        attr = f' class="{cls}"' if cls else ""
        body.append(f"<tr{attr}>" + "".join(f"<td>{_esc(_fmt(row.get(c, '')))}</td>" for c in columns) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return "" if value is None else str(value)


def _key_values(data: Mapping[str, Any]) -> str:
    return _table([{"key": k, "value": v} for k, v in sorted(data.items())], ["key", "value"])


def _image(path: Path, alt: str) -> str:
    encoded = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img alt="{_esc(alt)}" src="data:image/png;base64,{encoded}">'


def _run_section(item: LabelledRun) -> str:
    run = item.run
    status = run.status or {}
    state = status.get("state", "unknown")
    parts = [f"<h3>{_esc(item.label)} <span class='muted'>{_esc(run.path)}</span></h3>",
             f"<p>status: <b>{_esc(state)}</b>, last step {_esc(status.get('step', '?'))}; "
             f"{run.row_count('layers')} layer rows, {run.row_count('scalars')} scalar rows, {len(run.alerts)} alerts</p>"]
    if run.config:
        parts.append("<details><summary>configuration</summary>" + _key_values(run.config) + "</details>")
    if run.provenance:
        parts.append("<details><summary>provenance</summary>" + _key_values(run.provenance) + "</details>")
    if len(run.alerts):
        alerts = run.alerts.head(MAX_ALERT_ROWS).to_dict("records")
        more = len(run.alerts) - len(alerts)
        parts.append("<p><b>alerts</b>" + (f" (first {len(alerts)} of {len(run.alerts)})" if more else "") + "</p>")
        parts.append(_table(alerts, ["step", "phase", "net", "layer", "rule", "message"],
                            row_class=lambda r: "bad"))
    else:
        parts.append("<p>no alerts</p>")
    return "\n".join(parts)


def _analysis_section(folder: Path) -> str:
    result = json.loads((folder / "result.json").read_text())
    checks = result.get("checks", [])
    parts = [f"<h3>{_esc(result.get('claim', '?'))}: {_esc(result.get('title', ''))}</h3>",
             f"<p>scale <code>{_esc(result.get('scale', '?'))}</code>; must-hold checks "
             f"{'all hold' if result.get('ok') else '<b>do not all hold</b>'}</p>"]
    rows = [{**c, "bound": f"{c.get('relation', '')} {_fmt(c.get('bound_or_prediction'))}",
             "must hold": "yes" if c.get("must_hold") else ""} for c in checks]
    parts.append(_table(rows, ["quantity", "measured", "bound", "verdict", "must hold", "detail"],
                        row_class=lambda r: _VERDICT_CLASS.get(r.get("verdict"))))
    for note in result.get("notes", []):
        parts.append(f"<p class='muted'>{_esc(note)}</p>")
    for name in result.get("figures", []):
        path = folder / name
        if path.suffix == ".png" and path.is_file():
            parts.append(_image(path, f"{result.get('claim')} {path.stem}"))
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


def build_report(runs: Sequence[str | os.PathLike] = (), analyses: Sequence[str | os.PathLike] = (), *,
                 title: str = "gradscope report", net: str | None = None, figures: Sequence[str] = FIGURES,
                 loss_name: str | None = None) -> str:
    """The report as one HTML string.

    Parameters
    ----------
    runs : sequence of run directories
        Recorded runs (``gradscope run`` output); their standard figures are drawn overlaid.
    analyses : sequence of directories
        Analysis outputs holding ``result.json`` (or folders of them, e.g. a ``reproduce --out`` directory).
    title : str
        Page title.
    net : str, optional
        Which net's layers the run figures show (default ``D`` when recorded, else the only net).
    figures : sequence of str
        Which standard run figures to embed (default all of :data:`gradscope.plot.runs.FIGURES`).
    loss_name : str, optional
        What the loss ``L`` of a non-GAN run is, written on the gradient axes.
    """
    if not runs and not analyses:
        raise ValueError("give at least one run directory or analysis directory")
    loaded = load_runs(runs) if runs else []
    body = [f"<h1>{_esc(title)}</h1>",
            f"<p class='muted'>generated {_esc(_dt.datetime.now().isoformat(timespec='seconds'))} by gradscope</p>"]
    if loaded:
        body.append("<h2>Runs</h2>")
        body += [_run_section(item) for item in loaded]
        body.append("<h2>Figures</h2>")
        with tempfile.TemporaryDirectory(prefix="gradscope-report-") as tmp:
            written = plot_runs(loaded, tmp, net=net, figures=figures, loss_name=loss_name)
            for name, paths in written.items():
                pngs = [p for p in paths if p.suffix == ".png"]
                if pngs:
                    body.append(f"<h3>{_esc(name)}</h3>" + _image(pngs[0], name))
    folders = find_analyses(analyses) if analyses else []
    if folders:
        body.append("<h2>Theory checks</h2>")
        body += [_analysis_section(folder) for folder in folders]
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>\n"
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

