"""Pixel geometry shared by every image dataset: center crops, resizing, decoding files.

Resizing rule (one rule everywhere, so a dataset's preprocessing is predictable):
shrinking uses ``area`` interpolation, i.e. the mean over each output pixel's
window of input pixels (an exact 2x2 block mean for a factor of 2, adaptive
average pooling otherwise), which cannot alias; enlarging uses ``bicubic``
interpolation followed by a clamp to the input's value range, because bicubic
overshoots near edges.

Decoding is bounded: an image larger than :data:`MAX_IMAGE_PIXELS` is refused from
its header, before any pixel is decoded (a 27 KB PNG can declare 15000 x 15000
pixels, 675 MB as RGB).
"""
from __future__ import annotations

import io
import re
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from gradscope.data.errors import DataFileError

#: Largest image decoded, in pixels: 64 megapixels (8192 x 8192, 192 MiB as RGB). The
#: datasets' images are far smaller (CelebA 178 x 218, ImageNet a few megapixels), and a
#: camera's 50-megapixel photo still passes; each DataLoader worker may decode one at a time.
MAX_IMAGE_PIXELS = 1 << 26


def resize_images(images: Tensor, size: int, *, low: float = 0.0, high: float = 255.0) -> Tensor:
    """Resize float images ``(..., C, H, W)`` to ``(..., C, size, size)``.

    Parameters
    ----------
    images : Tensor
        Float images of shape ``(C, H, W)`` or ``(N, C, H, W)``.
    size : int
        Output side.
    low, high : float
        Value range that enlarged images are clamped to.

    Returns
    -------
    Tensor
        Resized images, same leading shape and dtype.

    Examples
    --------
    >>> x = torch.arange(16.0).reshape(1, 4, 4)
    >>> resize_images(x, 2)
    tensor([[[ 2.5000,  4.5000],
             [10.5000, 12.5000]]])
    """
    if not images.is_floating_point():
        raise ValueError(f"resize_images needs floating-point images, got {images.dtype}")
    height, width = images.shape[-2:]
    if (height, width) == (size, size):
        return images
    batched = images if images.ndim == 4 else images.unsqueeze(0)
    if size <= height and size <= width:
        out = F.interpolate(batched, size=(size, size), mode="area")
    else:
        out = F.interpolate(batched, size=(size, size), mode="bicubic", align_corners=False)
        out = out.clamp_(low, high)
    return out if images.ndim == 4 else out.squeeze(0)


def center_crop(images: Tensor, side: int | None = None) -> Tensor:
    """Crop the central ``side x side`` square of ``(..., H, W)``; ``None`` = the largest square.

    The offset is ``(H - side) // 2`` (rounded down) vertically and likewise horizontally.

    Examples
    --------
    >>> center_crop(torch.arange(12).reshape(3, 4)).tolist()
    [[0, 1, 2], [4, 5, 6], [8, 9, 10]]
    """
    height, width = images.shape[-2:]
    side = min(height, width) if side is None else side
    if side > height or side > width:
        raise ValueError(f"cannot center-crop {side}x{side} from an image of {width}x{height}")
    top, left = (height - side) // 2, (width - side) // 2
    return images[..., top:top + side, left:left + side]


def pixels_to_unit(pixels: Tensor) -> Tensor:
    """Map pixel values in [0, 255] (any dtype) to float32 in [-1, 1] as ``x / 127.5 - 1``."""
    return pixels.to(torch.float32) / 127.5 - 1.0


def quantize(images: Tensor) -> Tensor:
    """Round float pixel values in [0, 255] to ``uint8`` (for compact in-memory storage)."""
    return images.round().clamp_(0, 255).to(torch.uint8)


def _too_large(label: str, size: str) -> DataFileError:
    return DataFileError(f"refusing to decode image {label}: {size} pixels, over the cap of {MAX_IMAGE_PIXELS:,} "
                         "pixels; shrink or remove the file")


def decode_image_file(source: str | Path | bytes, *, label: str) -> Tensor:
    """Decode an image file (path or bytes) into an RGB ``uint8`` tensor ``(3, H, W)``.

    Any format PIL reads is accepted; grayscale, palette and alpha images are
    converted to RGB. A file PIL cannot decode, or one over :data:`MAX_IMAGE_PIXELS`,
    raises a one-line :class:`~gradscope.data.errors.DataFileError` (a ``ValueError``)
    naming ``label`` (the path or archive member shown to the user).
    """
    from PIL import Image, UnidentifiedImageError

    handle = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with warnings.catch_warnings():
            # PIL warns from 89 megapixels and refuses from 179; the cap below decides instead.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(handle) as image:  # reads the header only
                width, height = image.size
                if width * height > MAX_IMAGE_PIXELS:
                    raise _too_large(label, f"{width}x{height} = {width * height:,}")
                rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    except DataFileError:
        raise
    except Image.DecompressionBombError as exc:  # over PIL's own limit: refused before the size was seen
        counted = re.search(r"\((\d+) pixels\)", str(exc))
        raise _too_large(label, f"{int(counted.group(1)):,}" if counted else "more than PIL's limit of") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataFileError(f"cannot decode image {label}: {reason}; replace or remove the file") from None
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1)


def resize_pixel_stack(images, size: int, *, chunk_size: int = 1024) -> Tensor:
    """Resize a stack of ``uint8`` images ``(N, C, H, W)`` to ``uint8`` ``(N, C, size, size)``.

    ``images`` may be a tensor or any numpy array-like that slices lazily (e.g. a
    view of an ``np.memmap``): only ``chunk_size`` images are held as floats at a
    time, so a stack larger than memory can be shrunk.
    """
    count, channels = int(images.shape[0]), int(images.shape[1])
    out = torch.empty((count, channels, size, size), dtype=torch.uint8)
    for start in range(0, count, chunk_size):
        block = images[start:start + chunk_size]
        block = block if isinstance(block, Tensor) else torch.from_numpy(np.ascontiguousarray(block))
        out[start:start + len(block)] = quantize(resize_images(block.to(torch.float32), size))
    return out
