"""The sweep manifest: one JSON file recording every run's status, replaced atomically.

Only the sweep's driver process writes it. A run is marked ``done`` only after its
process exited successfully *and* its own ``status.json`` says so, so the manifest
never claims a run done that is not.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from gradscope.record.storage import write_json

STATES = ("pending", "running", "done", "diverged", "failed")
MANIFEST = "manifest.json"
#: What a run id (its folder under ``runs/``) may hold; see ``gradscope.sweep.spec``.
RUN_ID = re.compile(r"[A-Za-z0-9=._,-]+")


@dataclass
class RunEntry:
    """What the manifest knows of one run."""

    params: dict[str, Any]
    status: str = "pending"
    attempts: int = 0
    exit_code: int | None = None
    error: str | None = None
    seconds: float = 0.0


@dataclass
class Manifest:
    """All runs of a sweep keyed by run id, plus the spec's fingerprint."""

    name: str
    fingerprint: str
    runs: dict[str, RunEntry] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        """Number of runs in each state."""
        out = {state: 0 for state in STATES}
        for entry in self.runs.values():
            out[entry.status] += 1
        return out

    def save(self, directory: Path) -> None:
        """Write atomically: a reader sees the old file or the new one, never a mix."""
        payload = {"name": self.name, "fingerprint": self.fingerprint,
                   "runs": {k: asdict(v) for k, v in self.runs.items()}}
        directory.mkdir(parents=True, exist_ok=True)
        write_json(directory / MANIFEST, payload)

    @classmethod
    def load(cls, directory: Path) -> Manifest | None:
        """The manifest in ``directory``, or ``None`` when there is none.

        Raises
        ------
        ValueError
            One line naming the file when it is not JSON or not a manifest (a run whose status is not
            one of :data:`STATES`, ``params`` not an object, a count that is not a number, ...).
        """
        path = Path(directory) / MANIFEST
        if not path.exists():
            return None
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path} is corrupt (not JSON: {exc}); move it away to start the sweep afresh") \
                from None
        try:
            return _from_payload(payload)
        except _Invalid as exc:
            raise ValueError(f"{path} is corrupt ({exc}); fix it or move it away to start the sweep afresh") \
                from None


class _Invalid(Exception):
    """What is wrong with a manifest's contents (turned into a ValueError naming the file)."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _entry(run_id: str, data: Any) -> RunEntry:
    if not RUN_ID.fullmatch(run_id) or run_id in (".", ".."):  # a folder name under runs/, never a path
        raise _Invalid(f"run id {run_id!r} is not a run folder name")
    if not isinstance(data, dict):
        raise _Invalid(f"run {run_id!r} is a JSON {type(data).__name__}, not an object")
    unknown = sorted(set(data) - {f.name for f in fields(RunEntry)})
    if unknown:
        raise _Invalid(f"run {run_id!r} has an unknown key {unknown[0]!r}")
    if "params" not in data:
        raise _Invalid(f"run {run_id!r} has no 'params'")
    entry = RunEntry(**data)
    if not isinstance(entry.params, dict):
        raise _Invalid(f"run {run_id!r}: params is {json.dumps(entry.params)}, not an object")
    if entry.status not in STATES:
        raise _Invalid(f"run {run_id!r}: status {json.dumps(entry.status)} is not one of {', '.join(STATES)}")
    if not _is_int(entry.attempts) or entry.attempts < 0:
        raise _Invalid(f"run {run_id!r}: attempts {json.dumps(entry.attempts)} is not a count")
    if entry.exit_code is not None and not _is_int(entry.exit_code):
        raise _Invalid(f"run {run_id!r}: exit_code {json.dumps(entry.exit_code)} is not an integer or null")
    if entry.error is not None and not isinstance(entry.error, str):
        raise _Invalid(f"run {run_id!r}: error {json.dumps(entry.error)} is not a string or null")
    if isinstance(entry.seconds, bool) or not isinstance(entry.seconds, (int, float)) \
            or not math.isfinite(entry.seconds) or entry.seconds < 0:
        raise _Invalid(f"run {run_id!r}: seconds {json.dumps(entry.seconds)} is not a duration")
    entry.seconds = float(entry.seconds)
    return entry


def _from_payload(payload: Any) -> Manifest:
    if not isinstance(payload, dict):
        raise _Invalid(f"a JSON {type(payload).__name__}, not an object")
    for key in ("name", "fingerprint", "runs"):
        if key not in payload:
            raise _Invalid(f"no {key!r} key")
    for key in ("name", "fingerprint"):
        if not isinstance(payload[key], str):
            raise _Invalid(f"{key} is {json.dumps(payload[key])}, not a string")
    if not isinstance(payload["runs"], dict):
        raise _Invalid(f"runs is a JSON {type(payload['runs']).__name__}, not an object")
    runs = {run_id: _entry(run_id, data) for run_id, data in payload["runs"].items()}
    return Manifest(payload["name"], payload["fingerprint"], runs)
