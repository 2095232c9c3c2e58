"""The 8x8 handwritten digits that ship with scikit-learn: real images, available offline.

1797 grayscale images (UCI "Optical Recognition of Handwritten Digits", test
part) with integer intensities 0..16. They are scaled to [0, 1], enlarged with
bicubic interpolation (then clamped, since bicubic overshoots), and mapped to
[-1, 1]. Small enough (7 MB at 32x32) to live in memory as float32.
"""
from __future__ import annotations

import torch

from gradscope._checks import check_int_at_least
from gradscope.data.base import ImageTensorDataset
from gradscope.data.imaging import resize_images

DEFAULT_SIZE = 32
NATIVE_SIZE = 8
MAX_INTENSITY = 16.0


def load_digits(*, image_size: int | None = None) -> ImageTensorDataset:
    """scikit-learn's digits as a 1-channel in-memory image dataset in [-1, 1].

    Parameters
    ----------
    image_size : int, optional
        Output side (default 32; 16 for a faster run). At least 8.

    Returns
    -------
    ImageTensorDataset
        ``name="digits"``, ``channels=1``, float32 ``data`` of shape
        ``(1797, 1, image_size, image_size)`` and a ``labels`` attribute.

    Examples
    --------
    >>> ds = load_digits(image_size=16)
    >>> len(ds), ds.sample_shape
    (1797, (1, 16, 16))
    """
    from sklearn.datasets import load_digits as sklearn_digits

    size = DEFAULT_SIZE if image_size is None else check_int_at_least("image_size", image_size, NATIVE_SIZE)
    bunch = sklearn_digits()
    unit = torch.from_numpy(bunch.images).to(torch.float32).unsqueeze(1) / MAX_INTENSITY
    images = resize_images(unit, size, low=0.0, high=1.0) * 2.0 - 1.0
    dataset = ImageTensorDataset(images.contiguous(), name="digits")
    dataset.labels = torch.from_numpy(bunch.target).to(torch.long)
    return dataset
