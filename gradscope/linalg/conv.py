"""A convolution as a linear operator on one input size: its geometry, apply and exact adjoint."""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gradscope._checks import check_choice, check_int_at_least

PADDING_MODES = ("zeros", "circular", "reflect", "replicate")
_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
_MAX_DENSE_ENTRIES = 10**8


@dataclass(frozen=True)
class ConvGeometry:
    """Everything but the kernel values that fixes a convolution's linear operator.

    Build it with :func:`conv_geometry` or :func:`conv_geometry_of`, which validate.
    The operator maps tensors of :attr:`input_shape` ``(1, in_channels, *input_size)``
    to :attr:`output_shape`. ``padding`` holds ``(before, after)`` per spatial dimension.
    """

    in_channels: int
    out_channels: int
    input_size: tuple[int, ...]
    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[tuple[int, int], ...]
    dilation: tuple[int, ...]
    padding_mode: str = "zeros"
    transposed: bool = False
    output_padding: tuple[int, ...] = ()
    groups: int = 1

    @property
    def ndim(self) -> int:
        """Number of spatial dimensions (1, 2 or 3)."""
        return len(self.input_size)

    @property
    def output_size(self) -> tuple[int, ...]:
        """Spatial size of the operator's output."""
        if self.transposed:
            return tuple((n - 1) * s - lo - hi + d * (k - 1) + op + 1 for n, s, (lo, hi), d, k, op in zip(
                self.input_size, self.stride, self.padding, self.dilation, self.kernel_size,
                self.output_padding))
        return tuple((n + lo + hi - d * (k - 1) - 1) // s + 1 for n, s, (lo, hi), d, k in zip(
            self.input_size, self.stride, self.padding, self.dilation, self.kernel_size))

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape ``(1, in_channels, *input_size)`` of the operator's argument."""
        return (1, self.in_channels, *self.input_size)

    @property
    def output_shape(self) -> tuple[int, ...]:
        """Shape ``(1, out_channels, *output_size)`` of the operator's result."""
        return (1, self.out_channels, *self.output_size)

    @property
    def weight_shape(self) -> tuple[int, ...]:
        """Shape of the kernel: ``(c_out, c_in/groups, *k)``, or ``(c_in, c_out/groups, *k)`` if transposed."""
        first, second = (self.in_channels, self.out_channels) if self.transposed else (
            self.out_channels, self.in_channels)
        return (first, second // self.groups, *self.kernel_size)

    @property
    def fft_diagonalizable(self) -> bool:
        """Circular padding, stride 1 and output size = input size: a block-circulant operator."""
        return (not self.transposed and self.padding_mode == "circular"
                and all(s == 1 for s in self.stride) and self.output_size == self.input_size)

    @property
    def _native_padding(self) -> tuple[int, ...] | None:
        # Symmetric zero padding can be left to the convolution itself (no padded copy).
        if self.padding_mode == "zeros" and all(lo == hi for lo, hi in self.padding):
            return tuple(lo for lo, _ in self.padding)
        return None

    def _adjoint_output_padding(self, padding: int | tuple[int, ...]) -> tuple[int, ...]:
        # conv_transpose must reproduce the (padded) input size exactly.
        pads = (padding,) * self.ndim if isinstance(padding, int) else padding
        target = self.input_size if self._native_padding is not None else tuple(
            n + lo + hi for n, (lo, hi) in zip(self.input_size, self.padding))
        return tuple(t - ((o - 1) * s - 2 * p + d * (k - 1) + 1) for t, o, s, p, d, k in zip(
            target, self.output_size, self.stride, pads, self.dilation, self.kernel_size))

    def _pad_arg(self) -> tuple[int, ...]:
        return tuple(x for lo, hi in reversed(self.padding) for x in (lo, hi))

    def _pad_mode(self) -> str:
        return "constant" if self.padding_mode == "zeros" else self.padding_mode


def _per_dim(what: str, value: int | Sequence[int], ndim: int, minimum: int) -> tuple[int, ...]:
    values = (value,) * ndim if isinstance(value, int) and not isinstance(value, bool) else tuple(value)
    if len(values) != ndim:
        raise ValueError(f"{what} must be an int or {ndim} ints, got {value!r}")
    for v in values:
        check_int_at_least(what, v, minimum)
    return values


def _resolve_padding(padding: int | str | Sequence[int], kernel: tuple[int, ...],
                     dilation: tuple[int, ...], stride: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
    if isinstance(padding, str):
        check_choice("padding", padding, ("same", "valid"))
        if padding == "valid":
            return tuple((0, 0) for _ in kernel)
        if any(s != 1 for s in stride):
            raise ValueError("padding='same' needs stride 1 (as in torch); give explicit padding instead")
        # torch puts the odd extra pad after, as in Conv{1,2,3}d(padding="same").
        totals = [d * (k - 1) for k, d in zip(kernel, dilation)]
        return tuple((t // 2, t - t // 2) for t in totals)
    return tuple((p, p) for p in _per_dim("padding", padding, len(kernel), 0))


def conv_geometry(weight_shape: Sequence[int], input_size: int | Sequence[int], stride: int | Sequence[int] = 1,
                  padding: int | str | Sequence[int] = 0, dilation: int | Sequence[int] = 1,
                  padding_mode: str = "zeros", transposed: bool = False,
                  output_padding: int | Sequence[int] = 0, groups: int = 1) -> ConvGeometry:
    """Validate a convolution's parameters and return its :class:`ConvGeometry`.

    Parameters follow ``torch.nn.Conv{1,2,3}d`` / ``ConvTranspose{1,2,3}d``; ``weight_shape``
    is the weight's shape (its length fixes 1d/2d/3d) and ``input_size`` the spatial size of
    the input (an int for all dimensions, or one per dimension).

    Examples
    --------
    >>> g = conv_geometry((16, 8, 4, 4), 32, stride=2, padding=1)
    >>> g.output_shape
    (1, 16, 16, 16)
    >>> conv_geometry((8, 16, 4, 4), 16, stride=2, padding=1, transposed=True).output_size
    (32, 32)
    """
    shape = tuple(int(s) for s in weight_shape)
    if len(shape) not in (3, 4, 5):
        raise ValueError(f"a conv weight has 3, 4 or 5 dimensions (1d/2d/3d), got shape {shape}")
    ndim = len(shape) - 2
    check_choice("padding_mode", padding_mode, PADDING_MODES)
    check_int_at_least("groups", groups, 1)
    kernel = _per_dim("kernel size", shape[2:], ndim, 1)
    size = _per_dim("input_size", input_size, ndim, 1)
    strides = _per_dim("stride", stride, ndim, 1)
    dilations = _per_dim("dilation", dilation, ndim, 1)
    if shape[0] % groups:
        raise ValueError(f"groups={groups} must divide the weight's first dimension {shape[0]}")
    in_ch, out_ch = (shape[0], shape[1] * groups) if transposed else (shape[1] * groups, shape[0])
    if transposed:
        if padding_mode != "zeros" or isinstance(padding, str):
            raise ValueError("transposed convolutions support only padding_mode='zeros' with int padding "
                             "(as in torch)")
        out_pad = _per_dim("output_padding", output_padding, ndim, 0)
        if any(op >= max(s, d) for op, s, d in zip(out_pad, strides, dilations)):
            raise ValueError(f"output_padding {out_pad} must be smaller than stride or dilation")
    else:
        out_pad = (0,) * ndim
        if output_padding not in (0, (0,) * ndim, [0] * ndim):
            raise ValueError("output_padding applies only to transposed convolutions")
    pads = _resolve_padding(padding, kernel, dilations, strides)
    limit = {"circular": lambda n: n, "reflect": lambda n: n - 1}.get(padding_mode)
    if limit is not None and any(max(p) > limit(n) for p, n in zip(pads, size)):
        raise ValueError(f"{padding_mode} padding {pads} is too large for input size {size}")
    geom = ConvGeometry(in_ch, out_ch, size, kernel, strides, pads, dilations, padding_mode,
                        bool(transposed), out_pad, groups)
    if any(o < 1 for o in geom.output_size):
        raise ValueError(f"input size {size} is too small for kernel {kernel} with dilation {dilations}, "
                         f"padding {pads} (output size {geom.output_size})")
    return geom


def conv_geometry_of(module: nn.Module, input_size: int | Sequence[int],
                     output_padding: Sequence[int] | None = None) -> ConvGeometry:
    """The :class:`ConvGeometry` of a ``torch.nn`` convolution module on inputs of ``input_size``.

    ``output_padding`` overrides a ``ConvTranspose`` module's own (as its ``forward(x, output_size)`` does).

    Examples
    --------
    >>> conv_geometry_of(nn.Conv2d(3, 8, 3, padding=1), (32, 32)).output_size
    (32, 32)
    """
    if not isinstance(module, nn.modules.conv._ConvNd):
        raise ValueError(f"expected a Conv{{1,2,3}}d or ConvTranspose{{1,2,3}}d module, got {type(module).__name__}")
    transposed = isinstance(module, nn.modules.conv._ConvTransposeNd)
    return conv_geometry(module.weight.shape, input_size, module.stride, module.padding, module.dilation,
                         module.padding_mode, transposed,
                         module.output_padding if output_padding is None else output_padding, module.groups)


def _crop(t: Tensor, size: tuple[int, ...]) -> Tensor:
    for axis, n in enumerate(size, start=2):
        if t.shape[axis] != n:
            t = t.narrow(axis, 0, n)
    return t


def _pad_adjoint(z: Tensor, geom: ConvGeometry) -> Tensor:
    if geom.padding_mode == "zeros":
        for axis, ((lo, _), n) in enumerate(zip(geom.padding, geom.input_size), start=2):
            z = z.narrow(axis, lo, n)
        return z
    # circular / reflect / replicate padding is linear; its adjoint is its vector-Jacobian product.
    with torch.enable_grad():
        x = torch.zeros(z.shape[:2] + geom.input_size, dtype=z.dtype, device=z.device, requires_grad=True)
        padded = F.pad(x, geom._pad_arg(), mode=geom._pad_mode())
        (grad,) = torch.autograd.grad(padded, x, z, create_graph=z.requires_grad)
    return grad


def conv_apply(weight: Tensor, x: Tensor, geom: ConvGeometry) -> Tensor:
    """Apply the convolution operator (no bias) to ``x`` of shape ``(batch, in_channels, *input_size)``.

    Differentiable in ``weight`` and ``x``.

    Examples
    --------
    >>> g = conv_geometry((4, 2, 3), 10, padding=1, padding_mode="circular")
    >>> conv_apply(torch.randn(4, 2, 3), torch.randn(1, 2, 10), g).shape
    torch.Size([1, 4, 10])
    """
    nd = geom.ndim
    if geom.transposed:
        pads = tuple(lo for lo, _ in geom.padding)
        return _CONV_T[nd](x, weight, None, geom.stride, pads, geom.output_padding, geom.groups, geom.dilation)
    native = geom._native_padding
    if native is not None:
        return _CONV[nd](x, weight, None, geom.stride, native, geom.dilation, geom.groups)
    padded = F.pad(x, geom._pad_arg(), mode=geom._pad_mode())
    return _CONV[nd](padded, weight, None, geom.stride, 0, geom.dilation, geom.groups)


def conv_adjoint(weight: Tensor, y: Tensor, geom: ConvGeometry) -> Tensor:
    """Apply the exact adjoint (transpose) of :func:`conv_apply` to ``y`` of the output's shape.

    ``<conv_apply(w, x), y> == <x, conv_adjoint(w, y)>`` for all ``x``, ``y``.

    Examples
    --------
    >>> g = conv_geometry((4, 2, 3, 3), 9, stride=2, padding=1)
    >>> w, x, y = torch.randn(4, 2, 3, 3), torch.randn(1, 2, 9, 9), torch.randn(1, 4, 5, 5)
    >>> bool(torch.isclose((conv_apply(w, x, g) * y).sum(), (x * conv_adjoint(w, y, g)).sum(), rtol=1e-4))
    True
    """
    nd = geom.ndim
    if geom.transposed:
        pads = tuple(lo for lo, _ in geom.padding)
        return _crop(_CONV[nd](y, weight, None, geom.stride, pads, geom.dilation, geom.groups), geom.input_size)
    native = geom._native_padding
    pads = native if native is not None else 0
    z = _CONV_T[nd](y, weight, None, geom.stride, pads, geom._adjoint_output_padding(pads), geom.groups,
                    geom.dilation)
    return z if native is not None else _pad_adjoint(z, geom)


def kernel_gradient(u: Tensor, v: Tensor, geom: ConvGeometry) -> Tensor:
    """Gradient of the bilinear form ``<u, conv_apply(W, v)>`` w.r.t. the kernel ``W``.

    The form is linear in ``W``, so this does not depend on ``W``: ``<u, conv_apply(W, v)>
    == (W * kernel_gradient(u, v, geom)).sum()`` for every kernel. One weight-gradient
    convolution; no autograd graph is recorded for ``u`` or ``v``.

    Examples
    --------
    >>> g = conv_geometry((4, 2, 3, 3), 6, padding=1)
    >>> w, u, v = torch.randn(4, 2, 3, 3), torch.randn(1, 4, 6, 6), torch.randn(1, 2, 6, 6)
    >>> bool(torch.isclose((u * conv_apply(w, v, g)).sum(), (w * kernel_gradient(u, v, g)).sum(), rtol=1e-4))
    True
    """
    native = geom._native_padding
    if geom.transposed:
        x, pads, out_pad = v, tuple(lo for lo, _ in geom.padding), geom.output_padding
    elif native is not None:
        x, pads, out_pad = v, native, (0,) * geom.ndim
    else:
        x, pads, out_pad = F.pad(v, geom._pad_arg(), mode=geom._pad_mode()), (0,) * geom.ndim, (0,) * geom.ndim
    weight = u.new_empty(1).expand(geom.weight_shape)  # only its shape is read
    return torch.ops.aten.convolution_backward(
        u, x, weight, None, geom.stride, pads, geom.dilation, geom.transposed, out_pad, geom.groups,
        (False, True, False))[1]


def conv_operator_matrix(weight: Tensor, geom: ConvGeometry) -> Tensor:
    """Dense matrix ``(prod(output_shape), prod(input_shape))`` of the operator, for tiny sizes.

    Built by applying the operator to every basis vector; entries are in
    row-major (channel, then spatial) order of the flattened tensors.

    Examples
    --------
    >>> g = conv_geometry((1, 1, 2), 3)
    >>> conv_operator_matrix(torch.tensor([[[1.0, 2.0]]]), g)
    tensor([[1., 2., 0.],
            [0., 1., 2.]])
    """
    n_in, n_out = math.prod(geom.input_shape), math.prod(geom.output_shape)
    if n_in * n_out > _MAX_DENSE_ENTRIES:
        raise ValueError(f"dense operator matrix would have {n_in * n_out} entries "
                         f"(limit {_MAX_DENSE_ENTRIES}); use conv_operator_norm")
    basis = torch.eye(n_in, dtype=weight.dtype, device=weight.device).reshape(n_in, *geom.input_shape[1:])
    return conv_apply(weight, basis, geom).reshape(n_in, n_out).T
