"""Host side: turn a recorded step's tagged sums into the tidy rows ``(step, phase, net, layer, ...)``."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from gradscope.record.buffer import N_QUANTITIES, PackedStep
from gradscope.record.families import FAMILIES, LAYER, OPERATOR, PARAM, Derivation
from gradscope.record.layers import Layer

LAYER_COLUMNS: tuple[str, ...] = ("step", "phase", "net", "layer", "layer_index", "stat", "value")
SCALAR_COLUMNS: tuple[str, ...] = ("step", "name", "value")
_TARGET_OF = {stat: family.target for family in FAMILIES for stat in family.stats}


def derive_stats(values: np.ndarray, slots: np.ndarray, counts: dict[int, int], targets: Sequence[Any],
                 attributes: dict[str, np.ndarray] | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every statistic as ``(present, value)`` arrays indexed by target ``uid`` (``attributes``: a cache of the
    targets' attribute arrays, reused across steps)."""
    n_slots = len(targets) * N_QUANTITIES
    sums = np.bincount(slots, weights=values, minlength=n_slots).reshape(len(targets), N_QUANTITIES)
    hits = (np.bincount(slots, minlength=n_slots) > 0).reshape(len(targets), N_QUANTITIES)
    count = np.zeros(n_slots)
    if counts:
        count[np.fromiter(counts.keys(), dtype=np.int64, count=len(counts))] = list(counts.values())
    derivation = Derivation(sums, hits, count.reshape(len(targets), N_QUANTITIES), targets, attributes)
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for family in FAMILIES:
        out.update(family.derive(derivation))
    return out


def _targets_of(layer: Layer, kind: str) -> list[Any]:
    return [layer] if kind == LAYER else list(layer.params if kind == PARAM else layer.operators)


class RowPlan:
    """Where the rows of one set of recorded nets come from: per statistic, its targets' uids, and for
    every candidate row (statistic by statistic, net by net, input to output) its net, name, position
    and statistic.

    Built once per set of nets and layer positions (:func:`row_plan`), not once per recorded step.
    """

    def __init__(self, ordered: list[Layer], stats: Sequence[str]) -> None:
        chosen = {kind: [t for layer in ordered for t in _targets_of(layer, kind)] for kind in (LAYER, PARAM, OPERATOR)}
        self.uids = {kind: np.array([t.uid for t in ts], dtype=np.int64) for kind, ts in chosen.items()}
        per_stat = [chosen[_TARGET_OF[stat]] for stat in stats]
        self.stats = list(stats)
        self.net = np.array([t.net for ts in per_stat for t in ts], dtype=object)
        self.layer = np.array([t.name for ts in per_stat for t in ts], dtype=object)
        self.layer_index = np.array([t.order for ts in per_stat for t in ts], dtype=np.int64)
        # Taking from one object array per name shares the str objects (np.full(k, stat, dtype=object)
        # makes a new str per row, most of the cost of building the rows).
        names = np.empty(len(self.stats), dtype=object)
        names[:] = self.stats
        self.stat = names[np.repeat(np.arange(len(self.stats)), [len(ts) for ts in per_stat])]


def row_plan(record: PackedStep, layers_by_net: dict[str, list[Layer]], stats: Sequence[str],
             plans: dict[Any, RowPlan] | None = None) -> RowPlan:
    """The :class:`RowPlan` of ``record``'s nets, from ``plans`` (a cache kept by the caller) when the
    nets' layers and positions have not changed since it was made (positions are known after a first run)."""
    ordered = [layer for net in record.nets for layer in sorted(layers_by_net[net], key=lambda x: x.order)]
    key = (tuple(record.nets), tuple(stats),
           tuple((id(layer), layer.order, len(layer.params), len(layer.operators)) for layer in ordered))
    plan = None if plans is None else plans.get(key)
    if plan is None:
        plan = RowPlan(ordered, stats)
        if plans is not None:
            if len(plans) >= 16:  # stale plans of positions since changed (each phase's nets keep one)
                plans.clear()
            plans[key] = plan
    return plan


def step_rows(record: PackedStep, values: np.ndarray, slots: np.ndarray, layers_by_net: dict[str, list[Layer]],
              targets: Sequence[Any], stats: Sequence[str], attributes: dict[str, np.ndarray] | None = None,
              plans: dict[Any, RowPlan] | None = None) -> dict[str, np.ndarray]:
    """The long-table columns (:data:`LAYER_COLUMNS`) of one recorded step, selected ``stats`` only.

    Rows go statistic by statistic; within one, net by net and input to output. ``plans``: a cache of
    :class:`RowPlan` reused across steps.
    """
    derived = derive_stats(values, slots, record.counts, targets, attributes)
    plan = row_plan(record, layers_by_net, stats, plans)
    keep, value = [], []
    for stat in plan.stats:
        uids = plan.uids[_TARGET_OF[stat]]
        present, derived_value = derived[stat]
        keep.append(present[uids])
        value.append(derived_value[uids])
    keep_all = np.concatenate(keep) if keep else np.zeros(0, dtype=bool)
    n = int(keep_all.sum())
    phase = np.empty(n, dtype=object)
    phase.fill(record.phase)  # one shared str (np.full converts it to a new str per row)
    result = {"step": np.full(n, record.step, dtype=np.int64), "phase": phase}
    if not n:  # as rows of nothing: names of dtype object, as a concatenation of no parts
        empty = np.zeros(0, dtype=object)
        result.update(net=empty, layer=empty.copy(), stat=empty.copy(), layer_index=empty.astype(np.int64),
                      value=empty.astype(np.float64))
    else:
        result.update(net=plan.net[keep_all], layer=plan.layer[keep_all], layer_index=plan.layer_index[keep_all],
                      stat=plan.stat[keep_all], value=np.concatenate(value)[keep_all].astype(np.float64))
    return {name: result[name] for name in LAYER_COLUMNS}
