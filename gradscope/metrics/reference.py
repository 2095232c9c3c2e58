"""Statistics of the real data under a feature extractor, computed once per dataset and cached on disk."""
from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from gradscope._checks import check_int_at_least
from gradscope.metrics.cache import default_cache_dir, load_cached, save_atomic
from gradscope.metrics.formulas import gaussian_statistics

__all__ = ["ReferenceStatistics", "reference_statistics"]

# The reference subset is drawn with a fixed seed so that a cache entry is
# fully described by (dataset, image size, extractor, count).
REFERENCE_SEED = 0
DEFAULT_MAX_REFERENCE = 50_000


@dataclass
class ReferenceStatistics:
    """Real-data side of FID / KID: Gaussian statistics and the features themselves.

    Attributes
    ----------
    mu, sigma : numpy.ndarray
        Float64 mean (d,) and covariance (d, d) of the real features (FID).
    features : torch.Tensor
        The real features, float32 (N, d) on the CPU (KID draws subsets of them).
    extractor_name : str
        The extractor that produced them.
    from_cache : bool
        True when read from the disk cache rather than computed.
    """

    mu: np.ndarray
    sigma: np.ndarray
    features: Tensor
    extractor_name: str
    from_cache: bool = field(default=False, compare=False)

    @classmethod
    def from_features(cls, features: Tensor, extractor_name: str) -> ReferenceStatistics:
        """Statistics of a feature matrix (N >= 2)."""
        mu, sigma = gaussian_statistics(features)
        return cls(mu, sigma, features.detach().float().cpu(), extractor_name)

    @property
    def count(self) -> int:
        """Number of real samples behind the statistics."""
        return int(self.features.shape[0])

    def to_state(self) -> dict[str, Any]:
        """A dict of tensors and strings, loadable with ``torch.load(weights_only=True)``."""
        return {"mu": torch.from_numpy(self.mu), "sigma": torch.from_numpy(self.sigma),
                "features": self.features, "extractor_name": self.extractor_name}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> ReferenceStatistics:
        """Inverse of :meth:`to_state`."""
        return cls(state["mu"].double().numpy(), state["sigma"].double().numpy(), state["features"].float(),
                   str(state["extractor_name"]), from_cache=True)


def _image_of(item: Any) -> Tensor:
    # Datasets may yield the image alone or (image, label).
    return item[0] if isinstance(item, (tuple, list)) else item


def dataset_batches(dataset: Any, indices: Sequence[int], batch_size: int) -> Iterator[Tensor]:
    """Stack ``dataset[i]`` for ``indices`` into batches of at most ``batch_size`` images.

    gradscope datasets gather a batch with one ``get_batch`` call (one indexing
    operation for in-memory ones); any other map-style dataset is indexed item by item.
    """
    get_batch = getattr(dataset, "get_batch", None)
    for start in range(0, len(indices), batch_size):
        chunk = [int(i) for i in indices[start:start + batch_size]]
        yield get_batch(chunk) if callable(get_batch) else torch.stack([_image_of(dataset[i]) for i in chunk])


def _cache_path(root: Path, dataset: Any, extractor_name: str, count: int) -> Path:
    size = getattr(dataset, "image_size", "na")
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{getattr(dataset, 'name', 'dataset')}-{size}px-{extractor_name}-n{count}")
    return root / "reference" / f"{name}.pt"


def reference_statistics(
    dataset: Any,
    extractor: Any,
    *,
    n_samples: int | None = None,
    batch_size: int = 256,
    cache_dir: str | os.PathLike[str] | None = None,
) -> ReferenceStatistics:
    """Real-data statistics of ``dataset`` under ``extractor``, from the cache or computed and cached.

    The reference set is ``min(n_samples, len(dataset))`` images (``n_samples``
    defaults to 50,000): the whole dataset in order when that is all of it,
    else a fixed (seed 0) random subset. The cache file is
    ``<cache>/reference/<dataset.name>-<image_size>px-<extractor.name>-n<count>.pt``;
    the extractor's name includes a digest of its weights. Delete the file
    after changing a dataset's content under the same name.

    Parameters
    ----------
    dataset : Dataset
        Image dataset (``len``, ``dataset[i]`` -> image in [-1, 1] or (image, label);
        attributes ``name`` and ``image_size``).
    extractor : FeatureExtractor
        See :class:`gradscope.metrics.extractor.FeatureExtractor`.
    n_samples : int, optional
        Size of the reference set.
    batch_size : int
        Images per feature-extraction batch.
    cache_dir : path, optional
        Cache root (default :func:`gradscope.metrics.cache.default_cache_dir`).

    Returns
    -------
    ReferenceStatistics
    """
    check_int_at_least("batch_size", batch_size, 1)
    wanted = DEFAULT_MAX_REFERENCE if n_samples is None else check_int_at_least("n_samples", n_samples, 2)
    total = len(dataset)
    if total < 2:
        name = getattr(dataset, "name", "?")
        raise ValueError(f"dataset {name!r} has {total} images; reference statistics need >= 2")
    count = min(wanted, total)
    path = _cache_path(default_cache_dir(cache_dir), dataset, extractor.name, count)
    cached = load_cached(path)
    if isinstance(cached, dict) and cached.get("extractor_name") == extractor.name:
        return ReferenceStatistics.from_state(cached)
    if count == total:
        indices: Sequence[int] = range(total)
    else:
        generator = torch.Generator().manual_seed(REFERENCE_SEED)
        indices = torch.randperm(total, generator=generator)[:count].tolist()
    with torch.no_grad():
        chunks = [extractor.features(batch)[0].float().cpu() for batch in dataset_batches(dataset, indices, batch_size)]
    stats = ReferenceStatistics.from_features(torch.cat(chunks), extractor.name)
    save_atomic(stats.to_state(), path)
    return stats
