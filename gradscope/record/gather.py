"""Gather a table's rows, batch by batch, into compact columns: names as small integer codes.

A long run's layers table has ~10^8 rows of seven columns. Converting Arrow
batches to pandas one file at a time and concatenating keeps two or three
copies alive at once; here each batch's values go straight into the final
arrays (preallocated when the row count is known from the Parquet footers),
and names are mapped to codes of one growing dictionary, so the peak is close
to the final table. Integer columns take the narrowest of their dtypes that
holds every value (:data:`~gradscope.record.columns.READ_INT_DTYPES`), widened
in place if a later batch needs more: 4 (step) + 2 (layer_index) + 8 (value)
+ 1 per name column bytes per row.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

from gradscope.record.columns import COLUMNS, NAME_COLUMNS, READ_INT_DTYPES

_CODE_TYPES = (np.int8, np.int16, np.int32)


def narrowest_int(dtypes: Sequence[np.dtype | str], values: np.ndarray, column: str = "column") -> np.dtype:
    """The first of ``dtypes`` (narrowest first) that holds every value of ``values``.

    >>> narrowest_int(["int16", "int32"], np.array([3, 40_000])).name
    'int32'
    """
    if len(values):
        low, high = values.min(), values.max()
        for dtype in map(np.dtype, dtypes):
            if np.iinfo(dtype).min <= low and high <= np.iinfo(dtype).max:
                return dtype
        raise ValueError(f"{column} holds {high if high > np.iinfo(dtype).max else low}, beyond {dtype.name}")
    return np.dtype(dtypes[0])


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
    dtypes : dict of str to str or tuple of str
        numpy dtypes of the other columns; a tuple (integers, narrowest first) means the first that holds
        every value gathered.
    capacity : int, optional
        The total row count when known: arrays are allocated once and filled in place.

    Examples
    --------
    >>> g = ColumnGatherer(["step", "stat"], ["stat"], {"step": "int64"}, capacity=3)
    >>> g.add_frame(pd.DataFrame({"step": [0, 0, 1], "stat": ["b", "a", "b"]}))
    >>> g.frame()["stat"].cat.codes.tolist()
    [1, 0, 1]
    """

    def __init__(self, columns: Sequence[str], names: Sequence[str], dtypes: dict[str, str | tuple[str, ...]],
                 capacity: int | None = None) -> None:
        self.columns, self.names = list(columns), [c for c in columns if c in names]
        ladders = {c: dtypes[c] if isinstance(dtypes[c], tuple) else (dtypes[c],)
                   for c in self.columns if c not in self.names}
        self.ladders = {c: tuple(map(np.dtype, ladder)) for c, ladder in ladders.items()}
        self.dtypes = {c: ladder[0] for c, ladder in self.ladders.items()}
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

    def _width(self, column: str, values: np.ndarray) -> np.dtype:
        """The dtype ``column`` needs once ``values`` join it (never narrower than it already is)."""
        if column in self.names:
            return np.dtype(_code_type(len(self.dictionaries[column])))
        ladder = self.ladders[column]
        if len(ladder) > 1 and len(values):
            current = ladder.index(self.dtypes[column])
            self.dtypes[column] = narrowest_int(ladder[current:], values, column)
        return self.dtypes[column]

    def _target(self, column: str, dtype: np.dtype, n: int) -> np.ndarray:
        """The slice of ``column``'s preallocated array that the next ``n`` rows fill."""
        target = self.arrays[column]
        if dtype.itemsize > target.dtype.itemsize:  # a name or a number beyond the current width: widen
            target = self.arrays[column] = target.astype(dtype)
        if self.filled + n > len(target):
            raise ValueError(f"more rows than the {self.capacity} the chunk footers announced")
        return target[self.filled:self.filled + n]

    def _store(self, column: str, values: np.ndarray) -> None:
        dtype = self._width(column, values)
        if self.capacity is None:
            self.parts[column].append(values.astype(dtype, copy=False))
        else:
            self._target(column, dtype, len(values))[:] = values

    def add_taken(self, sources: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
        """Add rows given per column as ``(source, index)``: the column's new values are ``source[index]``.

        With preallocated arrays the values are taken straight into them (no long temporary per column):
        a 400k-iteration layers table is ~2*10^8 rows, and every fresh page costs.
        """
        n = len(next(iter(sources.values()))[1])
        for column in self.columns:
            source, index = sources[column]
            dtype = self._width(column, source)
            if self.capacity is None:
                self.parts[column].append(source.astype(dtype, copy=False)[index])
            else:
                np.take(source.astype(dtype, copy=False), index, out=self._target(column, dtype, n), mode="clip")
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
                values = frame[column].to_numpy(dtype=np.int64 if len(self.ladders[column]) > 1
                                                else self.dtypes[column])
            self._store(column, values)
        self.filled += len(frame)

    def frame(self) -> pd.DataFrame:
        """The gathered rows; name columns categorical with sorted categories."""
        data: dict[str, object] = {}
        for column in self.columns:
            if self.capacity is None:
                parts = self.parts.pop(column)
                dtype = self._width(column, np.zeros(0))
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
    dtypes = {c: READ_INT_DTYPES.get(c, "float64") for c in chosen if c not in NAME_COLUMNS[table]}
    return ColumnGatherer(chosen, NAME_COLUMNS[table], dtypes, capacity)
