"""Image datasets decoded lazily from files: CelebA, ImageNet and any folder of images.

Every item is decoded with PIL when it is asked for, converted to RGB, center
cropped (CelebA: the central 128x128 of the aligned 178x218 faces, the usual
GAN preprocessing; ImageNet and folders: the largest central square, which is
what "resize the shorter side, then center crop" selects), resized to
``image_size`` with the rule of :mod:`gradscope.data.imaging`, and scaled to
[-1, 1]. Use a ``DataLoader`` with workers to overlap decoding with training.

Files are read either from a directory tree or straight from a zip archive
(CelebA's ``img_align_celeba.zip``) without extracting it; each worker process
opens the zip on its own, since a shared file offset would mix up reads. A zip member
larger than :data:`MAX_IMAGE_FILE_BYTES` is refused from the archive's directory,
before it is read.

Every error about a file is a one-line :class:`~gradscope.data.errors.DataFileError`
(a ``ValueError``) naming it, on the first line even when raised in a ``DataLoader``
worker.
"""
from __future__ import annotations

import os
import zipfile
import zlib
from pathlib import Path

import torch
from torch import Tensor

from gradscope._checks import check_int_at_least
from gradscope.data.base import GANDataset
from gradscope.data.errors import DataFileError
from gradscope.data.imaging import (
    center_crop,
    decode_image_file,
    pixels_to_unit,
    resize_images,
)
from gradscope.data.locations import first_existing, missing, resolve_data_dir

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})

CELEBA_HELP = ("download img_align_celeba.zip ('Align&Cropped Images') from "
               "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html and put it, or its extracted folder, "
               "into --data-dir")
IMAGENET_HELP = ("ImageNet needs a registered account: get the ILSVRC2012 training images from "
                 "https://image-net.org and put the class folders (<wnid>/*.JPEG) under "
                 "<data-dir>/imagenet/train/")
FOLDER_HELP = "point --data-dir at a directory that contains images"

#: Largest image file read from a zip archive into memory, in bytes. CelebA's aligned faces
#: are about 10 KB and ImageNet's largest JPEGs a few MB; the read happens in every worker.
MAX_IMAGE_FILE_BYTES = 64 << 20


def _is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES and not os.path.basename(name).startswith(".")


def list_image_files(root: str | os.PathLike[str], *, min_depth: int = 1) -> list[str]:
    """Sorted POSIX paths, relative to ``root``, of all image files below it (hidden ones skipped).

    ``min_depth=2`` keeps only files inside a sub-directory (ImageNet's class folders).
    """
    root = Path(root)
    found = []
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = [d for d in subfolders if not d.startswith(".")]
        relative = Path(folder).relative_to(root)
        if len(relative.parts) + 1 < min_depth:
            continue
        found.extend((relative / name).as_posix() for name in names if _is_image(name))
    return sorted(found)


def list_zip_images(archive: str | os.PathLike[str]) -> list[str]:
    """Sorted names of the image members of a zip archive."""
    try:
        with zipfile.ZipFile(archive) as handle:
            return sorted(info.filename for info in handle.infolist() if not info.is_dir() and _is_image(info.filename))
    except (zipfile.BadZipFile, OSError) as exc:
        raise ValueError(f"cannot read zip archive {archive}: {exc}; download it again") from None


class ImageFileDataset(GANDataset):
    """Images decoded on access from a directory or a zip archive.

    Parameters
    ----------
    name : str
        Dataset name reported in ``name``.
    location : path
        A directory, or a ``.zip`` file.
    members : list of str
        Paths relative to ``location`` (or zip member names), in dataset order.
    image_size : int
        Output side.
    crop : int, optional
        Side of the central square cut before resizing; ``None`` = the largest one.

    Attributes
    ----------
    channels : int
        Always 3 (images are converted to RGB).
    image_size : int
        Output side.
    """

    kind = "image"
    channels = 3

    def __init__(self, *, name: str, location: str | os.PathLike[str], members: list[str], image_size: int,
                 crop: int | None = None) -> None:
        if not members:
            raise ValueError(f"{name}: no image files found in {location}; check --data-dir")
        self.name = name
        self.location = Path(location)
        self.members = list(members)
        self.image_size = check_int_at_least("image_size", image_size, 4)
        self.crop = crop
        self._zip: zipfile.ZipFile | None = None
        self._zip_pid = -1

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_zip"], state["_zip_pid"] = None, -1  # each worker opens its own handle
        return state

    def _read(self, member: str) -> bytes | Path:
        if self.location.is_dir():
            return self.location / member
        cap = MAX_IMAGE_FILE_BYTES
        try:
            if self._zip is None or self._zip_pid != os.getpid():
                self._zip, self._zip_pid = zipfile.ZipFile(self.location), os.getpid()
            info = self._zip.getinfo(member)
            if info.file_size > cap:
                raise DataFileError(f"refusing to read {member} from {self.location}: it is {info.file_size:,} "
                                    f"bytes, over the cap of {cap:,} bytes for one image file; remove it")
            with self._zip.open(info) as handle:
                payload = handle.read(cap + 1)  # bounded even if the directory understates the size
        except (KeyError, zipfile.BadZipFile, OSError, EOFError, zlib.error) as exc:
            raise DataFileError(f"cannot read {member} from {self.location}: {exc}; download it again") from None
        if len(payload) > cap:
            raise DataFileError(f"refusing to read {member} from {self.location}: it is over the cap of {cap:,} "
                                "bytes for one image file; remove it")
        return payload

    def __len__(self) -> int:
        return len(self.members)

    def __getitem__(self, index: int) -> Tensor:
        member = self.members[index]
        label = f"{self.location / member}"
        pixels = decode_image_file(self._read(member), label=label)
        try:
            square = center_crop(pixels, self.crop)
        except ValueError as exc:
            raise DataFileError(f"{label}: {exc}") from None
        return pixels_to_unit(resize_images(square.to(torch.float32), self.image_size))

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return (self.channels, self.image_size, self.image_size)


def _from_location(name: str, location: Path, *, image_size: int, crop: int | None,
                   min_depth: int = 1) -> ImageFileDataset:
    if location.is_dir():
        members = list_image_files(location, min_depth=min_depth)
    else:
        members = list_zip_images(location)
    dataset = ImageFileDataset(name=name, location=location, members=members, image_size=image_size, crop=crop)
    dataset[0]  # fail now, with the file's name, rather than inside a DataLoader worker
    return dataset


def load_celeba(data_dir: str | os.PathLike[str] | None = None, *, image_size: int | None = None) -> ImageFileDataset:
    """CelebA aligned faces: center crop 128x128, resized to ``image_size`` (default 64).

    Looks for ``img_align_celeba/`` or ``img_align_celeba.zip`` in ``data_dir``
    or in ``data_dir/celeba``, in that order.
    """
    root = resolve_data_dir(data_dir)
    candidates = [base / entry for base in (root, root / "celeba")
                  for entry in ("img_align_celeba", "img_align_celeba.zip")]
    location = first_existing(candidates)
    if location is None:
        raise missing("celeba", candidates[:2], CELEBA_HELP)
    return _from_location("celeba", location, image_size=64 if image_size is None else image_size, crop=128)


def load_imagenet(data_dir: str | os.PathLike[str] | None = None, *,
                  image_size: int | None = None) -> ImageFileDataset:
    """ImageNet training images from class folders, central square resized to ``image_size`` (default 128).

    Looks for ``imagenet/train/<wnid>/*`` or ``train/<wnid>/*`` in ``data_dir``.
    """
    root = resolve_data_dir(data_dir)
    candidates = [root / "imagenet" / "train", root / "train"]
    location = first_existing(candidates)
    if location is None or not location.is_dir():
        raise missing("imagenet", candidates, IMAGENET_HELP)
    return _from_location("imagenet", location, image_size=128 if image_size is None else image_size,
                          crop=None, min_depth=2)


def load_folder(data_dir: str | os.PathLike[str] | None, *, image_size: int | None) -> ImageFileDataset:
    """Every image below ``data_dir`` (recursively), central square resized to ``image_size`` (required)."""
    if data_dir is None:
        raise ValueError(f"the folder dataset needs --data-dir; {FOLDER_HELP}")
    if image_size is None:
        raise ValueError("the folder dataset needs an image size (e.g. --image-size 64)")
    location = Path(data_dir).expanduser()
    if not location.is_dir():
        raise missing("folder", [location], FOLDER_HELP)
    return _from_location("folder", location, image_size=image_size, crop=None)
