"""Learnable gamma for ``sn-same-gamma`` / ``sn-diff-gamma`` (C4): one scalar for all layers, or one each."""
from __future__ import annotations

import torch
from torch import Tensor, nn


def new_gamma(like: Tensor) -> nn.Parameter:
    """A learnable scalar initialized to 1 on ``like``'s device and dtype."""
    return nn.Parameter(torch.ones((), dtype=like.dtype, device=like.device))


class GammaScaling(nn.Module):
    """Parametrization ``b -> gamma * b`` of a bias, sharing the weight parametrization's ``gamma``.

    In the authors' code gamma multiplies the whole layer output, i.e. both the
    normalized weight and the bias.

    Examples
    --------
    >>> scaling = GammaScaling(nn.Parameter(torch.tensor(2.0)))
    >>> scaling(torch.tensor([1.0, -3.0]))
    tensor([ 2., -6.], grad_fn=<MulBackward0>)
    """

    def __init__(self, gamma: nn.Parameter) -> None:
        super().__init__()
        self.gamma = gamma

    def forward(self, bias: Tensor) -> Tensor:
        """Return ``gamma * bias``."""
        return bias * self.gamma

    def right_inverse(self, value: Tensor) -> Tensor:
        """Assigning ``module.bias = b`` stores ``b`` as the raw bias."""
        return value
