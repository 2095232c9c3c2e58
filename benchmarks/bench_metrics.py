"""How long sample-quality evaluation takes on this machine (target: digits FID + IS of 2k samples < 10 s on CPU).

Measures, in one process:
1. the one-time costs: training the digits classifier (fresh cache), loading it
   from the cache, computing the digits reference statistics and reading them back;
2. for ``--n`` generated images (an SNDCGAN generator at 32x32, random weights):
   generation alone, then feature extraction + FID + IS (the target), KID
   (100 subsets of 1000) and the whole ``evaluate_generator`` call;
3. the Fréchet distance by the symmetric eigenvalue method used here against
   the textbook ``scipy.linalg.sqrtm(S1 @ S2)``, at d = 128 (digits) and d = 2048
   (Inception), with their relative difference.

Timings are the best of ``--repeat`` runs. Usage::

    python benchmarks/bench_metrics.py [--n 2000] [--repeat 3] [--device cpu] [--threads N]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.linalg
import torch

from gradscope.data import load_dataset
from gradscope.metrics import (
    evaluate_generator,
    frechet_distance,
    gaussian_statistics,
    inception_score,
    kernel_inception_distance,
    load_digits_extractor,
    reference_statistics,
)
from gradscope.metrics.evaluate import generate_samples
from gradscope.models import build_pair


def best_of(repeat: int, work: Callable[[], Any]) -> tuple[float, Any]:
    """Smallest wall time of ``repeat`` calls, and the last result."""
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = work()
        best = min(best, time.perf_counter() - start)
    return best, result


def scipy_frechet(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean).real)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="generated samples")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per measurement (best is reported)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}, n = {args.n}")
    rows: list[tuple[str, float]] = []

    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        extractor = load_digits_extractor(device, cache_dir=cache)
        rows.append(("digits classifier: train + cache (one-time)", time.perf_counter() - start))
        print(f"digits classifier held-out accuracy: {extractor.accuracy:.4f} ({extractor.name})")
        seconds, _ = best_of(args.repeat, lambda: load_digits_extractor(device, cache_dir=cache))
        rows.append(("digits classifier: load from cache", seconds))
        dataset = load_dataset("digits")
        start = time.perf_counter()
        reference = reference_statistics(dataset, extractor, cache_dir=cache)
        rows.append((f"reference statistics: compute {reference.count} real (one-time)", time.perf_counter() - start))
        seconds, _ = best_of(args.repeat, lambda: reference_statistics(dataset, extractor, cache_dir=cache))
        rows.append(("reference statistics: load from cache", seconds))

        _, generator = build_pair("sndcgan", dataset.image_size, dataset.channels)
        generator.to(device)
        seconds, images = best_of(args.repeat, lambda: torch.cat(list(generate_samples(generator, args.n))))
        rows.append((f"generate {args.n} SNDCGAN samples (not part of the target)", seconds))

        def fid_and_is() -> tuple[float, float]:
            pool, logits = extractor.features(images)
            mu, sigma = gaussian_statistics(pool)
            fid = frechet_distance(mu, sigma, reference.mu, reference.sigma)
            return fid, inception_score(logits.double().softmax(dim=1), 10)[0]

        seconds, (fid, score) = best_of(args.repeat, fid_and_is)
        rows.append((f"features + digits-FID + digits-IS of {args.n} (target < 10 s)", seconds))
        pool = extractor.features(images)[0]
        seconds, (kid, _) = best_of(args.repeat, lambda: kernel_inception_distance(reference.features, pool))
        rows.append(("digits-KID, 100 subsets of 1000", seconds))
        seconds, scores = best_of(args.repeat, lambda: evaluate_generator(generator, dataset, n_samples=args.n,
                                                                          device=device, cache_dir=cache))
        rows.append(("evaluate_generator end to end (generation + FID + IS + KID)", seconds))
        print(f"untrained generator: digits_fid {fid:.1f}, digits_is {score:.3f}, digits_kid {kid:.2f}; {scores}")

    width = max(len(name) for name, _ in rows)
    for name, seconds in rows:
        print(f"{name:<{width}}  {seconds:8.3f} s")

    rng = np.random.default_rng(0)
    print("\nFréchet distance, eigenvalue method (ours) vs scipy.linalg.sqrtm(S1 S2):")
    for d in (128, 2048):
        stats = [gaussian_statistics(rng.normal(size=(2 * d, d)) @ rng.normal(size=(d, d)) / np.sqrt(d))
                 for _ in range(2)]
        (mu1, s1), (mu2, s2) = stats
        ours_s, ours = best_of(args.repeat, lambda: frechet_distance(mu1, s1, mu2, s2))
        theirs_s, theirs = best_of(1 if d > 1000 else args.repeat, lambda: scipy_frechet(mu1, s1, mu2, s2))
        print(f"  d={d:5d}: ours {ours_s:7.3f} s, sqrtm {theirs_s:7.3f} s, speed-up x{theirs_s / ours_s:5.1f}, "
              f"relative difference {abs(ours - theirs) / abs(theirs):.1e}")


if __name__ == "__main__":
    main()
