"""C1: the discriminator's gradients are bounded by products of its layers' operator norms.

Claim (THEORY.md, C1)
---------------------
For a bias-free discriminator ``D(x) = W_L a(W_{L-1} ... a(W_1 x))`` with
1-Lipschitz, positively homogeneous activations (leaky ReLU, ReLU; ``a(0) = 0``)

    ||grad_x D(x)||_2       <= prod_i ||W_i||_op                      (1)
    ||grad_{W_t} D(x)||_F   <= ||x||_2 prod_{i != t} ||W_i||_op        (2)

so under exact SN (every ``||W_i||_op = 1``) each layer's gradient is at most
``||x||`` and the whole parameter gradient at most ``sqrt(L) ||x||``.

Derivation, and what changes for convolutions
---------------------------------------------
Write ``h_0 = x``, ``z_t = W_t h_{t-1}``, ``h_t = a(z_t)`` and
``delta_t = dD/dz_t``. Because ``a`` is 1-Lipschitz with ``a(0) = 0``,
``||h_t|| <= ||W_t||_op ||h_{t-1}||``, hence ``||h_{t-1}|| <= ||x|| prod_{i<t} ||W_i||_op``;
because its derivative is a diagonal with entries in ``[0, 1]``,
``||delta_t|| <= prod_{i>t} ||W_i||_op``. Then (1) is the chain rule and, for a
*dense* layer, ``grad_{W_t} D = delta_t h_{t-1}^T`` has Frobenius norm
``||delta_t|| ||h_{t-1}||``, which gives (2).

A convolution's kernel is shared by all output positions ``p``:
``grad_{W_t} D = sum_p delta_t[:, p] patch_p(h_{t-1})^T = Delta P`` with
``Delta`` the ``c_out x positions`` matrix of ``delta_t`` and ``P`` the
patch matrix of ``h_{t-1}``. So ``||grad_{W_t} D||_F <= ||delta_t|| ||P||_op`` and
``||P||_op <= ||P||_F = (sum_i n_i h_i^2)^(1/2) <= sqrt(N_t) ||h_{t-1}||`` where
``n_i`` counts the patches containing input entry ``i`` and ``N_t = max_i n_i``
(``ceil(k/s)^2`` for a 2D ``k x k`` kernel with stride ``s`` away from borders).
The bound this analysis checks as a theorem is therefore

    ||grad_{W_t} D(x)||_F   <= sqrt(N_t) ||x||_2 prod_{i != t} ||W_i||_op    (2')

with ``N_t = 1`` for dense layers, where (2') is (2). (2) itself holds for the
gradient with respect to the convolution's *operator matrix* (its entries
untied), not for the kernel the optimizer updates; the factor is attained: a
constant kernel on a constant input gives ``||grad_W D|| ~ k ||x|| prod_{i!=t}||W_i||``
(the planted case below).

Assumptions
-----------
- Bias-free networks: the library's SNDCGAN and MLP discriminators with every
  bias removed (a bias breaks ``a(0) = 0`` and with it (2); (1) would still hold).
- float64 throughout.
- ``||W||_op`` is the norm of the layer *as a linear operator* on the input size
  it really sees (zero ``'same'`` padding, stride): exact SVD for dense layers,
  Lanczos with the convolution and its exact adjoint to a relative tolerance
  of 1e-9 for convolutions (:func:`gradscope.linalg.conv_operator_norm`; a
  lower bound of the true norm, so a bound computed from it errs towards
  "violated").
- Weight states: the reference initialization, the same weights divided by
  their exact operator norms ("strict" SN), divided by the norm of the
  ``(c_out, c_in k k)`` reshape ("popular" SN, what Miyato's SN and torch's
  ``spectral_norm`` use), and trained weights from a short GAN run
  (:func:`gradscope.train.train`) at several steps.

Planted violations
------------------
Checks named ``planted: ...`` (marked by :func:`analyses.common.planted`) are expected
to be ``violated`` and are not must-hold: (a) the product of *reshape* norms in place of operator norms in
(1), on a conv net with constant positive kernels; (b) the SN bound
``sqrt(L) ||x||`` applied to an un-normalized MLP whose weights are scaled up;
(c) bound (2) without the weight-sharing factor on a constant conv kernel.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from analyses.common import AnalysisResult, Check, check_at_least, check_at_most, planted, start_result
from analyses.plain_networks import DTYPE, INIT_STATES, exact_sigmas, normalized_copy, plain_discriminator
from analyses.probe import probe_inputs, real_batch
from analyses.training import train_checkpoints
from gradscope.linalg import WeightLayer, weight_layers
from gradscope.models import MLPDiscriminator, SNDCGANDiscriminator
from gradscope.plot import style

CLAIM = "C1"
TITLE = "Exploding gradients are bounded by products of layer operator norms"

#: ``sndcgan``: image side of the SNDCGAN measured at init; ``train_sndcgan`` / ``train_mlp``: settings of
#: the short runs whose checkpoints are measured (``None``: not at this scale).
PARAMS = {
    "tiny": {"image_size": 8, "samples": 4,
             "train_sndcgan": None,
             "train_mlp": {"dataset": "ring8", "iterations": 60, "batch_size": 64, "checkpoint_every": 20}},
    "small": {"image_size": 16, "samples": 8,
              "train_sndcgan": {"dataset": "digits", "image_size": 16, "iterations": 300, "batch_size": 64,
                                "checkpoint_every": 100},
              "train_mlp": {"dataset": "ring8", "iterations": 1500, "batch_size": 256, "checkpoint_every": 500}},
    "paper": {"image_size": 32, "samples": 32,
              "train_sndcgan": {"dataset": "cifar10", "image_size": 32, "iterations": 20000, "batch_size": 64,
                                "lr_d": 1e-4, "lr_g": 1e-4, "checkpoint_every": 5000, "device": "auto"},
              "train_mlp": {"dataset": "ring8", "iterations": 10000, "batch_size": 256,
                            "checkpoint_every": 2500}},
}


# ----------------------------------------------------------------------------- measurement

def per_sample_gradients(model: nn.Module, layers: list[WeightLayer], x: Tensor
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-sample ``D(x)``, ``||grad_x D(x)||`` and ``||grad_{W_t} D(x)||_F`` (``(batch, layers)``)."""
    weights = [layer.module.weight for layer in layers]
    values, grad_x, grad_w = [], [], []
    for i in range(x.shape[0]):
        xi = x[i:i + 1].detach().clone().requires_grad_(True)
        value = model(xi).sum()
        grads = torch.autograd.grad(value, [xi, *weights])
        values.append(float(value.detach()))
        grad_x.append(float(torch.linalg.vector_norm(grads[0])))
        grad_w.append([float(torch.linalg.vector_norm(g)) for g in grads[1:]])
    return np.array(values), np.array(grad_x), np.array(grad_w)


def measure(model: nn.Module, inputs: dict[str, Tensor], sigmas: list[dict[str, float]] | None = None,
            **labels: object) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Gradients of a plain bias-free ``model`` and their bounds, per sample and per sample and layer.

    Returns
    -------
    samples : DataFrame
        One row per input sample: ``grad_x``, ``lipschitz_op`` (prod of operator
        norms, bound (1)), ``lipschitz_reshape`` (prod of reshape norms),
        ``grad_params`` (whole weight gradient), ``param_bound_unit`` =
        ``sqrt(sum_t N_t) ||x||`` (the whole-gradient bound under exact SN) and
        ``inflation`` = prod of operator norms (equal to ``lipschitz_op``).
    layers : DataFrame
        One row per sample and layer: ``grad_w``, ``bound`` (2'), ``bound_paper`` (2)
        and ``bound_reshape`` ((2) with reshape norms), the layer's sigmas and ``N_t``.
    ``sigmas`` (:func:`exact_sigmas`) are computed when not given; ``labels``
    become constant columns of both tables.
    """
    example = next(iter(inputs.values()))[:1]
    layers = weight_layers(model, example)
    sigmas = exact_sigmas(model, example) if sigmas is None else sigmas
    op = np.array([s["sigma_op"] for s in sigmas])
    fwd = np.array([s["sigma_fwd"] for s in sigmas])
    overlap = np.array([s["overlap"] for s in sigmas])
    sample_frames, layer_rows = [], []
    for kind, x in inputs.items():
        values, grad_x, grad_w = per_sample_gradients(model, layers, x)
        x_norm = torch.linalg.vector_norm(x.reshape(len(x), -1), dim=1).numpy()
        sample_frames.append(pd.DataFrame({
            **labels, "input": kind, "sample": np.arange(len(x)), "x_norm": x_norm, "D": values,
            "grad_x": grad_x, "lipschitz_op": op.prod(), "lipschitz_reshape": fwd.prod(),
            "grad_params": np.sqrt((grad_w**2).sum(axis=1)),
            "param_bound_unit": np.sqrt((overlap**2).sum()) * x_norm}))
        for t, layer in enumerate(layers):
            others_op, others_fwd = np.prod(np.delete(op, t)), np.prod(np.delete(fwd, t))
            for i, xn in enumerate(x_norm):
                layer_rows.append({**labels, "input": kind, "sample": i, "x_norm": xn, "layer_index": layer.index,
                                   "layer": layer.name, "kind": layer.kind, "sigma_op": op[t],
                                   "sigma_fwd": fwd[t], "overlap": overlap[t], "grad_w": grad_w[i, t],
                                   "bound": overlap[t] * xn * others_op, "bound_paper": xn * others_op,
                                   "bound_reshape": xn * others_fwd})
    samples = pd.concat(sample_frames, ignore_index=True)
    table = pd.DataFrame(layer_rows)
    samples["ratio_x"] = samples["grad_x"] / samples["lipschitz_op"]
    samples["ratio_x_reshape"] = samples["grad_x"] / samples["lipschitz_reshape"]
    table["ratio"] = table["grad_w"] / table["bound"]
    table["ratio_paper"] = table["grad_w"] / table["bound_paper"]
    return samples, table


# ----------------------------------------------------------------------------- planted cases

def constant_conv_net(size: int = 8) -> tuple[nn.Module, Tensor]:
    """Two 3x3 convs with constant kernels of Frobenius norm 1 (so ``sigma_fwd = 1``) and a linear map
    of norm 1, bias-free, with a constant positive input: every activation is in the linear region."""
    net = nn.Sequential(nn.Conv2d(1, 1, 3, padding=1, bias=False), nn.LeakyReLU(0.1),
                        nn.Conv2d(1, 1, 3, padding=1, bias=False), nn.LeakyReLU(0.1), nn.Flatten(),
                        nn.Linear(size * size, 1, bias=False)).to(DTYPE)
    with torch.no_grad():
        net[0].weight.fill_(1 / 3)
        net[2].weight.fill_(1 / 3)
        net[5].weight.fill_(1 / size)
    return net, torch.ones((1, 1, size, size), dtype=DTYPE)


def planted_checks(seed: int = 0) -> tuple[list[Check], pd.DataFrame]:
    """The planted cases (see the module docstring) and the theorem checks on the same nets."""
    net, x = constant_conv_net()
    samples, layers = measure(net, {"constant": x}, net="constant-conv")
    convs = layers[layers["kind"] == "conv"]
    mlp = plain_discriminator(MLPDiscriminator())
    with torch.no_grad():
        for p in mlp.parameters():
            p.mul_(4.0)
    big = real_batch("ring8", 4, seed)
    big_samples, _ = measure(mlp, {"real": big}, net="mlp-unnormalized-x4")
    checks = [
        planted(check_at_most(CLAIM, "planted: constant-kernel conv net, ||grad_x D|| / prod sigma_fwd (reshape "
                              "norms as if they bounded (1))", samples["ratio_x_reshape"].max(), 1.0,
                              detail="expected violated: reshape norms do not bound a conv's Lipschitz constant")),
        check_at_most(CLAIM, "planted net: ||grad_x D|| / prod sigma_op (bound 1)", samples["ratio_x"].max(), 1.0,
                      detail="the operator-norm bound holds and is nearly tight here"),
        planted(check_at_most(CLAIM, "planted: constant-kernel conv, ||grad_W D|| / (||x|| prod_{i!=t} sigma_op) "
                              "(bound 2 without the sharing factor)", convs["ratio_paper"].max(), 1.0,
                              detail="expected violated: a shared kernel collects up to sqrt(N_t) times more")),
        check_at_most(CLAIM, "planted net: ||grad_W D|| / (sqrt(N_t) ||x|| prod_{i!=t} sigma_op) (bound 2')",
                      convs["ratio"].max(), 1.0),
        planted(check_at_most(CLAIM, "planted: MLP without SN, weights x4, ||grad_theta D|| / (sqrt(L) ||x||) "
                              "(the SN bound)", (big_samples["grad_params"] / big_samples["param_bound_unit"]).max(),
                              1.0, detail="expected violated: without SN the gradient is not bounded by sqrt(L) ||x||")),
    ]
    summary = pd.concat([samples.assign(case="constant-conv"), big_samples.assign(case="mlp-x4")],
                        ignore_index=True)
    return checks, summary


# ----------------------------------------------------------------------------- the analysis

def _init_states(params: dict, seed: int) -> tuple[list[pd.DataFrame], list[pd.DataFrame]]:
    torch.manual_seed(seed)
    size = params["image_size"]
    nets = {"sndcgan": (SNDCGANDiscriminator(size, 3), real_batch("digits", params["samples"], seed, size)),
            "mlp": (MLPDiscriminator(), real_batch("ring8", params["samples"], seed))}
    samples, layers = [], []
    for net_name, (model, real) in nets.items():
        plain = plain_discriminator(model)
        inputs = probe_inputs(real, seed)
        sigmas = exact_sigmas(plain, real[:1])
        for state in INIT_STATES:
            normalized, scaled = normalized_copy(plain, real[:1], state, sigmas)
            s, l = measure(normalized, inputs, scaled, net=net_name, state=state, step=0)
            samples.append(s)
            layers.append(l)
    return samples, layers


def _trained_states(params: dict, out: Path, seed: int) -> tuple[list[pd.DataFrame], list[pd.DataFrame]]:
    samples, layers = [], []
    for net_name in ("sndcgan", "mlp"):
        settings = params[f"train_{net_name}"]
        if settings is None:
            continue
        checkpoints = train_checkpoints(out / "runs" / f"{net_name}-sn", "sn", seed, settings)
        real = real_batch(settings["dataset"], params["samples"], seed, settings.get("image_size"),
                          channels=checkpoints[0][1].input_shape[0])
        inputs = probe_inputs(real, seed)
        for step, D in checkpoints:
            s, l = measure(plain_discriminator(D), inputs, net=net_name, state="trained-sn", step=step)
            samples.append(s)
            layers.append(l)
    return samples, layers


def bound_checks(samples: pd.DataFrame, layers: pd.DataFrame) -> list[Check]:
    """The verdicts on every measured state (see the module docstring)."""
    where = f"{samples['net'].nunique()} nets, states {', '.join(samples['state'].unique())}, {len(samples)} samples"
    strict = samples[samples["state"] == "strict"]
    popular = samples[samples["state"].isin(["popular", "trained-sn"]) & (samples["net"] == "sndcgan")]
    dense, conv = layers[layers["kind"] == "linear"], layers[layers["kind"] == "conv"]
    checks = [
        check_at_most(CLAIM, "max ||grad_x D|| / prod_i sigma_op (bound 1)", samples["ratio_x"].max(), 1.0,
                      detail=where),
        check_at_most(CLAIM, "max ||grad_W_t D||_F / (sqrt(N_t) ||x|| prod_{i!=t} sigma_op) (bound 2')",
                      layers["ratio"].max(), 1.0, detail=where),
        check_at_most(CLAIM, "dense layers: max ||grad_W_t D||_F / (||x|| prod_{i!=t} sigma_op) (bound 2)",
                      dense["ratio_paper"].max(), 1.0, detail=f"{dense['layer'].nunique()} distinct layer names"),
        check_at_most(CLAIM, "strict SN: max ||grad_theta D|| / (sqrt(sum_t N_t) ||x||)",
                      (strict["grad_params"] / strict["param_bound_unit"]).max(), 1.0,
                      detail="sqrt(sum_t N_t) = sqrt(L) for the MLP"),
    ]
    if len(conv):
        checks.append(check_at_most(
            CLAIM, "conv kernels: max ||grad_W_t D||_F / (||x|| prod_{i!=t} sigma_op) (bound 2 as stated)",
            conv["ratio_paper"].max(), 1.0, must_hold=False,
            detail="not a theorem for shared kernels (see the planted case); measured on the real nets"))
    if len(popular):
        checks += [
            check_at_least(CLAIM, "popular SN, SNDCGAN: max prod_i sigma_op(W_eff) (bound inflation)",
                           popular["lipschitz_op"].max(), 1.0, must_hold=False,
                           detail="prod of the operator norms reshape SN leaves; 1 under strict SN"),
            check_at_most(CLAIM, "popular SN, SNDCGAN: max ||grad_x D|| / prod_i sigma_fwd (reshape 'bound')",
                          popular["ratio_x_reshape"].max(), 1.0, must_hold=False,
                          detail="not a theorem; measures how far real gradients stay below it"),
        ]
    return checks


def plot_bounds(samples: pd.DataFrame, layers: pd.DataFrame):
    """Per layer at init, gradient and bound (2') per unit ``||x||`` in each weight state (one panel per
    net), and the SN training runs over their checkpoints."""
    nets = list(dict.fromkeys(layers["net"]))
    trained = samples[samples["state"] == "trained-sn"]
    fig, axes = style.new_figure(1, len(nets) + 1, panel_size=(3.4, 2.8),
                                 title="C1: per-sample weight gradients against bound (2'), at init and in training")
    at_init = layers[layers["step"] == 0].assign(measured=lambda t: t["grad_w"] / t["x_norm"],
                                                 bound_unit=lambda t: t["bound"] / t["x_norm"])
    for col, net in enumerate(nets):
        ax = axes[0, col]
        for i, state in enumerate(INIT_STATES):
            rows = at_init[(at_init["net"] == net) & (at_init["state"] == state)].groupby("layer_index")
            ax.plot(rows["measured"].max().index, rows["measured"].max(), marker="o", color=style.color(i),
                    label=f"{state}: max ||grad_W_t D||_F / ||x||")
            ax.plot(rows["bound_unit"].max().index, rows["bound_unit"].max(), linestyle="--", color=style.color(i),
                    label=f"{state}: bound (2') / ||x||")
        style.label_axes(ax, "layer (input to output)", "per unit ||x|| (dimensionless)", f"{net} at init",
                         logy=True)
        style.integer_ticks(ax)
    ax = axes[0, -1]
    for i, net in enumerate(nets):
        rows = trained[trained["net"] == net].groupby("step")
        if not len(trained[trained["net"] == net]):
            continue
        ax.plot(rows["ratio_x"].max().index, rows["ratio_x"].max(), marker="o", color=style.color(i + 3),
                label=f"{net}: max ||grad_x D|| / prod sigma_op")
        ax.plot(rows["lipschitz_op"].max().index, rows["lipschitz_op"].max(), marker="s", linestyle="--",
                color=style.color(i + 3), label=f"{net}: prod sigma_op(W_eff)")
    style.theory_line(ax, 1.0, "1 (bound; strict SN)")
    style.label_axes(ax, "training iteration", "ratio (dimensionless)", "popular-SN training run", logy=True)
    style.figure_legend(fig, axes[0, 0], ncol=3)
    style.legend(ax, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig


def run(scale: str, out: Path, seed: int = 0) -> AnalysisResult:
    """Run C1 at ``scale`` into ``out``; see the module docstring for what is measured and judged."""
    params, result = start_result(CLAIM, TITLE, scale, out, PARAMS)
    samples, layers = _init_states(params, seed)
    trained_samples, trained_layers = _trained_states(params, result.out, seed)
    samples = pd.concat(samples + trained_samples, ignore_index=True)
    layers = pd.concat(layers + trained_layers, ignore_index=True)
    result.add_table("c1_samples", samples)
    result.add_table("c1_layers", layers)
    result.add(*bound_checks(samples, layers))
    planted_cases, planted_table = planted_checks(seed)
    result.add_table("c1_planted", planted_table)
    result.add(*planted_cases)
    result.add_figure(plot_bounds(samples, layers), "c1_bounds")
    inflation = samples[samples["net"] == "sndcgan"].groupby(["state", "step"])["lipschitz_op"].first()
    result.notes.append("SNDCGAN prod_i sigma_op(W_eff) per state/step: " + ", ".join(
        f"{state}@{step} {value:.3g}" for (state, step), value in inflation.items()))
    return result
