"""C3: the curvature of D in one layer's raw weight under SN, bounded and measured.

Claim (THEORY.md, C3)
---------------------
For (leaky) ReLU discriminators under SN the Hessian of ``D`` with respect to
a layer's weight is bounded. This module derives the bound, checks it, and
records the top Hessian eigenvalue per layer over training.

Derivation
----------
Fix every layer but ``t`` at its normalized weight ``W_bar_i`` and write
``D(W) = f(N(W))`` with ``N(W) = W / sigma(W)`` the normalization of layer
``t``'s raw weight ``W`` and ``M(W)`` the matrix SN takes the norm of (``W``, or
the ``(c_out, c_in k k)`` reshape of a kernel). A bias-free (leaky) ReLU net is
piecewise linear in ``W_bar_t`` (the input of layer ``t`` does not depend on
it, and with the activation pattern fixed everything after it is linear), so
``f`` has zero second derivative almost everywhere: the un-normalized diagonal
block ``H_{W_bar_t W_bar_t}`` vanishes and all curvature comes from ``N``.
With ``G = grad f`` (locally constant), ``sigma = sigma(W)``, a direction ``E``
with ``||E||_F = 1`` and ``a = <u v^T, E>`` (``|a| <= 1``):

    E^T H E = <G, N''[E, E]> = (-2 a <G, E> + 2 a^2 D(x)) / sigma^2 - (D(x) / sigma) sigma''[E, E],

using ``<G, W> = sigma <G, W_bar> = sigma D(x)`` (Euler, see C2). Two cases:

- **power-iteration SN as implemented** (Miyato, torch, :mod:`gradscope.norms`):
  ``sigma = u^T M(W) v`` with ``u``, ``v`` held constant (no gradient through the
  power iteration), so ``sigma'' = 0`` and

      ||H_{W_t} D||_2 <= 2 (||G||_F + |D(x)|) / sigma^2;

- **exact SN** (``sigma = ||M(W)||_2`` differentiated through the SVD): ``sigma`` is
  convex with ``0 <= sigma''[E, E] <= 2 (1 - a^2) / (sigma_1 - sigma_2)`` (second-order
  perturbation of the top eigenvalue of the dilation ``[[0, M], [M^T, 0]]``, whose
  other eigenvalues lie at least ``sigma_1 - sigma_2`` below; ``sigma_2 = 0`` for a
  single row), so with ``kappa = sigma_1 / (sigma_1 - sigma_2) >= 1``

      ||H_{W_t} D||_2 <= 2 (||G||_F + kappa |D(x)|) / sigma^2.

No constant free of the spectral gap exists for exact SN: ``sigma`` is not twice
differentiable where ``sigma_1 = sigma_2`` and the curvature grows like ``1 / gap``
(the planted case checks this). With C1's ``||G|| <= rho_t ||x|| prod_{i!=t} s_i``
and ``|D(x)| <= ||x|| prod_i s_i`` (``s_i`` the operator norms of the normalized
weights, ``rho_t`` the weight-sharing factor ``sqrt(N_t)``) the a-priori form is

    ||H_{W_t} D||_2 <= c_t ||x|| / sigma(W_t)^2,   c_t = 2 (rho_t prod_{i!=t} s_i + kappa prod_i s_i),

i.e. ``c = 4`` for a dense layer under power-iteration SN with every ``s_i = 1``.
For the objective ``mean_i D(x_i)`` over a batch the bounds average.

How it is measured
------------------
``||H||_2`` (the eigenvalue of largest magnitude, with its sign) by symmetric
Lanczos on ``H`` itself from Hessian-vector products (double backward),
:func:`gradscope.linalg.hessian_extremes`, to a relative Ritz residual of 1e-8,
checked against the dense float64 Hessian on the small layers. Power iteration
on ``H`` can stall: the last (single-output) layer's Hessian has an exactly
symmetric pair ``+-lambda`` (there ``u^T G v = D``), so a Rayleigh quotient of
power iterates does not converge to ``+-lambda``; Lanczos keeps both ends of
the spectrum in one Krylov space.

Assumptions
-----------
Bias-free MLP and SNDCGAN discriminators in float64; exact singular vectors
(SVD) in both cases; raw weights from the reference initialization and from
the checkpoints of a short SN training run (:func:`gradscope.train.train`),
whose curvature is that of power-iteration SN.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn
from torch.func import functional_call

from analyses.c2_raw_gradient import spectral_normalize, top_singular_pair
from analyses.common import HOLDS, INCONCLUSIVE, AnalysisResult, Check, check_at_most, planted, start_result
from analyses.plain_networks import DTYPE, normalized_copy, plain_discriminator
from analyses.probe import real_batch
from analyses.training import train_checkpoints
from gradscope._checks import check_choice
from gradscope.linalg import SymmetricExtremes, hessian_extremes, reshape_weight, weight_layers
from gradscope.models import MLPDiscriminator, SNDCGANDiscriminator
from gradscope.plot import style

CLAIM = "C3"
TITLE = "Curvature of D in each layer's raw weight under SN: derived bound and top Hessian eigenvalue"
SN_MODES: tuple[str, ...] = ("power", "exact")
HESSIAN_TOL = 1e-8
#: Layers with at most this many weights also get a dense Hessian (the oracle of the HVP estimate).
DENSE_MAX_WEIGHTS = 512

PARAMS = {
    "tiny": {"image_size": 8, "batch": 4, "exact_nets": ("mlp",),
             "train": {"dataset": "ring8", "iterations": 60, "batch_size": 64, "checkpoint_every": 20}},
    "small": {"image_size": 16, "batch": 8, "exact_nets": ("mlp", "sndcgan"),
              "train": {"dataset": "ring8", "iterations": 1500, "batch_size": 256, "checkpoint_every": 250}},
    "paper": {"image_size": 32, "batch": 16, "exact_nets": ("mlp", "sndcgan"),
              "train": {"dataset": "ring8", "iterations": 10000, "batch_size": 256, "checkpoint_every": 1000}},
}


def layer_objective(net: nn.Module, name: str, raw: Tensor, x: Tensor, mode: str) -> Callable[[Tensor], Tensor]:
    """``W -> mean_i D(x_i)`` with layer ``name`` computing with ``N(W)`` and the others as in ``net``.

    ``mode="exact"``: ``N(W) = W / ||M(W)||_2`` through the SVD; ``mode="power"``:
    ``N(W) = W / (u^T M(W) v)`` with ``u``, ``v`` the top singular vectors of ``M(raw)``
    held constant, as power-iteration SN differentiates.
    """
    check_choice("SN mode", mode, SN_MODES)
    _, u, v = top_singular_pair(reshape_weight(raw.to(DTYPE)))

    def objective(w: Tensor) -> Tensor:
        bar = spectral_normalize(w) if mode == "exact" else w / (u @ reshape_weight(w) @ v)
        return functional_call(net, {f"{name}.weight": bar}, (x,)).mean()

    return objective


def layer_hessian(objective: Callable[[Tensor], Tensor], w: Tensor, *, tol: float = HESSIAN_TOL,
                  max_iter: int = 500, seed: int = 0) -> SymmetricExtremes:
    """Extreme eigenvalues of the Hessian of ``objective`` at ``w`` (:func:`gradscope.linalg.hessian_extremes`).

    ``.norm`` is ``||H||_2`` (a lower bound until ``.converged``), ``.value`` that
    eigenvalue with its sign; the Lanczos start vector is Gaussian from ``seed``.

    Examples
    --------
    >>> w = torch.tensor([1.0, 2.0], dtype=torch.float64)
    >>> res = layer_hessian(lambda t: t[0] ** 2 - 3 * t[1] ** 2, w)
    >>> round(res.norm, 6), round(res.value, 6), res.converged
    (6.0, -6.0, True)
    """
    point = w.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(objective(point), point, create_graph=True)
    return hessian_extremes(grad, point, tol=tol, max_iter=max_iter, warn=False,
                            generator=torch.Generator(device=w.device).manual_seed(seed))


def dense_hessian(objective: Callable[[Tensor], Tensor], w: Tensor) -> Tensor:
    """The full Hessian of ``objective`` at ``w`` as an ``(n, n)`` matrix (small ``w`` only)."""
    n = w.numel()
    flat = torch.autograd.functional.hessian(lambda t: objective(t.reshape(w.shape)), w.detach().reshape(n))
    return flat.reshape(n, n)


def curvature_rows(raw_net: nn.Module, x: Tensor, modes: tuple[str, ...], *, dense: bool = False,
                   **labels: object) -> pd.DataFrame:
    """``||H_{W_t} mean_i D(x_i)||`` and the derived bounds for every layer of a plain bias-free net of raw weights."""
    example = x[:1]
    normalized, sigmas = normalized_copy(raw_net, example, "popular")
    op = np.array([s["sigma_op"] for s in sigmas])
    layers = weight_layers(normalized, example)
    raw_layers = weight_layers(raw_net, example)
    values, grads = [], []
    for i in range(len(x)):
        value = normalized(x[i:i + 1]).sum()
        values.append(abs(float(value.detach())))
        grads.append([float(torch.linalg.vector_norm(g))
                      for g in torch.autograd.grad(value, [layer.module.weight for layer in layers])])
    values, grads = np.array(values), np.array(grads)
    x_norm = torch.linalg.vector_norm(x.reshape(len(x), -1), dim=1).numpy()
    rows = []
    for t, (layer, raw_layer) in enumerate(zip(layers, raw_layers)):
        raw = raw_layer.module.weight.detach()
        singular = torch.linalg.svdvals(reshape_weight(raw))
        sigma = float(singular[0])
        kappa_exact = sigma / (sigma - (float(singular[1]) if len(singular) > 1 else 0.0))
        for mode in modes:
            objective = layer_objective(normalized, layer.name, raw, x, mode)
            extremes = layer_hessian(objective, raw)
            kappa = kappa_exact if mode == "exact" else 1.0
            row = {**labels, "mode": mode, "layer_index": layer.index, "layer": layer.name, "kind": layer.kind,
                   "weights": raw.numel(), "sigma_raw": sigma, "kappa": kappa, "hessian_norm": extremes.norm,
                   "hessian_signed": extremes.value, "converged": extremes.converged,
                   "bound_data": float(np.mean(2 * (grads[:, t] + kappa * values))) / sigma**2,
                   "bound": float(np.mean(2 * x_norm * (sigmas[t]["overlap"] * np.prod(np.delete(op, t))
                                                         + kappa * op.prod()))) / sigma**2,
                   "gap_free_bound_data": float(np.mean(2 * (grads[:, t] + values))) / sigma**2}
            if dense and raw.numel() <= DENSE_MAX_WEIGHTS:
                row["hessian_norm_dense"] = float(torch.linalg.eigvalsh(dense_hessian(objective, raw)).abs().max())
            rows.append(row)
    table = pd.DataFrame(rows)
    table["ratio"] = table["hessian_norm"] / table["bound"]
    table["ratio_data"] = table["hessian_norm"] / table["bound_data"]
    return table


def near_degenerate_net(gap: float = 1e-3) -> tuple[nn.Module, Tensor, Tensor]:
    """A bias-free 2-layer ReLU net whose first raw weight has ``sigma_1 - sigma_2 = gap`` (planted case).

    Returns the plain net (its weights normalized), the raw first weight and an input.
    """
    net = nn.Sequential(nn.Linear(2, 2, bias=False), nn.ReLU(), nn.Linear(2, 1, bias=False)).to(DTYPE)
    rotation = torch.tensor([[0.6, -0.8], [0.8, 0.6]], dtype=DTYPE)
    raw = rotation @ torch.diag(torch.tensor([1.0, 1.0 - gap], dtype=DTYPE)) @ rotation.T
    with torch.no_grad():
        net[0].weight.copy_(raw / torch.linalg.matrix_norm(raw, ord=2))
        net[2].weight.copy_(torch.tensor([[1.0, 1.0]], dtype=DTYPE) / 2**0.5)
    return net, raw, torch.tensor([[1.0, 0.5]], dtype=DTYPE)


def planted_check(gap: float = 1e-3) -> tuple[list[Check], dict[str, float]]:
    """Exact SN near a degenerate top singular value against the gap-free constant (expected violated),
    and against the gap-aware bound (must hold)."""
    normalized, raw, x = near_degenerate_net(gap)
    norm = layer_hessian(layer_objective(normalized, "0", raw, x, "exact"), raw).norm
    value = abs(float(normalized(x).sum().detach()))
    (G,) = torch.autograd.grad(normalized(x).sum(), normalized[0].weight)
    G_norm = float(torch.linalg.vector_norm(G))
    sigma = float(torch.linalg.matrix_norm(raw, ord=2))
    kappa = 1 / gap
    gap_free, gap_aware = 2 * (G_norm + value) / sigma**2, 2 * (G_norm + kappa * value) / sigma**2
    numbers = {"hessian_norm": norm, "gap_free_bound": gap_free, "gap_aware_bound": gap_aware, "kappa": kappa}
    return [
        planted(check_at_most(CLAIM, f"planted: exact SN, sigma_1 - sigma_2 = {gap:g}: ||H|| / (2 (||G|| + |D|) "
                              "/ sigma^2) (a gap-free constant)", norm / gap_free, 1.0,
                              detail="expected violated: exact-SN curvature grows like 1 / gap")),
        check_at_most(CLAIM, f"planted net: ||H|| / (2 (||G|| + kappa |D|) / sigma^2), kappa = {kappa:g}",
                      norm / gap_aware, 1.0),
    ], numbers


def _with_convergence(check: Check, rows: pd.DataFrame) -> Check:
    # An unconverged estimate is a lower bound of ||H||: it cannot support "holds".
    if check.verdict == HOLDS and not rows["converged"].all():
        return replace(check, verdict=INCONCLUSIVE,
                       detail=check.detail + f"; {int((~rows['converged']).sum())} estimates did not converge")
    return check


def curvature_checks(table: pd.DataFrame) -> list[Check]:
    """The HVP estimate against the dense Hessian, and the derived bounds in both SN modes."""
    checks = []
    dense = table.dropna(subset=["hessian_norm_dense"]) if "hessian_norm_dense" in table else table.iloc[:0]
    if len(dense):
        error = ((dense["hessian_norm"] - dense["hessian_norm_dense"]).abs() / dense["hessian_norm_dense"]).max()
        checks.append(check_at_most(CLAIM, "max | ||H|| by HVP Lanczos - dense float64 Hessian | / dense", error, 1e-6,
                                    rtol=0, detail=f"{len(dense)} layers with <= {DENSE_MAX_WEIGHTS} weights"))
    for mode in SN_MODES:
        rows = table[table["mode"] == mode]
        if not len(rows):
            continue
        form = "2(||G|| + |D|)/sigma^2" if mode == "power" else "2(||G|| + kappa |D|)/sigma^2"
        where = f"{len(rows)} (layer, state) pairs; {', '.join(rows['net'].unique())}"
        checks += [
            _with_convergence(check_at_most(CLAIM, f"{mode} SN: max ||H_W_t D|| / {form} (data form)",
                                            rows["ratio_data"].max(), 1.0, detail=where), rows),
            _with_convergence(check_at_most(CLAIM, f"{mode} SN: max ||H_W_t D|| / (c_t mean||x|| / sigma^2) "
                                            "(a-priori form)", rows["ratio"].max(), 1.0, detail=where), rows),
        ]
    return checks


def plot_curvature(table: pd.DataFrame):
    """Per layer at init: ||H|| and its bound per mode; over training: ||H|| per layer and the data bound."""
    fig, axes = style.new_figure(1, 3, panel_size=(3.4, 2.8),
                                 title="C3: top |eigenvalue| of the Hessian of mean D(x) in each raw weight")
    init = table[table["state"] == "init"]
    for col, net in enumerate(("mlp", "sndcgan")):
        ax = axes[0, col]
        for i, mode in enumerate(SN_MODES):
            rows = init[(init["net"] == net) & (init["mode"] == mode)]
            if not len(rows):
                continue
            ax.plot(rows["layer_index"], rows["hessian_norm"], marker="o", color=style.color(i),
                    label=f"{mode} SN: ||H||")
            ax.plot(rows["layer_index"], rows["bound_data"], linestyle="--", color=style.color(i),
                    label=f"{mode} SN: data bound")
        style.label_axes(ax, "layer (input to output)", "||H|| (D per unit weight^2)",
                         f"{net} at init", logy=True)
        style.integer_ticks(ax)
        style.legend(ax, loc="best")
    ax = axes[0, 2]
    trained = table[table["state"] == "trained-sn"]
    for i, ((net, layer), rows) in enumerate(trained.groupby(["net", "layer_index"])):
        ax.plot(rows["step"], rows["hessian_norm"], marker="o", **style.series_style(i), label=f"{net} layer {layer}")
        ax.plot(rows["step"], rows["bound_data"], linestyle=":", color=style.color(i), linewidth=0.9)
    style.label_axes(ax, "training iteration", "||H|| (D per unit weight^2)", "SN training (dotted: data bound)",
                     logy=True)
    style.legend(ax, loc="best", ncol=2)
    return fig


def run(scale: str, out: Path, seed: int = 0) -> AnalysisResult:
    """Run C3 at ``scale`` into ``out``; see the module docstring for what is measured and judged."""
    params, result = start_result(CLAIM, TITLE, scale, out, PARAMS)
    torch.manual_seed(seed)
    size = params["image_size"]
    nets = {"mlp": (MLPDiscriminator(), real_batch("ring8", params["batch"], seed)),
            "sndcgan": (SNDCGANDiscriminator(size, 3), real_batch("digits", params["batch"], seed, size))}
    frames = []
    for net, (model, x) in nets.items():
        modes = SN_MODES if net in params["exact_nets"] else ("power",)
        frames.append(curvature_rows(plain_discriminator(model, raw=True), x, modes, dense=True, net=net,
                                     state="init", step=0))
    settings = params["train"]
    x = real_batch(settings["dataset"], params["batch"], seed)
    for step, D in train_checkpoints(result.out / "runs" / "mlp-sn", "sn", seed, settings):
        frames.append(curvature_rows(plain_discriminator(D, raw=True), x, ("power",), net="mlp",
                                     state="trained-sn", step=step))
    table = pd.concat(frames, ignore_index=True)
    result.add_table("c3_hessian", table)
    result.add(*curvature_checks(table))
    planted_cases, numbers = planted_check()
    result.add(*planted_cases)
    result.add_figure(plot_curvature(table), "c3_curvature")
    result.notes.append("planted near-degenerate exact SN: " + ", ".join(f"{k} {v:.4g}" for k, v in numbers.items()))
    worst = table.groupby("mode")["ratio_data"].max()
    result.notes.append("largest ||H|| / data bound per mode: " + ", ".join(f"{m} {v:.3f}" for m, v in worst.items()))
    return result
