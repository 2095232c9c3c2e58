"""Draw the standard figures of one or more recorded runs, overlaid and labelled by normalization.

Sub-command ``gradscope plot RUN_DIR [RUN_DIR ...] [-o DIR]``: per-layer
gradient norms, sigmas, the LeCun ratio with its theory line, forward /
backward variance gains, the gradient flow through the layers at chosen
steps, input-gradient slopes, sample-quality metrics and losses, as PNG and
PDF. Works on GAN runs of ``gradscope run`` and on any model recorded with
``gradscope.Recorder``.

Where the figures go: one run's figures belong to it, so ``gradscope plot
RUN`` writes into ``RUN/plots``; an overlay of several runs belongs to none
of them, so it needs ``-o DIR`` (an error says so, rather than writing into
whichever folder the shell is in).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from gradscope.plot.flow import DEFAULT_FLOW_STEPS, MAX_FLOW_STEPS, STEP_WORDS
from gradscope.plot.runs import FIGURES, plot_runs

#: Where ``gradscope plot RUN`` writes without ``-o``: this folder inside the run directory.
PLOTS_DIR = "plots"


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the arguments of ``gradscope plot``."""
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories to overlay")
    parser.add_argument("-o", "--out", type=Path, default=None, metavar="DIR",
                        help=f"output directory (created); None: RUN_DIR/{PLOTS_DIR} for one run, while "
                             "several runs need -o (their overlay belongs to none of them)")
    parser.add_argument("--net", default=None,
                        help="recorded net whose layers to plot; None: D if recorded, else the only net")
    parser.add_argument("--phase", default=None,
                        help="phase of the layer statistics; None: d (D's own updates), else train, else the first")
    parser.add_argument("--figures", default=",".join(FIGURES), help="comma-separated subset of the figures")
    parser.add_argument("--loss-name", default=None, metavar="NAME",
                        help="what the loss L is (e.g. cross-entropy), written on the gradient axes")
    parser.add_argument("--steps", default=None, metavar="S1,S2,...",
                        help="gradient_flow: recorded steps to draw, integers or first/last "
                             f"(at most {MAX_FLOW_STEPS}); None: --n-steps evenly spaced ones")
    parser.add_argument("--n-steps", type=int, default=DEFAULT_FLOW_STEPS,
                        help="gradient_flow: how many evenly spaced recorded steps without --steps")
    parser.add_argument("--flow-stats", default=None, metavar="STAT1,STAT2,...",
                        help="gradient_flow: per-layer statistics, one panel each"
                             "; None: grad_out_norm, grad_w_raw_norm, act_out_var where recorded")


def parse_figures(spec: str) -> list[str]:
    """``"sigma,losses"`` -> validated names."""
    names = [name.strip() for name in spec.split(",") if name.strip()]
    for name in names:
        if name not in FIGURES:
            raise ValueError(f"unknown figure {name!r}; valid choices: {', '.join(FIGURES)}")
    if not names:
        raise ValueError(f"choose at least one figure of {', '.join(FIGURES)}")
    return names


def parse_steps(spec: str | None) -> list[int | str] | None:
    """``"first,100,last"`` -> ``["first", 100, "last"]``; ``None`` stays ``None``.

    Examples
    --------
    >>> parse_steps("0, 50,last")
    [0, 50, 'last']
    """
    if spec is None:
        return None
    steps: list[int | str] = []
    for token in (t.strip() for t in spec.split(",")):
        if not token:
            continue
        if token in STEP_WORDS:
            steps.append(token)
        elif token.isdigit():
            steps.append(int(token))
        else:
            raise ValueError(f"--steps takes non-negative integers or first / last, got {token!r}")
    if not steps:
        raise ValueError("--steps needs at least one step (integers or first / last)")
    return steps


def parse_names(spec: str | None) -> list[str] | None:
    """``"a, b"`` -> ``["a", "b"]``; ``None`` stays ``None``."""
    if spec is None:
        return None
    names = [name.strip() for name in spec.split(",") if name.strip()]
    if not names:
        raise ValueError("--flow-stats needs at least one statistic name")
    return names


def output_folder(runs: list[str], out: Path | None) -> Path:
    """``out``, else ``RUN/plots`` for one run; several runs without ``out`` raise ``ValueError``."""
    if out is not None:
        return out
    if len(runs) == 1:
        return Path(runs[0]) / PLOTS_DIR
    raise ValueError(f"{len(runs)} runs overlaid belong to none of them: choose where the figures go "
                     "with -o DIR (one run alone writes into RUN_DIR/plots)")


def execute(args: argparse.Namespace) -> int:
    """Draw the figures; print each written file; return 0."""
    for path in args.runs:
        if not Path(path).is_dir():
            raise FileNotFoundError(f"no run directory {path}")
    out = output_folder(args.runs, args.out)
    written = plot_runs(args.runs, out, net=args.net, phase=args.phase, figures=parse_figures(args.figures),
                        loss_name=args.loss_name, flow_stats=parse_names(args.flow_stats),
                        flow_steps=parse_steps(args.steps), flow_n_steps=args.n_steps)
    for name, paths in written.items():
        if paths:
            print("  ".join(str(p) for p in paths))
        else:
            print(f"{name}: skipped (not recorded in these runs)")
    return 0
