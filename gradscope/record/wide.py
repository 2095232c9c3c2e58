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


def to_wide(frame: pd.DataFrame) -> pa.Table:
    """A long layers frame as a wide Arrow table, key rows sorted, a repeated key keeping its last value."""
    long = frame[["step", "phase", "net", "layer_index", "layer", "stat", "value"]]
    long = long.drop_duplicates(subset=[*KEYS, "stat"], keep="last")
    wide = long.set_index([*KEYS, "stat"])["value"].unstack("stat").sort_index()
    keys = wide.index.to_frame(index=False)
    columns: dict[str, pa.Array] = {
        "step": pa.array(keys["step"].to_numpy(dtype=np.int64), pa.int64()),
        "phase": pa.array(keys["phase"].astype(str).to_numpy(dtype=object), pa.string()),
        "net": pa.array(keys["net"].astype(str).to_numpy(dtype=object), pa.string()),
        "layer_index": pa.array(keys["layer_index"].to_numpy(dtype=np.int32), pa.int32()),
        "layer": pa.array(keys["layer"].astype(str).to_numpy(dtype=object), pa.string()),
    }
    # Present-but-NaN must stay NaN and absent must be null: take presence from the long rows.
    present = long.assign(here=True).set_index([*KEYS, "stat"])["here"].unstack("stat").reindex(wide.index)
    for stat in sorted(str(s) for s in wide.columns):
        values = wide[stat].to_numpy(dtype=np.float64)
        mask = present[stat].isna().to_numpy()
        columns[stat_column(stat)] = pa.array(values, pa.float64(), mask=mask)
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
