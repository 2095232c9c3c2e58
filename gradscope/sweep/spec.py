"""Sweep specifications: a base ``gradscope run`` configuration and a grid over any of its flags.

A spec is a TOML file::

    name = "sn-vs-bssn"          # optional
    max_retries = 1              # optional: retries of a failed run (default 1)
    preset = "A-cifar10"         # optional: start from one of the authors' grids

    [base]                       # any `gradscope run` flag, with - or _
    dataset = "digits"
    iterations = 2000

    [grid]                       # every combination of these values is one run
    norm = ["ssn", "bssn"]
    scale = [0.8, 1.0, 1.2]
    seed = [0, 1, 2]

An axis whose values are all tables is a list of *arms*: each table sets several
flags at once, for conditions that are not a product of flags (its own key is
only a label)::

    [grid]
    arm = [{norm = "none", init = "lecun"}, {norm = "sn"}, {norm = "bssn", scale = 1.4}]
    seed = [0, 1, 2]

Keys are checked against the real ``gradscope run`` parser, and every grid point
is parsed by it, so a bad key or value fails before anything starts.
"""
from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from gradscope._checks import check_int_at_least

#: Keys the sweep sets itself; a spec may not set them.
RESERVED = ("out", "resume", "overwrite", "config", "quiet")

_SCALES_CIFAR = [0.7, 0.8, 0.9, 1.0] + [round(1.2 + 0.2 * i, 1) for i in range(15)]  # 1.2 .. 4.0
_SCALES_OTHER = [0.7, 0.8, 0.9, 1.0, 1.2, 1.4, 1.6]
_SEEDS = [0, 1, 2, 3, 4]

#: The authors' grids (THEORY.md, "Reference setup") per setting and dataset. The
#: per-run settings (learning rates, betas, n_dis, iterations) come from the run
#: presets A/B/C of :mod:`gradscope.train.presets`; these add what varies.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {}
for _dataset in ("cifar10", "stl10", "celeba"):
    PRESETS[f"A-{_dataset}"] = {
        "base": {"preset": "A", "dataset": _dataset},
        "grid": {"norm": ["ssn", "bssn"],
                 "scale": _SCALES_CIFAR if _dataset == "cifar10" else _SCALES_OTHER, "seed": _SEEDS},
    }
    PRESETS[f"B-{_dataset}"] = {
        "base": {"preset": "B", "dataset": _dataset},
        "grid": {"norm": ["sn", "bsn"], "lr-d": [1e-4, 2e-4], "lr-g": [1e-4, 2e-4], "seed": _SEEDS},
    }
    PRESETS[f"C-{_dataset}"] = {
        "base": {"preset": "C", "dataset": _dataset},
        "grid": {"norm": ["sn", "bsn", "ssn", "bssn"], "seed": _SEEDS},
    }


def _flag(key: str) -> str:
    return key.strip().replace("_", "-")


def _as_cli_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


@dataclass(frozen=True)
class RunPoint:
    """One grid point: its identifier, the flags that differ per run and the full flag set."""

    run_id: str
    params: dict[str, Any]
    flags: dict[str, Any] = field(repr=False)

    def argv(self, out: Path) -> list[str]:
        """The ``gradscope run`` arguments for this point, writing into ``out``."""
        args = ["run"]
        for key, value in self.flags.items():
            if isinstance(value, bool):
                if value:
                    args.append(f"--{key}")
                continue
            args += [f"--{key}", _as_cli_value(value)]
        return args + ["--out", str(out)]


@dataclass(frozen=True)
class SweepSpec:
    """A validated sweep: a name, the base flags, the grid axes and the expanded points."""

    name: str
    base: dict[str, Any]
    grid: dict[str, list[Any]]
    max_retries: int
    points: tuple[RunPoint, ...]

    def fingerprint(self) -> str:
        """A stable hash of what the sweep runs; a directory holds one sweep only."""
        return _fingerprint(self.base, self.grid)

    def grows(self, fingerprint: str, run_ids: Iterable[str]) -> bool:
        """Whether this spec is the sweep of ``fingerprint`` with values added to its grid axes.

        ``run_ids`` are the runs the earlier sweep holds. Restricting each axis
        to the values those runs use must give back the earlier sweep exactly
        (same base, same axes, same values in the same order), so runs already
        made keep their meaning and only new grid points are added.
        """
        held = set(run_ids)
        axes = list(self.grid)
        used: dict[str, set[int]] = {axis: set() for axis in axes}
        combos = itertools.product(*(range(len(self.grid[a])) for a in axes))
        for point, combo in zip(self.points, combos):
            if point.run_id in held:
                for axis, index in zip(axes, combo):
                    used[axis].add(index)
        if not held <= {point.run_id for point in self.points}:
            return False
        earlier = {axis: [v for i, v in enumerate(self.grid[axis]) if i in used[axis]] for axis in axes}
        return all(earlier.values()) and _fingerprint(self.base, earlier) == fingerprint


def _fingerprint(base: dict[str, Any], grid: dict[str, list[Any]]) -> str:
    payload = json.dumps({"base": base, "grid": grid}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _run_id(params: dict[str, Any]) -> str:
    if not params:
        return "run"
    text = "_".join(f"{k}={_as_cli_value(v)}" for k, v in params.items())
    text = re.sub(r"[^A-Za-z0-9=._,-]", "-", text)
    if len(text) > 120:
        text = text[:100] + "-" + hashlib.sha1(text.encode()).hexdigest()[:10]
    return text


def _run_parser() -> argparse.ArgumentParser:
    from gradscope.cli import build_parser

    parser = build_parser("run")
    run_parser = next(a for a in parser._subparsers._group_actions if a.dest == "command").choices["run"]
    return run_parser


def _known_flags(run_parser: argparse.ArgumentParser) -> set[str]:
    return {opt[2:] for action in run_parser._actions for opt in action.option_strings if opt.startswith("--")}


def _check_parses(run_parser: argparse.ArgumentParser, argv: list[str], where: str) -> None:
    """Parse a point's flags with the real ``run`` parser and build its RunConfig; complaints become ValueErrors."""
    messages: list[str] = []

    def error(message: str) -> None:
        messages.append(message)
        raise SystemExit(2)

    from gradscope.train.cli import config_from_args

    original = run_parser.error
    run_parser.error = error  # type: ignore[method-assign]
    try:
        config_from_args(run_parser.parse_args(argv))
    except SystemExit:
        raise ValueError(f"{where}: {messages[0] if messages else 'invalid value'}") from None
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None
    finally:
        run_parser.error = original  # type: ignore[method-assign]


def parse_spec(data: dict[str, Any], *, source: str = "spec") -> SweepSpec:
    """Validate a spec given as a dict (the parsed TOML) and expand its grid.

    Raises
    ------
    ValueError
        One line naming the offending key: unknown top-level key or flag, a key
        reserved for the sweep, an empty grid axis, or a value ``gradscope run``
        rejects.

    Examples
    --------
    >>> spec = parse_spec({"base": {"iterations": 10}, "grid": {"norm": ["sn", "bsn"]}})
    >>> [p.run_id for p in spec.points]
    ['norm=sn', 'norm=bsn']
    """
    allowed_top = {"name", "base", "grid", "max_retries", "preset"}
    for key in data:
        if key not in allowed_top:
            raise ValueError(f"{source}: unknown key {key!r}; valid keys: {', '.join(sorted(allowed_top))}")
    base: dict[str, Any] = {}
    grid: dict[str, list[Any]] = {}
    if "preset" in data:
        from gradscope._checks import check_choice

        preset = PRESETS[check_choice("sweep preset", data["preset"], sorted(PRESETS))]
        base.update(preset["base"])
        grid.update({k: list(v) for k, v in preset["grid"].items()})
    for section in ("base", "grid"):
        if section in data and not isinstance(data[section], dict):
            raise ValueError(f"{source}: [{section}] must be a table of flag = value")
    base.update({_flag(k): v for k, v in data.get("base", {}).items()})
    arms: set[str] = set()
    for key, values in data.get("grid", {}).items():
        if not isinstance(values, list) or not values:
            raise ValueError(f"{source}: grid key {key!r} must be a non-empty list of values")
        tables = [isinstance(v, dict) for v in values]
        if any(tables):
            if not all(tables) or not all(values):
                raise ValueError(f"{source}: grid key {key!r} mixes tables and plain values (or has an empty "
                                 "table); an axis of arms holds only non-empty tables of flag = value")
            values = [{_flag(k): v for k, v in table.items()} for table in values]
            arms.add(_flag(key))
            for table in values:
                for flag in table:
                    base.pop(flag, None)
        grid[_flag(key)] = list(values)
        base.pop(_flag(key), None)
    max_retries = check_int_at_least(f"{source}: max_retries", data.get("max_retries", 1), 0)

    run_parser = _run_parser()
    known = _known_flags(run_parser)
    flags = [k for k in grid if k not in arms] + [k for a in arms for table in grid[a] for k in table]
    for key in list(base) + flags:
        if key in RESERVED:
            raise ValueError(f"{source}: key {key!r} is set by the sweep itself; remove it")
        if key not in known:
            raise ValueError(f"{source}: unknown flag {key!r}; see `gradscope run --help` for the valid ones")

    axes = list(grid)
    points = []
    seen: set[str] = set()
    for combo in itertools.product(*(grid[a] for a in axes)):
        params: dict[str, Any] = {}
        for axis, value in zip(axes, combo):
            params.update(value if axis in arms else {axis: value})
        point = RunPoint(_run_id(params), params, {**base, **params})
        if point.run_id in seen:
            raise ValueError(f"{source}: the grid repeats the point {point.run_id!r}")
        seen.add(point.run_id)
        _check_parses(run_parser, point.argv(Path("x"))[1:], f"{source}: run {point.run_id}")
        points.append(point)
    if not points:
        raise ValueError(f"{source}: the grid is empty")
    name = str(data.get("name") or data.get("preset") or "sweep")
    return SweepSpec(name, base, grid, max_retries, tuple(points))


def load_spec(path: str | Path) -> SweepSpec:
    """Read and validate a TOML sweep spec (see the module docstring for the format)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"sweep spec {str(path)!r} does not exist")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: not valid TOML ({exc})") from None
    return parse_spec(data, source=str(path))
