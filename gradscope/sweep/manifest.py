"""The sweep manifest: one JSON file recording every run's status, replaced atomically.

Only the sweep's driver process writes it. A run is marked ``done`` only after its
process exited successfully *and* its own ``status.json`` says so, so the manifest
never claims a run done that is not.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gradscope.record.storage import write_json

STATES = ("pending", "running", "done", "diverged", "failed")
MANIFEST = "manifest.json"


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
        """The manifest in ``directory``, or ``None`` when there is none."""
        path = Path(directory) / MANIFEST
        if not path.exists():
            return None
        try:
            payload = json.loads(path.read_text())
            runs = {k: RunEntry(**v) for k, v in payload["runs"].items()}
            return cls(payload["name"], payload["fingerprint"], runs)
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"{path} is corrupt ({exc}); move it away to start the sweep afresh") from None
