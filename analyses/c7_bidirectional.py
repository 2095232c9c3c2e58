"""C7: do BSN / BSSN keep forward and backward variances closer to constant than SN?

Claim (THEORY.md, C7)
---------------------
Xavier's ``Var(W) = 2 / (fan_in + fan_out)`` balances the forward variance of
activations and the backward variance of gradients; Kaiming's gain
``sqrt(2 / (1 + a^2))`` compensates what a (leaky) ReLU removes. BSN divides a
conv kernel by ``(sigma_fwd + sigma_bwd) / 2`` (the Xavier analogue of SN's
LeCun-like ``sigma_fwd``), SSN multiplies every normalized weight by a
constant ``c`` (the Kaiming analogue), BSSN does both. The claim: under
BSN / BSSN the per-layer ratios

    forward   Var(a_t) / Var(a_{t-1})
    backward  Var(dD/da_{t-1}) / Var(dD/da_t)

(``a_t`` the output of layer ``t`` after its activation, ``a_0 = x``; see
:func:`gradscope.plot.quantities.variance_ratios`) stay closer to 1 than
under SN, so signals neither vanish nor explode through depth.

What to expect (derived here)
-----------------------------
For a layer with i.i.d.-like weights of variance ``v`` and a zero-mean
symmetric pre-activation, leaky ReLU with slope ``a`` keeps
``(1 + a^2) / 2`` of the second moment, so the forward gain is about
``c^2 fan_in v (1 + a^2) / 2`` and the backward gain about
``c^2 fan_out v (1 + a^2) / 2`` (``fan_out = c_out k^2 / stride^2``, the
operator fan-out). After SN, ``fan_in v ~ (1 + sqrt(m/n))^-2`` (C5), between
0.15 and 0.64 for SNDCGAN, so both gains are well below 1 at ``c = 1``:
SN makes signals *vanish*, in both directions. Scaling by ``c`` multiplies
every gain by ``c^2``; the Kaiming value ``c = sqrt(2 / (1 + a^2)) ~ 1.41``
(a = 0.1) undoes the activation's loss. BSN's divisor differs from SN's only
where the forward and backward reshapes have different shapes (c_in != c_out:
SNDCGAN's first, third, fifth and seventh convolution), where it is larger, so
BSN alone moves those layers' gains *down*; the paper's gain comes with the
scale (BSSN).

Assumptions
-----------
- The SNDCGAN discriminator at the reference initialization (dcgan), 3 input
  channels, on a batch of the built-in digits (repeated to 3 channels); the
  statistics are those the recorder takes (population variances over batch
  and positions) in one forward / backward pass of ``mean D(x)``.
- Normalizations as used in training (one power step per forward from the
  15-step warm-up): what the layers really compute with.
- Un-normalized references: LeCun, Xavier and Kaiming initializations of the
  same network (operator fans, :mod:`gradscope.init`).
- Summary distance from 1: the mean over layers (and both directions) of
  ``|log10 ratio|``; 0 means every layer keeps the variance.

Verdicts (reported, not must-hold)
----------------------------------
"BSSN (c = 1.41) closer to 1 than SN", "BSN closer to 1 than SN" (c = 1),
and the ``c`` minimizing the distance for the SN and BSN families. Each
holds when the distance is smaller by more than 5 %, is violated when it is
larger by more than 5 %, and is inconclusive in between. At ``small`` scale
the same comparison is repeated on the recorder's statistics over a short
training run.
"""
from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from analyses.common import AnalysisResult, Check, HOLDS, INCONCLUSIVE, VIOLATED, start_result
from analyses.probe import digits_batch, recorded_pass
from gradscope.init import init_
from gradscope.models import SNDCGANDiscriminator
from gradscope.plot import style
from gradscope.plot.quantities import variance_ratios

CLAIM = "C7"
TITLE = "BSN / BSSN keep forward and backward variance ratios closer to 1 than SN"

NEGATIVE_SLOPE = 0.1
#: Kaiming's gain for leaky ReLU 0.1: the scale the paper's SSN / BSSN use.
KAIMING_C = math.sqrt(2.0 / (1.0 + NEGATIVE_SLOPE**2))
#: Relative margin below which a comparison of distances is inconclusive.
MARGIN = 0.05

PARAMS = {
    "tiny": {"image_size": 16, "batch": 32, "draws": 2, "scales": (1.0, KAIMING_C), "train": None},
    "small": {"image_size": 32, "batch": 64, "draws": 3, "scales": (0.7, 1.0, 1.2, KAIMING_C, 1.6, 2.0),
              "train": {"dataset": "digits", "image_size": 16, "iterations": 150, "batch_size": 64,
                        "record_every": 10, "lr_d": 1e-4, "lr_g": 1e-4}},
    "paper": {"image_size": 32, "batch": 128, "draws": 10,
              "scales": (0.7, 0.8, 0.9, 1.0, 1.2, KAIMING_C, 1.6, 2.0, 3.0, 4.0),
              "train": {"dataset": "cifar10", "image_size": 32, "iterations": 20000, "batch_size": 64,
                        "record_every": 200, "lr_d": 1e-4, "lr_g": 1e-4}},
}


def setups(scales) -> list[dict]:
    """The (normalization, init, c) combinations compared: un-normalized inits and the SN family."""
    out = [{"setup": f"none, {init}", "norm": "none", "init": init, "c": 1.0}
           for init in ("lecun", "xavier", "kaiming")]
    out += [{"setup": norm, "norm": norm, "init": "dcgan", "c": 1.0} for norm in ("sn", "bsn")]
    for c in scales:
        if c != 1.0:
            out += [{"setup": f"{norm} c={c:.2f}", "norm": norm, "init": "dcgan", "c": float(c)}
                    for norm in ("ssn", "bssn")]
    return out


def ratio_table(image_size: int, batch_size: int, draws: int, scales, seed: int) -> pd.DataFrame:
    """Per-layer forward and backward ratios of every setup, for ``draws`` random initializations."""
    from gradscope.norms import normalize

    batch = digits_batch(batch_size, image_size, 3, seed)
    generator = torch.Generator().manual_seed(seed)
    frames = []
    for draw in range(draws):
        # one weight draw per init scheme, shared by every normalization: paired comparisons
        bases = {}
        for init in dict.fromkeys(s["init"] for s in setups(scales)):
            bases[init] = init_(SNDCGANDiscriminator(image_size, 3, NEGATIVE_SLOPE), init, generator=generator)
        for setup in setups(scales):
            model = copy.deepcopy(bases[setup["init"]])
            torch.manual_seed(seed * 1000 + draw)  # the same power-iteration start vectors for every norm
            if setup["norm"] != "none":
                normalize(model, setup["norm"], scale=setup["c"])
            ratios = variance_ratios(recorded_pass(model, batch))
            frames.append(ratios.assign(draw=draw, **setup))
    return pd.concat(frames, ignore_index=True)


def distance_from_one(ratios: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Mean over layers of ``|log10 ratio|`` per group and direction, plus both directions together."""
    logs = ratios.assign(distance=np.log10(ratios["ratio"]).abs())
    per_direction = logs.groupby([*by, "direction"], sort=False)["distance"].mean().unstack("direction")
    per_direction["both"] = logs.groupby(by, sort=False)["distance"].mean()
    return per_direction.reset_index()


def compare(quantity: str, candidate: float, reference: float, detail: str = "") -> Check:
    """Candidate distance smaller than the reference one by more than :data:`MARGIN`: holds; larger: violated."""
    if candidate < reference * (1 - MARGIN):
        verdict = HOLDS
    elif candidate > reference * (1 + MARGIN):
        verdict = VIOLATED
    else:
        verdict = INCONCLUSIVE
    return Check(CLAIM, quantity, float(candidate), float(reference), verdict, False, "<",
                 detail or f"mean |log10 ratio| over layers and directions; margin {MARGIN:.0%}")


def init_checks(summary: pd.DataFrame) -> list[Check]:
    """BSN vs SN (c = 1), SSN / BSSN at Kaiming's c vs SN, and the best c of each family."""
    both = summary.set_index("setup")["both"]
    kaiming = f"c={KAIMING_C:.2f}"
    checks = [compare("init: distance from 1, BSN vs SN (c = 1)", both["bsn"], both["sn"])]
    for norm in ("bssn", "ssn"):
        key = f"{norm} {kaiming}"
        if key in both:
            checks.append(compare(f"init: distance from 1, {norm.upper()} ({kaiming}) vs SN", both[key], both["sn"]))
    if f"bssn {kaiming}" in both and f"ssn {kaiming}" in both:
        checks.append(compare(f"init: distance from 1, BSSN vs SSN (both {kaiming})", both[f"bssn {kaiming}"],
                              both[f"ssn {kaiming}"]))
    return checks


def best_scales(summary: pd.DataFrame) -> pd.DataFrame:
    """Per family (SN: sn/ssn, BSN: bsn/bssn): distance vs c and the c that minimizes it."""
    family = {"sn": "SN family", "ssn": "SN family", "bsn": "BSN family", "bssn": "BSN family"}
    rows = summary[summary["norm"].isin(family)].assign(family=lambda f: f["norm"].map(family))
    return rows.sort_values(["family", "c"])


def training_ratios(out: Path, train: dict, seed: int) -> pd.DataFrame:
    """The recorder's per-layer ratios over short training runs of SN, BSN, SSN and BSSN (c = Kaiming's)."""
    from analyses.training import train_run

    frames = []
    for norm, c in (("sn", 1.0), ("bsn", 1.0), ("ssn", KAIMING_C), ("bssn", KAIMING_C)):
        run, _ = train_run(out / "runs" / norm, norm=norm, scale=c, seed=seed, **train)
        rows = run.layers[(run.layers["net"] == "D") & (run.layers["phase"] == "d")]
        frames.append(variance_ratios(rows).assign(setup=norm if c == 1.0 else f"{norm} c={c:.2f}", norm=norm, c=c))
    return pd.concat(frames, ignore_index=True)


def plot_layers(ratios: pd.DataFrame):
    """Forward and backward ratio per layer for the un-normalized inits and SN / BSN / SSN / BSSN."""
    kaiming = f"c={KAIMING_C:.2f}"
    shown = ["none, lecun", "none, xavier", "none, kaiming", "sn", "bsn", f"ssn {kaiming}", f"bssn {kaiming}"]
    fig, axes = style.new_figure(1, 2, panel_size=(3.6, 3.0), sharey=True,
                                 title="C7: variance gain per D layer at init (mean over draws)")
    for col, direction in enumerate(("forward", "backward")):
        ax = axes[0, col]
        for i, setup in enumerate(s for s in shown if s in set(ratios["setup"])):
            rows = ratios[(ratios["setup"] == setup) & (ratios["direction"] == direction)]
            mean = rows.groupby("layer_index")["ratio"].apply(lambda r: float(np.exp(np.log(r).mean())))
            ax.plot(mean.index, mean.values, marker="o", markersize=3, label=setup,
                    linestyle="--" if setup.startswith("none") else "-", color=style.color(i))
        ax.axhline(1.0, color=style.THEORY_COLOR, linewidth=1)
        what = (r"Var($a_t$) / Var($a_{t-1}$)" if direction == "forward"
                else r"Var($\partial D/\partial a_{t-1}$) / Var($\partial D/\partial a_t$)")
        style.label_axes(ax, "layer index t (input -> output)", what, direction, logy=True)
        style.integer_ticks(ax)
    style.figure_legend(fig, axes[0, 0], ncol=4)
    return fig


def plot_scales(summary: pd.DataFrame):
    """Distance from 1 against the scale c for the SN and BSN families (forward, backward, both)."""
    families = best_scales(summary)
    fig, axes = style.new_figure(1, 3, panel_size=(2.8, 2.6), sharey=True,
                                 title="C7: effect of the scale c (distance from 1 = mean |log10 ratio| over layers)")
    for col, column in enumerate(("forward", "backward", "both")):
        ax = axes[0, col]
        for i, (name, rows) in enumerate(families.groupby("family", sort=True)):
            ax.plot(rows["c"], rows[column], marker="o", markersize=3, label=name, **style.series_style(i))
        ax.axvline(KAIMING_C, color=style.THEORY_COLOR, linestyle=":", linewidth=1, label="Kaiming c = 1.41")
        style.label_axes(ax, "scale c", "mean |log10 ratio|", column)
    style.legend(axes[0, 0])
    return fig


def plot_training(ratios: pd.DataFrame):
    """Distance from 1 over a short training run per normalization (recorder statistics)."""
    summary = distance_from_one(ratios, ["setup", "step"])
    fig, axes = style.new_figure(1, 2, panel_size=(3.4, 2.6), sharey=True,
                                 title="C7: distance from 1 of the variance gains during training")
    for col, direction in enumerate(("forward", "backward")):
        ax = axes[0, col]
        for i, (setup, rows) in enumerate(summary.groupby("setup", sort=False)):
            ax.plot(rows["step"], rows[direction], label=setup, **style.series_style(i))
        style.label_axes(ax, "D update (step)", "mean |log10 ratio|", direction)
    style.legend(axes[0, 0])
    return fig


def run(scale: str, out: Path, seed: int = 0) -> AnalysisResult:
    """Run C7 at ``scale`` into ``out``; see the module docstring for what is measured and judged."""
    params, result = start_result(CLAIM, TITLE, scale, out, PARAMS)
    ratios = ratio_table(params["image_size"], params["batch"], params["draws"], params["scales"], seed)
    result.add_table("c7_ratios_init", ratios)
    summary = distance_from_one(ratios, ["setup", "norm", "init", "c"])
    result.add_table("c7_distance_init", summary)
    result.add(*init_checks(summary))
    result.add_figure(plot_layers(ratios), "c7_ratios_init")
    result.add_figure(plot_scales(summary), "c7_scale")
    best = best_scales(summary).sort_values("both").groupby("family").head(1)
    result.notes.append("c minimizing the distance at init: " + ", ".join(
        f"{row.family} c={row.c:.2f} ({row.both:.3f})" for row in best.itertuples()))
    if params["train"] is not None:
        trained = training_ratios(result.out, params["train"], seed)
        result.add_table("c7_ratios_training", trained)
        distance = distance_from_one(trained, ["setup"]).set_index("setup")["both"]
        for setup in [s for s in distance.index if s != "sn"]:
            result.add(compare(f"training: distance from 1, {setup} vs SN (all recorded steps)",
                               distance[setup], distance["sn"]))
        result.add_figure(plot_training(trained), "c7_training")
    return result
