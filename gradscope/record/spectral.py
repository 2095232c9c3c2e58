"""Warm-started spectral norms: persistent power-iteration vectors the recorder keeps for every operator.

Each recorded step advances, per weight operator, one power step of the raw
weight's matrix (``sigma_fwd``: two matrix-vector products) and one of the
layer as an operator with its effective weight (``sigma_op``: one convolution
and one transposed convolution of a single input-sized tensor for a conv
layer). Weights move little between recorded steps, so the vectors stay
close to the top singular vectors and the estimates track the true norms
from below. On the exact schedule ``sigma_op`` is solved to convergence.

The vectors live in the recorder (and its checkpoint state), never in the
model's ``state_dict``; they start from a generator seeded by the operator's
index, so the global random state (and the training trajectory) is untouched.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from gradscope.linalg import conv_operator_norm
from gradscope.linalg.conv import ConvGeometry, conv_adjoint, conv_apply, conv_geometry
from gradscope.record.layouts import CONV

if TYPE_CHECKING:  # pragma: no cover
    from gradscope.record.layers import OperatorTarget

_EPS = 1e-12


def _unit(x: Tensor) -> Tensor:
    return x / torch.linalg.vector_norm(x).clamp_min(_EPS)


def nonfinite_norm(weight: Tensor) -> Tensor | None:
    """``nan`` (any NaN entry) or ``inf`` (an infinite one) as a 0-d tensor if ``weight`` is not finite, else ``None``.

    The norm of such a matrix is exactly that, and the SVD that would compute it raises
    (``linalg.svd: The algorithm failed to converge``) instead. Reads one flag on the host: for the exact
    schedule only, which synchronizes anyway.
    """
    if bool(torch.isfinite(weight).all()):
        return None
    value = float("nan") if bool(torch.isnan(weight).any()) else float("inf")
    return torch.full((), value, dtype=weight.dtype, device=weight.device)


class WarmSpectral:
    """The power-iteration state of one operator: ``v`` for its matrix, ``v_op`` for the layer operator."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.v: Tensor | None = None
        self.v_op: Tensor | None = None
        self._geometry: tuple[tuple[int, ...], ConvGeometry] | None = None  # validated once per input size

    def _start(self, like: Tensor, shape: tuple[int, ...]) -> Tensor:
        # On the device itself (a copy from the host would synchronize), except for shape-only meta tensors,
        # which have no generator: drawn on the CPU and moved.
        where = torch.device("cpu") if like.device.type == "meta" else like.device
        generator = torch.Generator(device=where).manual_seed(self.seed)
        return _unit(torch.randn(shape, generator=generator, device=where, dtype=like.dtype).to(like.device))

    @torch.no_grad()
    def forward_step(self, matrix: Tensor) -> Tensor:
        """One power step on ``matrix`` from the kept vector; returns the estimate ``||W^T u||`` (0-d)."""
        matrix = matrix.detach()
        if self.v is None or self.v.shape != matrix.shape[1:] or self.v.dtype != matrix.dtype:
            self.v = self._start(matrix, (matrix.shape[1],))
        u = _unit(matrix @ self.v)
        back = matrix.t() @ u
        sigma = torch.linalg.vector_norm(back)
        self.v = back / sigma.clamp_min(_EPS)
        return sigma

    @torch.no_grad()
    def operator_step(self, op: OperatorTarget, converged: bool = False) -> Tensor | None:
        """``sigma_op`` of the operator: one warm power step, or the converged value; ``None`` if unknown yet."""
        weight = op.effective()
        if weight is None:
            return None
        weight = weight.detach()
        if converged:  # the SVDs below raise on NaN / inf: record the (exact) non-finite norm instead
            bad = nonfinite_norm(weight)
            if bad is not None:
                return bad
        if op.kind != CONV:
            matrix = op.matrix(weight)
            if converged:
                return torch.linalg.matrix_norm(matrix, ord=2)
            if self.v_op is None or self.v_op.shape != matrix.shape[1:] or self.v_op.dtype != matrix.dtype:
                self.v_op = self._start(matrix, (matrix.shape[1],))
            back = matrix.t() @ _unit(matrix @ self.v_op)
        else:
            module, size = op.layer.module, op.layer.input_size
            if size is None:
                return None
            if converged:
                return conv_operator_norm(weight, size, module.stride, module.padding, module.dilation,
                                          module.padding_mode, op.layer.transposed, module.output_padding,
                                          module.groups)
            if self._geometry is None or self._geometry[0] != size:
                # From the raw weight's shape: reading module.weight would run its parametrization.
                self._geometry = (size, conv_geometry(op.raw.shape, size, module.stride, module.padding,
                                                      module.dilation, module.padding_mode, op.layer.transposed,
                                                      module.output_padding, module.groups))
            geom = self._geometry[1]
            shape = (1, geom.in_channels, *geom.input_size)
            if self.v_op is None or tuple(self.v_op.shape) != shape or self.v_op.dtype != weight.dtype:
                self.v_op = self._start(weight, shape)
            back = conv_adjoint(weight, _unit(conv_apply(weight, self.v_op, geom)), geom)
        sigma = torch.linalg.vector_norm(back)
        self.v_op = back / sigma.clamp_min(_EPS)
        return sigma

    def state_dict(self) -> dict[str, Any]:
        """The vectors (on the CPU) for a checkpoint."""
        return {"v": None if self.v is None else self.v.cpu(), "v_op": None if self.v_op is None else self.v_op.cpu()}

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        """Restore :meth:`state_dict` onto ``device``."""
        self.v = None if state.get("v") is None else state["v"].to(device)
        self.v_op = None if state.get("v_op") is None else state["v_op"].to(device)
