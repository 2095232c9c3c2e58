"""The stability study: one row per run of a sweep, and the figures that compare methods.

Collapse rule (documented, used by the table and the figures): a run *collapsed* when
it diverged (a non-finite loss stopped it), or its final sample quality is far below
its own best: final FID > ``FID_COLLAPSE_FACTOR`` x best FID on image data, or final
modes covered < ``MODES_COLLAPSE_FRACTION`` x its best on the 2D sets. Runs that
failed (an error, not training dynamics) or have not finished are listed but neither
collapsed nor counted in the fractions.

Runs of one sweep are comparable only if they differ in the grid's parameters alone.
Each ``gradscope run`` resolves its defaults when it starts, from the code installed at
that moment: a sweep that runs while the code changes (an editable install being
edited, an upgrade between a sweep and its resumption) can mix settings. The table's
``unlike_sweep`` column names, for each run, the settings beyond the grid (and the
code version) in which it differs from most of the sweep, and a warning says so.
"""
from __future__ import annotations

import json
import logging
import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gradscope.plot import style
from gradscope.record import load_run
from gradscope.sweep.manifest import Manifest
from gradscope.sweep.runner import run_dir_of
from gradscope.train.config import FIELD_NAMES, RUNTIME_FIELDS, RunConfig

logger = logging.getLogger("gradscope.sweep")

FID_COLLAPSE_FACTOR = 1.5
MODES_COLLAPSE_FRACTION = 0.5
#: Scalar names of the sample-quality metrics, preferred first (Inception over the digit classifiers).
FID_NAMES = ("inception_fid", "mnist_fid", "digits_fid")
IS_NAMES = ("inception_is_mean", "mnist_is_mean", "digits_is_mean")
MODES_NAME = "modes_covered"
#: config.json keys that may differ between the runs of one sweep: where and how each executes.
PER_RUN_KEYS = frozenset(RUNTIME_FIELDS) | {"cpu_threads"}


def _series(scalars: pd.DataFrame, names: tuple[str, ...]) -> tuple[str | None, pd.Series]:
    for name in names:
        rows = scalars[scalars["name"] == name]
        if len(rows):
            return name, rows.sort_values("step").set_index("step")["value"]
    return None, pd.Series(dtype=float)


def run_row(run_id: str, run_dir: Path, entry) -> dict:
    """One summary row: the run's varied parameters, status, quality numbers, alert count, collapse flag."""
    row: dict = {"run": run_id, **entry.params, "status": entry.status, "attempts": entry.attempts}
    run = load_run(run_dir) if (run_dir / "config.json").exists() else None
    if run is not None:
        row["method"] = run.config.get("norm")
        row["scale"] = run.config.get("scale")
        row["alerts"] = len(run.alerts)
        for label, names, best in (("fid", FID_NAMES, min), ("is", IS_NAMES, max), ("modes", (MODES_NAME,), max)):
            name, series = _series(run.scalars, names)
            if name is not None:
                row[f"{label}_metric"] = name
                row[f"final_{label}"] = float(series.iloc[-1])
                row[f"best_{label}"] = float(best(series))
    row["collapsed"] = collapsed(row)
    return row


def _as_current(config: dict[str, Any]) -> dict[str, Any]:
    """The run's settings as today's code reads them: a setting added after the run was made takes the
    default it has now (which, by the project's rule, is the behaviour the older code had)."""
    fields = {k: v for k, v in config.items() if k in FIELD_NAMES}
    try:
        resolved = RunConfig.from_dict(fields).to_dict()
    except (TypeError, ValueError):
        return config
    return {**config, **resolved}


def fixed_settings(config: dict[str, Any], provenance: dict[str, Any], grid_keys: set[str]) -> dict[str, Any]:
    """What should be equal across a sweep's runs: the run's settings outside the grid, and its code version."""
    varied = {key.replace("-", "_") for key in grid_keys}
    config = _as_current(config)
    settings = {k: v for k, v in config.items() if k not in PER_RUN_KEYS and k not in varied}
    settings["code"] = provenance.get("git_commit") or provenance.get("gradscope")
    return settings


def unlike_majority(settings: dict[str, dict[str, Any]]) -> dict[str, str]:
    """For each run, ``"key value vs majority_value; ..."`` where its settings differ from the most common ones.

    Examples
    --------
    >>> unlike_majority({"a": {"ema": 0.0}, "b": {"ema": 0.99}, "c": {"ema": 0.99}})
    {'a': 'ema 0.0 vs 0.99', 'b': '', 'c': ''}
    """
    def encode(values: dict[str, Any]) -> str:
        return json.dumps(values, sort_keys=True, default=str)

    if not settings:
        return {}
    common = json.loads(Counter(encode(v) for v in settings.values()).most_common(1)[0][0])
    out = {}
    for run_id, values in settings.items():
        mine = json.loads(encode(values))
        keys = sorted(set(mine) | set(common))
        out[run_id] = "; ".join(f"{k.replace('_', '-')} {mine.get(k)!r} vs {common.get(k)!r}".replace("'", "")
                                for k in keys if mine.get(k) != common.get(k))
    return out


def collapsed(row: dict) -> bool | float:
    """The collapse rule of the module docstring; NaN for runs that failed or did not finish."""
    if row["status"] == "diverged":
        return True
    if row["status"] != "done":
        return math.nan
    if "final_fid" in row:
        return bool(row["final_fid"] > FID_COLLAPSE_FACTOR * row["best_fid"])
    if "final_modes" in row:
        return bool(row["final_modes"] < MODES_COLLAPSE_FRACTION * row["best_modes"])
    return False


def summary_table(directory: str | Path) -> pd.DataFrame:
    """One row per run of the sweep in ``directory`` (see :func:`run_row`)."""
    directory = Path(directory)
    manifest = Manifest.load(directory)
    if manifest is None:
        raise FileNotFoundError(f"{directory} has no manifest.json: it is not a gradscope sweep directory")
    rows = [run_row(run_id, run_dir_of(directory, run_id), entry) for run_id, entry in manifest.runs.items()]
    grid_keys = {key for entry in manifest.runs.values() for key in entry.params}
    settings = {}
    for run_id in manifest.runs:
        run_dir = run_dir_of(directory, run_id)
        if (run_dir / "config.json").exists():
            run = load_run(run_dir)
            settings[run_id] = fixed_settings(run.config, run.provenance, grid_keys)
    unlike = unlike_majority(settings)
    for row in rows:
        row["unlike_sweep"] = unlike.get(row["run"], "")
    odd = [run_id for run_id, text in unlike.items() if text]
    if odd:
        logger.warning(f"sweep {directory}: {len(odd)} of {len(unlike)} runs differ from the rest beyond the grid "
                       f"({unlike[odd[0]]} in {odd[0]}); the code or its defaults changed while the sweep ran: "
                       "their numbers are not comparable (see the unlike_sweep column); delete those run "
                       "directories and run the sweep again")
    return pd.DataFrame(rows)


def _quality_column(table: pd.DataFrame) -> tuple[str | None, str]:
    if "final_fid" in table and table["final_fid"].notna().any():
        return "final_fid", f"final FID ({table['fid_metric'].dropna().iloc[0].replace('_', ' ')}, lower is better)"
    if "final_modes" in table and table["final_modes"].notna().any():
        return "final_modes", "final modes covered (higher is better)"
    return None, ""


def stability_figures(table: pd.DataFrame, output: Path) -> list[Path]:
    """Quality vs scale c per method, collapse fraction per method, final quality per method (box plots)."""
    paths: list[Path] = []
    finished = table[table["status"].isin(["done", "diverged"])]
    if finished.empty or "method" not in finished:
        return paths
    methods = sorted(finished["method"].dropna().unique())
    column, label = _quality_column(finished)

    fig, axes = style.new_figure(1, 1, title="Fraction of collapsed runs per method")
    ax = axes[0, 0]
    fractions = [finished[finished["method"] == m]["collapsed"].astype(float).mean() for m in methods]
    counts = [int((finished["method"] == m).sum()) for m in methods]
    ax.bar(range(len(methods)), fractions, color=[style.color(i) for i in range(len(methods))])
    ax.set_xticks(range(len(methods)), [f"{m}\n(n={n})" for m, n in zip(methods, counts)])
    ax.set_ylim(0, 1)
    style.label_axes(ax, "normalization", "collapsed runs (fraction)")
    paths += style.save_figure(fig, output / "collapse_fraction")

    if column is None:
        return paths
    fig, axes = style.new_figure(1, 1, title="Final sample quality per method, whole grid")
    ax = axes[0, 0]
    data = [finished[finished["method"] == m][column].dropna().to_numpy() for m in methods]
    ax.boxplot(data, showmeans=True)
    ax.set_xticks(range(1, len(methods) + 1), methods)
    style.label_axes(ax, "normalization", label)
    paths += style.save_figure(fig, output / "final_quality_box")

    if finished["scale"].nunique() > 1:
        fig, axes = style.new_figure(1, 1, title="Sample quality vs scale c (mean and std over seeds)")
        ax = axes[0, 0]
        for i, method in enumerate(methods):
            stats = (finished[finished["method"] == method].groupby("scale")[column]
                     .agg(["mean", "std"]).reset_index().sort_values("scale"))
            ax.errorbar(stats["scale"], stats["mean"], yerr=np.nan_to_num(stats["std"].to_numpy()),
                        label=method, capsize=3, marker="o", **style.series_style(i))
        style.label_axes(ax, "scale c (multiplier of every normalized D layer)", label)
        style.legend(ax)
        paths += style.save_figure(fig, output / "quality_vs_scale")
    return paths


def summarize(directory: str | Path, output: str | Path | None = None) -> tuple[pd.DataFrame, list[Path]]:
    """Write ``summary.csv`` and the stability figures for the sweep in ``directory``.

    Examples
    --------
    >>> table, figures = summarize("sweeps/demo")  # doctest: +SKIP
    >>> table[["run", "status", "final_fid", "collapsed"]]  # doctest: +SKIP
    """
    table = summary_table(directory)
    output = Path(output) if output is not None else Path(directory)
    output.mkdir(parents=True, exist_ok=True)
    table.to_csv(output / "summary.csv", index=False)
    return table, stability_figures(table, output)
