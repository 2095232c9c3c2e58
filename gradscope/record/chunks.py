"""Chunk files of a run's tables: Parquet (written), CSV (read, from runs written before Parquet).

A table (``layers``, ``scalars``) is a folder of numbered chunks, one per
flush: ``000001.parquet``, ``000002.parquet``, ... Each is written whole to a
hidden temporary file and renamed over its name, so a reader sees complete
files only. Parquet stores the names (phase, net, layer, stat) dictionary
encoded and every page with a CRC checksum: a chunk cut short or with a
flipped byte fails to read instead of reading wrong numbers (a CSV cut
mid-number reads ``0.5889992`` as ``0.5``).

Reading many chunks with a filter is :mod:`gradscope.record.scan`.
"""
from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from gradscope.record.columns import COLUMNS, INT_COLUMNS, NAME_COLUMNS, SORT_KEYS  # noqa: F401 (re-exported)
from gradscope.record.gather import gatherer
from gradscope.record.wide import (
    KEYS,
    add_wide_batch,
    in_table_order,
    is_wide,
    row_groups,
    stats_of,
    to_wide,
)

#: ``000007.parquet`` is the 7th flush; ``000001-000064.parquet`` a segment merging flushes 1 to 64.
CHUNK_PATTERN = re.compile(r"^(\d{6,})(?:-(\d{6,}))?\.(csv|parquet)$")
#: Flushes merged into one segment file: a 400k-iteration run flushed every 50 leaves 125 files, not 8,000.
SEGMENT_FLUSHES = 64
_ARROW_TYPES = {"int64": pa.int64(), "int32": pa.int32()}
COMPRESSION = "zstd"


def schema(table: str, dictionary: bool = False) -> pa.Schema:
    """The Parquet schema of a table's chunks (``dictionary``: names as read, dictionary-encoded)."""
    name_type = pa.dictionary(pa.int32(), pa.string()) if dictionary else pa.string()
    fields = []
    for column in COLUMNS[table]:
        if column in INT_COLUMNS:
            fields.append(pa.field(column, _ARROW_TYPES[INT_COLUMNS[column]]))
        elif column == "value":
            fields.append(pa.field(column, pa.float64()))
        else:
            fields.append(pa.field(column, name_type))
    return pa.schema(fields)


def chunk_span(path: Path) -> tuple[int, int]:
    """The first and last flush numbers held by a chunk file (equal for one flush)."""
    match = CHUNK_PATTERN.match(path.name)
    if match is None:
        raise ValueError(f"{path.name!r} is not a chunk file name (expected NNNNNN.parquet or NNNNNN.csv)")
    first = int(match.group(1))
    return first, int(match.group(2)) if match.group(2) else first


def chunk_number(path: Path) -> int:
    """The (first) flush number in a chunk's file name."""
    return chunk_span(path)[0]


def covered_chunks(folder: Path) -> list[Path]:
    """Single-flush chunks already merged into a segment (left behind by a kill while merging)."""
    if not folder.is_dir():
        return []
    files = [p for p in folder.iterdir() if CHUNK_PATTERN.match(p.name)]
    spans = [chunk_span(p) for p in files]
    segments = [span for span in spans if span[1] > span[0]]
    return [p for p, (first, last) in zip(files, spans)
            if first == last and any(a <= first <= b for a, b in segments)]


def chunk_files(folder: Path) -> list[Path]:
    """Complete chunk files of a table folder, in write order (temporaries and merged flushes skipped)."""
    if not folder.is_dir():
        return []
    covered = set(covered_chunks(folder))
    return sorted((p for p in folder.iterdir() if CHUNK_PATTERN.match(p.name) and p not in covered),
                  key=chunk_number)


def merge_chunks(paths: Sequence[Path], fsync: bool = True) -> Path:
    """Merge consecutive Parquet chunks into one segment file, then delete them; returns the segment.

    The segment is complete before any chunk is deleted, and readers skip
    chunks a segment covers, so a kill at any moment loses nothing.
    """
    tables = [pq.read_table(p) for p in paths]
    stat_columns = sorted({n for t in tables for n in t.schema.names if n not in KEYS and n not in COLUMNS["scalars"]})
    merged = pa.concat_tables(tables, promote_options="default")
    base = [n for n in merged.schema.names if n in KEYS or n in COLUMNS["scalars"]]
    merged = merged.select(base + stat_columns).replace_schema_metadata(tables[0].schema.metadata)
    first, last = chunk_span(paths[0])[0], chunk_span(paths[-1])[1]
    target = paths[0].with_name(f"{first:06d}-{last:06d}.parquet")
    write_arrow(target, merged, fsync)
    for path in paths:
        path.unlink()
    return target


def to_arrow(frame: pd.DataFrame, table: str) -> pa.Table:
    """A long frame of ``table`` as the Arrow table its chunk stores (layers: wide, see :mod:`.wide`)."""
    if table == "layers":
        return to_wide(frame)
    return pa.Table.from_pandas(frame[list(COLUMNS[table])], schema=schema(table), preserve_index=False)


def write_arrow(path: Path, arrow: pa.Table, fsync: bool = True) -> None:
    """Write an Arrow table as the Parquet chunk ``path``, atomically (temporary file, fsync, rename)."""
    names = [n for n in ("phase", "net", "layer", "name") if n in arrow.schema.names]
    # Floats split into byte streams compress better (the exponent bytes repeat): measured 7 % smaller.
    floats = [n for n in arrow.schema.names if pa.types.is_floating(arrow.schema.field(n).type)]
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    groups = row_groups(arrow) if is_wide(arrow.schema) else [arrow]
    with open(tmp, "wb") as handle:
        # Statistics of every column: step ranges answer truncation, null counts size the reader's arrays,
        # (phase, net) ranges let a reader skip other nets' row groups.
        with pq.ParquetWriter(handle, arrow.schema, compression=COMPRESSION, use_dictionary=names,
                              use_byte_stream_split=floats, write_page_checksum=True,
                              write_statistics=True) as writer:
            for group in groups:
                writer.write_table(group, row_group_size=1 << 22)
        handle.flush()
        if fsync:
            os.fsync(handle.fileno())
    os.replace(tmp, path)


def write_chunk(path: Path, frame: pd.DataFrame, table: str, fsync: bool = True) -> None:
    """Write a long ``frame`` of ``table`` as the Parquet chunk ``path``, atomically."""
    write_arrow(path, to_arrow(frame, table), fsync)


def frame_to_csv(frame: pd.DataFrame) -> str:
    """CSV text of a table chunk in the format written before Parquet (``nan`` / ``inf`` spelled out)."""
    return frame.to_csv(index=False, na_rep="nan")


def _read_csv(path: Path) -> pd.DataFrame:
    # Only the value column may hold "nan": a layer literally named "NA" stays a string.
    return pd.read_csv(path, keep_default_na=False, na_values={"value": ["nan"]})


def parse_csv(path: Path, table: str) -> pd.DataFrame:
    """A CSV chunk with the table's columns and number types (raises when it has neither)."""
    frame = _read_csv(path)
    missing = [c for c in COLUMNS[table] if c not in frame.columns]
    if missing:
        raise ValueError(f"no column {missing[0]!r} (header: {', '.join(map(str, frame.columns))})")
    for column, dtype in INT_COLUMNS.items():
        if column in frame.columns:
            frame[column] = pd.to_numeric(frame[column], errors="raise").astype(dtype)
    frame["value"] = pd.to_numeric(frame["value"], errors="raise").astype("float64")
    return frame


def step_range(path: Path) -> tuple[int, int] | None:
    """(first, last) step of a chunk from its footer statistics, without reading its rows (Parquet only)."""
    if path.suffix != ".parquet":
        return None
    try:
        meta = pq.ParquetFile(path).metadata
    except (OSError, pa.ArrowException):
        return None
    index = meta.schema.names.index("step")
    lows, highs = [], []
    for group in range(meta.num_row_groups):
        stats = meta.row_group(group).column(index).statistics
        if stats is None or not stats.has_min_max:
            return None
        lows.append(stats.min)
        highs.append(stats.max)
    return (min(lows), max(highs)) if lows else None


def read_one(path: Path, table: str) -> pd.DataFrame:
    """One chunk, every column, either format.

    Raises
    ------
    ValueError
        Naming the chunk, when it is damaged (torn, no header, text where numbers belong).
    """
    try:
        if path.suffix == ".csv":
            return parse_csv(path, table)
        gather = gatherer(table)
        if table == "layers":
            arrow = in_table_order(pq.read_table(path, page_checksum_verification=True))
            add_wide_batch(gather, arrow, stats_of(arrow.schema))
        else:
            gather.add_batch(pq.read_table(path, schema=schema(table)))
        return gather.frame()
    except (ValueError, TypeError, KeyError, pa.ArrowException, pd.errors.ParserError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"chunk {path} is unreadable: {reason}") from None
