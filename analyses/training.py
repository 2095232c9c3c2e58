"""Short training runs for the analyses, through the real trainer (:func:`gradscope.train.train`).

Analyses that look at quantities *over training* (C5's LeCun ratio, C6's
trained kernels, C7's variance gains) train with the same code as
``gradscope run`` and read the recorder's tables back, so what they check is
what a user's run records; those that measure trained weights (C1-C3) rebuild
the discriminator of each checkpoint.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

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
    # The run lives inside the analysis's own output folder: re-running the analysis into the same
    # --out regenerates it rather than refusing, as every other file there is regenerated.
    result = train(config, overwrite=True)
    if result.state != "done":
        raise RuntimeError(f"training run {out} ended {result.state!r}: {result.reason}")
    return load_run(out), result


def checkpoint_discriminators(run_dir: str | Path) -> list[tuple[int, nn.Module]]:
    """``(step, D)`` for every checkpoint of a :func:`gradscope.train.train` run, oldest first.

    ``D`` is the run's discriminator (normalization included) with the checkpoint's weights, in eval mode.
    """
    from gradscope.data import load_dataset
    from gradscope.train.checkpoint import list_checkpoints, load_checkpoint
    from gradscope.train.networks import build_networks
    from gradscope.train.rundir import config_of_run

    config = config_of_run(run_dir)
    dataset = load_dataset(config.dataset, data_dir=config.data_dir, image_size=config.image_size,
                           seed=config.seed)
    found = []
    for step, path in list_checkpoints(run_dir):
        D, _ = build_networks(config, dataset)
        D.load_state_dict(load_checkpoint(path)["D"])
        found.append((step, D.eval()))
    if not found:
        raise FileNotFoundError(f"{run_dir} has no checkpoints to analyse")
    return found


def train_checkpoints(out: Path, norm: str, seed: int, settings: dict) -> list[tuple[int, nn.Module]]:
    """Train a short run with :func:`gradscope.train.train` into ``out`` keeping every checkpoint."""
    train_run(out, norm=norm, seed=seed, keep_checkpoints=0, **settings)
    return checkpoint_discriminators(out)
