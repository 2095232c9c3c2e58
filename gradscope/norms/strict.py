"""Strict spectral normalization: divide a convolution by its operator norm on the real input size."""
from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from gradscope._checks import check_choice
from gradscope.linalg import (
    PADDING_MODES,
    ConvGeometry,
    conv_adjoint,
    conv_apply,
    conv_geometry,
    forward_dim,
    kernel_gradient,
    lanczos,
    power_step_,
    reshape_weight,
)
from gradscope.norms.spectral import ScaledParametrization, initial_singular_vectors, matrix_sigma

WARMUP_TOL = 1e-3
WARMUP_MAX_ITER = 64


class StrictSpectralNorm(ScaledParametrization):
    """``W_eff = scale * gamma * W / ||conv_W||_op`` for a convolution's true operator norm.

    The operator is the layer's convolution (bias-free) on its real input size,
    stride, padding (mode included), dilation and groups; its norm is estimated
    like ``sn``'s, by ``n_power_iterations`` power steps per training forward
    (the convolution and its exact adjoint) from persistent input-shaped ``v``
    and output-shaped ``u`` buffers, and ``sigma = <u, conv_W(v)>`` is
    differentiable w.r.t. ``W`` (not through ``u``, ``v``), as in ``sn``. The reshape norm ``sigma_fwd`` is tracked too
    (own vectors, not differentiated) for comparison with ``sn``.

    The input size is given (``input_size``) or taken from the layer's first
    forward by :meth:`attach`'s pre-hook; it is fixed from then on. Until then
    ``u``/``v`` are empty and the weight cannot be read. When the size becomes
    known, ``u``/``v`` start from a Lanczos estimate (relative tolerance 1e-3,
    from a fixed-seed vector, so identical on every DDP rank) rather than random
    vectors, because conv operators' clustered top singular values make plain
    power iteration slow to settle.

    Parameters
    ----------
    weight : Tensor
        The layer's raw weight.
    stride, padding, dilation, padding_mode, transposed, output_padding, groups
        The layer's convolution parameters (see :meth:`from_module`).
    input_size : int or sequence of int, optional
        Spatial input size, if known in advance.
    n_power_iterations, eps, scale, gamma
        As in :class:`gradscope.norms.SpectralNorm`.

    Examples
    --------
    >>> from torch.nn.utils import parametrize
    >>> conv = nn.Conv2d(3, 8, 3, padding=1)
    >>> strict = StrictSpectralNorm.from_module(conv, input_size=(8, 8))
    >>> _ = parametrize.register_parametrization(conv, "weight", strict)
    >>> tuple(strict.v.shape), tuple(strict.u.shape)
    ((1, 3, 8, 8), (1, 8, 8, 8))
    """

    norm = "strict"

    def __init__(self, weight: Tensor, *, stride: int | Sequence[int] = 1, padding: int | str | Sequence[int] = 0,
                 dilation: int | Sequence[int] = 1, padding_mode: str = "zeros", transposed: bool = False,
                 output_padding: int | Sequence[int] = 0, groups: int = 1,
                 input_size: int | Sequence[int] | None = None, n_power_iterations: int = 1, eps: float = 1e-12,
                 scale: float = 1.0, gamma: nn.Parameter | None = None) -> None:
        super().__init__(weight, n_power_iterations=n_power_iterations, eps=eps, scale=scale, gamma=gamma)
        check_choice("padding_mode", padding_mode, PADDING_MODES)
        self.weight_shape = tuple(weight.shape)
        self.conv_args: dict[str, Any] = dict(stride=stride, padding=padding, dilation=dilation,
                                              padding_mode=padding_mode, transposed=transposed, groups=groups)
        self.output_padding = output_padding
        self.dim_fwd = forward_dim(transposed)
        u_fwd, v_fwd = initial_singular_vectors(reshape_weight(weight, self.dim_fwd), self.eps)
        self.register_buffer("u_fwd", u_fwd)
        self.register_buffer("v_fwd", v_fwd)
        self.register_buffer("sigma_fwd", self.sigma.clone())
        self.register_buffer("u", weight.new_empty(0).detach())
        self.register_buffer("v", weight.new_empty(0).detach())
        self._geometry_cache: tuple[tuple, ConvGeometry] | None = None
        if input_size is not None:
            self.materialize(weight, input_size)

    @classmethod
    def from_module(cls, module: nn.modules.conv._ConvNd, **kwargs: Any) -> StrictSpectralNorm:
        """Build from a ``torch.nn`` convolution module, copying its convolution parameters."""
        return cls(module.weight, stride=module.stride, padding=module.padding, dilation=module.dilation,
                   padding_mode=module.padding_mode,
                   transposed=isinstance(module, nn.modules.conv._ConvTransposeNd),
                   output_padding=module.output_padding, groups=module.groups, **kwargs)

    @property
    def materialized(self) -> bool:
        """Whether the input size is known (``u``, ``v`` allocated)."""
        return self.v.numel() > 0

    @property
    def input_size(self) -> tuple[int, ...] | None:
        """The spatial input size the operator norm refers to, or ``None`` before it is known."""
        return tuple(self.v.shape[2:]) if self.materialized else None

    def _build_geometry(self, input_size: Sequence[int], output_padding: Any) -> ConvGeometry:
        return conv_geometry(self.weight_shape, input_size, output_padding=output_padding, **self.conv_args)

    def geometry(self) -> ConvGeometry:
        """The operator's :class:`~gradscope.linalg.ConvGeometry`, recovered from the buffers' shapes."""
        if not self.materialized:
            raise RuntimeError("strict spectral norm: the input size is unknown; run a forward pass through "
                               "the model or pass input_sizes to gradscope.norms.normalize")
        key = (tuple(self.v.shape), tuple(self.u.shape))
        if self._geometry_cache is None or self._geometry_cache[0] != key:
            geom = self._build_geometry(key[0][2:], self.output_padding)
            if self.conv_args["transposed"]:  # forward(x, output_size) may have chosen another output_padding
                extra = tuple(a - b for a, b in zip(key[1][2:], geom.output_size))
                geom = self._build_geometry(key[0][2:], tuple(p + e for p, e in zip(geom.output_padding, extra)))
            if geom.output_shape != key[1]:
                raise RuntimeError(f"strict spectral norm: buffers u {key[1]} and v {key[0]} do not fit "
                                   f"this layer (expected u {geom.output_shape})")
            self._geometry_cache = (key, geom)
        return self._geometry_cache[1]

    @torch.no_grad()
    @torch.inference_mode(False)  # buffers born in a first forward under inference_mode must stay updatable
    def materialize(self, weight: Tensor, input_size: int | Sequence[int],
                    output_padding: Sequence[int] | None = None) -> None:
        """Fix the input size and start ``u``, ``v`` from a Lanczos estimate of the top singular pair."""
        geom = self._build_geometry(input_size, self.output_padding if output_padding is None else output_padding)
        w = weight.detach()
        # a fixed seed: every DDP rank (same weights) starts from the same vector and ends with the same u, v
        v0 = torch.randn(geom.input_shape, generator=torch.Generator().manual_seed(0), dtype=w.dtype).to(w.device)
        top = lanczos(partial(conv_apply, w, geom=geom), partial(conv_adjoint, w, geom=geom), v0,
                      tol=WARMUP_TOL, max_iter=WARMUP_MAX_ITER, eps=self.eps, warn=False)
        self.u = top.u.contiguous()
        self.v = top.v.contiguous()
        self.sigma.copy_(top.sigma)
        self._geometry_cache = None

    def attach(self, module: nn.Module) -> None:
        """Register the forward pre-hook on ``module`` that takes the input size from its first forward."""
        module.register_forward_pre_hook(self._capture_input_size, with_kwargs=True)

    def _capture_input_size(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if self.materialized:
            return None
        x = args[0] if args else kwargs["input"]
        nd = len(self.weight_shape) - 2
        output_padding = None
        output_size = kwargs.get("output_size", args[1] if len(args) > 1 else None)
        if self.conv_args["transposed"] and output_size is not None:
            output_padding = module._output_padding(x, output_size, module.stride, module.padding,
                                                    module.kernel_size, nd, module.dilation)
        self.materialize(module.parametrizations["weight"].original, tuple(x.shape[-nd:]), output_padding)
        return None

    def forward(self, weight: Tensor) -> Tensor:
        """Return the weight divided by the operator-norm estimate (advancing ``u``, ``v`` in training)."""
        geom = self.geometry()
        n = self._iterations()
        if n:
            power_step_(partial(conv_apply, weight, geom=geom), partial(conv_adjoint, weight, geom=geom),
                        self.u, self.v, n, self.eps)
        # sigma = <u, conv_W(v)> = <W, G(u, v)>: one weight-gradient convolution instead of a
        # differentiable forward conv plus its backward; G is a fresh tensor (no clone needed).
        with torch.no_grad():
            direction = kernel_gradient(self.u, self.v, geom)
        sigma = torch.vdot(weight.flatten(), direction.flatten())
        with torch.no_grad():
            self.sigma_fwd.copy_(matrix_sigma(reshape_weight(weight, self.dim_fwd), self.u_fwd, self.v_fwd, n,
                                              self.eps))
        return self._rescale(weight, sigma)

    def sigma_estimates(self) -> dict[str, Tensor]:
        """``{"sigma", "sigma_fwd"}``: the operator norm (the divisor) and the reshape norm."""
        return {"sigma": self.sigma.detach(), "sigma_fwd": self.sigma_fwd.detach()}

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any) -> None:
        # A fresh model has not seen an input yet: adopt the saved input size.
        for name in ("u", "v"):
            saved = state_dict.get(prefix + name)
            if saved is not None and saved.shape != getattr(self, name).shape:
                setattr(self, name, self.v.new_empty(saved.shape))
        self._geometry_cache = None
        super()._load_from_state_dict(state_dict, prefix, *args)
