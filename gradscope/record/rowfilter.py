"""Which rows of a run's tables to read: :class:`RowFilter`, pushed down to Parquet or applied in memory."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow.compute as pc
import pyarrow.dataset as ds

from gradscope.record.columns import COLUMNS


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


def replace_stats(where: RowFilter) -> RowFilter:
    """``where`` without its statistics (they select columns of a wide chunk, not rows)."""
    return RowFilter(None, where.nets, where.layers, where.phases, where.steps)
