"""Statistics read from the weights at ``step()``: cheap ones every recorded step, exact ones on their schedule."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from gradscope.linalg import conv_operator_norm, reshape_norms
from gradscope.norms.base import effective_weight
from gradscope.record.buffer import StepBuffer
from gradscope.record.layers import Layer

_ESTIMATES = ("sigma", "sigma_fwd", "sigma_bwd")


def add_weight_stats(buffer: StepBuffer, layers: Sequence[Layer], want: set[str],
                     effective_grads: Mapping[int, Tensor], grad_seen: set[int]) -> None:
    """Enqueue the cheap weight statistics of ``layers`` (no host sync).

    ``grad_seen`` holds the layers whose raw weight received a gradient in this step.
    """
    if "grad_w_raw_norm" in want or "grad_w_eff_norm" in want:
        with_grad = [layer for layer in layers if layer.uid in grad_seen and layer.raw.grad is not None]
        if with_grad:
            norms = torch._foreach_norm([layer.raw.grad.detach() for layer in with_grad])
            for layer, norm in zip(with_grad, norms):
                buffer.add(layer.uid, "grad_w_raw_norm", norm)
    if "grad_w_eff_norm" in want:
        for layer in layers:
            grad = effective_grads.get(layer.uid)
            if grad is not None:
                buffer.add(layer.uid, "grad_w_eff_norm", torch.linalg.vector_norm(grad))
    lecun = bool(want & {"lecun_ratio", "lecun_ratio_raw"})
    for layer in layers:
        param = layer.parametrization
        if lecun:
            buffer.add_sums(layer.uid, "w_raw", layer.raw)
            if param is not None:
                buffer.add(layer.uid, "multiplier", param.multiplier())
            elif layer.foreign and layer.last_effective is not None:
                buffer.add_sums(layer.uid, "w_eff", layer.last_effective)
        if param is None:
            continue
        estimates = param.sigma_estimates()
        for key in _ESTIMATES:
            if key in want and key in estimates:
                buffer.add(layer.uid, key, estimates[key])
        if "gamma" in want and param.gamma is not None:
            buffer.add(layer.uid, "gamma", param.gamma)


def layer_effective_weight(layer: Layer) -> Tensor | None:
    """The weight the layer uses (last observed one for foreign parametrizations), detached."""
    if layer.foreign:
        return layer.last_effective
    return effective_weight(layer.module)


def operator_norm(layer: Layer, weight: Tensor) -> Tensor | None:
    """Spectral norm of the layer as a linear map with ``weight``, on its last input size; ``None`` if unknown."""
    module = layer.module
    if isinstance(module, nn.Linear):
        return torch.linalg.matrix_norm(weight.detach(), ord=2)
    if layer.input_size is None:
        return None
    return conv_operator_norm(weight, layer.input_size, module.stride, module.padding, module.dilation,
                              module.padding_mode, layer.transposed, module.output_padding, module.groups)


@torch.no_grad()
def add_exact_stats(buffer: StepBuffer, layers: Sequence[Layer], want: set[str]) -> None:
    """Enqueue the exact spectral norms of ``layers`` (dense SVD, conv operator norm; these synchronize)."""
    for layer in layers:
        if "sigma_raw_fwd" in want or "sigma_raw_bwd" in want:
            fwd, bwd = reshape_norms(layer.raw.detach(), transposed=layer.transposed)
            if "sigma_raw_fwd" in want:
                buffer.add(layer.uid, "sigma_raw_fwd", fwd)
            if "sigma_raw_bwd" in want:
                buffer.add(layer.uid, "sigma_raw_bwd", bwd)
        if "sigma_op" in want:
            weight = layer_effective_weight(layer)
            norm = None if weight is None else operator_norm(layer, weight)
            if norm is not None:
                buffer.add(layer.uid, "sigma_op", norm)
