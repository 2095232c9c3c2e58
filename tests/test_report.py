"""The HTML report a GAN researcher reads: metric table and curves, sample grids, smoothed losses, grouped
alerts, sweeps, and the page as headless Chromium renders it. Runs are written synthetically with RunWriter
(no training), so every expected number is known."""
from __future__ import annotations

import html.parser
import json
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

from gradscope import cli
from gradscope.plot import style
from gradscope.plot.metric_info import (
    better_hint,
    floor_for,
    metric_info,
    quality_metrics,
)
from gradscope.plot.quality import draw_quality
from gradscope.plot.report import build_report, write_report
from gradscope.plot.report_runs import alert_groups, pick_samples
from gradscope.plot.scalar_figures import (
    RAW_ALPHA,
    draw_losses,
    smooth,
    smoothing_window,
)
from gradscope.plot.selection import load_runs
from gradscope.record import RunWriter, load_run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
FID = {0: 300.0, 10: 200.0, 20: 150.0}  # run "sn": its last (final) FID is 150
FID_B = {0: 320.0, 10: 180.0, 20: 170.0}  # run "bssn": better in the middle, worse at the end
IS = {0: 1.5, 10: 3.0, 20: 4.25}
LOSS_STEPS = 100


def _sample_png(path, step: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(step)
    tiles = (rng.random((4, 4)) * 255).astype(np.uint8)
    Image.fromarray(np.kron(tiles, np.ones((24, 24), dtype=np.uint8))).save(path)


def _write_run(path, norm: str, fid: dict, *, sample_steps=(0, 10, 20, 30, 40), eval_samples: int = 2000,
               alerts=(), seed: int = 0):
    """A GAN-like run directory: config, status, losses every step, metrics at a few steps, sample grids."""
    writer = RunWriter(path)
    writer.write_config({"norm": norm, "scale": 1.0, "init": None, "dataset": "mnist",
                         "eval_samples": eval_samples, "iterations": LOSS_STEPS})
    rng = np.random.default_rng(seed)
    steps = np.arange(1, LOSS_STEPS + 1)
    rows = [pd.DataFrame({"step": steps, "name": name, "value": base + 0.3 * rng.standard_normal(LOSS_STEPS)})
            for name, base in (("loss_d", 1.0), ("loss_g", 2.0))]
    metric_rows = [(s, "mnist_fid", v) for s, v in fid.items()]
    metric_rows += [(s, "mnist_is_mean", v) for s, v in IS.items()] + [(s, "mnist_is_std", 0.1) for s in IS]
    rows.append(pd.DataFrame(metric_rows, columns=["step", "name", "value"]))
    writer.append_scalars(pd.concat(rows, ignore_index=True))
    writer.append_alerts(list(alerts))
    writer.set_status("done", step=LOSS_STEPS)
    writer.flush()
    (path / "samples").mkdir()
    for step in sample_steps:
        _sample_png(path / "samples" / f"step_{step:08d}.png", step)
    return path


def _alert(step, layers, rule="vanishing", stat="grad_out_norm", net="D"):
    return {"step": step, "phase": "d", "net": net, "layer": ",".join(layers), "layers": list(layers),
            "rule": rule, "kind": "below_median", "stat": stat, "value": 1e-6, "threshold": 1e-3,
            "message": f"{rule} at step {step} in {', '.join(layers)}"}


ALERTS = [_alert(5, ["conv1", "conv2"]), _alert(40, ["conv2"]), _alert(80, ["conv2", "conv3"]),
          _alert(60, ["linear"], rule="exploding", stat="grad_w_raw_norm")]


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("report_runs")
    return [_write_run(root / "sn", "sn", FID, alerts=ALERTS),
            _write_run(root / "bssn", "bssn", FID_B, sample_steps=(0, 20), eval_samples=2000, seed=1)]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sweep") / "demo"
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps({"runs": {}}))
    pd.DataFrame([{"run": "sn-s0", "method": "sn", "scale": 1.0, "status": "done", "fid_metric": "mnist_fid",
                   "final_fid": 150.0, "best_fid": 150.0, "collapsed": False, "collapse_reason": ""},
                  {"run": "none-s0", "method": "none", "scale": 1.0, "status": "diverged", "fid_metric": "mnist_fid",
                   "final_fid": 900.0, "best_fid": 400.0, "collapsed": True, "collapse_reason": "diverged"}]
                 ).to_csv(folder / "summary.csv", index=False)
    fig, axes = style.new_figure(title="Collapsed runs per method")
    axes[0, 0].bar(["none", "sn"], [1.0, 0.0])
    style.label_axes(axes[0, 0], "method", "collapsed fraction")
    style.save_figure(fig, folder / "collapse_fraction", formats=["png"])
    return folder


class _Cells(html.parser.HTMLParser):
    """Every tag's attributes, and the text of each ``<td>`` by its attributes."""

    def __init__(self):
        super().__init__()
        self.tags, self.cells, self._open, self.external = [], [], None, []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        for key in ("src", "href"):
            if attrs.get(key) and not attrs[key].startswith(("data:", "#")):
                self.external.append((tag, attrs[key]))
        if tag in ("script", "link", "iframe"):
            self.external.append((tag, ""))
        if tag == "td":
            self._open = {"attrs": attrs, "text": ""}

    def handle_endtag(self, tag):
        if tag == "td" and self._open is not None:
            self.cells.append(self._open)
            self._open = None

    def handle_data(self, data):
        if self._open is not None:
            self._open["text"] += data


def _parse(text: str) -> _Cells:
    parser = _Cells()
    parser.feed(text)
    parser.close()
    return parser


def _cell(parser, run, metric):
    (cell,) = [c for c in parser.cells if c["attrs"].get("data-run") == run and c["attrs"].get("data-metric") == metric]
    return cell


def test_metric_info_says_scale_direction_and_floor():
    from gradscope.train.api import (
        _metric_hint,  # what `gradscope run` prints: never disagree
    )

    names = ["mnist_fid", "digits_fid", "inception_fid", "mnist_is_mean", "mnist_kid_mean", "modes_covered",
             "high_quality_fraction", "kl_uniform", "loss_d", "mnist_is_std"]
    assert [better_hint(n) for n in names] == [_metric_hint(n) for n in names]
    assert quality_metrics(["loss_d", "mnist_kid_mean", "mnist_is_std", "mnist_is_mean", "mnist_fid"]) == [
        "mnist_fid", "mnist_is_mean", "mnist_kid_mean"]
    assert floor_for("mnist_fid", 2000).value == pytest.approx(0.71)
    assert floor_for("mnist_is_mean", 2000).value == pytest.approx(9.2)
    assert floor_for("mnist_fid", 1000) is None and floor_for("inception_fid", 2000) is None
    assert floor_for("mnist_kid_mean", 1234).value == 0.0  # unbiased: about 0 at any count
    fid = metric_info("mnist_fid")
    assert "lower is better" in fid.axis_label() and "feature units" in fid.axis_label()
    assert "0.71" in fid.explanation(2000) and "not with Inception numbers" in fid.explanation(2000)
    assert "not drawn" in fid.explanation(1000) and "2,000" in fid.explanation(1000)
    assert "1 to 10" in metric_info("mnist_is_mean").scale and "1 to 1000" in metric_info("inception_is_mean").scale


def test_metric_table_holds_the_last_value_of_each_metric(two_runs):
    parser = _parse(build_report(two_runs, figures=["quality"]))
    sn, bssn = _cell(parser, "sn", "mnist_fid"), _cell(parser, "bssn", "mnist_fid")
    assert float(sn["attrs"]["data-value"]) == FID[20] and sn["attrs"]["data-step"] == "20"
    assert float(bssn["attrs"]["data-value"]) == FID_B[20] and sn["text"].strip() == "150"
    assert "best" in sn["attrs"]["class"] and "best" not in bssn["attrs"]["class"]  # lower FID wins
    is_cell = _cell(parser, "sn", "mnist_is_mean")
    assert is_cell["text"].replace("\u00b1", "+-").split() == ["4.25", "+-", "0.1"]
    floors = {c["attrs"]["data-floor"]: c["text"] for c in parser.cells if "data-floor" in c["attrs"]}
    assert floors == {"mnist_fid": "0.71", "mnist_is_mean": "9.2"}  # both runs scored 2,000 samples


def test_a_nan_final_metric_is_shown_as_nan_and_ties_are_not_bold(tmp_path):
    runs = []
    for name, kl in (("a", [0.5, float("nan")]), ("b", [0.7, 0.4])):
        writer = RunWriter(tmp_path / name)
        writer.write_config({"norm": name, "dataset": "ring8", "eval_samples": 1000})
        writer.append_scalars(pd.DataFrame({"step": [0, 50, 0, 50], "name": ["kl_uniform"] * 2 + ["modes_covered"] * 2,
                                            "value": [*kl, 1.0, 8.0]}))
        writer.set_status("done", step=50)
        writer.flush()
        runs.append(tmp_path / name)
    parser = _parse(build_report(runs, figures=["quality"]))
    stale = _cell(parser, "a", "kl_uniform")  # never the older finite 0.5
    assert stale["text"] == "NaN" and stale["attrs"]["data-step"] == "50"
    assert "best" in _cell(parser, "b", "kl_uniform")["attrs"]["class"]  # the only finite value
    assert not any("best" in _cell(parser, r, "modes_covered")["attrs"]["class"] for r in ("a", "b"))  # 8 and 8


def test_report_explains_each_metric_where_it_appears(two_runs, tmp_path):
    text = build_report(two_runs, figures=["quality"])
    assert "Lower is better" in text and "Higher is better" in text and "1 to 10 (the number of classes)" in text
    assert "real data score 0.71 (0.50-0.94 over 5 draws) on 2,000 samples" in text
    assert "compare runs with each other, not with Inception numbers" in text
    other = _write_run(tmp_path / "small", "sn", FID, eval_samples=1000)  # no floor measured on 1,000 samples
    parser = _parse(build_report([other], figures=["quality"]))
    assert not [c for c in parser.cells if "data-floor" in c["attrs"]]


def test_three_sample_grids_first_middle_last(two_runs, tmp_path):
    parser = _parse(build_report(two_runs, figures=["losses"]))
    samples = [(a["data-run"], int(a["data-step"])) for tag, a in parser.tags if tag == "img"
               and a.get("class") == "sample"]
    assert samples == [("sn", 0), ("sn", 20), ("sn", 40), ("bssn", 0), ("bssn", 20)]
    assert pick_samples([(s, None) for s in range(4)]) == [("first", 0, None), ("middle", 1, None),
                                                            ("last", 3, None)]
    bare = _write_run(tmp_path / "bare", "sn", FID, sample_steps=())
    assert "no sample pictures" in build_report([bare], figures=["losses"])


def test_metric_figure_has_a_legend_entry_per_run_and_the_floor(two_runs):
    fig = draw_quality(load_runs(two_runs), "step (generator updates)")
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["sn", "bssn", "real-vs-real floor (2,000 samples)"]
    fid_ax, is_ax = fig.axes[:2]
    floors = [line.get_ydata()[0] for ax in (fid_ax, is_ax) for line in ax.lines if line.get_label().startswith("real")]
    assert floors == pytest.approx([0.71, 9.2])
    assert fid_ax.get_title() == "mnist-FID" and "lower is better" in fid_ax.get_ylabel()
    assert is_ax.get_title() == "mnist-IS" and "higher is better" in is_ax.get_ylabel()
    assert fid_ax.get_xlabel() == "step (generator updates)"
    drawn = {line.get_label(): list(line.get_ydata()) for line in fid_ax.lines}
    assert drawn["sn"] == list(FID.values()) and drawn["bssn"] == list(FID_B.values())
    style.close_all([fig])


def test_losses_are_smoothed_with_the_raw_trace_faint(two_runs):
    loaded = load_runs(two_runs)
    fig = draw_losses(loaded, gan=True)
    ax = fig.axes[0]
    raw = [line for line in ax.lines if line.get_alpha() == RAW_ALPHA]
    bold = [line for line in ax.lines if not line.get_label().startswith("_")]
    assert len(raw) == 2 and [line.get_label() for line in bold] == ["sn", "bssn"]
    trace = loaded[0].run.scalars.query("name == 'loss_d'").set_index("step")["value"]
    assert list(raw[0].get_ydata()) == pytest.approx(trace.to_numpy())
    window = smoothing_window(LOSS_STEPS)
    assert window == 5 and list(bold[0].get_ydata()) == pytest.approx(smooth(trace, window).to_numpy())
    assert np.std(bold[0].get_ydata()) < 0.7 * np.std(trace.to_numpy())  # the running mean is smoother
    assert "running mean over 5 logged values" in fig.get_suptitle()
    assert {t.get_text() for t in fig.legends[0].get_texts()} == {"sn", "bssn"}
    style.close_all([fig])


def test_alerts_are_grouped_by_event_kind(two_runs):
    groups = alert_groups(load_run(two_runs[0]).alerts)
    assert [(g["rule"], g["events"], g["steps"]) for g in groups] == [("vanishing", 3, "5 to 80"),
                                                                     ("exploding", 1, "60")]
    assert groups[0]["layers (events)"] == "conv2 (3), conv1 (1), conv3 (1)"
    text = build_report(two_runs[:1], figures=["losses"])
    assert "4 alert events of 2 kinds" in text and "vanishing at step 5 in conv1, conv2" in text


def test_sweep_folder_shows_summary_table_and_figures(sweep, tmp_path):
    parser = _parse(build_report([sweep]))
    texts = [c["text"] for c in parser.cells]
    assert "sn-s0" in texts and "none-s0" in texts and "diverged" in texts
    figures = [a.get("data-figure") for tag, a in parser.tags if tag == "img"]
    assert figures == ["collapse_fraction"]
    empty = tmp_path / "pending"
    empty.mkdir()
    (empty / "manifest.json").write_text("{}")
    assert "gradscope sweep summarize" in build_report(sweeps=[empty])


def test_plot_writes_into_the_run_folder_by_default(two_runs, capsys):
    assert cli.main(["plot", str(two_runs[0]), "--figures", "quality,losses"]) == 0
    assert sorted(p.name for p in (two_runs[0] / "plots").iterdir()) == [
        "losses.pdf", "losses.png", "quality.pdf", "quality.png"]
    assert cli.main(["plot", *map(str, two_runs), "--figures", "quality"]) == 2
    assert "-o DIR" in capsys.readouterr().err


_PROBE = """<script>
window.addEventListener('load', () => {
  const images = [...document.images].map(i => { const r = i.getBoundingClientRect();
    return {cls: i.className, figure: i.dataset.figure || '', run: i.dataset.run || '', w: i.naturalWidth,
            h: i.naturalHeight, x: r.left + scrollX, y: r.top + scrollY, rw: r.width, rh: r.height}; });
  const pre = document.createElement('pre'); pre.id = 'probe';
  pre.textContent = JSON.stringify({height: document.documentElement.scrollHeight, images: images});
  document.body.appendChild(pre);
});
</script>"""


def _chromium(*args, timeout=120):
    proc = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--force-device-scale-factor=1", *args], capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


@pytest.mark.skipif(CHROMIUM is None, reason="no headless Chromium installed")
def test_report_renders_in_headless_chromium_with_every_figure(two_runs, sweep, tmp_path):
    from PIL import Image

    report = write_report(tmp_path / "report.html", [*two_runs, sweep], figures=["quality", "losses"])
    assert _parse(report.read_text()).external == []  # self-contained: the probe below is added to a copy
    probe = tmp_path / "probe.html"
    probe.write_text(report.read_text().replace("</body>", _PROBE + "</body>"))
    dom = _chromium("--window-size=1200,900", "--dump-dom", probe.as_uri())
    start = dom.index('<pre id="probe">') + len('<pre id="probe">')
    found = json.loads(html.unescape(dom[start:dom.index("</pre>", start)]))
    images = found["images"]
    assert all(i["w"] > 0 and i["h"] > 0 and i["rw"] > 100 for i in images), images  # every image decoded
    assert [i["figure"] for i in images if i["cls"] == "figure"] == ["quality", "losses", "collapse_fraction"]
    assert [i["run"] for i in images if i["cls"] == "sample"] == ["sn", "sn", "sn", "bssn", "bssn"]
    shot = tmp_path / "shot.png"
    _chromium(f"--window-size=1200,{int(found['height'])}", f"--screenshot={shot}", report.as_uri())
    assert shot.read_bytes().startswith(PNG_MAGIC)
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    for i in images:  # each figure region of the screenshot holds a drawing, not a blank page
        top, left = int(i["y"]), int(i["x"])
        region = pixels[top + 2:top + int(i["rh"]) - 2, left + 2:left + int(i["rw"]) - 2]
        assert region.size and region.std() > 10 and (region < 200).mean() > 0.01, i
    blank = pixels[int(images[0]["y"]) - 40:int(images[0]["y"]) - 25, 900:1100]
    assert blank.std() < 1  # and the checks above would fail on a blank area of the page
