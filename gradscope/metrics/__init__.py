"""Sample quality: FID / IS / KID under Inception (optional) or the embedded digits classifier;
mode coverage for the 2D sets.

Numbers computed with the digits classifier are named ``digits_*`` and are
not comparable to Inception-based ``inception_*`` numbers.
"""
from __future__ import annotations

from gradscope.metrics.cache import default_cache_dir
from gradscope.metrics.coverage import class_histogram, classes_covered
from gradscope.metrics.digits import DigitsExtractor, load_digits_extractor, train_digits_classifier
from gradscope.metrics.evaluate import evaluate_generator, generate_samples
from gradscope.metrics.extractor import EXTRACTORS, FeatureExtractor, clear_extractor_cache, get_extractor
from gradscope.metrics.formulas import (
    frechet_distance,
    gaussian_statistics,
    inception_score,
    kernel_inception_distance,
)
from gradscope.metrics.inception import InceptionExtractor, InceptionUnavailable
from gradscope.metrics.modes import mode_metrics
from gradscope.metrics.reference import ReferenceStatistics, reference_statistics
from gradscope.metrics.state import METRICS, SampleQuality

__all__ = [
    "EXTRACTORS",
    "METRICS",
    "DigitsExtractor",
    "FeatureExtractor",
    "InceptionExtractor",
    "InceptionUnavailable",
    "ReferenceStatistics",
    "SampleQuality",
    "class_histogram",
    "classes_covered",
    "clear_extractor_cache",
    "default_cache_dir",
    "evaluate_generator",
    "frechet_distance",
    "gaussian_statistics",
    "generate_samples",
    "get_extractor",
    "inception_score",
    "kernel_inception_distance",
    "load_digits_extractor",
    "mode_metrics",
    "reference_statistics",
    "train_digits_classifier",
]
