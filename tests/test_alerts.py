"""Alert rules: running-median thresholds, one event per step across layers, cooldowns, exact resume."""
from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import pandas as pd
import pytest
import torch
from record_helpers import train_two_phases
from torch import nn

from gradscope.record import DEFAULT_RULES, AlertRule, Recorder, RunWriter, load_run
from gradscope.record.alerts import AlertMonitor

LAYERS = ["l0", "l1", "l2", "l3", "l4"]


def columns(values: dict[str, float], stat: str = "grad_out_norm", net: str = "D",
            order: list[int] | None = None) -> dict[str, np.ndarray]:
    """One step's long-table columns for one net and one statistic (layer_index = position unless given)."""
    names = list(values)
    return {"net": np.array([net] * len(names), dtype=object), "layer": np.array(names, dtype=object),
            "stat": np.array([stat] * len(names), dtype=object),
            "value": np.array(list(values.values()), dtype=float),
            "layer_index": np.array(order if order is not None else range(len(names)))}


def concat(*parts: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


def noisy(steps: int, seed: int = 0, level: float = 1.0, sigma: float = 0.3) -> np.ndarray:
    """steps x 5 healthy gradient norms: a per-layer level times lognormal minibatch noise."""
    rng = np.random.default_rng(seed)
    return level * np.geomspace(0.01, 0.2, len(LAYERS)) * np.exp(sigma * rng.standard_normal((steps, len(LAYERS))))


def feed(monitor: AlertMonitor, series: np.ndarray, steps: range | None = None) -> list[dict]:
    events = []
    for step in steps if steps is not None else range(len(series)):
        events += monitor.check_layers(step, "d", columns(dict(zip(LAYERS, series[step]))))
    return events


def test_planted_vanishing_gradient_is_one_event_naming_its_three_layers() -> None:
    series = noisy(100)
    series[50:, [1, 2, 4]] /= 1e4  # vanishes in 3 of 5 layers at step 50 and stays vanished
    printed: list[str] = []
    events = feed(AlertMonitor(DEFAULT_RULES, printed.append), series)
    assert len(events) == 1 and printed == [events[0]["message"]]
    event = events[0]
    assert event["rule"] == "vanishing_gradient" and event["step"] == 54  # patience: 5 recorded steps, 50..54
    assert event["layers"] == ["l1", "l2", "l4"] and event["layer"] == "l1,l2,l4" and event["net"] == "D"
    assert "3 of 5 layers (l1, l2, l4)" in event["message"] and "below its running median" in event["message"]
    assert event["value"] < event["threshold"]
    # Without patience the same drop is reported at the step it happens.
    quick = feed(AlertMonitor([AlertRule("v", "below_median", patience=1)], None), series)
    assert [(e["step"], e["layers"]) for e in quick] == [(50, ["l1", "l2", "l4"])]


def test_a_single_outlier_step_fires_only_when_it_explodes() -> None:
    rules = DEFAULT_RULES
    base = noisy(120, seed=1)
    assert feed(AlertMonitor(rules, None), base) == []  # noise alone: silent
    spike = base.copy()
    spike[60, 3] *= 1e4
    events = feed(AlertMonitor(rules, None), spike)
    assert [(e["rule"], e["step"], e["layers"]) for e in events] == [("exploding_gradient", 60, ["l3"])]
    assert "1 of 5 layers (l3)" in events[0]["message"]
    # One low step (vanishing needs 5 in a row), an exactly-zero step (a hinge-saturated D) and a 50x
    # spike (below the 1e3 factor) are all quiet.
    dip = base.copy()
    dip[60, :] /= 1e4
    dip[80, :] = 0.0
    dip[100, 2] *= 50
    assert feed(AlertMonitor(rules, None), dip) == []


@pytest.mark.parametrize("start,end", [(1e-4, 1.0), (1.0, 1e-4)])
def test_slow_healthy_drift_is_quiet_but_the_first_value_rules_fired(start: float, end: float) -> None:
    drift = np.geomspace(start, end, 300)[:, None] * np.exp(0.2 * np.random.default_rng(2).standard_normal((300, 5)))
    assert feed(AlertMonitor(DEFAULT_RULES, None), drift) == []
    old = [AlertRule("vanishing_gradient", "below_first", "grad_out_norm", 1e3),  # the previous defaults
           AlertRule("exploding_gradient", "above_first", "grad_out_norm", 1e3)]
    fired = feed(AlertMonitor(old, None), drift)
    assert fired and {e["rule"] for e in fired} == {"exploding_gradient" if end > start else "vanishing_gradient"}
    assert sorted(name for e in fired for name in e["layers"]) == LAYERS  # each layer once, grouped by step


def test_first_last_ratio_names_the_layers_by_layer_index_and_cools_down() -> None:
    rule = AlertRule("ratio", "first_last_ratio", factor=100.0, cooldown=10)
    monitor = AlertMonitor([rule], None)
    events = []
    for step in range(30):  # rows arrive out of order; layer_index says fc is last, conv1 first
        events += monitor.check_layers(step, "d", columns({"fc": 1.0, "conv1": 1e-3, "conv2": 0.5}, order=[2, 0, 1]))
    assert [e["step"] for e in events] == [0, 10, 20]  # a lasting condition is re-reported every cooldown
    assert events[0]["layers"] == ["conv1", "fc"] and events[0]["value"] == pytest.approx(1e-3)
    assert "first layer conv1 / last layer fc = 0.001" in events[0]["message"]
    assert events[0]["threshold"] == pytest.approx(0.01)


def test_non_finite_values_are_one_event_per_net_and_step() -> None:
    monitor = AlertMonitor(DEFAULT_RULES, None)
    nan, inf = float("nan"), float("inf")
    step = concat(columns({"a": nan, "b": 1.0, "c": nan, "d": inf}),
                  columns({"a": nan, "b": 2.0, "c": 3.0, "d": 4.0}, stat="act_out_var"),
                  columns({"g0": 1.0, "g1": -inf}, net="G"))
    events = monitor.check_layers(0, "g", step)
    assert [(e["net"], e["layers"]) for e in events] == [("D", ["a", "c", "d"]), ("G", ["g1"])]
    assert events[0]["stat"] == "grad_out_norm,act_out_var" and "3 of 4 layers (a, c, d)" in events[0]["message"]
    assert monitor.check_layers(1, "g", step) == []  # cooling down: the next step is not reported again
    scalars = monitor.check_scalars(0, ["loss_d", "loss_g", "ok"], np.array([nan, inf, 1.0]))
    assert [(e["layers"], e["net"], e["stat"]) for e in scalars] == [(["loss_d", "loss_g"], "", "scalar")]
    assert monitor.check_scalars(0, ["marker"], np.array([nan])) == []  # a second batch of the same step
    every = AlertMonitor([AlertRule("nf", "non_finite", "*", cooldown=1)], None)
    assert [len(every.check_scalars(s, ["loss"], np.array([nan]))) for s in range(3)] == [1, 1, 1]
    assert "scalar loss is nan" in every.latest


def _rich_run(monitor: AlertMonitor, steps: range) -> list[dict]:
    """Two nets, two phases, planted vanishing / exploding / ratio / non-finite conditions, scalars."""
    series = noisy(160, seed=3)
    series[40:, [0, 2]] /= 1e4
    series[90, 1] *= 1e5
    series[120:, 0] = 1e3
    events = []
    for step in steps:
        for phase in ("d", "g"):
            values = series[step] * (1.0 if phase == "d" else 0.5)
            if step == 70:
                values = values.copy()
                values[3] = np.nan
            parts = [columns(dict(zip(LAYERS, values))), columns({"g0": values[1], "g1": values[4]}, net="G")]
            events += monitor.check_layers(step, phase, concat(*parts))
        events += monitor.check_scalars(step, ["loss"], np.array([np.nan if step in (71, 72) else 1.0]))
    return events


RESUME_RULES = (*DEFAULT_RULES, AlertRule("ratio", "first_last_ratio", factor=1e3, cooldown=15, patience=2),
                AlertRule("legacy", "above_first", factor=1e3))


@pytest.mark.parametrize("cut", [0, 9, 42, 43, 70, 71, 95, 125])  # before history, mid-patience, mid-cooldown
def test_a_resumed_monitor_fires_exactly_what_an_uninterrupted_one_fires(cut: int) -> None:
    whole_printed: list[str] = []
    whole = AlertMonitor(RESUME_RULES, whole_printed.append)
    expected = _rich_run(whole, range(160))
    assert {e["rule"] for e in expected} == {r.name for r in RESUME_RULES}  # every rule has a say
    printed: list[str] = []
    first = AlertMonitor(RESUME_RULES, printed.append)
    got = _rich_run(first, range(cut + 1))
    state = json.loads(json.dumps(first.state_dict()))
    second = AlertMonitor(RESUME_RULES, printed.append)
    second.load_state_dict(state)
    got += _rich_run(second, range(cut + 1, 160))
    assert json.dumps(got) == json.dumps(expected) and printed == whole_printed  # dumps: NaN values compare equal
    assert second.state_dict() == whole.state_dict() and second.latest == whole.latest


def test_alerts_do_not_depend_on_when_flushes_happen(tmp_path) -> None:
    # Sensitive rules, so that a small training run raises many events through the real recorder.
    rules = [AlertRule("up", "above_median", "grad_out_norm", factor=1.02, window=3, min_history=2, cooldown=2),
             AlertRule("down", "below_median", "grad_out_norm", factor=1.02, window=4, min_history=2, patience=2),
             AlertRule("nf", "non_finite", "*")]
    tables = []
    for flush_every in (1, 3, 7):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 1))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        out = tmp_path / f"run{flush_every}"
        with Recorder(model, out=out, flush_every=flush_every, alerts=rules, alert_printer=None) as rec:
            train_two_phases(rec, model, opt, range(20), nan_step=9)
        tables.append(load_run(out).alerts)
    assert len(tables[0]) > 5 and set(tables[0]["rule"]) == {"up", "down", "nf"}
    for other in tables[1:]:
        pd.testing.assert_frame_equal(tables[0], other)


@pytest.mark.parametrize("kwargs,message", [
    ({"kind": "sideways"}, "unknown alert rule kind 'sideways'; valid choices: 'below_median'"),
    ({"stat": "grad_nrom"}, "unknown alert rule stat 'grad_nrom'; valid choices:"),
    ({"stat": "*"}, "unknown alert rule stat '\\*'"),
    ({"factor": 1.0}, "factor must be > 1"),
    ({"factor": True}, "factor must be a number"),
    ({"factor": "big"}, "factor must be a number"),
    ({"window": 0}, "window must be an integer >= 1"),
    ({"min_history": 30}, "min_history must be <= window \\(20\\)"),
    ({"patience": 2.5}, "patience must be an integer >= 1"),
    ({"cooldown": 0}, "cooldown must be an integer >= 1"),
    ({"name": ""}, "name must be a non-empty string"),
])
def test_rules_are_validated_with_one_line_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        AlertRule(**{"name": "r", "kind": "below_median", **kwargs})
    assert "\n" not in str(info.value)


def test_rules_are_plain_json_data_and_old_rule_dicts_still_load() -> None:
    stored = json.loads(json.dumps([asdict(r) for r in DEFAULT_RULES]))
    assert tuple(AlertRule(**d) for d in stored) == DEFAULT_RULES
    assert AlertRule(name="v", kind="below_first", stat="grad_out_norm", factor=1000).factor == 1000.0
    settings = Recorder(nn.Linear(2, 1)).settings()
    assert json.loads(json.dumps(settings["alerts"])) == [asdict(r) for r in DEFAULT_RULES]


def test_legacy_first_value_rules_and_an_old_checkpoint_state() -> None:
    rules = [AlertRule("vanish", "below_first", factor=10.0), AlertRule("explode", "above_first", factor=10.0),
             AlertRule("ratio", "first_last_ratio", factor=50.0)]
    series = [{"c1": 0.0, "c2": 1.0}, {"c1": 2.0, "c2": 1.0}, {"c1": 0.25, "c2": 0.11},
              {"c1": 0.19, "c2": 0.09}, {"c1": 25.0, "c2": 0.05}, {"c1": 0.01, "c2": 0.01}]
    monitor = AlertMonitor(rules, None)
    fired = [monitor.check_layers(step, "d", columns(v)) for step, v in enumerate(series)]
    # As before: c1's baseline is its first positive value (2.0 at step 1), each layer fires once;
    # now both layers of step 3 are one event.
    assert [[(e["rule"], e["layers"]) for e in f] for f in fired] == [
        [], [], [], [("vanish", ["c1", "c2"])], [("explode", ["c1"]), ("ratio", ["c1", "c2"])], []]
    assert fired[4][1]["value"] == pytest.approx(25.0 / 0.05)
    # A state saved by gradscope before running medians: baselines and fired layers keep working.
    old = {"rules": [asdict(r) for r in rules], "first": {"d|D|c1|grad_out_norm": 2.0, "d|D|c2|grad_out_norm": 1.0},
           "fired": ["vanish|D|c1"], "latest": "step 3 (d) D/c1: ..."}
    restored = AlertMonitor(rules, None)
    with pytest.warns(UserWarning, match="older gradscope"):
        restored.load_state_dict(json.loads(json.dumps(old)))
    assert restored.latest == old["latest"]
    events = restored.check_layers(3, "d", columns({"c1": 0.01, "c2": 0.01}))
    assert [(e["rule"], e["layers"]) for e in events] == [("vanish", ["c2"])]  # c1 already fired
    # New-kind rules start with empty windows on an old state; an unknown version is a clear error.
    fresh = AlertMonitor(DEFAULT_RULES, None)
    with pytest.warns(UserWarning):
        fresh.load_state_dict(old)
    assert fresh.windows == {}
    with pytest.raises(ValueError, match="unknown alert monitor state version 99; this gradscope reads 2"):
        fresh.load_state_dict({"version": 99})


def test_alert_rows_without_layers_read_back_with_their_one_layer(tmp_path) -> None:
    writer = RunWriter(tmp_path / "run")
    writer.set_status("running", step=0)
    writer.append_alerts([{"step": 3, "phase": "d", "net": "D", "layer": "fc", "rule": "old", "kind": "below_first"},
                          {"step": 4, "phase": "", "net": "", "layer": "", "rule": "ratio", "kind": "x"},
                          {"step": 5, "net": "D", "layer": "a,b", "layers": ["a", "b"], "rule": "new"}])
    writer.flush()
    alerts = load_run(tmp_path / "run").alerts
    assert alerts["layers"].tolist() == [["fc"], [], ["a", "b"]]


# --- the skips for steps where nothing can change (all finite, no streak open) -------------------------------
def test_a_non_finite_value_after_many_finite_steps_fires_and_a_closed_streak_starts_over() -> None:
    nf = AlertRule("nf", "non_finite", "*", patience=3, cooldown=1)
    monitor = AlertMonitor([nf, DEFAULT_RULES[-1]], None)
    series = noisy(90, seed=4)

    def step(s: int, bad: dict[str, float] | None = None) -> list[dict]:
        values = dict(zip(LAYERS, series[s]))
        return monitor.check_layers(s, "d", concat(columns({**values, **(bad or {})}),
                                                   columns({"g0": 1.0, "g1": 2.0}, net="G")))

    assert [e for s in range(50) for e in step(s)] == []  # 50 finite steps: skipped, nothing stored
    assert monitor.streaks == {}
    events = step(50, {"l2": float("nan")})
    assert [(e["rule"], e["net"], e["layers"], e["stat"]) for e in events] == [
        ("non_finite", "D", ["l2"], "grad_out_norm")]
    assert events[0]["message"] == "step 50 (d) D: 1 of 5 layers (l2), grad_out_norm not finite (nan) [non_finite]"
    assert monitor.streaks == {("nf", "d", "D", "l2"): 1, ("non_finite", "d", "D", "l2"): 1}
    assert step(51, {"l2": float("inf")}) == []  # nf: 2 of 3; non_finite: cooling down
    assert monitor.streaks[("nf", "d", "D", "l2")] == 2
    # A finite step ends the open streaks, although every value is finite (no skip while one is open).
    assert step(52) == [] and monitor.streaks == {}
    # Two more non-finite steps are not enough: the closed streak starts again from 0.
    assert step(53, {"l2": float("nan")}) == [] and step(54, {"l2": float("nan")}) == []
    third = step(55, {"l2": float("nan"), "l4": -float("inf")})
    assert [(e["rule"], e["step"], e["layers"]) for e in third] == [("nf", 55, ["l2"])]  # l4: 1 of 3
    # A state saved with a streak open resumes it, and a finite step closes it there too.
    restored = AlertMonitor([nf, DEFAULT_RULES[-1]], None)
    restored.load_state_dict(json.loads(json.dumps(monitor.state_dict())))
    monitor = restored
    assert step(56, {"l4": float("nan")}) == []  # l4: 2 of 3; l2's open streak ends
    assert set(monitor.streaks) == {("nf", "d", "D", "l4"), ("non_finite", "d", "D", "l4")}
    assert [e["layers"] for e in step(57, {"l4": float("nan")})] == [["l4"]]
    assert step(58) == [] and monitor.streaks == {} and step(59) == []


def test_a_median_streak_that_was_open_is_closed_by_a_recovered_value() -> None:
    series = noisy(80, seed=5)
    series[40:43, 1] /= 1e4   # 3 low steps, then recovery: no event with patience 5
    series[50:55, 1] /= 1e4   # 5 low steps: one event at the 5th
    monitor = AlertMonitor(DEFAULT_RULES, None)
    events = feed(monitor, series, range(43))
    assert events == [] and monitor.streaks == {("vanishing_gradient", "d", "D", "l1"): 3}
    events += feed(monitor, series, range(43, 50))
    assert events == [] and monitor.streaks == {}
    events += feed(monitor, series, range(50, 80))
    assert [(e["rule"], e["step"], e["layers"]) for e in events] == [("vanishing_gradient", 54, ["l1"])]
    assert "for 5 recorded steps" in events[0]["message"]
