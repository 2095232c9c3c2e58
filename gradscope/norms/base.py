"""The contract every gradscope weight normalization honours.

A normalization is a ``torch.nn.utils.parametrize`` parametrization of a
layer's ``weight``: ``W_eff = scale * gamma * W / sigma(W)``. Readers further
down the pipeline (the recorder, the analyses) rely only on what this module
defines, never on a particular subclass:

- :meth:`SpectralParametrization.sigma_estimates` returns the latest sigma
  estimate(s) from the parametrization's own buffers, detached, with no
  computation (no power iteration, no SVD);
- :meth:`SpectralParametrization.multiplier` returns the current factor
  ``scale * gamma / sigma`` that turns the raw weight into the effective
  weight, detached, again with no side effects;
- :func:`parametrization_of`, :func:`raw_weight` and :func:`effective_weight`
  read a module without triggering a power-iteration step (reading
  ``module.weight`` in training mode would advance the persistent vectors).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize


class SpectralParametrization(nn.Module):
    """Base class of gradscope's weight parametrizations.

    Subclasses keep a 0-d buffer per estimate they maintain (at least
    ``sigma``: the value the weight is divided by) and update it, detached,
    every time they compute the normalized weight.

    Attributes
    ----------
    norm : str
        The name of the normalization mode (``"sn"``, ``"bsn"``, ...).
    scale : float
        The constant ``c`` multiplying the normalized weight (1 for plain SN).
    gamma : torch.nn.Parameter or None
        A learnable scalar multiplying the normalized weight (and the bias),
        shared between layers for ``sn-same-gamma``; ``None`` otherwise.
    """

    norm: str = "base"

    def __init__(self, scale: float = 1.0, gamma: nn.Parameter | None = None) -> None:
        super().__init__()
        self.scale = float(scale)
        self.gamma = gamma
        self.register_buffer("sigma", torch.ones(()))

    def sigma_estimates(self) -> dict[str, Tensor]:
        """Latest estimates, detached 0-d tensors keyed ``"sigma"`` (and e.g. ``"sigma_fwd"``)."""
        return {"sigma": self.sigma.detach()}

    def multiplier(self) -> Tensor:
        """Detached factor turning the raw weight into the effective one: ``scale * gamma / sigma``."""
        factor = self.scale / self.sigma.detach()
        if self.gamma is not None:
            factor = factor * self.gamma.detach()
        return factor


def parametrization_of(module: nn.Module) -> SpectralParametrization | None:
    """Return the gradscope parametrization on ``module.weight``, or ``None`` if there is none."""
    if not parametrize.is_parametrized(module, "weight"):
        return None
    for p in module.parametrizations["weight"]:
        if isinstance(p, SpectralParametrization):
            return p
    return None


def raw_weight(module: nn.Module) -> Tensor:
    """The un-normalized weight parameter (what the optimizer updates)."""
    if parametrize.is_parametrized(module, "weight"):
        return module.parametrizations["weight"].original
    return module.weight


def effective_weight(module: nn.Module) -> Tensor:
    """The weight the layer uses in its forward pass, detached, computed without side effects."""
    param = parametrization_of(module)
    raw = raw_weight(module).detach()
    if param is None:
        return raw
    return raw * param.multiplier().to(raw.dtype)
