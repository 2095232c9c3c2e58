"""The run directory: every file written atomically, so a run killed at any moment stays readable.

Layout::

    RUN/
      config.json        the run's configuration (written by the trainer)
      provenance.json    gradscope / torch / CUDA versions, device, seed, git commit
      status.json        {"state": running|done|diverged|failed|interrupted, "step": ...}
      architecture.json  each net's recorded layers, in input-to-output order
      layers/000001.parquet  chunks of the long table (step, phase, net, layer, layer_index, stat, value)
      scalars/000001.parquet chunks of (step, name, value)
      alerts.jsonl       one JSON object per alert
      .lock              held by the process writing the run (:mod:`gradscope.record.lock`), removed on close

Chunks are Parquet files, one per flush (:mod:`gradscope.record.chunks`; runs
written before Parquet hold ``NNNNNN.csv`` chunks, which still load and which
``gradscope runs convert`` rewrites). Chunk and JSON files are written to a hidden temporary file in the same
folder, flushed, fsynced and then renamed over their final name
(``os.replace`` is atomic on POSIX and Windows), so a reader only ever sees
complete files. ``alerts.jsonl`` is appended line by line; a reader skips a
torn last line.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
import warnings
import weakref
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from gradscope._checks import check_choice
from gradscope.record.chunks import (
    SEGMENT_FLUSHES,
    SORT_KEYS,
    chunk_files,
    chunk_span,
    covered_chunks,
    merge_chunks,
    read_one,
    step_range,
    write_chunk,
)
from gradscope.record.lock import DirectoryLock

STATES: tuple[str, ...] = ("running", "done", "diverged", "failed", "interrupted")
TABLES: tuple[str, ...] = ("layers", "scalars")
RUN_FILES: tuple[str, ...] = ("config.json", "provenance.json", "status.json", "architecture.json", "alerts.jsonl")


def atomic_write_text(path: Path, text: str, fsync: bool = True) -> None:
    """Write ``text`` to ``path`` so that readers see the old file or the whole new one, never a part."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as handle:
        handle.write(text)
        handle.flush()
        if fsync:
            os.fsync(handle.fileno())
    os.replace(tmp, path)


def write_json(path: Path, data: Any, fsync: bool = True) -> None:
    """Atomically write ``data`` as indented, key-sorted JSON."""
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n", fsync)


def read_json(path: Path) -> Any:
    """Parsed JSON of ``path`` or ``None`` if it does not exist."""
    if not path.exists():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def git_commit(where: Path | None = None) -> str | None:
    """The commit checked out at ``where`` (default: gradscope's source), with ``-dirty``, or ``None``."""
    where = where or Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("-dirty" if dirty.returncode == 0 and dirty.stdout.strip() else "")


def provenance(seed: int | None = None, device: str | None = None, extra: Mapping[str, Any] | None = None,
               ) -> dict[str, Any]:
    """What produced a run: versions, device, seed, git commit, command line.

    Examples
    --------
    >>> info = provenance(seed=1)
    >>> info["seed"], "torch" in info, "git_commit" in info
    (1, True, True)
    """
    import torch

    from gradscope import __version__

    info: dict[str, Any] = {
        "gradscope": __version__, "torch": torch.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "python": sys.version.split()[0], "platform": platform.platform(), "device": device,
        "device_name": None, "seed": seed, "git_commit": git_commit(), "argv": list(sys.argv),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if device is not None and str(device).startswith("cuda") and torch.cuda.is_available():
        info["device_name"] = torch.cuda.get_device_name(torch.device(device))
    info.update(dict(extra or {}))
    return info


class RunWriter:
    """Writes one run directory; shared by the recorder and the trainer.

    Parameters
    ----------
    path : str or Path
        The run directory (created if missing).
    resume : bool
        Continue a run already in ``path``: new chunks are numbered after the
        existing ones. Call :meth:`truncate_after` with the checkpoint's step
        to drop what was recorded after it.
    overwrite : bool
        Delete gradscope's files of a run already in ``path`` (nothing else).
    fsync : bool
        fsync every file before renaming it (survives power loss, not just SIGKILL).

    Raises
    ------
    ValueError
        If ``path`` cannot be created or written, or already holds a run and
        neither ``resume`` nor ``overwrite`` is set.
    DirectoryBusy
        (a ``ValueError``) If another process writes ``path``: the writer holds the directory's
        lock from construction to :meth:`close` (or its garbage collection, or process exit);
        writers of one process share it.

    Examples
    --------
    >>> import tempfile
    >>> w = RunWriter(tempfile.mkdtemp())
    >>> w.write_config({"norm": "sn"}); w.set_status("running", step=0)
    >>> w.append_scalars(pd.DataFrame({"step": [0], "name": ["loss_d"], "value": [1.5]})); w.flush()
    >>> w.close()
    """

    def __init__(self, path: str | os.PathLike, *, resume: bool = False, overwrite: bool = False,
                 fsync: bool = True) -> None:
        self.path = Path(path)
        self.fsync = fsync
        if resume and overwrite:
            raise ValueError("choose one of resume and overwrite, not both")
        # Locked before anything is read or removed: a second process must not overwrite, resume or
        # interleave chunks with a live writer. Shared with this process's other holders (the trainer).
        self._lock = DirectoryLock(self.path, "run directory")
        try:
            self._lock.acquire()
            probe = self.path / f".write-probe-{os.getpid()}"
            probe.write_text("ok")
            probe.unlink()
        except OSError as exc:
            self._lock.release()
            raise ValueError(f"run directory {str(self.path)!r} is not writable: {exc.strerror or exc}") from None
        # Released when the writer is closed or garbage-collected, at the latest when the process exits.
        self._release = weakref.finalize(self, self._lock.release)
        try:
            if self.holds_run() and not resume:
                if not overwrite:
                    raise ValueError(f"{str(self.path)!r} already holds a gradscope run; "
                                     "resume it, choose a new directory or overwrite it")
                self._remove_run_files()
            for table in TABLES:
                folder = self.path / table
                folder.mkdir(exist_ok=True)
                for leftover in covered_chunks(folder):  # from a writer killed mid-way
                    leftover.unlink(missing_ok=True)
            self.remove_temporaries()
        except BaseException:
            self.close()
            raise
        self._next_chunk = {t: 1 + max((chunk_span(p)[1] for p in chunk_files(self.path / t)), default=0)
                            for t in TABLES}
        self._pending: dict[str, list[pd.DataFrame]] = {t: [] for t in TABLES}
        self._pending_alerts: list[dict[str, Any]] = []

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` ran (the directory's lock is released)."""
        return not self._release.alive

    def close(self) -> None:
        """Release the run directory's lock and remove temporary files a failed write left (idempotent).

        Queued rows are not written (call :meth:`flush` first); the files stay readable.
        """
        if self.closed:  # the directory may be another process's by now: touch nothing
            return
        try:
            self.remove_temporaries()
        except OSError:  # e.g. a file system turned read-only: the lock must go all the same
            pass
        self._release()

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def remove_temporaries(self) -> list[Path]:
        """Delete the hidden ``.*.tmp`` files of interrupted atomic writes (they fill a full disk further).

        Safe while this writer holds the directory's lock: no other process writes these files. Only the
        writer's own files are looked at (a report written into the run keeps its temporary file).
        """
        found = [p for name in RUN_FILES for p in self.path.glob(f".{name}.*.tmp")]
        found += [p for table in TABLES for p in (self.path / table).glob(".*.tmp")]
        for leftover in found:
            leftover.unlink(missing_ok=True)
        return found

    def holds_run(self) -> bool:
        """Whether the directory already contains a gradscope run."""
        return any((self.path / name).exists() for name in RUN_FILES) or any(
            chunk_files(self.path / table) for table in TABLES)

    def _remove_run_files(self) -> None:
        for name in RUN_FILES:
            (self.path / name).unlink(missing_ok=True)
        for folder in (*TABLES, "tensorboard"):
            shutil.rmtree(self.path / folder, ignore_errors=True)

    # --- small JSON files -------------------------------------------------------------------
    def write_config(self, config: Mapping[str, Any]) -> None:
        """Store the run's configuration (``config.json``)."""
        write_json(self.path / "config.json", dict(config), self.fsync)

    def write_provenance(self, seed: int | None = None, device: str | None = None,
                         extra: Mapping[str, Any] | None = None) -> None:
        """Store versions, device, seed and git commit (``provenance.json``)."""
        write_json(self.path / "provenance.json", provenance(seed, device, extra), self.fsync)

    def write_architecture(self, architecture: Mapping[str, Any]) -> None:
        """Store the recorded layers of each net (``architecture.json``)."""
        write_json(self.path / "architecture.json", dict(architecture), self.fsync)

    def set_status(self, state: str, step: int | None = None, **info: Any) -> None:
        """Record the run's state (one of :data:`STATES`) and last step, atomically."""
        check_choice("run state", state, STATES)
        write_json(self.path / "status.json",
                   {"state": state, "step": step, "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **info},
                   self.fsync)

    def status(self) -> dict[str, Any] | None:
        """The stored status or ``None``."""
        return read_json(self.path / "status.json")

    # --- tables -------------------------------------------------------------------------------
    def append_layers(self, frame: pd.DataFrame) -> None:
        """Queue layer rows for the next :meth:`flush`."""
        if len(frame):
            self._pending["layers"].append(frame)

    def append_scalars(self, frame: pd.DataFrame) -> None:
        """Queue scalar rows ``(step, name, value)`` for the next :meth:`flush`."""
        if len(frame):
            self._pending["scalars"].append(frame)

    def append_alerts(self, alerts: Iterable[Mapping[str, Any]]) -> None:
        """Queue alert records for the next :meth:`flush`."""
        self._pending_alerts.extend(dict(a) for a in alerts)

    def flush(self) -> None:
        """Write queued rows as new chunk files and append queued alerts."""
        for table in TABLES:
            frames = self._pending[table]
            if not frames:
                continue
            frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
            # Sorted as the reader returns tables, so reading a run needs no sort (load_run checks, in one pass).
            # The wide layers chunk sorts its key rows itself and keeps repeated keys in frame order, as this
            # stable sort would: sorting here too writes the same file and costs ~1 ms per recorded step.
            if table != "layers":
                frame = frame.sort_values(list(SORT_KEYS[table]), kind="mergesort")
            write_chunk(self.path / table / f"{self._next_chunk[table]:06d}.parquet", frame, table, self.fsync)
            self._next_chunk[table] += 1
            self._pending[table] = []
            self._merge_if_due(table)
        if self._pending_alerts:
            lines = "".join(json.dumps(a, sort_keys=True, default=str) + "\n" for a in self._pending_alerts)
            with open(self.path / "alerts.jsonl", "a", encoding="utf-8") as handle:
                handle.write(lines)
                handle.flush()
                if self.fsync:
                    os.fsync(handle.fileno())
            self._pending_alerts = []

    def _merge_if_due(self, table: str) -> None:
        """Merge the newest :data:`SEGMENT_FLUSHES` single-flush Parquet chunks into one segment file."""
        singles = []
        for path in reversed(chunk_files(self.path / table)):
            first, last = chunk_span(path)
            if first != last or path.suffix != ".parquet":
                break
            singles.append(path)
        if len(singles) >= SEGMENT_FLUSHES:
            merge_chunks(singles[::-1], self.fsync)

    def truncate_after(self, step: int | None) -> None:
        """Drop every row and alert with ``step > step`` (everything for ``None``), rewriting files atomically.

        A resumed run calls this with its checkpoint's step so that its tables
        equal those of an uninterrupted run.
        """
        limit = -1 if step is None else int(step)
        for table in TABLES:
            self._pending[table] = [f[f["step"] <= limit] for f in self._pending[table]]
            for path in chunk_files(self.path / table):
                known = step_range(path)  # a Parquet footer answers without reading the rows
                if known is not None and known[1] <= limit:
                    continue
                try:
                    frame = read_one(path, table)
                except ValueError as exc:  # its steps are unknown: keep the bytes, out of the table's way
                    aside = path.with_name(path.name + ".damaged")
                    os.replace(path, aside)
                    warnings.warn(f"set damaged chunk {path} aside as {aside.name}: {str(exc).splitlines()[0]}",
                                  stacklevel=2)
                    continue
                keep = frame[frame["step"] <= limit]
                if len(keep) == len(frame):
                    continue
                if len(keep):  # rewritten as Parquet under the same number, so write order is kept
                    write_chunk(path.with_suffix(".parquet"), keep, table, self.fsync)
                    if path.suffix != ".parquet":
                        path.unlink()
                else:
                    path.unlink()
        self._pending_alerts = [a for a in self._pending_alerts if a.get("step", -1) <= limit]
        alerts = self.path / "alerts.jsonl"
        if alerts.exists():
            kept = [line for line in read_jsonl(alerts) if line.get("step", -1) <= limit]
            atomic_write_text(alerts, "".join(json.dumps(a, sort_keys=True, default=str) + "\n" for a in kept),
                              self.fsync)


def format_bytes(size: float) -> str:
    """A size for people: ``'812 B'``, ``'1.6 MB'``, ``'2.31 GB'`` (decimal units, as ``du --si``).

    Examples
    --------
    >>> format_bytes(1_600_000), format_bytes(999)
    ('1.6 MB', '999 B')
    """
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.3g} {unit}" if unit == "GB" else f"{size / scale:.1f} {unit}"
    return f"{int(size)} B"


def folder_size(path: Path) -> int:
    """Bytes of the files below ``path`` (0 if it does not exist)."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file()) if Path(path).exists() else 0


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Objects of a JSON-lines file, skipping a torn or corrupt line."""
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            item = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(item, dict):
            records.append(item)
    return records
