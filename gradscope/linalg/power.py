"""Largest singular value of a linear operator given as an apply/adjoint pair.

Three tools: :func:`power_step_` advances persistent singular-vector estimates
in place (what spectral-normalization parametrizations do once per training
step); :func:`power_iteration` and :func:`lanczos` run to a stated tolerance.
Convolution operators have clustered top singular values (a continuum over
frequencies), where the power method's sigma error decays only like 1/t;
Lanczos' decays like 1/t^2, so it is the default for one-off exact norms.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from gradscope._checks import check_int_at_least, check_positive

LinearMap = Callable[[Tensor], Tensor]
_MIN_ITERATIONS = 8
_BASIS_BYTES = 2**28  # Lanczos basis memory before an explicit restart


def normalize_into_(dst: Tensor, x: Tensor, eps: float) -> Tensor:
    """Write ``x / max(||x||_2, eps)`` into ``dst`` in place (any shape; the norm is over all entries).

    In-place so that module buffers keep their storage (DataParallel replicas
    and DDP broadcasts rely on it).
    """
    return torch.div(x, torch.linalg.vector_norm(x).clamp_min(eps), out=dst)


@torch.no_grad()
def power_step_(apply: LinearMap, adjoint: LinearMap, u: Tensor, v: Tensor,
                n_iterations: int = 1, eps: float = 1e-12) -> None:
    """Advance the singular-vector estimates ``u`` (output side) and ``v`` (input side) in place.

    One iteration is ``u <- A v / ||A v||`` then ``v <- A^T u / ||A^T u||``;
    afterwards ``<u, A v>`` estimates ``||A||_2`` from below.

    Examples
    --------
    >>> a = torch.diag(torch.tensor([3.0, 1.0]))
    >>> u, v = torch.tensor([0.6, 0.8]), torch.tensor([0.6, 0.8])
    >>> power_step_(lambda x: a @ x, lambda y: a.T @ y, u, v, n_iterations=30)
    >>> round(float(u @ (a @ v)), 4)
    3.0
    """
    for _ in range(n_iterations):
        normalize_into_(u, apply(v), eps)
        normalize_into_(v, adjoint(u), eps)


@dataclass(frozen=True)
class TopSingular:
    """Outcome of :func:`power_iteration` or :func:`lanczos`.

    Attributes
    ----------
    sigma : Tensor
        0-d estimate of the largest singular value; a lower bound of it.
    u, v : Tensor
        Unit left (output-shaped) and right (input-shaped) singular-vector estimates.
    iterations : int
        Operator applications (each one ``A`` and one ``A^T``).
    converged : bool
        Whether the stopping rule was met within ``max_iter``.
    """

    sigma: Tensor
    u: Tensor
    v: Tensor
    iterations: int
    converged: bool


def _settled(history: list[float], tol: float) -> bool:
    # sigma estimates increase towards the limit; for errors decaying like
    # t^-a (a <= 2) or geometrically, the gain over the second half of the run
    # is at least the error that remains, so a gain <= tol * sigma bounds it.
    t = len(history)
    if t < _MIN_ITERATIONS:
        return False
    return history[-1] - history[(t - 1) // 2] <= tol * history[-1]


def _finish(sigma: Tensor, v: Tensor, apply: LinearMap, iterations: int, converged: bool, eps: float,
            warn: bool) -> TopSingular:
    if not converged and warn:
        warnings.warn(f"top singular value not settled to the tolerance after {iterations} iterations; "
                      "raise max_iter or tol", RuntimeWarning, stacklevel=3)
    av = apply(v)
    return TopSingular(sigma=sigma, u=av / torch.linalg.vector_norm(av).clamp_min(eps), v=v,
                       iterations=iterations, converged=converged)


def tridiagonal(alphas: list[float], betas: list[float]) -> Tensor:
    """The symmetric float64 tridiagonal matrix with diagonal ``alphas`` and off-diagonal ``betas`` (Lanczos' ``T``).

    Examples
    --------
    >>> tridiagonal([1.0, 2.0], [3.0]).tolist()
    [[1.0, 3.0], [3.0, 2.0]]
    """
    tri = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if betas:
        off = torch.tensor(betas, dtype=torch.float64)
        tri += torch.diag(off, 1) + torch.diag(off, -1)
    return tri


def krylov_basis_size(v0: Tensor, max_iter: int) -> int:
    """Vectors a Lanczos basis of ``v0``-sized vectors may hold before an explicit restart (256 MiB, 2 to ``max_iter``)."""
    return max(2, min(max_iter, _BASIS_BYTES // max(1, v0.numel() * v0.element_size())))


def _check(tol: float, max_iter: int) -> None:
    check_positive("tol", tol)
    check_int_at_least("max_iter", max_iter, 1)


@torch.no_grad()
def power_iteration(apply: LinearMap, adjoint: LinearMap, v0: Tensor, *, tol: float = 1e-6,
                    max_iter: int = 10000, eps: float = 1e-12, warn: bool = True) -> TopSingular:
    """Largest singular value of ``A`` by the power method on ``A^T A``, to a stated tolerance.

    Stops when the relative residual ``||A^T A v - rho v|| / rho`` (``rho = ||A v||^2``)
    is at most ``tol`` -- then ``rho`` is within relative ``tol`` of an eigenvalue of
    ``A^T A`` -- or when the estimate gained at most ``tol`` (relative) over the second
    half of the iterations run. The estimate is always a lower bound of ``||A||_2``.

    Parameters
    ----------
    apply, adjoint : callable
        ``x -> A x`` and ``y -> A^T y``; ``adjoint`` must be the exact adjoint.
    v0 : Tensor
        Start vector of the input's shape (not all zero).
    tol : float
        Relative tolerance.
    max_iter : int
        Iteration limit; a ``RuntimeWarning`` is issued (if ``warn``) when reached.
    eps : float
        Floor of norms in normalizations.

    Returns
    -------
    TopSingular

    Examples
    --------
    >>> a = torch.tensor([[2.0, 1.0], [0.0, 1.0]], dtype=torch.float64)
    >>> res = power_iteration(lambda x: a @ x, lambda y: a.T @ y, torch.ones(2, dtype=torch.float64))
    >>> round(float(res.sigma), 6) == round(float(torch.linalg.matrix_norm(a, 2)), 6)
    True
    """
    _check(tol, max_iter)
    v = v0 / torch.linalg.vector_norm(v0).clamp_min(eps)
    sigma, history, converged = v.new_zeros(()), [], False
    for _ in range(max_iter):
        av = apply(v)
        s = torch.linalg.vector_norm(av).clamp_min(eps)
        w = adjoint(av / s)  # = A^T A v / s
        residual = float(torch.linalg.vector_norm(w - s * v) / s)
        sigma = torch.linalg.vector_norm(w)  # ||A^T u|| >= ||A v||, still <= ||A||
        v = w / sigma.clamp_min(eps)
        history.append(float(sigma))
        if residual <= tol or _settled(history, tol):
            converged = True
            break
    return _finish(sigma, v, apply, len(history), converged, eps, warn)


@torch.no_grad()
def lanczos(apply: LinearMap, adjoint: LinearMap, v0: Tensor, *, tol: float = 1e-6, max_iter: int = 2000,
            eps: float = 1e-12, warn: bool = True) -> TopSingular:
    """Largest singular value of ``A`` by Lanczos on ``A^T A`` with full reorthogonalization.

    Same interface and stopping rule as :func:`power_iteration` (residual of the
    top Ritz pair, or the Ritz value gained at most ``tol`` over the second half
    of the run); the Ritz value never exceeds ``||A||_2^2``. The Krylov basis is
    restarted from the current Ritz vector when it outgrows 256 MiB.

    Examples
    --------
    >>> a = torch.diag(torch.arange(1.0, 51.0, dtype=torch.float64))
    >>> res = lanczos(lambda x: a @ x, lambda y: a.T @ y, torch.ones(50, dtype=torch.float64), tol=1e-10)
    >>> round(float(res.sigma), 8), res.iterations <= 50
    (50.0, True)
    """
    _check(tol, max_iter)
    shape = v0.shape
    max_basis = krylov_basis_size(v0, max_iter)
    x = v0.flatten() / torch.linalg.vector_norm(v0).clamp_min(eps)
    history: list[float] = []
    converged = False
    while not converged and len(history) < max_iter:
        basis, alphas, betas = [x], [], []
        beta = 0.0
        for _ in range(max_basis):
            w = adjoint(apply(basis[-1].view(shape))).flatten()
            alphas.append(float(w @ basis[-1]))
            stacked = torch.stack(basis)
            for _ in range(2):  # twice is enough (Kahan-Parlett)
                w = w - stacked.T @ (stacked @ w)
            beta = float(torch.linalg.vector_norm(w))
            values, vectors = torch.linalg.eigh(tridiagonal(alphas, betas))
            theta, ritz = float(values[-1]), vectors[:, -1]
            history.append(math.sqrt(max(theta, 0.0)))
            exhausted = beta <= eps * max(theta, eps)
            if exhausted or beta * abs(float(ritz[-1])) <= tol * theta or _settled(history, tol):
                converged = True
                break
            if len(history) >= max_iter:
                break
            betas.append(beta)
            basis.append(w / beta)
        x = ritz.to(stacked.dtype).to(stacked.device) @ stacked
        x = x / torch.linalg.vector_norm(x).clamp_min(eps)
    sigma = torch.tensor(history[-1], dtype=v0.dtype, device=v0.device)
    return _finish(sigma, x.view(shape), apply, len(history), converged, eps, warn)
