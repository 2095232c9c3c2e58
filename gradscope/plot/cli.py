"""Draw the standard figures of one or more recorded runs, overlaid and labelled by normalization.

Sub-command ``gradscope plot RUN_DIR [RUN_DIR ...] -o DIR``: per-layer
gradient norms, sigmas, the LeCun ratio with its theory line, forward /
backward variance gains, input-gradient slopes and losses, as PNG and PDF.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from gradscope.plot.runs import FIGURES, plot_runs


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the arguments of ``gradscope plot``."""
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories to overlay")
    parser.add_argument("-o", "--out", type=Path, default=Path("plots"), help="output directory")
    parser.add_argument("--net", default="D", help="recorded net whose layers to plot (D, G, or model)")
    parser.add_argument("--phase", default="d", help="phase of the layer statistics (d: D's own updates)")
    parser.add_argument("--figures", default=",".join(FIGURES), help="comma-separated subset of the figures")


def parse_figures(spec: str) -> list[str]:
    """``"sigma,losses"`` -> validated names."""
    names = [name.strip() for name in spec.split(",") if name.strip()]
    for name in names:
        if name not in FIGURES:
            raise ValueError(f"unknown figure {name!r}; valid choices: {', '.join(FIGURES)}")
    if not names:
        raise ValueError(f"choose at least one figure of {', '.join(FIGURES)}")
    return names


def execute(args: argparse.Namespace) -> int:
    """Draw the figures; print each written file; return 0."""
    for path in args.runs:
        if not Path(path).is_dir():
            raise FileNotFoundError(f"no run directory {path}")
    written = plot_runs(args.runs, args.out, net=args.net, phase=args.phase, figures=parse_figures(args.figures))
    for name, paths in written.items():
        if paths:
            print("  ".join(str(p) for p in paths))
        else:
            print(f"{name}: skipped (not recorded in these runs)")
    return 0
