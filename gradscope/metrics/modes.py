"""Mode coverage of samples from a 2D Gaussian mixture (ring8, grid25): the classic stability toy.

Rule (Srivastava et al., "VEEGAN", NeurIPS 2017; followed by PacGAN, Lin
et al. 2018, and later GAN-stability papers): a sample is *high quality* when it
lies within ``n_sigma`` (3) standard deviations of its nearest mode centre,
and it is then assigned to that mode. A mode is *covered* when at least
``min_count`` high-quality samples are assigned to it; VEEGAN's rule is
``min_count = 1`` (the default). Stricter variants ask for a minimum share of
the count a perfect generator would place there; pass ``min_count`` for that
(e.g. ``0.2 * N / K``). The KL divergence compares the histogram of assigned
modes (over high-quality samples) with the uniform distribution over the K
modes: ``KL(p || U) = sum_k p_k log(K p_k)``, 0 for perfectly even coverage,
``log K`` when every high-quality sample sits in one mode.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from gradscope._checks import check_int_at_least, check_positive
from gradscope.metrics._arrays import as_float64

__all__ = ["mode_metrics"]


def _points(name: str, value: Any) -> np.ndarray:
    array = as_float64(name, value, 2)
    if array.shape[1] != 2 or array.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty array of 2D points with shape (N, 2), got {array.shape}")
    return array


def mode_metrics(
    samples: Any, centers: Any, std: float, n_sigma: float = 3.0, *, min_count: int = 1
) -> dict[str, float]:
    """Modes covered, high-quality fraction and KL(mode histogram || uniform) of 2D samples.

    See the module docstring for the rule and its source.

    Parameters
    ----------
    samples : array_like, shape (N, 2)
        Generated points.
    centers : array_like, shape (K, 2)
        Mode centres of the mixture.
    std : float
        Standard deviation of each (isotropic) mixture component.
    n_sigma : float
        A sample is high quality within ``n_sigma * std`` of its nearest centre.
    min_count : int
        High-quality samples a mode needs to count as covered (VEEGAN: 1).

    Returns
    -------
    dict
        ``modes_covered`` (0..K, as float), ``high_quality_fraction`` (0..1) and
        ``kl_uniform`` (>= 0; NaN when no sample is high quality, since there
        is no histogram to compare).

    Examples
    --------
    >>> centers = [[1.0, 0.0], [-1.0, 0.0]]
    >>> mode_metrics([[1.0, 0.01], [0.99, 0.0], [5.0, 5.0]], centers, std=0.02)
    {'modes_covered': 1.0, 'high_quality_fraction': 0.6666666666666666, 'kl_uniform': 0.6931471805599453}
    """
    points = _points("samples", samples)
    modes = _points("centers", centers)
    check_positive("std", std)
    check_positive("n_sigma", n_sigma)
    check_int_at_least("min_count", min_count, 1)
    distances = np.linalg.norm(points[:, None, :] - modes[None, :, :], axis=2)
    nearest = distances.argmin(axis=1)
    high_quality = distances[np.arange(points.shape[0]), nearest] <= n_sigma * float(std)
    counts = np.bincount(nearest[high_quality], minlength=modes.shape[0])
    n_high = int(counts.sum())
    if n_high == 0:
        kl = math.nan
    else:
        p = counts / n_high
        nonzero = p > 0
        kl = float(np.sum(p[nonzero] * np.log(p[nonzero] * modes.shape[0])))
    return {
        "modes_covered": float(np.sum(counts >= min_count)),
        "high_quality_fraction": n_high / points.shape[0],
        "kl_uniform": kl,
    }
