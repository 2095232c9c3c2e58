"""``train(config)`` and ``resume(run_dir)``: a whole run, from an empty directory to its final status.

Exit codes (also :attr:`RunResult.exit_code`; ``gradscope run`` exits with them):

===  ==============================================================================
0    done: all iterations trained (or nothing was left to train)
2    usage error: bad choice, missing or corrupt data, ``--out`` holds something else
3    diverged: a loss or D output became NaN or infinite, or the weights did before a
     checkpoint; the run's status says at which step, recorded data and the checkpoints
     written before it (all with finite weights) are kept
4    storage: the run directory could not be written (disk full, quota, read-only file
     system); one line names it, the status says ``failed`` with the reason (unless the
     file system refuses even that), temporary files are removed; ``--resume`` continues
     from the newest checkpoint once there is room
130  interrupted by Ctrl-C (SIGINT) after writing a checkpoint; ``--resume`` continues
143  interrupted by SIGTERM after writing a checkpoint; ``--resume`` continues
===  ==============================================================================

Any other error ends the run with status ``failed`` and its first line as the
reason (exit 1 with a traceback: a bug to report). ``--out`` is locked for the
life of the process (:mod:`gradscope.record.lock`): a second ``gradscope run``
on the same directory, ``--resume`` included, exits with 2 naming the holder.
"""
from __future__ import annotations

import os
import shlex
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gradscope.train.checkpoint import FINAL_FILE, CheckpointError, list_checkpoints, remove_temporary_files, \
    select_checkpoint, set_aside
from gradscope.train.config import RunConfig, check_inception_weights, default_run_dir
from gradscope.train.disk import record_failure, storage_fault
from gradscope.train.distributed import DistContext, configure_threads, init_distributed, is_small_problem, \
    resolve_device
from gradscope.train.loop import LoopOutcome, Trainer
from gradscope.train.progress import Progress
from gradscope.train.rundir import disk_usage, lock_run_dir, prepare_new_run, resume_config, stored_config

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_DIVERGED = 3
EXIT_SIGNAL_BASE = 128


@dataclass
class RunResult:
    """What a run ended as.

    Attributes
    ----------
    run_dir : Path
        The run directory (read it with :func:`gradscope.load_run`).
    state : str
        ``"done"``, ``"diverged"`` or ``"interrupted"``.
    step : int
        Iterations completed; for ``"diverged"`` the step whose loss was not finite.
    metrics : dict of str to float
        The latest sample-quality evaluation (empty if none ran).
    exit_code : int
        0, 3 (diverged) or 128 + the signal number (interrupted); see the module docstring.
    reason : str or None
        Why a run diverged.
    seconds : float
        Wall time of this call.
    generator, discriminator : nn.Module
        The trained networks of this process (the EMA generator is ``ema_generator``).
    """

    run_dir: Path
    state: str
    step: int
    metrics: dict[str, float]
    exit_code: int
    reason: str | None = None
    seconds: float = 0.0
    generator: nn.Module | None = field(default=None, repr=False)
    discriminator: nn.Module | None = field(default=None, repr=False)
    ema_generator: nn.Module | None = field(default=None, repr=False)


class StopRequest:
    """Turns SIGINT / SIGTERM into a request to checkpoint and stop; a second Ctrl-C stops at once."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def __call__(self) -> int | None:
        return self.signum


def check_accelerator_options(config: RunConfig, device: torch.device) -> None:
    """``--amp bf16`` and ``--compile`` only on CUDA: on CPU they are rejected so results never change."""
    if device.type != "cuda":
        if config.amp != "none":
            raise ValueError(f"--amp {config.amp} needs a CUDA device (this run is on {device.type}); "
                             "drop --amp: CPU runs always train in float32")
        if config.compile:
            raise ValueError(f"--compile needs a CUDA device (this run is on {device.type}); drop --compile")


def check_tensorboard(config: RunConfig) -> None:
    """``--tensorboard`` needs the tensorboard package: checked before anything is written, in one line."""
    from gradscope.record.tensorboard import INSTALL_HINT, tensorboard_available

    if config.tensorboard and not tensorboard_available():
        raise ValueError(f"--tensorboard: {INSTALL_HINT}")


def train(config: RunConfig, *, overwrite: bool = False) -> RunResult:
    """Train a GAN as ``config`` says, into ``config.out`` (default ``runs/<auto-name>``).

    Parameters
    ----------
    config : RunConfig
        The run.
    overwrite : bool
        Replace a run already in ``config.out``; otherwise a non-empty ``out`` is a ``ValueError``.

    Returns
    -------
    RunResult
        Also for a diverged or interrupted run (see ``state`` and ``exit_code``).

    Raises
    ------
    ValueError, FileNotFoundError
        One line saying what is wrong (bad option for the device, data missing, ``out`` taken).

    Notes
    -----
    Seeds the global torch RNG with ``config.seed``. Under ``torchrun`` every
    process calls it; rank 0 writes the run directory.

    Examples
    --------
    >>> result = train(RunConfig(dataset="ring8", iterations=50, quiet=True, out="runs/demo"))  # doctest: +SKIP
    >>> result.state, result.metrics["modes_covered"]  # doctest: +SKIP
    ('done', 8.0)
    """
    return _execute(config, resuming=False, overwrite=overwrite)


def resume(run_dir: str | os.PathLike[str], **changes: Any) -> RunResult:
    """Continue the run in ``run_dir`` from its newest checkpoint, exactly as if it had never stopped.

    ``changes`` may set runtime fields only (``iterations`` to train longer,
    ``device``, ``quiet``, ``data_dir``, ``workers``, ``download``, ``inception_weights``,
    ``tensorboard``); the others, ``tensorboard`` included unless changed, are the run's stored ones.

    Examples
    --------
    >>> resume("runs/demo", iterations=100, quiet=True).step  # doctest: +SKIP
    100
    """
    return _execute(resume_config(run_dir, changes), resuming=True, overwrite=False)


def _agreed_run_dir(config: RunConfig, context: DistContext) -> Path:
    if config.out is not None:
        return Path(config.out)
    name = [str(default_run_dir(config))] if context.is_main else [""]
    if context.active:
        import torch.distributed as dist

        dist.broadcast_object_list(name, src=0)
    return Path(name[0])


def _execute(config: RunConfig, *, resuming: bool, overwrite: bool) -> RunResult:
    started = time.perf_counter()
    check_inception_weights(config.inception_weights)
    check_tensorboard(config)
    device = resolve_device(config.device, int(os.environ.get("LOCAL_RANK", "0")))
    check_accelerator_options(config, device)
    context = init_distributed(device.type)
    lock = None
    try:
        small = is_small_problem(config.dataset, config.image_size, config.width)
        recorded = (stored_config(config.out) or {}).get("cpu_threads") if resuming else None
        threads = configure_threads(int(os.environ.get("LOCAL_WORLD_SIZE", "1")), small=small, recorded=recorded)
        run_dir = _agreed_run_dir(config, context)
        config = config.replace(out=str(run_dir))
        lock = lock_run_dir(run_dir, context)  # before --out is judged, cleared or resumed from
        payload = source = None
        rejected: list[tuple[Path, str]] = []
        if resuming and not list_checkpoints(run_dir):
            _warn(context, f"{run_dir} has no checkpoint yet (it stopped before its first one); starting it "
                           "again from step 0")
            resuming, overwrite = False, True
        if resuming:
            # On the CPU: RNG states must stay CPU tensors; modules and optimizers move their own parts.
            source, payload, rejected = select_checkpoint(run_dir, config, map_location="cpu")
        else:
            prepare_new_run(run_dir, config, overwrite=overwrite, clear=context.is_main)
        context.barrier()  # every rank has checked --out (and read its checkpoint) before rank 0 writes into it
        if context.is_main:
            remove_temporary_files(run_dir)
            for path, reason in rejected:
                moved = set_aside(path)
                _warn(context, f"warning: {reason}; renamed it {moved.name} and resuming from {source.name}")
        dataset = _load_data(config, context)
        outcome, trainer = _train(config, dataset, device, context, run_dir, payload, resuming, overwrite, threads,
                                  source)
    finally:
        if lock is not None:
            lock.release()
        context.close()
    code = {"done": EXIT_OK, "diverged": EXIT_DIVERGED}.get(outcome.state, EXIT_SIGNAL_BASE + (outcome.signal or 2))
    return RunResult(run_dir, outcome.state, outcome.step, outcome.metrics, code, outcome.reason,
                     time.perf_counter() - started, trainer.G, trainer.D,
                     trainer.ema.module if trainer.ema is not None else None)


def _warn(context: DistContext, message: str) -> None:
    """One line on stderr from rank 0, also under ``--quiet``."""
    if context.is_main:
        print(f"gradscope run: {message}", file=sys.stderr, flush=True)


def _load_data(config: RunConfig, context: DistContext):
    """Rank 0 loads first (and downloads with --download); the others read the files it left."""
    from gradscope.data import load_dataset

    def load(download: bool):
        return load_dataset(config.dataset, data_dir=config.data_dir, image_size=config.image_size,
                            download=download, seed=config.seed)

    if context.is_main:
        dataset = load(config.download)
        context.barrier()
        return dataset
    context.barrier()
    return load(False)


def _train(config: RunConfig, dataset, device: torch.device, context: DistContext, run_dir: Path,
           payload: dict[str, Any] | None, resuming: bool, overwrite: bool,
           threads: int, source: Path | None = None) -> tuple[LoopOutcome, Trainer]:
    from gradscope.record import Recorder, RunWriter

    start = int(payload["step"]) if payload is not None else 0
    progress = Progress(config.iterations, start, enabled=context.is_main and not config.quiet)
    writer = recorder = trainer = None
    try:
        if context.is_main:
            writer = RunWriter(run_dir, resume=resuming, overwrite=overwrite and not resuming)
        trainer = Trainer(config, dataset, device=device, context=context, run_dir=run_dir, writer=writer,
                          progress=progress)
        if context.is_main and config.record:
            recorder = Recorder({"D": trainer.D, "G": trainer.G}, every=config.record_every,
                                exact_every=config.exact_every or None, slopes_every=config.slopes_every,
                                out=writer, flush_every=config.flush_every, tensorboard=config.tensorboard,
                                alert_printer=None if config.quiet else progress.write, start_step=start + 1)
            trainer.attach_recorder(recorder)
        if payload is not None:
            try:
                trainer.load_state_dict(payload)
            except (KeyError, RuntimeError, TypeError, ValueError) as exc:
                detail = " ".join(str(exc).split())[:300] or type(exc).__name__
                raise CheckpointError(f"checkpoint {source} does not fit this run ({type(exc).__name__}: "
                                      f"{detail})") from None
        if writer is not None:
            writer.write_config({**config.to_dict(), "world_size": context.world_size, "cpu_threads": threads,
                                 "recorder": recorder.settings() if recorder is not None else None})
            writer.write_provenance(seed=config.seed, device=str(device))
            writer.set_status("running", step=trainer.step)
        with StopRequest() as stop:
            outcome = trainer.run(stop)
        if writer is not None:  # inside the try: a full disk while finishing is a fault like any other
            if recorder is not None:
                recorder.close(outcome.state)
            trainer.log.flush()
            if outcome.state == "done" and config.export_final:
                trainer.export_final()  # before "done": a done run that asked for final.pt has it
            info = {"reason": outcome.reason} if outcome.reason else {}
            if outcome.state == "diverged":
                info["checkpoint"] = _newest_checkpoint(run_dir)
            writer.set_status(outcome.state, step=outcome.step, **info)
    except BaseException as exc:
        step = trainer.step if trainer is not None else start
        fault = storage_fault(exc, run_dir, step)
        recorded = False
        if writer is not None:
            state = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            text = str(fault) if fault is not None else str(exc).strip()
            recorded = record_failure(writer, recorder, run_dir, state, step,
                                      text.splitlines()[0] if text else type(exc).__name__)
        progress.close()
        if fault is not None:
            fault.args = (f"{fault}; " + (f"status.json says failed; once there is room, continue with "
                                          f"gradscope run --resume {run_dir}" if recorded else
                                          "status.json could not be updated either (it may still say running)"),)
            raise fault from exc
        raise
    finally:
        if writer is not None:
            writer.close()  # releases the run directory (the trainer's own lock goes in _execute)
    progress.close()
    _report(outcome, run_dir, progress, config)
    return outcome, trainer


def _newest_checkpoint(run_dir: Path) -> str | None:
    """The run-relative name of the newest checkpoint, ``None`` if there is none."""
    found = list_checkpoints(run_dir)
    return str(found[-1][1].relative_to(run_dir)) if found else None


def _metric_hint(name: str) -> str:
    if name.endswith(("_fid", "_kid_mean")) or name == "kl_uniform":
        return " (lower is better)"
    if name.endswith("_is_mean") or name in ("modes_covered", "high_quality_fraction"):
        return " (higher is better)"
    return ""


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def summary_lines(outcome: LoopOutcome, run_dir: Path, config: RunConfig) -> list[str]:
    """What the end of a finished ``gradscope run`` prints: final metrics, size on disk, the next commands."""
    run = shlex.quote(str(run_dir))
    lines = [f"done at step {outcome.step}; run directory {run_dir}"]
    shown = {k: v for k, v in outcome.metrics.items() if not k.endswith("_std")}
    if shown:
        values = ", ".join(f"{k} {v:.4g}{_metric_hint(k)}" for k, v in shown.items())
        lines.append(f"final metrics (step {outcome.step}, {config.eval_samples} samples): {values}")
    else:
        lines.append(f"no sample-quality evaluation (--eval-every 0); gradscope eval {run} computes one")
    sizes = disk_usage(run_dir)
    count = len(list_checkpoints(run_dir))
    files = f"{count} file{'s' * (count != 1)}, --keep-checkpoints {config.keep_checkpoints}"
    parts = [f"checkpoints {_megabytes(sizes['checkpoints'])} ({files})"]
    if sizes["final"]:
        parts.append(f"{FINAL_FILE} {_megabytes(sizes['final'])} (weights only)")
    lines.append(f"on disk: {_megabytes(sizes['total'])} in all; " + ", ".join(parts))
    lines += ["next:", f"  gradscope plot {run}          # figures into {shlex.quote(str(run_dir / 'plots'))}",
              f"  gradscope report {run} -o {shlex.quote(str(run_dir / 'report.html'))}",
              f"  gradscope eval {run}",
              f"  gradscope run --resume {run} --iterations {2 * outcome.step}"]
    return lines


def _report(outcome: LoopOutcome, run_dir: Path, progress: Progress, config: RunConfig) -> None:
    """A finished run is summarized on stdout (not when quiet); a stopped one always on stderr."""
    if outcome.state == "done":
        if progress.enabled:
            for line in summary_lines(outcome, run_dir, config):
                progress.write(line)
    elif outcome.state == "diverged":
        newest = list_checkpoints(run_dir)
        kept = (f"recorded data and the newest checkpoint (step {newest[-1][0]}, {newest[-1][1].name}) are kept"
                if newest else "recorded data is kept (no checkpoint was written before it)")
        print(f"gradscope run: diverged: {outcome.reason}; {kept} in {run_dir}", file=sys.stderr, flush=True)
    else:
        print(f"gradscope run: interrupted at step {outcome.step} (checkpoint written); continue with: "
              f"gradscope run --resume {run_dir}", file=sys.stderr, flush=True)
