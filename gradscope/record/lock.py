"""One writer per directory: an exclusive lock on ``DIR/.lock`` held for the life of a run or a sweep driver.

The lock is ``fcntl.flock`` on an open file, so the kernel drops it when its
process exits, however it exits (SIGKILL included): a lock file left by a dead
process is *stale by construction* and the next writer simply takes it, with
no pid guessing. The file holds the holder's pid, host and start time, only so
that a refused writer can say who holds it.

Within one process the lock is shared: a second :class:`DirectoryLock` on the
same directory (the trainer's and its :class:`~gradscope.record.RunWriter`'s,
or two writers a test opens) counts up instead of blocking, and the directory
is released when the last holder releases it. The guard is against *other*
processes, which is where the races of two ``gradscope run --out D`` or two
sweep drivers come from.

On release the lock file is removed, so a finished run directory holds no
trace of it; a writer that locked a file just unlinked by the previous holder
notices (the inode changed) and locks the new file instead.

Platforms without ``fcntl`` (Windows) get no lock: the project runs on Linux
and macOS, and a half-working ``msvcrt`` byte lock would promise more than it
keeps. File systems without ``flock`` support (``ENOLCK``) likewise run
unlocked rather than refuse to run.
"""
from __future__ import annotations

import atexit
import errno
import json
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no lock (see the module docstring)
    fcntl = None  # type: ignore[assignment]

#: Name of the lock file inside a locked directory (readers of a run ignore it).
LOCK_FILE = ".lock"
#: How long a refused writer waits for a holder that has locked but not yet written who it is.
_INFO_WAIT_S = 1.0
#: flock failures that mean "this file system cannot lock", not "someone holds it".
_UNSUPPORTED = {errno.ENOLCK, getattr(errno, "ENOTSUP", -1), getattr(errno, "EOPNOTSUPP", -1)}


class DirectoryBusy(ValueError):
    """Another process holds the directory's lock (a usage error: ``gradscope`` exits with 2).

    Attributes
    ----------
    path : Path
        The locked directory.
    holder : dict
        What the holder wrote into the lock file (``pid``, ``host``, ``since``); empty if unknown.
    """

    def __init__(self, message: str, path: Path, holder: dict[str, Any]) -> None:
        super().__init__(message)
        self.path, self.holder = path, holder


@dataclass
class _Held:
    fd: int | None  # None: held without an OS lock (no fcntl / no flock support)
    count: int
    created: bool
    file: Path


_HELD: dict[str, _Held] = {}
_GUARD = threading.Lock()


def _key(path: Path) -> str:
    return os.path.realpath(path)


def _read_holder(file: Path) -> dict[str, Any]:
    """The holder's JSON record, waiting briefly for one that has locked but not yet written it."""
    deadline = time.monotonic() + _INFO_WAIT_S
    while True:
        try:
            info = json.loads(file.read_text(encoding="utf-8") or "null")
        except (OSError, ValueError):
            info = None
        if isinstance(info, dict) or time.monotonic() > deadline:
            return info if isinstance(info, dict) else {}
        time.sleep(0.05)


def _describe(holder: dict[str, Any]) -> str:
    if not holder.get("pid"):
        return "pid unknown"
    text = f"pid {holder['pid']}"
    if holder.get("host"):
        text += f" on {holder['host']}"
    if holder.get("since"):
        text += f", since {holder['since']}"
    return text


def _flock(file: Path) -> int | None:
    """An fd of ``file`` locked exclusively, or ``None`` if another process holds it (raises ``OSError``)."""
    while True:
        # Read-only: a file held open for writing for a whole run would block a `mount -o remount,ro`.
        # (Python fds are close-on-exec: the runs a sweep driver starts do not inherit its lock.)
        fd = os.open(file, os.O_RDONLY | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        # The previous holder unlinks the file on release: if that happened between our open and our
        # flock, we hold a lock on a name nobody else will open. Lock whatever the name points to now.
        try:
            mine, named = os.fstat(fd), os.stat(file)
            if (mine.st_dev, mine.st_ino) == (named.st_dev, named.st_ino):
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


class DirectoryLock:
    """The exclusive lock of one directory (created if missing), shared within this process.

    Parameters
    ----------
    path : str or Path
        The directory to lock.
    what : str
        How messages name it (``"run directory"``, ``"sweep directory"``).
    hint : str
        What a refused writer should do, appended to the message.

    Raises
    ------
    DirectoryBusy
        From :meth:`acquire` when another process holds the lock.
    OSError
        From :meth:`acquire` when the directory or its lock file cannot be created.

    Examples
    --------
    >>> import tempfile
    >>> with DirectoryLock(tempfile.mkdtemp()) as lock:
    ...     lock.held
    True
    """

    def __init__(self, path: str | os.PathLike[str], what: str = "run directory",
                 hint: str = "wait for it to finish or choose another directory") -> None:
        self.path = Path(path)
        self.what, self.hint = what, hint
        self._key: str | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds (its share of) the lock."""
        return self._key is not None

    def acquire(self) -> DirectoryLock:
        """Take the lock (returns ``self``); a no-op if this object holds it already."""
        if self._key is not None:
            return self
        created = not self.path.exists()
        self.path.mkdir(parents=True, exist_ok=True)
        key, file = _key(self.path), self.path / LOCK_FILE
        with _GUARD:
            held = _HELD.get(key)
            if held is not None:
                held.count += 1
                self._key = key
                return self
            fd = None
            if fcntl is not None:
                try:
                    fd = _flock(file)
                except OSError as exc:
                    if exc.errno not in _UNSUPPORTED:
                        raise
                    fd = -1  # this file system cannot lock: run unlocked (see the module docstring)
                if fd is None:
                    holder = _read_holder(file)
                    raise DirectoryBusy(f"{self.what} {self.path} is in use by another gradscope process "
                                        f"({_describe(holder)}); {self.hint}", self.path, holder)
                if fd >= 0:
                    info = {"pid": os.getpid(), "host": socket.gethostname(),
                            "since": time.strftime("%Y-%m-%d %H:%M:%S"), "argv": sys.argv[:8]}
                    try:
                        file.write_text(json.dumps(info) + "\n", encoding="utf-8")
                    except OSError:  # a full disk: the lock holds without the note of who holds it
                        pass
            _HELD[key] = _Held(fd if fd is not None and fd >= 0 else None, 1, created, file)
            self._key = key
        return self

    def release(self) -> None:
        """Give up this object's share; the last share removes the lock file and unlocks (idempotent)."""
        key, self._key = self._key, None
        if key is None:
            return
        with _GUARD:
            held = _HELD.get(key)
            if held is None:
                return
            held.count -= 1
            if held.count > 0:
                return
            del _HELD[key]
            _unlock(held, self.path)

    def __enter__(self) -> DirectoryLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _remove_if_empty(path: Path) -> None:
    try:
        path.rmdir()  # only an empty directory: one this lock created and nothing wrote into
    except OSError:
        pass


def _unlock(held: _Held, path: Path) -> None:
    if held.fd is not None:
        try:
            mine, named = os.fstat(held.fd), os.stat(held.file)
            if (mine.st_dev, mine.st_ino) == (named.st_dev, named.st_ino):
                held.file.unlink()  # while still locked, so nobody can be holding this inode after us
        except OSError:
            pass
        os.close(held.fd)
    if held.created:
        _remove_if_empty(path)


def _release_all() -> None:
    """At exit: remove this process's lock files (the kernel drops the locks themselves in any case)."""
    with _GUARD:
        for key, held in list(_HELD.items()):
            del _HELD[key]
            _unlock(held, Path(key))


def _forget_in_child() -> None:
    """A forked child shares the parent's locks but must not release them: forget them, close its copies."""
    for held in _HELD.values():
        if held.fd is not None:
            try:
                os.close(held.fd)  # the parent's descriptor keeps the lock; only all closed would drop it
            except OSError:
                pass
    _HELD.clear()
    global _GUARD
    _GUARD = threading.Lock()  # another thread may have held it at the fork


atexit.register(_release_all)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)
