"""Spectral norms of a kernel's matrix reshapes, exact (dense SVD) and random-matrix predicted."""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from gradscope._checks import check_positive


def forward_dim(transposed: bool) -> int:
    """The weight dimension holding a layer's output channels (1 for ConvTranspose, as in torch)."""
    return 1 if transposed else 0


def reshape_weight(weight: Tensor, dim: int = 0) -> Tensor:
    """Reshape a weight to the matrix ``(weight.shape[dim], rest)`` that reshape-based SN normalizes.

    ``dim=0`` gives a view (no copy): ``(c_out, c_in*k*k)`` for a convolution
    and the weight itself for a linear layer.

    Examples
    --------
    >>> reshape_weight(torch.zeros(8, 3, 3, 3)).shape
    torch.Size([8, 27])
    >>> reshape_weight(torch.zeros(8, 3, 3, 3), dim=1).shape
    torch.Size([3, 72])
    """
    if weight.ndim < 2:
        raise ValueError(f"weight must have at least 2 dimensions, got shape {tuple(weight.shape)}")
    if dim == 0:
        return weight.flatten(1)
    return weight.movedim(dim, 0).flatten(1)


def reshape_norms(weight: Tensor, transposed: bool = False, dtype: torch.dtype | None = None,
                  ) -> tuple[Tensor, Tensor]:
    """Exact spectral norms of the forward and backward reshapes of a weight (dense SVD).

    ``sigma_fwd`` is the norm of the reshape with the output channels first
    (what Miyato's SN and ``torch.nn.utils.parametrizations.spectral_norm``
    divide by); ``sigma_bwd`` that of the reshape with the input channels first.
    For a linear layer both equal ``||W||_2``.

    Parameters
    ----------
    weight : Tensor
        A ``Linear`` weight ``(out, in)``, a convolution weight ``(c_out, c_in/groups, *k)`` or,
        with ``transposed=True``, a ``ConvTranspose`` weight ``(c_in, c_out/groups, *k)``.
    transposed : bool
        Whether ``weight`` belongs to a ``ConvTranspose`` layer (output channels on dim 1).
    dtype : torch.dtype, optional
        Compute in this dtype (e.g. ``torch.float64``); default the weight's.

    Returns
    -------
    (Tensor, Tensor)
        0-d tensors ``(sigma_fwd, sigma_bwd)`` on the weight's device.

    Examples
    --------
    >>> w = torch.zeros(2, 3); w[0, 0] = 3.0; w[1, 1] = 2.0
    >>> [round(float(s), 4) for s in reshape_norms(w)]
    [3.0, 3.0]
    """
    w = weight.detach()
    if dtype is not None:
        w = w.to(dtype)
    fwd = forward_dim(transposed)
    sigma_fwd = torch.linalg.matrix_norm(reshape_weight(w, fwd), ord=2)
    if w.ndim == 2:
        return sigma_fwd, sigma_fwd.clone()
    sigma_bwd = torch.linalg.matrix_norm(reshape_weight(w, 1 - fwd), ord=2)
    return sigma_fwd, sigma_bwd


def forward_reshape_dims(shape: Sequence[int], transposed: bool = False) -> tuple[int, int]:
    """``(m, n)`` of the forward reshape of a weight of ``shape``: output channels and the product of the rest.

    Examples
    --------
    >>> forward_reshape_dims((128, 64, 3, 3))
    (128, 576)
    >>> forward_reshape_dims((64, 32, 4, 4), transposed=True)
    (32, 1024)
    """
    dims = [int(s) for s in shape]
    if len(dims) < 2 or any(s < 1 for s in dims):
        raise ValueError(f"shape must have at least 2 positive dimensions, got {tuple(shape)!r}")
    m = dims[forward_dim(transposed)]
    return m, math.prod(dims) // m


def rmt_spectral_norm(shape: Sequence[int], std: float, transposed: bool = False) -> float:
    """Random-matrix prediction ``std * (sqrt(m) + sqrt(n))`` of the forward reshape's norm (C5).

    For an ``m x n`` matrix with i.i.d. zero-mean entries of standard deviation
    ``std`` the largest singular value concentrates there (Bai-Yin; Gordon's
    bound for Gaussians). ``m`` is the output-channel count and ``n`` the
    product of the other dimensions of the weight ``shape``.

    Examples
    --------
    >>> rmt_spectral_norm((64, 64), 0.1)
    1.6
    >>> round(rmt_spectral_norm((128, 64, 3, 3), 0.02), 4)
    0.7063
    """
    m, n = forward_reshape_dims(shape, transposed)
    check_positive("std", std)
    return float(std) * (math.sqrt(m) + math.sqrt(n))
