"""Reading a run directory back: ``load_run(path) -> Run`` with pandas tables, also for partial runs."""
from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gradscope.record.columns import COLUMNS, NAME_COLUMNS, READ_INT_DTYPES, SORT_KEYS
from gradscope.record.gather import gatherer, narrowest_int
from gradscope.record.rowfilter import RowFilter
from gradscope.record.scan import read_rows, recorded_groups, stored_rows
from gradscope.record.stats import STATS
from gradscope.record.storage import TABLES, read_json, read_jsonl

#: One row per alert event. ``layer`` holds the event's layer (or scalar) names joined by commas (one name
#: for a one-layer event), ``layers`` the same names as a list, input to output; rows written before
#: ``layers`` existed read back with ``layers == [layer]``.
ALERT_COLUMNS: tuple[str, ...] = ("step", "phase", "net", "layer", "layers", "rule", "kind", "stat", "value",
                                  "threshold", "message")


class Run:
    """A run directory's contents, read when first used.

    Tables are read from the chunk files on first access to :attr:`layers` or
    :attr:`scalars` (once; a run still being written shows what was flushed by
    then). :meth:`stat` of a table not yet read reads only the rows it needs.

    Attributes
    ----------
    layers : pandas.DataFrame
        Columns ``step`` (int32; int64 past 2**31 - 1), ``phase, net, layer`` (categorical),
        ``layer_index`` (int16; int32 past 32767), ``stat`` (categorical), ``value`` (float64), sorted by
        step, phase, net, layer_index, layer, stat. Categories are sorted, so sorting by them is sorting
        by name. At 18 bytes per row a 400k-iteration run's table (2e8 rows) takes 3.4 GB.
    scalars : pandas.DataFrame
        Columns ``step`` (as in ``layers``), ``name`` (categorical), ``value``, sorted by step and name.
    alerts : pandas.DataFrame
        One row per alert event (``step, phase, net, layer, layers, rule, kind, stat, value, threshold,
        message``; see :data:`ALERT_COLUMNS`).
    config, provenance, status, architecture : dict
        The JSON files (empty dict when missing).
    """

    def __init__(self, path: Path | None, layers: pd.DataFrame | None = None, scalars: pd.DataFrame | None = None,
                 alerts: pd.DataFrame | None = None, config: dict[str, Any] | None = None,
                 provenance: dict[str, Any] | None = None, status: dict[str, Any] | None = None,
                 architecture: dict[str, Any] | None = None, *, where: RowFilter | None = None) -> None:
        self.path = None if path is None else Path(path)
        if (layers is None or scalars is None) and self.path is None:
            raise ValueError("a Run without a path needs its layers and scalars tables")
        self.where = where or RowFilter()
        self._tables: dict[str, pd.DataFrame | None] = {"layers": layers, "scalars": scalars}
        self.alerts = pd.DataFrame(columns=list(ALERT_COLUMNS)) if alerts is None else alerts
        self.config, self.provenance = config or {}, provenance or {}
        self.status, self.architecture = status or {}, architecture or {}
        self._groups: set[tuple[str, str]] | None = None

    def _table(self, table: str) -> pd.DataFrame:
        if self._tables[table] is None:
            if not self.path.is_dir():  # removed since load_run: an empty table would be a silent lie
                raise ValueError(f"run directory {str(self.path)!r} no longer exists; its {table} were never read")
            self._tables[table] = read_table(self.path, table, self.where)
        return self._tables[table]

    @property
    def layers(self) -> pd.DataFrame:
        """The long table of per-layer statistics (read on first access)."""
        return self._table("layers")

    @property
    def scalars(self) -> pd.DataFrame:
        """The table of named scalars per step (read on first access)."""
        return self._table("scalars")

    def replace(self, **changes: Any) -> Run:
        """A copy with some parts replaced (``layers=``, ``scalars=``, ``alerts=``, ``config=``, ...).

        Examples
        --------
        >>> d_only = run.replace(layers=run.layers[run.layers["net"] == "D"])  # doctest: +SKIP
        """
        parts = {"path": self.path, "layers": self._tables["layers"], "scalars": self._tables["scalars"],
                 "alerts": self.alerts, "config": self.config, "provenance": self.provenance,
                 "status": self.status, "architecture": self.architecture, "where": self.where}
        unknown = sorted(set(changes) - set(parts))
        if unknown:
            raise ValueError(f"Run has no part {unknown[0]!r}; valid: {', '.join(parts)}")
        parts.update(changes)
        return Run(**parts)

    def __repr__(self) -> str:
        read = [t for t in TABLES if self._tables[t] is not None]
        return f"Run(path={str(self.path)!r}, tables read: {', '.join(read) or 'none'})"

    def layer_order(self, net: str) -> list[str]:
        """The net's layer names (modules, not parameters or operator slices) from input to output.

        From ``architecture.json`` while the layers table is unread (a long run is not read for this),
        else from the rows.
        """
        described = self.architecture.get(net) if self._tables["layers"] is None else None
        if isinstance(described, list) and all(isinstance(d, dict) and "name" in d for d in described):
            ordered = sorted(described, key=lambda d: d.get("layer_index", 0))
            return [d["name"] for d in ordered if self.where.layers is None or d["name"] in self.where.layers]
        rows = self.layers[self.layers["net"] == net]
        per_parameter = [name for name, info in STATS.items() if info.target == "param"]
        rows = rows[~rows["stat"].isin(per_parameter)]
        names = set(rows[rows["stat"].isin([n for n, i in STATS.items() if i.target == "layer"])]["layer"])
        if names:  # operator rows such as 'attn.in_proj_weight[q]' are not layers
            rows = rows[rows["layer"].isin(names)]
        rows = rows[["layer_index", "layer"]].drop_duplicates()
        return [str(n) for n in rows.sort_values("layer_index", kind="stable")["layer"]]

    def groups(self) -> set[tuple[str, str]]:
        """The (net, phase) pairs with layer statistics, without reading the table if it is not in memory."""
        if self._tables["layers"] is not None:
            layers = self._tables["layers"]
            return set(zip(layers["net"].astype(str), layers["phase"].astype(str)))
        if self._groups is None:
            found = recorded_groups(self.path / "layers")
            self._groups = {(n, p) for n, p in found if (self.where.nets is None or n in self.where.nets)
                            and (self.where.phases is None or p in self.where.phases)}
        return set(self._groups)

    def row_count(self, table: str = "layers") -> int:
        """Rows of ``table`` (``layers`` or ``scalars``), from the chunk footers when it is not in memory."""
        counted = None
        if self._tables[table] is None and self.where.is_empty():
            counted = stored_rows(self.path / table, table)
        return len(self._table(table)) if counted is None else counted

    def nets(self) -> list[str]:
        """The nets with layer statistics, sorted."""
        return sorted({net for net, _ in self.groups()})

    def phases(self, net: str | None = None) -> list[str]:
        """The phases with layer statistics (of ``net``, or of any net), sorted."""
        return sorted({p for n, p in self.groups() if net is None or n == net})

    def rows(self, stats: Iterable[str] | None = None, nets: Iterable[str] | None = None,
             layers: Iterable[str] | None = None, phases: Iterable[str] | None = None,
             steps: slice | Iterable[int] | None = None) -> pd.DataFrame:
        """Rows of the layers table that pass a filter, read from the files if the table is not in memory."""
        where = RowFilter.build(stats, nets, layers, phases, steps)
        if self._tables["layers"] is not None:
            return where.apply(self._tables["layers"], "layers").reset_index(drop=True)
        return read_table(self.path, "layers", self.where.narrowed(where))

    def stat(self, stat: str, net: str | None = None, phase: str | None = None,
             steps: slice | Iterable[int] | None = None) -> pd.DataFrame:
        """One statistic as a wide table: one row per step, one column per layer (input to output).

        Reads only that statistic's rows when the layers table is not in memory.

        Examples
        --------
        >>> run.stat("grad_out_norm", net="D", phase="d")  # doctest: +SKIP
        """
        rows = self.rows(stats=[stat], nets=None if net is None else [net],
                         phases=None if phase is None else [phase], steps=steps)
        if rows["net"].nunique() > 1 or rows["phase"].nunique() > 1:
            raise ValueError(f"stat {stat!r} is recorded for several nets or phases; pass net= and phase=")
        # Rows are tidy (one per step and layer here): a scatter into a dense array is the whole pivot.
        layer = rows["layer"] if isinstance(rows["layer"].dtype, pd.CategoricalDtype) else \
            pd.Series(pd.Categorical(rows["layer"].astype(str)))
        codes = layer.cat.codes.to_numpy()
        steps, step_position = np.unique(rows["step"].to_numpy(), return_inverse=True)
        pairs = pd.DataFrame({"layer_index": rows["layer_index"].to_numpy(), "code": codes}).drop_duplicates()
        pairs = pairs.sort_values("layer_index", kind="stable")  # input to output; ties in first-seen order
        column_of = np.zeros(len(layer.cat.categories), dtype=np.int64)
        column_of[pairs["code"].to_numpy()] = np.arange(len(pairs))
        values = np.full((len(steps), len(pairs)), np.nan)
        values[step_position, column_of[codes]] = rows["value"].to_numpy()
        names = [str(name) for name in layer.cat.categories[pairs["code"].to_numpy()]]
        return pd.DataFrame(values, index=pd.Index(steps, name="step"), columns=pd.Index(names, name="layer"))


def _key_codes(frame: pd.DataFrame, column: str) -> np.ndarray:
    values = frame[column]
    return values.cat.codes.to_numpy() if isinstance(values.dtype, pd.CategoricalDtype) else values.to_numpy()


def _strictly_sorted(frame: pd.DataFrame, keys: Iterable[str], block: int = 1 << 20) -> bool:
    """Whether rows are in strictly increasing key order (sorted, no repeated key), checked in one pass.

    In blocks of ``block`` rows: the temporaries stay small and are reused (fresh pages for a 10^8-row
    table's temporaries cost more than the comparisons).
    """
    if len(frame) < 2:
        return True
    columns = [_key_codes(frame, key) for key in reversed(list(keys))]
    for start in range(0, len(frame) - 1, block):
        stop = min(start + block, len(frame) - 1)
        order = np.zeros(stop - start, dtype=np.int8)  # per adjacent pair: +1 increasing, -1 decreasing, 0 tie
        for codes in columns:
            later, earlier = codes[start + 1:stop + 1], codes[start:stop]
            order = np.where(later > earlier, np.int8(1), np.where(later < earlier, np.int8(-1), order))
        if not (order > 0).all():
            return False
    return True


def _compact(frame: pd.DataFrame, table: str) -> bool:
    """Whether ``frame`` already has the table's columns, dtypes and sorted categories."""
    if list(frame.columns) != list(COLUMNS[table]):
        return False
    for column in COLUMNS[table]:
        dtype = frame[column].dtype
        if column in NAME_COLUMNS[table]:
            if not isinstance(dtype, pd.CategoricalDtype) or not dtype.categories.is_monotonic_increasing:
                return False
        elif column in READ_INT_DTYPES:
            if dtype != narrowest_int(READ_INT_DTYPES[column], frame[column].to_numpy()):
                return False
        elif dtype != np.float64:
            return False
    return True


def tidy_table(frame: pd.DataFrame, table: str) -> pd.DataFrame:
    """Columns, dtypes (names categorical), de-duplication (the newest row wins) and the sort of a table.

    Chunks are written sorted and runs are truncated on resume, so a run's rows
    are normally already in order: checked in one vectorized pass over the
    codes, and only sorted when they are not (a resumed run that skipped
    truncation, chunks from an older format).
    """
    if not _compact(frame, table):
        gather = gatherer(table)
        if len(frame):
            gather.add_frame(frame)
        frame = gather.frame()
    keys = list(SORT_KEYS[table])
    if _strictly_sorted(frame, keys):
        return frame
    frame = frame.drop_duplicates(subset=keys, keep="last")
    return frame.sort_values(keys, kind="mergesort").reset_index(drop=True)


def read_table(path: Path, table: str, where: RowFilter | None = None) -> pd.DataFrame:
    """One table of the run directory ``path``: the rows passing ``where``, tidy (see :func:`tidy_table`)."""
    return tidy_table(read_rows(Path(path) / table, table, where), table)


def load_run(path: str | os.PathLike, stats: Iterable[str] | None = None, *, nets: Iterable[str] | None = None,
             layers: Iterable[str] | None = None, phases: Iterable[str] | None = None,
             steps: slice | Iterable[int] | None = None) -> Run:
    """Open a run directory, complete or partial (a run killed mid-write reads up to its last flush).

    The JSON files and alerts are read now; the tables when first used, and
    then only the rows that pass the filters (pushed down to the Parquet files:
    other columns and rows are never decoded).

    Parameters
    ----------
    path : str or Path
        The run directory.
    stats, nets, layers, phases : iterable of str, optional
        Keep only these layer statistics, nets, layer names (``named_modules`` paths, or parameter and
        operator names) and phases of the layers table.
    steps : slice or iterable of int, optional
        Keep only these steps (both tables): ``slice(1000, None)`` is step 1000 onwards.

    Returns
    -------
    Run

    Raises
    ------
    ValueError
        If ``path`` is not a directory holding a gradscope run, or a filter is not a collection of names.

    Examples
    --------
    >>> run = load_run("runs/sn", stats=["sigma", "grad_out_norm"], nets=["D"])  # doctest: +SKIP
    >>> run.stat("grad_out_norm", net="D", phase="d").tail()  # doctest: +SKIP
    """
    root = Path(path)
    markers = ("status.json", "config.json", "layers", "scalars")
    if not root.is_dir() or not any((root / m).exists() for m in markers):
        raise ValueError(f"{str(root)!r} is not a gradscope run directory (no status.json, config.json or tables)")
    where = RowFilter.build(stats, nets, layers, phases, steps)
    alert_path = root / "alerts.jsonl"
    alert_rows = read_jsonl(alert_path) if alert_path.exists() else []
    for row in alert_rows:  # rows from before grouped events name one layer (or none) in "layer"
        if not isinstance(row.get("layers"), list):
            layer = row.get("layer")
            row["layers"] = [layer] if isinstance(layer, str) and layer else []
    alerts = pd.DataFrame(alert_rows, columns=list(ALERT_COLUMNS))
    if len(alerts):
        alerts = alerts.sort_values(["step", "rule", "net", "layer"], kind="mergesort").reset_index(drop=True)
    return Run(path=root, alerts=alerts, where=where, config=_json_object(root / "config.json"),
               provenance=_json_object(root / "provenance.json"), status=_json_object(root / "status.json"),
               architecture=_json_object(root / "architecture.json"))


def _json_object(path: Path) -> dict[str, Any]:
    """A run's JSON file as a dict (``{}`` when missing); anything else is a one-line error naming the file."""
    try:
        data = read_json(path)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds a JSON {type(data).__name__}, not an object")
    return data
