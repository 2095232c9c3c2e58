"""Exact (to a stated tolerance) spectral norms of convolution operators."""
from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial

import torch
from torch import Tensor

from gradscope._checks import check_choice, check_int_at_least
from gradscope.linalg.conv import ConvGeometry, conv_adjoint, conv_apply, conv_geometry, conv_operator_matrix
from gradscope.linalg.power import lanczos, power_iteration

METHODS = ("auto", "fft", "lanczos", "power", "dense")


def default_tol(dtype: torch.dtype) -> float:
    """Default relative tolerance of the iterative methods: 1e-7 in float64, 1e-4 in lower precision."""
    return 1e-7 if dtype == torch.float64 else 1e-4


def circular_singular_values(weight: Tensor, geom: ConvGeometry) -> Tensor:
    """All singular values of a circular, stride-1, size-preserving convolution, descending.

    The operator is block circulant, so the 2-D (or n-D) DFT block-diagonalizes
    it (Sedghi, Gupta and Long, ICLR 2019): its singular values are those of
    the ``c_out x c_in`` transfer matrices ``P(f) = sum_t W[:, :, t] exp(-2 pi i <f, t*d / n>)``
    over all frequencies ``f``. Memory is ``prod(input_size) * c_out * c_in / groups`` complex entries.

    Examples
    --------
    >>> g = conv_geometry((1, 1, 3), 8, padding=1, padding_mode="circular")
    >>> float(circular_singular_values(torch.tensor([[[1.0, 1.0, 1.0]]]), g)[0])
    3.0
    """
    if not geom.fft_diagonalizable:
        raise ValueError("the FFT method needs padding_mode='circular', stride 1 and output size = input size "
                         "(total padding = dilation*(kernel-1) per dimension)")
    complex_dtype = torch.complex128 if weight.dtype == torch.float64 else torch.complex64
    g = geom.groups
    blocks = weight.reshape(g, weight.shape[0] // g, *weight.shape[1:]).to(complex_dtype)
    for n, k, d in zip(geom.input_size, geom.kernel_size, geom.dilation):
        # exact integer phases (f * t * d mod n) keep float32 accurate on large inputs
        phase = torch.outer(torch.arange(n), torch.arange(k) * d).remainder(n).to(torch.float64) * (2 * math.pi / n)
        dft = torch.polar(torch.ones_like(phase), -phase).to(complex_dtype).to(weight.device)
        blocks = torch.tensordot(blocks, dft, dims=([3], [1]))  # next kernel axis -> frequency axis at the end
    transfer = blocks.movedim((0, 1, 2), (-3, -2, -1))
    return torch.linalg.svdvals(transfer).flatten().sort(descending=True).values


def conv_operator_norm(weight: Tensor, input_size: int | Sequence[int], stride: int | Sequence[int] = 1,
                       padding: int | str | Sequence[int] = 0, dilation: int | Sequence[int] = 1,
                       padding_mode: str = "zeros", transposed: bool = False,
                       output_padding: int | Sequence[int] = 0, groups: int = 1, *, method: str = "auto",
                       tol: float | None = None, max_iter: int = 5000, dtype: torch.dtype | None = None,
                       seed: int = 0) -> Tensor:
    """Spectral norm of a convolution as a linear operator on inputs of ``input_size``.

    Unlike the norm of the reshaped kernel (:func:`reshape_norms`) this is the
    layer's true Lipschitz constant for its stride, padding and dilation.

    Parameters
    ----------
    weight : Tensor
        Kernel ``(c_out, c_in/groups, *k)``, or ``(c_in, c_out/groups, *k)`` if ``transposed``.
    input_size : int or sequence of int
        Spatial size of the layer's input.
    stride, padding, dilation, padding_mode, transposed, output_padding, groups
        As in ``torch.nn.Conv{1,2,3}d`` / ``ConvTranspose{1,2,3}d`` (padding may be ``"same"``/``"valid"``).
    method : {"auto", "fft", "lanczos", "power", "dense"}
        ``"fft"``: all singular values from per-frequency SVDs, exact (circular padding,
        stride 1, size-preserving only). ``"lanczos"`` / ``"power"``: Krylov / power
        iteration with the convolution and its exact adjoint (a transposed convolution)
        to relative tolerance ``tol`` (see :func:`lanczos`, :func:`power_iteration`; the
        result is a lower bound). ``"dense"``: SVD of the explicit matrix (tiny sizes only).
        ``"auto"`` picks ``"fft"`` where it applies, else ``"lanczos"``.
    tol : float, optional
        Tolerance of the iterative methods; default :func:`default_tol` of the compute dtype.
    max_iter : int
        Iteration limit of the iterative methods (a ``RuntimeWarning`` if reached).
    dtype : torch.dtype, optional
        Compute dtype, e.g. ``torch.float64``; default the weight's.
    seed : int
        Seed of the random power-iteration start vector (results are reproducible).

    Returns
    -------
    Tensor
        0-d tensor on the weight's device.

    Examples
    --------
    >>> w = torch.randn(8, 4, 3, 3, dtype=torch.float64)
    >>> fft = conv_operator_norm(w, 6, padding=1, padding_mode="circular")
    >>> power = conv_operator_norm(w, 6, padding=1, padding_mode="circular", method="power")
    >>> bool(torch.isclose(fft, power, rtol=1e-6))
    True
    """
    check_choice("method", method, METHODS)
    check_int_at_least("max_iter", max_iter, 1)
    check_int_at_least("seed", seed, 0)
    w = weight.detach() if dtype is None else weight.detach().to(dtype)
    geom = conv_geometry(w.shape, input_size, stride, padding, dilation, padding_mode, transposed,
                         output_padding, groups)
    if method == "auto":
        method = "fft" if geom.fft_diagonalizable else "lanczos"
    if method == "fft":
        return circular_singular_values(w, geom)[0]
    if method == "dense":
        return torch.linalg.matrix_norm(conv_operator_matrix(w, geom), ord=2)
    generator = torch.Generator().manual_seed(seed)
    v0 = torch.randn(geom.input_shape, generator=generator, dtype=w.dtype).to(w.device)
    solver = lanczos if method == "lanczos" else power_iteration
    result = solver(partial(conv_apply, w, geom=geom), partial(conv_adjoint, w, geom=geom), v0,
                             tol=default_tol(w.dtype) if tol is None else tol, max_iter=max_iter)
    return result.sigma
