"""Class coverage: how many of a classifier's classes a generator's samples fall into.

The image analogue of the 2D mixtures' ``modes_covered``: generated images are
classified by the dataset's own classifier (the ``digits`` / ``mnist``
extractors, 10 classes) and a class counts as covered when it receives at
least ``min_share`` times its uniform share of the samples. A generator that
collapsed onto a few modes covers few classes, however sharp its images.
"""
from __future__ import annotations

import torch
from torch import nn

from gradscope._checks import check_int_at_least, check_positive

#: A class is covered when it gets at least this fraction of its uniform share (1/K) of the samples.
DEFAULT_MIN_SHARE = 0.25


def class_histogram(generator: nn.Module, extractor, *, n_samples: int = 2000, seed: int = 0,
                    batch_size: int = 250) -> torch.Tensor:
    """Fraction of ``n_samples`` generated images assigned to each class by ``extractor``'s logits.

    Returns
    -------
    Tensor
        float64 ``(K,)`` summing to 1.
    """
    from gradscope.metrics.evaluate import generate_samples

    check_int_at_least("n_samples", n_samples, 1)
    counts = None
    for batch in generate_samples(generator, n_samples, batch_size=batch_size, device=extractor.device, seed=seed):
        _, logits = extractor.features(batch)
        found = torch.bincount(logits.argmax(dim=1).cpu(), minlength=logits.shape[1]).to(torch.float64)
        counts = found if counts is None else counts + found
    return counts / counts.sum()


def classes_covered(histogram: torch.Tensor, min_share: float = DEFAULT_MIN_SHARE) -> int:
    """Classes whose share is at least ``min_share / K``.

    Examples
    --------
    >>> classes_covered(torch.tensor([0.5, 0.5, 0.0, 0.0]))
    2
    >>> classes_covered(torch.full((10,), 0.1))
    10
    """
    check_positive("min_share", min_share)
    k = histogram.numel()
    return int((histogram >= min_share / k - 1e-12).sum())
