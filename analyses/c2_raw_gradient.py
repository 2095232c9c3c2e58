"""C2: the gradient with respect to the raw (un-normalized) weight shrinks like 1 / sigma(W).

Claim (THEORY.md, C2)
---------------------
With spectral normalization ``W_bar = W / sigma(W)`` (``sigma`` the largest
singular value of the matrix ``M(W)`` that SN divides by: ``W`` itself for a
dense layer, the ``(c_out, c_in k k)`` reshape for a convolution) and
``G = grad_{W_bar} D``,

    grad_W D = (1 / sigma) (G - <G, W_bar> u v^T)                       (1)

with ``u``, ``v`` the top singular vectors of ``M(W)`` (``u v^T`` reshaped back
to ``W``'s shape), and, for a bias-free positively homogeneous net,
``<G, W_bar> = D(x)``, so

    ||grad_W D||_F <= (||G||_F + |D(x)|) / sigma <= 2 ||x|| / sigma(W)      (2)

when every layer has operator norm 1 (exact SN of dense layers).

Derivation
----------
(1): where the top singular value is simple, ``d sigma = u^T dM v = <u v^T, dW>``.
Then ``d W_bar = dW / sigma - W d sigma / sigma^2`` and
``dD = <G, dW_bar> = <G, dW> / sigma - <G, W> <u v^T, dW> / sigma^2``, which
is (1) since ``<G, W> / sigma = <G, W_bar>``.

Euler: D is positively homogeneous of degree 1 in ``W_bar_t`` (scaling one
layer's weight by ``c > 0`` scales every later pre-activation by ``c`` because
``a(c z) = c a(z)``, and there are no biases), so
``<grad_{W_bar} D, W_bar> = d/dc D(c W_bar)|_{c=1} = D(x)``.

(2): ``||u v^T||_F = 1``, so ``||G - D u v^T|| <= ||G|| + |D|``. By C1,
``||G|| <= rho_t ||x|| prod_{i != t} ||W_bar_i||_op`` and
``|D(x)| = |D(x) - D(0)| <= ||x|| prod_i ||W_bar_i||_op`` (``rho_t = sqrt(N_t)``
the weight-sharing factor of a convolution, 1 for a dense layer). Under exact
SN of dense layers every ``||W_bar_i||_op = 1``: the bound is ``2 ||x|| / sigma``.
For the SNDCGAN under popular (reshape) SN the operator norms exceed 1 and the
bound checked is the general ``(rho_t ||x|| prod_{i!=t} s_i + ||x|| prod_i s_i) / sigma``
with ``s_i`` the measured operator norms; the paper's ``2 ||x|| / sigma`` is
reported next to it without being a theorem there.

Assumptions
-----------
- Bias-free nets (the library's MLP and SNDCGAN with biases removed), float64.
- Exact sigma and exact singular vectors (SVD of ``M(W)``), differentiated
  through by autograd to give the reference ``grad_W D``. SN as trained uses
  one power-iteration step per update; its ``u``, ``v`` are treated as
  constants, which gives (1) with the iterates in place of the exact vectors.
- Raw weights: the reference initialization (SNDCGAN dcgan, MLP xavier), and
  the raw weights of a short SN training run's last checkpoint.
- sigma over training is the SN layer's own running estimate (the recorder's
  ``sigma``), read from a run of :func:`gradscope.train.train`.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn
from torch.func import functional_call

from analyses.common import (INCONCLUSIVE, VIOLATED, AnalysisResult, Check, check_at_least, check_at_most,
                             start_result)
from analyses.plain_networks import DTYPE, normalized_copy, plain_discriminator
from analyses.probe import probe_inputs, real_batch
from analyses.training import checkpoint_discriminators
from gradscope.linalg import reshape_weight, weight_layers
from gradscope.models import MLPDiscriminator, SNDCGANDiscriminator
from gradscope.plot import style

CLAIM = "C2"
TITLE = "Raw-weight gradients under SN are bounded by 2||x|| / sigma(W) and shrink as sigma grows"
#: float64 round-off allowance of the formula and Euler-identity checks (relative).
IDENTITY_RTOL = 1e-9

PARAMS = {
    "tiny": {"image_size": 8, "samples": 3,
             "train": {"mlp": {"dataset": "ring8", "iterations": 60, "batch_size": 64, "checkpoint_every": 60}}},
    "small": {"image_size": 16, "samples": 6,
              "train": {"mlp": {"dataset": "ring8", "iterations": 1500, "batch_size": 256, "checkpoint_every": 1500},
                        "sndcgan": {"dataset": "digits", "image_size": 16, "iterations": 400, "batch_size": 64,
                                    "checkpoint_every": 400}}},
    "paper": {"image_size": 32, "samples": 16,
              "train": {"mlp": {"dataset": "ring8", "iterations": 10000, "batch_size": 256,
                                "checkpoint_every": 10000},
                        "sndcgan": {"dataset": "cifar10", "image_size": 32, "iterations": 20000, "batch_size": 64,
                                    "lr_d": 1e-4, "lr_g": 1e-4, "checkpoint_every": 20000}}},
}


def top_singular_pair(matrix: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(sigma, u, v)``: the largest singular value of ``matrix`` and its unit singular vectors (SVD)."""
    if matrix.ndim != 2:
        raise ValueError(f"expected a matrix, got shape {tuple(matrix.shape)}")
    U, S, Vh = torch.linalg.svd(matrix.detach(), full_matrices=False)
    return S[0], U[:, 0], Vh[0]


def spectral_normalize(raw: Tensor) -> Tensor:
    """``raw / ||M(raw)||_2`` with ``M`` the ``(out, rest)`` reshape, differentiable through the exact SVD."""
    return raw / torch.linalg.matrix_norm(reshape_weight(raw), ord=2)


def raw_gradient_formula(G: Tensor, raw: Tensor, pair: tuple[Tensor, Tensor, Tensor] | None = None) -> Tensor:
    """Formula (1): ``grad_W D = (G - <G, W_bar> u v^T) / sigma`` from ``G = grad_{W_bar} D``.

    ``pair`` is :func:`top_singular_pair` of the raw weight's reshape (computed when not given).

    Examples
    --------
    For ``D = <c, W_bar>`` (so ``G = c``) it matches autograd:

    >>> W = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    >>> c = torch.randn(3, 4, dtype=torch.float64)
    >>> (auto,) = torch.autograd.grad((c * spectral_normalize(W)).sum(), W)
    >>> bool(torch.allclose(raw_gradient_formula(c, W.detach()), auto))
    True
    """
    raw, G = raw.detach().to(DTYPE), G.to(DTYPE)
    sigma, u, v = top_singular_pair(reshape_weight(raw)) if pair is None else pair
    projection = torch.outer(u, v).reshape(raw.shape)
    return (G - torch.sum(G * raw / sigma) * projection) / sigma


def layer_rows(raw_net: nn.Module, inputs: dict[str, Tensor], **labels: object) -> pd.DataFrame:
    """For every sample and layer of a plain bias-free net holding *raw* weights, under exact SN:
    autograd's ``grad_W D``, formula (1), the Euler identity and bound (2).
    """
    example = next(iter(inputs.values()))[:1]
    normalized, sigmas = normalized_copy(raw_net, example, "popular")
    op = np.array([s["sigma_op"] for s in sigmas])
    raw_layers = weight_layers(raw_net, example)
    bar_layers = weight_layers(normalized, example)
    samples = [(kind, i, x[i:i + 1]) for kind, x in inputs.items() for i in range(len(x))]
    values, G_per_sample = [], []
    for _, _, xi in samples:
        value = normalized(xi).sum()
        values.append(float(value.detach()))
        G_per_sample.append(torch.autograd.grad(value, [layer.module.weight for layer in bar_layers]))
    rows = []
    for t, (raw_layer, bar_layer) in enumerate(zip(raw_layers, bar_layers)):
        raw = raw_layer.module.weight.detach().clone().requires_grad_(True)
        w_bar = spectral_normalize(raw)  # one differentiable SVD per layer, reused by every sample
        pair = top_singular_pair(reshape_weight(raw.detach()))
        sigma = float(pair[0])
        others = np.prod(np.delete(op, t))
        for (kind, i, xi), value, G_all in zip(samples, values, G_per_sample):
            G = G_all[t]
            out = functional_call(normalized, {f"{bar_layer.name}.weight": w_bar}, (xi,)).sum()
            (auto,) = torch.autograd.grad(out, raw, retain_graph=True)
            formula = raw_gradient_formula(G, raw, pair)
            x_norm = float(torch.linalg.vector_norm(xi))
            G_norm, auto_norm = float(torch.linalg.vector_norm(G)), float(torch.linalg.vector_norm(auto))
            bar = bar_layer.module.weight.detach()
            rows.append({
                **labels, "input": kind, "sample": i, "layer_index": raw_layer.index, "layer": raw_layer.name,
                "kind": raw_layer.kind, "x_norm": x_norm, "D": value, "sigma_raw": sigma,
                "grad_raw": auto_norm, "grad_bar": G_norm,
                "formula_error": float(torch.linalg.vector_norm(formula - auto)) / max(auto_norm, 1e-300),
                "euler_error": abs(float(torch.sum(G * bar)) - value)
                / max(G_norm * float(torch.linalg.vector_norm(bar)), 1e-300),
                "bound_paper": 2 * x_norm / sigma,
                "bound": (sigmas[t]["overlap"] * x_norm * others + x_norm * op.prod()) / sigma,
                "data_bound": (G_norm + abs(value)) / sigma})
    table = pd.DataFrame(rows)
    table["ratio"] = table["grad_raw"] / table["bound"]
    table["ratio_paper"] = table["grad_raw"] / table["bound_paper"]
    return table


def sigma_history(run_dir: Path) -> pd.DataFrame:
    """The SN layers' running sigma and raw-gradient norms over a recorded run (D updates only)."""
    from gradscope.record import load_run

    layers = load_run(run_dir).layers
    rows = layers[(layers["net"] == "D") & (layers["phase"] == "d")
                  & layers["stat"].isin(["sigma", "grad_w_raw_norm", "grad_w_eff_norm"])]
    table = rows.pivot_table(index=["step", "layer_index", "layer"], columns="stat", values="value").reset_index()
    table.columns.name = None
    return table


def _measure_all(params: dict, out: Path, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    from analyses.training import train_run

    torch.manual_seed(seed)
    size = params["image_size"]
    frames = []
    nets = {"mlp": (MLPDiscriminator(), "ring8", None), "sndcgan": (SNDCGANDiscriminator(size, 3), "digits", size)}
    for net, (model, dataset, image_size) in nets.items():
        inputs = probe_inputs(real_batch(dataset, params["samples"], seed, image_size), seed)
        frames.append(layer_rows(plain_discriminator(model, raw=True), inputs, net=net, state="init", step=0))
    histories = []
    for net, settings in params["train"].items():
        run_dir = out / "runs" / f"{net}-sn"
        train_run(run_dir, norm="sn", seed=seed, keep_checkpoints=0, **settings)
        step, D = checkpoint_discriminators(run_dir)[-1]
        inputs = probe_inputs(real_batch(settings["dataset"], params["samples"], seed, settings.get("image_size"),
                                         channels=D.input_shape[0]), seed)
        frames.append(layer_rows(plain_discriminator(D, raw=True), inputs, net=net, state="trained-sn", step=step))
        histories.append(sigma_history(run_dir).assign(net=net))
    return pd.concat(frames, ignore_index=True), pd.concat(histories, ignore_index=True)


def gradient_checks(table: pd.DataFrame) -> list[Check]:
    """Formula (1) and Euler against autograd, bound (2) where it is a theorem, the paper's form elsewhere."""
    where = f"{len(table)} (sample, layer) pairs, states {', '.join(table['state'].unique())}"
    mlp, conv_net = table[table["net"] == "mlp"], table[table["net"] == "sndcgan"]
    checks = [
        check_at_most(CLAIM, "max |formula (1) - autograd| / |autograd| (float64)", table["formula_error"].max(),
                      IDENTITY_RTOL, rtol=0, detail=where),
        check_at_most(CLAIM, "max |<G_t, W_bar_t> - D(x)| / (||G_t|| ||W_bar_t||) (Euler)", table["euler_error"].max(),
                      IDENTITY_RTOL, rtol=0, detail=where),
        check_at_most(CLAIM, "max ||grad_W D|| / ((||G|| + |D(x)|) / sigma) (data form of bound 2)",
                      (table["grad_raw"] / table["data_bound"]).max(), 1.0, detail=where),
        check_at_most(CLAIM, "MLP, exact SN: max ||grad_W_t D||_F / (2 ||x|| / sigma(W_t)) (bound 2)",
                      mlp["ratio_paper"].max(), 1.0, detail=f"{len(mlp)} pairs"),
    ]
    if len(conv_net):
        checks += [
            check_at_most(CLAIM, "SNDCGAN, reshape SN: max ||grad_W_t D||_F / bound with measured sigma_op(W_bar)",
                          conv_net["ratio"].max(), 1.0,
                          detail="(sqrt(N_t)||x|| prod_{i!=t} s_i + ||x|| prod s_i) / sigma"),
            check_at_most(CLAIM, "SNDCGAN, reshape SN: max ||grad_W_t D||_F / (2 ||x|| / sigma) (paper form)",
                          conv_net["ratio_paper"].max(), 1.0, must_hold=False,
                          detail="not a theorem under reshape SN; measured"),
        ]
    return checks


def growth_check(history: pd.DataFrame, scale: str) -> Check:
    """Whether the raw weights' sigma grew over the recorded run (median over layers of last / first).

    A tendency over training, not a bound: a shrinking sigma in a ``tiny`` run (a
    few dozen updates) is ``inconclusive``, at larger scales ``violated``.
    """
    ordered = history.sort_values("step").groupby(["net", "layer_index"])["sigma"]
    growth = float((ordered.last() / ordered.first()).median())
    check = check_at_least(CLAIM, "median over SN layers of sigma(raw W) at the end / at the start of training",
                           growth, 1.0, must_hold=False,
                           detail=f"{ordered.ngroups} layers, {history['step'].max()} D updates")
    if check.verdict == VIOLATED and scale == "tiny":
        check = replace(check, verdict=INCONCLUSIVE, detail=check.detail + "; too short a run to judge a tendency")
    return check


def plot_training(history: pd.DataFrame, table: pd.DataFrame):
    """sigma of every raw weight and its raw-gradient norm over training; per-layer ratio to bound (2)."""
    nets = list(dict.fromkeys(history["net"]))
    fig, axes = style.new_figure(1, 3, panel_size=(3.4, 2.8),
                                 title="C2: sigma of raw weights over SN training and raw-gradient bounds")
    for i, net in enumerate(nets):
        rows = history[history["net"] == net]
        for j, (layer, layer_rows_) in enumerate(rows.groupby("layer_index")):
            label = f"{net}" if j == 0 else None
            axes[0, 0].plot(layer_rows_["step"], layer_rows_["sigma"], color=style.color(i), alpha=0.4 + 0.6 * j /
                            max(1, rows["layer_index"].nunique() - 1), linewidth=1.0, label=label)
            axes[0, 1].plot(layer_rows_["step"], layer_rows_["grad_w_raw_norm"] * layer_rows_["sigma"]
                            / layer_rows_["grad_w_eff_norm"], color=style.color(i), linewidth=0.8, alpha=0.6,
                            label=label)
    style.label_axes(axes[0, 0], "D update (step)", "sigma(raw W) (SN estimate)", "sigma per layer (light: input)",
                     logy=style.wants_log(history["sigma"]))
    style.label_axes(axes[0, 1], "D update (step)", "sigma ||grad_W L|| / ||grad_W_bar L||",
                     "raw gradient x sigma / effective gradient")
    style.theory_line(axes[0, 1], 1.0, "1: raw = effective / sigma")
    ax = axes[0, 2]
    for i, (key, rows) in enumerate(table.groupby(["net", "state"], sort=False)):
        worst = rows.groupby("layer_index")["ratio_paper"].max()
        ax.plot(worst.index, worst, marker="o", **style.series_style(i), label=f"{key[0]} {key[1]}")
    style.theory_line(ax, 1.0, "bound 2||x||/sigma")
    style.label_axes(ax, "layer (input to output)", "max ||grad_W D|| / (2||x||/sigma)", "per-sample ratio",
                     logy=True)
    style.integer_ticks(ax)
    for a in axes[0]:
        style.legend(a, loc="best")
    return fig


def run(scale: str, out: Path, seed: int = 0) -> AnalysisResult:
    """Run C2 at ``scale`` into ``out``; see the module docstring for what is measured and judged."""
    params, result = start_result(CLAIM, TITLE, scale, out, PARAMS)
    table, history = _measure_all(params, result.out, seed)
    result.add_table("c2_layers", table)
    result.add_table("c2_sigma_history", history)
    result.add(*gradient_checks(table))
    result.add(growth_check(history, scale))
    result.add_figure(plot_training(history, table), "c2_raw_gradient")
    ordered = history.sort_values("step").groupby(["net", "layer_index"])["sigma"]
    result.notes.append("sigma(raw W) first -> last per layer: " + ", ".join(
        f"{net}/{layer} {a:.3g}->{b:.3g}" for (net, layer), a, b in
        zip(ordered.first().index, ordered.first(), ordered.last())))
    return result
