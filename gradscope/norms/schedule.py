"""Power-iteration schedules of the reshape norms: torch's, or that of the authors' TensorFlow code.

``"torch"`` (the default, as ``torch.nn.utils.parametrizations.spectral_norm``):
the vectors are warmed up by 15 power steps at registration; every
training-mode forward advances the stored ``u``, ``v`` (``u <- W v``, then
``v <- W^T u``) and divides by ``sigma = u^T W v`` with ``u``, ``v`` treated as
constants; eval-mode forwards take no step.

``"authors"`` (fjxmlzn/BSN, ``sn.py`` and ``gan.py``; THEORY.md, "How the
authors' code differs from torch's SN"):

- ``u`` starts cold: a random unit vector, no warm-up;
- every forward, in training or eval mode (D step, G step, gradient-penalty
  passes alike), takes ``n_power_iterations`` more steps from the stored ``u``
  in the half-step order ``v <- W^T u / ||W^T u||``, ``u' <- W v / ||W v||``,
  and divides by ``sigma = u'^T W v = ||W v||``. The step is part of the graph:
  gradients flow through ``v`` and ``u'`` (nothing is detached), and ``u'`` is
  *not* stored;
- the stored ``u`` moves once per discriminator update, after the optimizer
  step, by the same step(s) on the updated weight: :func:`advance_power_iteration`,
  which the trainer calls after ``opt_D.step()``.

The normalizations divide by ``||x|| + eps`` there, as the authors'
``_l2normalize`` does (torch's schedule uses ``max(||x||, eps)``).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from gradscope.norms.base import parametrization_of, raw_weight

POWER_SCHEDULES: tuple[str, ...] = ("torch", "authors")


def _unit(x: Tensor, eps: float) -> Tensor:
    # the authors' _l2normalize: v / (||v|| + eps), differentiable
    return x / (torch.linalg.vector_norm(x) + eps)


def authors_sigma(mat: Tensor, u: Tensor, n_iterations: int, eps: float) -> Tensor:
    """``sigma`` of the authors' schedule: ``n_iterations`` differentiable steps from ``u``, which is not changed.

    Parameters
    ----------
    mat : Tensor
        The weight reshaped to a matrix ``(out, rest)``; gradients flow back to it
        through the whole iteration.
    u : Tensor
        The stored left vector (read only).
    n_iterations : int
        Power steps (at least 1).
    eps : float
        Added to every norm before dividing by it.

    Returns
    -------
    Tensor
        0-d ``u'^T mat v``, with ``v = unit(mat^T u)`` and ``u' = unit(mat v)``.

    Examples
    --------
    >>> mat = torch.diag(torch.tensor([3.0, 1.0]))
    >>> round(float(authors_sigma(mat, torch.tensor([0.6, 0.8]), 1, 1e-12)), 4)
    2.7714
    """
    # a copy: the stored u is updated in place by advance_ after the backward pass, and a graph
    # still held (e.g. a later double backward) must not see that change
    left = u.clone(memory_format=torch.contiguous_format)
    for _ in range(n_iterations):
        v = _unit(torch.mv(mat.t(), left), eps)
        wv = torch.mv(mat, v)
        left = _unit(wv, eps)
    return torch.vdot(left, wv)


@torch.no_grad()
def authors_advance_(mat: Tensor, u: Tensor, v: Tensor, n_iterations: int, eps: float) -> None:
    """The stored update of the authors' schedule: ``n_iterations`` steps from ``u``, written into ``u``, ``v``.

    In place (``copy_``), so that the buffers keep their storage (DDP broadcasts
    and DataParallel replicas rely on it). ``v`` is kept for inspection only: the
    next forward recomputes it from ``u``.
    """
    mat = mat.detach()
    for _ in range(n_iterations):
        v.copy_(_unit(torch.mv(mat.t(), u), eps))
        u.copy_(_unit(torch.mv(mat, v), eps))


def advance_power_iteration(module: nn.Module) -> int:
    """Move the stored vectors of every ``power_schedule="authors"`` layer of ``module`` one update.

    Call it once per discriminator update, right after the optimizer step (as
    the authors' code runs its ``spectral_norm_update_ops`` after ``d_op``); the
    step uses the updated raw weights and does not touch autograd. Layers under
    the ``"torch"`` schedule (and unnormalized ones) are left alone.

    Parameters
    ----------
    module : torch.nn.Module
        A model normalized with :func:`gradscope.norms.normalize` (or one layer).

    Returns
    -------
    int
        The number of parametrizations advanced.

    Examples
    --------
    >>> from gradscope.norms import normalize, parametrization_of
    >>> d = normalize(nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 1)), power_schedule="authors")
    >>> u = parametrization_of(d[0]).u.clone()
    >>> _ = d(torch.randn(2, 4))                       # a forward does not move u
    >>> bool(torch.equal(parametrization_of(d[0]).u, u))
    True
    >>> advance_power_iteration(d), bool(torch.equal(parametrization_of(d[0]).u, u))
    (2, False)
    """
    count = 0
    for layer in module.modules():
        param = parametrization_of(layer)
        if param is not None and getattr(param, "power_schedule", "torch") == "authors":
            param.advance_(raw_weight(layer))
            count += 1
    return count
