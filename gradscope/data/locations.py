"""Where datasets live on disk, and the one-line message when they are not there."""
from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

DATA_ENV = "GRADSCOPE_DATA"


def user_cache_root() -> Path:
    """The ``gradscope`` folder in the user's cache directory; datasets and metric caches live below it.

    ``$XDG_CACHE_HOME`` (default ``~/.cache``) on Linux and macOS,
    ``%LOCALAPPDATA%`` on Windows. The directory is not created here.

    Examples
    --------
    >>> user_cache_root().name
    'gradscope'
    """
    if os.name == "nt" and os.environ.get("LOCALAPPDATA"):
        cache = Path(os.environ["LOCALAPPDATA"])
    else:
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser()
    return cache / "gradscope"


def default_data_dir() -> Path:
    """The directory datasets are read from when ``--data-dir`` is not given.

    ``$GRADSCOPE_DATA`` if set, else ``data`` inside :func:`user_cache_root`.

    Examples
    --------
    >>> default_data_dir().name
    'data'
    """
    explicit = os.environ.get(DATA_ENV)
    if explicit:
        return Path(explicit).expanduser()
    return user_cache_root() / "data"


def resolve_data_dir(data_dir: str | os.PathLike[str] | None) -> Path:
    """``data_dir`` as a ``Path`` (``~`` expanded), or :func:`default_data_dir` when ``None``."""
    return default_data_dir() if data_dir is None else Path(data_dir).expanduser()


def first_existing(candidates: Iterable[Path]) -> Path | None:
    """The first of ``candidates`` that exists, or ``None``."""
    for path in candidates:
        if path.exists():
            return path
    return None


def missing(dataset: str, expected: Iterable[Path], advice: str) -> FileNotFoundError:
    """A one-line ``FileNotFoundError`` naming what was looked for and what to do."""
    listed = " or ".join(str(p) for p in expected)
    return FileNotFoundError(f"{dataset}: expected {listed}; {advice}")
