"""Alerts: rules that flag vanishing, exploding and non-finite values while a model trains.

Rules are checked on the host when recorded values arrive there (at each
flush), step by step in order, so the result does not depend on when flushes
happen. Each (rule, net, layer) fires once: it is stored, printed once and
then stays quiet.
"""
from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from gradscope._checks import check_choice, check_positive
from gradscope.record.stats import STATS

RULE_KINDS: tuple[str, ...] = ("below_first", "above_first", "first_last_ratio", "non_finite")
ANY_STAT = "*"


@dataclass(frozen=True)
class AlertRule:
    """One alert rule.

    Parameters
    ----------
    name : str
        Identifier stored with each alert.
    kind : str
        ``"below_first"``: the statistic falls below ``first / factor``, where
        ``first`` is its first recorded positive finite value for that
        (phase, net, layer) (vanishing); ``"above_first"``: it rises above
        ``first * factor`` (exploding); ``"first_last_ratio"``: the statistic
        of a net's first layer divided by that of its last layer leaves
        ``[1 / factor, factor]``; ``"non_finite"``: a value is NaN or
        infinite (``stat="*"`` checks every statistic and every scalar).
    stat : str
        A name from :data:`gradscope.record.STATS`, or ``"*"`` for ``non_finite``.
    factor : float
        Threshold multiple, > 1 (ignored by ``non_finite``).

    Examples
    --------
    >>> AlertRule("vanishing", "below_first", "grad_in_norm", factor=100.0).factor
    100.0
    """

    name: str
    kind: str
    stat: str = "grad_out_norm"
    factor: float = 1e3

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"alert rule name must be a non-empty string, got {self.name!r}")
        check_choice("alert rule kind", self.kind, RULE_KINDS)
        if self.stat != ANY_STAT or self.kind != "non_finite":
            check_choice("alert rule stat", self.stat, STATS)
        check_positive("alert rule factor", self.factor)
        if self.kind != "non_finite" and self.factor <= 1:
            raise ValueError(f"alert rule factor must be > 1, got {self.factor!r}")


#: The rules used when ``Recorder(alerts=None)``.
DEFAULT_RULES: tuple[AlertRule, ...] = (
    AlertRule("vanishing_gradient", "below_first", "grad_out_norm", 1e3),
    AlertRule("exploding_gradient", "above_first", "grad_out_norm", 1e3),
    AlertRule("gradient_ratio", "first_last_ratio", "grad_out_norm", 1e4),
    AlertRule("non_finite", "non_finite", ANY_STAT),
)


def print_alert(message: str) -> None:
    """Default alert printer: one line on standard error."""
    print(f"gradscope alert: {message}", file=sys.stderr, flush=True)


class AlertMonitor:
    """Checks recorded rows against rules; remembers baselines and what already fired."""

    def __init__(self, rules: Iterable[AlertRule], printer: Callable[[str], None] | None = print_alert) -> None:
        self.rules = tuple(rules)
        for rule in self.rules:
            if not isinstance(rule, AlertRule):
                raise ValueError(f"alerts must be AlertRule instances, got {type(rule).__name__}")
        self.printer = printer
        self.first: dict[str, float] = {}
        self.fired: set[str] = set()
        self.latest: str | None = None

    def _fire(self, out: list[dict[str, Any]], rule: AlertRule, step: int, phase: str, net: str, layer: str,
              stat: str, value: float, threshold: float | None, message: str) -> None:
        key = f"{rule.name}|{net}|{layer}"
        if key in self.fired:
            return
        self.fired.add(key)
        text = f"step {step} ({phase}) {net}/{layer or '*'}: {message} [{rule.name}]"
        out.append({"step": int(step), "phase": phase, "net": net, "layer": layer, "rule": rule.name,
                    "kind": rule.kind, "stat": stat, "value": float(value),
                    "threshold": None if threshold is None else float(threshold), "message": text})
        self.latest = text
        if self.printer is not None:
            self.printer(text)

    def check_layers(self, step: int, phase: str, columns: dict[str, np.ndarray]) -> list[dict[str, Any]]:
        """Alerts raised by one recorded step's layer rows (columns as in ``LAYER_COLUMNS``)."""
        out: list[dict[str, Any]] = []
        nets, layers, stats = columns["net"], columns["layer"], columns["stat"]
        values, orders = columns["value"], columns["layer_index"]
        for rule in self.rules:
            rows = np.flatnonzero(stats == rule.stat) if rule.stat != ANY_STAT else np.arange(len(values))
            if rule.kind == "non_finite":
                for i in rows[~np.isfinite(values[rows])]:
                    self._fire(out, rule, step, phase, nets[i], layers[i], stats[i], values[i], None,
                               f"{stats[i]} is {values[i]}")
            elif rule.kind == "first_last_ratio":
                self._check_ratio(out, rule, step, phase, rows, nets, layers, values, orders)
            else:
                for i in rows:
                    self._check_first(out, rule, step, phase, nets[i], layers[i], values[i])
        return out

    def _check_first(self, out: list[dict[str, Any]], rule: AlertRule, step: int, phase: str, net: str,
                     layer: str, value: float) -> None:
        key = f"{phase}|{net}|{layer}|{rule.stat}"
        first = self.first.get(key)
        if first is None:
            if math.isfinite(value) and value > 0:
                self.first[key] = float(value)
            return
        if rule.kind == "below_first" and value < first / rule.factor:
            self._fire(out, rule, step, phase, net, layer, rule.stat, value, first / rule.factor,
                       f"{rule.stat} {value:.3g} fell below 1/{rule.factor:g} of its first value {first:.3g}")
        elif rule.kind == "above_first" and value > first * rule.factor:
            self._fire(out, rule, step, phase, net, layer, rule.stat, value, first * rule.factor,
                       f"{rule.stat} {value:.3g} rose above {rule.factor:g}x its first value {first:.3g}")

    def _check_ratio(self, out: list[dict[str, Any]], rule: AlertRule, step: int, phase: str, rows: np.ndarray,
                     nets: np.ndarray, layers: np.ndarray, values: np.ndarray, orders: np.ndarray) -> None:
        for net in dict.fromkeys(nets[rows]):
            mine = rows[nets[rows] == net]
            if len(mine) < 2:
                continue
            first, last = mine[np.argmin(orders[mine])], mine[np.argmax(orders[mine])]
            a, b = values[first], values[last]
            if not (math.isfinite(a) and math.isfinite(b) and a > 0 and b > 0):
                continue
            ratio = a / b
            if ratio > rule.factor or ratio < 1 / rule.factor:
                self._fire(out, rule, step, phase, net, "", rule.stat, ratio, rule.factor,
                           f"{rule.stat} of first layer {layers[first]} / last layer {layers[last]} = {ratio:.3g}, "
                           f"beyond {rule.factor:g}")

    def check_scalars(self, step: int, names: Sequence[str], values: np.ndarray) -> list[dict[str, Any]]:
        """Alerts raised by scalars (non-finite values only)."""
        out: list[dict[str, Any]] = []
        for rule in self.rules:
            if rule.kind != "non_finite" or rule.stat != ANY_STAT:
                continue
            for name, value in zip(names, values):
                if not math.isfinite(value):
                    self._fire(out, rule, step, "", "", str(name), "scalar", value, None, f"scalar {name} is {value}")
        return out

    def state_dict(self) -> dict[str, Any]:
        """Baselines and fired keys (plain Python types) for checkpoints."""
        return {"rules": [asdict(r) for r in self.rules], "first": dict(self.first),
                "fired": sorted(self.fired), "latest": self.latest}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.first = {str(k): float(v) for k, v in state["first"].items()}
        self.fired = set(state["fired"])
        self.latest = state.get("latest")
