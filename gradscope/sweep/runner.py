"""Drive a sweep: reconcile the manifest with the spec, launch what is left, record outcomes."""
from __future__ import annotations

import statistics
from pathlib import Path

from gradscope._checks import check_choice, check_int_at_least
from gradscope.record.lock import DirectoryLock
from gradscope.record.storage import read_json
from gradscope.sweep.cost import ASSUMED_TFLOPS, gpu_hours, point_configs, sweep_flops
from gradscope.sweep.executors import (
    EXECUTORS,
    Launch,
    run_local,
    run_ray,
    slot_environments,
)
from gradscope.sweep.manifest import Manifest, RunEntry
from gradscope.sweep.spec import RunPoint, SweepSpec
from gradscope.train.checkpoint import list_checkpoints

RUNS_DIR = "runs"


def run_dir_of(out: Path, run_id: str) -> Path:
    return Path(out) / RUNS_DIR / run_id


def _run_state(run_dir: Path) -> str | None:
    try:
        status = read_json(run_dir / "status.json")
    except ValueError:  # torn by a crash: the run is not done
        return None
    return status.get("state") if status else None


def launch_for(point: RunPoint, run_dir: Path) -> Launch:
    """Resume from the run's checkpoint when it has one; otherwise start it (again) from scratch."""
    if run_dir.is_dir() and list_checkpoints(run_dir):
        return Launch(point.run_id, ["run", "--resume", str(run_dir), "--quiet"], {})
    argv = point.argv(run_dir) + ["--quiet"]
    if run_dir.exists():
        argv.append("--overwrite")  # a start that never reached its first checkpoint
    return Launch(point.run_id, argv, {})


def open_manifest(spec: SweepSpec, out: Path) -> Manifest:
    """The sweep's manifest in ``out``: created, or re-read and checked to be the same sweep."""
    manifest = Manifest.load(out)
    if manifest is None:
        manifest = Manifest(spec.name, spec.fingerprint())
    elif manifest.fingerprint != spec.fingerprint():
        if not spec.grows(manifest.fingerprint, manifest.runs):
            raise ValueError(f"{out} holds a different sweep ({manifest.name!r}); choose another --out "
                             "(a sweep may only grow: add values to its grid axes, keep the rest)")
        manifest.fingerprint = spec.fingerprint()
    for point in spec.points:
        manifest.runs.setdefault(point.run_id, RunEntry(params=point.params))
    return manifest


def _todo(spec: SweepSpec, manifest: Manifest) -> list[RunPoint]:
    limit = 1 + spec.max_retries
    out = []
    for point in spec.points:
        entry = manifest.runs[point.run_id]
        if entry.status in ("pending", "running"):
            out.append(point)  # "running" left by a dead driver is an interrupted run
        elif entry.status == "failed" and entry.attempts < limit:
            out.append(point)
    return out


def estimate(spec: SweepSpec, manifest: Manifest) -> str:
    """A one-paragraph cost estimate, calibrated on the sweep's finished runs when there are any."""
    # Iterations as each run will have them, `gradscope run`'s default where the spec sets none.
    configs = point_configs(spec)
    iterations = {run_id: config.iterations for run_id, config in configs.items()}
    total_iters = sum(iterations.values())
    rates = [entry.seconds / iterations[run_id] for run_id, entry in manifest.runs.items()
             if entry.status == "done" and entry.seconds > 0 and iterations.get(run_id)]
    text = f"{len(spec.points)} runs, {total_iters:,} training iterations in all"
    if rates:
        rate = statistics.median(rates)
        text += (f"; about {_duration(rate * total_iters)} of worker time at the {rate:.3g} s/iteration "
                 f"measured on {len(rates)} finished run(s)")
    else:
        text += "; no finished run to calibrate the time per iteration yet"
        flops = sweep_flops(spec, configs)
        if flops is not None:
            text += (f"; {flops / 1e15:,.1f} PFLOP counted on the networks, about {gpu_hours(flops):,.1f} GPU hours "
                     f"at an assumed {ASSUMED_TFLOPS:g} TFLOP/s sustained (an assumption: small GANs often run slower)")
    return text


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def run_sweep(spec: SweepSpec, out: str | Path, *, executor: str = "local", max_parallel: int | None = None,
              address: str | None = None, dry_run: bool = False, echo=print) -> Manifest:
    """Run (or resume) every point of ``spec`` under ``out``; return the final manifest.

    Examples
    --------
    >>> from gradscope.sweep import parse_spec, run_sweep             # doctest: +SKIP
    >>> spec = parse_spec({"base": {"iterations": 50}, "grid": {"norm": ["sn", "bssn"], "seed": [0, 1]}})
    >>> run_sweep(spec, "sweeps/demo", max_parallel=2).counts()       # doctest: +SKIP
    {'pending': 0, 'running': 0, 'done': 4, 'diverged': 0, 'failed': 0}
    """
    check_choice("executor", executor, EXECUTORS)
    if max_parallel is not None:
        check_int_at_least("--max-parallel", max_parallel, 1)
    out = Path(out)
    if dry_run:  # reads the manifest only (replaced atomically by a live driver): no lock needed
        manifest = open_manifest(spec, out)
        for point in spec.points:
            entry = manifest.runs[point.run_id]
            echo(f"  {entry.status:<9} {point.run_id}")
        echo(estimate(spec, manifest))
        return manifest
    # One driver per sweep directory: a second one would launch the same runs and overwrite the manifest
    # with its own view of them. The lock goes with this process, however it ends.
    with DirectoryLock(out, "sweep directory", "wait for its driver to finish or choose another --out"):
        return _drive(spec, out, executor, max_parallel, address, echo)


def _drive(spec: SweepSpec, out: Path, executor: str, max_parallel: int | None, address: str | None,
           echo) -> Manifest:
    """:func:`run_sweep` once ``out`` is locked."""
    manifest = open_manifest(spec, out)
    manifest.save(out)
    points = {p.run_id: p for p in spec.points}

    def on_start(run_id: str) -> None:
        entry = manifest.runs[run_id]
        entry.status, entry.attempts = "running", entry.attempts + 1
        manifest.save(out)

    def on_finish(run_id: str, code: int, stderr: str, seconds: float) -> None:
        entry = manifest.runs[run_id]
        state = _run_state(run_dir_of(out, run_id))
        entry.exit_code, entry.seconds = code, entry.seconds + seconds
        if code == 0 and state == "done":
            entry.status, entry.error = "done", None
        elif state == "diverged":
            entry.status, entry.error = "diverged", None
        else:
            lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
            reason = lines[-1] if lines else f"exit code {code}"
            entry.status, entry.error = "failed", reason
        manifest.save(out)
        echo(f"[{sum(e.status in ('done', 'diverged') for e in manifest.runs.values())}/{len(manifest.runs)}] "
             f"{run_id}: {entry.status}" + (f" ({entry.error})" if entry.error else ""))

    while True:
        todo = _todo(spec, manifest)
        if not todo:
            break
        launches = [launch_for(points[p.run_id], run_dir_of(out, p.run_id)) for p in todo]
        try:
            if executor == "local":
                run_local(launches, slot_environments(max_parallel), on_start, on_finish)
            else:
                run_ray(launches, address=address, gpus_per_run=None, cpus_per_run=1.0,
                        on_start=on_start, on_finish=on_finish)
        except KeyboardInterrupt:
            for entry in manifest.runs.values():
                if entry.status == "running":
                    entry.status = "pending"
            manifest.save(out)
            raise
    return manifest

