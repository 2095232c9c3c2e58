"""Run a grid of `gradscope run` configurations, or summarize one: `gradscope sweep SPEC.toml --out DIR`.

`gradscope sweep summarize DIR` writes DIR/summary.csv (one row per run) and the
stability figures. Re-running the same sweep command resumes it: done runs are
skipped, interrupted ones resume from their checkpoint, failed ones are retried
up to the spec's max_retries.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from gradscope.sweep.executors import EXECUTORS


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", metavar="SPEC.toml | summarize",
                        help="a sweep spec (TOML) to run, or the word 'summarize'")
    parser.add_argument("directory", nargs="?", metavar="DIR",
                        help="with 'summarize': the sweep directory to summarize")
    parser.add_argument("--out", metavar="DIR", help="sweep directory (runs, manifest, summary)")
    parser.add_argument("--executor", default="local", choices=EXECUTORS,
                        help="local: a process pool on this machine (one process per GPU, or CPU slots); "
                             "ray: one task per run on a Ray cluster")
    parser.add_argument("--max-parallel", type=int, default=None, metavar="N",
                        help="at most N runs at once (local executor; default: one per GPU, else 1)")
    parser.add_argument("--address", default=None,
                        help="Ray cluster address (ray executor; default: start a local instance)")
    parser.add_argument("--dry-run", action="store_true", help="print the grid and a cost estimate, run nothing")
    parser.add_argument("-o", "--output", default=None, metavar="DIR",
                        help="with 'summarize': where to write the table and figures (default: DIR)")


def execute(args: argparse.Namespace) -> int:
    if args.target == "summarize":
        from gradscope.sweep.summarize import summarize

        if not args.directory:
            raise ValueError("summarize needs the sweep directory: gradscope sweep summarize DIR")
        table, figures = summarize(args.directory, output=args.output)
        print(table.to_string(index=False, max_colwidth=40))
        for path in figures:
            print(f"wrote {path}")
        return 0

    from gradscope.sweep.runner import run_sweep
    from gradscope.sweep.spec import load_spec

    if args.directory:
        raise ValueError(f"unexpected argument {args.directory!r}; the sweep directory goes in --out")
    if not args.out:
        raise ValueError("--out DIR is required to run a sweep (the directory for its runs and manifest)")
    spec = load_spec(args.target)
    try:
        manifest = run_sweep(spec, Path(args.out), executor=args.executor, max_parallel=args.max_parallel,
                             address=args.address, dry_run=args.dry_run)
    except KeyboardInterrupt:
        print("sweep interrupted; run the same command again to resume")
        return 130
    counts = manifest.counts()
    print(", ".join(f"{n} {state}" for state, n in counts.items() if n))
    return 1 if counts["failed"] else 0
