"""Parquet run tables: round trips against the CSV format, filters, segments, SIGKILL, conversion, damage."""
from __future__ import annotations

import random
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import numpy as np
import pandas as pd
import pytest

import gradscope.record.storage as storage
from gradscope.cli import main as cli_main
from gradscope.record import RunWriter, load_run
from gradscope.record.chunks import chunk_files, frame_to_csv
from gradscope.record.reader import tidy_table

STATS = ["grad_out_norm", "sigma", "NA", "param_norm"]
LAYERS = ["conv1", "conv2", "NA", "fc", "conv1.weight"]


def random_flushes(seed: int, n_flushes: int = 6, steps_per_flush: int = 3) -> list[pd.DataFrame]:
    """Long-table rows as a recorder writes them: each step's rows complete, some stats absent, NaN / inf."""
    rng = np.random.default_rng(seed)
    flushes, step = [], 0
    for _ in range(n_flushes):
        rows = []
        for _ in range(steps_per_flush):
            for phase, net in (("d", "D"), ("g", "D"), ("g", "G")):
                for index, layer in enumerate(LAYERS):
                    for stat in STATS:
                        if rng.random() < 0.3:
                            continue  # not every statistic on every layer
                        value = rng.choice([rng.normal(), np.nan, np.inf, -np.inf, 0.0], p=[.85, .05, .04, .03, .03])
                        rows.append((step, phase, net, layer, index, stat, float(value)))
            step += int(rng.integers(1, 4))
        flushes.append(pd.DataFrame(rows, columns=["step", "phase", "net", "layer", "layer_index", "stat", "value"]))
    return flushes


def write_parquet_run(path, flushes):
    writer = RunWriter(path, fsync=False)
    writer.set_status("running", step=0)
    for frame in flushes:
        writer.append_layers(frame)
        writer.append_scalars(pd.DataFrame({"step": frame["step"].unique(), "name": "loss",
                                            "value": np.arange(frame["step"].nunique(), dtype=float)}))
        writer.flush()
    return writer


def write_csv_run(path, flushes):
    """The format written before Parquet chunks: one CSV per flush."""
    (path / "layers").mkdir(parents=True)
    (path / "scalars").mkdir()
    (path / "status.json").write_text('{"state": "running", "step": 0}')
    for i, frame in enumerate(flushes, start=1):
        (path / "layers" / f"{i:06d}.csv").write_text(frame_to_csv(frame))
        scalars = pd.DataFrame({"step": frame["step"].unique(), "name": "loss",
                                "value": np.arange(frame["step"].nunique(), dtype=float)})
        (path / "scalars" / f"{i:06d}.csv").write_text(frame_to_csv(scalars))


def expected_layers(flushes) -> pd.DataFrame:
    """The oracle: plain pandas, strings, sort and de-duplication spelled out."""
    frame = pd.concat(flushes, ignore_index=True)
    keys = ["step", "phase", "net", "layer_index", "layer", "stat"]
    frame = frame.drop_duplicates(subset=keys, keep="last").sort_values(keys, kind="mergesort")
    return frame.reset_index(drop=True)


def as_plain(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.astype({c: str for c in frame.columns if isinstance(frame[c].dtype, pd.CategoricalDtype)}
                        ).astype({"layer_index": "int64"} if "layer_index" in frame.columns else {})


@pytest.mark.parametrize("seed", [0, 1])
def test_parquet_round_trip_equals_the_rows_written_and_the_csv_format(tmp_path, seed) -> None:
    flushes = random_flushes(seed)
    write_parquet_run(tmp_path / "parquet", flushes)
    write_csv_run(tmp_path / "csv", flushes)
    for kind in ("parquet", "csv"):  # counted from footers (or lines) before anything is read
        fresh = load_run(tmp_path / kind)
        counts = fresh.row_count("layers"), fresh.row_count("scalars")
        assert "tables read: none" in repr(fresh) and counts == (len(fresh.layers), len(fresh.scalars))
    new, old = load_run(tmp_path / "parquet"), load_run(tmp_path / "csv")
    pd.testing.assert_frame_equal(new.layers, old.layers)
    pd.testing.assert_frame_equal(new.scalars, old.scalars)
    pd.testing.assert_frame_equal(as_plain(new.layers), expected_layers(flushes), check_dtype=False)
    dtypes = new.layers.dtypes
    assert (dtypes["step"], dtypes["layer_index"], dtypes["value"]) == (np.int32, np.int16, np.float64)
    assert new.scalars["step"].dtype == np.int32
    for column in ("phase", "net", "layer", "stat"):
        categories = list(new.layers[column].cat.categories)
        assert categories == sorted(categories)
    # NaN recorded stays a row with NaN; a statistic not recorded has no row at all
    assert new.layers["value"].isna().sum() == pd.concat(flushes)["value"].isna().sum()
    assert len(list((tmp_path / "parquet" / "layers").glob("*.parquet"))) == len(flushes)
    # one row group per (phase, net): reading D's statistics skips G's pages
    import pyarrow.parquet as pq
    meta = pq.read_metadata(tmp_path / "parquet" / "layers" / "000001.parquet")
    groups = {(meta.row_group(i).column(1).statistics.min, meta.row_group(i).column(2).statistics.max)
              for i in range(meta.num_row_groups)}
    assert meta.schema.names[1:3] == ["phase", "net"] and groups == {("d", "D"), ("g", "D"), ("g", "G")}


def test_integer_columns_widen_when_a_later_chunk_holds_larger_values(tmp_path) -> None:
    # Narrow dtypes (int32 steps, int16 layer indices) until a value needs more: then the whole column
    # widens, in the footer-sized path (no filter) and the growing one (a layer filter), values exact.
    flushes = random_flushes(3, n_flushes=4)
    flushes[-1] = flushes[-1].assign(step=flushes[-1]["step"] + 2**31, layer_index=flushes[-1]["layer_index"] + 40_000)
    write_parquet_run(tmp_path / "run", flushes)
    for run in (load_run(tmp_path / "run"), load_run(tmp_path / "run", layers=["conv1", "fc"])):
        layers = run.layers
        assert (layers["step"].dtype, layers["layer_index"].dtype) == (np.int64, np.int32)
        expect = expected_layers(flushes)
        expect = expect[expect["layer"].isin(run.where.layers or LAYERS)].reset_index(drop=True)
        pd.testing.assert_frame_equal(as_plain(layers), expect, check_dtype=False)
        assert layers["step"].max() == flushes[-1]["step"].max() > 2**31
    assert load_run(tmp_path / "run", steps=slice(0, 2**31 - 1)).layers["step"].dtype == np.int32


def test_filters_equal_filtering_the_whole_table_afterwards(tmp_path) -> None:
    flushes = random_flushes(2, n_flushes=8)
    write_parquet_run(tmp_path / "run", flushes)
    full = load_run(tmp_path / "run").layers
    steps = sorted(full["step"].unique())
    rng = random.Random(3)
    cases = [dict(stats=["sigma"]), dict(nets=["G"]), dict(layers=["NA", "fc"]), dict(phases=["g"]),
             dict(steps=slice(steps[4], None)), dict(steps=slice(None, steps[7])), dict(steps=steps[::3]),
             dict(stats=["NA", "param_norm"], nets=["D"], phases=["d"], steps=slice(steps[2], steps[9])),
             dict(stats=["not recorded"])]
    for _ in range(6):
        cases.append(dict(stats=rng.sample(STATS, 2), layers=rng.sample(LAYERS, 3), steps=rng.sample(steps, 5)))
    for case in cases:
        keep = pd.Series(True, index=full.index)
        for key, column in (("stats", "stat"), ("nets", "net"), ("layers", "layer"), ("phases", "phase")):
            if key in case:
                keep &= full[column].astype(str).isin(case[key])
        if isinstance(case.get("steps"), slice):
            s = case["steps"]
            keep &= (full["step"] >= (s.start if s.start is not None else -1)) & \
                    (full["step"] < (s.stop if s.stop is not None else 10 ** 9))
        elif "steps" in case:
            keep &= full["step"].isin(case["steps"])
        got = load_run(tmp_path / "run", **case).layers
        pd.testing.assert_frame_equal(as_plain(got), as_plain(full[keep].reset_index(drop=True)), obj=str(case))


def test_stat_reads_only_its_rows_and_equals_the_pivot_of_the_whole_table(tmp_path) -> None:
    flushes = random_flushes(4)
    write_parquet_run(tmp_path / "run", flushes)
    lazy = load_run(tmp_path / "run")
    wide = lazy.stat("sigma", net="D", phase="d")
    assert "tables read: none" in repr(lazy)  # the long table was never materialized
    eager = load_run(tmp_path / "run")
    _ = eager.layers
    pd.testing.assert_frame_equal(wide, eager.stat("sigma", net="D", phase="d"))
    rows = expected_layers(flushes).query("stat == 'sigma' and net == 'D' and phase == 'd'")
    oracle = rows.pivot_table(index="step", columns="layer", values="value", aggfunc="last", dropna=False)
    order = rows[["layer_index", "layer"]].drop_duplicates().sort_values("layer_index")["layer"]
    oracle = oracle[[c for c in order if c in oracle.columns]]
    np.testing.assert_array_equal(wide.to_numpy(), oracle.to_numpy())
    assert list(wide.columns) == list(oracle.columns) and list(wide.index) == list(oracle.index)


def test_flushes_merge_into_segments_and_a_kill_while_merging_loses_nothing(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(storage, "SEGMENT_FLUSHES", 4)
    flushes = random_flushes(5, n_flushes=10)
    write_parquet_run(tmp_path / "run", flushes)
    names = sorted(p.name for p in (tmp_path / "run" / "layers").iterdir())
    assert names == ["000001-000004.parquet", "000005-000008.parquet", "000009.parquet", "000010.parquet"]
    run = load_run(tmp_path / "run")
    pd.testing.assert_frame_equal(as_plain(run.layers), expected_layers(flushes), check_dtype=False)
    # A kill after the segment's rename, before its flushes were deleted: readers skip the covered flush,
    # the next writer deletes it.
    segment = tmp_path / "run" / "layers" / "000001-000004.parquet"
    write_parquet_run(tmp_path / "single", flushes[:1])
    (tmp_path / "single" / "layers" / "000001.parquet").rename(tmp_path / "run" / "layers" / "000001.parquet")
    assert segment.exists() and (tmp_path / "run" / "layers" / "000001.parquet").exists()
    pd.testing.assert_frame_equal(load_run(tmp_path / "run").layers, run.layers)
    writer = RunWriter(tmp_path / "run", resume=True, fsync=False)
    assert not (tmp_path / "run" / "layers" / "000001.parquet").exists()
    # Truncation rewrites the segment holding the limit and drops the later files.
    limit = int(flushes[5]["step"].iloc[0])
    writer.truncate_after(limit)
    kept = load_run(tmp_path / "run").layers
    assert kept["step"].max() == limit
    pd.testing.assert_frame_equal(as_plain(kept), expected_layers(flushes).query("step <= @limit").reset_index(
        drop=True), check_dtype=False)
    writer.append_layers(flushes[9])
    writer.flush()
    assert chunk_files(tmp_path / "run" / "layers")[-1].name == "000011.parquet"


WRITER = textwrap.dedent("""
    import sys
    import numpy as np, pandas as pd
    import gradscope.record.storage as storage
    from gradscope.record import RunWriter
    storage.SEGMENT_FLUSHES = 3
    writer = RunWriter(sys.argv[1], resume=True)
    step = 0
    while True:
        rows = [(step, "d", "D", f"l{i}", i, s, float(step + i)) for i in range(20) for s in ("a", "b", "c")]
        writer.append_layers(pd.DataFrame(rows, columns=["step", "phase", "net", "layer", "layer_index", "stat",
                                                          "value"]))
        writer.flush()
        step += 1
""")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sigkill_at_a_random_moment_leaves_every_flushed_step_readable(tmp_path, seed) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "status.json").write_text('{"state": "running", "step": 0}')
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(out)], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while len(list((out / "layers").glob("*.parquet"))) < 2:
            if proc.poll() is not None:
                pytest.fail(proc.stderr.read().decode()[-2000:])
            if time.monotonic() > deadline:
                pytest.fail("no chunks in 120 s")
            time.sleep(0.02)
        time.sleep(random.Random(seed).uniform(0.0, 1.5))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no chunk may be unreadable
        layers = load_run(out).layers
    steps = sorted(set(layers["step"]))
    assert steps == list(range(len(steps))) and len(steps) >= 2
    assert (layers.groupby("step").size() == 60).all()
    assert (layers["value"] == layers["step"] + layers["layer_index"]).all()
    RunWriter(out, resume=True)  # a new writer removes temporaries and merged flushes left by the kill
    assert not list(out.rglob("*.tmp"))
    pd.testing.assert_frame_equal(load_run(out).layers, layers)


def test_a_legacy_csv_run_loads_and_converts_with_one_command(tmp_path, capsys) -> None:
    flushes = random_flushes(6)
    sweep = tmp_path / "sweep"
    write_csv_run(sweep / "runs" / "a", flushes)
    write_csv_run(sweep / "runs" / "b", flushes[:2])
    before = load_run(sweep / "runs" / "a")
    _ = before.layers, before.scalars  # read now: tables are read on first use
    (sweep / "runs" / "b" / "layers" / "000002.csv").write_text("step,phase,net\n1,d")  # damaged, left alone
    with pytest.warns(UserWarning, match="000002.csv"):
        assert cli_main(["runs", "convert", str(sweep)]) == 1
    out = capsys.readouterr().out
    assert "converted 15 CSV chunks in 2 run(s)" in out and "1 damaged" in out
    assert not list((sweep / "runs" / "a").rglob("*.csv"))
    assert (sweep / "runs" / "b" / "layers" / "000002.csv").exists()
    after = load_run(sweep / "runs" / "a")
    pd.testing.assert_frame_equal(after.layers, before.layers)
    pd.testing.assert_frame_equal(after.scalars, before.scalars)
    # Resuming a converted (or an unconverted) old run numbers new chunks after the old ones.
    writer = RunWriter(sweep / "runs" / "a", resume=True, fsync=False)
    writer.append_layers(random_flushes(7, n_flushes=1)[0].assign(step=lambda f: f["step"] + 1000))
    writer.flush()
    assert chunk_files(sweep / "runs" / "a" / "layers")[-1].name == "000007.parquet"
    assert cli_main(["runs", "convert", str(tmp_path / "nothing-here")]) == 2
    # never under a live writer: a run being written is refused, naming the holder
    write_csv_run(sweep / "runs" / "c", flushes[:1])
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from gradscope.record.lock import "
                               "DirectoryLock; DirectoryLock(sys.argv[1]).acquire(); print('held', flush=True); "
                               "time.sleep(60)", str(sweep / "runs" / "c")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert cli_main(["runs", "convert", str(sweep / "runs" / "c")]) == 2
        assert f"pid {holder.pid}" in capsys.readouterr().err
    finally:
        holder.kill()
        holder.wait()
    assert (sweep / "runs" / "c" / "layers" / "000001.csv").exists()


def test_a_damaged_chunk_is_named_in_a_warning_and_the_rest_loads(tmp_path) -> None:
    flushes = random_flushes(8, n_flushes=4)
    write_parquet_run(tmp_path / "run", flushes)
    second = tmp_path / "run" / "layers" / "000002.parquet"
    data = second.read_bytes()
    second.write_bytes(data[: len(data) // 2])  # cut short: a CSV would read a prefix of a number
    with pytest.warns(UserWarning, match="skipping unreadable chunk .*000002.parquet"):
        layers = load_run(tmp_path / "run").layers
    expected = expected_layers([flushes[0], flushes[2], flushes[3]])
    pd.testing.assert_frame_equal(as_plain(layers), expected, check_dtype=False)


def test_tidy_table_sorts_and_deduplicates_only_when_needed() -> None:
    flushes = random_flushes(9, n_flushes=2)
    shuffled = pd.concat([flushes[1], flushes[0], flushes[0].assign(value=7.0)], ignore_index=True)
    tidy = tidy_table(shuffled, "layers")
    expected = expected_layers([flushes[1], flushes[0].assign(value=7.0)])
    pd.testing.assert_frame_equal(as_plain(tidy), expected, check_dtype=False)
    again = tidy_table(tidy, "layers")
    assert again is tidy  # already tidy: returned as it is, no copy, no sort
