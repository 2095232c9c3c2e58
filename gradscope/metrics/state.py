"""Accumulate features batch by batch and compute FID / IS / KID at the end (torchmetrics-style)."""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from gradscope._checks import check_choice, check_int_at_least
from gradscope.metrics.extractor import FeatureExtractor, get_extractor
from gradscope.metrics.formulas import (
    frechet_distance,
    gaussian_statistics,
    inception_score,
    kernel_inception_distance,
)
from gradscope.metrics.reference import ReferenceStatistics

__all__ = ["METRICS", "SampleQuality"]

METRICS = ("fid", "is", "kid")


class SampleQuality:
    """FID, IS and KID of generated images under one feature extractor.

    Feed real images with ``update(images, real=True)`` (or set cached real
    statistics with :meth:`set_reference`) and generated images with
    ``update(images, real=False)``; :meth:`compute` returns the metrics named
    ``<family>_<metric>``, e.g. ``digits_fid`` or ``inception_fid``, so that
    numbers from different extractors are never confused. Features stay on
    the extractor's device until :meth:`compute`.

    Parameters
    ----------
    extractor : FeatureExtractor or {"auto", "digits", "inception"}
        Produces ``(pool_features, logits)``; a name is resolved on the CPU by
        :func:`gradscope.metrics.extractor.get_extractor`.
    metrics : iterable of {"fid", "is", "kid"}
        Which metrics to compute.
    is_splits : int
        Splits of the Inception Score (10).
    kid_subsets, kid_subset_size : int
        KID's random subsets (100 of 1000 samples; the size is capped by the set sizes).
    seed : int
        Seed of KID's subset draws.

    Examples
    --------
    >>> quality = SampleQuality("digits", metrics=("fid", "is"))  # doctest: +SKIP
    >>> quality.update(real_images, real=True); quality.update(fake_images, real=False)  # doctest: +SKIP
    >>> quality.compute()  # doctest: +SKIP
    {'digits_fid': 12.3, 'digits_is_mean': 8.1, 'digits_is_std': 0.2}
    """

    def __init__(
        self,
        extractor: FeatureExtractor | str,
        metrics: Iterable[str] = METRICS,
        *,
        is_splits: int = 10,
        kid_subsets: int = 100,
        kid_subset_size: int = 1000,
        seed: int = 0,
    ) -> None:
        if isinstance(extractor, str):
            extractor = get_extractor(extractor)
        if not isinstance(extractor, FeatureExtractor):
            raise ValueError("extractor must provide name, family, device and features(images) -> (pool, logits)")
        self.metrics = tuple(dict.fromkeys(check_choice("metric", m, METRICS) for m in metrics))
        if not self.metrics:
            raise ValueError(f"metrics must name at least one of {', '.join(METRICS)}")
        self.extractor = extractor
        self.is_splits = check_int_at_least("is_splits", is_splits, 1)
        self.kid_subsets = check_int_at_least("kid_subsets", kid_subsets, 1)
        self.kid_subset_size = check_int_at_least("kid_subset_size", kid_subset_size, 2)
        self.seed = seed
        self._reference: ReferenceStatistics | None = None
        self._real: list[Tensor] = []
        self._fake_pool: list[Tensor] = []
        self._fake_logits: list[Tensor] = []

    @property
    def needs_real(self) -> bool:
        """Whether a metric compares with real data (FID, KID)."""
        return "fid" in self.metrics or "kid" in self.metrics

    @torch.no_grad()
    def update(self, images: Tensor, real: bool) -> None:
        """Add a batch of images in [-1, 1], (N, C, H, W), to the real or the generated side."""
        if not isinstance(images, Tensor) or images.ndim != 4:
            raise ValueError(f"images must be a 4-D tensor (N, C, H, W), got {getattr(images, 'shape', type(images))}")
        pool, logits = self.extractor.features(images)
        if real:
            if self.needs_real:
                self._real.append(pool.detach().float())
                self._reference = None
            return
        if self.needs_real:
            self._fake_pool.append(pool.detach().float())
        if "is" in self.metrics:
            self._fake_logits.append(logits.detach().float())

    def set_reference(self, reference: ReferenceStatistics) -> None:
        """Use precomputed real statistics (e.g. from :func:`reference_statistics`) instead of real batches."""
        if reference.extractor_name != self.extractor.name:
            raise ValueError(f"reference statistics come from extractor {reference.extractor_name!r}, "
                             f"not {self.extractor.name!r}")
        self._real = []
        self._reference = reference

    def reference(self) -> ReferenceStatistics:
        """The real-data statistics: those set, or those of the real batches seen so far."""
        if self._reference is None:
            if not self._real:
                raise ValueError("no real data: call update(images, real=True) or set_reference() first")
            self._reference = ReferenceStatistics.from_features(torch.cat(self._real), self.extractor.name)
        return self._reference

    def compute(self) -> dict[str, float]:
        """The metrics as ``{"<family>_fid", "<family>_is_mean", "<family>_is_std", "<family>_kid_mean", ...}``."""
        if not self._fake_pool and not self._fake_logits:
            raise ValueError("no generated data: call update(images, real=False) first")
        prefix = self.extractor.family
        results: dict[str, float] = {}
        if "fid" in self.metrics:
            reference = self.reference()
            mu, sigma = gaussian_statistics(torch.cat(self._fake_pool))
            results[f"{prefix}_fid"] = frechet_distance(mu, sigma, reference.mu, reference.sigma)
        if "is" in self.metrics:
            probs = torch.cat(self._fake_logits).double().softmax(dim=1)
            results[f"{prefix}_is_mean"], results[f"{prefix}_is_std"] = inception_score(probs, self.is_splits)
        if "kid" in self.metrics:
            fake = torch.cat(self._fake_pool)
            real = self.reference().features.to(fake.device)
            results[f"{prefix}_kid_mean"], results[f"{prefix}_kid_std"] = kernel_inception_distance(
                real, fake, self.kid_subsets, self.kid_subset_size, seed=self.seed)
        return results

    def reset(self, *, keep_real: bool = True) -> None:
        """Forget the generated samples, and also the real side unless ``keep_real``."""
        self._fake_pool = []
        self._fake_logits = []
        if not keep_real:
            self._real = []
            self._reference = None
