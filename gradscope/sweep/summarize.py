"""The stability study: one row per run of a sweep, and the figures that compare methods.

Collapse rule (documented, used by the table and the figures)
--------------------------------------------------------------
A finished run *collapsed* when

1. it diverged (a non-finite loss stopped it, status ``diverged``); or
2. on image data, its final FID is above ``FID_COLLAPSE_FACTOR`` (1.5) x its best FID
   (quality fell far below what the run itself reached; a non-finite final FID counts); or
3. on the 2D mixtures (``ring8``: 8 modes, ``grid25``: 25), its final generator covers
   fewer than ``MODES_COLLAPSE_FRACTION`` (half) of the data's modes (``modes_covered``
   of the last evaluation < 4 of 8 on ring8). The threshold is the data's mode count,
   not the run's best: a run that never spread over the modes (too short, or
   collapsed from the start) covers few modes and is counted, as the metric says.

``collapse_reason`` says which case applied (empty when none did); a run with no
quality metric is judged on divergence alone. Runs that failed (an error, not
training dynamics) or have not finished are listed with ``collapsed`` NaN and are
not counted in the fractions.

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

import pandas as pd

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
#: The 2D mixtures, whose collapse is judged by the share of their modes covered.
MIXTURES = ("ring8", "grid25")
#: Run states with a training outcome; the others (pending, running, failed) are not judged.
FINISHED = ("done", "diverged")
#: config.json keys that may differ between the runs of one sweep: where and how each executes.
PER_RUN_KEYS = frozenset(RUNTIME_FIELDS) | {"cpu_threads"}


def _series(scalars: pd.DataFrame, names: tuple[str, ...]) -> tuple[str | None, pd.Series]:
    for name in names:
        rows = scalars[scalars["name"] == name]
        if len(rows):
            return name, rows.sort_values("step").set_index("step")["value"]
    return None, pd.Series(dtype=float)


def run_row(run_id: str, run_dir: Path, entry) -> dict:
    """One summary row: the run's varied parameters, status, quality numbers, alert count, collapse flag
    and its reason (the module's collapse rule)."""
    row: dict = {"run": run_id, **entry.params, "status": entry.status, "attempts": entry.attempts}
    run = load_run(run_dir) if (run_dir / "config.json").exists() else None
    if run is not None:
        row["method"] = run.config.get("norm")
        row["scale"] = run.config.get("scale")
        row["dataset"] = run.config.get("dataset")
        row["alerts"] = len(run.alerts)
        for label, names, best in (("fid", FID_NAMES, min), ("is", IS_NAMES, max), ("modes", (MODES_NAME,), max)):
            name, series = _series(run.scalars, names)
            if name is not None:
                row[f"{label}_metric"] = name
                row[f"final_{label}"] = float(series.iloc[-1])
                row[f"best_{label}"] = float(best(series))
        if "final_modes" in row:
            row["modes_total"] = mode_count(row["dataset"])
    row["collapsed"] = collapsed(row)
    row["collapse_reason"] = collapse_reason(row) if row["status"] in FINISHED else ""
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


def mode_count(dataset: str | None) -> int | None:
    """Number of modes of a 2D mixture (``ring8`` 8, ``grid25`` 25); ``None`` for any other dataset.

    Examples
    --------
    >>> mode_count("ring8"), mode_count("grid25"), mode_count("digits")
    (8, 25, None)
    """
    if dataset not in MIXTURES:
        return None
    from gradscope.data.mixtures import grid_centers, ring_centers

    return len(ring_centers() if dataset == "ring8" else grid_centers())


def collapse_reason(row: dict) -> str:
    """Why a finished run collapsed by the module's rule (``""``: it did not); see :func:`collapsed`.

    Examples
    --------
    >>> collapse_reason({"status": "done", "final_modes": 1.0, "best_modes": 1.0, "modes_total": 8})
    'covers 1 of 8 modes (< 4)'
    >>> collapse_reason({"status": "done", "final_fid": 30.0, "best_fid": 25.0})
    ''
    """
    if row["status"] == "diverged":
        return "diverged"
    if _present(row, "final_fid") or _present(row, "best_fid"):  # a NaN last FID of a run that had FIDs counts
        final, best = row["final_fid"], row["best_fid"]
        if not final <= FID_COLLAPSE_FACTOR * best:
            return f"final FID {final:.4g} > {FID_COLLAPSE_FACTOR:g} x its best {best:.4g}"
        return ""
    if _present(row, "final_modes"):
        final = row["final_modes"]
        total = row.get("modes_total")
        if total is None or not math.isfinite(total):
            total = row["best_modes"]  # an unknown mixture: judged against the run's own best
        threshold = MODES_COLLAPSE_FRACTION * total
        if final < threshold or final == 0:
            return f"covers {final:g} of {total:g} modes (< {threshold:g})"
    return ""


def _present(row: dict, key: str) -> bool:
    value = row.get(key)
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def collapsed(row: dict) -> bool | float:
    """The collapse rule of the module docstring: True / False for finished runs, NaN for the others."""
    if row["status"] not in FINISHED:
        return math.nan
    return bool(collapse_reason(row))


def setting_label(params: dict) -> str:
    """A run's grid values but its seed, as one label (``"lr-d 0.0001, lr-g 0.0001"``); ``""`` for none.

    Examples
    --------
    >>> setting_label({"lr-d": 1e-4, "lr-g": 1e-4, "seed": 3})
    'lr-d 0.0001, lr-g 0.0001'
    """
    return ", ".join(f"{key} {value}" for key, value in params.items() if key != "seed")


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
    for row, entry in zip(rows, manifest.runs.values()):
        row["unlike_sweep"] = unlike.get(row["run"], "")
        row["setting"] = setting_label(entry.params)
    odd = [run_id for run_id, text in unlike.items() if text]
    if odd:
        logger.warning(f"sweep {directory}: {len(odd)} of {len(unlike)} runs differ from the rest beyond the grid "
                       f"({unlike[odd[0]]} in {odd[0]}); the code or its defaults changed while the sweep ran: "
                       "their numbers are not comparable (see the unlike_sweep column); delete those run "
                       "directories and run the sweep again")
    return pd.DataFrame(rows)


def stability_figures(table: pd.DataFrame, output: Path) -> list[Path]:
    """The stability figures of ``table`` in ``output`` (see :mod:`gradscope.sweep.figures`)."""
    from gradscope.sweep.figures import stability_figures as draw

    return draw(table, output)


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
