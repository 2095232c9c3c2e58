"""Checkpoints: ``<run>/checkpoints/step_00001000.pt``, written atomically, read with ``weights_only``.

A checkpoint holds only tensors and plain Python values (dicts, lists,
numbers, strings), so ``torch.load(..., weights_only=True)`` reads it and a
file from elsewhere cannot execute code. It is written to a temporary file in
the same directory, flushed to disk and renamed over the final name: a crash at
any moment leaves either the previous set of checkpoints or the new one, never
a half-written file under a checkpoint name.
"""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_DIR = "checkpoints"
_NAME = re.compile(r"^step_(\d+)\.pt$")


def checkpoint_path(run_dir: str | os.PathLike[str], step: int) -> Path:
    """Where the checkpoint of ``step`` lives."""
    return Path(run_dir) / CHECKPOINT_DIR / f"step_{step:08d}.pt"


def list_checkpoints(run_dir: str | os.PathLike[str]) -> list[tuple[int, Path]]:
    """``(step, path)`` of every checkpoint of the run, oldest first."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return sorted(found)


def save_checkpoint(run_dir: str | os.PathLike[str], step: int, payload: dict[str, Any], *,
                    keep: int = 0) -> Path:
    """Write ``payload`` as the checkpoint of ``step`` atomically; keep the newest ``keep`` (0: all).

    Examples
    --------
    >>> import tempfile
    >>> run = tempfile.mkdtemp()
    >>> path = save_checkpoint(run, 10, {"step": 10, "w": torch.ones(2)})
    >>> load_checkpoint(path)["w"].tolist()
    [1.0, 1.0]
    """
    target = checkpoint_path(run_dir, step)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=target.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(payload, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    if keep:
        for _, old in list_checkpoints(run_dir)[:-keep]:
            old.unlink(missing_ok=True)
    return target


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; a damaged file is a one-line ``ValueError``."""
    path = Path(path)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint {path} does not exist") from None
    except Exception as exc:  # torch raises many types for truncated or foreign files
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"checkpoint {path} cannot be read ({detail}); delete it to fall back to an "
                         "earlier one") from None
    if not isinstance(payload, dict) or "step" not in payload:
        raise ValueError(f"checkpoint {path} is not a gradscope checkpoint")
    return payload


def find_checkpoint(run_dir: str | os.PathLike[str], step: int | None = None) -> Path:
    """The checkpoint of ``step``, or the newest one; ``FileNotFoundError`` naming what exists."""
    found = list_checkpoints(run_dir)
    if not found:
        raise FileNotFoundError(f"{run_dir} has no checkpoints (no {CHECKPOINT_DIR}/step_*.pt)")
    if step is None:
        return found[-1][1]
    for candidate, path in found:
        if candidate == step:
            return path
    steps = ", ".join(str(s) for s, _ in found)
    raise FileNotFoundError(f"{run_dir} has no checkpoint of step {step}; available steps: {steps}")
