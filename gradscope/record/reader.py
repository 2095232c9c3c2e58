"""Reading a run directory back: ``load_run(path) -> Run`` with pandas tables, also for partial runs."""
from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from gradscope.record.storage import TABLES, chunk_files, read_chunk, read_json, read_jsonl
from gradscope.record.stats import STATS
from gradscope.record.table import LAYER_COLUMNS, SCALAR_COLUMNS

#: One row per alert event. ``layer`` holds the event's layer (or scalar) names joined by commas (one name
#: for a one-layer event), ``layers`` the same names as a list, input to output; rows written before
#: ``layers`` existed read back with ``layers == [layer]``.
ALERT_COLUMNS: tuple[str, ...] = ("step", "phase", "net", "layer", "layers", "rule", "kind", "stat", "value",
                                  "threshold", "message")
_KEYS = {"layers": ["step", "phase", "net", "layer_index", "layer", "stat"], "scalars": ["step", "name"]}
_COLUMNS = {"layers": LAYER_COLUMNS, "scalars": SCALAR_COLUMNS}


@dataclass
class Run:
    """A run directory's contents.

    Attributes
    ----------
    layers : pandas.DataFrame
        Columns ``step, phase, net, layer, layer_index, stat, value``, sorted by
        step, phase, net, layer_index, stat.
    scalars : pandas.DataFrame
        Columns ``step, name, value`` sorted by step and name.
    alerts : pandas.DataFrame
        One row per alert event (``step, phase, net, layer, layers, rule, kind, stat, value, threshold,
        message``; see :data:`ALERT_COLUMNS`).
    config, provenance, status, architecture : dict
        The JSON files (empty dict when missing).
    """

    path: Path | None
    layers: pd.DataFrame
    scalars: pd.DataFrame
    alerts: pd.DataFrame
    config: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    status: dict[str, Any] = field(default_factory=dict)
    architecture: dict[str, Any] = field(default_factory=dict)

    def layer_order(self, net: str) -> list[str]:
        """The net's layer names (modules, not parameters or operator slices) from input to output."""
        rows = self.layers[self.layers["net"] == net]
        per_parameter = [name for name, info in STATS.items() if info.target == "param"]
        rows = rows[~rows["stat"].isin(per_parameter)]
        names = set(rows[rows["stat"].isin([n for n, i in STATS.items() if i.target == "layer"])]["layer"])
        if names:  # operator rows such as 'attn.in_proj_weight[q]' are not layers
            rows = rows[rows["layer"].isin(names)]
        rows = rows[["layer_index", "layer"]].drop_duplicates()
        return rows.sort_values("layer_index", kind="stable")["layer"].tolist()

    def stat(self, stat: str, net: str | None = None, phase: str | None = None) -> pd.DataFrame:
        """One statistic as a wide table: one row per step, one column per layer (input to output).

        Examples
        --------
        >>> run.stat("grad_out_norm", net="D", phase="d")  # doctest: +SKIP
        """
        rows = self.layers[self.layers["stat"] == stat]
        if net is not None:
            rows = rows[rows["net"] == net]
        if phase is not None:
            rows = rows[rows["phase"] == phase]
        if rows["net"].nunique() > 1 or rows["phase"].nunique() > 1:
            raise ValueError(f"stat {stat!r} is recorded for several nets or phases; pass net= and phase=")
        wide = rows.pivot_table(index="step", columns="layer", values="value", aggfunc="last")
        order = rows[["layer_index", "layer"]].drop_duplicates().sort_values("layer_index")["layer"]
        return wide[[name for name in order if name in wide.columns]]


def tidy_table(frame: pd.DataFrame, table: str) -> pd.DataFrame:
    """Columns, dtypes, de-duplication (the newest row wins) and the deterministic sort of a table."""
    columns = list(_COLUMNS[table])
    frame = frame[columns].copy() if len(frame) else pd.DataFrame({c: [] for c in columns})
    for column in columns:
        if column in ("step", "layer_index"):
            frame[column] = frame[column].astype("int64")
        elif column == "value":
            frame[column] = frame[column].astype("float64")
        else:
            frame[column] = frame[column].astype("str")
    # A resumed run that skipped truncate_after could repeat a key: the newest chunk wins.
    keys = _KEYS[table]
    frame = frame.drop_duplicates(subset=keys, keep="last")
    return frame.sort_values(keys, kind="mergesort").reset_index(drop=True)


def _read_table(folder: Path, table: str, stats: set[str] | None) -> pd.DataFrame:
    frames = []
    for path in chunk_files(folder):
        try:
            frame = read_chunk(path)
        except (OSError, ValueError, pd.errors.ParserError) as exc:
            warnings.warn(f"skipping unreadable chunk {path}: {exc}", stacklevel=3)
            continue
        if stats is not None and table == "layers":
            frame = frame[frame["stat"].isin(stats)]
        frames.append(frame)
    return tidy_table(pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(), table)


def load_run(path: str | os.PathLike, stats: Iterable[str] | None = None) -> Run:
    """Read a run directory, complete or partial (a run killed mid-write reads up to its last flush).

    Parameters
    ----------
    path : str or Path
        The run directory.
    stats : iterable of str, optional
        Keep only these layer statistics (saves memory on long runs).

    Returns
    -------
    Run

    Raises
    ------
    ValueError
        If ``path`` is not a directory holding a gradscope run.

    Examples
    --------
    >>> run = load_run("runs/sn")  # doctest: +SKIP
    >>> run.layers.query("stat == 'sigma' and net == 'D'")  # doctest: +SKIP
    """
    root = Path(path)
    markers = ("status.json", "config.json", "layers", "scalars")
    if not root.is_dir() or not any((root / m).exists() for m in markers):
        raise ValueError(f"{str(root)!r} is not a gradscope run directory (no status.json, config.json or tables)")
    chosen = None if stats is None else set(stats)
    tables = {table: _read_table(root / table, table, chosen) for table in TABLES}
    alert_path = root / "alerts.jsonl"
    alert_rows = read_jsonl(alert_path) if alert_path.exists() else []
    for row in alert_rows:  # rows from before grouped events name one layer (or none) in "layer"
        if not isinstance(row.get("layers"), list):
            layer = row.get("layer")
            row["layers"] = [layer] if isinstance(layer, str) and layer else []
    alerts = pd.DataFrame(alert_rows, columns=list(ALERT_COLUMNS))
    if len(alerts):
        alerts = alerts.sort_values(["step", "rule", "net", "layer"], kind="mergesort").reset_index(drop=True)
    return Run(path=root, layers=tables["layers"], scalars=tables["scalars"], alerts=alerts,
               config=read_json(root / "config.json") or {}, provenance=read_json(root / "provenance.json") or {},
               status=read_json(root / "status.json") or {}, architecture=read_json(root / "architecture.json") or {})
