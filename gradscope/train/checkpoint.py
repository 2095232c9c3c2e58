"""Checkpoints: ``<run>/checkpoints/step_00001000.pt``, written atomically, verified when read.

A checkpoint holds only tensors and plain Python values (dicts, lists,
numbers, strings), so ``torch.load(..., weights_only=True)`` reads it and a
file from elsewhere cannot execute code. It is written to a temporary file
(``.tmp-*.pt``) in the same directory, flushed to disk and renamed over the
final name: a kill at any moment leaves either the previous set of checkpoints
or the new one, never a half-written file under a checkpoint name (a leftover
temporary file is removed when the run starts again).

Each checkpoint (format 2) carries

* ``identity``: the digest of the run's configuration (the settings that decide
  the computation, :meth:`RunConfig.identity`) and its step, so that a file of
  another run or of another step is refused;
* ``integrity``: the SHA-256 of everything else (every tensor's bytes, dtype
  and shape, every plain value), so that a changed byte is refused. Hashing
  costs about 10 ms for the default mnist job's 9.4 MB checkpoint and 55 ms
  for digits' 80 MB (2 CPU cores; writing them takes 27 and 117 ms).

Resuming takes the newest checkpoint that passes both checks
(:func:`select_checkpoint`); the ones it skips are renamed
``step_*.pt.rejected`` with a one-line warning each.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from gradscope.train.config import RunConfig

CHECKPOINT_DIR = "checkpoints"
#: The weights-only export of a finished run (``--export-final``).
FINAL_FILE = "final.pt"
TMP_PREFIX = ".tmp-"
REJECTED_SUFFIX = ".rejected"
#: 2: with ``identity`` and ``integrity`` (also ``final.pt``); 1 (read, not verified): before them.
CHECKPOINT_FORMAT = 2
#: What a training checkpoint must hold to be resumed.
REQUIRED_KEYS: tuple[str, ...] = ("format", "step", "config", "D", "G", "opt_D", "opt_G", "rng", "data")
_NAME = re.compile(r"^step_(\d+)\.pt$")
_UMASK = os.umask(0o022)
os.umask(_UMASK)


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: one line naming the file and why."""


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


# --- digests ----------------------------------------------------------------------------------------
def _feed(hasher: Any, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        data = value.detach().cpu().contiguous().reshape(-1)
        hasher.update(f"T{data.dtype}{tuple(value.shape)}:".encode())
        hasher.update(data.view(torch.uint8).numpy().data)
    elif isinstance(value, Mapping):
        hasher.update(f"{{{len(value)}:".encode())
        for key, item in value.items():
            _feed(hasher, key)
            _feed(hasher, item)
    elif isinstance(value, (list, tuple)):
        hasher.update(f"[{len(value)}:".encode())
        for item in value:
            _feed(hasher, item)
    else:
        hasher.update(f"{type(value).__name__}={value!r};".encode())


def content_digest(payload: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of every entry of ``payload`` but ``integrity``: tensors by bytes, dtype and shape.

    Examples
    --------
    >>> a = content_digest({"w": torch.zeros(4)})
    >>> a == content_digest({"w": torch.zeros(4)}), a == content_digest({"w": torch.zeros(2, 2)})
    (True, False)
    """
    hasher = hashlib.sha256()
    _feed(hasher, {k: v for k, v in payload.items() if k != "integrity"})
    return hasher.hexdigest()


def config_digest(identity: Mapping[str, Any]) -> str:
    """Short digest (16 hex digits) of a run's :meth:`RunConfig.identity` values.

    Examples
    --------
    >>> config_digest(RunConfig(seed=1).identity()) == config_digest(RunConfig(seed=0).identity())
    False
    """
    text = json.dumps(dict(identity), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _cpu(value: Any) -> Any:
    """A copy of ``value`` with every tensor on the CPU (containers copied, their ``_metadata`` kept)."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        out = copy.copy(value)
        for key, item in value.items():
            out[key] = _cpu(item)
        return out
    if isinstance(value, (list, tuple)):
        items = [_cpu(v) for v in value]
        return items if isinstance(value, list) else tuple(items)
    return value


# --- writing ----------------------------------------------------------------------------------------
def atomic_save(obj: Any, target: Path) -> Path:
    """``torch.save`` ``obj`` to a temporary file beside ``target``, fsync it and rename it over ``target``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=".pt", dir=target.parent)
    try:
        os.chmod(tmp_name, 0o666 & ~_UMASK)  # mkstemp's 0600 would hide a run's files from its group
        with os.fdopen(handle, "wb") as file:
            torch.save(obj, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable (not possible on every platform)
        folder = os.open(target.parent, os.O_RDONLY)
    except OSError:
        return target
    try:
        os.fsync(folder)
    except OSError:
        pass
    finally:
        os.close(folder)
    return target


def seal(payload: Mapping[str, Any]) -> dict[str, Any]:
    """A CPU copy of ``payload`` with its ``integrity`` entry (the :func:`content_digest`) added."""
    sealed = _cpu({k: v for k, v in payload.items() if k != "integrity"})
    sealed["integrity"] = {"algorithm": "sha256", "digest": content_digest(sealed)}
    return sealed


def save_checkpoint(run_dir: str | os.PathLike[str], step: int, payload: dict[str, Any], *,
                    keep: int = 0) -> Path:
    """Write ``payload`` (sealed) as the checkpoint of ``step`` atomically; keep the newest ``keep`` (0: all).

    Examples
    --------
    >>> import tempfile
    >>> run = tempfile.mkdtemp()
    >>> path = save_checkpoint(run, 10, {"step": 10, "w": torch.ones(2)})
    >>> load_checkpoint(path)["w"].tolist()
    [1.0, 1.0]
    """
    target = atomic_save(seal(payload), checkpoint_path(run_dir, step))
    if keep:
        for _, old in list_checkpoints(run_dir)[:-keep]:
            old.unlink(missing_ok=True)
    return target


def remove_temporary_files(run_dir: str | os.PathLike[str]) -> list[Path]:
    """Delete ``.tmp-*.pt`` files left by writes that were killed (checkpoints and the final export)."""
    removed = []
    for folder in (Path(run_dir) / CHECKPOINT_DIR, Path(run_dir)):
        if folder.is_dir():
            for path in folder.glob(f"{TMP_PREFIX}*.pt"):
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


# --- reading ----------------------------------------------------------------------------------------
def _read(path: Path, map_location: str | torch.device) -> Any:
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint {path} does not exist") from None
    except Exception as exc:  # torch raises many types for truncated or foreign files
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"checkpoint {path} cannot be read ({detail[:200]})") from None


def _check_identity(path: Path, payload: dict[str, Any], expect: RunConfig) -> None:
    mine = expect.identity()
    theirs = payload.get("config") if isinstance(payload.get("config"), Mapping) else {}
    stored = (payload.get("identity") or {}).get("config_digest") if payload.get("format", 1) >= 2 else None
    digest = config_digest(mine)
    found = stored if stored is not None else config_digest({k: theirs.get(k) for k in mine})
    if found == digest:
        return
    changed = [f"{k.replace('_', '-')} {theirs.get(k)!r} there vs {v!r} here" for k, v in mine.items()
               if theirs.get(k) != v]
    detail = "; ".join(changed[:3]) or "settings of another gradscope version"
    raise CheckpointError(f"checkpoint {path} belongs to another run (config {found} there vs {digest} here: "
                          f"{detail})")


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu", *,
                    expect: RunConfig | None = None, required: tuple[str, ...] = ()) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True`` and verify it; a bad file is a one-line :class:`CheckpointError`.

    Parameters
    ----------
    path : path
        The checkpoint.
    map_location : str or torch.device
        Where its tensors go.
    expect : RunConfig, optional
        The run it must belong to (same :meth:`RunConfig.identity`); not checked when ``None``.
    required : tuple of str
        Entries it must hold (:data:`REQUIRED_KEYS` to resume a run).

    Raises
    ------
    CheckpointError
        Unreadable, incomplete, changed since written (content hash), of another step than its name,
        or (with ``expect``) of another run.
    """
    path = Path(path)
    payload = _read(path, map_location)
    if not isinstance(payload, dict) or "step" not in payload:
        raise CheckpointError(f"checkpoint {path} is not a gradscope checkpoint")
    missing = [key for key in required if key not in payload]
    if missing:
        raise CheckpointError(f"checkpoint {path} is incomplete (no {', '.join(missing)})")
    version = payload.get("format", CHECKPOINT_FORMAT)
    if not isinstance(version, int) or not 1 <= version <= CHECKPOINT_FORMAT:
        raise CheckpointError(f"checkpoint {path} has format {version!r}, which this gradscope does not read "
                              f"(1 to {CHECKPOINT_FORMAT})")
    if version >= 2 or "integrity" in payload:
        stored = (payload.get("integrity") or {}).get("digest")
        if stored is None:
            raise CheckpointError(f"checkpoint {path} has no content hash")
        if content_digest(payload) != stored:
            raise CheckpointError(f"checkpoint {path} is damaged: its content no longer matches the SHA-256 "
                                  "stored in it")
    match = _NAME.match(path.name)
    if match and int(match.group(1)) != int(payload["step"]):
        raise CheckpointError(f"checkpoint {path} holds step {payload['step']}, not {int(match.group(1))}")
    if expect is not None:
        _check_identity(path, payload, expect)
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


def select_checkpoint(run_dir: str | os.PathLike[str], expect: RunConfig,
                      map_location: str | torch.device = "cpu",
                      ) -> tuple[Path, dict[str, Any], list[tuple[Path, str]]]:
    """The newest checkpoint of ``run_dir`` that passes :func:`load_checkpoint` for ``expect``.

    Returns
    -------
    path, payload, rejected
        The checkpoint, its contents and, newest first, each newer one with the reason it was skipped.

    Raises
    ------
    FileNotFoundError
        The run has no checkpoints.
    CheckpointError
        None of them is usable (naming the newest one's fault).
    """
    rejected: list[tuple[Path, str]] = []
    for _, path in reversed(list_checkpoints(run_dir)):
        try:
            return path, load_checkpoint(path, map_location, expect=expect, required=REQUIRED_KEYS), rejected
        except CheckpointError as exc:
            rejected.append((path, str(exc)))
    if not rejected:
        raise FileNotFoundError(f"{run_dir} has no checkpoints (no {CHECKPOINT_DIR}/step_*.pt)")
    more = f" (and {len(rejected) - 1} older ones are unusable too)" if len(rejected) > 1 else ""
    raise CheckpointError(f"no usable checkpoint in {run_dir}: {rejected[0][1]}{more}")


def set_aside(path: Path) -> Path:
    """Rename a refused checkpoint to ``step_*.pt.rejected`` (kept, no longer read or pruned)."""
    target = path.with_name(path.name + REJECTED_SUFFIX)
    os.replace(path, target)
    return target


# --- the weights-only export ----------------------------------------------------------------------------
def save_final(run_dir: str | os.PathLike[str], payload: Mapping[str, Any]) -> Path:
    """Write ``payload`` (sealed) as ``<run>/final.pt`` atomically."""
    return atomic_save(seal({"format": CHECKPOINT_FORMAT, "kind": "final", **payload}), Path(run_dir) / FINAL_FILE)


def load_final(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and verify a ``final.pt`` written by ``--export-final`` (``weights_only=True``)."""
    return load_checkpoint(path, map_location, required=("format", "step", "config", "data", "D", "G"))


def final_networks(payload: Mapping[str, Any]) -> dict[str, torch.nn.Module | None]:
    """``{"D", "G", "G_ema"}`` modules (eval mode) rebuilt from a :func:`load_final` payload.

    Needs no dataset: the payload names the data's kind and shape. The global RNG is left as it was.

    Examples
    --------
    >>> nets = final_networks(load_final("runs/demo/final.pt"))  # doctest: +SKIP
    >>> images = nets["G_ema"](nets["G_ema"].sample_latent(16))  # doctest: +SKIP
    """
    from types import SimpleNamespace

    from gradscope.train.networks import build_networks

    config = RunConfig.from_dict(payload["config"])
    data = dict(payload["data"])
    shape = tuple(data["sample_shape"])
    spec = SimpleNamespace(kind=data["kind"], sample_shape=shape, image_size=data.get("image_size"),
                           channels=data.get("channels"))
    with torch.random.fork_rng(devices=[]):
        D, G = build_networks(config, spec)
    D.load_state_dict(payload["D"])
    G.load_state_dict(payload["G"])
    nets: dict[str, torch.nn.Module | None] = {"D": D.eval(), "G": G.eval(), "G_ema": None}
    if payload.get("G_ema") is not None:
        with torch.random.fork_rng(devices=[]):
            _, G_ema = build_networks(config, spec)
        G_ema.load_state_dict(payload["G_ema"])
        nets["G_ema"] = G_ema.eval()
    return nets
