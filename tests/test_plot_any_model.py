"""Figures of any recorded model: layer paths as titles, the right loss on gradient axes, every promised
line drawn, readable log ticks, and the gradient-flow figure up to 100 layers."""
from __future__ import annotations

import re

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.lines import Line2D
from torch import nn

import gradscope
from gradscope import cli
from gradscope.plot import style
from gradscope.plot.flow import MAX_FLOW_STEPS, MAX_FLOW_WIDTH, flow_table, plot_gradient_flow
from gradscope.plot.labels import ELLIPSIS, loss_symbol, short_layer_names
from gradscope.plot.runs import run_figures
from gradscope.plot.ticks import NOT_RECORDED, ZERO_LABEL, format_tick_values, log_scale, readable_log_ticks
from gradscope.record import Recorder

# what a person can read at a glance: 0.05, 12, 10^-4, 2x10^-7 (never 10^-4.2 or 1.18x10^-1 runs)
READABLE = re.compile(r"^(-?\d+(\.\d{1,3})?|\$\\mathdefault\{(\d(\.\d)?\\times)?10\^\{-?\d+\}\}\$)$")


def _train(model, steps, make_batch, loss_fn, **recorder):
    torch.manual_seed(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with Recorder(model, every=1, alerts=[], **recorder) as rec:
        for step in range(steps):
            x, y = make_batch()
            loss = loss_fn(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            rec.step(step)
            rec.log_scalars(step, {"loss": loss.detach()})
        return rec.run()


@pytest.fixture(scope="module")
def seq_run():
    """A user's classifier: an nn.Sequential of convs and a linear head, exact sigmas every 2 steps."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 4, 2, 1), nn.ReLU(),
                          nn.Flatten(), nn.Linear(64, 10))
    return _train(model, 6, lambda: (torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))),
                  nn.functional.cross_entropy, exact_every=2)


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.Module()
        self.attn.out_proj = nn.Linear(8, 8)
        self.mlp = nn.Linear(8, 8)

    def forward(self, x):
        return torch.tanh(self.mlp(torch.tanh(self.attn.out_proj(x))))


class _Encoder(nn.Module):
    def __init__(self, depth=3):
        super().__init__()
        self.encoder = nn.Module()
        self.encoder.layers = nn.ModuleList(_Block() for _ in range(depth))
        self.head = nn.Linear(8, 1)

    def forward(self, x):
        for block in self.encoder.layers:
            x = block(x)
        return self.head(x)


@pytest.fixture(scope="module")
def named_run():
    """Deeply nested layer paths (encoder.layers.2.attn.out_proj), several sharing their last parts."""
    torch.manual_seed(0)
    return _train(_Encoder(), 3, lambda: (torch.randn(16, 8), torch.randn(16, 1)), nn.functional.mse_loss)


@pytest.fixture(scope="module")
def mlp_run():
    """A 100-layer MLP (tanh between the layers), 4 recorded steps."""
    torch.manual_seed(0)
    layers = []
    for _ in range(100):
        layers += [nn.Linear(16, 16), nn.Tanh()]
    model = nn.Sequential(*layers[:-1])
    return _train(model, 4, lambda: (torch.randn(16, 16), None), lambda out, _: out.pow(2).mean(),
                  stats=["grad_out_norm", "grad_w_raw_norm", "act_out_var"])


@pytest.fixture(scope="module")
def gan_run(tmp_path_factory):
    """A tiny GAN run of gradscope's own trainer (nets D and G, phases d and g, hinge loss)."""
    out = tmp_path_factory.mktemp("gan") / "run"
    argv = ["run", "--dataset", "digits", "--image-size", "8", "--batch-size", "4", "--iterations", "4",
            "--eval-every", "0", "--quiet", "--exact-every", "2", "--out", str(out)]
    assert cli.main(argv) == 0
    return gradscope.load_run(out)


def _order(run, stat="grad_out_norm"):
    """The net's layer paths from input to output, as rows of ``stat`` name them (parameter rows excluded)."""
    rows = run.layers[run.layers["stat"] == stat][["layer_index", "layer"]].drop_duplicates()
    return rows.sort_values(["layer_index", "layer"])["layer"].tolist()


def _panels(fig):
    """The data panels of a figure (not hidden grid cells, not the name table)."""
    return [ax for ax in fig.axes if ax.get_visible() and ax.axison]


def _ylabels(fig):
    return [ax.get_ylabel() for ax in _panels(fig) if ax.get_ylabel()]


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_panel_titles_are_the_layers_named_modules_paths(seq_run):
    fig = run_figures([seq_run], figures=["grad_norms"])["grad_norms"]
    assert [ax.get_title() for ax in _panels(fig)] == _order(seq_run) == ["0", "2", "5"]
    assert "net model, phase train" in fig.get_suptitle()


def test_long_paths_are_shortened_but_never_ambiguous(named_run):
    paths = _order(named_run)
    assert "encoder.layers.2.attn.out_proj" in paths
    titles = [ax.get_title() for ax in _panels(run_figures([named_run], figures=["grad_norms"])["grad_norms"])]
    assert len(titles) == len(paths) == len(set(titles))
    for path, title in zip(paths, titles):
        if len(path) <= 26:
            assert title == path
        else:  # first component ... a tail of the path that no other layer ends in
            head, tail = title.split(f" {ELLIPSIS} ")
            assert path.startswith(head + ".") and path.endswith("." + tail) and len(title) < len(path)
            assert [p for p in paths if p.startswith(head + ".") and p.endswith("." + tail)] == [path]
    names = short_layer_names([f"a.layers.{i}.attn.out_proj" for i in (1, 11)] + ["b.attn.out_proj"], max_chars=12)
    assert sorted(names.values()) == ["a … 1.attn.out_proj", "a … 11.attn.out_proj", "b … out_proj"]


def test_backward_axes_name_the_loss_of_any_model(seq_run):
    figs = run_figures([seq_run], figures=["grad_norms", "variance_ratios", "gradient_flow"],
                       loss_name="cross-entropy")
    grad = _ylabels(figs["grad_norms"])[0]
    assert grad.startswith("||dL/d output||") and "cross-entropy" in grad
    backward = figs["variance_ratios"].axes[1]
    assert "dL/da" in backward.get_ylabel() and "cross-entropy" in backward.get_title()
    flow = [label for label in _ylabels(figs["gradient_flow"]) if "output||" in label]
    assert flow and "dL/d output" in flow[0] and "cross-entropy" in flow[0]
    every = " ".join(label for fig in figs.values() for label in _ylabels(fig))
    assert "dD" not in every and "partial D" not in every
    plain = run_figures([seq_run], figures=["grad_norms"])["grad_norms"]
    assert _ylabels(plain)[0] == "||dL/d output||"  # no loss name given: no second line
    with pytest.raises(ValueError, match="loss_name must be a non-blank string"):
        run_figures([seq_run], figures=["grad_norms"], loss_name=" ")


def test_gan_runs_keep_the_loss_of_each_net_and_phase(gan_run):
    d = run_figures([gan_run], figures=["grad_norms", "variance_ratios"])
    assert "dL_D/d output" in _ylabels(d["grad_norms"])[0] and "hinge loss of D" in _ylabels(d["grad_norms"])[0]
    assert "dL_D/da" in d["variance_ratios"].axes[1].get_ylabel()
    g = run_figures([gan_run], net="G", figures=["grad_norms"])["grad_norms"]
    assert "net G, phase g" in g.get_suptitle()
    assert "dL_G/d output" in _ylabels(g)[0] and "hinge loss of G" in _ylabels(g)[0]
    through_d = run_figures([gan_run], net="D", phase="g", figures=["grad_norms"])["grad_norms"]
    assert "dL_G/d output" in _ylabels(through_d)[0]  # G's loss back-propagated through the frozen D
    assert loss_symbol({"D", "G"}, {"d", "g"}, "d", {"loss": "ns"}).meaning == "ns loss of D"
    with pytest.raises(ValueError, match="recorded phases: d, g"):
        run_figures([gan_run], phase="train", figures=["grad_norms"])


def _assert_legend_lines_are_drawn(fig):
    legend_labels = [t.get_text() for legend in fig.legends for t in legend.get_texts()]
    drawn = {line.get_label() for ax in fig.axes for line in ax.lines}
    assert legend_labels and set(legend_labels) <= drawn
    return legend_labels


def _line(ax, label):
    lines = [line for line in ax.lines if line.get_label() == label]
    assert len(lines) == 1, (ax.get_title(), label)
    return lines[0]


def test_sigma_panels_draw_every_line_they_promise(seq_run, gan_run):
    fig = run_figures([seq_run], figures=["sigma"])["sigma"]
    labels = _assert_legend_lines_are_drawn(fig)
    assert "operator norm of W_eff" in labels and "dotted" not in fig.get_suptitle()
    layers = seq_run.layers
    for ax in _panels(fig):
        rows = layers[(layers["layer"] == ax.get_title()) & (layers["stat"] == "sigma_op")]
        line = _line(ax, "operator norm of W_eff")
        assert isinstance(line, Line2D) and line.get_linestyle() == ":"
        np.testing.assert_array_equal(line.get_xdata(), rows["step"].to_numpy())
        np.testing.assert_allclose(line.get_ydata(), rows["value"].to_numpy())
        raw = layers[(layers["layer"] == ax.get_title()) & (layers["stat"] == "sigma_raw_fwd")]
        np.testing.assert_allclose(_line(ax, "sigma of the raw weight (layer not normalized)").get_ydata(),
                                   raw["value"].to_numpy())
    # without the operator norm recorded, it is neither drawn nor promised
    no_op = seq_run.replace(layers=layers[layers["stat"] != "sigma_op"])
    fig = run_figures([no_op], figures=["sigma"])["sigma"]
    assert "operator norm of W_eff" not in _assert_legend_lines_are_drawn(fig)
    # a normalized net: its divisor sigma (solid) and W_eff's operator norm (dotted) in every panel
    fig = run_figures([gan_run], figures=["sigma"])["sigma"]
    assert set(_assert_legend_lines_are_drawn(fig)) == {"sigma the layer is divided by", "operator norm of W_eff"}
    d = gan_run.layers[(gan_run.layers["net"] == "D") & (gan_run.layers["phase"] == "d")]
    for ax in _panels(fig):
        rows = d[(d["layer"] == ax.get_title()) & (d["stat"] == "sigma")]
        np.testing.assert_allclose(_line(ax, "sigma the layer is divided by").get_ydata(), rows["value"].to_numpy())


def test_log_tick_rules_give_decades_or_round_numbers():
    assert readable_log_ticks(3e-5, 2.0) == ([1e-4, 1e-3, 1e-2, 0.1, 1.0], "decade")
    ticks, kind = readable_log_ticks(1e-22, 1e-2)  # 21 decades: every 4th, aligned on multiples
    assert kind == "decade" and len(ticks) <= 6 and all(round(np.log10(t)) % 4 == 0 for t in ticks)
    assert readable_log_ticks(0.15, 0.9) == ([0.2, 0.5], "125")
    assert readable_log_ticks(0.0415, 0.0462) == ([0.042, 0.044, 0.046], "plain")
    assert format_tick_values([0.11, 0.1125]) == ["0.11", "0.1125"]  # never rounded away from the tick
    # any view log_scale leaves (it widens views narrower than a factor 2, see the figure test below)
    for lo, hi in [(3e-5, 2.0), (1e-22, 1e-2), (0.15, 0.9), (0.0415, 0.0462), (7.2e-4, 1.44e-3), (1.0, 1.5e6),
                   (7.3e-21, 1.46e-20), (2.2e-13, 4.4e-13)]:
        labels = format_tick_values(readable_log_ticks(lo, hi)[0])
        assert len(labels) >= 2 and all(READABLE.match(label) for label in labels), (lo, hi, labels)


def _visible_log_labels(ax):
    low, high = sorted(ax.get_ylim())
    return [t.get_text() for t, v in zip(ax.get_yticklabels(), ax.get_yticks()) if low <= v <= high]


def test_log_axes_carry_readable_ticks_and_empty_panels_say_not_recorded(seq_run, mlp_run):
    layers = seq_run.layers
    zero = (layers["layer"] == "2") & (layers["stat"] == "grad_out_norm")
    zeroed = seq_run.replace(layers=layers.assign(value=np.where(zero, 0.0, layers["value"])))
    figures = [run_figures([zeroed], figures=["grad_norms"])["grad_norms"],
               plot_gradient_flow(mlp_run, steps=["first", "last"]),
               plot_gradient_flow(seq_run, stats=["act_out_var", "hessian_top"])]
    log_axes = 0
    for fig in figures:
        fig.canvas.draw()
        for ax in _panels(fig):
            if ax.get_yscale() != "log":
                continue
            log_axes += 1
            labels = _visible_log_labels(ax)
            assert 2 <= len(labels) <= 6 and all(READABLE.match(text) for text in labels), (ax.get_title(), labels)
            assert not [t for t in ax.get_yminorticklabels() if t.get_text()]  # minor ticks stay unlabelled
    assert log_axes >= 5
    empty = {ax.get_title(): ax for ax in _panels(figures[0])}["2"]
    assert empty.get_yscale() == "linear" and not empty.lines
    assert any(t.get_text().startswith(NOT_RECORDED) for t in empty.texts)
    unrecorded = _panels(figures[2])[1]  # hessian_top: a statistic gradscope knows, not recorded here
    assert not unrecorded.lines and any(t.get_text().startswith(NOT_RECORDED) for t in unrecorded.texts)


def test_exact_zeros_on_a_log_axis_are_marked_on_its_edge_not_left_as_gaps(seq_run):
    layers = seq_run.layers
    series = (layers["layer"] == "2") & (layers["stat"] == "grad_out_norm")
    vanished = sorted(layers.loc[series, "step"].unique())[-3:]  # the gradient vanishes at the last 3 steps
    zeroed = seq_run.replace(layers=layers.assign(
        value=np.where(series & layers["step"].isin(vanished), 0.0, layers["value"])))
    fig = run_figures([zeroed], figures=["grad_norms"])["grad_norms"]
    panel = {ax.get_title(): ax for ax in _panels(fig)}["2"]
    assert panel.get_yscale() == "log"
    source = next(line for line in panel.lines if line.get_gid() is None)
    marks = [line for line in panel.lines if line.get_gid() == "gradscope-zero"]
    assert len(marks) == 1 and sorted(marks[0].get_xdata()) == vanished
    assert list(marks[0].get_ydata()) == [0.0] * 3 and marks[0].get_color() == source.get_color()
    # y in axes coordinates: the bottom edge whatever the limits; the data limits are left alone
    assert marks[0].get_transform() == panel.get_xaxis_transform() and panel.get_ylim()[0] > 0
    assert ZERO_LABEL in [text.get_text() for text in fig.legends[0].get_texts()]
    untouched = {ax.get_title(): ax for ax in _panels(fig)}["0"]
    assert not [line for line in untouched.lines if line.get_gid() == "gradscope-zero"]
    log_scale(panel, "y")  # again: the zeros are not marked twice
    assert len([line for line in panel.lines if line.get_gid() == "gradscope-zero"]) == 1
    plt.close(fig)


def test_gradient_flow_of_a_100_layer_mlp(mlp_run, tmp_path):
    fig = plot_gradient_flow(mlp_run, steps=[0, 2, "last"], loss_name="mean square")
    panels = _panels(fig)
    assert len(panels) == 3 and fig.get_size_inches()[0] <= MAX_FLOW_WIDTH
    for ax, stat in zip(panels, ["grad_out_norm", "grad_w_raw_norm", "act_out_var"]):
        table = flow_table(mlp_run.layers, stat)
        assert list(table.columns) == _order(mlp_run, stat)  # input to output
        lines = [line for line in ax.lines if line.get_gid() != "gradscope-zero"]
        assert [line.get_label() for line in lines] == ["0", "2", "3"]
        marked = sorted(x for line in ax.lines if line.get_gid() == "gradscope-zero" for x in line.get_xdata())
        zeros = sorted(x for line in lines for x, y in zip(line.get_xdata(), line.get_ydata()) if y == 0)
        assert marked == (zeros if ax.get_yscale() == "log" else [])  # every 0 on a log axis, marked once
        for line in lines:
            np.testing.assert_array_equal(line.get_xdata(), np.arange(100))
            np.testing.assert_allclose(line.get_ydata(), table.loc[int(line.get_label())].to_numpy())
        fig.canvas.draw()
        low, high = ax.get_xlim()
        ticks = [t.get_text() for t, v in zip(ax.get_xticklabels(), ax.get_xticks()) if low <= v <= high]
        assert 5 <= len(ticks) <= 25 and all(t.isdigit() for t in ticks)  # index ticks, thinned
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["0", "2", "3", ZERO_LABEL]  # gradients vanish
    table_text = "\n".join(t.get_text() for ax in fig.axes if not ax.axison for t in ax.texts)
    rows = [line.split() for line in table_text.splitlines()]
    assert sorted((int(i), name) for i, name in rows) == list(enumerate(_order(mlp_run)))
    assert "mean square" in panels[0].get_ylabel()
    default = plot_gradient_flow(mlp_run, stats=["grad_out_norm"])
    drawn = [line for line in _panels(default)[0].lines if line.get_gid() != "gradscope-zero"]
    assert len(drawn) == 4  # the default 5 steps, of the 4 recorded
    paths = style.save_figure(fig, tmp_path / "flow", formats=["png"])
    assert paths[0].stat().st_size < style.MAX_FIGURE_BYTES


def test_gradient_flow_names_every_tick_of_a_small_model(named_run):
    fig = plot_gradient_flow(named_run, stats=["grad_out_norm"], steps=[1])
    ax = _panels(fig)[0]
    fig.canvas.draw()
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    names = short_layer_names(_order(named_run))
    assert ticks == [names[p] for p in _order(named_run)]
    assert len(fig.axes) == 1  # no name table needed


def test_gradient_flow_rejects_bad_choices(seq_run):
    with pytest.raises(ValueError, match=r"unknown statistic 'nope' .*valid choices: .*grad_out_norm"):
        plot_gradient_flow(seq_run, stats=["nope"])
    with pytest.raises(ValueError, match=r"step 99 was not recorded .*recorded steps: 0, 1, 2, 3, 4, 5"):
        plot_gradient_flow(seq_run, steps=[99])
    with pytest.raises(ValueError, match="steps must be integers or 'first' / 'last'"):
        plot_gradient_flow(seq_run, steps=[1.5])
    with pytest.raises(ValueError, match=f"n_steps must be an integer from 1 to {MAX_FLOW_STEPS}"):
        plot_gradient_flow(seq_run, n_steps=0)
    with pytest.raises(ValueError, match="no statistics recorded for net 'D'; recorded nets: model"):
        plot_gradient_flow(seq_run, net="D")
    with pytest.raises(ValueError, match="max_width must be"):
        plot_gradient_flow(seq_run, max_width=1)


def test_unknown_per_parameter_statistics_are_handled(seq_run):
    extra = []
    for step in range(6):
        for index, layer in enumerate(_order(seq_run)):
            for param in ("weight", "bias"):
                extra.append({"step": step, "phase": "train", "net": "model", "layer": f"{layer}.{param}",
                              "layer_index": index, "stat": "param_custom_norm", "value": 1.0 + step + index})
    run = seq_run.replace(layers=pd.concat([seq_run.layers, pd.DataFrame(extra)], ignore_index=True))
    figs = run_figures([run])
    assert figs["grad_norms"] is not None and [ax.get_title() for ax in _panels(figs["grad_norms"])] == ["0", "2", "5"]
    ax = _panels(plot_gradient_flow(run, stats=["param_custom_norm"], steps=["last"]))[0]
    assert ax.get_ylabel() == "param_custom_norm"
    np.testing.assert_allclose(ax.lines[0].get_ydata(), [6, 6, 7, 7, 8, 8])  # bias, weight of each layer in order


def test_plot_command_on_a_recorded_model(tmp_path, capsys):
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    with Recorder(model, every=1, out=tmp_path / "run", alerts=[]) as rec:
        for step in range(3):
            model(torch.randn(16, 4)).pow(2).mean().backward()
            rec.step(step)
    out = tmp_path / "plots"
    argv = ["plot", str(tmp_path / "run"), "-o", str(out), "--figures", "gradient_flow,grad_norms",
            "--loss-name", "MSE", "--steps", "first,last", "--flow-stats", "grad_out_norm,act_out_var"]
    assert cli.main(argv) == 0
    assert sorted(p.name for p in out.glob("*.png")) == ["grad_norms.png", "gradient_flow.png"]
    for bad, message in [(["--steps", "1,x"], "--steps takes non-negative integers or first / last"),
                         (["--flow-stats", "nope"], "unknown statistic 'nope'"),
                         (["--net", "D"], "recorded nets: model"),
                         (["--n-steps", "50"], "n_steps must be an integer from 1 to 12")]:
        assert cli.main(["plot", str(tmp_path / "run"), "-o", str(out), "--figures", "gradient_flow", *bad]) == 2
        assert message in capsys.readouterr().err


def test_plot_gradient_flow_is_public():
    assert gradscope.plot_gradient_flow is plot_gradient_flow
