"""E4: one learnable gamma shared by D's layers vs one per layer (WGAN-GP, biases kept).

Claim (THEORY.md, C4)
---------------------
For a fixed product of per-layer Lipschitz constants the gradient bound is
smallest when every layer gets the same share. The authors' experiment: SN
with one learnable scale gamma shared by all of D's layers vs one gamma per
layer (both multiply the normalized weight *and the bias*; WGAN-GP loss,
lambda 10): per-layer gammas drift apart, gradients grow, quality drops.
In a bias-free D the per-layer gammas receive identical gradients (C4's
derivation), so drift can only come from the biases: this experiment keeps
them (the SNDCGAN's layers all have biases).

What runs
---------
The CPU setting (:data:`analyses.sweeps.CPU_SETTING`) with the WGAN-GP loss,
Adam (lr 2e-4, betas (0.5, 0.999)), n_dis 1, 600 iterations and 3 seeds per
method at ``small`` scale (the CPU budget); the recorder logs every layer's gamma.

What is judged (paired by seed)
-------------------------------
1. the spread of the gammas, std over layers of ``log gamma`` at the end,
   per-layer minus shared (0 by construction): claimed positive;
2. ``||grad_x D(x)||`` at the end, per-layer / shared: claimed above 1;
3. final FID, per-layer / shared: claimed above 1 (quality drops).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analyses.common import AnalysisResult, Check
from analyses.experiments import (
    effects_figure,
    layer_curves,
    plot_bands,
    runs_table,
    scalar_curves,
)
from analyses.stats import effect_check, paired_log_ratio, t_effect
from analyses.sweeps import run_sweeps, setting, sweep_dir

CLAIM = "E4"
TITLE = "Same gamma vs per-layer gammas under WGAN-GP, with biases: drift, gradients, quality"
METHODS: tuple[str, ...] = ("sn-same-gamma", "sn-diff-gamma")

PARAMS = {
    "tiny": {"iterations": 8, "seeds": 2, "eval_samples": 200},
    "small": {"iterations": 600, "seeds": 3, "eval_samples": 2000},
    "paper": {"iterations": 400_000, "seeds": 5, "eval_samples": 10_000},
}


def sweeps(scale: str, seed: int = 0, dataset: str | None = None) -> dict[str, dict[str, Any]]:
    """One sweep: ``norm in METHODS x seed`` with the WGAN-GP loss (lambda 10), as in the authors' gamma runs."""
    from analyses.common import scale_params

    p = scale_params(scale, PARAMS)
    iterations = p["iterations"]
    base = setting(scale, dataset, **{"iterations": iterations, "eval-samples": p["eval_samples"],
                                      "loss": "wgan-gp"})
    base.pop("preset", None)
    if scale != "paper":
        base.update({"eval-every": max(1, iterations // 4), "record-every": max(1, iterations // 50),
                     "checkpoint-every": iterations // 2, "eval-metrics": "fid"})
    return {"gammas": {"base": base, "grid": {"norm": list(METHODS),
                                              "seed": list(range(seed, seed + p["seeds"]))}}}


SCALARS: tuple[str, ...] = ("mnist_fid", "inception_fid", "digits_fid", "loss_d", "slope_real_mean")
RESULT_TABLES: tuple[str, ...] = ("e4_runs", "e4_gammas", "e4_quality")
TAIL = 0.2




def collect(scale: str, out: Path, seed: int = 0, *, execute: bool = True,
            dataset: str | None = None) -> dict[str, pd.DataFrame]:
    """Run the sweep (``execute``) and read the gammas and scalars of every run."""
    summary = run_sweeps(sweeps(scale, seed, dataset), out, execute=execute)["gammas"]
    runs = runs_table(summary, "gammas")
    directory = sweep_dir(out, "gammas")
    return {"e4_runs": runs, "e4_gammas": layer_curves(runs, directory, ("gamma", "grad_out_norm")),
            "e4_quality": scalar_curves(runs, directory, SCALARS)}


def per_run(runs: pd.DataFrame, gammas: pd.DataFrame, quality: pd.DataFrame) -> pd.DataFrame:
    """Per finished run: gamma spread at the end, ``||grad_x D||`` over the tail, final FID."""
    rows = []
    for run in runs[runs["status"] == "done"].itertuples():
        g = gammas[(gammas["run"] == run.run) & (gammas["stat"] == "gamma")]
        q = quality[quality["run"] == run.run]
        steps = np.sort(q["step"].unique()) if len(q) else np.array([0])
        start = steps[int(math.floor((1 - TAIL) * (len(steps) - 1)))]
        last = g[g["step"] == g["step"].max()] if len(g) else g
        slope = q[(q["name"] == "slope_real_mean") & (q["step"] >= start)]["value"]
        fid = q[q["name"].str.endswith("_fid")].sort_values("step")["value"]
        rows.append({"norm": run.norm, "seed": int(run.seed),
                     "gamma_spread": float(np.log(last["value"]).std(ddof=0)) if len(last) else np.nan,
                     "slope_end": float(slope.mean()) if len(slope) else np.nan,
                     "final_fid": float(fid.iloc[-1]) if len(fid) else np.nan})
    return pd.DataFrame(rows, columns=["norm", "seed", "gamma_spread", "slope_end", "final_fid"])


def checks_of(table: pd.DataFrame) -> list[Check]:
    """The three paired comparisons of the module docstring."""
    same, diff = METHODS
    checks = []
    for column, label, kind, direction in (
            ("gamma_spread", "std over layers of log gamma at the end, per-layer minus shared", "difference",
             "positive"),
            ("slope_end", "||grad_x D(x)|| at the end, per-layer / shared gammas", "ratio", "positive"),
            ("final_fid", "final FID, per-layer / shared gammas (quality drops)", "ratio", "positive")):
        wide = table.pivot_table(index="seed", columns="norm", values=column).dropna()
        if {same, diff} <= set(wide.columns) and len(wide):
            effect = (t_effect(wide[diff].to_numpy() - wide[same].to_numpy()) if kind == "difference"
                      else paired_log_ratio(wide[same].to_numpy(), wide[diff].to_numpy()))
            checks.append(effect_check(CLAIM, label, effect, direction))
    return checks


def conclude(result: AnalysisResult, tables: dict[str, pd.DataFrame]) -> AnalysisResult:
    """Add E4's per-run table, checks and figure to ``result``."""
    table = per_run(tables["e4_runs"], tables["e4_gammas"], tables["e4_quality"])
    result.add_table("e4_per_run", table)
    result.add(*checks_of(table))
    result.add_figure(plot_gammas(tables["e4_runs"], tables["e4_gammas"], tables["e4_quality"]), "e4_gammas")
    result.add_figure(effects_figure(result.checks, "E4: effects with 95 % intervals"), "e4_effects")
    return result


def plot_gammas(runs: pd.DataFrame, gammas: pd.DataFrame, quality: pd.DataFrame):
    """Gamma spread over training, each layer's gamma (per-layer runs, seed 0), ||grad_x D||, FID."""
    from gradscope.plot import style

    fig, axes = style.new_figure(1, 4, panel_size=(3.3, 2.8),
                                 title="E4: shared vs per-layer gamma (WGAN-GP, biases kept), MNIST 32x32, "
                                       "mean over seeds with 95 % bands")
    g = gammas[gammas["stat"] == "gamma"].merge(runs[["run", "norm"]], on="run")
    spread = g.groupby(["norm", "seed", "step"])["value"].apply(lambda v: float(np.log(v).std(ddof=0)))
    spread = spread.reset_index()
    plot_bands(axes[0, 0], spread, "step", "value", "norm", log=False, order=list(METHODS))
    style.label_axes(axes[0, 0], "D update", "std over layers of log gamma", "gamma spread")
    one = g[(g["norm"] == METHODS[1]) & (g["seed"] == g["seed"].min())]
    for i, (layer, rows) in enumerate(one.groupby("layer_index")):
        axes[0, 1].plot(rows["step"], rows["value"], color=style.color(i % 8), linewidth=1,
                        label=str(rows["layer"].iloc[0]))
    style.label_axes(axes[0, 1], "D update", "gamma", "per-layer gammas (one seed)")
    style.legend(axes[0, 1], ncol=2)
    q = quality.merge(runs[["run", "norm"]], on="run")
    plot_bands(axes[0, 2], q[q["name"] == "slope_real_mean"], "step", "value", "norm", log=True,
               order=list(METHODS))
    style.label_axes(axes[0, 2], "D update", "||grad_x D(x)||, real images", "input gradient")
    plot_bands(axes[0, 3], q[q["name"].str.endswith("_fid")], "step", "value", "norm", log=True,
               order=list(METHODS), marker="o")
    style.label_axes(axes[0, 3], "generator update", "FID (lower is better)", "sample quality")
    style.figure_legend(fig, axes[0, 0])
    return fig
