"""Fault injection: damaged inputs and SIGKILL at random moments.

Damaged inputs (a ``config.json`` holding a list, a manifest entry with an unknown status or ``params:
null``, a CSV chunk without its header or with text for a number, ``report -o`` into a missing folder,
``eval --extractor inception`` where Inception cannot be had) each give one line naming the file and exit
code 2. SIGKILL at random moments (fixed seeds, bounded counts) of ``gradscope run``, of checkpoint writes
and of a ``gradscope sweep`` driver: nothing is lost beyond one interval, the resumed run equals an
uninterrupted one bit for bit, no temporary file is left, status and exit codes are the documented ones.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import sys
import time
import traceback
from pathlib import Path

import pytest
from test_train_run import _assert_same_run

from gradscope import cli
from gradscope.metrics import clear_extractor_cache
from gradscope.metrics import inception as inception_module
from gradscope.record import load_run
from gradscope.record.chunks import chunk_files, frame_to_csv, read_one
from gradscope.sweep import Manifest
from gradscope.train import RunConfig, resume, train
from gradscope.train.checkpoint import (
    TMP_PREFIX,
    list_checkpoints,
    load_checkpoint,
    remove_temporary_files,
    save_checkpoint,
)
from gradscope.train.cli import config_from_args

ITERATIONS = 20
# ring8's MLP pair (the fastest run there is), a checkpoint and a flush every 2 steps, with evaluations and
# exact spectral norms so that resume has every kind of state to restore.
RUN = ["--dataset", "ring8", "--batch-size", "8", "--iterations", str(ITERATIONS), "--checkpoint-every", "2",
       "--flush-every", "2", "--eval-every", "10", "--eval-samples", "100", "--exact-every", "5",
       "--sample-every", "0"]


@pytest.fixture(scope="module")
def whole(tmp_path_factory) -> Path:
    """The uninterrupted run every killed one must equal after its resume."""
    out = tmp_path_factory.mktemp("faults") / "whole"
    args = cli.build_parser("run").parse_args(["run", *RUN, "--quiet", "--out", str(out)])
    result = train(config_from_args(args))
    assert (result.state, result.step) == ("done", ITERATIONS)
    return out


def _one_line_error(capsys, command: str, *fragments: str) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"gradscope {command}: error: "), err
    assert "Traceback" not in err and all(f in lines[0] for f in fragments), (lines[0], fragments)
    return lines[0]


def _leftovers(root: Path) -> list[Path]:
    """Temporary files of interrupted writes and lock files of dead writers."""
    return [p for p in root.rglob("*")
            if p.name.startswith((TMP_PREFIX, ".tmp")) or p.name.endswith(".tmp") or p.name == ".lock"]


def _copy(run: Path, to: Path) -> Path:
    shutil.copytree(run, to)
    return to


# --- damaged inputs: one line naming the file, exit code 2 -----------------------------------------------------
def test_config_json_holding_a_list_is_one_line_naming_it(whole, tmp_path, capsys):
    run = _copy(whole, tmp_path / "run")
    (run / "config.json").write_text("[1, 2]\n")
    report = tmp_path / "r.html"
    for argv in (["report", str(run), "-o", str(report)], ["plot", str(run), "-o", str(tmp_path / "plots")],
                 ["eval", str(run)], ["run", "--resume", str(run), "--quiet"]):
        assert cli.main(argv) == 2, argv
        _one_line_error(capsys, argv[0], str(run / "config.json"))
    assert not report.exists()


def _fake_sweep(root: Path, change: dict) -> Path:
    entry = {"params": {"seed": 0}, "status": "done", "attempts": 1, "exit_code": 0, "error": None,
             "seconds": 1.0, **change}
    root.mkdir()
    (root / "manifest.json").write_text(json.dumps({"name": "sweep", "fingerprint": "0" * 16,
                                                    "runs": {"seed=0": entry}}))
    return root


@pytest.mark.parametrize("change, fragment", [
    ({"status": "bogus"}, "run 'seed=0': status \"bogus\" is not one of pending, running, done"),
    ({"params": None}, "run 'seed=0': params is null, not an object"),
    ({"attempts": "two"}, "attempts \"two\" is not a count"),
], ids=["status-bogus", "params-null", "attempts-text"])
def test_a_manifest_entry_of_the_wrong_kind_is_one_line_naming_the_manifest(tmp_path, capsys, change, fragment):
    out = _fake_sweep(tmp_path / "sweep", change)
    with pytest.raises(ValueError, match="manifest.json is corrupt"):
        Manifest.load(out)
    assert cli.main(["sweep", "summarize", str(out)]) == 2
    _one_line_error(capsys, "sweep", str(out / "manifest.json"), fragment)
    spec = tmp_path / "spec.toml"
    spec.write_text('[base]\ndataset = "ring8"\niterations = 2\n[grid]\nseed = [0]\n')
    assert cli.main(["sweep", str(spec), "--out", str(out)]) == 2  # refused before any run starts
    _one_line_error(capsys, "sweep", str(out / "manifest.json"), fragment)
    assert not (out / "runs").exists() and not (out / "summary.csv").exists()


@pytest.mark.parametrize("damage", ["no-header", "text-for-a-number"])
def test_a_damaged_csv_chunk_is_named_when_read_and_when_resumed(whole, tmp_path, capsys, damage):
    run = _copy(whole, tmp_path / "run")
    first = chunk_files(run / "scalars")[0]
    rows = read_one(first, "scalars")
    lines = frame_to_csv(rows).splitlines()
    if damage == "no-header":
        lines = lines[1:]
    else:
        lines[1] = "abc," + lines[1].split(",", 1)[1]
    chunk = first.with_suffix(".csv")  # a run from before Parquet, its first chunk damaged
    chunk.write_text("\n".join(lines) + "\n")
    first.unlink()
    with pytest.warns(UserWarning, match=re.escape(f"skipping unreadable chunk {chunk}")):
        scalars = load_run(run).scalars
    assert len(scalars) == len(load_run(whole).scalars) - len(rows)  # the rest loads
    # Resuming sets the damaged chunk aside (its bytes kept, named in a warning) and continues.
    with pytest.warns(UserWarning, match=re.escape(f"set damaged chunk {chunk} aside as {chunk.name}.damaged")):
        assert cli.main(["run", "--resume", str(run), "--iterations", str(ITERATIONS + 2), "--quiet"]) == 0
    assert not chunk.exists() and chunk.with_name(chunk.name + ".damaged").exists()
    assert [s for s, _ in list_checkpoints(run)][-1] == ITERATIONS + 2
    assert load_run(run).status["state"] == "done"


def test_report_into_a_missing_folder_is_refused_without_creating_it(whole, tmp_path, capsys):
    target = tmp_path / "nonexistent" / "dir" / "r.html"
    assert cli.main(["report", str(whole), "-o", str(target)]) == 2
    _one_line_error(capsys, "report", f"the folder {target.parent} does not exist")
    assert not (tmp_path / "nonexistent").exists()
    assert cli.main(["report", str(whole), "-o", str(tmp_path)]) == 2
    _one_line_error(capsys, "report", f"-o {tmp_path} is a folder")


def test_eval_with_inception_asked_for_by_name_fails_where_inception_cannot_be_had(whole, tmp_path, capsys,
                                                                                 monkeypatch):
    run = tmp_path / "digits"
    train(RunConfig(dataset="digits", image_size=8, batch_size=4, width=0.25, iterations=1, eval_every=0,
                    sample_every=0, exact_every=0, out=str(run), quiet=True))
    for name in ("torch_fidelity", inception_module.MODULE):  # as if torch-fidelity were not installed
        monkeypatch.setitem(sys.modules, name, None)
    clear_extractor_cache()
    try:
        assert cli.main(["eval", str(run), "--extractor", "inception", "--samples", "8"]) == 2
        _one_line_error(capsys, "eval", str(run), "Inception is unavailable", "not installed")
    finally:
        clear_extractor_cache()
    assert not (run / "eval").exists()  # no digits numbers stored as if they were Inception ones
    assert cli.main(["eval", str(whole), "--extractor", "digits"]) == 2  # a 2D set has no extractor
    _one_line_error(capsys, "eval", str(whole), "does not apply to ring8")


# --- SIGKILL at random moments ---------------------------------------------------------------------------------
# The killed processes are forks of this one: torch and the rest are imported already, so a run costs its
# training alone (a fresh ``gradscope run`` spends seconds importing; test_train_run.py kills one of those).
#: The SIGKILL tests fork this process (after torch has run: not safe on macOS) and read /proc.
LINUX_ONLY = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork() after torch, and /proc: Linux")


class _Fork:
    """``target(*args)`` in a forked copy of this process, with the part of ``subprocess.Popen``'s interface
    that :func:`_kill_when` uses; the child's exit code is ``target``'s return value."""

    def __init__(self, target, *args) -> None:
        self.returncode: int | None = None
        self.pid = os.fork()
        if self.pid == 0:  # pragma: no cover - the child
            code = 1
            try:
                code = int(target(*args) or 0)
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def send_signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def wait(self, timeout: float = 60.0) -> int:
        deadline = time.monotonic() + timeout
        while self.poll() is None:
            assert time.monotonic() < deadline, f"process {self.pid} did not end"
            time.sleep(0.01)
        return self.returncode


def _kill_when(procs: list[_Fork], ready, delays: list[float], timeout: float = 240.0) -> list[bool]:
    """SIGKILL each process ``delays[i]`` seconds after ``ready(i)`` first holds; ``True`` where it was killed
    (``False``: it had ended by itself)."""
    armed: list[float | None] = [None] * len(procs)
    killed = [False] * len(procs)
    deadline = time.monotonic() + timeout
    try:
        while any(p.poll() is None and not k for p, k in zip(procs, killed)):
            assert time.monotonic() < deadline, "timed out waiting to kill"
            now = time.monotonic()
            for i, proc in enumerate(procs):
                if killed[i] or proc.poll() is not None:
                    continue
                if armed[i] is None and ready(i):
                    armed[i] = now + delays[i]
                if armed[i] is not None and now >= armed[i]:
                    proc.send_signal(signal.SIGKILL)
                    killed[i] = True
            time.sleep(0.001)
    finally:
        for proc in procs:
            if proc.poll() is None and not killed[procs.index(proc)]:
                proc.send_signal(signal.SIGKILL)  # a failed test leaves no process behind
            proc.wait()
    # A process that ended just before its SIGKILL landed (a zombie takes the signal) was not killed.
    return [k and proc.returncode == -signal.SIGKILL for k, proc in zip(killed, procs)]


def _steps(run: Path, table: str) -> list[int]:
    return sorted(set(getattr(load_run(run), table)["step"]))


def _run(out: Path) -> int:
    return cli.main(["run", *RUN, "--quiet", "--out", str(out)])


SEEDS = (0, 1, 2)


@LINUX_ONLY
def test_sigkill_at_random_moments_of_run_then_resume_equals_the_uninterrupted_run(whole, tmp_path):
    runs = [tmp_path / f"killed{seed}" for seed in SEEDS]
    procs = [_Fork(_run, run) for run in runs]
    # Moments set by the run's progress, not by the clock (a fast machine finished a 20-step run before a
    # delay of a second came due): a little after the checkpoint of a random step between 2 and 12 exists,
    # from the first checkpoint to past the middle of the run; some land inside checkpoint writes.
    after = [random.Random(seed).randrange(2, 14, 2) for seed in SEEDS]
    delays = [random.Random(100 + seed).uniform(0.0, 0.03) for seed in SEEDS]

    def reached(i: int) -> bool:
        checkpoints = list_checkpoints(runs[i])
        return bool(checkpoints) and checkpoints[-1][0] >= after[i]

    killed = _kill_when(procs, reached, delays)
    for run, proc, was_killed in zip(runs, procs, killed):
        status = json.loads((run / "status.json").read_text())
        assert proc.returncode == (-signal.SIGKILL if was_killed else 0)
        if status["state"] == "done":  # it finished before its moment came
            _assert_same_run(whole, run, ITERATIONS)
            continue
        assert status["state"] == "running"  # a killed process writes nothing more
        newest = list_checkpoints(run)[-1][0]
        assert newest % 2 == 0
        for table in ("scalars", "layers"):  # every step up to the newest checkpoint is on disk, in order
            steps = _steps(run, table)
            assert steps == list(range(steps[0], steps[-1] + 1)) and steps[-1] >= newest, (table, steps)
        load_checkpoint(list_checkpoints(run)[-1][1])  # the newest checkpoint is whole and verified
        result = resume(run)
        assert (result.state, result.step, result.exit_code) == ("done", ITERATIONS, 0)
        assert json.loads((run / "status.json").read_text())["state"] == "done"
        _assert_same_run(whole, run, ITERATIONS)
        assert not _leftovers(run), _leftovers(run)
    assert sum(killed) >= 2


def _write_checkpoints(run: Path, report: int) -> int:
    import torch

    weights = torch.randn(3_000_000, generator=torch.Generator().manual_seed(0))  # 12 MB: ~30 ms a write
    step = 0
    while True:
        step += 1
        weights[0] = step
        save_checkpoint(run, step, {"step": step, "w": weights}, keep=2)
        os.write(report, f"{step}\n".encode())


@LINUX_ONLY
def test_sigkill_during_checkpoint_writes_leaves_only_whole_verified_checkpoints(tmp_path):
    runs = [tmp_path / f"run{seed}" for seed in SEEDS]
    pipes = [os.pipe() for _ in SEEDS]
    procs = [_Fork(_write_checkpoints, run, write) for run, (_, write) in zip(runs, pipes)]
    for _, write in pipes:
        os.close(write)

    def writing(i: int) -> bool:  # a temporary file is there: a write is under way
        folder = runs[i] / "checkpoints"
        return len(list_checkpoints(runs[i])) >= 2 and any(folder.glob(f"{TMP_PREFIX}*"))

    delays = [random.Random(seed).uniform(0.0, 0.02) for seed in SEEDS]
    assert all(_kill_when(procs, writing, delays))
    interrupted = 0
    for run, proc, (read, _) in zip(runs, procs, pipes):
        assert proc.returncode == -signal.SIGKILL
        with os.fdopen(read) as pipe:
            reported = [int(line) for line in pipe.read().split()]
        steps = [s for s, _ in list_checkpoints(run)]
        # The newest written is on disk (one more if the kill fell between the rename and the report); keep=2,
        # plus the oldest if the kill fell between the rename and its removal.
        assert steps[-1] in (reported[-1], reported[-1] + 1) and steps == list(range(steps[0], steps[-1] + 1))
        assert 2 <= len(steps) <= 3
        for step, path in list_checkpoints(run):
            payload = load_checkpoint(path)  # its content hash is checked
            assert payload["step"] == step and float(payload["w"][0]) == step
        interrupted += bool(_leftovers(run))
        remove_temporary_files(run)  # what the next start of a run does
        assert not _leftovers(run)
    assert interrupted >= 1  # at least one kill fell inside a write


def _processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line holds ``text`` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if text in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                    found.append(int(entry.name))
        except OSError:
            continue
    return found


def _flag_table(argv: list[str]) -> str:
    return "".join(f"{flag[2:]} = {json.dumps(int(value) if value.isdigit() else value)}\n"
                   for flag, value in zip(argv[::2], argv[1::2]))


def _checkpoints_of_sweep(out: Path) -> set[Path]:
    return {path for run in (out / "runs").glob("*") for _, path in list_checkpoints(run)}


@LINUX_ONLY  # and the sweep's runs die with their driver (PR_SET_PDEATHSIG) on Linux only
def test_sigkill_of_a_sweep_driver_at_random_moments_then_rerun_finishes_every_run_once(whole, tmp_path, capsys):
    spec = tmp_path / "spec.toml"
    spec.write_text("[base]\n" + _flag_table(RUN) + "[grid]\nseed = [0, 1]\n")
    out = tmp_path / "sweep"
    argv = ["sweep", str(spec), "--out", str(out), "--max-parallel", "2"]  # 2 slots: one thread each
    rng = random.Random(7)
    # Two kills: while the runs start (from the manifest's first write), then while they train (from the
    # first new checkpoint); then the same command once more, to the end.
    moments = [(lambda seen: (out / "manifest.json").exists(), rng.uniform(0.5, 2.0)),
               (lambda seen: bool(_checkpoints_of_sweep(out) - seen), rng.uniform(0.0, 0.2))]
    before = None
    for ready, delay in moments:
        seen = _checkpoints_of_sweep(out) if out.exists() else set()
        driver = _Fork(cli.main, argv)
        assert _kill_when([driver], lambda _: ready(seen), [delay]) == [True]
        assert driver.returncode == -signal.SIGKILL
        deadline = time.monotonic() + 120  # the orphaned runs get SIGTERM (PR_SET_PDEATHSIG) and checkpoint
        while _processes_mentioning(str(out)):
            assert time.monotonic() < deadline, "runs outlived their sweep driver"
            time.sleep(0.1)
        manifest = Manifest.load(out)
        assert manifest is not None and sorted(manifest.runs) == ["seed=0", "seed=1"]
        for run_id, entry in manifest.runs.items():
            assert entry.status in ("pending", "running", "done"), (run_id, entry)
            status_file = out / "runs" / run_id / "status.json"
            state = json.loads(status_file.read_text())["state"] if status_file.exists() else None
            assert entry.status != "done" or state == "done"  # the manifest never claims an unfinished run
            if before is not None:
                assert entry.attempts - before.runs[run_id].attempts in (0, 1)
        before = manifest
    capsys.readouterr()

    assert cli.main(argv) == 0  # the same command again
    assert capsys.readouterr().out.strip().splitlines()[-1] == "2 done"
    after = Manifest.load(out)
    assert after.counts()["done"] == 2 and sorted(after.runs) == ["seed=0", "seed=1"]
    for run_id, entry in after.runs.items():
        again = before.runs[run_id].status != "done"  # each unfinished run is started once more
        assert entry.attempts == before.runs[run_id].attempts + again and entry.exit_code == 0, \
            (run_id, before.runs[run_id], entry)
        run = out / "runs" / run_id
        assert json.loads((run / "status.json").read_text())["state"] == "done"
        scalars = load_run(run).scalars
        losses = scalars[scalars["name"] == "loss_d"]
        assert losses["step"].tolist() == list(range(1, ITERATIONS + 1))  # no step lost or written twice
    _assert_same_run(whole, out / "runs" / "seed=0", ITERATIONS)
    assert not _leftovers(out), _leftovers(out)
