"""A run directory that cannot be written any more (disk full, quota, read-only): one line, a known end state.

A training process that hits a full disk mid-run must not leave a traceback
and a ``status.json`` that still says ``running``. :func:`storage_fault`
recognizes such an error anywhere in an exception's chain (``torch.save``,
for one, reports ``ENOSPC`` as a ``RuntimeError`` raised while handling the
``OSError``), and :func:`record_failure` frees what the failed writes took
(their temporary files) and then marks the run ``failed`` with the reason,
falling back to rewriting ``status.json`` in place when even the atomic
write has no room. :class:`StorageError` carries the one-line message and
the exit code, :data:`EXIT_STORAGE`.
"""
from __future__ import annotations

import errno
import json
import os
import re
import time
from pathlib import Path
from typing import Any

#: Exit code of ``gradscope run`` when the run directory could not be written (see :mod:`gradscope.train.api`).
EXIT_STORAGE = 4
#: errno values that mean "the storage refuses writes", with how the message says it.
FAULTS: dict[int, str] = {getattr(errno, name): text for name, text in (
    ("ENOSPC", "no space left on {where}"), ("EDQUOT", "disk quota exceeded on {where}"),
    ("EROFS", "{where} is on a read-only file system"), ("EFBIG", "file too large on {where}"),
) if hasattr(errno, name)}
# Wrapped errors (pyarrow's, torch's) may keep only the text of the OSError they replaced.
_TEXTS = {os.strerror(code): code for code in FAULTS}
_TMP_NAME = re.compile(r"^\.(?P<name>.+)\.\d+\.tmp$")


class StorageError(OSError):
    """The run directory could not be written; ``str()`` is one line, ``exit_code`` is :data:`EXIT_STORAGE`."""

    exit_code = EXIT_STORAGE

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code

    def __str__(self) -> str:
        return str(self.args[0])


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and not any(current is s for s in seen):
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def fault_errno(exc: BaseException) -> int | None:
    """The storage errno (one of :data:`FAULTS`) behind ``exc`` or anything in its chain, else ``None``.

    Examples
    --------
    >>> fault_errno(OSError(errno.ENOSPC, "No space left on device")) == errno.ENOSPC
    True
    >>> fault_errno(ValueError("bad")) is None
    True
    """
    for item in _chain(exc):
        if isinstance(item, OSError) and item.errno in FAULTS:
            return item.errno
        for text, code in _TEXTS.items():
            if text in str(item):
                return code
    return None


def _partial_file(run_dir: Path) -> Path | None:
    """The newest temporary file in the run (the write that failed), if the error did not name it.

    Python's file objects raise ``ENOSPC`` without a file name. The run directory is locked and a new writer
    removes older leftovers, so a temporary file there belongs to this process's interrupted write.
    """
    found = [p for folder in (run_dir, run_dir / "layers", run_dir / "scalars") for p in folder.glob(".*.tmp")]
    try:
        return max(found, key=lambda p: p.stat().st_mtime_ns) if found else None
    except OSError:  # removed meanwhile
        return None


def _written_file(exc: BaseException, run_dir: Path) -> str | None:
    """The run-relative name of the file being written, with a temporary name turned back into its target."""
    names = [getattr(item, "filename", None) for item in _chain(exc)]
    name = next((n for n in names if n), None) or _partial_file(run_dir)
    if name is None:
        return None
    path = Path(name)
    match = _TMP_NAME.match(path.name)
    if match:
        path = path.with_name(match["name"])
    try:
        return str(path.resolve().relative_to(run_dir.resolve()))
    except ValueError:
        return str(path)


def storage_fault(exc: BaseException, run_dir: str | os.PathLike[str], step: int) -> StorageError | None:
    """A :class:`StorageError` describing ``exc`` if it is a storage fault of ``run_dir``, else ``None``.

    Examples
    --------
    >>> str(storage_fault(OSError(errno.ENOSPC, "No space left on device", "/r/config.json"), "/r", 7))
    'no space left on /r (writing config.json at step 7)'
    """
    code = fault_errno(exc)
    if code is None:
        return None
    run_dir = Path(run_dir)
    written = _written_file(exc, run_dir)
    detail = f"writing {written} at step {step}" if written else f"at step {step}"
    return StorageError(FAULTS[code].format(where=run_dir) + f" ({detail})", code)


def force_status(path: Path, state: str, step: int | None, **info: Any) -> bool:
    """Rewrite ``status.json`` in place (not atomically): the last resort when the disk has no room for a
    temporary copy. Truncating first frees the file's blocks, which the new, same-sized text reuses.

    Returns whether it was written.
    """
    payload = {"state": state, "step": step, "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **info}
    try:
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
    except OSError:
        return False
    return True


def record_failure(writer, recorder, run_dir: Path, state: str, step: int, reason: str) -> bool:
    """End a run that raised: close the recorder, remove temporary files, mark ``state`` with ``reason``.

    Every part is attempted even if an earlier one fails on the same full disk (what the recorder could not
    flush is lost; the status matters more). Returns whether ``status.json`` now says ``state``.
    """
    from gradscope.train.checkpoint import remove_temporary_files

    if recorder is not None:
        try:
            recorder.close(state)
        except Exception:  # noqa: BLE001 - the disk is likely full again; the status below matters more
            pass
    try:  # the failed writes' partial files hold exactly the space the status needs
        writer.remove_temporaries()
        remove_temporary_files(run_dir)
    except OSError:
        pass
    try:
        writer.set_status(state, step=step, error=reason)
        return True
    except OSError:
        try:
            writer.remove_temporaries()  # the atomic write's own partial copy
        except OSError:
            pass
        return force_status(Path(run_dir) / "status.json", state, step, error=reason)
