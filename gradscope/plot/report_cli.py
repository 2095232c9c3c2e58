"""Write one self-contained HTML report of runs and analysis verdicts (figures embedded).

Sub-command ``gradscope report RUN_DIR ... -o report.html [--analyses DIR ...]``.
The file has no external references: open it anywhere, offline.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from gradscope.plot.cli import parse_figures
from gradscope.plot.report import write_report
from gradscope.plot.runs import FIGURES


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the arguments of ``gradscope report``."""
    parser.add_argument("runs", nargs="*", metavar="RUN_DIR", help="run directories")
    parser.add_argument("-o", "--out", type=Path, default=Path("report.html"), help="output HTML file")
    parser.add_argument("--analyses", nargs="+", default=[], metavar="DIR",
                        help="analysis output directories (from reproduce/check --out) whose verdicts to include")
    parser.add_argument("--title", default="gradscope report", help="page title")
    parser.add_argument("--net", default="D", help="recorded net whose layers the figures show")
    parser.add_argument("--figures", default=",".join(FIGURES), help="comma-separated run figures to embed")


def execute(args: argparse.Namespace) -> int:
    """Write the report; print its path; return 0."""
    for path in args.runs:
        if not Path(path).is_dir():
            raise FileNotFoundError(f"no run directory {path}")
    path = write_report(args.out, args.runs, args.analyses, title=args.title, net=args.net,
                        figures=parse_figures(args.figures))
    print(path)
    return 0
