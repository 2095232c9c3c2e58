"""GAN training with the recorder attached: ``gradscope run`` and its programmatic form.

Public API: :class:`RunConfig` (every setting, validated), :func:`train` and
:func:`resume` (a whole run, returning a :class:`RunResult`), :data:`PRESETS`
(the authors' settings A, B, C) and the exit codes.

Examples
--------
>>> from gradscope.train import RunConfig, train                    # doctest: +SKIP
>>> result = train(RunConfig(norm="bssn", scale=1.4, iterations=200, out="runs/bssn"))  # doctest: +SKIP
>>> result.state, result.metrics["digits_fid"]                      # doctest: +SKIP
"""
from __future__ import annotations

import os

# Intel MKL rounds some matrix products differently depending on the memory alignment of their
# operands, so two identical CPU runs could drift apart in the last bits (measured: 12 of 15 shifted
# copies of a matrix-vector product differed). Conditional numerical reproducibility ("AUTO", no
# measurable cost) removes that; exact resume relies on it. MKL reads the variable at its first call,
# so it must be set before any matrix product; a value set by the user is kept.
os.environ.setdefault("MKL_CBWR", "AUTO")

from gradscope.train.api import EXIT_DIVERGED, EXIT_OK, EXIT_SIGNAL_BASE, EXIT_USAGE, RunResult, resume, train
from gradscope.train.config import LOSSES, RunConfig, load_config_file, resolve_config
from gradscope.train.disk import EXIT_STORAGE, StorageError
from gradscope.train.presets import PRESETS, preset_values

__all__ = ["EXIT_DIVERGED", "EXIT_OK", "EXIT_SIGNAL_BASE", "EXIT_STORAGE", "EXIT_USAGE", "LOSSES", "PRESETS",
           "RunConfig", "RunResult", "StorageError", "load_config_file", "preset_values", "resolve_config", "resume", "train"]
