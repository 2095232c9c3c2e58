"""What the training experiments (E1-E4) share: compact per-run tables read from sweeps, and their plots.

The experiments' evidence is kept *compact* so that it can be committed and
redrawn without the runs (``gradscope reproduce NAME --from-results DIR``):

- :func:`runs_table`: one row per run (grid parameters, status, final metrics);
- :func:`layer_curves`: per-layer statistics of each run, downsampled to at
  most ``points`` recorded steps (the first and last always kept);
- :func:`scalar_curves`: the same for the run's scalars (losses, FID, ...).

Plots draw, for each arm, the mean over seeds with a 95 % t band (on the log
scale for positive quantities), and effects as a forest of intervals.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from analyses.stats import t_interval

#: Columns of a sweep summary that identify a run's arm and seed (when the sweep varies them).
ARM_COLUMNS: tuple[str, ...] = ("optimizer", "norm", "init", "scale", "lr-d", "lr-g", "n-dis", "loss")


def concat(frames: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """``pd.concat`` of the non-empty ``frames`` with their real dtypes (empty ones would make columns object)."""
    full = [f for f in frames if len(f)]
    if not full:
        return frames[0] if len(frames) else pd.DataFrame()
    return pd.concat(full, ignore_index=True).infer_objects()


def arm_label(row) -> str:
    """``"none, lecun init"``, ``"sn"``, ``"bssn c=1.4"``: the arm of a run in words."""
    get = row.get if isinstance(row, dict) else (lambda k, d=None: getattr(row, k, d))
    norm = str(get("norm", "sn"))
    label = norm
    init = get("init", None)
    if isinstance(init, str) and init:
        label += f", {init} init"
    scale = get("scale", None)
    if scale is not None and not (isinstance(scale, float) and math.isnan(scale)) and float(scale) != 1.0:
        label += f" c={float(scale):g}"
    return label


def runs_table(summary: pd.DataFrame, sweep: str) -> pd.DataFrame:
    """The sweep summary with ``sweep`` and ``arm`` columns (a missing init is the arch's reference one)."""
    table = summary.copy()
    if "init" in table:
        table["init"] = table["init"].where(table["init"].notna(), "")
    table.insert(0, "sweep", sweep)
    table.insert(1, "arm", [arm_label(r) for r in table.to_dict("records")])
    return table


def downsample_steps(steps: np.ndarray, points: int) -> np.ndarray:
    """At most ``points`` of the sorted unique ``steps``, evenly spread, first and last kept.

    Examples
    --------
    >>> downsample_steps(np.arange(0, 100, 10), 4).tolist()
    [0, 30, 60, 90]
    """
    unique = np.unique(steps)
    if len(unique) <= points:
        return unique
    return unique[np.unique(np.round(np.linspace(0, len(unique) - 1, points)).astype(int))]


def finished_runs(runs: pd.DataFrame, directory: Path):
    """``(row, Run)`` for each run of ``runs`` that finished (done or diverged) and has its folder in ``directory``."""
    from gradscope.record import load_run
    from gradscope.sweep.runner import run_dir_of

    for row in runs.itertuples():
        run_dir = run_dir_of(directory, row.run)
        if row.status in ("done", "diverged") and (run_dir / "config.json").exists():
            yield row, load_run(run_dir)


def layer_curves(runs: pd.DataFrame, directory: Path, stats: Sequence[str], *, net: str = "D",
                 phase: str = "d", points: int = 50) -> pd.DataFrame:
    """``sweep, arm, seed, run, step, layer, layer_index, stat, value`` for the finished runs of ``runs``."""
    frames = []
    for row, run in finished_runs(runs, directory):
        rows = run.rows(stats=list(stats), nets=[net], phases=[phase])  # read from the files, filtered there
        rows = rows[rows["step"].isin(downsample_steps(rows["step"].to_numpy(), points))]
        rows = rows.astype({"layer": str, "stat": str, "layer_index": "int64"})
        frames.append(rows.drop(columns=["phase", "net"]).assign(sweep=row.sweep, arm=row.arm, seed=row.seed,
                                                                 run=row.run))
    columns = ["sweep", "arm", "seed", "run", "step", "layer", "layer_index", "stat", "value"]
    return pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)


def scalar_curves(runs: pd.DataFrame, directory: Path, names: Sequence[str], *, points: int = 50) -> pd.DataFrame:
    """``sweep, arm, seed, run, step, name, value`` of the scalars ``names`` of the finished runs."""
    frames = []
    for row, run in finished_runs(runs, directory):
        scalars = run.scalars
        rows = scalars[scalars["name"].isin(list(names))]
        keep = [rows[rows["name"] == n] for n in names]
        keep = [r[r["step"].isin(downsample_steps(r["step"].to_numpy(), points))] for r in keep if len(r)]
        if keep:
            rows = pd.concat(keep)
            frames.append(pd.DataFrame({"sweep": row.sweep, "arm": row.arm, "seed": row.seed, "run": row.run,
                                        "step": rows["step"].to_numpy(), "name": rows["name"].to_numpy(),
                                        "value": rows["value"].to_numpy()}))
    columns = ["sweep", "arm", "seed", "run", "step", "name", "value"]
    return pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)


def seed_band(values: pd.DataFrame, x: str, y: str, *, log: bool) -> pd.DataFrame:
    """Per ``x``: the mean over rows (seeds) of ``y`` and its 95 % t interval (geometric when ``log``)."""
    rows = []
    for key, group in values.groupby(x, sort=True):
        v = group[y].to_numpy(dtype=float)
        if log:
            v = np.log(v[v > 0])
        mean, low, high = t_interval(v)
        if log:
            mean, low, high = (math.exp(t) if np.isfinite(t) else np.nan for t in (mean, low, high))
        rows.append({x: key, "mean": mean, "low": low, "high": high, "n": int(np.isfinite(v).sum())})
    return pd.DataFrame(rows, columns=[x, "mean", "low", "high", "n"])


def plot_bands(ax, table: pd.DataFrame, x: str, y: str, group: str, *, log: bool, order: Sequence[str] | None = None,
               marker: str | None = None) -> None:
    """One line per ``group`` value: the mean over seeds of ``y`` against ``x`` with its 95 % band."""
    from gradscope.plot import style

    groups = list(order) if order is not None else list(dict.fromkeys(table[group]))
    drawn = False
    for i, name in enumerate(groups):
        rows = table[table[group] == name]
        rows = rows[(rows[y] > 0) if log else rows[y].notna()]
        if not len(rows):
            continue
        drawn = True
        band = seed_band(rows, x, y, log=log)
        n = int(band["n"].max()) if len(band) else 0
        ax.plot(band[x], band["mean"], color=style.color(i), linestyle=style.linestyle(i), marker=marker,
                label=f"{name} (n={n})")
        ax.fill_between(band[x], band["low"], band["high"], color=style.color(i), alpha=0.18, linewidth=0)
    if log and drawn:
        ax.set_yscale("log")


#: Marker colours of the effects plot by verdict.
VERDICT_COLORS = {"holds": "#1a9850", "violated": "#d73027", "inconclusive": "0.55"}


def effects_figure(checks, title: str):
    """A forest plot of the checks' effects: ratios (null 1, log axis) above, differences (null 0) below."""
    from gradscope.plot import style

    ratio = [c for c in checks if c.bound_or_prediction == 1.0 and _interval_of(c.detail)]
    difference = [c for c in checks if c.bound_or_prediction == 0.0 and _interval_of(c.detail)]
    groups = [(g, name) for g, name in ((ratio, "ratios (dotted: 1, no effect)"),
                                        (difference, "differences (dotted: 0, no effect)")) if g]
    if not groups:
        groups = [([], "no effect with an interval (too few seeds)")]
    heights = [max(len(g), 1) * 0.42 + 0.8 for g, _ in groups]
    fig, axes = style.new_figure(len(groups), 1, panel_size=(9.5, max(heights)),
                                 title=f"{title}: green holds, red violated, grey inconclusive")
    for ax, (group, name) in zip(axes[:, 0], groups):
        plot_effects(ax, group, title=name)
    return fig


def plot_effects(ax, checks, *, title: str) -> None:
    """A forest plot: each check's effect (ratio or difference) with the interval written in its detail."""
    import textwrap

    from gradscope.plot import style

    labels, centers, lows, highs, colors = [], [], [], [], []
    for check in checks:
        interval = _interval_of(check.detail)
        if interval is None:
            continue
        labels.append("\n".join(textwrap.wrap(check.quantity, 70)[:3]))
        centers.append(check.measured)
        lows.append(interval[0])
        highs.append(interval[1])
        colors.append(VERDICT_COLORS.get(check.verdict, VERDICT_COLORS["inconclusive"]))
    y = np.arange(len(labels))[::-1]
    for yi, c, lo, hi, col in zip(y, centers, lows, highs, colors):
        ax.plot([lo, hi], [yi, yi], color=col, linewidth=2)
        ax.plot([c], [yi], "o", color=col)
    nulls = {check.bound_or_prediction for check in checks}
    for null in nulls:
        ax.axvline(null, color="0.3", linestyle=":", linewidth=1)
    ax.set_yticks(y, labels, fontsize=7)
    ax.set_ylim(-0.6, len(labels) - 0.4)
    style.label_axes(ax, "effect and its 95 % interval", "", title)
    if nulls == {1.0} and len(lows) and all(v > 0 for v in lows + highs + centers):
        ax.set_xscale("log")


def _interval_of(detail: str) -> tuple[float, float] | None:
    # The interval is written by analyses.stats.Effect.describe as "[low, high]".
    start, end = detail.find("["), detail.find("]")
    if start < 0 or end < start:
        return None
    try:
        low, high = (float(part) for part in detail[start + 1:end].split(","))
    except ValueError:
        return None
    return (low, high) if np.isfinite(low) and np.isfinite(high) else None


def write_results(tables: dict[str, pd.DataFrame], dest: str | Path) -> list[Path]:
    """Write compact tables as ``dest/<name>.csv.gz`` (what is committed under ``results/``)."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, table in tables.items():
        path = dest / f"{name}.csv.gz"
        tmp = path.with_name(path.name + ".tmp")
        table.to_csv(tmp, index=False, compression={"method": "gzip", "mtime": 0})
        tmp.replace(path)
        paths.append(path)
    return paths


def read_results(source: str | Path, names: Sequence[str]) -> dict[str, pd.DataFrame]:
    """The compact tables ``names`` from ``source`` (``.csv.gz`` or ``.csv``); a one-line error if one is missing."""
    source = Path(source)
    tables = {}
    for name in names:
        for candidate in (source / f"{name}.csv.gz", source / f"{name}.csv"):
            if candidate.is_file():
                tables[name] = pd.read_csv(candidate)
                break
        else:
            raise FileNotFoundError(f"{source} holds no {name}.csv.gz (results of this analysis); run it first "
                                    "or point --from-results at the folder that has them")
    return tables


def real_floor(dataset_name: str, n_samples: int, *, draws: int = 5, metrics: tuple[str, ...] = ("fid", "is"),
               image_size: int | None = None) -> pd.DataFrame:
    """FID / IS of ``n_samples`` *real* images against the same reference a run is scored on: the floor.

    A perfect generator still scores this (FID is biased upwards at finite sample
    counts); ``draws`` disjoint-seeded subsets give its spread. Columns:
    ``draw, n_samples, metric, value``.
    """
    import torch

    from gradscope.data import load_dataset
    from gradscope.metrics import SampleQuality, get_extractor, reference_statistics

    dataset = load_dataset(dataset_name, image_size=image_size)
    features = get_extractor("auto", dataset_name=dataset_name)
    reference = reference_statistics(dataset, features)
    rows = []
    for draw in range(draws):
        generator = torch.Generator().manual_seed(1000 + draw)
        indices = torch.randperm(len(dataset), generator=generator)[:n_samples]
        quality = SampleQuality(features, metrics, seed=draw)
        quality.set_reference(reference)
        for start in range(0, len(indices), 500):
            quality.update(dataset.get_batch(indices[start:start + 500]), real=False)
        rows.extend({"draw": draw, "n_samples": int(len(indices)), "metric": k, "value": float(v)}
                    for k, v in quality.compute().items())
    return pd.DataFrame(rows, columns=["draw", "n_samples", "metric", "value"])


def run_experiment(module, scale: str, out: str | Path, seed: int = 0, dataset: str | None = None, *,
                   train: bool = True):
    """The ``run`` of every training experiment ``module`` (``CLAIM``, ``TITLE``, ``PARAMS``, ``collect``,
    ``conclude``): run or resume its sweeps, keep their compact tables in ``out/results``, judge and draw.

    ``dataset`` replaces the scale's dataset; ``train=False`` judges what the sweeps hold so far and
    starts no run.
    """
    from analyses.common import start_result

    _, result = start_result(module.CLAIM, module.TITLE, scale, out, module.PARAMS)
    tables = module.collect(scale, result.out, seed, dataset=dataset, execute=train)
    write_results(tables, result.out / "results")
    return module.conclude(result, tables)


def redraw_experiment(module, scale: str, source: str | Path, out: str | Path):
    """Judge and draw a training experiment from its committed compact tables in ``source`` (no training)."""
    from analyses.common import start_result

    _, result = start_result(module.CLAIM, module.TITLE, scale, out, module.PARAMS)
    return module.conclude(result, read_results(source, module.RESULT_TABLES))
