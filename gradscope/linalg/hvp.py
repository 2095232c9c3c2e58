"""Spectral norm of a Hessian block from Hessian-vector products: symmetric Lanczos on ``H`` itself.

The Hessian of a scalar in one weight tensor is symmetric but indefinite, and
the eigenvalue of largest magnitude may be negative. Power iteration on ``H``
fails in two ways there: its Rayleigh quotient never settles when ``H`` has an
eigenvalue pair ``+-lambda`` (the last, single-output layer of a spectrally
normalized (leaky) ReLU net has one exactly), and it converges at the rate
``|lambda_2| / |lambda_1|``, slow when the two ends of the spectrum are close.
Lanczos on ``H`` keeps both ends of the spectrum in one Krylov space, so it
finds ``lambda_min`` and ``lambda_max`` together, with one Hessian-vector
product per step (Lanczos on ``H^2`` needs two per step for a Krylov space
that contains only the even powers of ``H``).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

from gradscope._checks import check_int_at_least, check_positive
from gradscope.linalg.power import LinearMap, krylov_basis_size, tridiagonal


@dataclass(frozen=True)
class SymmetricExtremes:
    """Outcome of :func:`symmetric_lanczos`.

    Attributes
    ----------
    lowest, highest : float
        Smallest and largest Ritz values: ``lambda_min <= lowest`` and ``highest <= lambda_max``.
    vector : Tensor
        Unit Ritz vector (the operand's shape) of whichever of the two has the larger magnitude.
    iterations : int
        Operator applications.
    converged : bool
        Whether that Ritz pair's residual met the tolerance (or the Krylov space became invariant)
        within ``max_iter``.
    """

    lowest: float
    highest: float
    vector: Tensor
    iterations: int
    converged: bool

    @property
    def norm(self) -> float:
        """``max(|lowest|, |highest|)``: the spectral norm estimate, a lower bound of ``||A||_2``."""
        return max(abs(self.lowest), abs(self.highest))

    @property
    def value(self) -> float:
        """The eigenvalue estimate of largest magnitude, with its sign."""
        return self.lowest if abs(self.lowest) > abs(self.highest) else self.highest


@torch.no_grad()
def symmetric_lanczos(apply: LinearMap, v0: Tensor, *, tol: float = 1e-6, max_iter: int = 200,
                      eps: float = 1e-12, warn: bool = True) -> SymmetricExtremes:
    """Both extreme eigenvalues of a symmetric operator by Lanczos with full reorthogonalization.

    Stops when the Ritz pair ``(theta, y)`` of largest ``|theta|`` has residual
    ``||A y - theta y|| <= tol * |theta|`` (then an eigenvalue lies within that
    distance of ``theta``), or when the Krylov space is invariant. Ritz values
    move outwards as the space grows, so every estimate is a lower bound of
    ``||A||_2``. The basis is restarted from the current Ritz vector when it
    outgrows 256 MiB. Each step synchronizes with the device (a few scalars).

    Parameters
    ----------
    apply : callable
        ``x -> A x`` for a symmetric ``A`` (any tensor shape; it is treated as a flat vector).
    v0 : Tensor
        Start vector (not all zero).
    tol : float
        Relative residual tolerance.
    max_iter : int
        Most operator applications; a ``RuntimeWarning`` is issued (if ``warn``) when reached.
    eps : float
        Floor of norms in normalizations.

    Returns
    -------
    SymmetricExtremes

    Examples
    --------
    >>> a = torch.diag(torch.tensor([-5.0, 1.0, 2.0, 4.0], dtype=torch.float64))
    >>> res = symmetric_lanczos(lambda x: a @ x, torch.ones(4, dtype=torch.float64))
    >>> round(res.lowest, 8), round(res.highest, 8), round(res.norm, 8), round(res.value, 8), res.converged
    (-5.0, 4.0, 5.0, -5.0, True)
    """
    check_positive("tol", tol)
    check_int_at_least("max_iter", max_iter, 1)
    shape = v0.shape
    start_norm = float(torch.linalg.vector_norm(v0))
    if not math.isfinite(start_norm) or start_norm <= eps:
        raise ValueError("v0 must be a finite, non-zero start vector")
    max_basis = krylov_basis_size(v0, max_iter)
    x = v0.flatten() / start_norm
    iterations, converged = 0, False
    lowest = highest = 0.0
    while not converged and iterations < max_iter:
        basis, alphas, betas = [x], [], []
        # Scale of the operator seen so far: a new direction this small relative to it is rounding noise.
        scale = 0.0
        for _ in range(max_basis):
            w = apply(basis[-1].view(shape)).flatten()
            iterations += 1
            alphas.append(float(w @ basis[-1]))
            scale = max(scale, float(torch.linalg.vector_norm(w)))
            stacked = torch.stack(basis)
            for _ in range(2):  # twice is enough (Kahan-Parlett)
                w = w - stacked.T @ (stacked @ w)
            beta = float(torch.linalg.vector_norm(w))
            values, vectors = torch.linalg.eigh(tridiagonal(alphas, betas))
            lowest, highest = float(values[0]), float(values[-1])
            pick = 0 if abs(lowest) > abs(highest) else -1
            theta, ritz = float(values[pick]), vectors[:, pick]
            exhausted = beta <= 64 * torch.finfo(w.dtype).eps * scale
            if exhausted or beta * abs(float(ritz[-1])) <= tol * abs(theta):
                converged = True
                break
            if iterations >= max_iter:
                break
            betas.append(beta)
            basis.append(w / beta)
        x = ritz.to(stacked.dtype).to(stacked.device) @ stacked
        x = x / torch.linalg.vector_norm(x).clamp_min(eps)
    if not converged and warn:
        warnings.warn(f"extreme eigenvalue not settled to the tolerance after {iterations} iterations; "
                      "raise max_iter or tol", RuntimeWarning, stacklevel=2)
    return SymmetricExtremes(lowest=lowest, highest=highest, vector=x.view(shape), iterations=iterations,
                             converged=converged)


def hessian_vector_product(grad: Tensor, weight: Tensor) -> LinearMap:
    """``v -> H v`` with ``H`` the Hessian of a scalar in ``weight``, given its gradient ``grad``.

    ``grad`` must come from ``torch.autograd.grad(..., create_graph=True)``; its
    graph is kept between calls. Where ``grad`` does not depend on ``weight``
    (no curvature in that block, e.g. a bias-free ReLU net in one weight) the
    product is zero.

    Examples
    --------
    >>> w = torch.tensor([1.0, 2.0], requires_grad=True)
    >>> (g,) = torch.autograd.grad(w[0] ** 2 - 3 * w[0] * w[1], w, create_graph=True)
    >>> hessian_vector_product(g, w)(torch.tensor([1.0, 0.0]))
    tensor([ 2., -3.])
    """
    if grad.shape != weight.shape:
        raise ValueError(f"grad shape {tuple(grad.shape)} does not match weight shape {tuple(weight.shape)}")

    def hvp(v: Tensor) -> Tensor:
        if not grad.requires_grad:
            return torch.zeros_like(v)
        (hv,) = torch.autograd.grad(grad, weight, grad_outputs=v, retain_graph=True, allow_unused=True)
        return torch.zeros_like(v) if hv is None else hv.detach()

    return hvp


def hessian_extremes(grad: Tensor, weight: Tensor, *, tol: float = 1e-6, max_iter: int = 200,
                     generator: torch.Generator | None = None, warn: bool = True) -> SymmetricExtremes:
    """Extreme eigenvalues of the Hessian block of a scalar in ``weight`` (see :func:`symmetric_lanczos`).

    ``grad`` is the scalar's gradient in ``weight`` taken with ``create_graph=True``;
    ``.norm`` of the result is ``||H||_2``, the largest ``|eigenvalue|``. The
    start vector is Gaussian from ``generator`` (on ``weight``'s device).

    Examples
    --------
    >>> w = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
    >>> (g,) = torch.autograd.grad(w[0] ** 2 - 3 * w[1] ** 2, w, create_graph=True)
    >>> res = hessian_extremes(g, w)
    >>> round(res.norm, 6), round(res.value, 6)
    (6.0, -6.0)
    """
    v0 = torch.randn(weight.shape, generator=generator, device=weight.device, dtype=weight.dtype)
    return symmetric_lanczos(hessian_vector_product(grad, weight), v0, tol=tol, max_iter=max_iter, warn=warn)
