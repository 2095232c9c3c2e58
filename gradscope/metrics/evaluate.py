"""One call from a generator and its dataset to sample-quality numbers (used by `gradscope run` and `eval`)."""
from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from gradscope._checks import check_choice, check_int_at_least
from gradscope.metrics.extractor import EXTRACTORS, get_extractor
from gradscope.metrics.modes import mode_metrics
from gradscope.metrics.reference import reference_statistics
from gradscope.metrics.state import METRICS, SampleQuality

__all__ = ["evaluate_generator", "generate_samples"]

DATASET_KINDS = ("image", "points")


def _device_of(module: nn.Module) -> torch.device:
    parameter = next(module.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def generate_samples(
    generator: nn.Module, n_samples: int, *, batch_size: int = 250, device: str | torch.device | None = None,
    seed: int = 0,
) -> Iterator[Tensor]:
    """Yield ``n_samples`` generator outputs in batches, reproducibly and without side effects.

    Latents come from ``generator.sample_latent(n, device=..., generator=rng)``
    with a private CPU ``torch.Generator`` seeded by ``seed``: the same seed and
    batch size give the same latents on any device, and the global RNG (which a training
    run's resume equality depends on) is not consumed. The generator runs in eval mode under
    ``torch.no_grad``; its previous train/eval mode is restored afterwards,
    also when the consumer stops early.
    """
    check_int_at_least("n_samples", n_samples, 1)
    check_int_at_least("batch_size", batch_size, 1)
    device = _device_of(generator) if device is None else torch.device(device)
    return _batches(generator, n_samples, batch_size, device, seed)


def _batches(generator: nn.Module, n_samples: int, batch_size: int, device: torch.device, seed: int,
             ) -> Iterator[Tensor]:
    # A CPU generator: the models draw on the generator's device and move the latents,
    # so the same seed gives the same samples on any device.
    rng = torch.Generator().manual_seed(seed)
    was_training = generator.training
    generator.eval()
    try:
        with torch.no_grad():
            for start in range(0, n_samples, batch_size):
                z = generator.sample_latent(min(batch_size, n_samples - start), device=device, generator=rng)
                yield generator(z)
    finally:
        generator.train(was_training)


def evaluate_generator(
    generator: nn.Module,
    dataset: Any,
    *,
    n_samples: int = 2000,
    extractor: str = "auto",
    batch_size: int = 250,
    device: str | torch.device | None = None,
    seed: int = 0,
    cache_dir: str | os.PathLike[str] | None = None,
    inception_weights: str | os.PathLike[str] | None = None,
    metrics: tuple[str, ...] = METRICS,
    n_reference: int | None = None,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    fallback: bool = True,
) -> dict[str, float]:
    """Sample-quality numbers of ``generator`` against ``dataset``.

    Image datasets (``dataset.kind == "image"``): FID, IS (10 splits) and KID
    of ``n_samples`` generated images under the chosen feature extractor,
    keyed ``<family>_fid``, ``<family>_is_mean``, ``<family>_is_std``,
    ``<family>_kid_mean``, ``<family>_kid_std`` with family ``digits``, ``mnist`` or
    ``inception`` (digits numbers are not comparable to Inception ones). The
    real side comes from :func:`reference_statistics` (computed once, cached).

    2D sets (``dataset.kind == "points"``, with ``centers`` and ``std``):
    ``modes_covered``, ``high_quality_fraction`` and ``kl_uniform`` of
    :func:`gradscope.metrics.modes.mode_metrics`.

    The generator (``z_dim``, ``sample_latent``, ``forward(z)``) runs batched
    on ``device`` in eval mode without gradients; its mode is restored and the
    global RNG is untouched (see :func:`generate_samples`).

    Parameters
    ----------
    generator : torch.nn.Module
        The generator.
    dataset : Dataset
        gradscope dataset (``kind``, ``name``; images: ``image_size``).
    n_samples : int
        Generated samples (2000 is the CPU default; 10k-50k on a GPU for publishable FID).
    extractor : {"auto", "digits", "mnist", "inception"}
        See :func:`gradscope.metrics.extractor.get_extractor`.
    batch_size : int
        Batch size of generation and feature extraction.
    device : str or torch.device, optional
        Default: the generator's device. The extractor runs there too.
    seed : int
        Seed of the latents (and of KID's subsets).
    cache_dir : path, optional
        Cache root for the digits classifier and reference statistics.
    inception_weights : path, optional
        Explicit Inception weights file (``--inception-weights``).
    metrics : tuple of {"fid", "is", "kid"}
        Image metrics to compute.
    n_reference : int, optional
        Real images behind the reference statistics (default: the dataset, up to 50,000).
    kid_subsets, kid_subset_size : int
        KID's subsets.
    fallback : bool
        With ``extractor="inception"``: fall back to the digits classifier (with a warning) when Inception
        cannot be had, or raise :class:`~gradscope.metrics.inception.InceptionUnavailable` (false).

    Returns
    -------
    dict of str to float

    Examples
    --------
    >>> scores = evaluate_generator(generator, dataset, n_samples=2000, seed=0)  # doctest: +SKIP
    >>> sorted(scores)  # doctest: +SKIP
    ['digits_fid', 'digits_is_mean', 'digits_is_std', 'digits_kid_mean', 'digits_kid_std']
    """
    kind = check_choice("dataset kind", getattr(dataset, "kind", None), DATASET_KINDS)
    check_choice("feature extractor", extractor, EXTRACTORS)
    check_int_at_least("n_samples", n_samples, 2)
    device = _device_of(generator) if device is None else torch.device(device)
    batches = generate_samples(generator, n_samples, batch_size=batch_size, device=device, seed=seed)
    if kind == "points":
        samples = torch.cat([batch.detach().cpu() for batch in batches])
        return mode_metrics(samples, dataset.centers, float(dataset.std))
    features = get_extractor(extractor, device=device, cache_dir=cache_dir, inception_weights=inception_weights,
                             dataset_name=getattr(dataset, "name", None), fallback=fallback)
    quality = SampleQuality(features, metrics, kid_subsets=kid_subsets, kid_subset_size=kid_subset_size, seed=seed)
    if quality.needs_real:
        quality.set_reference(reference_statistics(dataset, features, n_samples=n_reference, batch_size=batch_size,
                                                   cache_dir=cache_dir))
    for batch in batches:
        quality.update(batch, real=False)
    return quality.compute()
