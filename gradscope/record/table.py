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
    for slot, n in counts.items():
        count[slot] = n
    derivation = Derivation(sums, hits, count.reshape(len(targets), N_QUANTITIES), targets, attributes)
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for family in FAMILIES:
        out.update(family.derive(derivation))
    return out


def _targets_of(layer: Layer, kind: str) -> list[Any]:
    return [layer] if kind == LAYER else list(layer.params if kind == PARAM else layer.operators)


def step_rows(record: PackedStep, values: np.ndarray, slots: np.ndarray, layers_by_net: dict[str, list[Layer]],
              targets: Sequence[Any], stats: Sequence[str], attributes: dict[str, np.ndarray] | None = None,
              ) -> dict[str, np.ndarray]:
    """The long-table columns (:data:`LAYER_COLUMNS`) of one recorded step, selected ``stats`` only.

    Rows go statistic by statistic; within one, net by net and input to output.
    """
    derived = derive_stats(values, slots, record.counts, targets, attributes)
    ordered = [layer for net in record.nets for layer in sorted(layers_by_net[net], key=lambda x: x.order)]
    chosen = {kind: [t for layer in ordered for t in _targets_of(layer, kind)] for kind in (LAYER, PARAM, OPERATOR)}
    arrays = {kind: (np.array([t.uid for t in ts], dtype=np.int64), np.array([t.net for t in ts], dtype=object),
                     np.array([t.name for t in ts], dtype=object), np.array([t.order for t in ts], dtype=np.int64))
              for kind, ts in chosen.items()}
    columns: dict[str, list[np.ndarray]] = {name: [] for name in LAYER_COLUMNS}
    for stat in stats:
        uids, nets, names, orders = arrays[_TARGET_OF[stat]]
        present, value = derived[stat]
        keep = present[uids]
        k = int(keep.sum())
        if not k:
            continue
        columns["net"].append(nets[keep])
        columns["layer"].append(names[keep])
        columns["layer_index"].append(orders[keep])
        columns["value"].append(value[uids][keep])
        columns["stat"].append(np.full(k, stat, dtype=object))
    n = sum(len(v) for v in columns["value"])
    result = {name: (np.concatenate(parts) if parts else np.zeros(0, dtype=object))
              for name, parts in columns.items() if name not in ("step", "phase")}
    result["step"] = np.full(n, record.step, dtype=np.int64)
    result["phase"] = np.full(n, record.phase, dtype=object)
    result["layer_index"] = result["layer_index"].astype(np.int64)
    result["value"] = result["value"].astype(np.float64)
    return {name: result[name] for name in LAYER_COLUMNS}
