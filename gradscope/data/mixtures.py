"""The 2D Gaussian mixtures of the GAN-stability literature (the MLP GAN's data).

``ring8``: 8 equally weighted isotropic Gaussians with means
``(2 cos(2 pi k / 8), 2 sin(2 pi k / 8))``, k = 0..7, and standard deviation 0.02
(Metz, Poole, Pfau, Sohl-Dickstein, "Unrolled Generative Adversarial Networks",
ICLR 2017). VEEGAN (Srivastava et al., NeurIPS 2017) and PacGAN (Lin, Khetan,
Fanti, Oh, NeurIPS 2018) use the same ring scaled by 1/2 (radius 1, std 0.01):
the ratio of mode spacing to spread, all that matters for mode collapse, is equal.

``grid25``: 25 equally weighted isotropic Gaussians with means
``(-4 + 2i, -4 + 2j)``, i, j = 0..4, and standard deviation 0.05 (variance 0.0025),
as in VEEGAN and PacGAN.

A sample counts as high quality when it lies within 3 standard deviations of a
mode centre (same papers); the metrics of :mod:`gradscope.metrics` read
``centers`` and ``std`` from the dataset for that.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from gradscope._checks import check_int_at_least
from gradscope.data.base import PointDataset

POINTS_PER_EPOCH = 100_000
RING8_RADIUS, RING8_STD = 2.0, 0.02
GRID25_SPACING, GRID25_STD = 2.0, 0.05


def ring_centers(modes: int = 8, radius: float = RING8_RADIUS) -> Tensor:
    """``(modes, 2)`` float32 centres equally spaced on a circle, the first at angle 0.

    Examples
    --------
    >>> ring_centers(4, 1.0).round().tolist()
    [[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [-0.0, -1.0]]
    """
    angles = torch.arange(modes, dtype=torch.float64) * (2 * math.pi / modes)
    return (radius * torch.stack([angles.cos(), angles.sin()], dim=1)).to(torch.float32)


def grid_centers(side: int = 5, spacing: float = GRID25_SPACING) -> Tensor:
    """``(side**2, 2)`` float32 centres of a square grid centred on the origin, row by row.

    Examples
    --------
    >>> grid_centers(3, 1.0).tolist()[:4]
    [[-1.0, -1.0], [-1.0, 0.0], [-1.0, 1.0], [0.0, -1.0]]
    """
    axis = (torch.arange(side, dtype=torch.float64) - (side - 1) / 2) * spacing
    xs, ys = torch.meshgrid(axis, axis, indexing="ij")
    return torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1).to(torch.float32)


def sample_mixture(centers: Tensor, std: float, count: int, *, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Draw ``count`` points from the equal-weight mixture ``N(centers[k], std^2 I)``.

    Returns
    -------
    points : Tensor
        ``(count, 2)`` float32.
    components : Tensor
        ``(count,)`` long, the mode each point was drawn from.
    """
    generator = torch.Generator().manual_seed(seed)
    components = torch.randint(len(centers), (count,), generator=generator)
    noise = torch.randn((count, centers.shape[1]), generator=generator, dtype=torch.float64)
    points = centers.to(torch.float64)[components] + std * noise
    return points.to(torch.float32), components


def load_mixture(name: str, *, seed: int = 0, count: int = POINTS_PER_EPOCH) -> PointDataset:
    """``ring8`` or ``grid25`` as a :class:`PointDataset` of ``count`` points drawn with ``seed``.

    The dataset also carries ``components``, the mode index of every point.

    Examples
    --------
    >>> ds = load_mixture("ring8", count=10)
    >>> ds.centers.shape, ds.std, ds[0].shape
    (torch.Size([8, 2]), 0.02, torch.Size([2]))
    """
    check_int_at_least("count", count, 1)
    if name == "ring8":
        centers, std = ring_centers(), RING8_STD
    elif name == "grid25":
        centers, std = grid_centers(), GRID25_STD
    else:
        raise ValueError(f"unknown mixture {name!r}; valid choices: 'ring8', 'grid25'")
    points, components = sample_mixture(centers, std, count, seed=seed)
    dataset = PointDataset(points, name=name, centers=centers, std=std)
    dataset.components = components
    return dataset
