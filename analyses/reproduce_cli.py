"""Run analyses at a chosen scale and write their data (CSV), checks and figures (PNG, PDF).

Sub-command ``gradscope reproduce``: ``gradscope reproduce c5 --scale small
--out figures-run`` or ``--all``. Each analysis writes into ``OUT/<name>/``:
its tidy tables, ``checks.csv``, ``result.json`` and figures. Exit code 1 when
an analysis fails to run or a must-hold check does not hold.
"""
from __future__ import annotations

import argparse
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


def execute(args: argparse.Namespace) -> int:
    """Run the analyses; return the exit code."""
    scale = check_scale(args.scale)
    if args.all and args.names:
        raise ValueError("give analysis names or --all, not both")
    if not args.all and not args.names:
        raise ValueError(f"name an analysis ({', '.join(registry.NAMES)}) or pass --all")
    names = list(registry.NAMES) if args.all else registry.parse_names(",".join(args.names))
    outcome = run_selected(names, scale, args.out, seed=args.seed)
    print(outcome.report())
    for name, result in outcome.results.items():
        print(f"{name}: {result.out}  ({len(result.tables)} tables, {len(result.figures)} figure files)")
    return outcome.exit_code()
