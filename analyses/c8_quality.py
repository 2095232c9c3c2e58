"""C8: sample quality and stability of SN against BSSN, over training and across the scale c.

Claim (THEORY.md, C8)
---------------------
BSSN (bidirectional SN with a constant scale ``c``) beats SN in sample quality
(IS up, FID down) and in stability (fewer collapsed runs across learning
rates, ``n_dis``, ``c`` and seeds). The paper's own numbers are not available
here, so the comparison is reproduced.

What runs
---------
A grid ``norm in {ssn, bssn} x c x seed`` per dataset, run by the sweep machinery
(:func:`gradscope.sweep.run_sweep`: one ``gradscope run`` per point, resumable)
and summarized by :func:`gradscope.sweep.summary_table`, whose documented
collapse rule is used unchanged (diverged, or final FID > 1.5 x its best, or
fewer than half of a 2D mixture's modes covered at the end). ``ssn`` with ``c = 1`` is plain SN and
``bssn`` with ``c = 1`` is BSN, so every ``c`` compares the two normalizations
at the same scale, as the authors' setting A does. Sample quality is the FID
of the digits classifier (Inception FID at ``paper`` scale on CIFAR-10),
evaluated during training.

The 2D mixtures train the MLP pair, whose D has dense layers only, where
``sigma_fwd = sigma_bwd`` and BSN *is* SN: SSN and BSSN runs of equal ``c`` and
seed are the same run (checked: their D losses agree), so the comparison is
made on image data with the SNDCGAN only.

Verdicts
--------
Never must-hold, and decided by 95 % intervals (:mod:`analyses.stats`): final
quality is compared pair by pair (same dataset, ``c`` and seed) with
:func:`analyses.c4_gamma.paired_comparison` (the paired ratio SN / BSSN and
its t interval over pairs); stability by SN's collapse fraction minus BSSN's
with a bootstrap interval, judged only with at least 4 runs per method
(never ``violated`` at ``tiny`` scale). The powered version of this
comparison, on 32x32 MNIST over c and five seeds, is E2 / E3.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from analyses.c4_gamma import paired_comparison
from analyses.common import INCONCLUSIVE, VIOLATED, AnalysisResult, Check, check_at_most, start_result
from gradscope.plot import style

CLAIM = "C8"
TITLE = "Sample quality and stability: SN vs BSSN across the scale c"
METHODS: tuple[str, ...] = ("ssn", "bssn")
#: Runs per method below which the collapse fractions are not judged.
MIN_RUNS = 4
#: Quality columns of the sweep summary: (final, per-eval scalar names, what, higher is better).
QUALITY = (("final_fid", ("inception_fid", "digits_fid"), "final FID", False),
           ("final_modes", ("modes_covered",), "final modes covered", True))
_QUIET = {"sample-every": 0, "exact-every": 0, "keep-checkpoints": 1}

PARAMS = {
    "tiny": {"max_parallel": 2, "grids": {
        "ring8": {"base": {"iterations": 30, "batch-size": 64, "eval-every": 10, "eval-samples": 1000},
                  "scales": [1.4], "seeds": 1},
        "digits": {"base": {"image-size": 8, "iterations": 30, "batch-size": 32, "eval-every": 15,
                            "eval-samples": 500, "eval-metrics": "fid"},
                   "scales": [1.4], "seeds": 1}}},
    "small": {"max_parallel": 2, "grids": {
        "ring8": {"base": {"iterations": 1500, "batch-size": 256, "eval-every": 250, "eval-samples": 2000},
                  "scales": [1.4], "seeds": 1},
        "digits": {"base": {"iterations": 300, "batch-size": 64, "eval-every": 100, "eval-samples": 1000,
                            "eval-metrics": "fid"},
                   "scales": [1.0, 1.4], "seeds": 2}}},
    "paper": {"max_parallel": None, "grids": {
        "ring8": {"base": {"iterations": 10000, "batch-size": 256, "eval-every": 1000, "eval-samples": 5000},
                  "scales": [1.4], "seeds": 1},
        "cifar10": {"base": {"preset": "A", "iterations": 50000, "eval-every": 10000, "eval-samples": 10000},
                    "scales": [0.8, 1.0, 1.4, 2.0], "seeds": 3}}},
}
#: Datasets trained with the MLP pair: every D layer is dense, where BSN is SN exactly.
POINT_DATASETS: tuple[str, ...] = ("ring8", "grid25")


def run_grid(dataset: str, grid: dict, out: Path, seed: int, max_parallel: int | None) -> pd.DataFrame:
    """Run (or resume) one dataset's grid with the sweep machinery; return its summary table."""
    from gradscope.sweep import parse_spec, run_sweep, summary_table

    spec = parse_spec({"name": f"c8-{dataset}", "base": {**grid["base"], **_QUIET, "dataset": dataset},
                       "grid": {"norm": list(METHODS), "scale": grid["scales"],
                                "seed": list(range(seed, seed + grid["seeds"]))}}, source=f"C8 {dataset} grid")
    run_sweep(spec, out, max_parallel=max_parallel, echo=lambda *_: None)
    return summary_table(out).assign(dataset=dataset)


def quality_history(summary: pd.DataFrame, sweep_dirs: dict[str, Path]) -> pd.DataFrame:
    """Every evaluation (and D loss) of every run: ``dataset, norm, scale, seed, step, metric, value``."""
    from gradscope.record import load_run
    from gradscope.sweep.runner import run_dir_of

    names = {name for _, scalars, _, _ in QUALITY for name in scalars} | {"loss_d"}
    frames = []
    for row in summary.itertuples():
        run_dir = run_dir_of(sweep_dirs[row.dataset], row.run)
        if not (run_dir / "config.json").exists():
            continue
        scalars = load_run(run_dir).scalars
        rows = scalars[scalars["name"].isin(names)]
        frames.append(pd.DataFrame({"dataset": row.dataset, "norm": row.norm, "scale": row.scale, "seed": row.seed,
                                    "step": rows["step"].to_numpy(), "metric": rows["name"].to_numpy(),
                                    "value": rows["value"].to_numpy()}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["dataset", "norm", "scale", "seed", "step", "metric", "value"])


def collapse_check(rows: pd.DataFrame, dataset: str, scale: str) -> Check:
    """SN's collapse fraction minus BSSN's with a bootstrap interval; needs :data:`MIN_RUNS` runs per method."""
    from analyses.stats import bootstrap_difference, effect_check

    finished = rows[rows["status"].isin(["done", "diverged"])]
    fractions = {m: finished[finished["norm"] == m]["collapsed"].astype(float).to_numpy() for m in METHODS}
    counts = (f"SN {int(fractions['ssn'].sum())}/{len(fractions['ssn'])}, "
              f"BSSN {int(fractions['bssn'].sum())}/{len(fractions['bssn'])} collapsed")
    check = effect_check(CLAIM, f"{dataset}: collapse fraction SN - BSSN (fewer BSSN collapses)",
                         bootstrap_difference(fractions["bssn"], fractions["ssn"]), "positive",
                         note=f"{counts}; needs >= {MIN_RUNS} runs per method to judge")
    if min(len(f) for f in fractions.values()) < MIN_RUNS or (scale == "tiny" and check.verdict == VIOLATED):
        check = Check(check.claim, check.quantity, check.measured, check.bound_or_prediction, INCONCLUSIVE,
                      False, check.relation, check.detail)
    return check


def identity_check(losses: pd.DataFrame, dataset: str) -> Check:
    """On an all-dense D, SSN and BSSN runs of equal ``c`` and seed must be the same run (BSN = SN there)."""
    wide = losses[losses["dataset"] == dataset].pivot_table(index=["scale", "seed", "step"], columns="norm",
                                                            values="value")
    difference = float((wide["ssn"] - wide["bssn"]).abs().max() / max(wide.abs().max().max(), 1e-12))
    return check_at_most(CLAIM, f"{dataset} (MLP: dense layers only): max |loss_D(SSN) - loss_D(BSSN)| / max |loss_D|",
                         difference, 1e-6, rtol=0, must_hold=False,
                         detail=f"{len(wide)} paired steps; sigma_fwd = sigma_bwd for a dense layer, so SN vs BSSN "
                         "is compared on image data only")


def quality_checks(summary: pd.DataFrame, scale: str, losses: pd.DataFrame | None = None) -> list[Check]:
    """Per image dataset: final quality pair by pair and the collapse fractions; per 2D set, the identity."""
    checks = []
    for dataset, rows in summary.groupby("dataset", sort=False):
        if dataset in POINT_DATASETS:
            if losses is not None:
                checks.append(identity_check(losses, dataset))
            continue
        done = rows[rows["status"] == "done"]
        unlike = done[done.get("unlike_sweep", pd.Series("", index=done.index)).fillna("") != ""]
        if len(unlike):
            # Comparing runs made with other settings or code measures the difference, not the method.
            checks.append(Check(CLAIM, f"{dataset}: runs made with settings or code unlike the rest of the sweep",
                                float(len(unlike)), 0.0, INCONCLUSIVE, relation="<=",
                                detail="; ".join(f"{r}: {u}" for r, u in zip(unlike["run"], unlike["unlike_sweep"]))
                                + " -- delete them and resume the sweep"))
            continue
        for column, _, what, higher_is_better in QUALITY:
            if column not in done or done[column].isna().all():
                continue
            pairs = done.pivot_table(index=["scale", "seed"], columns="norm", values=column).dropna()
            if len(pairs) and set(METHODS) <= set(pairs.columns):
                checks.append(paired_comparison(
                    CLAIM, f"{dataset}: SN vs BSSN, {what} (pairs of equal c and seed)", pairs["ssn"].to_numpy(),
                    pairs["bssn"].to_numpy(), higher_is_worse=not higher_is_better, scale=scale))
        checks.append(collapse_check(rows, dataset, scale))
    return checks


def plot_quality(summary: pd.DataFrame, history: pd.DataFrame):
    """Final quality vs c per method, quality over training (mean over runs), collapse fractions."""
    datasets = list(dict.fromkeys(summary["dataset"]))
    fig, axes = style.new_figure(len(datasets), 3, panel_size=(3.3, 2.6),
                                 title="C8: SN vs BSSN, final quality across c, quality over training, collapses")
    for r, dataset in enumerate(datasets):
        rows = summary[summary["dataset"] == dataset]
        column, names, what, higher_is_better = next(
            (q for q in QUALITY if q[0] in rows and rows[q[0]].notna().any()), QUALITY[-1])
        direction = "higher is better" if higher_is_better else "lower is better"
        for i, method in enumerate(METHODS):
            runs = rows[rows["norm"] == method]
            if column in runs:
                axes[r, 0].plot(runs["scale"], runs[column], linestyle="none", marker="o", alpha=0.6,
                                color=style.color(i))
                means = runs.groupby("scale")[column].mean()
                axes[r, 0].plot(means.index, means, color=style.color(i), label=f"{method} (mean over seeds)")
            evals = history[(history["dataset"] == dataset) & (history["norm"] == method)
                            & history["metric"].isin(names)]
            if len(evals):
                curve = evals.groupby("step")["value"].mean()
                axes[r, 1].plot(curve.index, curve, marker=".", color=style.color(i), label=method)
            fraction = runs["collapsed"].astype(float).mean() if len(runs) else np.nan
            axes[r, 2].bar(i, fraction, color=style.color(i), label=f"{method} (n={len(runs)})")
        style.label_axes(axes[r, 0], "scale c", f"{what} ({direction})", f"{dataset}: final quality vs c")
        style.label_axes(axes[r, 1], "iteration", what.replace("final ", ""), f"{dataset}: mean over runs")
        axes[r, 2].set_xticks(range(len(METHODS)), list(METHODS))
        axes[r, 2].set_ylim(0, 1)
        style.label_axes(axes[r, 2], "normalization", "collapsed runs (fraction)", f"{dataset}: collapses")
        for ax in axes[r]:
            style.legend(ax, loc="best")
    return fig


def run(scale: str, out: Path, seed: int = 0) -> AnalysisResult:
    """Run C8 at ``scale`` into ``out``; see the module docstring for what is run and judged."""
    from gradscope.sweep.summarize import stability_figures

    params, result = start_result(CLAIM, TITLE, scale, out, PARAMS)
    sweep_dirs = {dataset: result.out / "sweeps" / dataset for dataset in params["grids"]}
    summary = pd.concat([run_grid(dataset, grid, sweep_dirs[dataset], seed, params["max_parallel"])
                         for dataset, grid in params["grids"].items()], ignore_index=True)
    history = quality_history(summary, sweep_dirs)
    losses = history[history["metric"] == "loss_d"]
    evaluations = history[history["metric"] != "loss_d"]
    result.add_table("c8_runs", summary)
    result.add_table("c8_quality_history", evaluations)
    result.add(*quality_checks(summary, scale, losses))
    images = summary[~summary["dataset"].isin(POINT_DATASETS)]
    if len(images):
        result.add_figure(plot_quality(images, evaluations), "c8_quality")
    for dataset, directory in sweep_dirs.items():
        result.figures.extend(stability_figures(summary[summary["dataset"] == dataset], directory))
    failed = summary[~summary["status"].isin(["done", "diverged"])]
    if len(failed):
        result.notes.append(f"{len(failed)} runs did not finish: " + ", ".join(failed["run"]))
    return result
