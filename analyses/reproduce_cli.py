"""Run analyses at a chosen scale and write their data (CSV), checks and figures (PNG, PDF).

Sub-command ``gradscope reproduce``: ``gradscope reproduce c5 --scale small
--out figures-run`` or ``--all``. Each analysis writes into ``OUT/<name>/``:
its tidy tables, ``checks.csv``, ``result.json`` and figures. Exit code 1 when
an analysis fails to run or a must-hold check does not hold.
"""
from __future__ import annotations

import argparse
import importlib
import os
from pathlib import Path

from analyses import registry
from analyses.common import SCALES, check_scale
from analyses.runner import run_selected


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the arguments of ``gradscope reproduce``."""
    parser.add_argument("names", nargs="*", metavar="NAME", help="analyses to run, e.g. c5 c6 (or --all)")
    parser.add_argument("--all", action="store_true", help="run every analysis c1..c8")
    parser.add_argument("--scale", default="small", help=f"experiment size, one of {', '.join(SCALES)}")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--from-results", type=Path, default=None, metavar="DIR",
                        help="redraw the training experiments (e1..e4) from committed compact results, "
                             "DIR/<name>/*.csv.gz (e.g. results/small), without training")
    parser.add_argument("--data-dir", default=None, metavar="DIR",
                        help="where dataset files live for the runs (paper scale: cifar-10-python.tar.gz); "
                             "default $GRADSCOPE_DATA or ~/.cache/gradscope/data")
    parser.add_argument("--dataset", default=None,
                        help="train e1..e4 on this dataset instead of their scale's (mnist at tiny/small, "
                             "cifar10 at paper)")
    parser.add_argument("--no-train", action="store_true",
                        help="judge and draw what the sweeps of e1..e4 under --out hold so far; start no run")
    parser.add_argument("--dry-run", action="store_true",
                        help="list the training runs of e1..e4 and their estimated time; run nothing")


def execute(args: argparse.Namespace) -> int:
    """Run the analyses; return the exit code."""
    scale = check_scale(args.scale)
    if args.all and args.names:
        raise ValueError("give analysis names or --all, not both")
    if not args.all and not args.names:
        raise ValueError(f"name an analysis ({', '.join(registry.NAMES)}) or pass --all")
    names = list(registry.NAMES) if args.all else registry.parse_names(",".join(args.names))
    data_dir, dataset = getattr(args, "data_dir", None), getattr(args, "dataset", None)
    from_results = getattr(args, "from_results", None)
    if data_dir is not None:
        # The runs are `gradscope run` subprocesses: the environment reaches every one of them.
        os.environ["GRADSCOPE_DATA"] = str(Path(data_dir).expanduser().resolve())
    if getattr(args, "dry_run", False):
        return _dry_run(names, scale, args.out, args.seed, dataset)
    if from_results is not None and not Path(from_results).is_dir():
        raise ValueError(f"--from-results {from_results}: no such folder")
    outcome = run_selected(names, scale, args.out, seed=args.seed, from_results=from_results, dataset=dataset,
                           train=not getattr(args, "no_train", False))
    print(outcome.report())
    for name, result in outcome.results.items():
        print(f"{name}: {result.out}  ({len(result.tables)} tables, {len(result.figures)} figure files)")
    return outcome.exit_code()


def _dry_run(names: list[str], scale: str, out: Path, seed: int, dataset: str | None) -> int:
    from analyses.sweeps import run_sweeps

    for name in names:
        dotted = registry.module_name(name)
        module = importlib.import_module(dotted) if dotted else None
        if module is None or not hasattr(module, "sweeps"):
            print(f"{name}: no training sweeps (runs in-process)")
            continue
        run_sweeps(module.sweeps(scale, seed, dataset), Path(out) / name, dry_run=True, echo=print)
    return 0
