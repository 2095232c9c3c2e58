"""E2: sample quality against the scale c, SSN vs BSSN (the authors' setting A, on MNIST at 32x32 on CPU).

What runs
---------
The authors' setting A asks for IS / FID against the scale c for SN-family
normalizations with and without the bidirectional divisor. Here: the SNDCGAN
on the 5,000 MNIST digits at 32x32 (:data:`analyses.sweeps.CPU_SETTING`),
1,000 iterations of Adam (lr 2e-4, betas (0.5, 0.999), n_dis 1, hinge),
``norm in {ssn, bssn} x c in {1.0, 1.2, 1.4, 1.6} x 5 seeds``. SSN at c = 1
is popular SN and BSSN at c = 1 is BSN. Sample quality is the mnist-FID /
mnist-IS of 2,000 samples of G's moving average under a classifier trained on
the same 5,000 digits (97.9 % held-out accuracy on its 20 % split;
:mod:`gradscope.metrics.digits`), against the statistics of all 5,000. The
*real-vs-real floor* (2,000 real digits scored the same way) is reported: a
perfect generator scores it, not 0.

What is judged (:mod:`analyses.stats`)
------------------------------------
A seed shares G's and D's initial raw weights, data order and latents
between SSN and BSSN at the same c, so each (c, seed) is a pair:

1. per c: final FID, BSSN / SSN (paired log ratio): claimed below 1;
2. pooled over c (every pair): the same, the headline number;
3. per c and pooled: final IS, BSSN / SSN: claimed above 1;
4. per method: final FID at the largest c over c = 1 (paired by seed): claimed below 1
   (the scale c > 1 is what SSN and BSSN add to SN and BSN).

The ``schedule`` sweep repeats c = 1.4 with the authors' power iteration
(``--power-schedule authors``: cold u, one unstored step per forward with
gradients through it, u advanced after each D update) instead of torch's;
reported: FID authors / torch per method (paired by seed) and BSSN / SSN
under the authors' schedule, to say whether the choice changes the outcome.

Verdicts follow from the 95 % intervals; none is must-hold.
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
    plot_bands,
    real_floor,
    runs_table,
    scalar_curves,
)
from analyses.stats import effect_check, paired_log_ratio
from analyses.sweeps import run_sweeps, setting, sweep_dir

CLAIM = "E2"
TITLE = "Sample quality vs the scale c: SSN vs BSSN (setting A analogue)"
METHODS: tuple[str, ...] = ("ssn", "bssn")
#: The authors' CIFAR-10 grid of c (0.7 .. 4.0).
PAPER_SCALES = [0.7, 0.8, 0.9, 1.0] + [round(1.2 + 0.2 * i, 1) for i in range(15)]

#: The scale at which the authors' power-iteration schedule is compared with torch's (``schedule`` sweep).
SCHEDULE_SCALE = 1.4

PARAMS = {
    "tiny": {"iterations": 8, "scales": [1.4], "seeds": 2, "eval_samples": 200, "schedule_seeds": 0},
    # The schedule comparison: 3 seeds at small scale, what the CPU budget left.
    "small": {"iterations": 1000, "scales": [1.0, 1.2, 1.4, 1.6], "seeds": 5, "eval_samples": 2000,
              "schedule_seeds": 3},
    "paper": {"iterations": 400_000, "scales": PAPER_SCALES, "seeds": 5, "eval_samples": 10_000,
              "schedule_seeds": 5},
}


def sweeps(scale: str, seed: int = 0, dataset: str | None = None) -> dict[str, dict[str, Any]]:
    """One sweep: ``norm in METHODS x c x seed``; SSN at c = 1 is SN and BSSN at c = 1 is BSN."""
    from analyses.common import scale_params

    p = scale_params(scale, PARAMS)
    iterations = p["iterations"]
    base = setting(scale, dataset, **{"iterations": iterations, "eval-samples": p["eval_samples"]})
    if scale != "paper":
        base.update({"eval-every": max(1, iterations // 4), "record-every": max(1, iterations // 50),
                     "checkpoint-every": iterations // 2, "eval-metrics": "fid,is"})
    seeds = list(range(seed, seed + p["seeds"]))
    specs = {"quality": {"base": base, "grid": {"norm": list(METHODS), "scale": p["scales"], "seed": seeds}}}
    if p["schedule_seeds"]:
        specs["schedule"] = {"base": {**base, "power-schedule": "authors", "scale": SCHEDULE_SCALE},
                             "grid": {"norm": list(METHODS), "seed": seeds[:p["schedule_seeds"]]}}
    return specs


#: Scalars kept per run (downsampled): quality and D's loss.
SCALARS: tuple[str, ...] = ("mnist_fid", "mnist_is_mean", "inception_fid", "inception_is_mean", "digits_fid",
                            "digits_is_mean", "loss_d")
RESULT_TABLES: tuple[str, ...] = ("e2_runs", "e2_quality", "e2_floor")




def collect(scale: str, out: Path, seed: int = 0, *, execute: bool = True,
            dataset: str | None = None) -> dict[str, pd.DataFrame]:
    """Run the sweep (``execute``) and read its compact tables (:data:`RESULT_TABLES`)."""
    from analyses.common import scale_params

    specs = sweeps(scale, seed, dataset)
    summaries = {k: v for k, v in run_sweeps(specs, out, execute=execute).items() if len(v)}
    runs = concat([runs_table(v, k) for k, v in summaries.items()])
    quality = concat([scalar_curves(runs[runs["sweep"] == k], sweep_dir(out, k), SCALARS) for k in summaries])
    base = specs["quality"]["base"]
    floor = pd.DataFrame(columns=["draw", "n_samples", "metric", "value"])
    if base.get("dataset") in ("mnist", "digits"):
        floor = real_floor(base["dataset"], scale_params(scale, PARAMS)["eval_samples"])
    return {"e2_runs": runs, "e2_quality": quality, "e2_floor": floor}


def final_quality(runs: pd.DataFrame, quality: pd.DataFrame) -> pd.DataFrame:
    """One row per finished run: ``norm, scale, seed, fid, is`` at its last evaluation."""
    present = set(quality["name"].str.split("_").str[0])
    family = next((f for f in ("inception", "mnist", "digits") if f in present), "mnist")
    rows = []
    for run in runs[runs["status"] == "done"].itertuples():
        mine = quality[(quality["run"] == run.run) & (quality["sweep"] == run.sweep)]
        scale = float(run.scale) if "scale" in runs and pd.notna(run.scale) else SCHEDULE_SCALE
        row = {"sweep": run.sweep, "norm": run.norm, "scale": scale, "seed": int(run.seed)}
        for metric, name in (("fid", f"{family}_fid"), ("is", f"{family}_is_mean")):
            values = mine[mine["name"] == name].sort_values("step")
            row[metric] = float(values["value"].iloc[-1]) if len(values) else np.nan
        rows.append(row)
    return pd.DataFrame(rows, columns=["sweep", "norm", "scale", "seed", "fid", "is"])


def checks_of(final: pd.DataFrame) -> list[Check]:
    """Per c and pooled: BSSN / SSN final FID (claimed < 1) and IS (claimed > 1), paired by (c, seed)."""
    checks = schedule_checks(final)
    final = final[final["sweep"] == "quality"]
    for metric, direction, what in (("fid", "negative", "final FID"), ("is", "positive", "final IS")):
        wide = final.pivot_table(index=["scale", "seed"], columns="norm", values=metric).dropna()
        if not set(METHODS) <= set(wide.columns) or not len(wide):
            continue
        for c, rows in wide.groupby(level="scale"):
            checks.append(effect_check(CLAIM, f"{what} BSSN / SSN at c = {c:g}",
                                       paired_log_ratio(rows["ssn"].to_numpy(), rows["bssn"].to_numpy()), direction))
        checks.append(effect_check(CLAIM, f"{what} BSSN / SSN, all c pooled ({len(wide)} pairs)",
                                   paired_log_ratio(wide["ssn"].to_numpy(), wide["bssn"].to_numpy()), direction))
    checks.extend(scale_checks(final))
    return checks


def scale_checks(final: pd.DataFrame) -> list[Check]:
    """Per method: final FID at the largest c over c = 1 (paired by seed): does scaling by c > 1 help?"""
    checks = []
    for norm in METHODS:
        wide = final[final["norm"] == norm].pivot_table(index="seed", columns="scale", values="fid")
        if 1.0 not in wide.columns or wide.columns.max() <= 1.0:
            continue
        top = float(wide.columns.max())
        pair = wide[[1.0, top]].dropna()
        if len(pair):
            checks.append(effect_check(CLAIM, f"final FID of {norm}, c = {top:g} / c = 1 (scaling helps)",
                                       paired_log_ratio(pair[1.0].to_numpy(), pair[top].to_numpy()), "negative"))
    return checks


def schedule_checks(final: pd.DataFrame) -> list[Check]:
    """Authors' vs torch's power iteration at :data:`SCHEDULE_SCALE`: FID ratio per method, BSSN / SSN under each."""
    authors = final[final["sweep"] == "schedule"]
    if not len(authors):
        return []
    torch_runs = final[(final["sweep"] == "quality") & (final["scale"] == SCHEDULE_SCALE)]
    checks = []
    for norm in METHODS:
        pair = torch_runs[torch_runs["norm"] == norm].merge(authors[authors["norm"] == norm], on="seed")
        if len(pair):
            checks.append(effect_check(CLAIM, f"final FID, authors' / torch's power iteration, {norm} c = "
                                       f"{SCHEDULE_SCALE:g}", paired_log_ratio(pair["fid_x"].to_numpy(),
                                                                               pair["fid_y"].to_numpy()),
                                       "negative", note="'holds': the authors' schedule scores better"))
    wide = authors.pivot_table(index="seed", columns="norm", values="fid").dropna()
    if set(METHODS) <= set(wide.columns) and len(wide):
        checks.append(effect_check(CLAIM, f"final FID BSSN / SSN at c = {SCHEDULE_SCALE:g}, authors' power iteration",
                                   paired_log_ratio(wide["ssn"].to_numpy(), wide["bssn"].to_numpy()), "negative"))
    return checks


def conclude(result: AnalysisResult, tables: dict[str, pd.DataFrame]) -> AnalysisResult:
    """Add E2's tables, checks and figure to ``result`` from its compact tables."""
    final = final_quality(tables["e2_runs"], tables["e2_quality"])
    result.add_table("e2_final", final)
    result.add(*checks_of(final))
    floor = tables["e2_floor"]
    main = final[final["sweep"] == "quality"]
    runs = tables["e2_runs"][tables["e2_runs"]["sweep"] == "quality"]
    result.add_figure(plot_quality(main, tables["e2_quality"][tables["e2_quality"]["sweep"] == "quality"], runs,
                                   floor), "e2_quality_vs_c")
    if len(floor):
        fid = floor[floor["metric"].str.endswith("_fid")]["value"]
        result.notes.append(f"real-vs-real floor on {int(floor['n_samples'].iloc[0])} samples: FID "
                            f"{fid.mean():.3g} (range {fid.min():.3g}-{fid.max():.3g} over {len(fid)} draws)")
    result.add_figure(effects_figure(result.checks, "E2: effects with 95 % intervals"), "e2_effects")
    return result


def plot_quality(final: pd.DataFrame, quality: pd.DataFrame, runs: pd.DataFrame, floor: pd.DataFrame):
    """FID vs c and IS vs c (mean over seeds, 95 % bands), and FID over training per method."""
    from gradscope.plot import style

    fig, axes = style.new_figure(1, 3, panel_size=(3.6, 2.8),
                                 title="E2: SSN vs BSSN across the scale c, MNIST 32x32 (mean over seeds, 95 % bands)")
    table = final.assign(method=final["norm"].map({"ssn": "SSN (c=1: SN)", "bssn": "BSSN (c=1: BSN)"}))
    order = ["SSN (c=1: SN)", "BSSN (c=1: BSN)"]
    plot_bands(axes[0, 0], table, "scale", "fid", "method", log=True, order=order, marker="o")
    plot_bands(axes[0, 1], table, "scale", "is", "method", log=False, order=order, marker="o")
    for ax, suffix in ((axes[0, 0], "_fid"), (axes[0, 1], "_is_mean")):
        values = floor[floor["metric"].str.endswith(suffix)]["value"] if len(floor) else []
        if len(values):
            style.theory_line(ax, float(np.mean(values)), f"real-vs-real floor ({int(floor['n_samples'].iloc[0])})")
    style.label_axes(axes[0, 0], "scale c", "final FID (lower is better)", "FID vs c")
    style.label_axes(axes[0, 1], "scale c", "final IS (higher is better, max 10)", "IS vs c")
    fids = quality[quality["name"].str.endswith("_fid")].merge(runs[["run", "norm"]], on="run")
    fids = fids.assign(method=fids["norm"].map({"ssn": order[0], "bssn": order[1]}))
    plot_bands(axes[0, 2], fids, "step", "value", "method", log=True, order=order, marker=".")
    style.label_axes(axes[0, 2], "generator update", "FID (lower is better)", "FID over training, all c")
    style.figure_legend(fig, axes[0, 0])
    return fig
