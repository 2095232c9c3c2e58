"""Float64, bias-free, parametrization-free copies of discriminators, and their weights rescaled by exact norms.

The gradient analyses (C1-C3) differentiate a discriminator the way the
theory writes it: plain layers holding the weight the layer computes with
(or its raw weight), no biases, in float64, and the same weights divided by
their exact operator norms ("strict" SN) or by the norms of their
``(c_out, c_in k k)`` reshapes ("popular" SN, what Miyato's SN divides by).
"""
from __future__ import annotations

import copy

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from gradscope.linalg import layer_sigmas, weight_layers
from gradscope.norms.base import effective_weight, raw_weight

DTYPE = torch.float64
#: Weight states: as given, strict SN (operator norms), popular SN (reshape norms).
INIT_STATES: tuple[str, ...] = ("none", "strict", "popular")
#: Relative tolerance of the convolutions' operator norms (Lanczos, float64).
OPERATOR_TOL = 1e-9


def _plain_layer(module: nn.Module, weight: Tensor, bias: Tensor | None) -> nn.Module:
    """A fresh, un-parametrized layer of ``module``'s original type holding ``weight`` and ``bias``.

    Parametrized modules are rebuilt rather than un-parametrized in place:
    ``remove_parametrizations`` edits the module's class, which a deep copy
    shares with the original model.
    """
    cls = parametrize.type_before_parametrizations(module)
    with_bias = bias is not None
    if issubclass(cls, nn.Linear):
        layer = cls(module.in_features, module.out_features, bias=with_bias)
    elif issubclass(cls, nn.modules.conv._ConvTransposeNd):
        layer = cls(module.in_channels, module.out_channels, module.kernel_size, module.stride, module.padding,
                    module.output_padding, module.groups, with_bias, module.dilation, module.padding_mode)
    else:
        layer = cls(module.in_channels, module.out_channels, module.kernel_size, module.stride, module.padding,
                    module.dilation, module.groups, with_bias, module.padding_mode)
    with torch.no_grad():
        layer.weight.copy_(weight)
        if with_bias:
            layer.bias.copy_(bias)
    return layer


def plain_discriminator(model: nn.Module, *, biases: bool = False, raw: bool = False) -> nn.Module:
    """A float64 copy of ``model`` computing with its effective weights, without parametrizations.

    Each normalized layer's weight becomes the weight it computes with
    (``scale * gamma * W / sigma`` from its buffers, no power-iteration step),
    or its raw, un-normalized weight with ``raw=True``; a gamma-scaled bias
    becomes ``gamma * b``. ``biases=False`` removes every Linear/Conv bias (the
    networks of claims C1-C3 are bias-free). ``model`` is not modified.

    Examples
    --------
    >>> from gradscope.models import MLPDiscriminator
    >>> D = plain_discriminator(MLPDiscriminator(hidden=4))
    >>> [m.bias for m in D.modules() if isinstance(m, nn.Linear)]
    [None, None, None, None]
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"expected an nn.Module, got {type(model).__name__}")
    clone = copy.deepcopy(model).eval()
    for name, module in list(clone.named_modules()):
        if not isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)):
            continue
        weight = raw_weight(module).detach() if raw else effective_weight(module)
        bias = module.bias.detach() if biases and module.bias is not None else None
        parent, _, child = name.rpartition(".")
        setattr(clone.get_submodule(parent) if parent else clone, child, _plain_layer(module, weight, bias))
    return clone.to(DTYPE).requires_grad_(True)


def exact_sigmas(model: nn.Module, example: Tensor) -> list[dict[str, float]]:
    """:func:`gradscope.linalg.layer_sigmas` of every weight layer (operator norms to ``OPERATOR_TOL``)."""
    return [layer_sigmas(layer, tol=OPERATOR_TOL) for layer in weight_layers(model, example)]


def normalized_copy(model: nn.Module, example: Tensor, state: str, sigmas: list[dict[str, float]] | None = None
                    ) -> tuple[nn.Module, list[dict[str, float]]]:
    """A copy of a plain ``model`` with weights divided by their operator norms (``"strict"``),
    their reshape norms (``"popular"``), or as they are (``"none"``), and the copy's sigmas.

    ``sigmas`` (:func:`exact_sigmas` of ``model``) are computed when not given; the copy's
    follow by homogeneity (every sigma of ``W / c`` is ``sigma / c``).
    """
    if state not in INIT_STATES:
        raise ValueError(f"unknown weight state {state!r}; valid choices: {', '.join(INIT_STATES)}")
    sigmas = exact_sigmas(model, example) if sigmas is None else sigmas
    clone = copy.deepcopy(model)
    if state == "none":
        return clone, sigmas
    key = "sigma_op" if state == "strict" else "sigma_fwd"
    scaled = []
    with torch.no_grad():
        for layer, sigma in zip(weight_layers(clone, example), sigmas):
            layer.module.weight.div_(sigma[key])
            scaled.append({name: value / sigma[key] if name.startswith("sigma") else value
                           for name, value in sigma.items()})
    return clone, scaled
