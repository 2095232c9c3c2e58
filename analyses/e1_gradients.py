"""E1: per-layer gradients through training without SN, with SN, with strict SN and with BSSN.

What runs
---------
The SNDCGAN on the 5,000 MNIST digits at 32x32 (the reference geometry, an
eighth of its channels on CPU; :data:`analyses.sweeps.CPU_SETTING`), for
2,000 iterations, five seeds per arm, D's arms :data:`ARMS`: no normalization
with the reference DCGAN init (std 0.02) and with LeCun init, SN, strict
(operator-norm) SN, and BSSN with c = 1.4 (Kaiming's gain for leaky ReLU 0.1).
Twice: with the reference Adam (lr 2e-4, betas (0.5, 0.999)) and with plain
SGD (lr :data:`SGD_LR`; Adam rescales every weight's step, which hides how
large the gradients are) over :data:`SGD_ARMS`. The seed fixes D's and G's
initial weights, the data order and the latents, so arms of one seed are
*paired*. The recorder logs every layer's back-propagated gradient norm
``||dL/dh_t||`` (``grad_out_norm``), weight-gradient norm, ``fan_in Var(W_eff)``
(the LeCun ratio) and the normalization's sigma every 20 iterations.

What is judged (paired over seeds, :mod:`analyses.stats`)
-------------------------------------------------------
1. *Exploding without SN*: the growth of the first layer's back-propagated
   gradient, last fifth of training over the first record,
   ``log(g_end / g_start)``, no-SN (DCGAN init) minus SN: claimed positive.
2. *SN keeps LeCun's scale, un-normalized weights drift*: the mean over
   layers of ``|log(lecun_ratio_end / lecun_ratio_start)|``, no-SN (LeCun init)
   minus SN: claimed positive (with Adam and with SGD).
3. *Strict SN vanishes*: the first layer's back-propagated gradient norm in
   the last fifth of training, strict over SN: claimed below 1.
4. *BSSN vs SN* (C7 through training): the same first-layer gradient, BSSN
   over SN: claimed above 1 (BSSN's c > 1 counters the vanishing).
5. *C1's product of operator norms* under SN, from the trained weights:
   ``prod_t sigma_op(W_eff,t)`` splits exactly into ``prod sigma_op/sigma_fwd``
   (the conv geometry, C6) times ``prod sigma_fwd/sigma_estimate`` (the power
   iteration's lag); each factor reported with its interval over seeds.
6. *C5 over training, with seeds*: SN's ``lecun_ratio`` over the prediction
   ``(1 + sqrt(m/n))^-2`` at the end, mean over layers, with its interval.

A verdict is ``holds`` / ``violated`` only when the 95 % interval excludes the
null; nothing here is must-hold (these are empirical claims, not bounds).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analyses.common import AnalysisResult, Check
from analyses.experiments import (
    concat,
    effects_figure,
    layer_curves,
    plot_bands,
    runs_table,
    scalar_curves,
)
from analyses.stats import effect_check, equivalence_check, paired_log_ratio, t_effect
from analyses.sweeps import run_sweeps, setting, sweep_dir

CLAIM = "E1"
TITLE = "Gradients through training: no SN (DCGAN / LeCun init) vs SN vs strict SN vs BSSN"
#: The arms: D's normalization and initialization (``sn`` and friends keep the reference DCGAN init).
ARMS: tuple[dict[str, Any], ...] = (
    {"norm": "none", "init": "dcgan"}, {"norm": "none", "init": "lecun"}, {"norm": "sn"}, {"norm": "strict"},
    {"norm": "bssn", "scale": 1.4},
)
#: Plain SGD drops the DCGAN-init arm (its gradients are the LeCun arm's times a constant at step 0) and BSSN.
SGD_ARMS: tuple[dict[str, Any], ...] = ({"norm": "none", "init": "lecun"}, {"norm": "sn"}, {"norm": "strict"})
#: SGD learning rate of both networks: plain SGD needs a rate ~100x Adam's to move the weights as far.
SGD_LR = 0.02

PARAMS = {
    "tiny": {"iterations": 8, "record_every": 2, "seeds": 2, "arms": (ARMS[1], ARMS[2], ARMS[3]), "sgd_seeds": 0},
    "small": {"iterations": 2000, "record_every": 20, "seeds": 5, "arms": ARMS, "sgd_seeds": 5},
    "paper": {"iterations": 100_000, "record_every": 100, "seeds": 5, "arms": ARMS, "sgd_seeds": 5},
}


def sweeps(scale: str, seed: int = 0, dataset: str | None = None) -> dict[str, dict[str, Any]]:
    """The runs of E1 at ``scale``: an Adam sweep over :data:`ARMS` (and an SGD one over :data:`SGD_ARMS`)."""
    from analyses.common import scale_params

    p = scale_params(scale, PARAMS)
    seeds = list(range(seed, seed + p["seeds"]))
    iterations = p["iterations"]
    base = setting(scale, dataset, **{"iterations": iterations, "record-every": p["record_every"],
                             "eval-every": iterations // 2, "checkpoint-every": iterations // 2})
    if scale == "paper":
        base.pop("preset")
        base.update({"lr-d": 1e-4, "lr-g": 1e-4, "betas": "0.5,0.999"})
    specs = {"adam": {"base": base, "grid": {"arm": [dict(a) for a in p["arms"]], "seed": seeds}}}
    if p["sgd_seeds"]:
        specs["sgd"] = {"base": {**base, "optimizer": "sgd", "lr-d": SGD_LR, "lr-g": SGD_LR},
                        "grid": {"arm": [dict(a) for a in SGD_ARMS],
                                 "seed": list(range(seed, seed + p["sgd_seeds"]))}}
    return specs


#: The recorded statistics kept in the compact curves.
CURVE_STATS: tuple[str, ...] = ("grad_out_norm", "grad_w_raw_norm", "grad_w_eff_norm", "lecun_ratio", "sigma")
#: The recorded scalars kept: sample quality, D's loss and the per-sample ||grad_x D(x)|| on real / fake images.
SCALARS: tuple[str, ...] = ("mnist_fid", "digits_fid", "inception_fid", "loss_d", "slope_real_mean",
                            "slope_fake_mean")
#: The compact tables committed under ``results/`` and read back by ``--from-results``.
RESULT_TABLES: tuple[str, ...] = ("e1_runs", "e1_curves", "e1_quality", "e1_operator_norms", "e1_layers")
#: Fraction of the recorded steps at the end of training whose mean is the "end" of a run.
TAIL = 0.2
NO_SN_DCGAN, NO_SN_LECUN, SN, STRICT = "none, dcgan init", "none, lecun init", "sn", "strict"
ORDER = (NO_SN_DCGAN, NO_SN_LECUN, SN, STRICT, "bssn c=1.4")



def collect(scale: str, out: Path, seed: int = 0, *, execute: bool = True,
            dataset: str | None = None) -> dict[str, pd.DataFrame]:
    """Run the sweeps (``execute``) and read their compact tables (:data:`RESULT_TABLES`)."""
    summaries = {k: v for k, v in run_sweeps(sweeps(scale, seed, dataset), out, execute=execute).items() if len(v)}
    runs, curves, quality, norms = [], [], [], []
    layers = pd.DataFrame(columns=["layer", "layer_index", "weight_shape", "fan_in", "lecun_prediction"])
    from gradscope.sweep.runner import run_dir_of

    for name, summary in summaries.items():
        table = runs_table(summary, name)
        directory = sweep_dir(out, name)
        done = table[table["status"] == "done"]
        if len(done) and not len(layers):
            layers = layer_table(run_dir_of(directory, done["run"].iloc[0]))
        runs.append(table)
        curves.append(layer_curves(table, directory, CURVE_STATS))
        quality.append(scalar_curves(table, directory, SCALARS))
        norms.append(operator_norm_table(table[table["norm"] == "sn"], directory))
    return {"e1_runs": concat(runs), "e1_curves": concat(curves),
            "e1_quality": concat(quality),
            "e1_operator_norms": concat(norms), "e1_layers": layers}


def operator_norm_table(runs: pd.DataFrame, directory: Path) -> pd.DataFrame:
    """Per SN run and D layer, from the last checkpoint: ``sigma_op``, ``sigma_fwd`` of ``W_eff`` (exact)."""
    import torch

    from analyses.training import checkpoint_discriminators
    from gradscope.linalg import layer_sigmas, weight_layers
    from gradscope.sweep.runner import run_dir_of

    rows = []
    for row in runs.itertuples():
        run_dir = run_dir_of(directory, row.run)
        if row.status != "done":
            continue
        step, D = checkpoint_discriminators(run_dir)[-1]
        example = torch.zeros(1, *D.input_shape) if hasattr(D, "input_shape") else None
        for layer in weight_layers(D, example):
            sig = layer_sigmas(layer, tol=1e-6)
            rows.append({"sweep": row.sweep, "arm": row.arm, "seed": row.seed, "step": step, "layer": layer.name,
                         "layer_index": layer.index, "sigma_op": sig["sigma_op"], "sigma_fwd": sig["sigma_fwd"]})
    return pd.DataFrame(rows, columns=["sweep", "arm", "seed", "step", "layer", "layer_index", "sigma_op",
                                       "sigma_fwd"])



# ----------------------------------------------------------------------------- per-run quantities

def per_run(curves: pd.DataFrame, scalars: pd.DataFrame) -> pd.DataFrame:
    """One row per run: ``||grad_x D(x)||`` at the start and end, depth profile, LeCun drift, saturation.

    - ``slope_start`` / ``slope_end``: the mean per-sample ``||grad_x D(x)||`` on real
      images (C1's quantity, bounded by ``prod sigma_op``) at the first record and
      over the last :data:`TAIL` of training; ``slope_growth`` is ``log(end / start)``.
    - ``depth_ratio``: conv1's over the last layer's ``||dL/dh||``, geometric mean
      over the tail records where both are non-zero (a hinge loss whose margins are
      all met has an exactly zero gradient): below 1 the gradient shrinks towards the input.
    - ``lecun_drift``: mean over layers of ``|log(lecun_ratio_end / lecun_ratio_start)|``.
    - ``saturated``: fraction of D's recorded updates whose loss gradient is exactly 0.
    """
    rows = []
    slopes = scalars[scalars["name"] == "slope_real_mean"]
    for (sweep, arm, seed), run in curves.groupby(["sweep", "arm", "seed"], sort=False):
        steps = np.sort(run["step"].unique())
        tail = steps[int(math.floor((1 - TAIL) * (len(steps) - 1))):]
        grad = run[run["stat"] == "grad_out_norm"].pivot_table(index="step", columns="layer_index", values="value")
        first, last = grad.columns.min(), grad.columns.max()
        both = grad.loc[grad.index.isin(tail)]
        both = both[(both[first] > 0) & (both[last] > 0)]
        lecun = run[run["stat"] == "lecun_ratio"].pivot_table(index="step", columns="layer_index", values="value")
        slope = slopes[(slopes["sweep"] == sweep) & (slopes["arm"] == arm) & (slopes["seed"] == seed)]
        slope = slope.set_index("step")["value"].sort_index()
        slope_tail = slope[slope.index >= tail[0]]
        with np.errstate(divide="ignore", invalid="ignore"):
            drift = float(np.nanmean(np.abs(np.log(lecun.loc[tail].mean() / lecun.loc[steps[0]]))))
            depth = float(np.exp(np.log(both[first] / both[last]).mean())) if len(both) else float("nan")
        rows.append({"sweep": sweep, "arm": arm, "seed": seed,
                     "slope_start": float(slope.iloc[0]) if len(slope) else float("nan"),
                     "slope_end": _finite_mean(slope_tail), "depth_ratio": depth, "lecun_drift": drift,
                     "saturated": float((grad[last] == 0).mean())})
    table = pd.DataFrame(rows)
    if len(table):
        with np.errstate(divide="ignore", invalid="ignore"):
            table["slope_growth"] = np.log(table["slope_end"] / table["slope_start"])
    return table


def _finite_mean(values: pd.Series) -> float:
    v = values.to_numpy(dtype=float)
    v = v[np.isfinite(v)]
    return float(v.mean()) if len(v) else float("nan")


def _paired(table: pd.DataFrame, sweep: str, column: str, reference: str,
            treated: str) -> tuple[np.ndarray, np.ndarray]:
    wide = table[table["sweep"] == sweep].pivot_table(index="seed", columns="arm", values=column)
    if reference not in wide or treated not in wide:
        return np.array([]), np.array([])
    wide = wide[[reference, treated]].dropna()
    return wide[reference].to_numpy(), wide[treated].to_numpy()


def checks_of(runs: pd.DataFrame, summary: pd.DataFrame, norms: pd.DataFrame, curves: pd.DataFrame,
              layers: pd.DataFrame) -> list[Check]:
    """Every E1 verdict (see the module docstring), one :class:`Check` each."""
    checks = []
    for sweep in dict.fromkeys(runs["sweep"]):
        opt = "Adam" if sweep == "adam" else "SGD"

        def paired(column, reference, treated):
            return _paired(runs, sweep, column, reference, treated)

        # No SN minus SN, per-seed differences claimed positive (in the order the checks are reported).
        differences = [("slope_growth", reference, "growth of ||grad_x D(x)|| over training, log(end/start), "
                        f"{reference} minus SN (exploding without SN)") for reference in (NO_SN_DCGAN, NO_SN_LECUN)]
        differences.append(("lecun_drift", NO_SN_LECUN, "drift of fan_in Var(W_eff), mean |log(end/start)| over "
                            "layers, no SN (LeCun init) minus SN"))
        differences += [("saturated", reference, "fraction of D updates with a zero loss gradient (hinge "
                         f"saturated), {reference} minus SN") for reference in (NO_SN_DCGAN, NO_SN_LECUN)]
        for column, reference, what in differences:
            a, b = paired(column, SN, reference)
            if len(a):
                checks.append(effect_check(CLAIM, f"{opt}: {what}", t_effect(b - a), "positive"))
        a, b = paired("slope_end", SN, STRICT)
        if len(a):
            checks.append(effect_check(CLAIM, f"{opt}: ||grad_x D(x)|| at the end, strict SN / SN (vanishing)",
                                       paired_log_ratio(a, b), "negative"))
        a, b = paired("depth_ratio", SN, STRICT)
        if len(a):
            checks.append(effect_check(CLAIM, f"{opt}: conv1 / last layer ||dL/dh||, strict SN / SN (vanishing "
                                       "towards the input)", paired_log_ratio(a, b), "negative"))
        for arm in [a for a in runs[runs["sweep"] == sweep]["arm"].unique() if a.startswith("bssn")]:
            a, b = paired("slope_end", SN, arm)
            if len(a):
                checks.append(effect_check(CLAIM, f"{opt}: ||grad_x D(x)|| at the end, {arm} / SN",
                                           paired_log_ratio(a, b), "positive"))
        diverged = summary[(summary["sweep"] == sweep) & (summary["status"] == "diverged")]
        if len(diverged):
            names = ", ".join(diverged["arm"] + " s" + diverged["seed"].astype(str))
            checks.append(Check(CLAIM, f"{opt}: runs that diverged (non-finite loss)", float(len(diverged)), 0.0,
                                "inconclusive", False, ">=", names))
    checks.extend(operator_norm_checks(norms))
    checks.extend(lecun_checks(curves, layers))
    return checks


def operator_norm_checks(norms: pd.DataFrame) -> list[Check]:
    """C1's ``prod sigma_op`` under SN after training and its two factors, each with its interval over seeds."""
    if not len(norms):
        return []
    checks = []
    for sweep, rows in norms.groupby("sweep", sort=False):
        opt = "Adam" if sweep == "adam" else "SGD"
        per_seed = rows.groupby("seed").apply(lambda r: pd.Series({
            "geometry": np.log(r["sigma_op"] / r["sigma_fwd"]).sum(),
            "estimate": np.log(r["sigma_fwd"]).sum(), "total": np.log(r["sigma_op"]).sum()}), include_groups=False)
        for column, what in (("total", "prod_t sigma_op(W_eff) (the Lipschitz bound of C1)"),
                             ("geometry", "prod sigma_op/sigma_fwd (conv geometry, C6)"),
                             ("estimate", "prod sigma_fwd(W)/sigma_estimate (power-iteration lag)")):
            effect = t_effect(per_seed[column].to_numpy(), paired=False, log=True)
            checks.append(effect_check(CLAIM, f"{opt}, SN after training: {what}", effect, "positive",
                                       note="the three products multiply exactly"))
    return checks


#: C5's prediction is judged equal to the measurement within this factor (on the 95 % interval).
LECUN_MARGIN = 1.25


def layer_table(run_dir: Path) -> pd.DataFrame:
    """D's layers of one run: ``layer, layer_index, weight_shape, fan_in, lecun_prediction`` (C5's (1+sqrt(m/n))^-2)."""
    from gradscope.plot.quantities import lecun_prediction
    from gradscope.record import load_run

    info = load_run(run_dir).architecture["D"]
    return pd.DataFrame([{"layer": i["name"], "layer_index": i["layer_index"],
                          "weight_shape": "x".join(str(d) for d in i["weight_shape"]), "fan_in": i["fan_in"],
                          "lecun_prediction": lecun_prediction(i["weight_shape"], i["fan_in"],
                                                               "Transpose" in i["type"])} for i in info])


def lecun_checks(curves: pd.DataFrame, layers: pd.DataFrame) -> list[Check]:
    """C5 with seeds: SN's LeCun ratio over its prediction at the end, geometric mean over layers, vs 1."""
    if not len(layers):
        return []
    prediction = layers.set_index("layer")["lecun_prediction"]
    checks = []
    end = curves[(curves["arm"] == SN) & (curves["stat"] == "lecun_ratio")]
    for sweep, rows in end.groupby("sweep", sort=False):
        last = rows[rows["step"] == rows["step"].max()]
        logs = np.log(last["value"].to_numpy() / last["layer"].map(prediction).to_numpy())
        ratios = last.assign(rel=logs).groupby("seed")["rel"].mean().to_numpy()
        opt = "Adam" if sweep == "adam" else "SGD"
        checks.append(equivalence_check(CLAIM, f"{opt}, SN at the end: fan_in Var(W_eff) / (1+sqrt(m/n))^-2, "
                                        "geometric mean over layers (C5 over training)",
                                        t_effect(ratios, paired=False, log=True), LECUN_MARGIN))
    return checks


# ----------------------------------------------------------------------------- verdicts and figures

def conclude(result: AnalysisResult, tables: dict[str, pd.DataFrame]) -> AnalysisResult:
    """Add E1's tables, checks and figures to ``result`` from its compact tables."""
    runs, curves = tables["e1_runs"], tables["e1_curves"]
    quantities = per_run(curves, tables["e1_quality"])
    result.add_table("e1_per_run", quantities)
    result.add(*checks_of(quantities, runs, tables["e1_operator_norms"], curves, tables["e1_layers"]))
    for sweep in dict.fromkeys(curves["sweep"]):
        result.add_figure(plot_training(curves[curves["sweep"] == sweep], tables["e1_quality"],
                                        tables["e1_layers"], sweep), f"e1_gradients_{sweep}")
    result.add_figure(effects_figure(result.checks, "E1: effects over seeds with 95 % intervals"), "e1_effects")
    counts = runs.groupby(["sweep", "status"]).size().to_dict()
    result.notes.append("runs by sweep and status: " + ", ".join(f"{k[0]} {k[1]} {v}" for k, v in counts.items()))
    return result


def plot_training(curves: pd.DataFrame, scalars: pd.DataFrame, layers: pd.DataFrame, sweep: str):
    """Four panels: ||grad_x D(x)||, conv1's ||dL/dh||, a middle layer's LeCun ratio, the relative depth profile."""
    from gradscope.plot import style

    opt = "Adam (lr 2e-4)" if sweep == "adam" else f"plain SGD (lr {SGD_LR:g})"
    fig, axes = style.new_figure(1, 4, panel_size=(3.4, 2.8),
                                 title=f"E1: D's gradients through training with {opt}, MNIST 32x32, "
                                       "mean over seeds with 95 % bands")
    order = ORDER  # every arm keeps its colour across figures, present or not
    first = curves["layer_index"].min()
    middle = int(np.median(np.unique(curves["layer_index"])))
    names = curves.drop_duplicates("layer_index").set_index("layer_index")["layer"]
    slopes = scalars[(scalars["sweep"] == sweep) & (scalars["name"] == "slope_real_mean")]
    plot_bands(axes[0, 0], slopes, "step", "value", "arm", log=True, order=order)
    style.label_axes(axes[0, 0], "D update", "||grad_x D(x)||, real images", "input gradient (C1)")
    grad = curves[curves["stat"] == "grad_out_norm"]
    plot_bands(axes[0, 1], grad[grad["layer_index"] == first], "step", "value", "arm", log=True, order=order)
    style.label_axes(axes[0, 1], "D update", "||dL/dh|| (non-zero records)", f"loss gradient at {names[first]}")
    lecun = curves[(curves["stat"] == "lecun_ratio") & (curves["layer_index"] == middle)]
    plot_bands(axes[0, 2], lecun, "step", "value", "arm", log=True, order=order)
    prediction = layers.set_index("layer_index")["lecun_prediction"] if len(layers) else {}
    if middle in prediction:
        style.theory_line(axes[0, 2], float(prediction[middle]), "SN prediction (1+sqrt(m/n))^-2")
    style.label_axes(axes[0, 2], "D update", "fan_in Var(W_eff) (1 = LeCun)",
                     f"LeCun ratio of {names[middle]} (dashed: SN's)")
    plot_bands(axes[0, 3], depth_profile(grad), "layer_index", "value", "arm", log=True, order=order, marker="o")
    style.label_axes(axes[0, 3], "layer (0 = input side)", "||dL/dh_t|| / ||dL/dh_last||",
                     f"depth profile, last {TAIL:.0%} of training")
    style.integer_ticks(axes[0, 3])
    style.figure_legend(fig, axes[0, 0])
    return fig


def depth_profile(grad: pd.DataFrame) -> pd.DataFrame:
    """Per run and layer: ``||dL/dh_t|| / ||dL/dh_last||``, geometric mean over the tail's non-zero records."""
    rows = []
    for (arm, seed), run in grad.groupby(["arm", "seed"], sort=False):
        wide = run.pivot_table(index="step", columns="layer_index", values="value")
        steps = wide.index.to_numpy()
        wide = wide[wide.index >= steps[int(math.floor((1 - TAIL) * (len(steps) - 1)))]]
        wide = wide[(wide > 0).all(axis=1)]
        if not len(wide):
            continue
        relative = np.exp(np.log(wide.div(wide[wide.columns.max()], axis=0)).mean())
        rows.extend({"arm": arm, "seed": seed, "layer_index": int(k), "value": float(v)} for k, v in relative.items())
    return pd.DataFrame(rows, columns=["arm", "seed", "layer_index", "value"])
