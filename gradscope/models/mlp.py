"""The MLP pair for 2D Gaussian mixtures (ring of 8, grid of 25), the classic mode-collapse toy.

In the style of the unrolled-GAN / PacGAN / VEEGAN experiments: fully
connected layers of equal width with ReLU, a linear output. Choices:

- ``depth`` hidden layers of ``hidden`` units (default 3 x 128) on both
  sides, so the discriminator has four layers to normalize;
- the generator's output is linear (the mixtures live on a scale of a few
  units, not in ``[-1, 1]``);
- ``z_dim = 16``: a latent wider than the data lets the generator place mass
  on separated modes without tearing a 2D sheet; cheap either way.

Weights start from ``xavier`` (Glorot uniform), biases zero.
"""
from __future__ import annotations

from torch import Tensor, nn

from gradscope._checks import check_int_at_least
from gradscope.init import init_
from gradscope.models.base import LatentGenerator

MLP_REFERENCE_INIT = "xavier"
MLP_DEFAULT_Z_DIM = 16


def _relu_stack(in_dim: int, hidden: int, depth: int, out_dim: int) -> nn.Sequential:
    check_int_at_least("hidden", hidden, 1)
    check_int_at_least("depth", depth, 1)
    layers: list[nn.Module] = []
    for width_in in [in_dim] + [hidden] * (depth - 1):
        layers += [nn.Linear(width_in, hidden), nn.ReLU()]
    layers.append(nn.Linear(hidden, out_dim))
    return nn.Sequential(*layers)


class MLPDiscriminator(nn.Module):
    """Fully connected ReLU discriminator on flat vectors; returns ``(batch,)`` logits.

    Parameters
    ----------
    in_dim : int
        Dimension of a data point (2 for the mixtures).
    hidden : int
        Width of each hidden layer.
    depth : int
        Number of hidden layers; with the output layer, ``depth + 1`` linear
        layers for a normalization to act on.

    Examples
    --------
    >>> import torch
    >>> MLPDiscriminator()(torch.zeros(5, 2)).shape
    torch.Size([5])
    """

    def __init__(self, in_dim: int = 2, hidden: int = 128, depth: int = 3) -> None:
        super().__init__()
        self.in_dim = check_int_at_least("in_dim", in_dim, 1)
        self.input_shape = (in_dim,)
        self.net = _relu_stack(in_dim, hidden, depth, 1)
        init_(self, MLP_REFERENCE_INIT)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).squeeze(1)


class MLPGenerator(LatentGenerator):
    """Fully connected ReLU generator with a linear output of ``out_dim`` coordinates.

    Parameters
    ----------
    z_dim : int
        Latent size.
    out_dim : int
        Dimension of a generated point.
    hidden : int
        Width of each hidden layer.
    depth : int
        Number of hidden layers.

    Examples
    --------
    >>> G = MLPGenerator()
    >>> G(G.sample_latent(5)).shape
    torch.Size([5, 2])
    """

    def __init__(self, z_dim: int = MLP_DEFAULT_Z_DIM, out_dim: int = 2, hidden: int = 128, depth: int = 3) -> None:
        check_int_at_least("out_dim", out_dim, 1)
        super().__init__(z_dim, (out_dim,))
        self.out_dim = out_dim
        self.net = _relu_stack(z_dim, hidden, depth, out_dim)
        init_(self, MLP_REFERENCE_INIT)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)
