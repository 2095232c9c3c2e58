"""The wide layers chunk built with numpy (``to_wide``) equals what the pandas implementation it replaced built,
and the host-side row building reused across steps (``layer_frame``, ``row_plan``) gives the same rows."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from torch import nn

from gradscope.record import Recorder
from gradscope.record.outbox import layer_frame
from gradscope.record.table import row_plan
from gradscope.record.wide import KEYS, LAYOUT, LAYOUT_KEY, stat_column, to_wide


def pandas_to_wide(frame: pd.DataFrame) -> pa.Table:
    """The previous ``to_wide`` (a pandas set_index / unstack), kept as the oracle."""
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
    present = long.assign(here=True).set_index([*KEYS, "stat"])["here"].unstack("stat").reindex(wide.index)
    for stat in sorted(str(s) for s in wide.columns):
        values = wide[stat].to_numpy(dtype=np.float64)
        mask = present[stat].isna().to_numpy()
        columns[stat_column(stat)] = pa.array(values, pa.float64(), mask=mask)
    return pa.table(columns).replace_schema_metadata({LAYOUT_KEY: LAYOUT})


def assert_same_table(got: pa.Table, want: pa.Table) -> None:
    """Same schema and metadata, same nulls, same values (NaN equal to NaN)."""
    assert got.schema.equals(want.schema, check_metadata=True), (got.schema, want.schema)
    for name in want.schema.names:
        a, b = got.column(name).combine_chunks(), want.column(name).combine_chunks()
        assert a.is_valid().equals(b.is_valid()), name
        if pa.types.is_floating(b.type):
            assert np.array_equal(a.fill_null(0.0).to_numpy(), b.fill_null(0.0).to_numpy(), equal_nan=True), name
        else:
            assert a.equals(b), name


LAYER_NAMES = ["a", "b", "B", "z", "ä", "a.b", "10", "9", "0.weight"]
STAT_NAMES = ["grad_out_norm", "param_norm", "act_in_mean", "sigma_op", "Z"]


def random_frame(rng: np.random.Generator, dtypes: str) -> pd.DataFrame:
    """Long rows with repeated (key, stat) pairs, NaN values, absent statistics, several steps, phases, nets."""
    n = int(rng.integers(1, 300))
    frame = pd.DataFrame({
        "step": rng.integers(0, 5, n) * int(rng.choice([1, 1000])), "phase": rng.choice(["d", "g", "train"], n),
        "net": rng.choice(["D", "G"], n), "layer": rng.choice(LAYER_NAMES, n), "layer_index": rng.integers(0, 4, n),
        "stat": rng.choice(STAT_NAMES, n), "value": np.where(rng.random(n) < 0.2, np.nan, rng.normal(size=n))})
    frame = frame.iloc[rng.permutation(n)].reset_index(drop=True)
    if dtypes == "object":
        for column in ("phase", "net", "layer", "stat"):
            frame[column] = frame[column].astype(object)
    elif dtypes == "read":  # as a reader gathers them: sorted categories, some unused; narrow integers
        pools = {"phase": ["d", "g", "train", "x"], "net": ["D", "G", "H"], "layer": [*LAYER_NAMES, "q"],
                 "stat": [*STAT_NAMES, "unused"]}
        for column, pool in pools.items():
            frame[column] = pd.Categorical(frame[column], categories=sorted(pool))
        frame["step"], frame["layer_index"] = frame["step"].astype(np.int32), frame["layer_index"].astype(np.int16)
    return frame


@pytest.mark.parametrize("dtypes", ["str", "object", "read"])
def test_to_wide_equals_the_pandas_implementation_on_random_frames(dtypes: str) -> None:
    rng = np.random.default_rng(["str", "object", "read"].index(dtypes))
    repeated = 0
    for _ in range(150):
        frame = random_frame(rng, dtypes)
        repeated += int(frame.duplicated(subset=[*KEYS, "stat"]).sum())
        assert_same_table(to_wide(frame), pandas_to_wide(frame))
    assert repeated > 100  # the frames did repeat keys


def test_to_wide_keeps_the_last_repeated_value_a_present_nan_and_a_null_for_absent() -> None:
    frame = pd.DataFrame({"step": [2, 1, 1, 1, 2], "phase": ["d"] * 5, "net": ["D", "D", "D", "G", "D"],
                          "layer": ["fc", "fc", "fc", "fc", "fc"], "layer_index": [0] * 5,
                          "stat": ["a", "b", "b", "a", "a"], "value": [1.0, 2.0, np.nan, 4.0, 5.0]})
    table = to_wide(frame)
    assert_same_table(table, pandas_to_wide(frame))
    assert table.column("step").to_pylist() == [1, 1, 2] and table.column("net").to_pylist() == ["D", "G", "D"]
    assert table.column("stat.a").to_pylist() == [None, 4.0, 5.0]  # (2, D, fc, a) twice: the last one
    b = table.column("stat.b").combine_chunks()
    assert b.is_valid().to_pylist() == [True, False, False] and np.isnan(b.to_numpy(zero_copy_only=False)[0])


def test_to_wide_of_no_rows_and_of_categories_in_any_order() -> None:
    empty = random_frame(np.random.default_rng(0), "str").iloc[:0]
    assert_same_table(to_wide(empty), pandas_to_wide(empty))
    assert to_wide(empty).num_rows == 0 and to_wide(empty).schema.names == list(KEYS)
    # Key rows by name and statistic columns by name, whatever order the categories come in.
    frame = pd.DataFrame({"step": [0, 0, 0], "phase": ["d"] * 3, "net": ["D"] * 3,
                          "layer": pd.Categorical(["b", "a", "a"], categories=["b", "a"]), "layer_index": [0, 0, 0],
                          "stat": pd.Categorical(["y", "x", "y"], categories=["y", "x"]), "value": [1.0, 2.0, 3.0]})
    table = to_wide(frame)
    assert table.column("layer").to_pylist() == ["a", "b"] and table.schema.names[-2:] == ["stat.x", "stat.y"]
    assert table.column("stat.y").to_pylist() == [3.0, 1.0]


def test_layer_frame_is_the_per_step_frames_concatenated() -> None:
    rng = np.random.default_rng(1)
    steps = []
    for step in range(4):
        frame = random_frame(rng, "object").iloc[: int(rng.integers(0, 30)) if step != 2 else 0]
        steps.append({column: frame[column].to_numpy() for column in
                      ("step", "phase", "net", "layer", "layer_index", "stat", "value")})
    got = layer_frame(steps)
    want = pd.concat([pd.DataFrame(c) for c in steps if len(c["value"])], ignore_index=True)
    pd.testing.assert_frame_equal(got, want)
    assert len(layer_frame(steps[2:3])) == 0 and list(layer_frame(steps[2:3])) == list(steps[0])


def test_a_row_plan_is_reused_until_the_layers_positions_change() -> None:
    rec = Recorder(nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1)), stats=["grad_out_norm", "param_norm"])
    record, plans = SimpleNamespace(nets=("model",)), {}
    plan = row_plan(record, rec.layers, rec.stats, plans)
    assert row_plan(record, rec.layers, rec.stats, plans) is plan
    first, last = sorted(rec.layers["model"], key=lambda layer: layer.order)
    first.order, last.order = last.order, first.order  # as positions learned on a first run
    moved = row_plan(record, rec.layers, rec.stats, plans)
    assert moved is not plan
    top = moved.stat.tolist().index("grad_out_norm")  # the first row of the statistic: now the other layer
    assert moved.layer[top] == last.name and moved.layer_index[top] == last.order == 0
    assert plan.layer[plan.stat.tolist().index("grad_out_norm")] == first.name
    assert len(moved.stat) == len(plan.stat) and set(moved.stat) >= {"grad_out_norm", "param_norm"}
