"""HTML pieces of the report: escaping, tables, embedded images, colour swatches, the page style.

Everything the report writes goes through these, so every value is escaped
and every image is a ``data:`` URI (the page has no external references).
"""
from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from gradscope.plot import style

CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:2em auto;max-width:1100px;
color:#222;padding:0 1em;line-height:1.4}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0;font-size:.88em}
td,th{border:1px solid #ddd;padding:.25em .5em;text-align:left;vertical-align:top}
th{background:#f3f3f3}code{background:#f6f6f6;padding:0 .2em}
img{max-width:100%;height:auto;border:1px solid #eee;margin:.4em 0}
.ok{background:#d9f0e3}.bad{background:#f8d7cf}.meh{background:#fbf0c9}
.muted{color:#777;font-size:.85em}
.swatch{display:inline-block;width:1.6em;height:.7em;margin-right:.4em;vertical-align:middle;border-radius:2px}
.scroll{overflow-x:auto;max-width:100%}
td.num{text-align:right;font-variant-numeric:tabular-nums}td.best{font-weight:bold}
table.samples{width:100%;table-layout:fixed}table.samples col.run{width:9em}
table.samples td{text-align:center}table.samples img{width:100%}
dl.metrics dt{font-weight:bold;margin-top:.5em}dl.metrics dd{margin-left:1.5em}
nav a{margin-right:.8em}
"""


def esc(value: Any) -> str:
    """``value`` as text safe inside HTML content and quoted attributes."""
    return html.escape(str(value), quote=True)


def fmt(value: Any) -> str:
    """A table cell's text: floats to 4 significant digits, NaN / None empty, lists and dicts as JSON."""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4g}"
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, default=str)
    return "" if value is None else str(value)


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str],
          row_class: Callable[[Mapping[str, Any]], str | None] | None = None, css: str | None = None) -> str:
    """A plain table of ``rows`` (dicts) with ``columns``; every value escaped."""
    head = "".join(f"<th>{esc(c)}</th>" for c in columns)
    body = []
    for row in rows:
        cls = row_class(row) if row_class else None
        attr = f' class="{cls}"' if cls else ""
        body.append(f"<tr{attr}>" + "".join(f"<td>{esc(fmt(row.get(c, '')))}</td>" for c in columns) + "</tr>")
    klass = f' class="{esc(css)}"' if css else ""
    return f"<table{klass}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def key_values(data: Mapping[str, Any]) -> str:
    """A two-column ``key | value`` table, sorted by key."""
    return table([{"key": k, "value": v} for k, v in sorted(data.items())], ["key", "value"])


def image_bytes(data: bytes, alt: str, **attrs: Any) -> str:
    """An ``<img>`` holding PNG ``data`` as a ``data:`` URI; ``attrs`` become attributes (``css`` -> ``class``)."""
    encoded = base64.b64encode(data).decode("ascii")
    extra = "".join(f' {"class" if k == "css" else k.replace("_", "-")}="{esc(v)}"' for k, v in attrs.items())
    return f'<img alt="{esc(alt)}"{extra} src="data:image/png;base64,{encoded}">'


def image(path: str | Path, alt: str, **attrs: Any) -> str:
    """:func:`image_bytes` of the PNG file at ``path``."""
    return image_bytes(Path(path).read_bytes(), alt, **attrs)


def figure_image(fig: Figure, name: str, folder: Path, alt: str) -> str:
    """Save ``fig`` as ``folder/name.png`` (the project's size limit applies) and embed it."""
    (path,) = style.save_figure(fig, Path(folder) / name, formats=["png"])
    return image(path, alt, css="figure", data_figure=name)


def swatch(index: int) -> str:
    """A small bar in the colour run ``index`` has in every figure (the figures' legend, in the tables)."""
    return f'<span class="swatch" style="background:{style.color(index)}"></span>'
