"""E3: stability of SN vs BSSN over learning rates (setting B analogue) and with n_dis = 5 (setting C).

What runs
---------
The authors count runs that collapse across learning rates, n_dis, c and
seeds. Here, on the CPU setting (:data:`analyses.sweeps.CPU_SETTING`): SN
and BSSN (c = 1.4) for every ``lr_d, lr_g in {1e-4, 2e-4, 5e-4}`` (setting B,
widened upwards where instability is expected; at ``small`` scale the CPU budget
allowed the corners ``{1e-4, 5e-4}`` only) with Adam betas (0.5, 0.999),
n_dis 1, 400 iterations, 2 seeds; and setting C (lr 1e-4, betas (0.5, 0.9),
n_dis 5), 300 generator updates, 2 seeds. (Fewer iterations and seeds than
E1/E2: the CPU budget; stated on the figure.)

Collapse rule (documented, tested on a planted collapse)
-------------------------------------------------------
A run *collapsed* when any of these holds:

1. it diverged (a non-finite loss; the trainer stops it, status ``diverged``);
2. its final generator covers fewer than :data:`MIN_CLASSES` of the 10 digit
   classes: 2,000 samples of its last checkpoint (EMA weights) classified by the
   mnist classifier, a class covered when it gets at least a quarter of its
   uniform share (:func:`gradscope.metrics.classes_covered`);
3. its FID rose: final FID above :data:`FID_RISE` times its best evaluation.

What is judged
--------------
Per sweep, the collapse fraction of SN minus that of BSSN with a 95 %
bootstrap interval (claimed positive: BSSN collapses less), and the final FID
of BSSN over SN paired by (learning rates, seed) (claimed below 1).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analyses.common import AnalysisResult, Check
from analyses.experiments import (
    concat,
    effects_figure,
    runs_table,
    scalar_curves,
)
from analyses.stats import bootstrap_difference, effect_check, paired_log_ratio
from analyses.sweeps import run_sweeps, setting, sweep_dir

CLAIM = "E3"
TITLE = "Stability: collapsed or diverged runs of SN vs BSSN over learning rates and n_dis"
ARMS: tuple[dict[str, Any], ...] = ({"norm": "sn"}, {"norm": "bssn", "scale": 1.4})
LEARNING_RATES = [1e-4, 2e-4, 5e-4]

PARAMS = {
    "tiny": {"iterations": 8, "rates": [5e-4], "seeds": 2, "ndis_iterations": 4, "ndis_seeds": 1,
             "eval_samples": 200},
    "small": {"iterations": 400, "rates": [1e-4, 5e-4], "seeds": 2, "ndis_iterations": 300, "ndis_seeds": 2,
              "eval_samples": 1000},
    "paper": {"iterations": 400_000, "rates": [1e-4, 2e-4], "seeds": 5, "ndis_iterations": 400_000,
              "ndis_seeds": 5, "eval_samples": 10_000},
}


def sweeps(scale: str, seed: int = 0, dataset: str | None = None) -> dict[str, dict[str, Any]]:
    """``lr``: arms x lr_d x lr_g x seeds (setting B's grid, widened to 5e-4); ``ndis5``: setting C (lr 1e-4,
    betas (0.5, 0.9), n_dis 5)."""
    from analyses.common import scale_params

    p = scale_params(scale, PARAMS)
    arms = [dict(a) for a in ARMS]

    def base(iterations: int) -> dict[str, Any]:
        flags = setting(scale, dataset, **{"iterations": iterations, "eval-samples": p["eval_samples"]})
        flags.pop("preset", None)
        if scale != "paper":
            flags.update({"eval-every": max(1, iterations // 2), "record-every": max(1, iterations // 25),
                          "checkpoint-every": iterations, "eval-metrics": "fid"})
        return flags

    return {
        "lr": {"base": {**base(p["iterations"]), "betas": "0.5,0.999"},
               "grid": {"arm": arms, "lr-d": p["rates"], "lr-g": p["rates"],
                        "seed": list(range(seed, seed + p["seeds"]))}},
        "ndis5": {"base": {**base(p["ndis_iterations"]), "n-dis": 5, "lr-d": 1e-4, "lr-g": 1e-4,
                           "betas": "0.5,0.9"},
                  "grid": {"arm": arms, "seed": list(range(seed, seed + p["ndis_seeds"]))}},
    }


MIN_CLASSES = 8
FID_RISE = 1.5
COVERAGE_SAMPLES = 2000
RESULT_TABLES: tuple[str, ...] = ("e3_runs", "e3_quality")
SN_ARM, BSSN_ARM = "sn", "bssn c=1.4"




def collect(scale: str, out: Path, seed: int = 0, *, execute: bool = True,
            dataset: str | None = None) -> dict[str, pd.DataFrame]:
    """Run the sweeps (``execute``); per run: status, final and best FID, classes covered."""
    runs, quality = [], []
    for name, summary in run_sweeps(sweeps(scale, seed, dataset), out, execute=execute).items():
        if not len(summary):
            continue
        table = runs_table(summary, name)
        directory = sweep_dir(out, name)
        table["classes_covered"] = [final_coverage(directory, r.run) if r.status == "done" else np.nan
                                    for r in table.itertuples()]
        runs.append(table)
        quality.append(scalar_curves(table, directory, ("mnist_fid", "inception_fid", "digits_fid", "loss_d")))
    return {"e3_runs": concat(runs), "e3_quality": concat(quality)}


def final_coverage(directory: Path, run: str) -> float:
    """Classes covered by the last checkpoint's generator (EMA when kept); NaN without a checkpoint."""
    import torch

    from gradscope.data import load_dataset
    from gradscope.metrics import class_histogram, classes_covered, get_extractor
    from gradscope.sweep.runner import run_dir_of
    from gradscope.train.checkpoint import find_checkpoint, load_checkpoint
    from gradscope.train.networks import build_networks
    from gradscope.train.rundir import config_of_run

    run_dir = run_dir_of(directory, run)
    config = config_of_run(run_dir)
    if config.dataset not in ("mnist", "digits"):
        return float("nan")
    try:
        payload = load_checkpoint(find_checkpoint(run_dir, None), map_location="cpu")
    except FileNotFoundError:
        return float("nan")
    dataset = load_dataset(config.dataset, image_size=config.image_size)
    with torch.random.fork_rng():
        _, generator = build_networks(config, dataset)
    generator.load_state_dict(payload["G_ema"] if payload.get("G_ema") is not None else payload["G"])
    histogram = class_histogram(generator, get_extractor("auto", dataset_name=config.dataset),
                                n_samples=COVERAGE_SAMPLES, seed=config.seed)
    return float(classes_covered(histogram))


def collapsed(runs: pd.DataFrame) -> pd.Series:
    """The collapse rule of the module docstring, per run (NaN for runs that did not finish)."""
    finished = runs["status"].isin(["done", "diverged"])
    few_classes = runs["classes_covered"] < MIN_CLASSES
    fid_rose = runs.get("final_fid", pd.Series(np.nan, index=runs.index)) > FID_RISE * runs.get(
        "best_fid", pd.Series(np.nan, index=runs.index))
    flag = (runs["status"] == "diverged") | few_classes.fillna(False) | fid_rose.fillna(False)
    return flag.astype(float).where(finished)


def checks_of(runs: pd.DataFrame) -> list[Check]:
    """Per sweep: SN minus BSSN collapse fraction (bootstrap) and BSSN / SN final FID (paired)."""
    checks = []
    runs = runs.assign(collapsed=collapsed(runs))
    for sweep, rows in runs.groupby("sweep", sort=False):
        label = "lr grid (setting B)" if sweep == "lr" else "n_dis 5 (setting C)"
        sn = rows[rows["arm"] == SN_ARM]["collapsed"].dropna().to_numpy()
        bssn = rows[rows["arm"] == BSSN_ARM]["collapsed"].dropna().to_numpy()
        if len(sn) and len(bssn):
            effect = bootstrap_difference(bssn, sn)
            checks.append(effect_check(CLAIM, f"{label}: collapse fraction SN - BSSN (SN {sn.mean():.2f} of "
                                       f"{len(sn)}, BSSN {bssn.mean():.2f} of {len(bssn)})", effect, "positive"))
        keys = [k for k in ("lr-d", "lr-g", "seed") if k in rows]
        wide = rows[rows["status"] == "done"].pivot_table(index=keys, columns="arm", values="final_fid").dropna()
        if {SN_ARM, BSSN_ARM} <= set(wide.columns) and len(wide):
            checks.append(effect_check(CLAIM, f"{label}: final FID BSSN / SN, paired by learning rates and seed",
                                       paired_log_ratio(wide[SN_ARM].to_numpy(), wide[BSSN_ARM].to_numpy()),
                                       "negative"))
    return checks


def conclude(result: AnalysisResult, tables: dict[str, pd.DataFrame]) -> AnalysisResult:
    """Add E3's run table (with the collapse flag), checks and figure to ``result``."""
    runs = tables["e3_runs"].assign(collapsed=lambda t: collapsed(t))
    result.add_table("e3_collapse", runs)
    result.add(*checks_of(tables["e3_runs"]))
    result.add_figure(plot_stability(runs), "e3_stability")
    result.add_figure(effects_figure(result.checks, "E3: effects with 95 % intervals"), "e3_effects")
    return result


def plot_stability(runs: pd.DataFrame):
    """Per arm: mean final FID over the (lr_d, lr_g) grid, collapse counts written in; collapse fractions."""
    from gradscope.plot import style

    grid = runs[runs["sweep"] == "lr"]
    arms = [a for a in (SN_ARM, BSSN_ARM) if a in set(runs["arm"])]
    fig, axes = style.new_figure(1, len(arms) + 1, panel_size=(3.4, 3.0),
                                 title="E3: stability over learning rates and with n_dis 5 (small scale: 400 and 300 "
                                       "generator updates, 2 seeds per cell)")
    fids = grid["final_fid"].to_numpy(dtype=float)
    vmin, vmax = (np.nanmin(fids), np.nanmax(fids)) if np.isfinite(fids).any() else (0, 1)
    image = None
    for i, arm in enumerate(arms):
        ax = axes[0, i]
        rows = grid[grid["arm"] == arm]
        rates_d = sorted(rows["lr-d"].unique()) if len(rows) else []
        rates_g = sorted(rows["lr-g"].unique()) if len(rows) else []
        mean = np.full((len(rates_d), len(rates_g)), np.nan)
        for a, lr_d in enumerate(rates_d):
            for b, lr_g in enumerate(rates_g):
                cell = rows[(rows["lr-d"] == lr_d) & (rows["lr-g"] == lr_g)]
                mean[a, b] = cell["final_fid"].mean()
                ax.text(b, a, f"{int(np.nansum(cell['collapsed']))}/{len(cell)}", ha="center", va="center",
                        fontsize=8, color="white")
        image = ax.imshow(mean, origin="lower", cmap="viridis", vmin=vmin, vmax=vmax)
        ax.set_xticks(range(len(rates_g)), [f"{r:g}" for r in rates_g])
        ax.set_yticks(range(len(rates_d)), [f"{r:g}" for r in rates_d])
        ax.grid(False)
        style.label_axes(ax, "lr of G", "lr of D", f"{arm}: final FID (collapsed/runs)")
    if image is not None:
        fig.colorbar(image, ax=list(axes[0, :len(arms)]), orientation="horizontal", shrink=0.5,
                     label="mean final FID (lower is better)")
    ax = axes[0, len(arms)]
    for j, sweep in enumerate(("lr", "ndis5")):
        for i, arm in enumerate(arms):
            values = runs[(runs["sweep"] == sweep) & (runs["arm"] == arm)]["collapsed"].dropna()
            if len(values):
                ax.bar(j * (len(arms) + 1) + i, values.mean(), color=style.color(i),
                       label=arm if j == 0 else None)
                ax.text(j * (len(arms) + 1) + i, values.mean() + 0.02, f"n={len(values)}", ha="center", fontsize=7)
    ax.set_xticks([(len(arms) - 1) / 2, len(arms) + 1 + (len(arms) - 1) / 2], ["lr grid (B)", "n_dis 5 (C)"])
    ax.set_ylim(0, 1.1)
    style.label_axes(ax, "setting", "collapsed runs (fraction)", "collapse fractions")
    style.figure_legend(fig, ax)
    return fig
