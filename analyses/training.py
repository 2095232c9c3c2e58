"""Short training runs for the analyses, through the real trainer (:func:`gradscope.train.train`).

Analyses that look at quantities *over training* (C5's LeCun ratio, C6's
trained kernels, C7's variance gains) train with the same code as
``gradscope run`` and read the recorder's tables back, so what they check is
what a user's run records.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from gradscope.record import Run, load_run

#: What an analysis run does not need: evaluations, sample grids, progress output.
QUIET_RUN: dict[str, Any] = {"eval_every": 0, "sample_every": 0, "quiet": True, "keep_checkpoints": 1,
                             "exact_every": 0}


def train_run(out: str | Path, **settings: Any) -> tuple[Run, Any]:
    """Train one GAN with ``settings`` (fields of :class:`gradscope.train.RunConfig`) into ``out``.

    Returns
    -------
    (Run, RunResult)
        The recorded run (``load_run(out)``) and the trainer's result (state, networks).

    Raises
    ------
    RuntimeError
        If the run did not finish (diverged, failed): an analysis must not
        silently draw conclusions from a truncated run.
    """
    from gradscope.train import RunConfig, train

    config = RunConfig(**{**QUIET_RUN, **settings, "out": str(out)})
    result = train(config)
    if result.state != "done":
        raise RuntimeError(f"training run {out} ended {result.state!r}: {result.reason}")
    return load_run(out), result
