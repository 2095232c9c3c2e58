"""What every gradscope dataset is: a torch ``Dataset`` of float samples plus a little metadata.

Two kinds exist. ``"image"`` datasets yield float32 tensors of shape
``(channels, image_size, image_size)`` with values in [-1, 1] (the range of the
generator's ``tanh`` output); ``"points"`` datasets yield float32 tensors of shape
``(2,)`` and carry the mixture they were drawn from (``centers``, ``std``), which
the mode-coverage metrics need.

Small datasets keep everything in one tensor (:class:`InMemoryDataset`): the
trainer can then gather a batch with one indexing operation, or move ``data``
to the accelerator once and call :meth:`InMemoryDataset.decode` there. Large ones
decode lazily per item and are meant for a ``DataLoader`` with workers.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset

IndexLike = Sequence[int] | Tensor


class GANDataset(Dataset[Tensor]):
    """Base class: a map-style dataset of float32 samples, no labels.

    Attributes
    ----------
    name : str
        The name it was loaded under (``"digits"``, ``"cifar10"``, ...).
    kind : str
        ``"image"`` or ``"points"``.
    in_memory : bool
        Whether all samples live in one tensor (:class:`InMemoryDataset`).
    """

    name: str = ""
    kind: str = ""
    in_memory: bool = False

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def __getitem__(self, index: int) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """Shape of one sample: ``(C, H, W)`` for images, ``(2,)`` for points."""
        return tuple(self[0].shape)

    def get_batch(self, indices: IndexLike) -> Tensor:
        """Samples ``indices`` stacked into one float32 tensor ``(len(indices), *sample_shape)``."""
        return torch.stack([self[int(i)] for i in indices])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, kind={self.kind!r}, n={len(self)})"


class InMemoryDataset(GANDataset):
    """All samples in one tensor ``data`` of shape ``(N, *sample_shape)``.

    ``data`` is either ``uint8`` pixels in [0, 255] (mapped to [-1, 1] by
    :meth:`decode` as ``x / 127.5 - 1``, so 0 -> -1 and 255 -> 1) or float32
    samples already in their final scale, which :meth:`decode` returns as they are.
    Storing pixels as ``uint8`` keeps e.g. STL-10 at 0.7 GB instead of 2.8 GB.

    Examples
    --------
    >>> ds = InMemoryDataset(torch.tensor([[[[0, 255]]]], dtype=torch.uint8), name="tiny", kind="image")
    >>> ds[0]
    tensor([[[-1.,  1.]]])
    """

    in_memory = True

    def __init__(self, data: Tensor, *, name: str, kind: str) -> None:
        if data.dtype not in (torch.uint8, torch.float32):
            raise ValueError(f"dataset storage must be uint8 or float32, got {data.dtype}")
        if data.shape[0] == 0:
            raise ValueError(f"dataset {name!r} is empty")
        self.data = data
        self.name = name
        self.kind = kind

    def decode(self, raw: Tensor) -> Tensor:
        """Map stored samples (any leading shape, any device) to float32 in their final scale."""
        if raw.dtype == torch.uint8:
            return raw.to(torch.float32) / 127.5 - 1.0
        return raw.to(torch.float32)

    def __len__(self) -> int:
        return int(self.data.shape[0])

    def __getitem__(self, index: int) -> Tensor:
        return self.decode(self.data[index])

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape[1:])

    def get_batch(self, indices: IndexLike) -> Tensor:
        index = torch.as_tensor(indices, dtype=torch.long)
        return self.decode(self.data[index])


class ImageTensorDataset(InMemoryDataset):
    """An in-memory image dataset: ``data`` is ``(N, C, S, S)``.

    Attributes
    ----------
    channels : int
        Number of colour channels ``C`` (1 for digits, 3 otherwise).
    image_size : int
        Side ``S`` of the square images.
    """

    def __init__(self, data: Tensor, *, name: str) -> None:
        if data.ndim != 4 or data.shape[2] != data.shape[3]:
            raise ValueError(f"image storage must be (N, C, S, S), got shape {tuple(data.shape)}")
        super().__init__(data, name=name, kind="image")
        self.channels = int(data.shape[1])
        self.image_size = int(data.shape[2])


class PointDataset(InMemoryDataset):
    """Points drawn from an isotropic Gaussian mixture with equal weights.

    Attributes
    ----------
    centers : Tensor
        ``(K, 2)`` float32 mode centres.
    std : float
        Standard deviation of every component (per coordinate).
    """

    def __init__(self, data: Tensor, *, name: str, centers: Tensor, std: float) -> None:
        if data.ndim != 2 or data.dtype != torch.float32:
            raise ValueError(f"point storage must be float32 (N, D), got {data.dtype} {tuple(data.shape)}")
        super().__init__(data, name=name, kind="points")
        self.centers = centers
        self.std = float(std)
        self.dim = int(data.shape[1])
