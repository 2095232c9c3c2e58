"""Sweeps: spec validation, the local and Ray executors, resume after SIGKILL, retries, the summary."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from gradscope.cli import main
from gradscope.record import load_run
from gradscope.sweep import Manifest, PRESETS, parse_spec, run_sweep, summarize

TINY = {"dataset": "ring8", "batch-size": 16, "eval-every": 0, "sample-every": 0, "record-every": 5}


def _spec(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "spec.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("data, fragment", [
    ({"grid": {"norm": ["bogus"]}}, "unknown norm 'bogus'"),
    ({"grid": {"nrm": ["sn"]}}, "unknown flag 'nrm'"),
    ({"grid": {"norm": []}}, "grid key 'norm' must be a non-empty list"),
    ({"base": {"out": "x"}}, "key 'out' is set by the sweep"),
    ({"bases": {}}, "unknown key 'bases'"),
    ({"grid": {"scale": [1.0, -2.0]}}, "scale must be a finite number > 0"),
    ({"preset": "Z"}, "unknown sweep preset 'Z'"),
])
def test_bad_spec_fails_before_anything_starts_naming_the_key(data, fragment, tmp_path):
    with pytest.raises(ValueError, match=fragment):
        parse_spec(data)
    assert not any(tmp_path.iterdir())


def test_grid_is_the_cartesian_product_and_presets_are_the_authors_grids():
    spec = parse_spec({"base": {"iterations": 10}, "grid": {"norm": ["sn", "bssn"], "scale": [0.8, 1.2],
                                                            "seed": [0, 1, 2]}})
    assert len(spec.points) == 12
    assert len({p.run_id for p in spec.points}) == 12
    point = spec.points[0]
    assert point.argv(Path("o"))[:3] == ["run", "--iterations", "10"]
    # Setting A on CIFAR-10: {ssn, bssn} x 19 scales (0.7 .. 4.0) x 5 seeds.
    a = parse_spec({"preset": "A-cifar10"})
    assert len(a.points) == 2 * 19 * 5
    assert sorted({p.params["scale"] for p in a.points})[-1] == 4.0
    assert len(parse_spec({"preset": "B-stl10"}).points) == 2 * 4 * 5
    assert set(PRESETS) >= {"A-cifar10", "B-celeba", "C-stl10"}


def test_sweep_cli_bad_spec_exits_2_with_one_line(tmp_path):
    spec = _spec(tmp_path, '[grid]\nnorm = ["sn", "nope"]\n')
    proc = subprocess.run([sys.executable, "-m", "gradscope", "sweep", str(spec), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "unknown norm 'nope'" in proc.stderr
    assert not (tmp_path / "o").exists()


def test_local_sweep_runs_every_point_skips_done_runs_and_summarizes(tmp_path):
    spec = parse_spec({"base": {**TINY, "iterations": 6, "eval-every": 3}, "grid": {"norm": ["sn", "bssn"]}})
    out = tmp_path / "sweep"
    manifest = run_sweep(spec, out, max_parallel=2, echo=lambda *_: None)
    assert manifest.counts()["done"] == 2
    for point in spec.points:
        run = load_run(out / "runs" / point.run_id)
        assert run.status["state"] == "done"
        assert run.config["norm"] == point.params["norm"]
    again = run_sweep(spec, out, echo=lambda *_: None)
    assert [e.attempts for e in again.runs.values()] == [1, 1]  # nothing re-ran

    table, figures = summarize(out)
    assert set(table["method"]) == {"sn", "bssn"}
    # six iterations cover few of ring8's 8 modes: the collapse flag says what the metric says
    assert (table["modes_total"] == 8).all()
    assert table["collapsed"].tolist() == (table["final_modes"] < 4).tolist()
    assert all(reason == (f"covers {m:g} of 8 modes (< 4)" if flag else "")
               for reason, m, flag in zip(table["collapse_reason"], table["final_modes"], table["collapsed"]))
    assert pd.read_csv(out / "summary.csv").shape[0] == 2
    assert {p.name for p in figures} >= {"collapse_fraction.png", "final_quality_box.pdf"}
    assert all(p.stat().st_size > 1000 for p in figures)
    assert (table["unlike_sweep"] == "").all()


def test_summary_flags_runs_made_with_other_settings_than_the_rest(tmp_path, caplog):
    """What spoiled a C8 sweep: half its runs started before a default changed (image size, EMA) in the code."""
    spec = parse_spec({"base": {**TINY, "iterations": 2}, "grid": {"seed": [0, 1, 2]}})
    out = tmp_path / "sweep"
    run_sweep(spec, out, max_parallel=2, echo=lambda *_: None)
    odd = out / "runs" / spec.points[1].run_id
    config = json.loads((odd / "config.json").read_text())
    config["ema"] = 0.5
    (odd / "config.json").write_text(json.dumps(config))
    provenance = json.loads((odd / "provenance.json").read_text())
    provenance["git_commit"] = "0123abc"
    (odd / "provenance.json").write_text(json.dumps(provenance))
    with caplog.at_level("WARNING", logger="gradscope.sweep"):
        table = summarize(out)[0].set_index("run")["unlike_sweep"]
    assert table[spec.points[1].run_id].startswith("code 0123abc vs ") and "; ema 0.5 vs 0.0" in table.iloc[1]
    assert table[spec.points[0].run_id] == table[spec.points[2].run_id] == ""  # seeds differ: that is the grid
    assert len(caplog.records) == 1 and "1 of 3 runs differ from the rest beyond the grid" in caplog.text


def test_a_different_spec_in_the_same_directory_is_refused(tmp_path):
    out = tmp_path / "sweep"
    Manifest("other", "0000", {}).save(out)
    spec = parse_spec({"base": {**TINY, "iterations": 2}, "grid": {"seed": [0]}})
    with pytest.raises(ValueError, match="holds a different sweep"):
        run_sweep(spec, out)


def test_a_sweep_grows_by_new_axis_values_but_not_by_a_changed_base_or_order(tmp_path):
    from gradscope.sweep.runner import open_manifest

    arms = [{"norm": "none", "init": "lecun"}, {"norm": "sn"}]
    small = parse_spec({"base": {**TINY, "iterations": 2}, "grid": {"arm": arms, "seed": [0, 1]}})
    grown = parse_spec({"base": {**TINY, "iterations": 2}, "grid": {"arm": arms, "seed": [0, 1, 2, 3]}})
    assert small.fingerprint() != grown.fingerprint()
    out = tmp_path / "sweep"
    manifest = open_manifest(small, out)
    manifest.runs["norm=sn_seed=1"].status = "done"
    manifest.save(out)
    manifest = open_manifest(grown, out)
    assert manifest.fingerprint == grown.fingerprint()
    assert manifest.runs["norm=sn_seed=1"].status == "done"  # what ran keeps its record
    assert sorted(manifest.runs) == sorted(p.run_id for p in grown.points)
    for other in ({"base": {**TINY, "iterations": 3}, "grid": {"arm": arms, "seed": [0, 1, 2]}},
                  {"base": {**TINY, "iterations": 2}, "grid": {"arm": arms[::-1], "seed": [0, 1, 2]}},
                  {"base": {**TINY, "iterations": 2}, "grid": {"arm": arms[:1], "seed": [0, 1, 2]}}):
        with pytest.raises(ValueError, match="a sweep may only grow"):
            open_manifest(parse_spec(other), out)


def test_failed_runs_are_retried_up_to_the_limit_and_reported(tmp_path):
    empty = tmp_path / "no-data"
    empty.mkdir()
    spec = parse_spec({"max_retries": 1, "base": {"dataset": "cifar10", "data-dir": str(empty), "iterations": 2},
                       "grid": {"seed": [0]}})
    manifest = run_sweep(spec, tmp_path / "sweep", echo=lambda *_: None)
    (entry,) = manifest.runs.values()
    assert entry.status == "failed" and entry.attempts == 2
    assert "cifar" in entry.error.lower() and entry.exit_code == 2


def test_sigkilled_sweep_resumes_from_checkpoints_and_never_claims_unfinished_runs(tmp_path):
    spec_path = _spec(tmp_path, "[base]\n" + "".join(f'{k} = {json.dumps(v)}\n' for k, v in TINY.items())
                      + "iterations = 80\ncheckpoint-every = 5\n[grid]\nnorm = [\"sn\"]\n")
    out = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "gradscope", "sweep", str(spec_path), "--out", str(out)]
    driver = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpts = out / "runs" / "norm=sn" / "checkpoints"
    deadline = time.monotonic() + 240
    while not (ckpts.is_dir() and any(ckpts.glob("*.pt"))):
        assert time.monotonic() < deadline, "no checkpoint appeared"
        assert driver.poll() is None, "the sweep ended before it could be killed"
        time.sleep(0.2)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    # The orphaned run is told to stop by PR_SET_PDEATHSIG; wait until it has written its status.
    status_file = out / "runs" / "norm=sn" / "status.json"
    deadline = time.monotonic() + 120
    while json.loads(status_file.read_text()).get("state") == "running" and time.monotonic() < deadline:
        time.sleep(0.2)
    entry = Manifest.load(out).runs["norm=sn"]
    assert entry.status == "running"  # not "done": the manifest never claims an unfinished run
    assert json.loads(status_file.read_text())["state"] != "done"

    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    entry = Manifest.load(out).runs["norm=sn"]
    assert entry.status == "done" and entry.attempts == 2
    scalars = load_run(out / "runs" / "norm=sn").scalars
    losses = scalars[scalars["name"] == scalars["name"].iloc[0]]
    assert losses["step"].is_unique  # the resumed part did not duplicate steps


def test_ray_executor_runs_a_tiny_grid_on_a_local_instance(tmp_path):
    ray = pytest.importorskip("ray", reason="Ray is an optional extra (pip install 'ray>=2.9')")
    os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")
    spec = parse_spec({"base": {**TINY, "iterations": 4}, "grid": {"seed": [0, 1]}})
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        manifest = run_sweep(spec, tmp_path / "sweep", executor="ray", echo=lambda *_: None)
    finally:
        ray.shutdown()
    assert manifest.counts()["done"] == 2


def test_dry_run_prints_the_grid_and_an_estimate(tmp_path, capsys):
    spec = _spec(tmp_path, '[base]\niterations = 10\n[grid]\nnorm = ["sn", "bsn"]\nseed = [0, 1]\n')
    assert main(["sweep", str(spec), "--out", str(tmp_path / "o"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "norm=bsn_seed=1" in out and "4 runs, 40 training iterations" in out
    assert not (tmp_path / "o" / "runs").exists()


def test_dry_run_counts_the_default_iterations_of_runs_that_set_none(tmp_path, capsys):
    from gradscope.train import RunConfig

    spec = _spec(tmp_path, '[grid]\nseed = [0, 1, 2]\n')
    assert main(["sweep", str(spec), "--out", str(tmp_path / "o"), "--dry-run"]) == 0
    assert f"3 runs, {3 * RunConfig().iterations:,} training iterations" in capsys.readouterr().out


def test_a_setting_added_after_a_run_was_made_counts_as_its_current_default():
    from gradscope.sweep.summarize import fixed_settings, unlike_majority
    from gradscope.train import RunConfig

    new = RunConfig(dataset="ring8").to_dict()
    old = {k: v for k, v in new.items() if k not in ("power_schedule", "d_layout")}  # written before they existed
    odd = {**new, "power_schedule": "authors"}
    settings = {name: fixed_settings(config, {"gradscope": "0.1.0"}, {"seed"})
                for name, config in (("old", old), ("new", new), ("new2", new), ("odd", odd))}
    assert unlike_majority(settings) == {"old": "", "new": "", "new2": "", "odd": "power-schedule authors vs torch"}


@pytest.mark.parametrize("row, flag, reason", [
    ({"status": "done", "final_modes": 0.0, "best_modes": 0.0, "modes_total": 8}, True, "covers 0 of 8 modes (< 4)"),
    ({"status": "done", "final_modes": 3.0, "best_modes": 7.0, "modes_total": 8}, True, "covers 3 of 8 modes (< 4)"),
    ({"status": "done", "final_modes": 4.0, "best_modes": 4.0, "modes_total": 8}, False, ""),
    ({"status": "done", "final_modes": 12.0, "best_modes": 20.0, "modes_total": 25}, True,
     "covers 12 of 25 modes (< 12.5)"),
    ({"status": "done", "final_modes": 2.0, "best_modes": 6.0, "modes_total": None}, True,
     "covers 2 of 6 modes (< 3)"),  # an unknown mixture: against the run's own best
    ({"status": "done", "final_fid": 40.0, "best_fid": 30.0}, False, ""),
    ({"status": "done", "final_fid": 46.0, "best_fid": 30.0}, True, "final FID 46 > 1.5 x its best 30"),
    ({"status": "done", "final_fid": float("nan"), "best_fid": 30.0}, True, "final FID nan > 1.5 x its best 30"),
    ({"status": "diverged"}, True, "diverged"),
    ({"status": "done"}, False, ""),
])
def test_collapse_rule_reads_the_metrics_it_names(row, flag, reason):
    from gradscope.sweep.summarize import collapse_reason, collapsed, mode_count

    assert collapsed(row) is flag and collapse_reason(row) == reason
    assert mode_count("ring8") == 8 and mode_count("grid25") == 25 and mode_count("cifar10") is None
    assert pd.isna(collapsed({"status": "failed"})) and pd.isna(collapsed({"status": "pending"}))


def _captured_figures(monkeypatch, table: pd.DataFrame, tmp_path: Path) -> dict:
    """Draw the stability figures of ``table``; return ``{name: figure}``, kept open to inspect."""
    from gradscope.sweep import figures

    drawn = {}
    save = figures.style.save_figure

    def keep(fig, stem, **kwargs):
        drawn[Path(stem).name] = fig
        return save(fig, stem, close=False)

    monkeypatch.setattr(figures.style, "save_figure", keep)
    paths = figures.stability_figures(table, tmp_path)
    assert {p.name for p in paths} >= {f"{name}.png" for name in drawn}
    return drawn


def _inside(fig) -> bool:
    """Whether every title, label and text of ``fig`` lies inside the figure and none overlaps another."""
    fig.canvas.draw()
    renderer, box = fig.canvas.get_renderer(), fig.bbox
    texts = [fig._suptitle] + [t for ax in fig.axes for t in (ax.title, ax.xaxis.label, ax.yaxis.label, *ax.texts)]
    boxes = [t.get_window_extent(renderer) for t in texts if t is not None and t.get_text()]
    inside = all(b.x0 >= 0 and b.y0 >= 0 and b.x1 <= box.x1 and b.y1 <= box.y1 for b in boxes)
    apart = not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    return bool(boxes) and inside and apart


def test_stability_figures_count_from_zero_fit_their_titles_and_say_when_nothing_collapsed(monkeypatch, tmp_path):
    import matplotlib.pyplot as plt

    ring = pd.DataFrame([{"run": f"{m}{s}", "status": "done", "method": m, "scale": c, "modes_metric": "modes_covered",
                          "final_modes": 0.0, "best_modes": 0.0, "modes_total": 8, "collapsed": True}
                         for m in ("sn", "bssn") for s, c in ((0, 1.0), (1, 1.4))])
    drawn = _captured_figures(monkeypatch, ring, tmp_path / "ring")
    assert set(drawn) == {"collapse_fraction", "final_quality_box", "quality_vs_scale"}
    for name in ("final_quality_box", "quality_vs_scale"):
        low, high = drawn[name].axes[0].get_ylim()
        assert low == 0 and high >= 8, name  # modes covered: 0 .. the data's 8 modes
    texts = [t.get_text() for t in drawn["collapse_fraction"].axes[0].texts]
    assert texts == ["2 of 2", "2 of 2"]
    assert all(_inside(fig) for fig in drawn.values())
    plt.close("all")

    fid = pd.DataFrame([{"run": f"{m}{s}", "status": "done", "method": m, "scale": 1.0, "fid_metric": "digits_fid",
                         "final_fid": 40.0 + s, "best_fid": 39.0, "collapsed": False}
                        for m in ("sn", "bssn", "ssn") for s in range(3)])
    drawn = _captured_figures(monkeypatch, fid, tmp_path / "fid")
    assert set(drawn) == {"collapse_fraction", "final_quality_box"}
    texts = [t.get_text() for t in drawn["collapse_fraction"].axes[0].texts]
    assert "No collapses:\nnone of the 9 finished runs collapsed" in texts and texts.count("0 of 3") == 3
    assert drawn["final_quality_box"].axes[0].get_ylim()[0] >= 0
    assert all(_inside(fig) for fig in drawn.values())
    plt.close("all")


def test_a_sweep_of_one_method_over_settings_is_drawn_per_setting(monkeypatch, tmp_path):
    import matplotlib.pyplot as plt

    from gradscope.sweep.summarize import setting_label

    settings = [{"lr-d": 1e-4, "lr-g": 1e-4}, {"betas": "0.0,0.9"}]
    table = pd.DataFrame([{"run": f"{i}-{s}", "status": "done", "method": "sn", "scale": 1.0,
                           "setting": setting_label({**params, "seed": s}), "fid_metric": "mnist_fid",
                           "final_fid": 100.0 * (i + 1) + s, "best_fid": 100.0 * (i + 1) + s,
                           "collapsed": i == 0 and s == 0}
                          for i, params in enumerate(settings) for s in range(3)])
    drawn = _captured_figures(monkeypatch, table, tmp_path)
    box = drawn["final_quality_box"].axes[0]
    ticks = [t.get_text() for t in box.get_xticklabels()]
    assert ticks == ["lr-d 0.0001, lr-g 0.0001\n(n=3)", "betas 0.0,0.9\n(n=3)"]
    assert box.get_xlabel() == "grid setting (sn)"
    assert "per grid setting" in drawn["final_quality_box"]._suptitle.get_text()
    points = [sorted(c.get_offsets()[:, 1]) for c in box.collections]  # each setting's own runs
    assert points == [[100.0, 101.0, 102.0], [200.0, 201.0, 202.0]]
    assert [t.get_text() for t in drawn["collapse_fraction"].axes[0].texts] == ["1 of 3", "0 of 3"]
    assert all(_inside(fig) for fig in drawn.values())
    plt.close("all")
    # several methods: per method over the whole grid, as before
    drawn = _captured_figures(monkeypatch, table.assign(method=["sn", "bssn"] * 3), tmp_path / "methods")
    assert drawn["final_quality_box"].axes[0].get_xlabel() == "normalization"
    plt.close("all")
