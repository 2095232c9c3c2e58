"""C5: spectral normalization acts like LeCun initialization, and keeps doing so during training.

Claim (THEORY.md, C5)
---------------------
For ``W`` in ``R^{m x n}`` with i.i.d. zero-mean entries of variance ``s^2``
(``m`` output channels, ``n = fan_in`` inputs per output), the largest
singular value concentrates at ``||W||_sp ~ s (sqrt(m) + sqrt(n))`` (Bai-Yin;
Gordon's inequality ``E||W|| <= s (sqrt(m) + sqrt(n))`` for Gaussians). After
SN, ``W_bar = W / ||W||_sp`` has entry variance ``~ 1 / (sqrt(m) + sqrt(n))^2``,
so

    fan_in * Var(W_bar) ~ (1 + sqrt(m / n))^-2                       (*)

a constant multiple of LeCun's ``Var = 1 / fan_in``, *whatever the init scale*
``s`` (and whatever the entry distribution with a finite fourth moment).
During training without SN the ratio drifts as the weights grow or shrink;
with SN it stays near (*).

What is measured
----------------
1. Random matrices: for the reshaped weight shapes of the SNDCGAN
   discriminator and the three shapes of THEORY.md (64x64 -> 0.25,
   128x576 -> 0.462, 512x4608 -> 0.562), layers are drawn with the
   project's init schemes (``dcgan``: truncated normal std 0.02; ``lecun``:
   normal; ``xavier``: uniform; ``kaiming``: normal with the leaky-ReLU gain)
   -- four entry scales and three distributions -- and ``sigma`` and
   ``fan_in * Var(W / sigma)`` are compared with the prediction.
2. Training: the SNDCGAN pair trained with the real trainer (setting A's
   Adam, lr 1e-4, betas (0.5, 0.999)) on the built-in digits with D under no
   normalization and under SN, D initialized with LeCun, Xavier and Kaiming
   (LeCun only at ``tiny`` scale, to stay fast); the recorder's
   ``lecun_ratio`` (``fan_in * Var(W_eff)`` of the weight each layer really
   uses) is followed over the D updates, and at the end the trained raw
   weights are normalized by their *exact* sigma.

A finding this exposes: popular SN's persistent one-step power iteration
(torch's algorithm) can lose the top singular value under Adam. The raw
weight's gradient has a term along the *estimated* top pair ``u v^T``
(C2's ``<G, W_bar> u v^T``), which Adam turns into an update of spectral norm
about ``lr sqrt(m n)`` along exactly that pair; a random ``m x n`` matrix has
no spectral gap at its edge, so the tracked direction is deflated while other
directions keep ``sigma`` where it was. The estimate then falls below the
exact ``sigma`` (by 20-30 % within ten steps for SNDCGAN's 512 x 2304 layer,
lr 1e-4) and the effective weight's ratio rises above (*). The claim is
therefore checked with the exact sigma (must hold) and reported with the
estimate the layers really used (not must-hold).

Assumptions
-----------
- Part 1 uses the *exact* top singular value of the forward reshape
  ``(c_out, c_in k k)``, computed in float64 as the square root of the largest
  eigenvalue of the ``m x m`` Gram matrix (the same number as an SVD, an order
  of magnitude faster for 512 x 4608). ``fan_in`` is ``n``; the entries'
  standard deviation ``s`` is the scheme's exact one (for ``dcgan`` the
  truncated normal's, ``0.7737^(1/2) * 0.02``).
- Part 2 trains with the popular (reshape) SN of :mod:`gradscope.norms`, one
  power-iteration step per forward, so ``W_eff = W / sigma_estimate`` with
  ``sigma_estimate <= sigma``; the must-hold check recomputes the exact sigma
  of the trained raw weights. Biases are present (the reference model); they
  do not enter the ratio.
- Finite sizes: the relative fluctuation and bias of ``sigma_max`` are of
  order ``min(m, n)^(-2/3)`` (Tracy-Widom scale), so the tolerance of the
  sigma check is ``2 min(m, n)^(-2/3)`` and it must hold only for
  ``min(m, n) >= 64``; the LeCun-ratio tolerance is twice that (it goes as
  ``sigma^-2``). Smaller shapes are reported, not judged.

Verdicts
--------
Must hold: ``sigma / (s (sqrt m + sqrt n))`` within tolerance for every large
shape and scheme; ``fan_in * Var(W_bar)`` within tolerance of (*) for the same;
after training under SN, ``n Var(W) / sigma_exact(W)^2`` of every large layer
(``min(m, n) >= 64``) within 25 % of (*), per init; and the claim's "whatever
the init scale s": per large layer, the spread ``max / min`` over inits of that
exact-SN ratio after training is below the smallest such spread of
``fan_in Var(W)`` without SN (which the init sets: Kaiming is about twice
LeCun). Reported (not must-hold): the ratio of the weight the layers used
(power-iteration sigma) over every recorded step, and how far it drifts with
SN compared with no SN.

The 25 % band is kept although it fails at ``small`` scale (below): it was set
before the measurement, and the failure says something true. For a zero-mean
``m x n`` weight ``n Var(W) / sigma^2 = ||W||_F^2 / (m sigma^2)``, the stable
rank over ``m``; training adds low-rank (outlier) directions to the deepest
layers, which lowers the stable rank and with it the ratio, while the ratio's
independence from the init scale survives.

Observed (seed 0): at ``tiny`` (8 steps, LeCun and Kaiming) every must-hold
check holds; at ``small`` (150 steps on 16 x 16 digits) the exact-SN ratio of
the deepest layers (conv6, conv7: 2 x 2 and 4 x 4 inputs, low-rank gradients)
falls to 0.69-0.88 of (*): within 25 % for LeCun and Kaiming init, not for
Xavier (0.69, violated); the spread over the three inits is at most 1.24 with
SN against at least 1.95 without (holds).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from analyses.common import AnalysisResult, check_at_most, check_close, start_result
from gradscope.init import init_, layer_fans, scheme_variance
from gradscope.linalg import rmt_spectral_norm
from gradscope.plot import style
from gradscope.plot.quantities import lecun_prediction

CLAIM = "C5"
TITLE = "SN acts like LeCun initialization: sigma ~ s(sqrt m + sqrt n), fan_in Var(W_bar) ~ (1+sqrt(m/n))^-2"

#: Weight shapes ``(c_out, c_in, k)`` (``k = 0``: a Linear layer): THEORY.md's three, then SNDCGAN's convs.
THEORY_SHAPES: tuple[tuple[int, int, int], ...] = ((64, 64, 0), (128, 64, 3), (512, 512, 3))
SNDCGAN_SHAPES: tuple[tuple[int, int, int], ...] = (
    (64, 3, 3), (64, 64, 4), (128, 128, 4), (256, 128, 3), (256, 256, 4), (512, 256, 3))  # (128, 64, 3) above
RMT_SCHEMES: tuple[str, ...] = ("dcgan", "lecun", "xavier", "kaiming")
TRAIN_INITS: tuple[str, ...] = ("lecun", "xavier", "kaiming")
TRAIN_NORMS: tuple[str, ...] = ("none", "sn")
#: The SN ratio must stay within this relative band of the prediction over training.
TRAINED_TOLERANCE = 0.25
#: Shapes with min(m, n) below this are reported but not judged (finite-size effects dominate).
JUDGED_MIN_DIM = 64

PARAMS = {
    "tiny": {"shapes": THEORY_SHAPES, "schemes": ("dcgan", "lecun", "xavier"), "draws": 1,
             "inits": ("lecun", "kaiming"),
             "train": {"dataset": "digits", "image_size": 8, "iterations": 8, "batch_size": 32, "record_every": 1,
                       "lr_d": 1e-4, "lr_g": 1e-4}},
    "small": {"shapes": THEORY_SHAPES + SNDCGAN_SHAPES, "schemes": RMT_SCHEMES, "draws": 3, "inits": TRAIN_INITS,
              "train": {"dataset": "digits", "image_size": 16, "iterations": 150, "batch_size": 32,
                        "record_every": 5, "lr_d": 1e-4, "lr_g": 1e-4}},
    "paper": {"shapes": THEORY_SHAPES + SNDCGAN_SHAPES, "schemes": RMT_SCHEMES, "draws": 10, "inits": TRAIN_INITS,
              "train": {"dataset": "cifar10", "image_size": 32, "iterations": 20000, "batch_size": 64,
                        "record_every": 100, "lr_d": 1e-4, "lr_g": 1e-4}},
}


def make_layer(c_out: int, c_in: int, kernel: int) -> nn.Module:
    """A bias-free Linear (``kernel == 0``) or stride-1 Conv2d layer of the given shape."""
    if kernel == 0:
        return nn.Linear(c_in, c_out, bias=False)
    return nn.Conv2d(c_in, c_out, kernel, bias=False)


def top_singular_value(matrix: torch.Tensor) -> float:
    """Exact largest singular value of a 2-D matrix, from its smaller Gram matrix in float64."""
    w = matrix.detach().to(torch.float64)
    gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
    return math.sqrt(float(torch.linalg.eigvalsh(gram)[-1]))


def sigma_tolerance(m: int, n: int) -> float:
    """Relative tolerance of the sigma check: twice the Tracy-Widom scale ``min(m, n)^(-2/3)``."""
    return 2.0 * min(m, n) ** (-2.0 / 3.0)


def measure_matrix(w: torch.Tensor, std: float, **labels) -> dict:
    """One row of part 1: sigma and ``n Var(W / sigma)`` of an ``m x n`` matrix against Bai-Yin for entry std ``std``."""
    w = w.detach().to(torch.float64)
    m, n = w.shape
    sigma = top_singular_value(w)
    return {**labels, "shape": f"{m}x{n}", "m": m, "n": n, "std": std, "sigma": sigma,
            "sigma_pred": rmt_spectral_norm((m, n), std), "lecun_ratio": n * float((w / sigma).var(unbiased=False)),
            "lecun_pred": lecun_prediction((m, n), n)}


def random_matrix_table(shapes, schemes, draws: int, seed: int) -> pd.DataFrame:
    """Measured vs predicted sigma and LeCun ratio for each shape, init scheme and draw."""
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for c_out, c_in, kernel in shapes:
        layer = make_layer(c_out, c_in, kernel)
        for scheme in schemes:
            # the leaky-ReLU slope of the SNDCGAN discriminator sets Kaiming's gain
            std = math.sqrt(scheme_variance(scheme, layer_fans(layer), negative_slope=0.1))
            for draw in range(draws):
                init_(layer, scheme, negative_slope=0.1, generator=generator)
                rows.append(measure_matrix(layer.weight.reshape(c_out, -1), std, kernel=kernel, scheme=scheme,
                                           draw=draw))
    return with_relative_errors(pd.DataFrame(rows))


def with_relative_errors(table: pd.DataFrame) -> pd.DataFrame:
    """Add ``sigma_rel`` and ``lecun_rel``: measured over predicted."""
    return table.assign(sigma_rel=table["sigma"] / table["sigma_pred"],
                        lecun_rel=table["lecun_ratio"] / table["lecun_pred"])


def random_matrix_checks(table: pd.DataFrame) -> list:
    """The must-hold checks of part 1: per large shape, the worst draw over schemes."""
    checks = []
    for (shape, m, n), rows in table.groupby(["shape", "m", "n"], sort=False):
        if min(m, n) < JUDGED_MIN_DIM:
            continue
        tol = sigma_tolerance(m, n)
        worst = rows.loc[(rows["sigma_rel"] - 1).abs().idxmax()]
        checks.append(check_close(CLAIM, f"sigma / s(sqrt m + sqrt n), {shape}, worst of {len(rows)} draws",
                                  float(worst["sigma_rel"]), 1.0, rtol=tol,
                                  detail=f"worst scheme {worst.get('scheme', '-')}"))
        worst = rows.loc[(rows["lecun_rel"] - 1).abs().idxmax()]
        checks.append(check_close(CLAIM, f"fan_in Var(W/sigma), {shape}, worst draw",
                                  float(worst["lecun_ratio"]), float(worst["lecun_pred"]), rtol=2 * tol,
                                  detail=f"prediction (1+sqrt(m/n))^-2; scheme {worst.get('scheme', '-')}"))
    return checks


def training_table(out: Path, train: dict, inits, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """D's ``lecun_ratio`` over its updates per normalization and init, and the exact-SN ratio at the end.

    Returns
    -------
    (trajectory, final)
        ``trajectory``: the recorder's ``fan_in * Var(W_eff)`` per recorded step and layer;
        ``final``: per layer of the trained D, ``n * Var(W) / sigma_exact(W)^2`` of its raw weight
        (what exact SN would give) and the prediction (*).
    """
    from analyses.training import train_run
    from gradscope.norms.base import raw_weight

    frames, finals = [], []
    for norm in TRAIN_NORMS:
        for init in inits:
            run, trained = train_run(out / "runs" / f"{norm}-{init}", norm=norm, init=init, seed=seed, **train)
            info = {i["name"]: i for i in run.architecture["D"]}
            predictions = {name: lecun_prediction(i["weight_shape"], i["fan_in"], "Transpose" in i["type"])
                           for name, i in info.items()}
            rows = run.layers[(run.layers["net"] == "D") & (run.layers["phase"] == "d")
                              & (run.layers["stat"] == "lecun_ratio")]
            frames.append(pd.DataFrame({
                "norm": norm, "init": init, "step": rows["step"].to_numpy(),
                "layer_index": rows["layer_index"].to_numpy(), "layer": rows["layer"].to_numpy(),
                "lecun_ratio": rows["value"].to_numpy(),
                "sn_prediction": rows["layer"].map(predictions).to_numpy()}))
            modules = dict(trained.discriminator.named_modules())
            for name, layer_info in info.items():
                w = raw_weight(modules[name]).detach().cpu()
                m = w.shape[0]
                mat = w.reshape(m, -1).to(torch.float64)
                finals.append({"norm": norm, "init": init, "layer_index": layer_info["layer_index"], "layer": name,
                               "m": m, "n": mat.shape[1], "step": int(run.layers["step"].max()),
                               "exact_sn_ratio": mat.shape[1] * float(mat.var(unbiased=False))
                               / top_singular_value(mat) ** 2,
                               "sn_prediction": predictions[name]})
    table = pd.concat(frames, ignore_index=True)
    table["relative_to_prediction"] = table["lecun_ratio"] / table["sn_prediction"]
    final = pd.DataFrame(finals)
    final["relative_to_prediction"] = final["exact_sn_ratio"] / final["sn_prediction"]
    final["judged"] = np.minimum(final["m"], final["n"]) >= JUDGED_MIN_DIM
    return table, final


def training_checks(table: pd.DataFrame, final: pd.DataFrame) -> list:
    """Exact SN keeps the ratio near (*) (must hold); SN as trained (power iteration) and drift (reported)."""
    checks = []
    for init, rows in final[(final["norm"] == "sn") & final["judged"]].groupby("init", sort=False):
        deviation = float((rows["relative_to_prediction"] - 1).abs().max())
        checks.append(check_at_most(CLAIM, f"SN, {init} init, after training: max |n Var(W)/sigma_exact^2 "
                                    "/ (1+sqrt(m/n))^-2 - 1|", deviation, TRAINED_TOLERANCE, rtol=0,
                                    detail=f"{len(rows)} layers with min(m, n) >= {JUDGED_MIN_DIM}"))
    judged = final[final["judged"]].set_index("layer")["judged"]
    for init, rows in table[(table["norm"] == "sn") & table["layer"].isin(judged.index)].groupby("init", sort=False):
        deviation = float((rows["relative_to_prediction"] - 1).abs().max())
        checks.append(check_at_most(
            CLAIM, f"SN as trained (power-iteration sigma), {init} init: max |fan_in Var(W_eff) / pred - 1|",
            deviation, TRAINED_TOLERANCE, rtol=0, must_hold=False,
            detail="reported: the 1-step estimate lags the exact sigma, see the module docstring"))
    checks += init_independence_checks(table, final)
    drift = drift_table(table)
    for init, rows in drift.groupby("init", sort=False):
        by_norm = rows.set_index("norm")["max_drift"]
        if {"none", "sn"} <= set(by_norm.index):
            checks.append(check_at_most(
                CLAIM, f"{init} init: max drift |r(t)/r(first) - 1| with SN, bounded by that without SN",
                float(by_norm["sn"]), float(by_norm["none"]), rtol=0, must_hold=False,
                detail="r = fan_in Var(W_eff) as trained; reported, not must-hold"))
    return checks


def init_spread_table(table: pd.DataFrame, final: pd.DataFrame) -> pd.DataFrame:
    """Per judged layer: ``max / min`` over inits of ``fan_in Var`` after training, without SN and with exact SN.

    Without normalization ``fan_in Var(W)`` is whatever the init scale ``s``
    made it (Kaiming is twice LeCun, Xavier ``2n / (m + n)`` times), and a
    short run of small Adam steps barely moves it; the claim says SN removes ``s``, so the
    exact-SN ratio should agree across inits even where it leaves (*).
    """
    columns = ["layer", "inits", "spread_none", "spread_exact_sn"]
    if final["init"].nunique() < 2:
        return pd.DataFrame(columns=columns)
    judged = final[final["judged"]]
    # layer x init tables: fan_in Var(W) at the last step without SN, the exact-SN ratio of the trained weights
    none = table[table["norm"] == "none"].sort_values("step").groupby(["layer", "init"])["lecun_ratio"].last()
    none = none.unstack("init")
    exact = judged[judged["norm"] == "sn"].pivot(index="layer", columns="init", values="exact_sn_ratio")
    rows = []
    for layer in judged["layer"].unique():
        if layer in none.index and layer in exact.index:
            without, with_sn = none.loc[layer].dropna(), exact.loc[layer].dropna()
            if len(without) >= 2 and len(with_sn) >= 2:
                rows.append({"layer": layer, "inits": len(with_sn), "spread_none": float(without.max() / without.min()),
                             "spread_exact_sn": float(with_sn.max() / with_sn.min())})
    return pd.DataFrame(rows, columns=columns)


def init_independence_checks(table: pd.DataFrame, final: pd.DataFrame) -> list:
    """Must hold: after training, SN's ratio depends on the init less than the un-normalized one does, per layer."""
    spread = init_spread_table(table, final)
    if spread.empty:
        return []
    return [check_at_most(
        CLAIM, "after training, worst max/min over inits of n Var(W)/sigma_exact^2 (SN) vs the mildest "
        "max/min of fan_in Var(W) without SN", float(spread["spread_exact_sn"].max()),
        float(spread["spread_none"].min()), rtol=0,
        detail=f"{len(spread)} layers with min(m, n) >= {JUDGED_MIN_DIM}, {int(spread['inits'].iloc[0])} inits: "
               "SN makes the variance independent of the init scale s")]


def drift_table(table: pd.DataFrame) -> pd.DataFrame:
    """Per norm and init: the largest relative change of any layer's ratio from its first recorded value."""
    first = table.sort_values("step").groupby(["norm", "init", "layer"])["lecun_ratio"].transform("first")
    change = (table["lecun_ratio"] / first - 1).abs()
    return (table.assign(drift=change).groupby(["norm", "init"], sort=False)["drift"].max()
            .rename("max_drift").reset_index())


def plot_random_matrices(table: pd.DataFrame):
    """Measured vs predicted sigma (log-log) and fan_in Var(W_bar) vs (1+sqrt(m/n))^-2."""
    fig, axes = style.new_figure(1, 2, panel_size=(3.6, 3.0),
                                 title="C5: random weights vs Bai-Yin (markers: init scheme, one per draw)")
    markers = dict(zip(RMT_SCHEMES, ("o", "s", "^", "D")))
    for i, (scheme, rows) in enumerate(table.groupby("scheme", sort=False)):
        kwargs = {"marker": markers.get(scheme, "o"), "linestyle": "none", "markersize": 4,
                  "color": style.color(i), "alpha": 0.8, "label": scheme}
        axes[0, 0].plot(rows["sigma_pred"], rows["sigma"], **kwargs)
        axes[0, 1].plot(rows["lecun_pred"], rows["lecun_ratio"], **kwargs)
    for ax, column in ((axes[0, 0], "sigma_pred"), (axes[0, 1], "lecun_pred")):
        low, high = table[column].min() * 0.8, table[column].max() * 1.25
        ax.plot([low, high], [low, high], color=style.THEORY_COLOR, linestyle="--", linewidth=1, label="y = x")
    style.label_axes(axes[0, 0], "predicted s (sqrt m + sqrt n)", "measured sigma_max(W)",
                     "spectral norm, all init scales", logx=True, logy=True)
    style.label_axes(axes[0, 1], "predicted (1 + sqrt(m/n))^-2", "measured fan_in * Var(W / sigma)",
                     "after SN: a LeCun-like variance")
    style.legend(axes[0, 0])
    return fig


def plot_training(table: pd.DataFrame, final: pd.DataFrame):
    """Per init: every D layer's fan_in Var(W_eff) relative to the SN prediction, SN vs no normalization."""
    inits = list(dict.fromkeys(table["init"]))
    fig, axes = style.new_figure(1, len(inits), panel_size=(max(3.0, 6.4 / len(inits)), 2.8), sharey=True,
                                 title="C5: fan_in Var(W_eff) / (1+sqrt(m/n))^-2 per D layer during training")
    for col, init in enumerate(inits):
        ax = axes[0, col]
        for i, norm in enumerate(TRAIN_NORMS):
            rows = table[(table["init"] == init) & (table["norm"] == norm)]
            for j, (_, layer_rows) in enumerate(rows.groupby("layer_index")):
                ax.plot(layer_rows["step"], layer_rows["relative_to_prediction"], color=style.color(i),
                        linewidth=1.0, alpha=0.75, label=("SN" if norm == "sn" else "no normalization")
                        if j == 0 else None)
        exact = final[(final["init"] == init) & (final["norm"] == "sn")]
        ax.plot(exact["step"], exact["relative_to_prediction"], linestyle="none", marker="x", color="black",
                markersize=6, label="exact SN at the end (n Var(W) / sigma_exact^2)")
        ax.axhspan(1 - TRAINED_TOLERANCE, 1 + TRAINED_TOLERANCE, color=style.THEORY_COLOR, alpha=0.12,
                   label=f"prediction +-{TRAINED_TOLERANCE:.0%}")
        ax.axhline(1.0, color=style.THEORY_COLOR, linestyle="--", linewidth=1)
        style.label_axes(ax, "D update (step)", "ratio / SN prediction", f"{init} init", logy=True)
    style.figure_legend(fig, axes[0, 0], ncol=2 if len(inits) == 1 else 4)
    return fig


def run(scale: str, out: Path, seed: int = 0) -> AnalysisResult:
    """Run C5 at ``scale`` into ``out``; see the module docstring for what is measured and judged."""
    params, result = start_result(CLAIM, TITLE, scale, out, PARAMS)
    rmt = random_matrix_table(params["shapes"], params["schemes"], params["draws"], seed)
    result.add_table("c5_random_matrices", rmt)
    result.add(*random_matrix_checks(rmt))
    result.add_figure(plot_random_matrices(rmt), "c5_random_matrices")
    trained, final = training_table(result.out, params["train"], params["inits"], seed)
    result.add_table("c5_training", trained)
    result.add_table("c5_trained_exact", final)
    result.add_table("c5_drift", drift_table(trained))
    result.add_table("c5_init_spread", init_spread_table(trained, final))
    result.add(*training_checks(trained, final))
    result.add_figure(plot_training(trained, final), "c5_training")
    summary = rmt.groupby("shape", sort=False)[["lecun_ratio", "lecun_pred"]].mean()
    result.notes.append("mean fan_in Var(W_bar) per shape: " + ", ".join(
        f"{shape} {row.lecun_ratio:.3f} (pred {row.lecun_pred:.3f})" for shape, row in summary.iterrows()))
    return result
