"""Manage run directories: ``gradscope runs convert DIR`` rewrites CSV chunks as Parquet.

Runs written before Parquet chunks (``layers/NNNNNN.csv``) load as they are;
converting them (and merging their flushes into segments of 64) makes them
smaller and faster to read. ``DIR`` is a
run directory or any folder above runs (a sweep): every run below it is
converted. Each chunk is written as Parquet under its own number before its
CSV is deleted, so an interrupted conversion loses nothing and can be run
again; a damaged CSV chunk is left in place and named.
"""
from __future__ import annotations

import argparse
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from gradscope.record.chunks import (
    COLUMNS,
    SEGMENT_FLUSHES,
    chunk_files,
    chunk_span,
    merge_chunks,
    read_one,
    write_chunk,
)
from gradscope.record.lock import DirectoryLock
from gradscope.record.storage import TABLES, format_bytes


@dataclass
class Conversion:
    """What :func:`convert_run` did: chunks converted, chunks left (damaged), bytes before and after."""

    runs: int = 0
    converted: int = 0
    damaged: int = 0
    bytes_before: int = 0
    bytes_after: int = 0


def run_directories(root: Path) -> list[Path]:
    """Every run directory at or below ``root`` (a folder with a ``layers`` or ``scalars`` table folder)."""
    if not root.is_dir():
        raise ValueError(f"{str(root)!r} is not a directory")
    found = []
    for folder, subfolders, _ in os.walk(root):
        if any(t in subfolders for t in TABLES):
            found.append(Path(folder))
            subfolders[:] = [s for s in subfolders if s not in TABLES]  # tables hold no runs
        subfolders[:] = [s for s in subfolders if s not in ("checkpoints", "samples", "tensorboard")]
    return sorted(found)


def convert_run(run: Path, fsync: bool = True, into: Conversion | None = None) -> Conversion:
    """Rewrite every CSV chunk of the run directory ``run`` as a Parquet chunk with the same number.

    Examples
    --------
    >>> convert_run(Path("runs/old"))  # doctest: +SKIP
    Conversion(runs=1, converted=32, damaged=0, bytes_before=12582912, bytes_after=1677721)
    """
    done = into or Conversion()
    done.runs += 1
    with DirectoryLock(run, hint="convert it once it has finished"):  # never under a live writer
        _convert_tables(run, fsync, done)
    return done


def _convert_tables(run: Path, fsync: bool, done: Conversion) -> None:
    for table in TABLES:
        for path in chunk_files(run / table):
            if path.suffix != ".csv":
                continue
            target = path.with_suffix(".parquet")
            size = path.stat().st_size
            if not target.exists():  # else an earlier, interrupted conversion already wrote it
                try:
                    frame = read_one(path, table)
                    missing = [c for c in COLUMNS[table] if c not in frame.columns]
                    if missing:
                        raise ValueError(f"no column {missing[0]!r}")
                    write_chunk(target, frame, table, fsync)
                except (OSError, ValueError, TypeError) as exc:
                    reason = str(exc).splitlines()[0].replace(f"chunk {path} is unreadable: ", "")
                    warnings.warn(f"left damaged chunk {path} as it is: {reason}", stacklevel=2)
                    done.damaged += 1
                    continue
            done.bytes_before += size
            path.unlink()
            done.converted += 1
        merge_singles(run / table, fsync)
        done.bytes_after += sum(p.stat().st_size for p in chunk_files(run / table) if p.suffix == ".parquet")


def merge_singles(folder: Path, fsync: bool = True) -> None:
    """Merge runs of consecutive single-flush Parquet chunks into segments of :data:`SEGMENT_FLUSHES`."""
    group: list[Path] = []
    for path in [*chunk_files(folder), None]:
        single = path is not None and path.suffix == ".parquet" and chunk_span(path)[0] == chunk_span(path)[1]
        if single:
            group.append(path)
        if len(group) == SEGMENT_FLUSHES or (not single and group):
            if len(group) > 1:
                merge_chunks(group, fsync)
            group = []


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``gradscope runs``."""
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    convert = actions.add_parser("convert", help="rewrite the CSV chunks of runs as Parquet (smaller, faster)",
                                 description=__doc__.strip().splitlines()[0])
    convert.add_argument("dir", help="a run directory, or a folder with runs below it (a sweep)")
    convert.add_argument("--no-fsync", action="store_true", help="do not fsync each chunk (faster, not power-safe)")


def execute(args: argparse.Namespace) -> int:
    """Run ``gradscope runs ACTION``; 0 on success, 1 if a chunk was left damaged."""
    root = Path(args.dir)
    runs = run_directories(root)
    if not runs:
        raise ValueError(f"no gradscope run in {str(root)!r} (no layers/ or scalars/ folder below it)")
    done = Conversion()
    for run in runs:
        convert_run(run, fsync=not args.no_fsync, into=done)
    print(f"converted {done.converted} CSV chunks in {done.runs} run(s): "
          f"{format_bytes(done.bytes_before)} -> {format_bytes(done.bytes_after)}"
          + (f"; {done.damaged} damaged chunk(s) left as they are" if done.damaged else ""))
    return 1 if done.damaged else 0
