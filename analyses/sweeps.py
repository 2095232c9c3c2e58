"""The experiments' compute: each training analysis (E1-E4) declares its runs as sweeps, run here.

An experiment module exposes ``sweeps(scale, seed) -> {name: spec dict}``
(the dict form of a sweep TOML, see :mod:`gradscope.sweep.spec`). Its
``run`` calls :func:`run_sweeps`, which runs (or resumes: finished runs are
kept) every sweep into ``<analysis out>/sweeps/<name>`` and returns their
summary tables. The same runs can be started ahead of the analysis, in the
background, by ``python -m analyses.sweeps e1 e2 --scale small --out OUT``
(what ``gradscope reproduce e1 e2 --scale small --out OUT`` would run first),
or planned with ``--dry-run``.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from typing import Any

import pandas as pd

SWEEPS_DIR = "sweeps"


def sweep_dir(out: str | Path, name: str) -> Path:
    """Where the sweep ``name`` of an analysis writing to ``out`` keeps its runs."""
    return Path(out) / SWEEPS_DIR / name


def run_sweeps(specs: dict[str, dict[str, Any]], out: str | Path, *, max_parallel: int | None = 2,
               dry_run: bool = False, execute: bool = True, echo=lambda *_: None) -> dict[str, pd.DataFrame]:
    """Run (or resume) each spec into ``out/sweeps/<name>``; return ``{name: summary_table}``.

    With ``dry_run`` nothing runs: each sweep's points and the time estimate are
    passed to ``echo`` and the returned tables are empty. With ``execute=False``
    nothing runs either, and the tables summarize what the sweeps hold so far
    (for a look at a sweep still running elsewhere).
    """
    from gradscope.sweep import parse_spec, run_sweep, summary_table

    tables = {}
    for name, data in specs.items():
        spec = parse_spec({"name": name, **data}, source=f"sweep {name}")
        directory = sweep_dir(out, name)
        if dry_run:
            echo(f"sweep {name}: {len(spec.points)} runs in {directory}")
        if not execute:
            tables[name] = summary_table(directory) if (directory / "manifest.json").exists() else pd.DataFrame()
            continue
        run_sweep(spec, directory, max_parallel=max_parallel, dry_run=dry_run, echo=echo)
        tables[name] = pd.DataFrame() if dry_run else summary_table(directory)
    return tables


def main(argv: list[str] | None = None) -> int:
    """``python -m analyses.sweeps NAME[:SWEEP] ... --scale S --out OUT [--dry-run]``."""
    from analyses import registry

    parser = argparse.ArgumentParser(prog="python -m analyses.sweeps", description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="+", help="analyses (e1 .. e4), optionally NAME:SWEEP for one sweep")
    parser.add_argument("--scale", default="small")
    parser.add_argument("--out", type=Path, required=True, help="the --out of gradscope reproduce")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-parallel", type=int, default=2)
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    for item in args.names:
        name, _, only = item.partition(":")
        dotted = registry.module_name(name)
        module = importlib.import_module(dotted) if dotted else None
        if not hasattr(module, "sweeps"):
            parser.error(f"{name} runs no sweeps")
        specs = module.sweeps(args.scale, args.seed)
        if only:
            if only not in specs:
                parser.error(f"{name} has no sweep {only!r}; it has {', '.join(specs)}")
            specs = {only: specs[only]}
        run_sweeps(specs, args.out / registry.normalize_name(name), max_parallel=args.max_parallel,
                   dry_run=args.dry_run, echo=print)
    return 0


if __name__ == "__main__":
    sys.exit(main())


#: The CPU setting every experiment shares at ``small`` scale: the 5,000 MNIST digits at 32x32 (the
#: reference SNDCGAN geometry) at an eighth of the reference channels, batch 32 (measured on 2 cores with
#: two runs side by side, one thread each: 0.1 s per iteration; a 1000-iteration run reaches mnist-FID
#: 160-230 from 1099). Runs keep one checkpoint and no sample grids: the analyses need their tables.
CPU_SETTING: dict[str, Any] = {"dataset": "mnist", "image-size": 32, "width": 0.125, "batch-size": 32,
                               "sample-every": 0, "keep-checkpoints": 1, "exact-every": 0}
#: The same at ``tiny`` scale (the test suite): a few iterations of a smaller batch.
TINY_SETTING: dict[str, Any] = {**CPU_SETTING, "batch-size": 16, "checkpoint-every": 0}
#: The authors' CIFAR-10 setting A (``--preset A``: lr 1e-4, betas (0.5, 0.999), n_dis 1, 400k iterations),
#: Inception metrics; ``--data-dir`` must hold cifar-10-python.tar.gz.
PAPER_SETTING: dict[str, Any] = {"preset": "A", "dataset": "cifar10", "sample-every": 10_000,
                                 "eval-every": 10_000, "eval-samples": 10_000, "exact-every": 10_000}


def setting(scale: str, dataset: str | None = None, **changes: Any) -> dict[str, Any]:
    """The shared base flags at ``scale`` (``tiny``, ``small``, ``paper``) with ``changes`` applied.

    ``dataset`` replaces the scale's dataset (e.g. ``cifar10`` at ``tiny`` scale, to test the paper's
    pipeline end to end on small fake archives); its files come from ``--data-dir``.
    """
    from analyses.common import check_scale

    base = {"tiny": TINY_SETTING, "small": CPU_SETTING, "paper": PAPER_SETTING}[check_scale(scale)]
    if dataset is not None:
        from gradscope._checks import check_choice
        from gradscope.data import DATASETS

        base = {**base, "dataset": check_choice("dataset", dataset, DATASETS)}
    return {**base, **changes}
