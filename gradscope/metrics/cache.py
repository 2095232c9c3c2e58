"""Where the metrics keep what is expensive to recompute: the digits classifier and reference statistics.

Everything is written atomically (temporary file + rename, so an interrupted
write never leaves a half file that a later run would trust) and read back
with ``torch.load(weights_only=True)``: a cache file can hold tensors,
numbers and strings, never code.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from gradscope.data.locations import user_cache_root

__all__ = ["default_cache_dir", "load_cached", "save_atomic"]

CACHE_ENV = "GRADSCOPE_CACHE"


def default_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The cache directory: ``cache_dir`` if given, else ``$GRADSCOPE_CACHE``, else :func:`~gradscope.data.locations.user_cache_root`.

    That is ``~/.cache/gradscope`` by default, ``$XDG_CACHE_HOME/gradscope``
    when ``$XDG_CACHE_HOME`` is set. The directory is not created here.

    Examples
    --------
    >>> str(default_cache_dir("/tmp/somewhere"))
    '/tmp/somewhere'
    """
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return user_cache_root()


def save_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` to ``path`` through a temporary file in the same directory and an atomic rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save(obj, stream)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def load_cached(path: Path) -> Any | None:
    """Load a cache file with ``weights_only=True``; ``None`` when it is missing or unreadable.

    An unreadable file (truncated, from an incompatible version) is treated
    as absent so that the caller recomputes and overwrites it.
    """
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - any failure to read a cache entry means "recompute"
        return None
