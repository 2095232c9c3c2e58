"""Grids of `gradscope run` configurations on a local pool or a Ray cluster, and their stability study.

Examples
--------
>>> from gradscope.sweep import parse_spec, run_sweep, summarize       # doctest: +SKIP
>>> spec = parse_spec({"base": {"dataset": "ring8", "iterations": 200},
...                    "grid": {"norm": ["sn", "bssn"], "seed": [0, 1, 2]}})
>>> run_sweep(spec, "sweeps/ring8", max_parallel=2)                    # doctest: +SKIP
>>> table, figures = summarize("sweeps/ring8")                        # doctest: +SKIP
"""
from gradscope.sweep.manifest import Manifest, RunEntry
from gradscope.sweep.runner import run_sweep
from gradscope.sweep.spec import PRESETS, SweepSpec, load_spec, parse_spec
from gradscope.sweep.summarize import summarize, summary_table

__all__ = ["Manifest", "PRESETS", "RunEntry", "SweepSpec", "load_spec", "parse_spec", "run_sweep", "summarize",
           "summary_table"]
