"""The report's sections about recorded runs: overview, final metrics, sample grids, alerts, details.

Each function returns an HTML fragment (see :mod:`.report_html`); the runs
come as :class:`~gradscope.plot.selection.LabelledRun`, in legend order, and
each run is marked with the colour it has in the figures.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from gradscope.plot.metric_info import floor_for, metric_info
from gradscope.plot.quality import eval_samples, logged_quality_metrics, metric_series
from gradscope.plot.report_html import esc, fmt, image, key_values, swatch, table
from gradscope.plot.selection import LabelledRun

#: Most individual alert events listed per run (the grouped table counts them all).
MAX_ALERT_ROWS = 50
#: Sample pictures larger than this are linked by path instead of embedded.
MAX_SAMPLE_BYTES = 4 * 1024 * 1024
SAMPLES_DIR = "samples"
_SAMPLE_NAME = re.compile(r"^step_(\d+)\.png$")


def _label(index: int, item: LabelledRun) -> str:
    return f"{swatch(index)}{esc(item.label)}"


def overview(loaded: Sequence[LabelledRun]) -> str:
    """One row per run: colour, label, directory, status, last step, dataset, method, evaluation size, alerts."""
    head = ["run", "directory", "status", "last step", "dataset", "norm", "eval samples", "alerts"]
    rows = []
    for r, item in enumerate(loaded):
        run, status, config = item.run, item.run.status or {}, item.run.config or {}
        cells = [_label(r, item), f"<code>{esc(run.path or '')}</code>", esc(status.get("state", "unknown")),
                 esc(status.get("step", "?")), esc(config.get("dataset", "")), esc(config.get("norm", "")),
                 esc(fmt(eval_samples(item))), esc(len(run.alerts))]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return (f"<table class='overview'><thead><tr>{''.join(f'<th>{h}</th>' for h in head)}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>")


def final_metrics(run, name: str) -> tuple[float, int, float | None] | None:
    """``(value, step, std)`` of the last evaluation of metric ``name`` in ``run``; ``None`` if never logged."""
    series = metric_series(run, name)
    if series.empty:
        return None
    step = int(series.index[-1])
    info = metric_info(name)
    spread = metric_series(run, info.std_name) if info is not None and info.std_name else pd.Series(dtype=float)
    return float(series.iloc[-1]), step, float(spread[step]) if step in spread.index else None


def _best(values: dict[int, float], better: str | None) -> set[int]:
    """The runs with the best finite value (NaN: diverged or undefined, never best); none when there is no
    direction, only one run, or every run ties."""
    finite = {r: v for r, v in values.items() if math.isfinite(v)}
    if better is None or len(values) < 2 or not finite:
        return set()
    top = (min if better == "lower" else max)(finite.values())
    winners = {r for r, v in finite.items() if v == top}
    return set() if len(winners) == len(values) else winners


def metrics_table(loaded: Sequence[LabelledRun]) -> str:
    """The last value of each sample-quality metric per run, the best run's in bold, the floor row where known.

    The last value is the last evaluation's, NaN included (``kl_uniform`` is NaN when no sample is
    near a mode): an older finite value is never shown as the final one.

    Cells carry ``data-run``, ``data-metric``, ``data-step`` and ``data-value`` attributes.
    """
    names = logged_quality_metrics(loaded)
    if not names:
        return "<p>No sample-quality metric was logged (<code>--eval-every 0</code>, or not a GAN run).</p>"
    finals = {(r, n): final_metrics(item.run, n) for r, item in enumerate(loaded) for n in names}
    head = ["run", "last evaluation step"] + [
        f"{esc(metric_info(n).short)}<br><span class='muted'>{esc(metric_info(n).better or '')}"
        f"{' is better' if metric_info(n).better else ''}</span>" for n in names]
    best = {n: _best({r: v[0] for (r, m), v in finals.items() if m == n and v is not None},
                     metric_info(n).better) for n in names}
    rows = []
    for r, item in enumerate(loaded):
        steps = [v[1] for (q, _), v in finals.items() if q == r and v is not None]
        cells = [f"<td>{_label(r, item)}</td>", f"<td class='num'>{esc(max(steps) if steps else '')}</td>"]
        for n in names:
            final = finals[r, n]
            if final is None:
                cells.append(f"<td data-run='{esc(item.label)}' data-metric='{esc(n)}'></td>")
                continue
            value, step, spread = final
            text = (fmt(value) if math.isfinite(value) else "NaN") + (
                f" \u00b1 {spread:.2g}" if spread is not None and math.isfinite(spread) else "")
            cls = "num best" if r in best[n] else "num"
            cells.append(f"<td class='{cls}' data-run='{esc(item.label)}' data-metric='{esc(n)}' "
                         f"data-step='{step}' data-value='{value!r}' title='step {step}'>{esc(text)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    counts = {eval_samples(item) for item in loaded}
    if len(counts) == 1 and None not in counts:
        (count,) = counts
        floors = {n: floor_for(n, count) for n in names}
        if any(floors.values()):
            cells = [f"<td><i>real data ({count:,} samples)</i></td>", "<td></td>"]
            cells += [f"<td class='num' data-floor='{esc(n)}'>{esc(fmt(f.value)) if f else ''}</td>"
                      for n, f in floors.items()]
            rows.append("<tr class='muted'>" + "".join(cells) + "</tr>")
    return (f"<table class='metrics'><thead><tr>{''.join(f'<th>{h}</th>' for h in head)}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>")


def metric_explanations(loaded: Sequence[LabelledRun]) -> str:
    """What each logged metric measures, its scale, its better direction and its floor for these runs."""
    names = logged_quality_metrics(loaded)
    if not names:
        return ""
    counts = {eval_samples(item) for item in loaded}
    count = next(iter(counts)) if len(counts) == 1 else None
    words = "" if count is None else f" Each evaluation scores {count:,} generated samples."
    items = [f"<dt>{esc(metric_info(n).short)} <code>{esc(n)}</code></dt><dd>{esc(metric_info(n).explanation(count))}"
             f"</dd>" for n in names]
    return f"<p class='muted'>How to read the metrics.{esc(words)}</p><dl class='metrics'>{''.join(items)}</dl>"


def sample_files(run) -> list[tuple[int, Path]]:
    """``(step, path)`` of the run's sample pictures (``samples/step_00000100.png``), by step."""
    if run.path is None or not (Path(run.path) / SAMPLES_DIR).is_dir():
        return []
    found = []
    for path in (Path(run.path) / SAMPLES_DIR).iterdir():
        match = _SAMPLE_NAME.match(path.name)
        if match and path.is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def pick_samples(files: Sequence[tuple[int, Path]]) -> list[tuple[str, int, Path]]:
    """The first, middle and last of ``files`` as ``(which, step, path)`` (fewer when fewer exist)."""
    if not files:
        return []
    chosen = {"first": 0, "middle": (len(files) - 1) // 2, "last": len(files) - 1}
    seen, picked = set(), []
    for which, index in chosen.items():
        if index not in seen:
            seen.add(index)
            picked.append((which, *files[index]))
    return picked


def samples_section(loaded: Sequence[LabelledRun]) -> str:
    """A table of sample grids: one row per run, its first, middle and last saved pictures."""
    rows = []
    for r, item in enumerate(loaded):
        files = sample_files(item.run)
        if not files:
            rows.append(f"<tr><td>{_label(r, item)}</td><td colspan='3' class='muted'>no sample pictures "
                        f"(<code>{SAMPLES_DIR}/step_*.png</code>)</td></tr>")
            continue
        cells = []
        for which, step, path in pick_samples(files):
            caption = f"{which}: step {step}"
            if path.stat().st_size > MAX_SAMPLE_BYTES:
                body = f"<span class='muted'>too large to embed: <code>{esc(path)}</code></span>"
            else:
                body = image(path, f"{item.label} samples at step {step}", css="sample", data_run=item.label,
                             data_step=step)
            cells.append(f"<td>{body}<br>{esc(caption)}</td>")
        more = f"<br><span class='muted'>{len(files)} saved</span>"
        rows.append(f"<tr><td>{_label(r, item)}{more}</td>{''.join(cells)}</tr>")
    return ("<p class='muted'>Generated from the same fixed latents at every saved step, so the grids of a run "
            "compare directly.</p><table class='samples'><colgroup><col class='run'><col><col><col></colgroup><thead><tr><th>run</th><th colspan='3'>first, middle "
            f"and last saved sample grid</th></tr></thead><tbody>{''.join(rows)}</tbody></table>")


def _layer_list(row: dict) -> list[str]:
    """An event's layer names: its ``layers`` list, else its comma-joined ``layer``."""
    layers = row.get("layers")
    if isinstance(layers, (list, tuple)) and layers:
        return [str(name) for name in layers]
    layer = row.get("layer")
    return [name.strip() for name in str(layer).split(",")] if isinstance(layer, str) and layer else []


def alert_groups(alerts: pd.DataFrame) -> list[dict]:
    """One row per kind of alert event (rule, net, phase, statistic): count, steps, layers involved, first message."""
    if alerts.empty:
        return []
    frame = alerts.copy()
    frame["layers"] = [_layer_list(row) for row in frame.to_dict("records")]
    keys = [k for k in ("rule", "kind", "net", "phase", "stat") if k in frame]
    groups = []
    for key, rows in frame.groupby(keys, sort=False, dropna=False):
        rows = rows.sort_values("step", kind="mergesort")
        counts = Counter(layer for layers in rows["layers"] for layer in layers).most_common()  # ties: input first
        layers = ", ".join(f"{name} ({n})" if len(rows) > 1 else str(name) for name, n in counts)
        steps = sorted(rows["step"].astype(int).unique())
        groups.append({**dict(zip(keys, key if isinstance(key, tuple) else (key,))), "events": len(rows),
                       "steps": f"{steps[0]}" if len(steps) == 1 else f"{steps[0]} to {steps[-1]}",
                       "layers (events)": layers, "first message": rows["message"].iloc[0]})
    return sorted(groups, key=lambda g: -g["events"])


def alerts_section(loaded: Sequence[LabelledRun]) -> str:
    """Per run: its alert events grouped by rule, net and statistic, then the individual events (collapsed)."""
    parts = []
    for r, item in enumerate(loaded):
        alerts = item.run.alerts
        parts.append(f"<h3>{_label(r, item)}</h3>")
        if alerts.empty:
            parts.append("<p>no alerts</p>")
            continue
        groups = alert_groups(alerts)
        parts.append(f"<p>{len(alerts)} alert event{'s' * (len(alerts) != 1)} of {len(groups)} "
                     f"kind{'s' * (len(groups) != 1)} (one event: the layers that tripped a rule at one step)</p>")
        columns = [c for c in ("rule", "kind", "net", "phase", "stat") if c in groups[0]]
        parts.append(table(groups, columns + ["events", "steps", "layers (events)", "first message"],
                           row_class=lambda row: "bad", css="alert-groups"))
        shown = alerts.head(MAX_ALERT_ROWS).to_dict("records")
        for row in shown:
            row["layers"] = ", ".join(_layer_list(row))
        more = f"first {len(shown)} of {len(alerts)}" if len(shown) < len(alerts) else f"all {len(alerts)}"
        parts.append(f"<details><summary>events ({more})</summary>"
                     + table(shown, ["step", "phase", "net", "layers", "rule", "stat", "value", "threshold",
                                     "message"]) + "</details>")
    return "\n".join(parts)


def details_section(loaded: Sequence[LabelledRun]) -> str:
    """Per run: table sizes, then its configuration and provenance (collapsed)."""
    parts = []
    for r, item in enumerate(loaded):
        run = item.run
        parts.append(f"<h3>{_label(r, item)} <span class='muted'>{esc(run.path or '')}</span></h3>"
                     f"<p>{run.row_count('layers')} layer rows, {run.row_count('scalars')} scalar rows</p>")
        if run.config:
            parts.append("<details><summary>configuration</summary>" + key_values(run.config) + "</details>")
        if run.provenance:
            parts.append("<details><summary>provenance</summary>" + key_values(run.provenance) + "</details>")
    return "\n".join(parts)
