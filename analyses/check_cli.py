"""Run the fast theory checks; print each verdict, one per claim, and exit 0 when all must-hold checks hold.

Sub-command ``gradscope check``. Each selected analysis (C1-C8) runs at the
chosen scale; the table lists claim, quantity, measured value, bound or
prediction and verdict (``*`` marks checks that must hold, ``(planted)`` the
counter-examples built to be violated), then one verdict per claim (holds /
does not hold / inconclusive, rule in :mod:`analyses.report`) and the overall
line. Lines fit 100 columns (``--wide``: one line per row). Exit code 0 when
every must-hold check holds and every selected analysis ran, 1 otherwise.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from analyses import registry
from analyses.common import SCALES, check_scale
from analyses.report import WIDTH
from analyses.runner import run_selected


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the arguments of ``gradscope check``."""
    parser.add_argument("--scale", default="tiny", help=f"experiment size, one of {', '.join(SCALES)}")
    parser.add_argument("--only", default=None, metavar="C1,C5",
                        help="comma-separated claims to check; None: the claims C1-C8 (the training "
                             "experiments E1-E4 run only when named)")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--out", type=Path, default=None,
                        help="keep data and figures in this directory; None: a temporary one, deleted after")
    parser.add_argument("--wide", action="store_true",
                        help=f"print every row on one line, however long; otherwise every line fits "
                             f"{WIDTH} columns (the quantity wraps)")


def execute(args: argparse.Namespace) -> int:
    """Run the checks; return the exit code."""
    scale = check_scale(args.scale)
    names = registry.parse_names(args.only) if args.only else list(registry.CLAIMS)
    if args.out is not None:
        outcome = run_selected(names, scale, args.out, seed=args.seed)
    else:
        with tempfile.TemporaryDirectory(prefix="gradscope-check-") as tmp:
            outcome = run_selected(names, scale, Path(tmp), seed=args.seed)
    print(outcome.report(width=None if getattr(args, "wide", False) else WIDTH))
    sys.stdout.flush()
    return outcome.exit_code()
