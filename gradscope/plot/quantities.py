"""Quantities derived from a recorded run, shared by the run plots and the analyses.

- :func:`run_label`: how a run is named in legends (its normalization, scale, init).
- :func:`lecun_prediction`: the random-matrix value of ``fan_in * Var(W_bar)`` under SN (C5).
- :func:`variance_ratios`: per-layer forward and backward variance gains (C7).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from gradscope.linalg import rmt_spectral_norm

RATIO_COLUMNS: tuple[str, ...] = ("step", "layer_index", "layer", "direction", "ratio")


def run_label(config: Mapping[str, Any], fallback: str = "run") -> str:
    """Legend label of a run: its normalization, plus the scale ``c`` and init when not the defaults.

    Examples
    --------
    >>> run_label({"norm": "bssn", "scale": 1.4, "init": None})
    'bssn c=1.4'
    >>> run_label({}, fallback="runs/a")
    'runs/a'
    """
    norm = config.get("norm")
    if norm is None:
        return fallback
    parts = [str(norm)]
    scale = config.get("scale")
    if scale is not None and float(scale) != 1.0:
        parts.append(f"c={float(scale):g}")
    if config.get("init"):
        parts.append(f"init={config['init']}")
    return " ".join(parts)


def unique_labels(labels: Sequence[str], names: Sequence[str]) -> list[str]:
    """Make repeated labels distinct by appending the run's name (its directory).

    Examples
    --------
    >>> unique_labels(["sn", "sn", "none"], ["a", "b", "c"])
    ['sn (a)', 'sn (b)', 'none']
    """
    counts = pd.Series(list(labels)).value_counts()
    return [f"{label} ({name})" if counts[label] > 1 else label for label, name in zip(labels, names)]


def lecun_prediction(weight_shape: Sequence[int], fan_in: float, transposed: bool = False) -> float:
    """``fan_in * Var(W_bar)`` predicted for an i.i.d. weight divided by its forward-reshape sigma (C5).

    With the forward reshape ``m x n`` (``m`` output channels), Bai-Yin gives
    ``sigma ~ s (sqrt(m) + sqrt(n))``, so ``Var(W / sigma) ~ 1 / (sqrt(m) + sqrt(n))^2``
    whatever the entries' scale ``s``; for a convolution (``fan_in = n``) this is
    ``(1 + sqrt(m / n))^-2``.

    Examples
    --------
    >>> lecun_prediction((64, 64), 64)
    0.25
    >>> round(lecun_prediction((128, 64, 3, 3), 576), 3)
    0.462
    """
    return float(fan_in) / rmt_spectral_norm(weight_shape, 1.0, transposed=transposed) ** 2


def layer_prediction_table(architecture: Mapping[str, Any], net: str, normalized_only: bool = False
                           ) -> dict[str, float]:
    """Layer name -> :func:`lecun_prediction` from a run's ``architecture.json`` entry for ``net``.

    With ``normalized_only``, only layers that carry a normalization: the prediction is for a weight
    divided by its sigma, so it says nothing about a plain layer.
    """
    out = {}
    for info in architecture.get(net, []):
        if normalized_only and not info.get("normalization"):
            continue
        transposed = "Transpose" in str(info.get("type", ""))
        shape = info.get("weight_shape")
        if shape and len(shape) >= 2 and info.get("fan_in"):
            out[info["name"]] = lecun_prediction(shape, info["fan_in"], transposed)
    return out


def variance_ratios(layers: pd.DataFrame) -> pd.DataFrame:
    """Per-layer forward and backward variance gains of one net and phase (C7).

    With ``a_t`` the output of layer ``t`` after its activation (``a_0 = x``):

    - forward ``Var(a_t) / Var(a_{t-1})`` = ``act_in_var[t+1] / act_in_var[t]``,
    - backward ``Var(dD/da_{t-1}) / Var(dD/da_t)`` = ``grad_in_var[t] / grad_in_var[t+1]``,

    both spanning layer ``t`` and its activation. The last layer has no activation
    after it: its gains are ``act_out_var / act_in_var`` and ``grad_in_var / grad_out_var``.
    Ratios near 1 mean the signal neither vanishes nor explodes through the layer.

    Parameters
    ----------
    layers : DataFrame
        Rows ``(step, layer_index, layer, stat, value)`` of one net and one phase, holding
        ``act_in_var``, ``act_out_var``, ``grad_in_var`` and ``grad_out_var``.

    Returns
    -------
    DataFrame
        Columns :data:`RATIO_COLUMNS`; ``direction`` is ``"forward"`` or ``"backward"``.
    """
    needed = ["act_in_var", "act_out_var", "grad_in_var", "grad_out_var"]
    rows = layers[layers["stat"].isin(needed)]
    if rows.empty:
        return pd.DataFrame(columns=list(RATIO_COLUMNS))
    wide = rows.pivot_table(index=["step", "layer_index", "layer"], columns="stat", values="value",
                            aggfunc="last").reset_index().sort_values(["step", "layer_index"])
    for stat in needed:
        if stat not in wide:
            wide[stat] = np.nan
    frames = []
    for step, group in wide.groupby("step", sort=True):
        g = group.reset_index(drop=True)
        next_in = g["act_in_var"].shift(-1)
        next_grad = g["grad_in_var"].shift(-1)
        last = g.index == len(g) - 1
        forward = _ratio(np.where(last, g["act_out_var"], next_in), g["act_in_var"])
        backward = _ratio(g["grad_in_var"], np.where(last, g["grad_out_var"], next_grad))
        for direction, ratio in (("forward", forward), ("backward", backward)):
            frames.append(pd.DataFrame({"step": step, "layer_index": g["layer_index"], "layer": g["layer"],
                                        "direction": direction, "ratio": np.asarray(ratio, dtype=float)}))
    out = pd.concat(frames, ignore_index=True)
    return out[list(RATIO_COLUMNS)]


def _ratio(numerator, denominator) -> np.ndarray:
    # a variance of 0 means "not observed" (e.g. no gradient w.r.t. a non-leaf input): no ratio
    num = np.asarray(numerator, dtype=float)
    den = np.asarray(denominator, dtype=float)
    ok = (num > 0) & (den > 0) & np.isfinite(num) & np.isfinite(den)
    return np.divide(num, den, out=np.full(num.shape, np.nan), where=ok)
