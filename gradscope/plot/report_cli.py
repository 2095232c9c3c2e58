"""Write one self-contained HTML report of runs and analysis verdicts (figures embedded).

Sub-command ``gradscope report DIR ... -o report.html``. Each DIR is a run
directory (``gradscope run``) or an analysis output (``gradscope reproduce
--out OUT``: ``OUT`` itself or ``OUT/c5``), told apart by its ``result.json``.
The file has no external references: open it anywhere, offline.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from gradscope.plot.cli import parse_figures
from gradscope.plot.report import find_analyses, write_report
from gradscope.plot.runs import FIGURES


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the arguments of ``gradscope report``."""
    parser.add_argument("runs", nargs="*", metavar="DIR", help="run directories and analysis output directories")
    parser.add_argument("-o", "--out", type=Path, default=Path("report.html"), help="output HTML file")
    parser.add_argument("--analyses", nargs="+", default=[], metavar="DIR",
                        help="analysis output directories (from reproduce/check --out) whose verdicts to include")
    parser.add_argument("--title", default="gradscope report", help="page title")
    parser.add_argument("--net", default=None,
                        help="recorded net whose layers the figures show; None: D if recorded, else the only net")
    parser.add_argument("--loss-name", default=None, metavar="NAME",
                        help="what the loss L is (e.g. cross-entropy), written on the gradient axes")
    parser.add_argument("--figures", default=",".join(FIGURES), help="comma-separated run figures to embed")


def check_output_file(out: Path) -> None:
    """Refuse, before any work, an ``-o`` that is a folder or lies in a folder that does not exist
    (a mistyped path must not create folders)."""
    out = Path(out)
    if out.is_dir():
        raise ValueError(f"-o {out} is a folder; give the report's file name, such as {out / 'report.html'}")
    parent = out.parent
    if not parent.is_dir():
        if parent.exists():
            raise ValueError(f"-o {out}: {parent} is a file, not a folder; choose another -o")
        raise FileNotFoundError(f"-o {out}: the folder {parent} does not exist; create it first or choose "
                                "another -o")


def execute(args: argparse.Namespace) -> int:
    """Write the report; print its path; return 0."""
    check_output_file(args.out)
    runs, analyses = [], list(args.analyses)
    for path in args.runs:
        if not Path(path).is_dir():
            raise FileNotFoundError(f"no run or analysis directory {path}")
        (analyses if find_analyses([path]) else runs).append(path)
    path = write_report(args.out, runs, analyses, title=args.title, net=args.net,
                        figures=parse_figures(args.figures), loss_name=args.loss_name)
    print(path)
    return 0
