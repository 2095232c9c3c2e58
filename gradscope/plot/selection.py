"""Which runs, net and phase a figure shows: loading, legend labels, and the defaults for any model.

A run of gradscope's GAN trainer records nets ``D`` and ``G`` in phases ``d``
and ``g``; a user's ``Recorder(model)`` records one net ``"model"`` in the
phase its ``step()`` calls name (``"train"`` by default). The defaults here
pick ``D`` / ``d`` when they exist and the only net / phase otherwise, so
``gradscope plot DIR`` works on both without options.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from gradscope.plot.quantities import run_label, unique_labels
from gradscope.record import Run, load_run

#: Most steps drawn per line of a figure against step (longer runs are thinned evenly).
MAX_POINTS = 400
_PREFERRED_NETS = ("D",)
_PREFERRED_PHASES = ("d", "train")


@dataclass(frozen=True)
class LabelledRun:
    """A loaded run and its legend label."""

    label: str
    run: Run


#: What the figure functions accept as a run: its directory, a loaded Run, or a labelled one.
RunLike = str | os.PathLike | Run | LabelledRun


def load_runs(runs: Sequence[RunLike]) -> list[LabelledRun]:
    """Load run directories (or take :class:`Run` / :class:`LabelledRun` objects), in order, labelled.

    A run is labelled by its normalization (:func:`run_label`), falling back to
    its directory name; repeated labels are made unique with that name.

    Examples
    --------
    >>> [r.label for r in load_runs(["runs/sn", "runs/bssn"])]  # doctest: +SKIP
    ['sn', 'bssn']
    """
    if isinstance(runs, (str, os.PathLike, Run, LabelledRun)):
        runs = [runs]
    if not runs:
        raise ValueError("give at least one run directory")
    fixed: dict[int, LabelledRun] = {}
    loaded, names = [], []
    for i, item in enumerate(runs):
        if isinstance(item, LabelledRun):
            fixed[i] = item
            loaded.append(item.run)
            names.append(item.label)
            continue
        run = item if isinstance(item, Run) else load_run(item)
        loaded.append(run)
        where = run.path if isinstance(item, Run) else Path(item)
        names.append((Path(where).name or str(where)) if where is not None else
                     ("run" if len(runs) == 1 else f"run {i + 1}"))
    labels = unique_labels([fixed[i].label if i in fixed else run_label(r.config, n)
                            for i, (r, n) in enumerate(zip(loaded, names))], names)
    return [fixed.get(i) or LabelledRun(label, run) for i, (label, run) in enumerate(zip(labels, loaded))]


def recorded_nets(loaded: Sequence[LabelledRun]) -> list[str]:
    """Nets with layer statistics in any of the runs (sorted)."""
    return sorted({net for item in loaded for net in item.run.nets()})


def choose_net(loaded: Sequence[LabelledRun], net: str | None) -> str | None:
    """``net`` if recorded; by default ``D`` when recorded, else the only net; ``None`` when no layers at all.

    Raises ``ValueError`` naming the recorded nets when ``net`` is not one of them, or when
    several nets (none of them ``D``) leave the default ambiguous.
    """
    nets = recorded_nets(loaded)
    if not nets:
        return net
    if net is not None:
        if net not in nets:
            raise ValueError(f"no statistics recorded for net {net!r}; recorded nets: {', '.join(nets)}")
        return net
    for preferred in _PREFERRED_NETS:
        if preferred in nets:
            return preferred
    if len(nets) == 1:
        return nets[0]
    raise ValueError(f"several nets recorded; choose one with net= (--net): {', '.join(nets)}")


def choose_phase(loaded: Sequence[LabelledRun], net: str | None, phase: str | None) -> str | None:
    """``phase`` if recorded for ``net``; by default ``d`` (a GAN's D updates), ``train``, else the first recorded."""
    phases = sorted({p for item in loaded for p in item.run.phases(net)})
    if not phases:
        return phase
    if phase is not None:
        if phase not in phases:
            raise ValueError(f"no statistics recorded for net {net!r} in phase {phase!r}; "
                             f"recorded phases: {', '.join(phases)}")
        return phase
    for preferred in _PREFERRED_PHASES:
        if preferred in phases:
            return preferred
    return phases[0]


def layers_of(run: Run, net: str | None, phase: str | None) -> pd.DataFrame:
    """The layer rows of one net and phase of ``run`` (empty when it recorded neither).

    Read from the run's files with the filter pushed down when its table is not in memory.
    """
    return run.rows(nets=None if net is None else [net], phases=None if phase is None else [phase])


def thin(frame: pd.DataFrame, column: str = "step", most: int = MAX_POINTS) -> pd.DataFrame:
    """The rows of at most ``most`` evenly spaced values of ``column`` (first and last kept)."""
    steps = np.sort(frame[column].unique())
    if len(steps) <= most:
        return frame
    keep = set(steps[np.linspace(0, len(steps) - 1, most).round().astype(int)])
    return frame[frame[column].isin(keep)]


def last_per_step(rows: pd.DataFrame) -> pd.Series:
    """``value`` of scalar rows by step, the last row of each step kept even when it is NaN (not skipped)."""
    if rows.empty:
        return pd.Series(dtype=float)
    kept = rows.sort_values("step", kind="mergesort").drop_duplicates("step", keep="last")
    return pd.Series(kept["value"].to_numpy(dtype=float), index=pd.Index(kept["step"].to_numpy(), name="step"),
                     name="value")
