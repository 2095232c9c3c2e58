"""Chunk files of a run's tables: Parquet (written), CSV (read, from runs written before Parquet).

A table (``layers``, ``scalars``) is a folder of numbered chunks, one per
flush: ``000001.parquet``, ``000002.parquet``, ... Each is written whole to a
hidden temporary file and renamed over its name, so a reader sees complete
files only. Parquet stores the names (phase, net, layer, stat) dictionary
encoded and every page with a CRC checksum: a chunk cut short or with a
flipped byte fails to read instead of reading wrong numbers (a CSV cut
mid-number reads ``0.5889992`` as ``0.5``).

Filters (:class:`RowFilter`) are pushed down to the Parquet reader, which
skips the columns that are not asked for and the rows that do not match.
"""
from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from gradscope.record.gather import ColumnGatherer
from gradscope.record.wide import (
    KEYS,
    add_wide_batch,
    in_table_order,
    is_wide,
    row_groups,
    stat_column,
    stats_of,
    to_wide,
)

#: ``000007.parquet`` is the 7th flush; ``000001-000064.parquet`` a segment merging flushes 1 to 64.
CHUNK_PATTERN = re.compile(r"^(\d{6,})(?:-(\d{6,}))?\.(csv|parquet)$")
#: Flushes merged into one segment file: a 400k-iteration run flushed every 50 leaves 125 files, not 8,000.
SEGMENT_FLUSHES = 64
#: Columns of each table, in order, and which of them hold names (categorical when read).
COLUMNS: dict[str, tuple[str, ...]] = {
    "layers": ("step", "phase", "net", "layer", "layer_index", "stat", "value"),
    "scalars": ("step", "name", "value"),
}
#: The sort keys of each table; a (step, ..., stat) key appears once (the newest row wins).
SORT_KEYS: dict[str, tuple[str, ...]] = {"layers": ("step", "phase", "net", "layer_index", "layer", "stat"),
                                         "scalars": ("step", "name")}
NAME_COLUMNS: dict[str, tuple[str, ...]] = {"layers": ("phase", "net", "layer", "stat"), "scalars": ("name",)}
#: Integer columns and their dtypes. ``layer_index`` (a position in a net) fits 32 bits; steps get 64.
INT_COLUMNS: dict[str, str] = {"step": "int64", "layer_index": "int32"}
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


@dataclass(frozen=True)
class RowFilter:
    """Which rows of a table to read: each given field keeps rows whose column is one of its values.

    Parameters
    ----------
    stats, nets, layers, phases : collection of str, optional
        Names to keep (``None``: all).
    steps : slice or iterable of int, optional
        A ``slice(start, stop)`` (``stop`` excluded, either may be ``None``) or the steps themselves.

    Examples
    --------
    >>> RowFilter(stats=["sigma"], steps=slice(0, 100)).is_empty()
    False
    """

    stats: frozenset[str] | None = None
    nets: frozenset[str] | None = None
    layers: frozenset[str] | None = None
    phases: frozenset[str] | None = None
    steps: slice | frozenset[int] | None = None

    @classmethod
    def build(cls, stats: Iterable[str] | None = None, nets: Iterable[str] | None = None,
              layers: Iterable[str] | None = None, phases: Iterable[str] | None = None,
              steps: slice | Iterable[int] | None = None) -> RowFilter:
        """Validate and freeze the arguments of :func:`gradscope.load_run`."""
        def names(label: str, values: Iterable[str] | None) -> frozenset[str] | None:
            if values is None:
                return None
            if isinstance(values, str):
                values = [values]
            chosen = frozenset(values)
            if not all(isinstance(v, str) for v in chosen):
                raise ValueError(f"{label} must be names (strings), got {sorted(map(repr, chosen))}")
            return chosen
        if steps is not None and not isinstance(steps, slice):
            if isinstance(steps, (int, np.integer)):
                steps = [int(steps)]
            steps = frozenset(int(s) for s in steps)
        elif isinstance(steps, slice) and steps.step not in (None, 1):
            raise ValueError(f"steps=slice(...) takes a start and a stop, not a stride (got {steps.step})")
        return cls(names("stats", stats), names("nets", nets), names("layers", layers), names("phases", phases),
                   steps)

    def narrowed(self, other: RowFilter) -> RowFilter:
        """Rows that pass both filters."""
        def both(a: frozenset[str] | None, b: frozenset[str] | None) -> frozenset[str] | None:
            return b if a is None else a if b is None else a & b
        steps: slice | frozenset[int] | None
        if self.steps is None or other.steps is None:
            steps = other.steps if self.steps is None else self.steps
        elif isinstance(self.steps, slice) and isinstance(other.steps, slice):
            starts = [s.start for s in (self.steps, other.steps) if s.start is not None]
            stops = [s.stop for s in (self.steps, other.steps) if s.stop is not None]
            steps = slice(max(starts) if starts else None, min(stops) if stops else None)
        else:
            sets = [s for s in (self.steps, other.steps) if not isinstance(s, slice)]
            ranges = [s for s in (self.steps, other.steps) if isinstance(s, slice)]
            steps = frozenset.intersection(*sets)
            for r in ranges:
                steps = frozenset(s for s in steps if (r.start is None or s >= r.start)
                                  and (r.stop is None or s < r.stop))
        return RowFilter(both(self.stats, other.stats), both(self.nets, other.nets),
                         both(self.layers, other.layers), both(self.phases, other.phases), steps)

    def _fields(self, table: str) -> list[tuple[str, object]]:
        named = {"stat": self.stats, "net": self.nets, "layer": self.layers, "phase": self.phases}
        present = set(COLUMNS[table])
        return [(column, values) for column, values in named.items() if values is not None and column in present]

    def is_empty(self) -> bool:
        """Whether the filter keeps every row."""
        return self.steps is None and not any(v is not None for v in (self.stats, self.nets, self.layers,
                                                                          self.phases))

    def expression(self, table: str) -> ds.Expression | None:
        """The filter as a pyarrow dataset expression (``None`` keeps everything)."""
        parts = [pc.field(column).isin(sorted(values)) for column, values in self._fields(table)]
        if isinstance(self.steps, slice):
            if self.steps.start is not None:
                parts.append(pc.field("step") >= int(self.steps.start))
            if self.steps.stop is not None:
                parts.append(pc.field("step") < int(self.steps.stop))
        elif self.steps is not None:
            parts.append(pc.field("step").isin(sorted(self.steps)))
        if not parts:
            return None
        expression = parts[0]
        for part in parts[1:]:
            expression = expression & part
        return expression

    def apply(self, frame: pd.DataFrame, table: str) -> pd.DataFrame:
        """The same filter on a frame already in memory (CSV chunks, tables kept in memory)."""
        keep = np.ones(len(frame), dtype=bool)
        for column, values in self._fields(table):
            keep &= frame[column].astype(str).isin(values).to_numpy() if len(frame) else keep
        if isinstance(self.steps, slice):
            step = frame["step"].to_numpy()
            if self.steps.start is not None:
                keep &= step >= int(self.steps.start)
            if self.steps.stop is not None:
                keep &= step < int(self.steps.stop)
        elif self.steps is not None:
            keep &= frame["step"].isin(self.steps).to_numpy()
        return frame if keep.all() else frame[keep]


def _warn_unreadable(path: Path, exc: Exception) -> None:
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    warnings.warn(f"skipping unreadable chunk {path}: {reason}", stacklevel=5)


def gatherer(table: str, columns: Sequence[str] | None = None, capacity: int | None = None) -> ColumnGatherer:
    """An empty :class:`ColumnGatherer` for ``table``'s columns and dtypes."""
    chosen = list(COLUMNS[table] if columns is None else columns)
    dtypes = {c: INT_COLUMNS.get(c, "float64") for c in chosen if c not in NAME_COLUMNS[table]}
    return ColumnGatherer(chosen, NAME_COLUMNS[table], dtypes, capacity)


def _parquet_format() -> ds.ParquetFileFormat:
    return ds.ParquetFileFormat(read_options={"dictionary_columns": ["phase", "net", "layer", "name"]},
                                default_fragment_scan_options=ds.ParquetFragmentScanOptions(
                                    page_checksum_verification=True))


def _read_schema(table: str, stats: Sequence[str]) -> pa.Schema:
    if table != "layers":
        return schema(table, dictionary=True)
    name = pa.dictionary(pa.int32(), pa.string())
    fields = [pa.field("step", pa.int64()), pa.field("phase", name), pa.field("net", name),
              pa.field("layer_index", pa.int32()), pa.field("layer", name)]
    return pa.schema(fields + [pa.field(stat_column(s), pa.float64()) for s in stats])


def _footers(paths: Sequence[Path]) -> list[pq.FileMetaData]:
    footers = []
    for path in paths:
        try:
            footers.append(pq.read_metadata(path))
        except (OSError, pa.ArrowException):
            continue  # named when its rows are read
    return footers


def _present_values(footers: Sequence[pq.FileMetaData], columns: Sequence[str]) -> int | None:
    """Non-null values of ``columns`` in all chunks, from the footers (``None`` if a statistic is missing)."""
    total = 0
    for meta in footers:
        names = meta.schema.names
        for group in range(meta.num_row_groups):
            row_group = meta.row_group(group)
            for column in columns:
                if column not in names:
                    continue
                stats = row_group.column(names.index(column)).statistics
                if stats is None or not stats.has_null_count:
                    return None
                total += row_group.num_rows - stats.null_count
    return total


class _Scan:
    """What to read of a table's Parquet chunks: columns, filter, and how batches become long rows."""

    def __init__(self, paths: list[Path], table: str, columns: list[str], where: RowFilter) -> None:
        self.table, self.columns, self.where = table, columns, where
        self.expression = where.expression(table)
        footers = _footers(paths)
        rows_filtered = not replace_stats(where).is_empty()
        if table == "layers":
            stats = sorted({s for meta in footers for s in stats_of(meta.schema.to_arrow_schema())})
            if where.stats is not None:
                stats = [s for s in stats if s in where.stats]
            self.stats = stats
            self.read = list(KEYS) + [stat_column(s) for s in stats]
            # the stat filter is a column projection: drop it from the row filter
            self.expression = replace_stats(where).expression(table)
            counted = [stat_column(s) for s in stats]
        else:
            self.stats, self.read, counted = [], columns, ["value"]
        # Rows known from the footers: the result's arrays are allocated once, at their final size.
        self.capacity = None if rows_filtered or len(footers) < len(paths) else _present_values(footers, counted)
        self.schema = _read_schema(table, self.stats)

    def add(self, gather: ColumnGatherer, batch: pa.RecordBatch | pa.Table) -> None:
        if self.table == "layers":
            add_wide_batch(gather, batch, self.stats)
        else:
            gather.add_batch(batch)

    def dataset(self, paths: list[Path]) -> ds.Dataset:
        return ds.dataset([str(p) for p in paths], schema=self.schema, format=_parquet_format())

    def read_file(self, path: Path) -> pa.Table:
        """One wide chunk: only the row groups and columns asked for, filtered, in the table's order."""
        handle = pq.ParquetFile(path, read_dictionary=["phase", "net", "layer"], page_checksum_verification=True)
        meta = handle.metadata
        groups = [i for i in range(meta.num_row_groups) if _group_may_match(meta, i, self.where)]
        names = handle.schema_arrow.names
        rows = handle.read_row_groups(groups, columns=[c for c in self.read if c in names])
        if self.expression is not None:
            rows = rows.filter(self.expression)
        return in_table_order(rows)


def _group_may_match(meta: pq.FileMetaData, index: int, where: RowFilter) -> bool:
    """Whether row group ``index`` may hold rows of ``where``'s nets, phases and steps (from its statistics)."""
    row_group, names = meta.row_group(index), meta.schema.names
    wanted = {"net": where.nets, "phase": where.phases}
    for column, values in wanted.items():
        if values is None or column not in names:
            continue
        stats = row_group.column(names.index(column)).statistics
        if stats is not None and stats.has_min_max and not any(stats.min <= v <= stats.max for v in values):
            return False
    if where.steps is not None and "step" in names:
        stats = row_group.column(names.index("step")).statistics
        if stats is not None and stats.has_min_max:
            if isinstance(where.steps, slice):
                start, stop = where.steps.start, where.steps.stop
                if (start is not None and stats.max < start) or (stop is not None and stats.min >= stop):
                    return False
            elif not any(stats.min <= s <= stats.max for s in where.steps):
                return False
    return True


def replace_stats(where: RowFilter) -> RowFilter:
    """``where`` without its statistics (they select columns of a wide chunk, not rows)."""
    return RowFilter(None, where.nets, where.layers, where.phases, where.steps)


def _scan_parquet(paths: list[Path], table: str, columns: list[str], where: RowFilter,
                  into: ColumnGatherer | None) -> ColumnGatherer:
    """Every Parquet chunk (layers file by file, skipping row groups; scalars in one scan); a damaged chunk
    is skipped with a warning naming it."""
    scan = _Scan(paths, table, columns, where)
    gather = into or gatherer(table, columns, scan.capacity)
    if table == "layers":
        for path in paths:
            try:
                rows = scan.read_file(path)
            except (OSError, pa.ArrowException, ValueError) as exc:
                _warn_unreadable(path, exc)
                continue
            scan.add(gather, rows)
        return gather
    if paths:
        try:
            for batch in scan.dataset(paths).to_batches(columns=scan.read, filter=scan.expression,
                                                        batch_size=1 << 18):
                scan.add(gather, batch)
            return gather
        except (OSError, pa.ArrowException, ValueError):
            if into is not None and into.filled:
                raise
    gather = into or gatherer(table, columns)
    for path in paths:
        try:
            rows = scan.dataset([path]).to_table(columns=scan.read, filter=scan.expression)
        except (OSError, pa.ArrowException, ValueError) as exc:
            _warn_unreadable(path, exc)
            continue
        scan.add(gather, rows)
    return gather


def _parse_csv(path: Path, table: str) -> pd.DataFrame:
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


def _csv_frames(paths: list[Path], table: str, columns: list[str], where: RowFilter) -> list[pd.DataFrame]:
    frames = []
    for path in paths:
        try:
            frame = _parse_csv(path, table)
        except (OSError, ValueError, TypeError, pd.errors.ParserError) as exc:
            _warn_unreadable(path, exc)
            continue
        frames.append(where.apply(frame, table)[columns])
    return frames


def read_rows(folder: Path, table: str, where: RowFilter | None = None,
              columns: Sequence[str] | None = None) -> pd.DataFrame:
    """The rows of every readable chunk of ``folder`` that pass ``where``, in write order, one frame.

    Names are categorical with sorted categories. A damaged chunk is skipped with a warning naming it.
    CSV chunks (runs from before Parquet) come first: a resumed old run numbers its new Parquet chunks
    after them, so this is write order.
    """
    where = where or RowFilter()
    chosen = list(COLUMNS[table] if columns is None else columns)
    files = chunk_files(folder)
    csv = [p for p in files if p.suffix == ".csv"]
    frames = _csv_frames(csv, table, chosen, where)
    gather = None
    if frames:
        gather = gatherer(table, chosen)
        for frame in frames:
            gather.add_frame(frame)
    gather = _scan_parquet([p for p in files if p.suffix == ".parquet"], table, chosen, where, gather)
    return gather.frame()


def stored_rows(folder: Path, table: str) -> int | None:
    """Rows of a table (long form) from its chunks' footers, CSV chunks counted by lines; ``None`` when a
    footer lacks the null counts (chunks written before every column had statistics)."""
    files = chunk_files(folder)
    parquet = [p for p in files if p.suffix == ".parquet"]
    footers = _footers(parquet)
    columns = sorted({n for meta in footers for n in meta.schema.names if n.startswith("stat.")}) \
        if table == "layers" else ["value"]
    counted = _present_values(footers, columns) if parquet else 0
    if counted is None or len(footers) < len(parquet):
        return None
    for path in (p for p in files if p.suffix == ".csv"):
        with open(path, "rb") as handle:
            counted += max(0, sum(1 for _ in handle) - 1)
    return counted


def recorded_groups(folder: Path, table: str = "layers") -> set[tuple[str, str]]:
    """The distinct (net, phase) pairs of a layers table, reading only those two columns."""
    found: set[tuple[str, str]] = set()
    files = chunk_files(folder)
    for frame in _csv_frames([p for p in files if p.suffix == ".csv"], table, ["net", "phase"], RowFilter()):
        found.update(zip(frame["net"].astype(str), frame["phase"].astype(str)))
    for path in (p for p in files if p.suffix == ".parquet"):
        try:
            pairs = pq.read_table(path, columns=["net", "phase"]).group_by(["net", "phase"]).aggregate([])
        except (OSError, pa.ArrowException):
            continue  # named when its rows are read
        found.update(zip(pairs.column("net").to_pylist(), pairs.column("phase").to_pylist()))
    return found


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
            return _parse_csv(path, table)
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
