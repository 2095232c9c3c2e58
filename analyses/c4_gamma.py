"""C4: equal allocation of the Lipschitz budget minimizes the gradient bound; one shared gamma vs one per layer.

Claim (THEORY.md, C4)
---------------------
Give layer ``t`` operator norm ``g_t > 0`` (under SN with a learnable scale,
``g_t = gamma_t``). By C1 the squared parameter gradient is bounded by
``||x||^2 B(g)`` with ``B(g) = sum_t prod_{i != t} g_i^2``. For a fixed Lipschitz
product ``C = prod_t g_t``, ``B`` is smallest when every ``g_t = C^(1/L)``.

Derivation
----------
``prod_{i != t} g_i = C / g_t``, so ``B(g) = C^2 sum_t g_t^-2``. By the AM-GM
inequality ``sum_t g_t^-2 >= L (prod_t g_t^-2)^(1/L) = L C^(-2/L)``, with
equality iff all ``g_t^-2`` are equal. Hence

    min_{prod g = C} B(g) = L C^(2 - 2/L),  attained only at g_t = C^(1/L),

and ``B(g) / (L C^(2-2/L))`` (the *allocation excess*, >= 1) says how much
larger the bound of an unequal allocation is than the equal one with the same
Lipschitz constant. This is checked against ``scipy.optimize.minimize`` on
random instances (must hold).

Why per-layer gammas move together (derived here)
-------------------------------------------------
With gamma multiplying a layer's normalized weight *and* its bias, a bias-free
positively homogeneous D satisfies ``D(gamma) = (prod_t gamma_t) D(1)``, so
``gamma_t dD/dgamma_t = D`` for *every* layer ``t``; ``grad_x D`` scales the same
way, so every loss built from ``D`` and ``grad_x D`` (hinge, WGAN-GP) gives all
gammas the same gradient in ``log gamma``. Started equal (at 1), per-layer
gammas then follow the shared gamma exactly under Adam: only the biases (which
break homogeneity) can make them drift apart. Checked on a float64 MLP
(must hold for zero biases; reported with random biases).

Experiment (the authors' code)
------------------------------
SN with one learnable gamma shared by all D layers (``sn-same-gamma``) against
one learnable gamma per layer (``sn-diff-gamma``); gamma multiplies the
normalized weight and the bias; WGAN-GP loss (lambda 10), Adam lr 1e-4, betas
(0.5, 0.9), 5 D updates per G update, trained by :func:`gradscope.train.train`
on the built-in 2D mixtures (and CIFAR-10 at ``paper`` scale). Recorded: every
layer's gamma, their spread (std over layers of ``log gamma``), the allocation
excess, per-sample input-gradient norms ``||grad_x D||`` (mean over the real
batch), the raw weight gradients, and sample quality at the end (modes covered
and high-quality fraction on the mixtures, FID on images). The paper's
expectation: per-layer gammas drift apart, gradients grow, quality drops.

Verdicts
--------
The allocation math is must-hold. The training comparisons are never
must-hold: with a handful of seeds a comparison is ``holds`` only when every
seed goes the claimed way by at least the stated margin, ``violated`` only when
every seed goes the other way by that margin (and never at ``tiny`` scale,
where runs are too short to judge), ``inconclusive`` otherwise; the gradient
and quality comparisons are ``inconclusive`` whenever the per-layer gammas did
not drift apart (then the two modes train alike and any difference is seed
noise, not the allocation). The drift of
the gammas (spread >= 0.05) is judged ``violated`` only at ``paper`` scale:
Adam moves a gamma by about the learning rate (1e-4) per step, so shorter
runs cannot show it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import minimize

from analyses.common import (INCONCLUSIVE, VIOLATED, AnalysisResult, Check, check_at_least, check_at_most,
                             start_result)
from gradscope.plot import style

CLAIM = "C4"
TITLE = "Equal allocation of the Lipschitz budget; one shared SN gamma vs one per layer (WGAN-GP)"
GAMMA_NORMS: tuple[str, ...] = ("sn-same-gamma", "sn-diff-gamma")
#: The authors' WGAN-GP setting (setting C of THEORY.md).
WGAN_GP = {"loss": "wgan-gp", "n_dis": 5, "lr_d": 1e-4, "lr_g": 1e-4, "betas": (0.5, 0.9)}

PARAMS = {
    "tiny": {"instances": 40, "seeds": 1, "datasets": ("ring8",),
             "train": {"iterations": 40, "batch_size": 64, "eval_samples": 1000}},
    "small": {"instances": 400, "seeds": 2, "datasets": ("ring8", "grid25"),
              "train": {"iterations": 600, "batch_size": 256, "eval_samples": 2000}},
    "paper": {"instances": 2000, "seeds": 5, "datasets": ("ring8", "grid25", "cifar10"),
              "train": {"iterations": 20000, "batch_size": 64, "eval_samples": 10000, "device": "auto"}},
}


# ----------------------------------------------------------------------------- the allocation math

def allocation_bound(g: np.ndarray) -> float:
    """``B(g) = sum_t prod_{i != t} g_i^2``, computed term by term (not through the identity).

    Examples
    --------
    >>> allocation_bound(np.array([1.0, 2.0, 4.0]))
    84.0
    """
    g = np.asarray(g, dtype=float)
    if g.ndim != 1 or len(g) < 1 or np.any(g <= 0):
        raise ValueError(f"g must be a non-empty vector of positive numbers, got {g!r}")
    return float(sum(np.prod(np.delete(g, t) ** 2) for t in range(len(g))))


def equal_allocation_minimum(C: float, L: int) -> float:
    """``L C^(2 - 2/L)``: the smallest ``B(g)`` with ``prod g = C`` (at ``g_t = C^(1/L)``)."""
    return L * C ** (2 - 2 / L)


def allocation_excess(g: np.ndarray) -> float:
    """``B(g) / (L C^(2-2/L))`` with ``C = prod g``: how much unequal allocation inflates the bound (>= 1).

    Examples
    --------
    >>> allocation_excess(np.array([2.0, 2.0, 2.0]))
    1.0
    """
    g = np.asarray(g, dtype=float)
    return allocation_bound(g) / equal_allocation_minimum(float(np.prod(g)), len(g))


def minimize_allocation(C: float, L: int, start: np.ndarray) -> np.ndarray:
    """Minimize ``B(g)`` over ``prod g = C`` with scipy (BFGS on ``L - 1`` free logarithms)."""
    def unpack(y: np.ndarray) -> np.ndarray:
        return np.exp(np.append(y, np.log(C) - y.sum()))

    result = minimize(lambda y: allocation_bound(unpack(y)) / C**2, np.log(start[:-1]), method="BFGS",
                      options={"gtol": 1e-12, "maxiter": 10000})
    return unpack(result.x)


def allocation_table(instances: int, seed: int) -> pd.DataFrame:
    """Random instances ``(L, C)``: scipy's optimum against ``C^(1/L)``, the identity
    ``B = C^2 sum g^-2`` and random feasible points against the minimum."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(instances):
        L = int(rng.integers(2, 9))
        C = float(np.exp(rng.uniform(-3, 3)))
        start = np.exp(rng.normal(0, 1, L))
        start *= (C / start.prod()) ** (1 / L)
        optimum = minimize_allocation(C, L, start)
        random_point = np.exp(rng.normal(0, 1.5, L))
        random_point *= (C / random_point.prod()) ** (1 / L)
        minimum = equal_allocation_minimum(C, L)
        rows.append({"instance": i, "L": L, "C": C, "scipy_min": allocation_bound(optimum), "theory_min": minimum,
                     "max_location_error": float(np.max(np.abs(optimum / C ** (1 / L) - 1))),
                     "identity_error": abs(allocation_bound(random_point) - C**2 * np.sum(random_point**-2.0))
                     / allocation_bound(random_point),
                     "random_excess": allocation_excess(random_point)})
    table = pd.DataFrame(rows)
    table["min_error"] = (table["scipy_min"] - table["theory_min"]).abs() / table["theory_min"]
    return table


def allocation_checks(table: pd.DataFrame) -> list[Check]:
    """Must-hold checks of the equal-allocation theorem."""
    n = f"{len(table)} random instances, L in 2..8, C in [e^-3, e^3]"
    return [
        check_at_most(CLAIM, "max |scipy min B - L C^(2-2/L)| / (L C^(2-2/L))", table["min_error"].max(), 1e-8,
                      rtol=0, detail=n),
        check_at_most(CLAIM, "max |g_t(scipy) / C^(1/L) - 1|", table["max_location_error"].max(), 1e-4, rtol=0,
                      detail=n),
        check_at_most(CLAIM, "max |sum_t prod_{i!=t} g_i^2 - C^2 sum_t g_t^-2| / B", table["identity_error"].max(),
                      1e-12, rtol=0, detail=n),
        check_at_least(CLAIM, "min over random feasible g of B(g) / (L C^(2-2/L))", table["random_excess"].min(),
                       1.0, rtol=1e-12, detail=n),
    ]


def gamma_gradients(bias_std: float, seed: int = 0) -> np.ndarray:
    """``gamma_t dL/dgamma_t`` per layer of a float64 ``sn-diff-gamma`` MLP for ``L = mean D(x)``,
    its biases drawn with standard deviation ``bias_std`` (0: bias-free)."""
    import torch
    from torch import nn

    from gradscope.models import MLPDiscriminator
    from gradscope.norms import normalize, parametrization_of

    torch.manual_seed(seed)
    D = MLPDiscriminator(hidden=32).double()
    with torch.no_grad():
        for module in D.modules():
            if isinstance(module, nn.Linear):
                module.bias.zero_()
                if bias_std > 0:
                    module.bias.normal_(0.0, bias_std)
    D = normalize(D, norm="sn-diff-gamma") or D
    gammas = [p.gamma for p in map(parametrization_of, D.modules()) if p is not None]
    loss = D(torch.randn(64, 2, dtype=torch.float64)).mean()
    grads = torch.autograd.grad(loss, gammas)
    return np.array([float((g * gamma).detach()) for g, gamma in zip(grads, gammas)])


def symmetry_checks(seed: int) -> list[Check]:
    """Per-layer gammas get equal log-gradients without biases (must hold), unequal with biases (reported)."""
    def spread(values: np.ndarray) -> float:
        return float((values.max() - values.min()) / max(np.abs(values).max(), 1e-300))

    return [
        check_at_most(CLAIM, "bias-free D: spread over layers of gamma_t dL/dgamma_t (relative)",
                      spread(gamma_gradients(0.0, seed)), 1e-9, rtol=0, detail="float64 MLP, sn-diff-gamma"),
        check_at_least(CLAIM, "D with biases (std 0.1): spread over layers of gamma_t dL/dgamma_t (relative)",
                       spread(gamma_gradients(0.1, seed)), 1e-3, rtol=0, must_hold=False,
                       detail="biases are what lets per-layer gammas drift apart"),
    ]


# ----------------------------------------------------------------------------- comparisons of runs

def paired_comparison(claim: str, quantity: str, worse: np.ndarray, better: np.ndarray, *, higher_is_worse: bool,
                      scale: str) -> Check:
    """Whether ``worse`` is worse than ``better`` seed by seed, judged on the 95 % interval over seeds.

    The effect is the paired ratio ``worse / better`` (:func:`analyses.stats.paired_log_ratio`),
    claimed above 1 when higher is worse and below 1 otherwise; ``measured`` is that ratio. At
    ``tiny`` scale a violation is reported as inconclusive (a few steps show nothing about training).

    Examples
    --------
    >>> paired_comparison("C4", "grad", np.array([2.0, 3.0, 2.5]), np.array([1.0, 1.1, 1.0]), higher_is_worse=True,
    ...                   scale="small").verdict
    'holds'
    """
    from analyses.stats import effect_check, paired_log_ratio

    worse, better = np.asarray(worse, dtype=float), np.asarray(better, dtype=float)
    if worse.shape != better.shape or worse.ndim != 1 or not len(worse):
        raise ValueError(f"need two equal-length non-empty vectors, got shapes {worse.shape} and {better.shape}")
    check = effect_check(claim, quantity, paired_log_ratio(better, worse),
                         "positive" if higher_is_worse else "negative")
    if check.verdict == VIOLATED and scale == "tiny":
        check = _soften(check, "tiny scale")
    return check


# ----------------------------------------------------------------------------- the training experiment

def gamma_history(run) -> pd.DataFrame:
    """Per recorded D step: every layer's gamma, their spread, product and allocation excess."""
    layers = run.layers
    gammas = layers[(layers["net"] == "D") & (layers["phase"] == "d") & (layers["stat"] == "gamma")]
    wide = gammas.pivot_table(index="step", columns="layer_index", values="value", aggfunc="last").sort_index()
    values = wide.to_numpy()
    return pd.DataFrame({"step": wide.index.to_numpy(), "spread": np.log(values).std(axis=1),
                         "product": values.prod(axis=1), "excess": [allocation_excess(g) for g in values],
                         **{f"gamma_{c}": wide[c].to_numpy() for c in wide.columns}})


def _tail_mean(series: pd.Series) -> float:
    return float(series.iloc[-max(1, len(series) // 4):].mean())


def run_summary(run, metrics: dict[str, float]) -> dict[str, float]:
    """End-of-run numbers of one run: spread, excess, product, tail-mean gradients, sample quality."""
    history = gamma_history(run)
    scalars = run.scalars.set_index("name")
    layers = run.layers[(run.layers["net"] == "D") & (run.layers["phase"] == "d")]
    raw = layers[layers["stat"] == "grad_w_raw_norm"].groupby("step")["value"].apply(lambda v: np.sqrt((v**2).sum()))
    slopes = scalars.loc["slope_real_mean"].sort_values("step")["value"]
    return {"final_spread": float(history["spread"].iloc[-1]), "final_excess": float(history["excess"].iloc[-1]),
            "final_product": float(history["product"].iloc[-1]), "slope_real": _tail_mean(slopes),
            "grad_raw": _tail_mean(raw.sort_index()), **metrics}


def train_pairs(params: dict, out: Path, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train both gamma modes on every dataset and seed; return per-run summaries and gamma histories."""
    from analyses.training import train_run

    summaries, histories = [], []
    settings = {**WGAN_GP, **params["train"]}
    settings["eval_every"] = settings["iterations"]
    for dataset in params["datasets"]:
        for s in range(seed, seed + params["seeds"]):
            for norm in GAMMA_NORMS:
                run, result = train_run(out / "runs" / f"{dataset}-{norm}-s{s}", norm=norm, dataset=dataset, seed=s,
                                        **settings)
                labels = {"dataset": dataset, "seed": s, "norm": norm}
                summaries.append({**labels, **run_summary(run, result.metrics)})
                histories.append(gamma_history(run).assign(**labels))
    return pd.DataFrame(summaries), pd.concat(histories, ignore_index=True)


#: (column, what it says, higher is worse) of the comparisons; the first quality column present is used.
COMPARED = (("final_spread", "std over layers of log gamma at the end (gammas drift apart)", True),
            ("final_excess", "allocation excess B(gamma) / (L C^(2-2/L)) at the end", True),
            ("slope_real", "mean ||grad_x D|| on real data, last quarter of training", True),
            ("grad_raw", "||grad_theta L_D|| (raw weights), last quarter of training", True),
            ("modes_covered", "modes covered at the end", False),
            ("high_quality_fraction", "high-quality sample fraction at the end", False),
            ("inception_fid", "FID at the end", True))


def experiment_checks(summary: pd.DataFrame, scale: str) -> list[Check]:
    """Per dataset, sn-diff-gamma (claimed worse) against sn-same-gamma, seed by seed."""
    checks = []
    for dataset, rows in summary.groupby("dataset", sort=False):
        same = rows[rows["norm"] == "sn-same-gamma"].sort_values("seed")
        diff = rows[rows["norm"] == "sn-diff-gamma"].sort_values("seed")
        for column, what, higher_is_worse in COMPARED:
            if column not in rows or rows[column].isna().all():
                continue
            if column == "final_spread":  # same-gamma's spread is 0 by construction: compare with the margin
                checks.append(check_at_least(CLAIM, f"{dataset}: sn-diff-gamma {what}", diff[column].min(), 0.05,
                                             rtol=0, must_hold=False, detail="holds when every seed's spread >= 0.05 "
                                             "(gammas ~5% apart); same-gamma is 0 by construction"))
                if checks[-1].verdict == VIOLATED and scale != "paper":
                    # Adam moves a gamma by ~lr per step: short runs cannot show the drift.
                    checks[-1] = _soften(checks[-1], "too few updates for the gammas to drift")
                continue
            check = paired_comparison(CLAIM, f"{dataset}: sn-diff-gamma vs sn-same-gamma, {what}",
                                      diff[column].to_numpy(), same[column].to_numpy(),
                                      higher_is_worse=higher_is_worse, scale=scale)
            if diff["final_spread"].min() < 0.05 and column != "final_excess":
                # Without a drift of the gammas the two modes train alike, and a difference is seed noise.
                check = _soften(check, "the gammas did not drift apart, so a difference is not due to the allocation")
            checks.append(check)
    return checks


def _soften(check: Check, why: str) -> Check:
    """``check`` made ``inconclusive``, with the reason appended to its detail."""
    return Check(check.claim, check.quantity, check.measured, check.bound_or_prediction, INCONCLUSIVE,
                 check.must_hold, check.relation, f"{check.detail}; inconclusive: {why}")


def plot_gammas(history: pd.DataFrame, summary: pd.DataFrame):
    """Gammas over training per layer (per-layer mode) and the shared gamma; spread and excess over training."""
    fig, axes = style.new_figure(1, 3, panel_size=(3.4, 2.8),
                                 title="C4: learnable SN gammas under WGAN-GP, shared vs per layer")
    first = history[history["seed"] == history["seed"].min()]
    dataset = first["dataset"].iloc[0]
    shown = first[first["dataset"] == dataset]
    gamma_columns = [c for c in shown.columns if c.startswith("gamma_")]
    for norm, linestyle in zip(GAMMA_NORMS, ("--", "-")):
        rows = shown[shown["norm"] == norm]
        for i, column in enumerate(gamma_columns if norm == "sn-diff-gamma" else gamma_columns[:1]):
            label = f"layer {column.split('_')[1]}" if norm == "sn-diff-gamma" else "shared gamma (same-gamma)"
            axes[0, 0].plot(rows["step"], rows[column], linestyle=linestyle,
                            color=style.color(i) if norm == "sn-diff-gamma" else style.THEORY_COLOR, label=label)
    style.label_axes(axes[0, 0], "iteration", "gamma (dimensionless)", f"{dataset}, seed {first['seed'].min()}")
    for j, (column, label) in enumerate((("spread", "std over layers of log gamma"),
                                         ("excess", "allocation excess B / (L C^(2-2/L))"))):
        ax = axes[0, j + 1]
        for i, ((data, norm, seed), rows) in enumerate(history.groupby(["dataset", "norm", "seed"], sort=False)):
            ax.plot(rows["step"], rows[column], color=style.color(GAMMA_NORMS.index(norm)),
                    linestyle=style.LINESTYLES[list(dict.fromkeys(history["dataset"])).index(data) % 4],
                    alpha=0.8, label=f"{data} {norm} s{seed}")
        style.label_axes(ax, "iteration", label, label)
    style.theory_line(axes[0, 2], 1.0, "equal allocation")
    for ax in axes[0]:
        style.legend(ax, loc="best")
    return fig


def run(scale: str, out: Path, seed: int = 0) -> AnalysisResult:
    """Run C4 at ``scale`` into ``out``; see the module docstring for what is measured and judged."""
    params, result = start_result(CLAIM, TITLE, scale, out, PARAMS)
    table = allocation_table(params["instances"], seed)
    result.add_table("c4_allocation", table)
    result.add(*allocation_checks(table))
    result.add(*symmetry_checks(seed))
    summary, history = train_pairs(params, result.out, seed)
    result.add_table("c4_runs", summary)
    result.add_table("c4_gamma_history", history)
    result.add(*experiment_checks(summary, scale))
    result.add_figure(plot_gammas(history, summary), "c4_gammas")
    result.notes.append("final gammas and metrics per run: " + "; ".join(
        f"{r.dataset}/{r.norm}/s{r.seed}: spread {r.final_spread:.3g}, excess {r.final_excess:.4g}, "
        f"slope {r.slope_real:.3g}" for r in summary.itertuples()))
    return result
