"""The statistics the recorder can take: names, schedules and meaning, read from their families.

Each statistic is declared once, in its family (:mod:`gradscope.record.families`),
and stored as a row ``(step, phase, net, layer, layer_index, stat, value)``.
The ``layer`` column names the row's *target* (:mod:`gradscope.record.layers`):
a module path for per-layer statistics, ``<module path>.<parameter>`` for
per-parameter ones (``param_*``), and the operator's name (the module path for
a layer's ``weight``) for spectral and weight statistics. ``layer_index`` orders
a net's layers from input to output (the order they first ran in). Each
statistic belongs to one schedule:

- ``"cheap"``: taken every ``every`` steps from hooks, buffers and warm-started
  power steps, with no host synchronization (``sigma_op`` is solved to
  convergence on the exact schedule's steps);
- ``"exact"``: taken every ``exact_every`` steps (dense SVD; these synchronize);
- ``"hessian"``: taken every ``hessian_every`` steps (Lanczos on Hessian-vector
  products: up to ``hessian_iterations`` extra double-backward passes per layer).

Activation and gradient statistics pool every forward / backward pass of a
layer between two ``Recorder.step`` calls, as if the batches had been
concatenated (a discriminator called on a real and on a fake batch gives the
statistics of both together). Variances are population variances (divide by
the number of entries). Norms are Frobenius (all entries).

Model-level numbers go to the scalars table ``(step, name, value)``; the
recorder itself writes :data:`SLOPE_SCALARS` (per-sample input-gradient norms,
see ``Recorder.record_input_gradients``); the trainer adds losses, D(real),
D(fake) through ``Recorder.log_scalars``.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from gradscope._checks import check_choice
from gradscope.record.families import CHEAP, EXACT, FAMILIES, HESSIAN

__all__ = ["CHEAP", "EXACT", "HESSIAN", "SLOPE_SCALARS", "STATS", "StatInfo", "resolve_stats", "stats_for"]


@dataclass(frozen=True)
class StatInfo:
    """What one statistic is, which family takes it, on which rows and on which schedule."""

    schedule: str
    doc: str
    family: str = ""
    target: str = "layer"


#: Every per-layer, per-parameter and per-operator statistic, in the order rows are written
#: (generated from :data:`gradscope.record.families.FAMILIES`).
STATS: dict[str, StatInfo] = {name: StatInfo(family.schedule, doc, family.name, family.target)
                              for family in FAMILIES for name, doc in family.stats.items()}

#: Scalar names written by ``Recorder.record_input_gradients`` (``kind`` is e.g. "real" or "fake").
SLOPE_SCALARS: tuple[str, ...] = ("slope_{kind}_min", "slope_{kind}_mean", "slope_{kind}_max")


def stats_for(schedule: str, selected: Iterable[str]) -> tuple[str, ...]:
    """The names in ``selected`` taken on ``schedule``, in :data:`STATS` order."""
    chosen = set(selected)
    return tuple(name for name, info in STATS.items() if info.schedule == schedule and name in chosen)


def resolve_stats(stats: Iterable[str] | None, exact: bool, hessian: bool) -> tuple[str, ...]:
    """Validate a user's ``stats=`` selection, or pick the default for the active schedules.

    The default is every cheap statistic, plus the exact ones when
    ``exact_every`` is set and ``hessian_top`` when ``hessian_every`` is set.

    Examples
    --------
    >>> resolve_stats(["sigma", "grad_out_norm"], exact=False, hessian=False)
    ('sigma', 'grad_out_norm')
    >>> "sigma_op" in resolve_stats(None, exact=True, hessian=False)
    True
    """
    if stats is None:
        active = {CHEAP} | ({EXACT} if exact else set()) | ({HESSIAN} if hessian else set())
        return tuple(name for name, info in STATS.items() if info.schedule in active)
    if isinstance(stats, str):
        stats = [stats]
    names = list(stats)
    if not names:
        raise ValueError(f"stats must name at least one statistic; valid: {', '.join(STATS)}")
    for name in names:
        check_choice("stat", name, STATS)
        schedule = STATS[name].schedule
        if schedule == EXACT and not exact:
            raise ValueError(f"stat {name!r} is taken on the exact schedule: set exact_every")
        if schedule == HESSIAN and not hessian:
            raise ValueError(f"stat {name!r} is taken on the Hessian schedule: set hessian_every")
    return tuple(name for name in STATS if name in set(names))
