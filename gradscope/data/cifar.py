"""CIFAR-10 from the official ``cifar-10-python.tar.gz``, read through a restricted unpickler.

The archive holds ``cifar-10-batches-py/data_batch_1`` ... ``data_batch_5`` (the
50 000 training images) and ``test_batch`` (10 000). Each batch is a pickle
(written by Python 2) of a dict with keys ``data`` (a ``uint8`` array of shape
``(10000, 3072)``: per image 1024 red, then 1024 green, then 1024 blue values,
each plane row-major 32x32), ``labels``, ``batch_label`` and ``filenames``.

A pickle can run arbitrary code when loaded. :class:`RestrictedUnpickler` only
resolves the handful of numpy names a genuine batch references (array and dtype
reconstruction), so a doctored file fails with a one-line error instead of
executing anything.
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from gradscope._checks import check_choice, check_int_at_least
from gradscope.data.base import ImageTensorDataset
from gradscope.data.download import ensure_files
from gradscope.data.imaging import resize_pixel_stack
from gradscope.data.locations import resolve_data_dir

FOLDER = "cifar-10-batches-py"
SPLITS = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
NATIVE_SIZE = 32
#: A genuine batch is about 31 MB (10 000 images of 3072 bytes plus labels and file names);
#: a much larger file is not one, and would be unpickled whole into memory.
MAX_BATCH_BYTES = 40_000_000

try:  # numpy >= 2 moved the implementation to numpy._core; old pickles still name numpy.core
    from numpy._core.multiarray import _reconstruct
    from numpy._core.numeric import _frombuffer
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct
    from numpy.core.numeric import _frombuffer

_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,  # pickle protocol 5 arrays
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
}


class UnsafePickleError(ValueError):
    """A pickle references a global outside the allow-list."""


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only numpy array/dtype reconstruction.

    Plain containers, strings and numbers need no globals and load as usual.
    Anything else (``os.system``, ``builtins.eval``, arbitrary classes) raises
    :class:`UnsafePickleError`.

    Examples
    --------
    >>> import io
    >>> RestrictedUnpickler(io.BytesIO(pickle.dumps({"a": np.arange(3)}))).load()["a"]
    array([0, 1, 2])
    """

    def __init__(self, file: BinaryIO, *, label: str = "pickle") -> None:
        super().__init__(file, encoding="latin1")  # Python 2 str -> str, as the batches were written
        self.label = label

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refusing to unpickle {self.label}: it references {module}.{name}, which a genuine "
                "CIFAR-10 batch never does; delete the file and download the dataset again") from None


def read_batch(path: str | os.PathLike[str]) -> tuple[np.ndarray, list[int]]:
    """Read one CIFAR-10 batch file: ``(pixels (n, 3, 32, 32) uint8, labels)``.

    Raises a one-line ``ValueError`` if the file is not a well-formed batch.
    """
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            batch = RestrictedUnpickler(handle, label=str(path)).load() if size <= MAX_BATCH_BYTES else None
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError, TypeError, ValueError, AttributeError, IndexError, OSError) as exc:
        raise ValueError(f"cannot read CIFAR-10 batch {path}: {exc}; delete it and extract or "
                         "download the archive again") from None
    if size > MAX_BATCH_BYTES:
        raise ValueError(f"{path} is {size:,} bytes, more than the {MAX_BATCH_BYTES:,} of a CIFAR-10 batch; "
                         "delete it and extract or download the archive again")
    data = batch.get("data") if isinstance(batch, dict) else None
    labels = batch.get("labels") if isinstance(batch, dict) else None
    if (not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2
            or data.shape[1] != 3 * NATIVE_SIZE * NATIVE_SIZE or not isinstance(labels, list)
            or len(labels) != data.shape[0]):
        raise ValueError(f"{path} is not a CIFAR-10 batch (expected a dict with a uint8 'data' array of "
                         "shape (n, 3072) and n 'labels'); delete it and extract the archive again")
    return data.reshape(-1, 3, NATIVE_SIZE, NATIVE_SIZE), [int(y) for y in labels]


def load_cifar10(data_dir: str | os.PathLike[str] | None = None, *, split: str = "train",
                 image_size: int | None = None, download: bool = False) -> ImageTensorDataset:
    """CIFAR-10 as an in-memory image dataset of ``uint8`` pixels (``decode`` maps to [-1, 1]).

    Parameters
    ----------
    data_dir : path, optional
        Directory holding ``cifar-10-batches-py/`` or ``cifar-10-python.tar.gz``
        (extracted on first use); default :func:`gradscope.data.default_data_dir`.
    split : {"train", "test"}
        50 000 training or 10 000 test images.
    image_size : int, optional
        Output side, default 32 (native); other sizes are resized once at load.
    download : bool
        Fetch the archive from the official URL if the files are missing.

    Returns
    -------
    ImageTensorDataset
        ``name="cifar10"``, ``channels=3``, with a ``labels`` attribute (long tensor).
    """
    check_choice("CIFAR-10 split", split, SPLITS)
    size = NATIVE_SIZE if image_size is None else check_int_at_least("image_size", image_size, 4)
    root = resolve_data_dir(data_dir)
    files = [root / FOLDER / name for name in SPLITS[split]]
    ensure_files("cifar10", root, files, download=download)
    batches = [read_batch(path) for path in files]
    pixels = torch.from_numpy(np.concatenate([data for data, _ in batches]))
    if size != NATIVE_SIZE:
        pixels = resize_pixel_stack(pixels, size)
    dataset = ImageTensorDataset(pixels, name="cifar10")
    dataset.labels = torch.tensor([y for _, labels in batches for y in labels], dtype=torch.long)
    return dataset
