"""Extra passes the recorder makes on its own: per-sample input-gradient norms and Hessian spectral norms.

They run the net again, so they restore its buffers (power-iteration vectors,
batch-norm statistics) and the random-number state afterwards: training with
these probes on follows exactly the trajectory it follows with them off.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from gradscope._checks import check_int_at_least, check_positive
from gradscope.linalg.hvp import hessian_extremes


@contextmanager
def preserved_state(net: nn.Module, device: torch.device) -> Iterator[None]:
    """Run a block, then restore ``net``'s buffers and the global RNG state of CPU and ``device``."""
    saved = [(buffer, buffer.detach().clone()) for buffer in net.buffers()]
    cuda = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=cuda):
            yield
    finally:
        with torch.no_grad():
            for buffer, copy in saved:
                buffer.copy_(copy)


def input_gradient_norms(net: nn.Module, x: Tensor | Sequence[Tensor],
                         output: Tensor | Sequence[Tensor] | None = None) -> Tensor | list[Tensor]:
    """Per-sample ``||d net(x)_i / d x_i||_2`` (the reference's "slopes"), detached, without a host sync.

    With ``output`` (``net(x)`` computed by the caller from an ``x`` that
    requires grad) the gradient is taken through the caller's graph, which is
    kept (``retain_graph``) and no ``.grad`` is touched. Without it the net is
    run again on a detached copy of ``x`` with its buffers and RNG restored.
    Each sample's output is summed over its entries; samples must not interact
    (no batch norm in ``net``).

    ``x`` and ``output`` may be sequences (e.g. the real and the fake batch
    of one concatenated forward pass): all are then handled by a single
    backward pass, and a list of norm vectors is returned.

    Examples
    --------
    >>> net = nn.Linear(3, 1, bias=False)
    >>> with torch.no_grad(): _ = net.weight.copy_(torch.tensor([[3.0, 0.0, 4.0]]))
    >>> input_gradient_norms(net, torch.randn(2, 3))
    tensor([5., 5.])
    """
    single = isinstance(x, Tensor)
    xs = [x] if single else list(x)
    if output is None:
        with preserved_state(net, xs[0].device), torch.enable_grad():
            leaves = [t.detach().requires_grad_(True) for t in xs]
            grads = torch.autograd.grad([net(leaf).sum() for leaf in leaves], leaves)
    else:
        outputs = [output] if isinstance(output, Tensor) else list(output)
        if len(outputs) != len(xs):
            raise ValueError(f"got {len(xs)} inputs but {len(outputs)} outputs")
        if not all(t.requires_grad for t in xs):
            raise ValueError("x must require grad when output is given (or pass output=None)")
        grads = torch.autograd.grad([o.sum() for o in outputs], xs, retain_graph=True)
    norms = [torch.linalg.vector_norm(g.detach().flatten(1), dim=1) for g in grads]
    return norms[0] if single else norms


def hessian_norms(net: nn.Module, x: Tensor, weights: Sequence[Tensor], max_iter: int = 20, tol: float = 1e-4,
                  seed: int = 0) -> list[Tensor]:
    """Per weight ``W_t``, ``||H_t||_2``: the largest |eigenvalue| of the Hessian of ``mean(net(x))`` in ``W_t``.

    This is C3's "top Hessian eigenvalue per layer": the spectral norm of the
    diagonal Hessian block of layer ``t`` (a magnitude, >= 0; the eigenvalue of
    largest magnitude is often negative, and for the last layer of an SN'd
    (leaky) ReLU net comes as an exact pair ``+-lambda``). It is taken by
    symmetric Lanczos on Hessian-vector products (double backward; see
    :func:`gradscope.linalg.hvp.symmetric_lanczos`) from a seeded Gaussian start,
    at most ``max_iter`` products per weight, stopping once the residual of the
    extreme Ritz pair is within ``tol`` (relative). Unconverged values are lower
    bounds of ``||H_t||_2``. A block the objective does not curve in (e.g. a plain
    ReLU net, piecewise linear in each single weight) gives exactly 0. The net
    runs once, in its current mode (a normalization's power step included, as
    in training); buffers and RNG are restored afterwards.

    Returns
    -------
    list of Tensor
        0-d tensors (on each weight's device and of its dtype), one per weight.

    Examples
    --------
    >>> net = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1))
    >>> [float(h) >= 0 for h in hessian_norms(net, torch.randn(4, 2), [net[0].weight, net[2].weight])]
    [True, True]
    """
    check_int_at_least("max_iter", max_iter, 1)
    check_positive("tol", tol)
    with preserved_state(net, x.device), torch.enable_grad():
        objective = net(x.detach()).mean()
        grads = torch.autograd.grad(objective, list(weights), create_graph=True, allow_unused=True)
        norms = []
        for weight, grad in zip(weights, grads):
            if grad is None:
                norms.append(torch.zeros((), device=weight.device, dtype=weight.dtype))
                continue
            generator = torch.Generator(device=weight.device).manual_seed(seed)
            result = hessian_extremes(grad, weight, tol=tol, max_iter=max_iter, generator=generator, warn=False)
            norms.append(torch.tensor(result.norm, device=weight.device, dtype=weight.dtype))
        return norms
