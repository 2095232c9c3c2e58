"""Figures: the shared style, derived run quantities, the standard run plots, the HTML report."""
from __future__ import annotations

import html.parser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from gradscope import cli
from gradscope.plot import style
from gradscope.plot.quantities import lecun_prediction, run_label, variance_ratios
from gradscope.plot.report import build_report
from gradscope.plot.runs import FIGURES, plot_runs
from gradscope.record import Recorder, RunWriter

PNG_MAGIC, PDF_MAGIC = b"\x89PNG\r\n\x1a\n", b"%PDF"


def _record_run(path: Path, norm: str, lr: float, steps: int = 6, seed: int = 0) -> Path:
    """A small run directory written by the real Recorder, with a config naming its normalization."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.LeakyReLU(0.1), nn.Conv2d(4, 4, 4, 2, 1),
                          nn.LeakyReLU(0.1), nn.Flatten(), nn.Linear(4 * 16, 1))
    if norm != "none":
        from gradscope.norms import normalize
        normalize(model, norm)
    writer = RunWriter(path)
    writer.write_config({"norm": norm, "scale": 1.0, "init": None, "lr_d": lr})
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    with Recorder({"D": model}, every=1, exact_every=3, out=writer, flush_every=3, alerts=[]) as rec:
        for step in range(steps):
            rec.begin(step, "d")
            x = torch.randn(8, 1, 8, 8, requires_grad=True)
            out = model(x).squeeze(1)
            rec.record_input_gradients("D", x, output=out, kind="real")
            loss = torch.relu(1 - out).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            rec.step(step, "d")
            rec.log_scalars(step, {"loss_d": loss.detach(), "d_real": out.mean().detach()})
    writer.set_status("done", step=steps - 1)
    writer.append_alerts([{"step": 2, "phase": "d", "net": "D", "layer": "0", "rule": "planted", "kind": "test",
                           "stat": "grad_out_norm", "value": 0.0, "threshold": 1.0,
                           "message": "a <planted> alert & more"}])
    writer.flush()
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return [_record_run(root / "plain", "none", 1e-3), _record_run(root / "sn", "sn", 1e-2, seed=1)]


def _assert_figure_files(paths):
    assert [p.suffix for p in paths] == [".png", ".pdf"]
    for p in paths:
        data = p.read_bytes()
        assert 1000 < len(data) < style.MAX_FIGURE_BYTES
        assert data.startswith(PNG_MAGIC if p.suffix == ".png" else PDF_MAGIC)


def test_save_figure_writes_png_and_pdf_within_the_size_limit(tmp_path):
    fig, axes = style.new_figure(1, 2, title="t")
    axes[0, 0].plot(np.arange(10), np.arange(10) ** 2, label="a")
    style.label_axes(axes[0, 0], "x", "y", logy=True)
    _assert_figure_files(style.save_figure(fig, tmp_path / "sub" / "f"))
    fig, axes = style.new_figure()
    axes[0, 0].plot(np.random.default_rng(0).normal(size=3000))
    with pytest.raises(ValueError, match="over the 2000-byte limit"):
        style.save_figure(fig, tmp_path / "big", max_bytes=2000)
    with pytest.raises(ValueError, match="unknown figure format 'svg'"):
        style.save_figure(style.new_figure()[0], tmp_path / "x", formats=["svg"])


def test_palette_is_distinct_and_log_decision_follows_decades():
    assert len(set(style.PALETTE)) == len(style.PALETTE)
    assert style.series_style(0) != style.series_style(len(style.PALETTE))  # cycles change the line style
    assert style.wants_log([1e-4, 1.0]) and not style.wants_log([1.0, 5.0]) and not style.wants_log([0.0, -1.0])


def test_lecun_prediction_is_the_bai_yin_value():
    assert lecun_prediction((64, 64), 64) == pytest.approx(0.25)
    m, n = 512, 4608
    assert lecun_prediction((512, 512, 3, 3), n) == pytest.approx(1 / (1 + np.sqrt(m / n)) ** 2)
    assert lecun_prediction((1, 100), 100) == pytest.approx(1 / 1.1 ** 2)


def test_run_label_names_normalization_scale_and_init():
    assert run_label({"norm": "sn", "scale": 1.0}) == "sn"
    assert run_label({"norm": "bssn", "scale": 1.41, "init": "xavier"}) == "bssn c=1.41 init=xavier"


def test_variance_ratios_match_hand_computation():
    rows = []
    values = {  # layer index -> act_in_var, act_out_var, grad_in_var, grad_out_var
        0: (1.0, 4.0, 8.0, 2.0), 1: (2.0, 3.0, 0.5, 0.25), 2: (6.0, 12.0, 0.1, 0.05)}
    for index, stats in values.items():
        for stat, value in zip(("act_in_var", "act_out_var", "grad_in_var", "grad_out_var"), stats):
            rows.append({"step": 0, "layer_index": index, "layer": f"l{index}", "stat": stat, "value": value})
    ratios = variance_ratios(pd.DataFrame(rows)).set_index(["direction", "layer_index"])["ratio"]
    assert ratios["forward", 0] == pytest.approx(2.0 / 1.0)   # Var(a_1) / Var(a_0)
    assert ratios["forward", 1] == pytest.approx(6.0 / 2.0)
    assert ratios["forward", 2] == pytest.approx(12.0 / 6.0)  # last layer: its own output over input
    assert ratios["backward", 0] == pytest.approx(8.0 / 0.5)  # Var(dD/da_0) / Var(dD/da_1)
    assert ratios["backward", 1] == pytest.approx(0.5 / 0.1)
    assert ratios["backward", 2] == pytest.approx(0.1 / 0.05)
    rows[2]["value"] = 0.0  # an unobserved input gradient gives no ratio, not 0 or inf
    assert np.isnan(variance_ratios(pd.DataFrame(rows)).set_index(["direction", "layer_index"])
                    .loc[("backward", 0), "ratio"])


def test_plot_runs_draws_every_standard_figure(runs, tmp_path):
    written = plot_runs(runs, tmp_path)
    assert set(written) == set(FIGURES)
    assert written.pop("quality") == []  # these runs evaluated no sample quality (tests/test_report.py does)
    for name, paths in written.items():
        _assert_figure_files(paths)


def test_plot_runs_rejects_bad_input(runs, tmp_path):
    with pytest.raises(ValueError, match="no statistics recorded for net 'G'; recorded nets: D"):
        plot_runs(runs[:1], tmp_path, net="G", figures=["grad_norms"])
    with pytest.raises(ValueError, match="unknown figure 'pie'"):
        plot_runs(runs, tmp_path, figures=["pie"])
    with pytest.raises(ValueError, match="not a gradscope run directory"):
        plot_runs([tmp_path], tmp_path)


def test_plot_command(runs, tmp_path, capsys):
    out = tmp_path / "plots"
    assert cli.main(["plot", *map(str, runs), "-o", str(out), "--figures", "sigma,losses"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["losses.pdf", "losses.png", "sigma.pdf", "sigma.png"]
    assert cli.main(["plot", str(runs[0]), "--figures", "pie"]) == 2
    assert "unknown figure 'pie'" in capsys.readouterr().err
    assert cli.main(["plot", str(out / "missing")]) == 2


class _Collector(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.external, self.images, self.text = [], [], 0, []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for key, value in attrs:
            if key in ("src", "href") and value and not value.startswith(("data:", "#")):
                self.external.append((tag, key, value))
        if tag == "img":
            self.images += 1
        if tag in ("script", "link", "iframe"):
            self.external.append((tag, "tag", ""))

    def handle_data(self, data):
        self.text.append(data)


def _analysis_dir(tmp_path):
    from analyses.common import AnalysisResult, check_at_most

    result = AnalysisResult("C9", "planted analysis", "tiny", out=tmp_path / "c9")
    fig, axes = style.new_figure()
    axes[0, 0].plot([0, 1], [1, 0])
    result.add_figure(fig, "c9_fig")
    result.add(check_at_most("C9", "planted quantity", 2.0, 1.0))
    result.save()
    return tmp_path / "c9"


def test_report_is_self_contained_html(runs, tmp_path):
    analysis = _analysis_dir(tmp_path)
    text = build_report(runs, [analysis], title="Test <report>", figures=["lecun_ratio", "losses"])
    parser = _Collector()
    parser.feed(text)
    parser.close()
    assert parser.external == []
    assert parser.images == 3  # two run figures and the analysis figure
    body = "".join(parser.text)
    assert "Test <report>" in body and "a <planted> alert & more" in body  # escaped, then parsed back
    assert "planted quantity" in body and "violated" in body and "do not all hold" in body
    assert "lr_d" in body and "done" in body
    with pytest.raises(ValueError, match="at least one run"):
        build_report([], [])


def test_report_command_writes_the_file(runs, tmp_path, capsys):
    out = tmp_path / "r" / "report.html"
    out.parent.mkdir()  # the command refuses a missing -o folder (a typo there must not create one)
    analysis = _analysis_dir(tmp_path)
    argv = [str(runs[0]), str(analysis.parent), "-o", str(out), "--figures", "losses"]
    assert cli.main(["report", *argv]) == 0
    text = out.read_text()
    assert text.startswith("<!DOCTYPE html>") and "planted quantity" in text and "Theory checks" in text
    assert cli.main(["report", str(tmp_path / "nothing"), "-o", str(out)]) == 2
    assert "no run or analysis directory" in capsys.readouterr().err
