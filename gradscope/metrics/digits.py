"""The embedded feature extractors: a small CNN trained on handwritten digits, offline.

Two training sources (:data:`CLASSIFIER_SOURCES`), one architecture: scikit-learn's
8x8 digits (metrics ``digits_fid`` ...) and the 5,000 MNIST digits of
:mod:`gradscope.data.mnist` (``mnist_fid`` ...), each with a seeded 20 %
held-out split. They make "digits-FID", "digits-IS" and "digits-KID" (and
their ``mnist`` counterparts) available offline: the
classifier's penultimate activations (128 ReLU units) play the role of
Inception's pool features and its 10 logits the role of Inception's class
logits, fed to the very same formulas. These numbers measure distances in
the feature space of *this* classifier; they are NOT comparable to
Inception-based FID / IS / KID, nor across versions of the classifier (the
extractor's ``name`` carries a hash of its weights for that reason).

The classifier is trained once per seed (deterministic CPU training of a few
seconds, global RNG state untouched), reaches about 98% held-out accuracy and
is cached under the cache directory (see :func:`default_cache_dir`).
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gradscope._checks import check_choice, check_int_at_least
from gradscope.metrics.cache import default_cache_dir, load_cached, save_atomic

__all__ = ["CLASSIFIER_SOURCES", "DigitsClassifier", "DigitsExtractor", "load_digits_extractor", "train_digits_classifier"]

INPUT_SIZE = 16
VERSION = "v1"
#: The datasets a classifier can be trained on; each name is also its metrics' prefix (``mnist_fid``).
CLASSIFIER_SOURCES: tuple[str, ...] = ("digits", "mnist")
HELD_OUT_FRACTION = 0.2


class DigitsClassifier(nn.Module):
    """Conv-pool, conv-pool, conv (3x3, 16/32/64 channels), a 128-unit hidden layer, 10 logits; input 1x16x16."""

    feature_dim = 128

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.conv3 = nn.Conv2d(32, 64, 3, padding=1)
        self.hidden = nn.Linear(64 * 4 * 4, self.feature_dim)
        self.out = nn.Linear(self.feature_dim, 10)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(penultimate_features, logits)`` for inputs of shape (N, 1, 16, 16)."""
        # Pool early: the 16x16 input carries 8x8 worth of detail, and training stays a few seconds.
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.conv3(x))
        features = F.relu(self.hidden(x.flatten(1)))
        return features, self.out(features)


def to_classifier_input(images: Tensor) -> Tensor:
    """Map images in [-1, 1] of shape (N, C, H, W), C in {1, 3}, to the classifier's (N, 1, 16, 16).

    RGB is turned into luminance (ITU-R 601 weights); the size is changed by
    antialiased bilinear resampling, so an 8x8 digit upscaled by the data
    pipeline and brought back to 16x16 matches the training inputs.
    """
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must have shape (N, 1 or 3, H, W), got {tuple(images.shape)}")
    x = images.float()
    if x.shape[1] == 3:
        weights = torch.tensor([0.299, 0.587, 0.114], device=x.device).view(1, 3, 1, 1)
        x = (x * weights).sum(dim=1, keepdim=True)
    if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
        x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False, antialias=True)
    return x.clamp(-1.0, 1.0)


def _classifier_tensors(source: str) -> tuple[Tensor, Tensor]:
    """Images in [-1, 1] (N, 1, S, S) and labels of ``source``: sklearn's 8x8 digits or the 32x32 MNIST sample."""
    if source == "mnist":
        from gradscope.data.mnist import load_mnist

        dataset = load_mnist()
        return dataset.decode(dataset.data), dataset.labels
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy(bunch.images.astype(np.float32) / 8.0 - 1.0).unsqueeze(1)
    return images, torch.from_numpy(bunch.target.astype(np.int64))


def _random_shift(x: Tensor, generator: torch.Generator, max_shift: int = 1) -> Tensor:
    """Translate each image by up to ``max_shift`` pixels (background -1 fills in): cheap augmentation."""
    padded = F.pad(x, (max_shift,) * 4, value=-1.0)
    offsets = torch.randint(0, 2 * max_shift + 1, (x.shape[0], 2), generator=generator)
    size = x.shape[-1]
    return torch.stack([padded[i, :, dy:dy + size, dx:dx + size] for i, (dy, dx) in enumerate(offsets.tolist())])


def _accuracy(model: DigitsClassifier, images: Tensor, labels: Tensor) -> float:
    with torch.no_grad():
        _, logits = model(to_classifier_input(images))
    return float((logits.argmax(dim=1) == labels).float().mean())


def _seeded_classifier(seed: int) -> DigitsClassifier:
    # Initialise from `seed` inside a forked RNG: building the extractor in the middle
    # of a training run must not advance that run's global random stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return DigitsClassifier()


def train_digits_classifier(seed: int = 0, epochs: int = 15, batch_size: int = 64,
                            source: str = "digits") -> tuple[DigitsClassifier, float]:
    """Train the digits classifier on CPU, deterministically from ``seed``.

    80% of the images of ``source`` (1797 digits or 5000 MNIST; a seeded split) train it with Adam and random
    one-pixel shifts, on one CPU thread; the other 20% give the held-out
    accuracy. The global torch RNG is left as it was, so calling this in the
    middle of a training run does not change that run's random stream.

    Parameters
    ----------
    seed : int
        Seed of the split, the initialisation and the batch order.
    epochs : int
        Passes over the training split.
    batch_size : int
        Mini-batch size.
    source : {"digits", "mnist"}
        Training images (:data:`CLASSIFIER_SOURCES`).

    Returns
    -------
    (model, held_out_accuracy) : tuple
        The model (eval mode, CPU, float32) and its accuracy on the held-out split.

    Examples
    --------
    >>> model, accuracy = train_digits_classifier(seed=0, epochs=1)  # doctest: +SKIP
    """
    check_int_at_least("seed", seed, 0)
    check_int_at_least("epochs", epochs, 1)
    check_int_at_least("batch_size", batch_size, 1)
    check_choice("classifier source", source, CLASSIFIER_SOURCES)
    images, labels = _classifier_tensors(source)
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(images.shape[0], generator=generator)
    n_test = int(round(HELD_OUT_FRACTION * images.shape[0]))
    test_idx, train_idx = order[:n_test], order[n_test:]
    model = _seeded_classifier(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    model.train()
    threads = torch.get_num_threads()
    # One thread: the same seed then gives the same weights whatever the core count (no
    # thread-dependent summation order), and these small convolutions do not profit from a
    # pool (on a busy 2-core machine one thread trained 5-9x faster than two).
    torch.set_num_threads(1)
    try:
        _train_epochs(model, optimizer, images, labels, train_idx, generator, epochs, batch_size)
    finally:
        torch.set_num_threads(threads)
    model.eval()
    return model, _accuracy(model, images[test_idx], labels[test_idx])


def _train_epochs(model: DigitsClassifier, optimizer: torch.optim.Optimizer, images: Tensor, labels: Tensor,
                  train_idx: Tensor, generator: torch.Generator, epochs: int, batch_size: int) -> None:
    for _ in range(epochs):
        permutation = train_idx[torch.randperm(train_idx.shape[0], generator=generator)]
        for start in range(0, permutation.shape[0], batch_size):
            batch = permutation[start:start + batch_size]
            x = to_classifier_input(_random_shift(images[batch], generator))
            _, logits = model(x)
            loss = F.cross_entropy(logits, labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()


def _weights_digest(state_dict: dict[str, Tensor]) -> str:
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        digest.update(key.encode())
        digest.update(state_dict[key].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:10]


@dataclass
class DigitsExtractor:
    """Feature extractor over the digits classifier: ``features(images) -> (penultimate, logits)``.

    Attributes
    ----------
    name : str
        ``"<family>-cnn-<version>-<weights hash>"``: identifies the exact weights,
        so cached reference statistics never mix two classifiers.
    family : str
        The training source, ``"digits"`` or ``"mnist"``: the prefix of the metric names it produces.
    device : torch.device
        Where the classifier runs.
    accuracy : float
        Held-out accuracy measured when it was trained.
    loaded_from_cache : bool
        Whether the weights came from the cache (``False`` right after training).
    """

    model: DigitsClassifier
    accuracy: float
    device: torch.device
    loaded_from_cache: bool
    family: str = "digits"
    name: str = field(init=False)

    def __post_init__(self) -> None:
        self.model = self.model.to(self.device).eval().requires_grad_(False)
        self.name = f"{self.family}-cnn-{VERSION}-{_weights_digest(self.model.state_dict())}"

    @torch.no_grad()
    def features(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Penultimate features (N, 128) and logits (N, 10), float32 on :attr:`device`."""
        return self.model(to_classifier_input(images.to(self.device)))


def load_digits_extractor(
    device: str | torch.device = "cpu",
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    seed: int = 0,
    source: str = "digits",
) -> DigitsExtractor:
    """The digits extractor, loaded from the cache or trained (once) and cached.

    Parameters
    ----------
    device : str or torch.device
        Where the classifier runs (training itself is always on CPU).
    cache_dir : path, optional
        Cache root; default :func:`default_cache_dir` (``$GRADSCOPE_CACHE`` or
        ``~/.cache/gradscope``). The file is ``<root>/metrics/<source>-classifier-<version>-seed<seed>.pt``.
    seed : int
        Training seed.
    source : {"digits", "mnist"}
        What the classifier is trained on; also the metrics' prefix.

    Returns
    -------
    DigitsExtractor

    Examples
    --------
    >>> extractor = load_digits_extractor("cpu", cache_dir="/tmp/gradscope-doc")  # doctest: +SKIP
    >>> extractor.accuracy > 0.95  # doctest: +SKIP
    True
    """
    check_int_at_least("seed", seed, 0)
    check_choice("classifier source", source, CLASSIFIER_SOURCES)
    path = default_cache_dir(cache_dir) / "metrics" / f"{source}-classifier-{VERSION}-seed{seed}.pt"
    cached = load_cached(path)
    model = _seeded_classifier(seed)
    if isinstance(cached, dict) and "state_dict" in cached:
        try:
            model.load_state_dict(cached["state_dict"])
            return DigitsExtractor(model, float(cached["accuracy"]), torch.device(device), loaded_from_cache=True,
                                   family=source)
        except (RuntimeError, KeyError, TypeError, ValueError):
            pass  # an entry from an incompatible version: retrain and overwrite it
    model, accuracy = train_digits_classifier(seed, source=source)
    save_atomic({"state_dict": model.state_dict(), "accuracy": accuracy, "seed": seed, "version": VERSION,
                 "source": source}, path)
    return DigitsExtractor(model, accuracy, torch.device(device), loaded_from_cache=False, family=source)
