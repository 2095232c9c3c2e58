"""Print the spectral norms of the SNDCGAN discriminator's layers under each normalization.

For one freshly initialized discriminator, every requested normalization
mode is applied to a copy of it; the persistent power-iteration vectors are
warmed up by a few training-mode forward passes; then, per layer, the table
shows the divisor the normalization currently uses and, for the *effective*
weight ``W_eff`` the layer computes with:

- ``sigma_fwd``, ``sigma_bwd``: exact norms of the two kernel reshapes
  ``(c_out, c_in k k)`` and ``(c_in, c_out k k)`` (what SN and BSN divide by),
- ``sigma_op``: the exact operator norm of the convolution on the layer's real
  input size, stride and padding: the layer's true Lipschitz constant,
- ``fanin_var``: ``fan_in * Var(W_eff)``, which is 1 under LeCun initialization
  and about ``(1 + sqrt(fan_out/fan_in))^-2`` after SN (claim C5).

The footer gives the product of the ``sigma_op`` over layers, an upper bound
of the discriminator's Lipschitz constant (leaky ReLU is 1-Lipschitz). Under
``sn`` each ``sigma_fwd`` is 1 but ``sigma_op`` exceeds it (claim C6); under
``strict`` each ``sigma_op`` is 1.

The norms of ``W_eff`` are those of the raw weight times the layer's
multiplier ``scale * gamma / sigma``, exact because the norms are
homogeneous; the raw norms are computed once.
"""
from __future__ import annotations

import argparse
import copy
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import pandas as pd
import torch
from torch import nn

from gradscope._checks import check_choice, check_int_at_least, check_positive
from gradscope.init import INIT_SCHEMES, init_, layer_fans
from gradscope.linalg import WeightLayer, conv_operator_norm, reshape_norms, weight_layers
from gradscope.models import SNDCGANDiscriminator
from gradscope.norms import NORMS, SCALED_NORMS, normalize, parametrization_of, raw_weight

DEMO_NORMS: tuple[str, ...] = ("none", "sn", "bsn", "bssn", "strict")
#: Kaiming's gain for the reference leaky-ReLU slope 0.1: sqrt(2 / (1 + 0.1^2)).
DEFAULT_SCALE = math.sqrt(2.0 / 1.01)
DEFAULT_WARMUP = 50
#: Relative tolerance of the raw operator norms (float32 Lanczos; float64 would take minutes on CPU).
OPERATOR_NORM_TOL = 1e-4
FORMATS = ("table", "csv")
COLUMNS = ("norm", "layer", "kernel", "input", "sigma_used", "sigma_fwd", "sigma_bwd", "sigma_op", "fanin_var")


def _raw_norms(layer: WeightLayer) -> tuple[float, float, float]:
    module = layer.module
    weight = raw_weight(module).detach()
    sigma_fwd, sigma_bwd = (float(s) for s in reshape_norms(weight, dtype=torch.float64))
    if layer.kind == "linear":
        return sigma_fwd, sigma_bwd, sigma_fwd
    sigma_op = conv_operator_norm(weight, layer.input_size, module.stride, module.padding, module.dilation,
                                  module.padding_mode, groups=module.groups, tol=OPERATOR_NORM_TOL)
    return sigma_fwd, sigma_bwd, float(sigma_op)


@contextmanager
def _single_threaded() -> Iterator[None]:
    # The demo's operators are small: intra-op threads cost more in synchronization than they
    # save, and on a busy CPU OpenMP spin-waiting multiplies the wall time (the 32 px demo took
    # 31 s with 1 thread and 250 s with 2 on a loaded 2-core machine).
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _describe(module: nn.Module) -> str:
    if isinstance(module, nn.Linear):
        return f"linear {module.in_features}->{module.out_features}"
    k, s = module.kernel_size[0], module.stride[0]
    return f"{k}x{k}/{s} {module.in_channels}->{module.out_channels}"


def spectral_table(
    norms: Sequence[str] = DEMO_NORMS,
    *,
    image_size: int = 32,
    channels: int = 3,
    scale: float = DEFAULT_SCALE,
    init: str = "dcgan",
    warmup: int = DEFAULT_WARMUP,
    seed: int = 0,
) -> pd.DataFrame:
    """Per-layer spectral norms of the SNDCGAN discriminator's effective weights under each normalization.

    Parameters
    ----------
    norms : sequence of str
        Normalization modes (``gradscope.norms.NORMS``), in the order to report them.
    image_size, channels : int
        The discriminator's input (image_size a multiple of 8).
    scale : float
        The constant ``c`` of the scaled modes (``ssn``, ``bssn``); the others use 1.
    init : str
        Initialization scheme of the raw weights (see :mod:`gradscope.init`).
    warmup : int
        Training-mode forward passes that advance the power iterations before reading.
    seed : int
        Seed of the initialization, the normalizations' start vectors and the warm-up batch.

    Returns
    -------
    pandas.DataFrame
        One row per (norm, layer) with columns :data:`COLUMNS`. ``sigma_used`` is the divisor
        the normalization holds (1 for ``none``); the norms are those of the effective weight.

    Examples
    --------
    >>> table = spectral_table(["sn", "strict"], image_size=8, warmup=5)
    >>> strict = table[table["norm"] == "strict"]
    >>> bool(((strict["sigma_op"] - 1).abs() < 0.01).all())
    True
    """
    norms = [check_choice("norm", n, NORMS) for n in norms]
    if not norms:
        raise ValueError(f"give at least one norm; valid choices: {', '.join(NORMS)}")
    check_positive("scale", scale)
    check_choice("init scheme", init, INIT_SCHEMES)
    check_int_at_least("warmup", warmup, 0)
    check_int_at_least("seed", seed, 0)
    with _single_threaded():
        return _compute_table(norms, image_size, channels, scale, init, warmup, seed)


def _compute_table(norms: Sequence[str], image_size: int, channels: int, scale: float, init: str, warmup: int,
                   seed: int) -> pd.DataFrame:
    base = SNDCGANDiscriminator(image_size=image_size, channels=channels)
    init_(base, init, generator=torch.Generator().manual_seed(seed))
    layers = weight_layers(base, torch.zeros(1, *base.input_shape))
    raw = {layer.name: _raw_norms(layer) for layer in layers}
    conv_sizes = {layer.name: layer.input_size for layer in layers if layer.kind != "linear"}
    # The power iterations do not depend on the data; one image drives them.
    batch = torch.randn(1, *base.input_shape, generator=torch.Generator().manual_seed(seed))

    rows = []
    for norm in norms:
        model = copy.deepcopy(base)
        torch.manual_seed(seed)
        normalize(model, norm=norm, scale=scale if norm in SCALED_NORMS else 1.0,
                  input_sizes=conv_sizes if norm == "strict" else None)
        model.train()
        with torch.no_grad():
            for _ in range(warmup):
                model(batch)
        model.eval()
        modules = dict(model.named_modules())
        for layer in layers:
            name, module = layer.name, modules[layer.name]
            param = parametrization_of(module)
            multiplier = 1.0 if param is None else float(param.multiplier())
            sigma_used = 1.0 if param is None else float(param.sigma)
            weight = raw_weight(module).detach().double() * multiplier
            sigma_fwd, sigma_bwd, sigma_op = (multiplier * s for s in raw[name])
            rows.append(dict(
                norm=norm, layer=name, kernel=_describe(module), input="x".join(map(str, layer.input_size)) or "-",
                sigma_used=sigma_used, sigma_fwd=sigma_fwd, sigma_bwd=sigma_bwd, sigma_op=sigma_op,
                fanin_var=layer_fans(module).fan_in * float(weight.var()),
            ))
    return pd.DataFrame(rows, columns=list(COLUMNS))


def format_table(table: pd.DataFrame) -> str:
    """Render :func:`spectral_table`'s result as one aligned block per norm with a Lipschitz-bound footer."""
    blocks = []
    for norm, rows in table.groupby("norm", sort=False):
        body = rows.drop(columns="norm").to_string(index=False, float_format=lambda v: f"{v:.4f}")
        bound = rows["sigma_op"].prod()
        blocks.append(f"== {norm} ==\n{body}\nproduct of sigma_op (Lipschitz bound of D): {bound:.4g}")
    return "\n\n".join(blocks)


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``gradscope demo`` arguments."""
    parser.add_argument("--norms", default=",".join(DEMO_NORMS),
                        help="comma-separated normalization modes to compare")
    parser.add_argument("--image-size", type=int, default=32, help="discriminator input size (multiple of 8)")
    parser.add_argument("--channels", type=int, default=3, help="discriminator input channels")
    parser.add_argument("--scale", type=float, default=DEFAULT_SCALE,
                        help="constant c of ssn/bssn; the default is Kaiming's gain sqrt(2/(1+0.1^2)) for leaky-ReLU slope 0.1")
    parser.add_argument("--init", default="dcgan", choices=INIT_SCHEMES, help="initialization of the raw weights")
    parser.add_argument("--warmup", type=int, default=DEFAULT_WARMUP,
                        help="training-mode forward passes to converge the power iterations")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--format", default="table", choices=FORMATS, help="aligned tables or CSV")


def execute(args: argparse.Namespace) -> int:
    """Run ``gradscope demo``: compute and print the table."""
    norms = [n.strip() for n in args.norms.split(",") if n.strip()]
    table = spectral_table(norms, image_size=args.image_size, channels=args.channels, scale=args.scale,
                           init=args.init, warmup=args.warmup, seed=args.seed)
    if args.format == "csv":
        print(table.to_csv(index=False), end="")
    else:
        print(format_table(table))
    return 0
