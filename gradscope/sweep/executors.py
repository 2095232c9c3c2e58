"""Run a sweep's points: a local process pool or tasks on an existing Ray cluster.

Every run is a separate ``python -m gradscope run`` process writing its own run
directory, so a crash, a node loss or a SIGKILL costs at most the work since that
run's last checkpoint: the next attempt resumes it with ``--resume``.
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

EXECUTORS = ("local", "ray")


@dataclass
class Launch:
    """What a worker runs: the argv after ``gradscope`` and the extra environment."""

    run_id: str
    argv: list[str]
    env: dict[str, str]


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """Ask Linux to SIGTERM the child if the sweep driver dies (the run then checkpoints)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def command(launch: Launch) -> list[str]:
    return [sys.executable, "-m", "gradscope", *launch.argv]


def run_blocking(launch: Launch) -> tuple[int, str]:
    """Run one launch to completion; return its exit code and the tail of its stderr."""
    proc = subprocess.run(command(launch), env={**os.environ, **launch.env},
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return proc.returncode, proc.stderr[-2000:]


def slot_environments(max_parallel: int | None) -> list[dict[str, str]]:
    """One environment per worker slot: a GPU each where there are GPUs, else CPU threads."""
    try:
        import torch

        gpus = torch.cuda.device_count()
    except Exception:  # pragma: no cover - torch always imports in practice
        gpus = 0
    if gpus:
        slots = [{"CUDA_VISIBLE_DEVICES": str(i)} for i in range(gpus)]
        return slots[: max_parallel or gpus]
    cores = os.cpu_count() or 1
    n = max(1, min(max_parallel or 1, cores))
    threads = str(max(1, cores // n))
    return [{"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "CUDA_VISIBLE_DEVICES": ""}
            for _ in range(n)]


def run_local(launches: list[Launch], slots: list[dict[str, str]],
              on_start: Callable[[str], None], on_finish: Callable[[str, int, str, float], None],
              poll_seconds: float = 0.2) -> None:
    """Run ``launches`` with at most ``len(slots)`` at a time, one slot's environment each.

    On KeyboardInterrupt the children get SIGINT (they checkpoint and stop), are
    waited for, and the interrupt is re-raised.
    """
    queue = list(launches)
    running: dict[int, tuple[Launch, subprocess.Popen, float]] = {}
    free = list(range(len(slots)))
    try:
        while queue or running:
            while queue and free:
                slot = free.pop(0)
                launch = queue.pop(0)
                proc = subprocess.Popen(command(launch), env={**os.environ, **slots[slot], **launch.env},
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                        preexec_fn=_die_with_parent if sys.platform == "linux" else None)
                running[slot] = (launch, proc, time.monotonic())
                on_start(launch.run_id)
            for slot, (launch, proc, started) in list(running.items()):
                if proc.poll() is None:
                    continue
                stderr = proc.stderr.read()[-2000:] if proc.stderr else ""
                del running[slot]
                free.append(slot)
                on_finish(launch.run_id, proc.returncode, stderr, time.monotonic() - started)
            time.sleep(poll_seconds)
    except KeyboardInterrupt:
        for _, proc, _ in running.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for _, proc, _ in running.values():
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
        raise


def run_ray(launches: list[Launch], *, address: str | None, gpus_per_run: float | None, cpus_per_run: float,
            on_start: Callable[[str], None], on_finish: Callable[[str, int, str, float], None]) -> None:
    """Run each launch as a Ray task on an existing cluster (``address``) or a local instance.

    Ray retries a task whose node died (``max_retries``); the retried run resumes
    from its checkpoint because the run directory lives on the shared path.
    """
    try:
        import ray
    except ImportError:
        from gradscope._install import RAY
        raise ValueError(f"the ray executor needs Ray: {RAY}") from None
    if not ray.is_initialized():
        ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
    if gpus_per_run is None:  # one GPU per run wherever the cluster has GPUs
        gpus_per_run = 1.0 if ray.cluster_resources().get("GPU", 0) else 0.0
    remote = ray.remote(max_retries=3)(run_blocking).options(num_gpus=gpus_per_run, num_cpus=cpus_per_run)
    pending = {}
    started: dict[str, float] = {}
    for launch in launches:
        pending[remote.remote(launch)] = launch
        started[launch.run_id] = time.monotonic()
        on_start(launch.run_id)
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        launch = pending.pop(done[0])
        try:
            code, stderr = ray.get(done[0])
        except Exception as exc:  # a task that exhausted its retries
            code, stderr = -1, f"ray task failed: {type(exc).__name__}: {exc}"[-2000:]
        on_finish(launch.run_id, code, stderr, time.monotonic() - started[launch.run_id])
