"""The ``gradscope`` command: one sub-command per job, each owned by the package that does it.

Each sub-command module exposes ``configure(parser)`` (adds its arguments) and
``execute(args) -> int`` (runs it and returns the exit code). Errors a user can
fix (bad choices, missing files) are raised as ``ValueError`` or
``gradscope.UsageError``, printed as one line and turned into exit code 2.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# name -> (module, one-line help). Import is lazy so `gradscope --help` stays fast.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "run": ("gradscope.train.cli", "train a GAN under a normalization with the recorder attached"),
    "eval": ("gradscope.train.eval_cli", "compute sample-quality metrics for a run's checkpoint"),
    "check": ("analyses.check_cli", "run the fast numerical checks of the paper's claims and print verdicts"),
    "reproduce": ("analyses.reproduce_cli", "run analyses at a scale and write their data and figures"),
    "plot": ("gradscope.plot.cli", "draw the standard figures of one or more recorded runs"),
    "report": ("gradscope.plot.report_cli", "write one self-contained HTML report of recorded runs"),
    "runs": ("gradscope.record.runs_cli", "manage run directories: convert CSV chunks of older runs to Parquet"),
    "sweep": ("gradscope.sweep.cli", "run a grid of runs on a local pool or a Ray cluster, or summarize one"),
    "demo": ("gradscope.demo", "print the normalization family's spectral norms on the SNDCGAN discriminator"),
}

EXIT_USAGE = 2


class UsageError(Exception):
    """A problem the user can fix from the command line; printed as one line, exit code 2."""


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Build the parser; only ``command``'s module is imported and configured (fast start-up)."""
    from gradscope import __version__

    parser = argparse.ArgumentParser(
        prog="gradscope",
        description="Spectral normalization in GANs: run it, watch it, check it.",
    )
    parser.add_argument("--version", action="version", version=f"gradscope {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        if name != command:
            sub.add_parser(name, help=help_text, add_help=False)
            continue
        module = importlib.import_module(module_name)
        doc_lines = (module.__doc__ or help_text).strip().splitlines()
        sp = sub.add_parser(name, help=help_text, description=doc_lines[0],
                            formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        module.configure(sp)
        sp.set_defaults(_execute=module.execute)
    return parser


def _command_in(argv: Sequence[str]) -> str | None:
    for token in argv:
        if not token.startswith("-"):
            return token if token in SUBCOMMANDS else None
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``gradscope`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(_command_in(argv))
    args = parser.parse_args(argv)
    if getattr(args, "_execute", None) is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(args._execute(args) or 0)
    except (UsageError, ValueError, FileNotFoundError, FileExistsError) as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"gradscope {args.command}: error: {message}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
