"""Run directories: atomic chunks, partial runs after SIGKILL, exact resume, load_run (alert rules: test_alerts.py)."""
from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from gradscope.record import Recorder, RunWriter, load_run
from gradscope.record.storage import provenance

from record_helpers import train_two_phases


def layer_rows(step: int, value: float, layer: str = "fc", stat: str = "sigma") -> pd.DataFrame:
    return pd.DataFrame({"step": [step], "phase": ["d"], "net": ["D"], "layer": [layer], "layer_index": [0],
                         "stat": [stat], "value": [value]})


def test_writer_refuses_an_existing_run_and_overwrite_removes_only_its_files(tmp_path) -> None:
    w = RunWriter(tmp_path)
    w.set_status("running", step=0)
    w.append_layers(layer_rows(0, 1.0))
    w.flush()
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="already holds a gradscope run"):
        RunWriter(tmp_path)
    RunWriter(tmp_path, overwrite=True)
    assert not (tmp_path / "status.json").exists() and not list((tmp_path / "layers").iterdir())
    assert (tmp_path / "notes.txt").read_text() == "mine"
    with pytest.raises(ValueError, match="unknown run state 'exploded'"):
        w.set_status("exploded")


def test_resume_numbers_new_chunks_after_old_ones_and_truncate_after_drops_later_rows(tmp_path) -> None:
    w = RunWriter(tmp_path)
    for step in range(4):
        w.append_layers(layer_rows(step, float(step)))
        w.append_scalars(pd.DataFrame({"step": [step], "name": ["loss"], "value": [step * 2.0]}))
        w.append_alerts([{"step": step, "rule": "r", "net": "D", "layer": "fc"}])
        w.flush()
    w2 = RunWriter(tmp_path, resume=True)
    w2.truncate_after(1)
    assert sorted(p.name for p in (tmp_path / "layers").iterdir()) == ["000001.parquet", "000002.parquet"]
    w2.append_layers(layer_rows(2, 20.0))
    w2.flush()
    assert sorted(p.name for p in (tmp_path / "layers").iterdir())[-1] == "000005.parquet"
    run = load_run(tmp_path)
    assert run.layers["value"].tolist() == [0.0, 1.0, 20.0]
    assert run.scalars["step"].tolist() == [0, 1]
    assert run.alerts["step"].tolist() == [0, 1]
    assert not [p for p in tmp_path.rglob("*.tmp")]


def test_load_run_reads_partial_runs_deterministically(tmp_path) -> None:
    with pytest.raises(ValueError, match="not a gradscope run directory"):
        load_run(tmp_path)
    w = RunWriter(tmp_path)
    # Chunks written out of order, a layer literally named "NA", a NaN value, a repeated key.
    w.append_layers(pd.concat([layer_rows(3, 3.0), layer_rows(1, float("nan"), layer="NA")]))
    w.flush()
    w.append_layers(pd.concat([layer_rows(0, 0.5), layer_rows(3, 33.0), layer_rows(2, 9.0, stat="gamma")]))
    w.flush()
    (tmp_path / "layers" / ".000003.csv.999.tmp").write_text("step,phase\n7,")  # torn temporary file
    with open(tmp_path / "alerts.jsonl", "a") as handle:
        handle.write('{"step": 1, "rule": "x"}\n{"step": 2, "ru')  # torn last line
    assert load_run(tmp_path, stats=["gamma"]).layers["value"].tolist() == [9.0]
    run = load_run(tmp_path, stats=["sigma"])
    assert run.layers["step"].tolist() == [0, 1, 3]
    assert run.layers["layer"].tolist() == ["fc", "NA", "fc"]
    assert np.isnan(run.layers["value"].iloc[1]) and run.layers["value"].iloc[2] == 33.0
    assert run.alerts["step"].tolist() == [1]
    assert run.config == {} and run.status == {}
    pd.testing.assert_frame_equal(run.layers, load_run(tmp_path, stats=["sigma"]).layers)


def test_sigkill_mid_run_leaves_a_readable_partial_run(tmp_path) -> None:
    out = tmp_path / "run"
    script = textwrap.dedent("""
        import sys, torch
        from torch import nn
        from gradscope.record import Recorder
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        rec = Recorder(model, out=sys.argv[1], flush_every=3, alert_printer=None).attach()
        step = 0
        while True:
            opt.zero_grad()
            loss = model(torch.randn(8, 4)).pow(2).mean()
            loss.backward()
            opt.step()
            rec.log_scalars(step, {"loss": loss})
            rec.step(step)
            step += 1
    """)
    proc = subprocess.Popen([sys.executable, "-c", script, str(out)], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if len(list((out / "layers").glob("*.parquet"))) >= 3:
                break
            if proc.poll() is not None:
                pytest.fail(f"recording process died: {proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.05)
        else:
            pytest.fail("no chunks written in 120 s")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    run = load_run(out)
    assert run.status["state"] == "running"
    steps = sorted(set(run.layers["step"]))
    assert len(steps) >= 9 and steps == list(range(len(steps)))
    per_step = run.layers.groupby("step").size()
    assert (per_step == per_step.iloc[0]).all()  # no step half-written
    # Layers and scalars are separate files: a kill between the two writes leaves scalars one flush behind.
    scalar_steps = sorted(set(run.scalars["step"]))
    assert scalar_steps == list(range(len(scalar_steps))) and abs(len(scalar_steps) - len(steps)) <= 3
    assert run.provenance["torch"] == torch.__version__


def _fresh(seed: int = 0) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    return model, torch.optim.SGD(model.parameters(), lr=0.05)


def test_resumed_run_equals_an_uninterrupted_one(tmp_path) -> None:
    options = dict(every=2, exact_every=4, flush_every=3, alert_printer=None)
    model, opt = _fresh()
    with Recorder(model, out=tmp_path / "a", **options) as rec:
        train_two_phases(rec, model, opt, range(8))

    model, opt = _fresh()
    rec = Recorder(model, out=tmp_path / "b", **options).attach()
    train_two_phases(rec, model, opt, range(4))
    checkpoint = {"model": {k: v.clone() for k, v in model.state_dict().items()}, "opt": opt.state_dict(),
                  "rng": torch.get_rng_state(), "recorder": rec.state_dict()}
    train_two_phases(rec, model, opt, range(4, 6))
    rec.flush()  # steps 4 and 5 (and the step-5 alert) reach the disk, then the process "dies"
    partial = load_run(tmp_path / "b")
    assert 4 in set(partial.layers["step"]) and 5 in set(partial.scalars["step"]) and len(partial.alerts) == 1

    model, opt = _fresh(seed=1)
    model.load_state_dict(checkpoint["model"])
    opt.load_state_dict(checkpoint["opt"])
    torch.set_rng_state(checkpoint["rng"])
    with Recorder(model, out=RunWriter(tmp_path / "b", resume=True), **options) as rec:
        rec.load_state_dict(checkpoint["recorder"])
        train_two_phases(rec, model, opt, range(4, 8))

    a, b = load_run(tmp_path / "a"), load_run(tmp_path / "b")
    assert sorted(set(a.layers["step"])) == [0, 2, 4, 6]
    pd.testing.assert_frame_equal(a.layers, b.layers)
    pd.testing.assert_frame_equal(a.scalars, b.scalars)
    assert len(a.alerts) == 1 and int(a.alerts["step"].iloc[0]) == 5
    pd.testing.assert_frame_equal(a.alerts, b.alerts)


def test_provenance_names_versions_and_commit() -> None:
    info = provenance(seed=7, device="cpu")
    assert info["seed"] == 7 and info["torch"] == torch.__version__ and info["device"] == "cpu"
    assert info["git_commit"] is None or len(info["git_commit"].split("-")[0]) == 40


def test_scalars_of_many_steps_in_one_flush_keep_their_steps_names_and_values(tmp_path) -> None:
    # Host floats and device tensors (float32 and float64) of several steps, joined into one frame per flush.
    model = torch.nn.Linear(2, 1)
    expect = []
    with Recorder(model, out=tmp_path, flush_every=100, alerts=[]) as rec:
        for step in range(3):
            model(torch.randn(4, 2)).sum().backward()
            loss32, grad64 = torch.tensor(0.5 + step), torch.tensor(step / 3, dtype=torch.float64)
            rec.log_scalars(step, {"lr": 0.1 * step, "loss": loss32, "gnorm": grad64})
            rec.step(step)
            expect += [(step, "lr", 0.1 * step), (step, "loss", 0.5 + step), (step, "gnorm", step / 3)]
    scalars = load_run(tmp_path).scalars
    assert sorted(zip(scalars["step"].tolist(), scalars["name"].astype(str), scalars["value"])) == sorted(expect)
