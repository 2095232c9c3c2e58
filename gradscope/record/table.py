"""Host side: turn a recorded step's tagged sums into the tidy rows ``(step, phase, net, layer, ...)``."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from gradscope.record.buffer import DIRECT_OFFSET, N_QUANTITIES, SUM_OFFSET, PackedStep
from gradscope.record.layers import Layer

LAYER_COLUMNS: tuple[str, ...] = ("step", "phase", "net", "layer", "layer_index", "stat", "value")
SCALAR_COLUMNS: tuple[str, ...] = ("step", "name", "value")
_DIRECT_STATS = ("sigma", "sigma_fwd", "sigma_bwd", "gamma", "grad_w_raw_norm",
                 "sigma_raw_fwd", "sigma_raw_bwd", "sigma_op", "hessian_top")


def _moments(sums: np.ndarray, hits: np.ndarray, counts: np.ndarray, quantity: str,
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(present, mean, variance, norm) of a sum quantity for every layer."""
    q = SUM_OFFSET[quantity]
    n = counts[:, q]
    present = hits[:, q] & (n > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = sums[:, q] / n
        # E[x^2] - E[x]^2 can dip below zero by rounding; NaN / inf pass through unchanged.
        var = np.maximum(sums[:, q + 1] / n - mean * mean, 0.0)
    norm = np.sqrt(sums[:, q + 1])
    return present, mean, var, norm


def derive_stats(values: np.ndarray, slots: np.ndarray, counts: dict[int, int], layers: Sequence[Layer],
                 ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every statistic as ``(present, value)`` arrays indexed by layer ``uid``."""
    n_slots = len(layers) * N_QUANTITIES
    sums = np.bincount(slots, weights=values, minlength=n_slots).reshape(len(layers), N_QUANTITIES)
    hits = (np.bincount(slots, minlength=n_slots) > 0).reshape(len(layers), N_QUANTITIES)
    count = np.zeros(n_slots)
    for slot, n in counts.items():
        count[slot] = n
    count = count.reshape(len(layers), N_QUANTITIES)
    fan_in = np.array([layer.fan_in for layer in layers])
    plain = np.array([layer.parametrization is None and not layer.foreign for layer in layers])

    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for quantity, prefix in (("act_in", "act_in"), ("act_out", "act_out")):
        present, mean, var, _ = _moments(sums, hits, count, quantity)
        out[f"{prefix}_mean"] = (present, mean)
        out[f"{prefix}_var"] = (present, var)
    for quantity in ("grad_out", "grad_in"):
        present, _, var, norm = _moments(sums, hits, count, quantity)
        out[f"{quantity}_norm"] = (present, norm)
        out[f"{quantity}_var"] = (present, var)
    for name in _DIRECT_STATS:
        q = DIRECT_OFFSET[name]
        out[name] = (hits[:, q], sums[:, q])

    raw_present, _, raw_var, _ = _moments(sums, hits, count, "w_raw")
    eff_present, _, eff_var, _ = _moments(sums, hits, count, "w_eff")
    mult_present = hits[:, DIRECT_OFFSET["multiplier"]]
    mult = sums[:, DIRECT_OFFSET["multiplier"]]
    out["lecun_ratio_raw"] = (raw_present, fan_in * raw_var)
    # W_eff = multiplier * W for gradscope's normalizations; observed directly for foreign ones.
    lecun_eff = np.where(mult_present, fan_in * mult * mult * raw_var, fan_in * eff_var)
    lecun_eff = np.where(plain, fan_in * raw_var, lecun_eff)
    out["lecun_ratio"] = ((raw_present & (mult_present | plain)) | eff_present, lecun_eff)

    q_eff = DIRECT_OFFSET["grad_w_eff_norm"]
    raw_grad_present, raw_grad = out["grad_w_raw_norm"]
    out["grad_w_eff_norm"] = (np.where(plain, raw_grad_present, hits[:, q_eff]),
                              np.where(plain, raw_grad, sums[:, q_eff]))
    return out


def step_rows(record: PackedStep, values: np.ndarray, slots: np.ndarray,
              layers_by_net: dict[str, list[Layer]], stats: Sequence[str]) -> dict[str, np.ndarray]:
    """The long-table columns (:data:`LAYER_COLUMNS`) of one recorded step, selected ``stats`` only."""
    all_layers = [layer for layers in layers_by_net.values() for layer in layers]
    all_layers.sort(key=lambda layer: layer.uid)
    derived = derive_stats(values, slots, record.counts, all_layers)
    chosen = [layer for net in record.nets for layer in sorted(layers_by_net[net], key=lambda x: x.order)]
    uids = np.array([layer.uid for layer in chosen], dtype=np.int64)
    columns: dict[str, list[np.ndarray]] = {name: [] for name in LAYER_COLUMNS}
    nets = np.array([layer.net for layer in chosen], dtype=object)
    names = np.array([layer.name for layer in chosen], dtype=object)
    orders = np.array([layer.order for layer in chosen], dtype=np.int64)
    for stat in stats:
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
