"""The layers table on disk: one row per (step, phase, net, layer), one column per statistic.

The long table (one row per statistic) repeats five key columns for every
value; on disk each (step, phase, net, layer_index, layer) is stored once with
a float64 column ``stat.<name>`` per statistic (null where that statistic was
not recorded; NaN stays NaN). Reading one statistic is then reading one column
(plus the keys), with no filter over every row, and the long table comes back
by a row-major ravel of the statistic columns: key rows are written sorted and
statistic columns in name order, so the result is already in the table's
sort order (step, phase, net, layer_index, layer, stat).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from gradscope.record.gather import ColumnGatherer

KEYS: tuple[str, ...] = ("step", "phase", "net", "layer_index", "layer")
#: Each (phase, net) is a row group of its own, so reading one net's statistics skips the others' pages.
GROUP_KEYS: tuple[str, ...] = ("phase", "net")
STAT_PREFIX = "stat."
LAYOUT_KEY, LAYOUT = b"gradscope.layout", b"wide-1"


def stat_column(stat: str) -> str:
    """The column of ``stat`` in a wide chunk."""
    return STAT_PREFIX + stat


def stats_of(schema: pa.Schema) -> list[str]:
    """The statistics stored in a wide chunk's schema, in name order."""
    return sorted(name[len(STAT_PREFIX):] for name in schema.names if name.startswith(STAT_PREFIX))


def _names(column: pd.Series) -> tuple[np.ndarray, list[str]]:
    """A name column as codes into its distinct names, codes numbered in name order.

    Name order whatever the column's dtype: a categorical's categories may come in any order.
    """
    codes, uniques = pd.factorize(column, use_na_sentinel=False)
    names = [str(name) for name in uniques]
    by_name = np.argsort(np.array(names, dtype=object), kind="stable")
    return np.argsort(by_name)[codes], [names[i] for i in by_name]


def _offsets(values: np.ndarray) -> tuple[np.ndarray, int]:
    """Integers as codes from 0 (ordered as the values) and how many codes that spans."""
    if not len(values):
        return values, 1
    low = values.min()
    return values - low, int(values.max() - low) + 1


def _sort_key(parts: Sequence[tuple[np.ndarray, int]]) -> np.ndarray:
    """One int64 per row that sorts and compares as the row's tuple of ``parts`` (``(codes, size)`` each).

    Mixed radix when the sizes' product fits (a stable argsort of one int64 is several times faster
    than ``np.lexsort`` over six keys), else the dense rank of each row's tuple under ``np.lexsort``.
    """
    if math.prod(size for _, size in parts) < 2 ** 62:
        key = np.zeros(len(parts[0][0]), dtype=np.int64)
        for codes, size in parts:
            key *= size
            key += codes
        return key
    order = np.lexsort([codes for codes, _ in reversed(parts)])
    differs = np.zeros(len(order), dtype=bool)
    for codes, _ in parts:
        differs[1:] |= codes[order][1:] != codes[order][:-1]
    ranks = np.empty(len(order), dtype=np.int64)
    ranks[order] = np.cumsum(differs)
    return ranks


def to_wide(frame: pd.DataFrame) -> pa.Table:
    """A long layers frame as a wide Arrow table, key rows sorted, a repeated key keeping its last value.

    Keys and statistics are factorized into one integer sort key per long row; a stable sort groups
    each (key row, statistic), whose last row wins, and the values are scattered into a dense
    (statistic, key row) array with a presence mask: a present NaN stays NaN, an absent value is null.
    """
    n = len(frame)
    step = frame["step"].to_numpy(dtype=np.int64)
    index = frame["layer_index"].to_numpy(dtype=np.int64)
    (phase, phases), (net, nets), (layer, layer_names) = (_names(frame[c]) for c in ("phase", "net", "layer"))
    stat, stat_names = _names(frame["stat"])  # statistic columns go in name order
    parts = [_offsets(step), (phase, max(len(phases), 1)), (net, max(len(nets), 1)), _offsets(index),
             (layer, max(len(layer_names), 1)), (stat, max(len(stat_names), 1))]
    key = _sort_key(parts)
    order = np.argsort(key, kind="stable")  # equal (key row, statistic) rows stay in frame order
    last = np.ones(n, dtype=bool)
    last[:-1] = key[order][1:] != key[order][:-1]
    kept = order[last]  # the last row of each (key row, statistic), in sort order
    rows = _sort_key(parts[:-1])[kept]
    starts = np.ones(len(kept), dtype=bool)
    starts[1:] = rows[1:] != rows[:-1]
    row = np.cumsum(starts) - 1  # the key row of each kept value
    first = kept[starts]  # a frame row of each key row
    columns: dict[str, pa.Array] = {
        "step": pa.array(step[first], pa.int64()),
        "phase": pa.array(phases, pa.string()).take(pa.array(phase[first])),
        "net": pa.array(nets, pa.string()).take(pa.array(net[first])),
        "layer_index": pa.array(index[first].astype(np.int32), pa.int32()),
        "layer": pa.array(layer_names, pa.string()).take(pa.array(layer[first])),
    }
    values = np.full((len(stat_names), len(first)), np.nan)
    present = np.zeros((len(stat_names), len(first)), dtype=bool)
    values[stat[kept], row] = frame["value"].to_numpy(dtype=np.float64)[kept]
    present[stat[kept], row] = True
    for j, name in enumerate(stat_names):
        columns[stat_column(name)] = pa.array(values[j], pa.float64(), mask=~present[j])
    return pa.table(columns).replace_schema_metadata({LAYOUT_KEY: LAYOUT})


def _plain(array: pa.Array | pa.ChunkedArray) -> pa.Array:
    return array.combine_chunks() if isinstance(array, pa.ChunkedArray) else array


def is_wide(schema: pa.Schema) -> bool:
    """Whether an Arrow schema is a wide layers chunk."""
    return all(k in schema.names for k in KEYS) and any(n.startswith(STAT_PREFIX) for n in schema.names)


def row_groups(table: pa.Table) -> list[pa.Table]:
    """The rows of a wide table as one table per (phase, net), in name order, each in its own row order."""
    pairs = table.group_by(list(GROUP_KEYS)).aggregate([])
    chosen = sorted(zip(pairs.column("phase").to_pylist(), pairs.column("net").to_pylist()))
    return [table.filter(pc.and_(pc.equal(table.column("phase"), phase), pc.equal(table.column("net"), net)))
            for phase, net in chosen]


def in_table_order(table: pa.Table) -> pa.Table:
    """Row groups read back in the table's order: a stable sort by step.

    Groups are stored in (phase, net) name order and each is sorted by (step,
    layer_index, layer), so ordering by step alone, ties kept in file order,
    gives (step, phase, net, layer_index, layer).
    """
    if table.num_rows < 2:
        return table
    step = table.column("step").to_numpy()
    if (step[1:] >= step[:-1]).all():
        return table
    return table.take(pa.array(np.argsort(step, kind="stable")))


def add_wide_batch(gather: ColumnGatherer, batch: pa.RecordBatch | pa.Table, stats: Sequence[str]) -> None:
    """Melt a wide batch (keys and the given statistics' columns) into long rows of ``gather``.

    Row-major over (key row, statistic in name order), so sorted key rows give sorted long rows.
    """
    n, k = batch.num_rows, len(stats)
    if not n or not k:
        return
    names = batch.schema.names
    values = np.empty((n, k), dtype=np.float64)
    present = np.empty((n, k), dtype=bool)
    for j, stat in enumerate(stats):
        if stat_column(stat) in names:
            array = _plain(batch.column(stat_column(stat)))
            values[:, j] = array.to_numpy(zero_copy_only=False)  # nulls come as NaN
            present[:, j] = array.is_valid().to_numpy(zero_copy_only=False)
        else:
            values[:, j], present[:, j] = np.nan, False
    flat = np.flatnonzero(present.ravel())  # positions in the (key row, statistic) order of the long rows
    sources: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if "value" in gather.columns:
        sources["value"] = (values.ravel(), flat)
    if "stat" in gather.columns:
        sources["stat"] = (gather.encode("stat", list(stats), np.arange(k)), flat % k)
    rows = flat // k  # the key row of each value
    for column in KEYS:
        if column in gather.columns:
            sources[column] = (gather.values_of(column, batch.column(column)), rows)
    gather.add_taken(sources)
