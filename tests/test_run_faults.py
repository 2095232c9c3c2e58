"""Faults end in a known state: one writer per run / sweep directory, non-finite values, a full or read-only disk."""
from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from gradscope import cli
from gradscope.record import Recorder, RunWriter, load_run
from gradscope.record.lock import LOCK_FILE, DirectoryBusy, DirectoryLock
from gradscope.train.checkpoint import list_checkpoints

# A ring8 run that trains until it is stopped: the holder of its directory for as long as a test needs.
ENDLESS = ["--dataset", "ring8", "--batch-size", "8", "--iterations", "1000000", "--checkpoint-every", "100000",
           "--eval-every", "0", "--sample-every", "0", "--record-every", "50", "--quiet"]
# A tiny in-process run: a few seconds on one CPU thread.
SHORT = ["run", "--dataset", "ring8", "--batch-size", "8", "--eval-every", "0", "--sample-every", "0", "--quiet"]


def _wait_for_lock(directory: Path, proc: subprocess.Popen, timeout: float = 120.0) -> dict:
    """The lock file's holder record once ``proc`` wrote it (``proc`` must stay alive)."""
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"no lock in {directory}"
        try:
            holder = json.loads((directory / LOCK_FILE).read_text())
            if holder.get("pid") == proc.pid:
                return holder
        except (OSError, ValueError):
            pass
        time.sleep(0.05)


def _stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
    proc.communicate(timeout=180)


def _leftovers(directory: Path) -> list[Path]:
    return [p for p in directory.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".tmp-")]


# --- one writer per directory -------------------------------------------------------------------------
def test_a_second_run_or_resume_on_a_live_run_directory_exits_2_naming_the_holder(tmp_path, capsys):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "gradscope", "run", "--out", str(out), "--seed", "0", *ENDLESS],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_lock(out, proc)
        assert cli.main([*SHORT, "--iterations", "2", "--seed", "1", "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert re.fullmatch(rf"gradscope run: error: run directory {re.escape(str(out))} is in use by another "
                            rf"gradscope process \(pid {proc.pid} on [^,]+, since [-0-9: ]+\); wait for it or "
                            r"choose another --out", err), err
        while not (out / "config.json").exists():  # --resume reads the run's configuration first
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        assert cli.main(["run", "--resume", str(out), "--iterations", "2"]) == 2
        assert f"is in use by another gradscope process (pid {proc.pid} on" in capsys.readouterr().err
        assert json.loads((out / "config.json").read_text())["seed"] == 0  # the holder's run, untouched
        while not list((out / "scalars").glob("*.parquet")):  # training: SIGTERM now ends in a checkpoint
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.05)
    finally:
        _stop(proc)
    assert proc.returncode == 143
    assert not (out / LOCK_FILE).exists()  # released (and removed) when the holder ended


HOLDER = textwrap.dedent("""
    import sys, time
    from gradscope.record import RunWriter
    writer = RunWriter(sys.argv[1], resume=True)
    print("locked", flush=True)
    time.sleep(600)
""")


def test_a_lock_left_by_a_killed_process_is_stale_and_taken_over(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        _wait_for_lock(out, proc)
        with pytest.raises(DirectoryBusy, match=rf"pid {proc.pid} on "):
            RunWriter(out, resume=True)
    finally:
        _stop(proc, signal.SIGKILL)
    assert json.loads((out / LOCK_FILE).read_text())["pid"] == proc.pid  # left behind by the kill
    with RunWriter(out, resume=True) as writer:  # the kernel dropped the dead holder's lock
        assert json.loads((out / LOCK_FILE).read_text())["pid"] == os.getpid()
        writer.set_status("running", step=0)
    assert writer.closed and not (out / LOCK_FILE).exists()


def test_writers_of_one_process_share_the_lock_and_a_recorder_releases_its_own(tmp_path):
    with DirectoryLock(tmp_path / "a") as lock:
        first, second = RunWriter(tmp_path / "a"), RunWriter(tmp_path / "a", resume=True)
        first.close()
        second.close()
        assert (tmp_path / "a" / LOCK_FILE).exists() and lock.held  # the outer holder still has it
    assert not (tmp_path / "a" / LOCK_FILE).exists()
    model = nn.Linear(2, 1)
    with Recorder(model, out=tmp_path / "b", alert_printer=None) as rec:
        model(torch.randn(3, 2)).sum().backward()
        rec.step(0)
        assert (tmp_path / "b" / LOCK_FILE).exists()
    assert not (tmp_path / "b" / LOCK_FILE).exists()


def test_a_second_sweep_driver_on_the_same_directory_exits_2_naming_the_first(tmp_path, capsys, monkeypatch):
    from gradscope.sweep import runner

    spec = tmp_path / "spec.toml"
    spec.write_text('[base]\ndataset = "ring8"\nbatch-size = 8\niterations = 1000000\ncheckpoint-every = 100000\n'
                    'eval-every = 0\nsample-every = 0\n[grid]\nseed = [0]\n')
    out = tmp_path / "sweep"

    def launch(*args, **kwargs):
        raise AssertionError("the second driver launched runs that the first one is running")

    monkeypatch.setattr(runner, "run_local", launch)
    driver = subprocess.Popen([sys.executable, "-m", "gradscope", "sweep", str(spec), "--out", str(out)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_lock(out, driver)
        assert cli.main(["sweep", str(spec), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert f"sweep directory {out} is in use by another gradscope process (pid {driver.pid} on" in err
        assert "--out" in err.strip().splitlines()[-1] and len(err.strip().splitlines()) == 1
    finally:
        # SIGTERM ends the driver at once (its run, told by PDEATHSIG, checkpoints and stops). SIGINT, which
        # lets the driver wait for its run, did not end it within 180 s when this test ran after others in one
        # pytest process (tests/test_public_api.py .. test_report.py), though it does alone: not yet understood.
        _stop(driver, signal.SIGTERM)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["runs"]["seed=0"]["status"] in ("pending", "running")  # not "failed": nobody else touched it
    with DirectoryLock(out, what="sweep directory"):  # the dead driver's lock is stale: taken over at once
        pass


# --- non-finite values --------------------------------------------------------------------------------
def test_a_nan_input_is_recorded_as_nan_with_an_alert_and_the_run_marked_diverged(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with Recorder(model, every=1, exact_every=1, hessian_every=1, out=tmp_path / "run", alert_printer=None) as rec:
        for step in range(3):
            x = torch.randn(16, 4)
            if step == 1:
                x[0, 0] = float("nan")  # poisons this step's gradients and so every weight after it
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            opt.step()
            rec.step(step)  # used to raise in linalg.svd (exact norms) and lose the step
    run = load_run(tmp_path / "run")
    assert sorted(run.layers["step"].unique()) == [0, 1, 2]
    later = run.layers[run.layers["step"] == 2].set_index(["layer", "stat"])["value"]
    for stat in ("sigma_raw_fwd", "sigma_raw_bwd", "sigma_op", "hessian_top", "param_norm"):
        assert later.xs(stat, level="stat").isna().all(), stat
    assert run.layers[run.layers["step"] == 0]["value"].notna().all()
    assert "non_finite" in set(run.alerts["kind"])
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["state"] == "diverged" and status["reason"] == "non-finite parameter model/0.weight at step 1"


def test_nonfinite_weights_with_exact_norms_due_end_as_diverged_exit_3_claiming_no_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    argv = [*SHORT, "--norm", "none", "--lr-d", "1e30", "--lr-g", "1e30", "--iterations", "20", "--exact-every", "1",
            "--out", str(out)]
    assert cli.main(argv) == 3  # used to crash in linalg.svd: exit 1, status failed
    last = capsys.readouterr().err.strip().splitlines()[-1]
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "diverged" and status["checkpoint"] is None and not list_checkpoints(out)
    assert last == (f"gradscope run: diverged: {status['reason']}; recorded data is kept (no checkpoint was "
                    f"written before it) in {out}")
    assert not (out / LOCK_FILE).exists()


def test_weights_that_turn_nan_behind_finite_losses_never_reach_a_checkpoint(tmp_path, monkeypatch, capsys):
    from gradscope.train import loop

    real = loop.Trainer._g_update

    def poisoned(self, step):  # update 3 leaves a NaN in G while every loss of step 3 is finite
        values = real(self, step)
        if step == 3:
            with torch.no_grad():
                next(self.G.parameters()).view(-1)[0] = float("nan")
        return values

    monkeypatch.setattr(loop.Trainer, "_g_update", poisoned)
    out = tmp_path / "run"
    assert cli.main([*SHORT, "--iterations", "6", "--checkpoint-every", "1", "--out", str(out)]) == 3
    assert [s for s, _ in list_checkpoints(out)] == [1, 2]
    status = json.loads((out / "status.json").read_text())
    assert (status["state"], status["step"], status["reason"]) == ("diverged", 3, "non-finite weights in G at step 3")
    assert status["checkpoint"] == "checkpoints/step_00000002.pt"
    assert "the newest checkpoint (step 2, step_00000002.pt) are kept" in capsys.readouterr().err


# --- a full or read-only disk ---------------------------------------------------------------------------
def _failing_from(call: int, code: int, real):
    """``real`` that, from its ``call``-th call on, leaves a partial temporary file and raises ``OSError(code)``."""
    calls = []

    def write(path: Path, *args, **kwargs):
        calls.append(path)
        if len(calls) < call:
            return real(path, *args, **kwargs)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(b"PAR1 partial")  # what a write cut short by a full disk leaves
        raise OSError(code, os.strerror(code), str(tmp))
    return write


def test_a_full_disk_mid_run_is_one_line_exit_4_status_failed_and_no_temporary_files(tmp_path, monkeypatch, capsys):
    from gradscope.record import storage

    monkeypatch.setattr(storage, "write_chunk", _failing_from(4, errno.ENOSPC, storage.write_chunk))
    out = tmp_path / "run"
    assert cli.main([*SHORT, "--iterations", "30", "--checkpoint-every", "5", "--flush-every", "2",
                     "--out", str(out)]) == 4
    err = capsys.readouterr().err.strip()
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "failed"
    assert re.fullmatch(r"no space left on \S+ \(writing (layers|scalars)/00000[1-9]\.parquet at step \d+\)",
                        status["error"]), status["error"]
    assert err == (f"gradscope run: error: {status['error']}; status.json says failed; once there is room, "
                   f"continue with gradscope run --resume {out}")
    assert str(out) in status["error"] and not _leftovers(out) and not (out / LOCK_FILE).exists()


def test_a_full_disk_inside_torch_save_is_recognized_through_the_exception_chain(tmp_path, monkeypatch, capsys):
    from gradscope.train import checkpoint

    def save(obj, file):  # torch reports ENOSPC as a RuntimeError raised while handling the OSError
        file.write(b"PK partial")
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 167168 vs 167056")

    monkeypatch.setattr(checkpoint.torch, "save", save)
    out = tmp_path / "run"
    assert cli.main([*SHORT, "--iterations", "4", "--checkpoint-every", "2", "--out", str(out)]) == 4
    status = json.loads((out / "status.json").read_text())
    reason = f"no space left on {out} (writing checkpoints/step_00000002.pt at step 2)"
    assert (status["state"], status["step"], status["error"]) == ("failed", 2, reason)
    assert capsys.readouterr().err.startswith(f"gradscope run: error: {reason}; ")
    assert not _leftovers(out) and not list_checkpoints(out)


def test_a_read_only_disk_says_so_and_that_the_status_could_not_be_written(tmp_path, monkeypatch, capsys):
    from gradscope.record import storage
    from gradscope.train import disk

    broken = {"on": False}
    real_chunk, real_text = storage.write_chunk, storage.atomic_write_text

    def chunk(path, *args, **kwargs):
        if path.name == "000003.parquet":
            broken["on"] = True
        if broken["on"]:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_chunk(path, *args, **kwargs)

    def text(path, *args, **kwargs):
        if broken["on"]:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_text(path, *args, **kwargs)

    def no_open(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(storage, "write_chunk", chunk)
    monkeypatch.setattr(storage, "atomic_write_text", text)
    monkeypatch.setattr(disk, "open", no_open, raising=False)  # the in-place fallback is refused as well
    out = tmp_path / "run"
    assert cli.main([*SHORT, "--iterations", "30", "--flush-every", "2", "--out", str(out)]) == 4
    err = capsys.readouterr().err.strip()
    assert re.fullmatch(rf"gradscope run: error: {re.escape(str(out))} is on a read-only file system \(writing "
                        r"(layers|scalars)/000003\.parquet at step \d+\); status\.json could not be updated either "
                        r"\(it may still say running\)", err), err
    assert json.loads((out / "status.json").read_text())["state"] == "running"
    assert not (out / LOCK_FILE).exists()
