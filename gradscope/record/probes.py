"""Extra passes the recorder makes on its own: per-sample input-gradient norms and Hessian eigenvalues.

They run the net again, so they restore its buffers (power-iteration vectors,
batch-norm statistics) and the random-number state afterwards: training with
these probes on follows exactly the trajectory it follows with them off.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn


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


def hessian_top_eigenvalues(net: nn.Module, x: Tensor, weights: Sequence[Tensor], iterations: int = 20,
                            seed: int = 0) -> list[Tensor]:
    """Per weight ``W_t``, the eigenvalue of largest magnitude of the Hessian of ``mean(net(x))`` w.r.t. ``W_t``.

    Power iteration with Hessian-vector products (double backward) from a
    seeded random start, ``iterations`` steps per weight; the result is the
    Rayleigh quotient of the last iterate (signed). A block the objective
    does not curve in (e.g. a plain ReLU net, piecewise linear in each single
    weight) gives exactly 0. Buffers and RNG are restored afterwards.

    Returns
    -------
    list of Tensor
        0-d tensors (on the weights' device), one per weight.
    """
    with preserved_state(net, x.device), torch.enable_grad():
        objective = net(x.detach()).mean()
        grads = torch.autograd.grad(objective, list(weights), create_graph=True, allow_unused=True)
        generator = torch.Generator(device=x.device).manual_seed(seed)
        eigenvalues = []
        for weight, grad in zip(weights, grads):
            zero = torch.zeros((), device=weight.device, dtype=weight.dtype)
            if grad is None or not grad.requires_grad:
                eigenvalues.append(zero)
                continue
            v = torch.randn(weight.shape, generator=generator, device=x.device, dtype=weight.dtype).to(weight.device)
            v = v / torch.linalg.vector_norm(v)
            value = zero
            for _ in range(iterations):
                (hv,) = torch.autograd.grad(grad, weight, grad_outputs=v, retain_graph=True, allow_unused=True)
                if hv is None:
                    break
                value = torch.sum(hv * v)
                v = hv / torch.linalg.vector_norm(hv).clamp_min(torch.finfo(hv.dtype).tiny)
            eigenvalues.append(value.detach())
        return eigenvalues
