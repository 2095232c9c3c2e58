"""Alerts: rules that flag vanishing, exploding and non-finite values while a model trains.

The rules themselves are plain data (:mod:`gradscope.record.alert_rules`, re-exported here); this
module checks them.

Rules are checked on the host when recorded values arrive there (at each
flush), step by step in order; every piece of state advances per recorded step,
so the alerts do not depend on when flushes happen. A rule compares each
series ``(phase, net, layer, stat)`` with a *running reference*: the median of
its last ``window`` recorded finite values. The layers of a net that trip a rule
at the same step make ONE event (one printed line, one stored row listing the
layers); after an event the rule stays quiet for that net for ``cooldown``
steps.
"""
from __future__ import annotations

import math
import sys
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict
from itertools import chain, islice
from typing import Any

import numpy as np

from gradscope.record.alert_rules import (  # noqa: F401 (re-exported)
    ANY_STAT,
    DEFAULT_RULES,
    LEGACY_KINDS,
    RULE_KINDS,
    AlertRule,
)

#: Version of :meth:`AlertMonitor.state_dict`; states without it come from gradscope before running medians.
STATE_VERSION = 2
_MEDIAN_KINDS = ("below_median", "above_median")


def print_alert(message: str) -> None:
    """Default alert printer: one line on standard error."""
    print(f"gradscope alert: {message}", file=sys.stderr, flush=True)


def _g(x: float) -> str:
    """Short number: 1.2e3, 0.0022, 5."""
    return f"{x:.2g}".replace("e+0", "e").replace("e+", "e").replace("e-0", "e-")


def _span(values: Sequence[float]) -> str:
    lo, hi = min(values), max(values)
    return f"{_g(lo)}x" if _g(lo) == _g(hi) else f"{_g(lo)}-{_g(hi)}x"


def _which(names: Sequence[str], total: int) -> str:
    """'3 of 5 layers (c1, c2, c4)', or '(first..last)' when many."""
    listed = ", ".join(names) if len(names) <= 4 else f"{names[0]}..{names[-1]}"
    return f"{len(names)} of {total} layers ({listed})"


class AlertMonitor:
    """Checks recorded rows against rules; keeps running windows, streaks and cooldowns.

    Parameters
    ----------
    rules : iterable of AlertRule
    printer : callable, optional
        Called with each event's message (``None``: silent).

    Examples
    --------
    >>> import numpy as np
    >>> monitor = AlertMonitor([AlertRule("vanish", "below_median", factor=100.0, min_history=3)], None)
    >>> def step(values):
    ...     return {"net": np.array(["D"] * 3, dtype=object), "layer": np.array(["a", "b", "c"], dtype=object),
    ...             "stat": np.array(["grad_out_norm"] * 3, dtype=object), "layer_index": np.arange(3),
    ...             "value": np.array(values)}
    >>> [len(monitor.check_layers(s, "d", step([1.0, 1.0, 1.0]))) for s in range(3)]
    [0, 0, 0]
    >>> print(monitor.check_layers(3, "d", step([1e-4, 1.0, 1e-5]))[0]["message"])
    step 3 (d) D: 2 of 3 layers (a, c), grad_out_norm fell 1e4-1e5x below its running median [vanish]
    """

    def __init__(self, rules: Iterable[AlertRule], printer: Callable[[str], None] | None = print_alert) -> None:
        self.rules = tuple(rules)
        for rule in self.rules:
            if not isinstance(rule, AlertRule):
                raise ValueError(f"alerts must be AlertRule instances, got {type(rule).__name__}")
        self.printer = printer
        # How many values to keep per statistic: the largest window of the median rules on it.
        self._keep: dict[str, int] = {}
        for rule in self.rules:
            if rule.kind in _MEDIAN_KINDS:
                self._keep[rule.stat] = max(self._keep.get(rule.stat, 0), rule.window)
        self._legacy_stats = {rule.stat for rule in self.rules if rule.kind in LEGACY_KINDS}
        self._reset()

    def _reset(self) -> None:
        self.windows: dict[tuple[str, str, str, str], deque[float]] = {}   # (phase, net, layer, stat)
        self.first: dict[tuple[str, str, str, str], float] = {}            # legacy baselines
        self.streaks: dict[tuple[str, str, str, str], int] = {}            # (rule, phase, net, layer)
        self.last_event: dict[tuple[str, str], int] = {}                   # (rule, net) -> step
        self.latched: set[tuple[str, str, str]] = set()                    # legacy (rule, net, layer)
        self.latest: str | None = None
        self._latest_key: tuple[int, str] | None = None
        self._count_open()

    def _count_open(self) -> None:
        """Recount the open streaks per (rule, phase, net) from :attr:`streaks` (kept up by :meth:`_streak`).

        A (rule, net) with no open streak and no row meeting its condition changes nothing when checked,
        so :meth:`check_layers` skips it without visiting its layers one by one.
        """
        self._open: dict[tuple[str, str, str], int] = {}
        for key in self.streaks:
            self._open[key[:3]] = self._open.get(key[:3], 0) + 1

    # --- checking -----------------------------------------------------------------------------------
    def check_layers(self, step: int, phase: str, columns: dict[str, np.ndarray]) -> list[dict[str, Any]]:
        """Events raised by one recorded step's layer rows (columns as in ``LAYER_COLUMNS``)."""
        out: list[dict[str, Any]] = []
        nets, layers, stats = columns["net"], columns["layer"], columns["stat"]
        values, orders = np.asarray(columns["value"], dtype=np.float64), columns["layer_index"]
        finite = np.isfinite(values)
        rows_of: dict[str, np.ndarray] = {}                     # stat -> its rows ("*": all)
        groups: dict[str, list[tuple[str, np.ndarray]]] = {}   # stat -> (net, its rows input to output)
        series: dict[tuple[str, str], tuple[list[str], list[tuple[str, str, str, str]]]] = {}  # (stat, net)
        references: dict[tuple[str, str, int], tuple[np.ndarray, np.ndarray]] = {}  # (stat, net, window)
        for rule in self.rules:
            if rule.stat not in rows_of:
                rows_of[rule.stat] = self._rows(rule.stat, stats)
            if rule.kind == "non_finite" and finite[rows_of[rule.stat]].all() and not self._opens(rule.name, phase):
                continue  # all finite and no streak to end: every streak stays absent and nothing fires
            if rule.stat not in groups:
                groups[rule.stat] = self._groups(rows_of[rule.stat], nets, orders)
            for net, mine in groups[rule.stat]:
                if rule.kind == "non_finite":
                    # The same skip per net: the non-finite value may be in another net.
                    if self._open.get((rule.name, phase, net)) or not finite[mine].all():
                        self._check_non_finite(out, rule, step, phase, net, [(str(layers[i]), i) for i in mine],
                                               stats, values)
                elif rule.kind == "first_last_ratio":
                    self._check_ratio(out, rule, step, phase, net, layers, mine, values)
                else:
                    if (rule.stat, net) not in series:
                        names = [str(layers[i]) for i in mine]
                        series[rule.stat, net] = names, [(phase, net, name, rule.stat) for name in names]
                    names, keys = series[rule.stat, net]
                    if rule.kind in LEGACY_KINDS:
                        self._check_first(out, rule, step, phase, net, names, keys, values[mine])
                        continue
                    if (rule.stat, net, rule.window) not in references:
                        references[rule.stat, net, rule.window] = self._medians(keys, rule.window)
                    self._check_median(out, rule, step, phase, net, names, values[mine], finite[mine],
                                       *references[rule.stat, net, rule.window])
        # References move only after every rule saw this step, so the current value never judges itself.
        watched = [rows_of[stat] if stat in rows_of else self._rows(stat, stats)
                   for stat in dict.fromkeys([*self._keep, *self._legacy_stats])]
        tracked = np.sort(np.concatenate(watched)) if watched else np.zeros(0, dtype=np.int64)
        tracked = tracked[finite[tracked]]  # row order, as the windows' insertion order is stored state
        for stat, net, layer, value in zip(stats[tracked].tolist(), nets[tracked].tolist(),
                                           layers[tracked].tolist(), values[tracked].tolist()):
            key = (phase, str(net), str(layer), str(stat))
            if key[3] in self._keep:
                window = self.windows.get(key)
                if window is None:
                    window = self.windows[key] = deque(maxlen=self._keep[key[3]])
                window.append(value)
            if key[3] in self._legacy_stats and key not in self.first and value > 0:
                self.first[key] = value
        return out

    @staticmethod
    def _rows(stat: str, stats: np.ndarray) -> np.ndarray:
        """The rows of ``stat`` (``"*"``: every row)."""
        return np.flatnonzero(stats == stat) if stat != ANY_STAT else np.arange(len(stats))

    @staticmethod
    def _groups(rows: np.ndarray, nets: np.ndarray, orders: np.ndarray) -> list[tuple[str, np.ndarray]]:
        """``rows`` per net, nets in order of appearance, each net's rows input to output."""
        out = []
        for net in dict.fromkeys(nets[rows]):
            mine = rows[nets[rows] == net]
            out.append((str(net), mine[np.argsort(orders[mine], kind="stable")]))
        return out

    def _opens(self, rule: str, phase: str) -> bool:
        """Whether ``rule`` has an open streak in ``phase`` (in any net)."""
        return any(key[0] == rule and key[1] == phase for key in self._open)

    def _medians(self, keys: list[tuple[str, str, str, str]], window: int) -> tuple[np.ndarray, np.ndarray]:
        """History lengths and running medians (NaN without history) of the series ``keys``.

        Series of equal length are stacked and sorted at once; the middle value, or the two middle
        values' sum halved, is bit for bit what :func:`statistics.median` returns.
        """
        histories = [self.windows.get(key, ()) for key in keys]
        lengths = np.fromiter(map(len, histories), dtype=np.int64, count=len(histories))
        used = np.minimum(lengths, window)
        medians = np.full(len(keys), np.nan)
        for w in np.unique(used[used > 0]).tolist():
            idx = np.flatnonzero(used == w)
            chosen = [histories[i] if len(histories[i]) == w else islice(histories[i], len(histories[i]) - w, None)
                      for i in idx.tolist()]
            block = np.fromiter(chain.from_iterable(chosen), dtype=np.float64, count=len(idx) * w).reshape(-1, w)
            block.sort(axis=1)
            middle = block[:, w // 2] if w % 2 else (block[:, w // 2 - 1] + block[:, w // 2]) / 2
            medians[idx] = middle
        return lengths, medians

    def _streak(self, key: tuple[str, str, str, str], met: bool) -> int:
        """Advance a (rule, phase, net, layer) streak; absent keys are 0 (keeps the state small)."""
        if not met:
            if self.streaks.pop(key, None) is not None:
                self._open[key[:3]] -= 1
                if not self._open[key[:3]]:  # dropped at 0, so that no open streak is an empty dict
                    del self._open[key[:3]]
            return 0
        if key not in self.streaks:
            self._open[key[:3]] = self._open.get(key[:3], 0) + 1
        self.streaks[key] = self.streaks.get(key, 0) + 1
        return self.streaks[key]

    def _check_median(self, out: list[dict[str, Any]], rule: AlertRule, step: int, phase: str, net: str,
                      names: list[str], values: np.ndarray, finite: np.ndarray, lengths: np.ndarray,
                      medians: np.ndarray) -> None:
        """A running-median rule over one net's layers (``values`` etc. in ``names`` order)."""
        below = rule.kind == "below_median"
        ready = lengths >= rule.min_history
        met = ready & finite & (medians > 0) & (  # NaN medians (no history) compare False
            values < medians / rule.factor if below else values > medians * rule.factor)
        if not met.any() and not self._open.get((rule.name, phase, net)):
            return  # every streak stays absent: nothing to advance, nothing fires
        hits: list[tuple[str, float, float]] = []  # (layer, value, reference)
        for j, hit in enumerate(met.tolist()):
            if self._streak((rule.name, phase, net, names[j]), hit) >= rule.patience:
                hits.append((names[j], float(values[j]), float(medians[j])))
        self._report(out, rule, step, phase, net, hits, len(names))

    def _check_first(self, out: list[dict[str, Any]], rule: AlertRule, step: int, phase: str, net: str,
                     names: list[str], keys: list[tuple[str, str, str, str]], values: np.ndarray) -> None:
        """A legacy first-value rule (fires at most once per layer; no streaks)."""
        below = rule.kind == "below_first"
        hits: list[tuple[str, float, float]] = []
        for layer, key, value in zip(names, keys, values.tolist()):
            reference = self.first.get(key)
            if reference is None or (rule.name, net, layer) in self.latched:
                continue
            if math.isfinite(value) and reference > 0 and (
                    value < reference / rule.factor if below else value > reference * rule.factor):
                hits.append((layer, value, reference))
        if self._report(out, rule, step, phase, net, hits, len(names)):
            self.latched.update((rule.name, net, h[0]) for h in hits)

    def _report(self, out: list[dict[str, Any]], rule: AlertRule, step: int, phase: str, net: str,
                hits: list[tuple[str, float, float]], total: int) -> bool:
        """One event for the layers of a reference rule that tripped (True if emitted)."""
        if not hits:
            return False
        below = rule.kind in ("below_median", "below_first")
        legacy = rule.kind in LEGACY_KINDS
        if below:
            zeros = sum(value == 0 for _, value, _ in hits)
            drops = [ref / value for _, value, ref in hits if value > 0]
            how = f"fell {_span(drops)} below" if drops else "fell to 0 from"
            how += f" ({zeros} to 0)" if drops and zeros else ""
            worst = min(hits, key=lambda h: h[1] / h[2])
        else:
            how = f"rose {_span([value / ref for _, value, ref in hits])} above"
            worst = max(hits, key=lambda h: h[1] / h[2])
        base = "its first value" if legacy else "its running median"
        lasting = f" for {rule.patience} recorded steps" if rule.patience > 1 and not legacy else ""
        names = [h[0] for h in hits]
        threshold = worst[2] / rule.factor if below else worst[2] * rule.factor
        return self._emit(out, rule, step, phase, net, names, rule.stat, worst[1], threshold,
                          f"{_which(names, total)}, {rule.stat} {how} {base}{lasting}")

    def _check_ratio(self, out: list[dict[str, Any]], rule: AlertRule, step: int, phase: str, net: str,
                     layers: np.ndarray, mine: np.ndarray, values: np.ndarray) -> None:
        if len(mine) < 2:
            return
        (first, i), (last, j) = (str(layers[mine[0]]), mine[0]), (str(layers[mine[-1]]), mine[-1])
        a, b = float(values[i]), float(values[j])
        ratio = a / b if math.isfinite(a) and math.isfinite(b) and a > 0 and b > 0 else math.nan
        met = not math.isnan(ratio) and (ratio > rule.factor or ratio < 1 / rule.factor)
        if self._streak((rule.name, phase, net, ""), met) >= rule.patience:
            self._emit(out, rule, step, phase, net, [first, last], rule.stat, ratio,
                       rule.factor if ratio > 1 else 1 / rule.factor,
                       f"{rule.stat} of first layer {first} / last layer {last} = {_g(ratio)}, "
                       f"outside [1/{_g(rule.factor)}, {_g(rule.factor)}]")

    def _check_non_finite(self, out: list[dict[str, Any]], rule: AlertRule, step: int, phase: str, net: str,
                          named: list[tuple[str, int]], stats: np.ndarray, values: np.ndarray) -> None:
        bad: dict[str, list[int]] = {}  # layer -> its non-finite rows (a layer has one row per stat)
        for layer, i in named:
            bad.setdefault(layer, [])
            if not math.isfinite(values[i]):
                bad[layer].append(i)
        hits = []
        for layer, rows in bad.items():  # every layer's streak advances, tripped or not
            if self._streak((rule.name, phase, net, layer), bool(rows)) >= rule.patience:
                hits.append(layer)
        if hits:
            rows = [i for layer in hits for i in bad[layer]]
            which = list(dict.fromkeys(str(stats[i]) for i in rows))
            shown = ", ".join(sorted({str(float(values[i])) for i in rows}))
            self._emit(out, rule, step, phase, net, hits, ",".join(which), float(values[rows[0]]), None,
                       f"{_which(hits, len(bad))}, {', '.join(which)} not finite ({shown})")

    def check_scalars(self, step: int, names: Sequence[str], values: np.ndarray) -> list[dict[str, Any]]:
        """Events raised by scalars (non-finite values only; one event per step for all names)."""
        out: list[dict[str, Any]] = []
        for rule in self.rules:
            if rule.kind != "non_finite" or rule.stat != ANY_STAT:
                continue
            hits = []
            for name, value in zip(names, values):
                if self._streak((rule.name, "", "", str(name)), not math.isfinite(value)) >= rule.patience:
                    hits.append((str(name), float(value)))
            if hits:
                what = f"scalar {hits[0][0]} is {hits[0][1]}" if len(hits) == 1 else \
                    f"scalars {', '.join(n for n, _ in hits)} are not finite"
                self._emit(out, rule, step, "", "", [n for n, _ in hits], "scalar", hits[0][1], None, what)
        return out

    def _emit(self, out: list[dict[str, Any]], rule: AlertRule, step: int, phase: str, net: str,
              names: list[str], stat: str, value: float, threshold: float | None, detail: str) -> bool:
        """Record and print one event unless the rule is cooling down for this net; True if emitted."""
        if rule.kind not in LEGACY_KINDS:
            last = self.last_event.get((rule.name, net))
            if last is not None and step < last + rule.cooldown:
                return False
            self.last_event[(rule.name, net)] = int(step)
        where = f"step {step}" + (f" ({phase})" if phase else "") + (f" {net}:" if net else "")
        text = f"{where} {detail} [{rule.name}]"
        out.append({"step": int(step), "phase": phase, "net": net, "layer": ",".join(names), "layers": list(names),
                    "rule": rule.name, "kind": rule.kind, "stat": stat, "value": float(value),
                    "threshold": None if threshold is None else float(threshold), "message": text})
        # Latest by (step, text), not arrival order: layer and scalar rows of a step reach the
        # monitor in an order that depends on flushes.
        if self._latest_key is None or (int(step), text) >= self._latest_key:
            self.latest, self._latest_key = text, (int(step), text)
        if self.printer is not None:
            self.printer(text)
        return True

    # --- checkpoints --------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything the monitor remembers, as JSON-ready data (``rules`` as plain dicts)."""
        return {"version": STATE_VERSION, "rules": [asdict(r) for r in self.rules],
                "windows": [[*key, list(v)] for key, v in self.windows.items()],
                "first": [[*key, v] for key, v in self.first.items()],
                "streaks": [[*key, n] for key, n in self.streaks.items()],
                "last_event": [[*key, s] for key, s in self.last_event.items()],
                "latched": [list(key) for key in sorted(self.latched)],
                "latest": None if self._latest_key is None else list(self._latest_key)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (also a state from gradscope before running medians).

        An old state (no ``version``) keeps its first-value baselines and fired layers for legacy
        rules; running windows start empty, with a warning.
        """
        if not isinstance(state, dict):
            raise ValueError(f"alert monitor state must be a dict, got {type(state).__name__}")
        version = state.get("version")
        self._reset()
        if version is None and "first" in state and "fired" in state:
            self._load_legacy(state)
            return
        if version != STATE_VERSION:
            raise ValueError(f"unknown alert monitor state version {version!r}; this gradscope reads {STATE_VERSION}")
        for *key, vals in state["windows"]:
            self.windows[tuple(key)] = deque((float(v) for v in vals), maxlen=self._keep.get(key[3], len(vals)))
        self.first = {tuple(key): float(v) for *key, v in state["first"]}
        self.streaks = {tuple(key): int(n) for *key, n in state["streaks"]}
        self._count_open()
        self.last_event = {tuple(key): int(s) for *key, s in state["last_event"]}
        self.latched = {tuple(key) for key in state["latched"]}
        if state["latest"] is not None:
            self._latest_key = (int(state["latest"][0]), str(state["latest"][1]))
            self.latest = self._latest_key[1]

    def _load_legacy(self, state: dict[str, Any]) -> None:
        for key, value in state["first"].items():
            parts = str(key).split("|")
            if len(parts) == 4:
                self.first[tuple(parts)] = float(value)
        for key in state["fired"]:
            parts = str(key).split("|")
            if len(parts) == 3:
                self.latched.add(tuple(parts))
        self.latest = state.get("latest")
        warnings.warn("alert state from an older gradscope: running medians restart empty "
                      "(legacy first-value baselines kept)", stacklevel=3)
