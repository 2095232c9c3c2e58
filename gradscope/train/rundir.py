"""The run directory's life: refuse to clobber, start fresh on request, read a run back for resuming.

Nothing already on disk is overwritten unless asked (``--overwrite``), and
``--overwrite`` only removes what gradscope writes: the recorder's files, the
checkpoints, the sample pictures and stored evaluations.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gradscope.record.lock import LOCK_FILE, DirectoryLock
from gradscope.train.checkpoint import CHECKPOINT_DIR, FINAL_FILE, list_checkpoints
from gradscope.train.config import RUNTIME_FIELDS, RunConfig
from gradscope.train.evaluation import SAMPLES_DIR

if TYPE_CHECKING:  # pragma: no cover
    from gradscope.train.distributed import DistContext

CONFIG_FILE = "config.json"
#: Where ``gradscope eval`` stores its numbers inside a run.
EVAL_DIR = "eval"
#: config.json keys that are not RunConfig fields (written by the trainer for readers of the run).
EXTRA_KEYS = ("recorder", "world_size", "cpu_threads")


def stored_config(run_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The run's ``config.json`` as a dict, ``None`` if absent; a damaged file is a one-line ``ValueError``."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.exists():
        return None
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path} cannot be read ({exc}); it is not a usable gradscope run") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path} is not a gradscope run configuration")
    return values


def config_of_run(run_dir: str | os.PathLike[str]) -> RunConfig:
    """The :class:`RunConfig` a run directory was started with."""
    values = stored_config(run_dir)
    if values is None:
        raise FileNotFoundError(f"{run_dir} is not a gradscope run (no {CONFIG_FILE})")
    fields = {k: v for k, v in values.items() if k not in EXTRA_KEYS}
    return RunConfig.from_dict(fields, where=str(Path(run_dir) / CONFIG_FILE))


def differences(new: RunConfig, old: dict[str, Any]) -> list[str]:
    """``"key: new vs old"`` for each setting that decides the computation and differs."""
    mine = new.identity()
    found = []
    for key, value in mine.items():
        theirs = old.get(key)
        if theirs != value:
            found.append(f"{key.replace('_', '-')} {value!r} here vs {theirs!r} there")
    return found


def _is_gradscope_run(path: Path) -> bool:
    return (path / CONFIG_FILE).exists() or (path / "status.json").exists() or bool(list_checkpoints(path))


def prepare_new_run(run_dir: str | os.PathLike[str], config: RunConfig, *, overwrite: bool = False,
                    clear: bool = False) -> None:
    """Check that a new run may start in ``run_dir``; with ``clear`` (rank 0) remove an old run being overwritten.

    Raises
    ------
    ValueError
        When ``run_dir`` holds this run already, another run, or other files, without ``overwrite``.
    """
    path = Path(run_dir)
    if path.exists() and not path.is_dir():
        raise ValueError(f"--out {path} exists and is not a directory; choose another --out")
    if not path.exists() or not any(p.name != LOCK_FILE for p in path.iterdir()):  # our own lock is no content
        return
    if overwrite:
        if clear and _is_gradscope_run(path):
            for folder in (CHECKPOINT_DIR, SAMPLES_DIR, EVAL_DIR):
                shutil.rmtree(path / folder, ignore_errors=True)
        return
    if not _is_gradscope_run(path):
        raise ValueError(f"--out {path} exists and is not an empty directory; choose another --out "
                         "or add --overwrite to write into it")
    old = stored_config(path) or {}
    changed = differences(config, old)
    if changed:
        raise ValueError(f"--out {path} holds a different run ({'; '.join(changed[:3])}); choose another --out "
                         "or add --overwrite to replace it")
    if not list_checkpoints(path):
        raise ValueError(f"--out {path} already holds this run, stopped before its first checkpoint; "
                         f"--resume {path} starts it again from step 0 (as does --overwrite)")
    raise ValueError(f"--out {path} already holds this run; continue it with --resume {path} or add --overwrite "
                     "to start it again")


def lock_run_dir(run_dir: Path, context: DistContext) -> DirectoryLock | None:
    """Rank 0 locks ``run_dir`` for this process's life (release it when done); every rank raises if it could not.

    Raises
    ------
    ValueError
        ``run_dir`` is a file, cannot be created, or another process holds it
        (:class:`~gradscope.record.lock.DirectoryBusy`, naming the holder's pid).
    """
    lock, problem = None, None
    if context.is_main:
        if run_dir.exists() and not run_dir.is_dir():
            problem = ValueError(f"--out {run_dir} exists and is not a directory; choose another --out")
        else:
            try:
                lock = DirectoryLock(run_dir, "run directory", "wait for it or choose another --out").acquire()
            except ValueError as exc:
                problem = exc
            except OSError as exc:
                problem = ValueError(f"--out {run_dir} is not writable: {exc.strerror or exc}")
    (failed,) = context.any(problem is not None)
    if failed:
        raise problem or ValueError(f"rank 0 could not lock the run directory {run_dir}")
    return lock


def resume_config(run_dir: str | os.PathLike[str], changes: dict[str, Any]) -> RunConfig:
    """The stored config of ``run_dir`` with runtime ``changes`` (iterations, device, ...) applied.

    Raises ``ValueError`` if ``changes`` touches a setting that decides the computation.
    """
    fixed = sorted(k for k in changes if k not in RUNTIME_FIELDS or k == "out")
    if fixed:
        named = ", ".join("--" + k.replace("_", "-") for k in fixed)
        allowed = ", ".join("--" + k.replace("_", "-") for k in sorted(RUNTIME_FIELDS - {"out"}))
        raise ValueError(f"--resume continues the run as it was configured; {named} cannot change "
                         f"(only {allowed} can)")
    return config_of_run(run_dir).replace(**{**changes, "out": str(run_dir)})


def disk_usage(run_dir: str | os.PathLike[str]) -> dict[str, int]:
    """Bytes on disk of the run: ``total``, its ``checkpoints`` folder and ``final`` (``final.pt``).

    Examples
    --------
    >>> import tempfile
    >>> disk_usage(tempfile.mkdtemp())
    {'total': 0, 'checkpoints': 0, 'final': 0}
    """
    root = Path(run_dir)
    sizes = {"total": 0, "checkpoints": 0, "final": 0}
    for path in root.rglob("*"):
        try:
            if path.is_symlink() or not path.is_file():
                continue
            size = path.stat().st_size
        except OSError:  # removed meanwhile
            continue
        sizes["total"] += size
        if path.parent == root / CHECKPOINT_DIR:
            sizes["checkpoints"] += size
    final = root / FINAL_FILE
    sizes["final"] = final.stat().st_size if final.is_file() else 0
    return sizes
