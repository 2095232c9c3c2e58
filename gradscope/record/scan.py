"""Reading a table's chunks: every file's rows that pass a filter, gathered into one compact frame.

The layers chunks are read file by file: a file's footer says which row groups
(one per phase and net) and columns (one per statistic) a filter needs, and
only those are decoded. Scalars are read in one multi-threaded scan. A
damaged chunk is skipped with a warning that names it.
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from gradscope.record.chunks import chunk_files, parse_csv, schema
from gradscope.record.columns import COLUMNS
from gradscope.record.gather import ColumnGatherer, gatherer
from gradscope.record.rowfilter import RowFilter, replace_stats
from gradscope.record.wide import (
    KEYS,
    add_wide_batch,
    in_table_order,
    stat_column,
    stats_of,
)


def _warn_unreadable(path: Path, exc: Exception) -> None:
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    warnings.warn(f"skipping unreadable chunk {path}: {reason}", stacklevel=5)


@contextmanager
def reading_allocator() -> Iterator[None]:
    """Arrow's system allocator for the duration of a read, unless ``ARROW_DEFAULT_MEMORY_POOL`` chose one.

    Reading a 40k-iteration layers table (19M rows) took 2-5 s of system time in page faults with the
    default mimalloc pool on the 2-core machines here, against 0.1-0.3 s with the system allocator. Buffers
    keep the pool that made them, so switching back afterwards is safe.
    """
    if os.environ.get("ARROW_DEFAULT_MEMORY_POOL"):
        yield
        return
    previous = pa.default_memory_pool()
    pa.set_memory_pool(pa.system_memory_pool())
    try:
        yield
    finally:
        pa.set_memory_pool(previous)


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


def _footers(paths: Sequence[Path]) -> dict[Path, pq.FileMetaData]:
    """The readable chunks' footers by path (an unreadable one is named when its rows are read)."""
    footers = {}
    for path in paths:
        try:
            footers[path] = pq.read_metadata(path)
        except (OSError, pa.ArrowException):
            continue
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
        self.footers = _footers(paths)  # read once: read_file opens each chunk with its footer already parsed
        footers = list(self.footers.values())
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
        handle = pq.ParquetFile(path, metadata=self.footers.get(path), read_dictionary=["phase", "net", "layer"],
                                page_checksum_verification=True)
        meta = handle.metadata
        groups = [i for i in range(meta.num_row_groups) if _group_may_match(meta, i, self.where)]
        names = handle.schema_arrow.names
        rows = handle.read_row_groups(groups, columns=[c for c in self.read if c in names])
        where = self.where
        if all(_pure_group(meta, i) for i in groups):  # the kept groups hold only the nets and phases asked for
            where = RowFilter(None, None, where.layers, None, where.steps)
        expression = where.expression(self.table)
        if expression is not None:
            rows = rows.filter(expression)
        return in_table_order(rows)


def _pure_group(meta: pq.FileMetaData, index: int) -> bool:
    """Whether row group ``index`` holds one (phase, net) only (its statistics' min equals its max)."""
    row_group, names = meta.row_group(index), meta.schema.names
    for column in ("phase", "net"):
        stats = row_group.column(names.index(column)).statistics if column in names else None
        if stats is None or not stats.has_min_max or stats.min != stats.max:
            return False
    return True


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


def _csv_frames(paths: list[Path], table: str, columns: list[str], where: RowFilter) -> list[pd.DataFrame]:
    frames = []
    for path in paths:
        try:
            frame = parse_csv(path, table)
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
    with reading_allocator():
        gather = _scan_parquet([p for p in files if p.suffix == ".parquet"], table, chosen, where, gather)
    return gather.frame()


def stored_rows(folder: Path, table: str) -> int | None:
    """Rows of a table (long form) from its chunks' footers, CSV chunks counted by lines; ``None`` when a
    footer lacks the null counts (chunks written before every column had statistics)."""
    files = chunk_files(folder)
    parquet = [p for p in files if p.suffix == ".parquet"]
    footers = list(_footers(parquet).values())
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
