"""The columns of a run's tables, their sort keys and dtypes (shared by writers and readers)."""
from __future__ import annotations

#: Columns of each table, in order, and which of them hold names (categorical when read).
COLUMNS: dict[str, tuple[str, ...]] = {
    "layers": ("step", "phase", "net", "layer", "layer_index", "stat", "value"),
    "scalars": ("step", "name", "value"),
}
#: The sort keys of each table; a (step, ..., stat) key appears once (the newest row wins).
SORT_KEYS: dict[str, tuple[str, ...]] = {"layers": ("step", "phase", "net", "layer_index", "layer", "stat"),
                                         "scalars": ("step", "name")}
NAME_COLUMNS: dict[str, tuple[str, ...]] = {"layers": ("phase", "net", "layer", "stat"), "scalars": ("name",)}
#: Integer columns and their dtypes on disk. ``layer_index`` (a position in a net) fits 32 bits; steps get 64.
INT_COLUMNS: dict[str, str] = {"step": "int64", "layer_index": "int32"}
#: Integer columns in memory: the first of these dtypes that holds every value (a 400k-iteration run's
#: layers table has ~2*10^8 rows, so each byte per row is 0.2 GB).
READ_INT_DTYPES: dict[str, tuple[str, ...]] = {"step": ("int32", "int64"), "layer_index": ("int16", "int32")}
