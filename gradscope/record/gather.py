"""Gather a table's rows, batch by batch, into compact columns: names as small integer codes.

A long run's layers table has ~10^8 rows of seven columns. Converting Arrow
batches to pandas one file at a time and concatenating keeps two or three
copies alive at once; here each batch's values go straight into the final
arrays (preallocated when the row count is known from the Parquet footers),
and names are mapped to codes of one growing dictionary, so the peak is close
to the final table: 8 (step) + 4 (layer_index) + 8 (value) + 1 per name column
bytes per row.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

from gradscope.record.columns import COLUMNS, INT_COLUMNS, NAME_COLUMNS

_CODE_TYPES = (np.int8, np.int16, np.int32)


def _code_type(n_names: int) -> type:
    for dtype in _CODE_TYPES:
        if n_names <= np.iinfo(dtype).max:
            return dtype
    raise ValueError(f"{n_names} distinct names in one column: more than a table of statistics can hold")


class ColumnGatherer:
    """Accumulates batches of a table into numpy columns, then one pandas frame.

    Parameters
    ----------
    columns : sequence of str
        The columns, in order.
    names : sequence of str
        Which of them hold names (categorical in the result, categories sorted).
    dtypes : dict of str to str
        numpy dtypes of the other columns.
    capacity : int, optional
        The total row count when known: arrays are allocated once and filled in place.

    Examples
    --------
    >>> g = ColumnGatherer(["step", "stat"], ["stat"], {"step": "int64"}, capacity=3)
    >>> g.add_frame(pd.DataFrame({"step": [0, 0, 1], "stat": ["b", "a", "b"]}))
    >>> g.frame()["stat"].cat.codes.tolist()
    [1, 0, 1]
    """

    def __init__(self, columns: Sequence[str], names: Sequence[str], dtypes: dict[str, str],
                 capacity: int | None = None) -> None:
        self.columns, self.names = list(columns), [c for c in columns if c in names]
        self.dtypes = {c: np.dtype(dtypes[c]) for c in self.columns if c not in self.names}
        self.dictionaries: dict[str, dict[str, int]] = {c: {} for c in self.names}
        self.capacity = capacity
        self.filled = 0
        if capacity is not None:
            self.arrays: dict[str, np.ndarray] = {c: np.empty(capacity, dtype=self.dtypes.get(c, np.int8))
                                                  for c in self.columns}
        self.parts: dict[str, list[np.ndarray]] = {c: [] for c in self.columns}

    def encode(self, column: str, dictionary: Sequence[str], indices: np.ndarray) -> np.ndarray:
        """Codes of this gatherer's dictionary for names given as ``dictionary[indices]``."""
        known = self.dictionaries[column]
        lookup = np.fromiter((known.setdefault(str(name), len(known)) for name in dictionary), dtype=np.int64,
                             count=len(dictionary)).astype(_code_type(len(known)))
        return lookup[indices] if len(indices) else np.zeros(0, dtype=lookup.dtype)

    def _store(self, column: str, values: np.ndarray) -> None:
        if self.capacity is None:
            dtype = _code_type(len(self.dictionaries[column])) if column in self.names else self.dtypes[column]
            self.parts[column].append(values.astype(dtype, copy=False))
            return
        target = self.arrays[column]
        if column in self.names:
            needed = _code_type(len(self.dictionaries[column]))
            if np.iinfo(needed).max > np.iinfo(target.dtype).max:  # a name beyond the codes' range: widen
                target = self.arrays[column] = target.astype(needed)
        if self.filled + len(values) > len(target):
            raise ValueError(f"more rows than the {self.capacity} the chunk footers announced")
        target[self.filled:self.filled + len(values)] = values

    def add_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        """Add rows given as one numpy array per column (names already as :meth:`encode` codes)."""
        n = len(next(iter(arrays.values())))
        for column in self.columns:
            self._store(column, arrays[column])
        self.filled += n

    def values_of(self, column: str, array: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """An Arrow column as numpy: names as this gatherer's codes, numbers as they are."""
        if isinstance(array, pa.ChunkedArray):
            array = array.combine_chunks()
        if column not in self.names:
            return array.to_numpy(zero_copy_only=False)
        if not pa.types.is_dictionary(array.type):
            array = array.dictionary_encode()
        return self.encode(column, array.dictionary.to_pylist(), array.indices.to_numpy(zero_copy_only=False))

    def add_batch(self, batch: pa.RecordBatch | pa.Table) -> None:
        """Add an Arrow batch whose name columns are dictionary-encoded (or plain strings)."""
        for column in self.columns:
            self._store(column, self.values_of(column, batch.column(column)))
        self.filled += batch.num_rows

    def add_frame(self, frame: pd.DataFrame) -> None:
        """Add a pandas frame holding the columns (names as strings or categoricals)."""
        for column in self.columns:
            if column in self.names:
                codes, uniques = pd.factorize(frame[column].astype(str))
                values = self.encode(column, list(uniques), codes)
            else:
                values = frame[column].to_numpy(dtype=self.dtypes[column])
            self._store(column, values)
        self.filled += len(frame)

    def frame(self) -> pd.DataFrame:
        """The gathered rows; name columns categorical with sorted categories."""
        data: dict[str, object] = {}
        for column in self.columns:
            if self.capacity is None:
                parts = self.parts.pop(column)
                dtype = _code_type(len(self.dictionaries.get(column, {}))) if column in self.names \
                    else self.dtypes[column]
                values = np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype=dtype)
            else:
                values = self.arrays.pop(column)[:self.filled]
            if column in self.names:
                appearance = list(self.dictionaries[column])
                categories = sorted(appearance)
                rank = np.empty(len(appearance), dtype=values.dtype)
                rank[np.argsort(np.array(appearance, dtype=object), kind="stable")] = np.arange(len(appearance))
                np.take(rank, values, out=values)  # in place: codes now index the sorted categories
                data[column] = pd.Categorical.from_codes(values, categories=pd.Index(categories, dtype=str),
                                                         validate=False)
            else:
                data[column] = values
        return pd.DataFrame(data, copy=False)


def gatherer(table: str, columns: Sequence[str] | None = None, capacity: int | None = None) -> ColumnGatherer:
    """An empty :class:`ColumnGatherer` for ``table``'s columns and dtypes."""
    chosen = list(COLUMNS[table] if columns is None else columns)
    dtypes = {c: INT_COLUMNS.get(c, "float64") for c in chosen if c not in NAME_COLUMNS[table]}
    return ColumnGatherer(chosen, NAME_COLUMNS[table], dtypes, capacity)
