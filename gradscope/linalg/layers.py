"""The weight layers of a model with the geometry they see, and their three spectral norms.

Used wherever a conv layer's reshape norms are compared with its operator
norm (the C1 and C6 analyses, ``gradscope demo``): :func:`weight_layers` runs one forward pass to learn
each layer's input size, :func:`layer_sigmas` computes ``sigma_fwd``,
``sigma_bwd`` (dense SVD of the reshapes) and ``sigma_op`` (the convolution as
an operator on that input size, :func:`gradscope.linalg.conv_operator_norm`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

# Submodules, not the package: gradscope.linalg imports this module last, and
# gradscope.norms (pulled in by norms.base) imports gradscope.linalg.
from gradscope.linalg.operator_norm import conv_operator_norm
from gradscope.linalg.reshape import reshape_norms
from gradscope.norms.base import effective_weight

_CONV = nn.modules.conv._ConvNd
_CONV_T = nn.modules.conv._ConvTransposeNd


@dataclass(frozen=True)
class WeightLayer:
    """A Linear / Conv / ConvTranspose layer and the spatial size of the input it was called on.

    Attributes
    ----------
    name : str
        Name from ``model.named_modules()``.
    module : nn.Module
        The layer.
    index : int
        Position in forward (call) order, from 1.
    input_size : tuple of int
        Spatial size of its input (empty for a Linear layer).
    """

    name: str
    module: nn.Module
    index: int
    input_size: tuple[int, ...]

    @property
    def kind(self) -> str:
        """``"linear"``, ``"conv"`` or ``"conv_transpose"``."""
        if isinstance(self.module, _CONV_T):
            return "conv_transpose"
        return "conv" if isinstance(self.module, _CONV) else "linear"

    @property
    def kernel_size(self) -> tuple[int, ...]:
        return tuple(self.module.kernel_size) if self.kind != "linear" else ()

    @property
    def stride(self) -> tuple[int, ...]:
        return tuple(self.module.stride) if self.kind != "linear" else ()

    @property
    def patch_fits(self) -> bool:
        """Whether some output position's whole (dilated) window lies inside the unpadded input.

        Only then is ``sigma_fwd <= sigma_op`` guaranteed: the top right singular
        vector of the reshape, placed in that window, is an input the operator
        maps to a vector of norm at least ``sigma_fwd``. Windows start at
        ``j * stride - padding``, so with padding and stride a window as large
        as the input may still not fit.
        """
        if self.kind != "conv":
            return True
        m = self.module
        for k, s, d, n, pad in zip(self.kernel_size, self.stride, m.dilation, self.input_size, _pad_before(m)):
            extent = d * (k - 1)
            starts = range(-pad, n + pad - extent, s)
            if not any(0 <= start and start + extent <= n - 1 for start in starts):
                return False
        return True

    def overlap_factor(self) -> float:
        """``sqrt`` of the most output windows any one input entry falls in: ``ceil(k/stride)`` for 2-D, dilation 1.

        ``||conv||_op <= overlap_factor * sigma_fwd`` because each output position
        applies the reshape to one window and every input entry is read by at
        most ``overlap_factor**2`` windows. 1 for a Linear layer.
        """
        if self.kind == "linear":
            return 1.0
        count = 1
        for k, s, d in zip(self.kernel_size, self.stride, self.module.dilation):
            # taps t whose position t*d lands on input p for some window start j*s: t*d = p (mod s)
            count *= max(sum(1 for t in range(k) if (t * d - residue) % s == 0) for residue in range(s))
        return math.sqrt(count)


def _pad_before(module: nn.Module) -> tuple[int, ...]:
    """Zero padding before the input, per spatial dimension (``'same'`` puts the smaller half first)."""
    if module.padding == "valid":
        return (0,) * len(module.kernel_size)
    if module.padding == "same":
        return tuple(d * (k - 1) // 2 for k, d in zip(module.kernel_size, module.dilation))
    return tuple(module.padding)


def weight_layers(model: nn.Module, example: Tensor) -> list[WeightLayer]:
    """The model's Linear / Conv / ConvTranspose layers in call order, with their input sizes.

    Parameters
    ----------
    model : nn.Module
        Any model; it is called once on ``example`` under ``torch.no_grad``.
    example : Tensor
        A batch of inputs of the size the analysis is about.

    Examples
    --------
    >>> net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 36, 1))
    >>> [(l.name, l.input_size) for l in weight_layers(net, torch.zeros(1, 1, 6, 6))]
    [('0', (6, 6)), ('2', ())]
    """
    names = {module: name for name, module in model.named_modules()}
    seen: dict[nn.Module, tuple[int, ...]] = {}
    order: list[nn.Module] = []

    def remember(module: nn.Module, inputs: tuple) -> None:
        if module not in seen:
            order.append(module)
            seen[module] = tuple(inputs[0].shape[2:]) if isinstance(module, _CONV) else ()

    handles = [m.register_forward_pre_hook(remember) for m in model.modules()
               if isinstance(m, (nn.Linear, _CONV))]
    if not handles:
        raise ValueError(f"{type(model).__name__} has no Linear / Conv / ConvTranspose layer")
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    return [WeightLayer(names[m], m, i, seen[m]) for i, m in enumerate(order, start=1)]


def layer_sigmas(layer: WeightLayer, *, weight: Tensor | None = None, tol: float = 1e-7,
                 max_iter: int = 3000) -> dict[str, float]:
    """``sigma_fwd``, ``sigma_bwd`` and ``sigma_op`` of a layer's effective weight, in float64.

    Parameters
    ----------
    layer : WeightLayer
        From :func:`weight_layers`.
    weight : Tensor, optional
        Use this kernel instead of the layer's effective weight (what it computes with).
    tol, max_iter : float, int
        Power-iteration tolerance and limit for ``sigma_op`` (zero padding or strides;
        exact FFT where the geometry allows). The power estimate is a lower bound
        within about ``tol`` relative.

    Returns
    -------
    dict
        ``sigma_fwd``, ``sigma_bwd``, ``sigma_op`` (floats) and ``overlap`` (:meth:`WeightLayer.overlap_factor`).
    """
    module = layer.module
    w = (effective_weight(module) if weight is None else weight.detach()).to(torch.float64)
    transposed = layer.kind == "conv_transpose"
    sigma_fwd, sigma_bwd = (float(s) for s in reshape_norms(w, transposed=transposed))
    if layer.kind == "linear":
        sigma_op = sigma_fwd
    else:
        sigma_op = float(conv_operator_norm(
            w, layer.input_size, module.stride, module.padding, module.dilation, module.padding_mode,
            transposed, module.output_padding if transposed else 0, module.groups, tol=tol, max_iter=max_iter))
    return {"sigma_fwd": sigma_fwd, "sigma_bwd": sigma_bwd, "sigma_op": sigma_op,
            "overlap": layer.overlap_factor()}
