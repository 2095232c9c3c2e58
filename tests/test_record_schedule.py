"""Recording schedules for long runs: the compact text, the steps it records, and its path through
``Recorder``, ``RunConfig``, ``gradscope run`` and ``--resume``."""
from __future__ import annotations

import copy
import itertools
import json
import signal

import pandas as pd
import pytest
import torch
from torch import nn

from gradscope import cli
from gradscope.record import Recorder, RecordEvery, load_run
from gradscope.record.schedule import Schedule
from gradscope.train import RunConfig
from gradscope.train import api as train_api
from gradscope.train.config import resolve_config

DT = torch.float64
SORT = ["step", "phase", "net", "layer", "stat"]


# --- the schedule on its own ------------------------------------------------------------------------

@pytest.mark.parametrize("text,canonical", [
    ("1", "1"), ("7", "7"), ("log20", "log20"), ("1@1000,10@10000,100", "1@1000,10@10000,100"),
    (" 1 @ 1000 , log 20 ", "1@1000,log20"), ("2@10,log7@5000,100", "2@10,log7@5000,100"),
])
def test_parse_and_format_round_trip(text, canonical):
    schedule = RecordEvery.parse(text)
    assert str(schedule) == canonical
    assert RecordEvery.parse(str(schedule)) == schedule and hash(RecordEvery.parse(canonical)) == hash(schedule)
    assert eval(repr(schedule), {"RecordEvery": RecordEvery.parse}) == schedule


def test_constructor_forms_agree_with_the_text():
    assert RecordEvery((1, 1000), (10, 10_000), 100) == RecordEvery.parse("1@1000,10@10000,100")
    assert RecordEvery((1, 1000), "log20") == RecordEvery.parse("1@1000,log20")
    assert RecordEvery.of(5) == RecordEvery.of("5") == RecordEvery(5)
    assert (RecordEvery(5).period, RecordEvery(5).setting()) == (5, 5)
    piecewise = RecordEvery.parse("1@10,5")
    assert (piecewise.period, piecewise.setting()) == (None, "1@10,5")


@pytest.mark.parametrize("text,problem", [
    ("", "an empty part"),
    ("1@10,,5", "an empty part"),
    ("1@1000", "the last part '1@1000' must be a period without @"),
    ("1,10@100", "part '1' needs an end step"),
    ("1@100,5@50,3", "the end step 50 must be an integer above 100"),
    ("1@0,3", "the end step 0 must be an integer above 0"),
    ("1@x,2", "the end step in '1@x' must be an integer"),
    ("0", "a period must be an integer >= 1 or logK, got 0"),
    ("fast", "a period must be an integer >= 1 or logK, got 'fast'"),
    ("1@10,log0", "a log period is logK with K from 1 to 1000"),
    ("log1001", "a log period is logK with K from 1 to 1000"),
    ("2.5", "a period must be an integer >= 1 or logK"),
])
def test_bad_text_is_a_one_line_value_error_naming_the_valid_forms(text, problem):
    with pytest.raises(ValueError) as info:
        RecordEvery.parse(text)
    message = str(info.value)
    assert "\n" not in message and problem in message, message
    assert message.startswith(f"bad recording schedule {text!r}: ")
    assert "valid forms: N, or parts P@U" in message and "1@1000,log20" in message


def test_bad_python_values():
    with pytest.raises(ValueError, match="every must be an integer >= 1, got 0"):
        RecordEvery.of(0)
    with pytest.raises(ValueError, match="only the parts before the last"):
        RecordEvery((1, 10), (2, 20))
    with pytest.raises(ValueError, match="needs an end step"):
        RecordEvery(1, 2)
    with pytest.raises(TypeError, match="must be text"):
        RecordEvery.parse(5)  # type: ignore[arg-type]


@pytest.mark.parametrize("text", ["3", "1@4,2@10,5", "log20", "log3", "1@10,log5", "2@10,log7@500,100",
                                  "log1000", "1@7,log2@300,7"])
def test_listed_steps_are_the_due_steps(text):
    schedule = RecordEvery.parse(text)
    due = [step for step in range(3000) if schedule.due(step)]
    assert schedule.steps(3000) == due
    assert schedule.steps(3000, start=123) == [step for step in due if step >= 123]
    assert due[0] == 0  # step 0 is always recorded


def test_periods_count_from_step_zero_and_log_spacing_is_k_per_decade():
    assert RecordEvery.parse("1@4,2@10,5").steps(30) == [0, 1, 2, 3, 4, 6, 8, 10, 15, 20, 25]
    assert RecordEvery.parse("1@5,3").steps(13) == [0, 1, 2, 3, 4, 6, 9, 12]  # 5 is no multiple of 3
    log20 = RecordEvery.parse("log20")
    assert log20.steps(11) == list(range(11))  # denser than one a step: every step
    for decade in (3, 4, 5):
        points = log20.steps(10 ** (decade + 1), start=10 ** decade)
        assert len(points) == 20 and points[0] == 10 ** decade
        ratios = [b / a for a, b in itertools.pairwise(points)]
        assert max(ratios) / min(ratios) < 1.01  # geometric
    assert RecordEvery.parse("1@1000,log20").steps(2000, start=990) == [
        990, 991, 992, 993, 994, 995, 996, 997, 998, 999, 1000, 1123, 1259, 1413, 1585, 1779, 1996]


def test_operator_and_slope_steps_follow_the_period_in_force():
    plain = Schedule(3, None, None, None)
    assert (plain.every, plain.slopes_every, plain.operator_every) == (3, 3, 30)
    piecewise = Schedule("1@20,5@200,log10", None, None, None)
    assert piecewise.every == RecordEvery.parse("1@20,5@200,log10") and piecewise.slopes_every is None
    operator = [step for step in range(2000) if piecewise.due(step)[0] and piecewise.operator_due(step)]
    # every 10th step of each period (multiples of 10 * P), then every 10th log bin (one per decade)
    assert operator == [0, 10, 50, 100, 150, 1000]
    assert all(piecewise.slopes_due(step) for step in range(50))
    explicit = Schedule("1@20,5", None, None, 4, operator_every=12)
    assert [s for s in range(60) if explicit.due(s)[0] and explicit.slopes_due(s)] == [0, 4, 8, 12, 16, 20, 40]
    assert [s for s in range(60) if explicit.due(s)[0] and explicit.operator_due(s)] == [0, 12]
    with pytest.raises(ValueError, match="slopes_every must be a multiple of every"):
        Schedule(2, None, None, 3)


# --- through the Recorder -------------------------------------------------------------------------

def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(32, 1)).to(DT)


def train(rec: Recorder, model: nn.Module, steps: range, begin: bool = False, slopes: bool = False) -> None:
    """Two phases a step (a GAN's D and G updates) on data fixed by the step, with stateless SGD."""
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for step in steps:
        for index, phase in enumerate(("d", "g")):
            if begin:
                rec.begin(step, phase)
            gen = torch.Generator().manual_seed(10 * step + index)
            x = torch.randn(3, 1, 4, 4, dtype=DT, generator=gen, requires_grad=slopes and rec.collecting_slopes)
            out = model(x)
            if x.requires_grad:
                rec.record_input_gradients("model", x, out)
            opt.zero_grad()
            out.pow(2).mean().backward()
            opt.step()
            rec.step(step, phase)


def layer_rows(rec: Recorder) -> pd.DataFrame:
    return rec.run().layers.sort_values(SORT).reset_index(drop=True)


@pytest.mark.parametrize("begin", [False, True])
@pytest.mark.parametrize("text", ["1@3,2@8,log5", "1@2,log2@30,4"])
def test_recorded_steps_are_the_scheduled_steps_with_complete_hook_stats(text, begin):
    model = make_model()
    with Recorder(model, every=text, alerts=[]) as rec:
        train(rec, model, range(40), begin=begin)
        rows = layer_rows(rec)
    assert sorted(set(rows["step"])) == RecordEvery.parse(text).steps(40)
    # The hooks were armed for every recorded (step, phase): each holds the same statistics.
    cheap = rows[rows["stat"] != "sigma_op"]
    assert cheap.groupby(["step", "phase"]).size().nunique() == 1
    assert set(cheap.groupby("step")["phase"].nunique()) == {2}
    conv_op = rows[(rows["layer"] == "0") & (rows["stat"] == "sigma_op")]
    schedule = rec.schedule
    assert sorted(set(conv_op["step"])) == [s for s in schedule.record.steps(40) if schedule.operator_due(s)]


def test_an_int_schedule_gives_the_rows_of_every_n():
    frames = []
    for every in (3, "3", RecordEvery(3), "3@9,3@30,3"):
        model = make_model()
        with Recorder(model, every=every, alerts=[]) as rec:
            train(rec, model, range(34))
            frames.append(layer_rows(rec))
            if every != "3@9,3@30,3":
                assert (rec.every, rec.slopes_every, rec.operator_every, rec.settings()["every"]) == (3, 3, 30, 3)
    assert sorted(set(frames[0]["step"])) == list(range(0, 34, 3))
    conv_op = frames[0][(frames[0]["layer"] == "0") & (frames[0]["stat"] == "sigma_op")]
    assert sorted(set(conv_op["step"])) == [0, 30]
    for frame in frames[1:]:
        pd.testing.assert_frame_equal(frames[0], frame, check_exact=True)


def test_slopes_and_exact_steps_on_a_schedule():
    model = make_model()
    with Recorder(model, every="1@4,5", exact_every=7, alerts=[]) as rec:
        train(rec, model, range(16), slopes=True)
        run = rec.run()
    assert sorted(set(run.scalars["step"])) == [0, 1, 2, 3, 5, 10, 15]  # slopes on every recorded step
    layers = run.layers
    assert sorted(set(layers["step"])) == [0, 1, 2, 3, 5, 7, 10, 14, 15]  # exact steps are recorded too
    # off the cheap schedule an exact step holds the exact spectral rows only (as with every=N)
    assert set(layers[layers["step"] == 7]["stat"]) == {"sigma_raw_fwd", "sigma_raw_bwd", "sigma_fwd", "sigma_op"}
    assert set(layers[layers["step"] == 14]["stat"]) == set(layers[layers["step"] == 7]["stat"])
    assert {"grad_out_norm", "sigma_raw_fwd"} <= set(layers[layers["step"] == 0]["stat"])  # on both schedules


def test_state_dict_round_trip_continues_the_schedule_exactly():
    text, split, stop = "1@3,2@8,log5", 5, 30
    model = make_model()
    with Recorder(model, every=text, alerts=[]) as rec:
        train(rec, model, range(stop))
        whole = layer_rows(rec)
    model = make_model()
    first = Recorder(model, every=text, alerts=[]).attach()
    train(first, model, range(split + 1))
    state = copy.deepcopy(first.state_dict())
    state["schedule"] = json.loads(json.dumps(state["schedule"]))  # the schedule's part is plain data
    before = layer_rows(first)
    first.close()
    twin = copy.deepcopy(model)
    with Recorder(twin, every=text, alerts=[], start_step=split + 1) as second:
        second.load_state_dict(state)
        train(second, twin, range(split + 1, stop))
        after = layer_rows(second)
    joined = pd.concat([before, after]).sort_values(SORT).reset_index(drop=True)
    pd.testing.assert_frame_equal(whole, joined, check_exact=True)
    assert sorted(set(joined["step"])) == RecordEvery.parse(text).steps(stop)


# --- RunConfig, the command line and resume --------------------------------------------------------

def test_run_config_keeps_ints_as_ints_and_stores_the_canonical_text(tmp_path):
    assert RunConfig(record_every="4").record_every == 4 == RunConfig(record_every=4).record_every
    cfg = RunConfig(record_every=" 1@1000, log20", slopes_every=3)  # no multiple rule for a schedule
    assert cfg.record_every == "1@1000,log20"
    assert RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="slopes-every 3 must be a multiple of --record-every 2"):
        RunConfig(record_every=2, slopes_every=3)
    with pytest.raises(ValueError, match="record_every must be an integer >= 1, got 0"):
        RunConfig(record_every=0)
    toml = tmp_path / "run.toml"
    toml.write_text('record-every = "1@100,10@1000,log20"\n')
    assert resolve_config({}, toml).record_every == "1@100,10@1000,log20"
    toml.write_text("record-every = 5\n")
    assert resolve_config({}, toml).record_every == 5


def test_a_sweep_axis_of_schedules():
    from gradscope.sweep.spec import parse_spec

    spec = parse_spec({"base": {"iterations": 10}, "grid": {"record-every": [5, "1@100,log20"]}})
    assert [p.run_id for p in spec.points] == ["record-every=5", "record-every=1-100,log20"]


def test_bad_schedule_on_the_command_line_exits_2_with_one_line(capsys, tmp_path):
    assert cli.main(["run", "--record-every", "1@100", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gradscope run: error: bad record_every '1@100': ")
    assert "valid forms" in err[0]
    assert not (tmp_path / "r").exists()


def test_gradscope_run_stopped_and_resumed_records_the_scheduled_steps(tmp_path, monkeypatch):
    text = "1@3,2@6,log5"
    flags = ["--dataset", "digits", "--batch-size", "4", "--iterations", "10", "--record-every", text,
             "--checkpoint-every", "4", "--eval-every", "0", "--sample-every", "0", "--exact-every", "0",
             "--flush-every", "2", "--quiet"]
    assert cli.main(["run", *flags, "--out", str(tmp_path / "whole")]) == 0
    calls = []

    def stop_on_fifth_check(self):
        calls.append(1)
        return signal.SIGTERM if len(calls) >= 5 else None

    with monkeypatch.context() as patch:
        patch.setattr(train_api.StopRequest, "__call__", stop_on_fifth_check)
        assert cli.main(["run", *flags, "--out", str(tmp_path / "split")]) == 128 + signal.SIGTERM
    assert json.loads((tmp_path / "split" / "status.json").read_text())["step"] == 5
    assert cli.main(["run", "--resume", str(tmp_path / "split"), "--quiet"]) == 0
    whole, split = load_run(tmp_path / "whole"), load_run(tmp_path / "split")
    expected = RecordEvery.parse(text).steps(11, start=1)
    assert expected == [1, 2, 4, 7, 10]
    for run in (whole, split):
        assert sorted(set(run.layers["step"])) == expected
        assert run.config["record_every"] == text and run.config["recorder"]["every"] == text
    pd.testing.assert_frame_equal(whole.layers, split.layers, check_exact=True)
    pd.testing.assert_frame_equal(whole.scalars, split.scalars, check_exact=True)
