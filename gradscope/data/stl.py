"""STL-10's unlabeled split (100 000 images, 96x96), shrunk to 48x48 as in the SN-GAN literature.

``stl10_binary/unlabeled_X.bin`` is raw ``uint8`` with no header: image after
image, each 3 x 96 x 96 bytes, channel planes in the order R, G, B and each
plane stored column-major (Fortran order, as written by MATLAB), i.e. byte
``c * 9216 + x * 96 + y`` is channel ``c`` at row ``y``, column ``x``.

The file is 2.8 GB, so it is memory-mapped and resized a chunk at a time; the
resized ``uint8`` stack (0.7 GB at 48x48) is cached next to it as
``unlabeled_X.<size>px.npy`` (with a ``.json`` stamp of the source's size and
modification time) and reused while the source is unchanged.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from gradscope._checks import check_int_at_least
from gradscope.data.base import ImageTensorDataset
from gradscope.data.download import ensure_files
from gradscope.data.imaging import resize_pixel_stack
from gradscope.data.locations import resolve_data_dir

FOLDER = "stl10_binary"
UNLABELED = "unlabeled_X.bin"
NATIVE_SIZE = 96
DEFAULT_SIZE = 48
IMAGE_BYTES = 3 * NATIVE_SIZE * NATIVE_SIZE


def unlabeled_images(path: str | os.PathLike[str]) -> np.ndarray:
    """Memory-mapped view ``(N, 3, 96, 96)`` (channel, row, column) of an STL-10 ``*_X.bin`` file.

    Raises a one-line ``ValueError`` if the size is not a whole number of images.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path} is not a file; delete it and extract or download the archive again")
    size = path.stat().st_size
    if size == 0 or size % IMAGE_BYTES:
        raise ValueError(f"{path} holds {size} bytes, not a whole number of 96x96x3 images: it is "
                         "truncated or corrupt; delete it and pass --download")
    raw = np.memmap(path, dtype=np.uint8, mode="r", shape=(size // IMAGE_BYTES, 3, NATIVE_SIZE, NATIVE_SIZE))
    return raw.transpose(0, 1, 3, 2)  # stored (channel, column, row)


def _fingerprint(source: Path) -> str:
    # Size and modification time identify the source; extraction keeps the archive's mtimes, so a
    # comparison of cache and source mtimes would not notice a replaced source.
    status = source.stat()
    return json.dumps({"source_bytes": status.st_size, "source_mtime_ns": status.st_mtime_ns})


def _read_cache(cache: Path, source: Path, expected_shape: tuple[int, ...]) -> np.ndarray | None:
    stamp = cache.with_suffix(".json")
    try:
        if stamp.read_text() != _fingerprint(source):
            return None
        cached = np.load(cache, allow_pickle=False)
    except (ValueError, OSError, EOFError):
        return None
    if cached.dtype != np.uint8 or cached.shape != expected_shape:
        return None
    return cached


def _write_cache(cache: Path, pixels: np.ndarray, source: Path) -> None:
    temporary = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as handle:
            np.save(handle, pixels, allow_pickle=False)
        os.replace(temporary, cache)
        cache.with_suffix(".json").write_text(_fingerprint(source))
    except OSError as exc:  # a read-only dataset directory: fine, just slower next time
        temporary.unlink(missing_ok=True)
        warnings.warn(f"could not cache resized STL-10 at {cache}: {exc}", RuntimeWarning, stacklevel=3)


def load_stl10(data_dir: str | os.PathLike[str] | None = None, *, image_size: int | None = None,
               download: bool = False) -> ImageTensorDataset:
    """STL-10 unlabeled images as an in-memory dataset of ``uint8`` pixels resized to ``image_size``.

    Parameters
    ----------
    data_dir : path, optional
        Directory holding ``stl10_binary/unlabeled_X.bin`` or ``stl10_binary.tar.gz``
        (extracted on first use); default :func:`gradscope.data.default_data_dir`.
    image_size : int, optional
        Output side, default 48 (96 -> 48 is an exact 2x2 block mean).
    download : bool
        Fetch the archive from the official URL if the file is missing.

    Returns
    -------
    ImageTensorDataset
        ``name="stl10"``, ``channels=3``.
    """
    size = DEFAULT_SIZE if image_size is None else check_int_at_least("image_size", image_size, 4)
    root = resolve_data_dir(data_dir)
    source = root / FOLDER / UNLABELED
    ensure_files("stl10", root, [source], download=download)
    images = unlabeled_images(source)
    if size == NATIVE_SIZE:  # nothing to compute, so nothing worth caching
        return ImageTensorDataset(torch.from_numpy(np.ascontiguousarray(images)), name="stl10")
    cache = source.with_name(f"unlabeled_X.{size}px.npy")
    pixels = _read_cache(cache, source, (images.shape[0], 3, size, size))
    if pixels is None:
        pixels = resize_pixel_stack(images, size).numpy()
        _write_cache(cache, pixels, source)
    return ImageTensorDataset(torch.from_numpy(pixels), name="stl10")
