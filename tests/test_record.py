"""Recorder: recorded statistics against independent oracles (float64 autograd, dense SVD, direct formulas)."""
from __future__ import annotations

import copy
import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.nn.utils import parametrize

from gradscope.linalg import conv_operator_norm, reshape_norms
from gradscope.models import MLPDiscriminator
from gradscope.norms import normalize
from gradscope.norms.base import SpectralParametrization, effective_weight
from gradscope.record import STATS, AlertRule, Recorder
from gradscope.record.probes import hessian_norms

DT = torch.float64


class ExactSN(SpectralParametrization):
    """Test normalization: divides by the exact forward-reshape sigma (dense SVD), or with ``sides`` by
    the mean of the forward and backward ones (like BSN, keeping both estimates); optional gamma."""

    norm = "test-exact"

    def __init__(self, scale: float = 1.0, gamma: nn.Parameter | None = None, sides: bool = False) -> None:
        super().__init__(scale, gamma)
        self.sides = sides
        if sides:
            self.register_buffer("sigma_fwd", torch.ones(()))
            self.register_buffer("sigma_bwd", torch.ones(()))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        fwd = torch.linalg.matrix_norm(weight.flatten(1), ord=2)
        sigma = fwd
        if self.sides:
            bwd = torch.linalg.matrix_norm(weight.transpose(0, 1).flatten(1), ord=2)
            sigma = (fwd + bwd) / 2
            with torch.no_grad():
                self.sigma_fwd.copy_(fwd)
                self.sigma_bwd.copy_(bwd)
        with torch.no_grad():
            self.sigma.copy_(sigma)
        out = weight * (self.scale / sigma)
        return out * self.gamma if self.gamma is not None else out

    def sigma_estimates(self) -> dict[str, torch.Tensor]:
        if not self.sides:
            return super().sigma_estimates()
        return {"sigma": self.sigma.detach(), "sigma_fwd": self.sigma_fwd.detach(), "sigma_bwd": self.sigma_bwd.detach()}


class Disc(nn.Module):
    """conv 3x3 (plain) -> conv 4x4/2 (BSN-like ExactSN, c 1.5) -> linear (ExactSN with gamma), leaky ReLU 0.1."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 6, 4, stride=2, padding=1)
        self.fc = nn.Linear(6 * 4 * 4, 1)
        parametrize.register_parametrization(self.conv2, "weight", ExactSN(scale=1.5, sides=True))
        parametrize.register_parametrization(self.fc, "weight", ExactSN(gamma=nn.Parameter(torch.tensor(1.3))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu(self.conv1(x), 0.1)
        h = F.leaky_relu(self.conv2(h), 0.1)
        return self.fc(h.flatten(1)).squeeze(1)


def hinge(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    return F.relu(1 - real).mean() + F.relu(1 + fake).mean()


def make_disc(seed: int = 0) -> Disc:
    torch.manual_seed(seed)
    return Disc().to(DT)


def recorded(rec: Recorder, **where) -> dict[tuple[str, str], float]:
    table = rec.run().layers
    for key, value in where.items():
        table = table[table[key] == value]
    return {(r.layer, r.stat): r.value for r in table.itertuples()}


def moments(t: torch.Tensor) -> tuple[float, float]:
    t = t.detach()
    return float(t.mean()), float(t.var(unbiased=False))


@pytest.mark.parametrize("warm", [False, True])
def test_gradients_activations_and_weights_match_float64_autograd(warm: bool) -> None:
    disc = make_disc()
    oracle = copy.deepcopy(disc)
    xr, xf = torch.randn(5, 2, 8, 8, dtype=DT), torch.randn(3, 2, 8, 8, dtype=DT)
    rec = Recorder({"D": disc}, every=1, alerts=[], operator_every=1).attach()
    opt = torch.optim.SGD(disc.parameters(), lr=0.05)
    if warm:  # a recorded step first that leaves the weights as they are: the second step's rows must be as exact
        hinge(disc(xr.clone().requires_grad_(True)), disc(xf.clone().requires_grad_(True))).backward()
        disc.zero_grad(set_to_none=True)
        rec.step(0, "d")
    # Two forward calls in one step, as a GAN discriminator update does.
    xr1, xf1 = xr.clone().requires_grad_(True), xf.clone().requires_grad_(True)
    hinge(disc(xr1), disc(xf1)).backward()
    opt.step()
    rec.step(int(warm), "d")
    got = recorded(rec, net="D", phase="d", step=int(warm))

    # Oracle: one manual pass over the concatenated batch, every intermediate retained.
    x = torch.cat([xr, xf]).requires_grad_(True)
    w1, w2, w3 = oracle.conv1.weight, oracle.conv2.weight, oracle.fc.weight
    w2.retain_grad(), w3.retain_grad()
    z1 = F.conv2d(x, w1, oracle.conv1.bias, padding=1)
    a1 = F.leaky_relu(z1, 0.1)
    z2 = F.conv2d(a1, w2, oracle.conv2.bias, stride=2, padding=1)
    flat = F.leaky_relu(z2, 0.1).flatten(1)
    z3 = F.linear(flat, w3, oracle.fc.bias)
    for t in (z1, a1, z2, flat, z3):
        t.retain_grad()
    hinge(z3[:5, 0], z3[5:, 0]).backward()

    expect = {}
    for name, inp, out in (("conv1", x, z1), ("conv2", a1, z2), ("fc", flat, z3)):
        expect[(name, "act_in_mean")], expect[(name, "act_in_var")] = moments(inp)
        expect[(name, "act_out_mean")], expect[(name, "act_out_var")] = moments(out)
        expect[(name, "grad_out_norm")] = float(out.grad.norm())
        expect[(name, "grad_out_var")] = float(out.grad.var(unbiased=False))
        expect[(name, "grad_in_norm")] = float(inp.grad.norm())
        expect[(name, "grad_in_var")] = float(inp.grad.var(unbiased=False))
    raw = {"conv1": oracle.conv1.weight, "conv2": oracle.conv2.parametrizations.weight.original,
           "fc": oracle.fc.parametrizations.weight.original}
    for name in raw:
        expect[(name, "grad_w_raw_norm")] = float(raw[name].grad.norm())
    expect[("conv1", "grad_w_eff_norm")] = float(w1.grad.norm())
    expect[("conv2", "grad_w_eff_norm")] = float(w2.grad.norm())
    expect[("fc", "grad_w_eff_norm")] = float(w3.grad.norm())
    # Weight statistics are read at step(), i.e. after the optimizer update.
    for name, module, fan_in in (("conv1", disc.conv1, 18), ("conv2", disc.conv2, 64), ("fc", disc.fc, 96)):
        w_raw = module.parametrizations.weight.original if name != "conv1" else module.weight
        expect[(name, "lecun_ratio_raw")] = fan_in * float(w_raw.detach().var(unbiased=False))
        expect[(name, "lecun_ratio")] = fan_in * float(effective_weight(module).var(unbiased=False))
    for key in ("sigma", "sigma_fwd", "sigma_bwd"):
        expect[("conv2", key)] = float(getattr(disc.conv2.parametrizations.weight[0], key))
    expect[("fc", "sigma")] = float(disc.fc.parametrizations.weight[0].sigma)
    expect[("fc", "gamma")] = float(disc.fc.parametrizations.weight[0].gamma.detach())

    # Every parameter, named by its path (a normalized weight by the tensor it parametrizes), after the update.
    def params_of(model: Disc) -> dict[str, torch.Tensor]:
        return {"conv1.weight": model.conv1.weight, "conv1.bias": model.conv1.bias,
                "conv2.weight": model.conv2.parametrizations.weight.original, "conv2.bias": model.conv2.bias,
                "fc.weight": model.fc.parametrizations.weight.original, "fc.bias": model.fc.bias,
                "fc.weight.gamma": model.fc.parametrizations.weight[0].gamma}
    before, after = params_of(oracle), params_of(disc)
    for name, p in after.items():
        p = p.detach()
        expect[(name, "param_norm")] = float(p.norm())
        expect[(name, "param_rms")] = float(p.pow(2).mean().sqrt())
        expect[(name, "param_grad_norm")] = float(before[name].grad.norm())
        expect[(name, "param_update_ratio")] = float((p - before[name].detach()).norm() / p.norm())
        expect[(name, "param_nonfinite")] = 0.0

    # The recorder's own warm-started estimates (one power step so far): sigma_fwd of the plain conv, and
    # the SN'd linear (whose normalization keeps no sigma_fwd), and sigma_op of every layer, are lower bounds
    # of the exact norms (their convergence is tested below).
    estimates = {("conv1", "sigma_fwd"): float(reshape_norms(disc.conv1.weight.detach())[0]),
                 ("fc", "sigma_fwd"): float(reshape_norms(after["fc.weight"].detach())[0])}
    for name, module, size in (("conv1", disc.conv1, (8, 8)), ("conv2", disc.conv2, (8, 8)), ("fc", disc.fc, None)):
        w_eff = effective_weight(module).detach()
        estimates[(name, "sigma_op")] = float(torch.linalg.matrix_norm(w_eff, ord=2)) if size is None else \
            float(conv_operator_norm(w_eff, size, module.stride, module.padding, method="dense"))
    assert set(got) == set(expect) | set(estimates)
    for key, value in expect.items():
        assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-15), key
    for key, exact in estimates.items():
        assert 0 < got[key] <= exact * (1 + 1e-12), key
    # Sanity of the oracle itself: the layer used 1.5 W / ((sigma_fwd + sigma_bwd) / 2).
    fwd, bwd = reshape_norms(oracle.conv2.parametrizations.weight.original.detach())
    torch.testing.assert_close(w2.detach(), 1.5 * oracle.conv2.parametrizations.weight.original.detach() / ((fwd + bwd) / 2))


def test_exact_sigmas_match_linalg_and_dense_svd() -> None:
    disc = make_disc(1)
    rec = Recorder({"D": disc}, every=1, exact_every=2, alerts=[]).attach()
    for step in range(3):
        disc(torch.randn(4, 2, 8, 8, dtype=DT)).sum().backward()
        rec.step(step, "d")
    table = rec.run().layers
    assert set(table[table["stat"] == "sigma_raw_fwd"]["step"]) == {0, 2}
    assert set(table[table["stat"] == "sigma_op"]["step"]) == {0, 1, 2}  # warm estimates, converged on 0 and 2
    got = {(r.layer, r.stat): r.value for r in table[table["step"] == 2].itertuples()}
    for name, module, size in (("conv1", disc.conv1, 8), ("conv2", disc.conv2, 8), ("fc", disc.fc, None)):
        raw = module.weight if name == "conv1" else module.parametrizations.weight.original
        fwd, bwd = reshape_norms(raw.detach())
        assert got[(name, "sigma_raw_fwd")] == pytest.approx(float(fwd), rel=1e-12)
        assert got[(name, "sigma_raw_bwd")] == pytest.approx(float(bwd), rel=1e-12)
        dense_fwd = torch.linalg.svdvals(raw.detach().flatten(1))[0]
        dense_bwd = torch.linalg.svdvals(raw.detach().transpose(0, 1).flatten(1))[0]
        assert got[(name, "sigma_raw_fwd")] == pytest.approx(float(dense_fwd), rel=1e-10)
        assert got[(name, "sigma_raw_bwd")] == pytest.approx(float(dense_bwd), rel=1e-10)
        w_eff = effective_weight(module)
        if size is None:
            op = torch.linalg.svdvals(w_eff)[0]
        else:
            op = conv_operator_norm(w_eff, size, module.stride, module.padding, method="dense")
        assert got[(name, "sigma_op")] == pytest.approx(float(op), rel=1e-6)
    # C6: with reshape SN at scale 1.5 the strided conv's operator norm exceeds 1.5.
    assert got[("conv2", "sigma_op")] > 1.5


def test_every_cheap_stat_is_recorded_and_documented() -> None:
    disc = make_disc()
    rec = Recorder({"D": disc}, alerts=[]).attach()
    x = torch.randn(4, 2, 8, 8, dtype=DT, requires_grad=True)
    disc(x).sum().backward()
    rec.step(0, "d")
    stats = set(rec.run().layers["stat"])
    assert stats == {name for name, info in STATS.items() if info.schedule == "cheap"}


def test_stats_subset_records_only_those() -> None:
    disc = make_disc()
    rec = Recorder({"D": disc}, stats=["sigma", "grad_out_var"], alerts=[]).attach()
    disc(torch.randn(4, 2, 8, 8, dtype=DT)).sum().backward()
    rec.step(0, "d")
    table = rec.run().layers
    assert set(table["stat"]) == {"sigma", "grad_out_var"}
    assert set(table[table["stat"] == "sigma"]["layer"]) == {"conv2", "fc"}


class Gen(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 4 * 4 * 4)
        self.deconv = nn.ConvTranspose2d(4, 2, 4, stride=2, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.deconv(F.relu(self.fc(z)).view(-1, 4, 4, 4)))


def gan_iteration(disc: nn.Module, gen: nn.Module, opt_d, opt_g, rec: Recorder, step: int,
                  begin: bool = False) -> dict[str, float]:
    """One D update and one G update; returns D's raw-weight grad norm seen by each phase."""
    seen = {}
    if begin:
        rec.begin(step, "d")
    with torch.no_grad():
        fake = gen(torch.randn(4, 3, dtype=DT))
    opt_d.zero_grad()
    hinge(disc(torch.randn(4, 2, 8, 8, dtype=DT)), disc(fake)).backward()
    opt_d.step()
    seen["d"] = float(disc.conv1.weight.grad.norm())
    rec.step(step, "d")
    if begin:
        rec.begin(step, "g")
    for p in disc.parameters():
        p.requires_grad_(False)
    opt_g.zero_grad()
    (-disc(gen(torch.randn(4, 3, dtype=DT))).mean()).backward()
    opt_g.step()
    for p in disc.parameters():
        p.requires_grad_(True)
    rec.step(step, "g")
    return seen


def test_two_models_and_phases_are_recorded_separately() -> None:
    disc, gen = make_disc(), Gen().to(DT)
    opt_d, opt_g = torch.optim.SGD(disc.parameters(), lr=0.01), torch.optim.SGD(gen.parameters(), lr=0.01)
    rec = Recorder({"D": disc, "G": gen}, alerts=[]).attach()
    seen = gan_iteration(disc, gen, opt_d, opt_g, rec, 0)
    table = rec.run().layers
    d_phase, g_phase = table[table["phase"] == "d"], table[table["phase"] == "g"]
    # G ran under no_grad in the D update: not recorded there.
    assert set(d_phase["net"]) == {"D"}
    assert set(g_phase["net"]) == {"D", "G"}
    g_rows = g_phase[(g_phase["net"] == "G") & (g_phase["stat"] == "grad_out_norm")]
    assert set(g_rows["layer"]) == {"fc", "deconv"}
    d_conv1 = d_phase[(d_phase["layer"] == "conv1") & (d_phase["stat"] == "grad_w_raw_norm")]["value"]
    assert float(d_conv1.iloc[0]) == pytest.approx(seen["d"], rel=1e-12)
    # D was frozen in the G update: no weight gradient for D there, but the back-propagated one is recorded.
    g_d = g_phase[g_phase["net"] == "D"]
    assert "grad_w_raw_norm" not in set(g_d["stat"])
    assert {"grad_out_norm", "grad_in_norm"} <= set(g_d["stat"])
    # nor per-parameter rows: D's parameters are D's update's, unchanged by G's (a repeat with ratio 0)
    assert not g_d["stat"].str.startswith("param_").any()
    ratios = d_phase[d_phase["stat"] == "param_update_ratio"]["value"]
    assert len(ratios) == len(list(disc.parameters())) and (ratios > 0).sum() >= 6
    assert set(g_phase[(g_phase["net"] == "G") & (g_phase["stat"] == "param_norm")]["layer"]) == {
        name for name, _ in gen.named_parameters()}
    # conv1's input is G's output in the G phase, so its input gradient exists there only.
    assert not len(d_phase[(d_phase["layer"] == "conv1") & (d_phase["stat"] == "grad_in_norm")])
    assert len(g_d[(g_d["layer"] == "conv1") & (g_d["stat"] == "grad_in_norm")]) == 1


@pytest.mark.parametrize("begin", [False, True])
def test_schedule_records_every_nth_step_with_complete_hook_stats(begin: bool) -> None:
    disc, gen = make_disc(), Gen().to(DT)
    opt_d, opt_g = torch.optim.SGD(disc.parameters(), lr=0.01), torch.optim.SGD(gen.parameters(), lr=0.01)
    rec = Recorder({"D": disc, "G": gen}, every=3, alerts=[], stats=["act_out_var", "grad_out_norm", "sigma"])
    rec.attach()
    collected = []
    for step in range(8):
        gan_iteration(disc, gen, opt_d, opt_g, rec, step, begin=begin)
        collected.append(len(rec.observer.buffer))
    table = rec.run().layers
    assert sorted(set(table["step"])) == [0, 3, 6]
    counts = table.groupby(["step", "phase", "net"])["stat"].nunique()
    # Hook statistics complete in both phases of every recorded step.
    assert (counts.xs("D", level="net") == 3).all()
    assert len(counts) == 3 * 3


def test_hooks_do_no_work_on_unscheduled_steps() -> None:
    disc = make_disc()
    rec = Recorder({"D": disc}, every=4, alerts=[]).attach()
    sizes = []
    for step in range(8):
        disc(torch.randn(2, 2, 8, 8, dtype=DT)).sum().backward()
        sizes.append(len(rec.observer.buffer))
        rec.step(step, "train")
    # After the first step the recorder knows the loop has one phase and collects only for steps 4k.
    assert [s > 0 for s in sizes[2:]] == [False, False, True, False, False, False]
    assert sorted(set(rec.run().layers["step"])) == [0, 4]


@pytest.mark.parametrize("budget", [1, 10**12])
def test_collecting_layer_by_layer_or_all_at_once_records_the_same_rows(monkeypatch, budget) -> None:
    # On the CPU the families run chunk by chunk of layers (cache reuse); the rows must not depend on the
    # chunking: tied weights across chunks, per-parameter and per-operator statistics, exact and Hessian steps.
    import gradscope.record.recorder as recorder_module
    from gradscope.record.layers import cache_sized_chunks

    def run(chunk_budget: int):
        monkeypatch.setattr(recorder_module, "cache_sized_chunks",
                            lambda layers, device: cache_sized_chunks(layers, device, budget=chunk_budget))
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(),
                              nn.Linear(8, 1)).to(DT)
        model[4].weight = model[2].weight  # tied: one parameter, two layers (and chunks)
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        rec = Recorder(model, exact_every=2, hessian_every=3, alerts=[]).attach()
        for step in range(4):
            opt.zero_grad()
            model(torch.randn(5, 6, dtype=DT)).pow(2).mean().backward()
            opt.step()
            rec.step(step)
        return rec.run().layers

    one_by_one, together = run(budget), run(10**12)
    assert len(one_by_one) and set(one_by_one["stat"]) >= {"param_norm", "sigma_fwd", "sigma_op", "hessian_top",
                                                          "sigma_raw_fwd", "grad_w_raw_norm"}
    pd.testing.assert_frame_equal(one_by_one, together)


def test_detach_removes_every_hook() -> None:
    disc, gen = make_disc(), Gen().to(DT)
    modules = list(disc.modules()) + list(gen.modules())
    before = {id(m): (len(m._forward_hooks), len(m._forward_pre_hooks)) for m in modules}
    rec = Recorder({"D": disc, "G": gen}, hessian_every=5).attach()
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in modules) > 0
    disc(gen(torch.randn(2, 3, dtype=DT))).sum().backward()
    rec.step(0, "g")
    rec.detach()
    for m in modules:
        assert (len(m._forward_hooks), len(m._forward_pre_hooks)) == before[id(m)]
        assert not m._backward_hooks and not m._backward_pre_hooks
    for p in list(disc.parameters()) + list(gen.parameters()):
        assert not p._backward_hooks and not getattr(p, "_post_accumulate_grad_hooks", None)
    with pytest.raises(ValueError, match="not attached"):
        rec.step(1, "g")


def test_bad_input_fails_before_training(tmp_path) -> None:
    with pytest.raises(ValueError, match="no parameters to record"):
        Recorder(nn.Sequential(nn.ReLU(), nn.Tanh()))
    with pytest.raises(ValueError, match="unknown stat 'sigmaa'"):
        Recorder(make_disc(), stats=["sigmaa"])
    with pytest.raises(ValueError, match="every must be an integer >= 1"):
        Recorder(make_disc(), every=0)
    with pytest.raises(ValueError, match="exact_every"):
        Recorder(make_disc(), stats=["sigma_raw_fwd"])
    with pytest.raises(ValueError, match="hessian_every"):
        Recorder(make_disc(), stats=["hessian_top"])
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match="not writable"):
        Recorder(make_disc(), out=blocker / "run")
    with pytest.raises(ValueError, match="models must be"):
        Recorder({})
    with pytest.raises(ValueError, match="alerts must be AlertRule"):
        Recorder(make_disc(), alerts=["vanishing"])
    with pytest.raises(ValueError, match="unknown alert rule kind"):
        AlertRule("x", "sideways")
    rec = Recorder(make_disc()).attach()
    with pytest.raises(ValueError, match="phase must be"):
        rec.step(0, "")
    with pytest.raises(ValueError, match="unknown net"):
        rec.record_input_gradients("G", torch.zeros(1, 2, 8, 8, dtype=DT))


def test_user_classifier_vanishing_gradients_raise_alerts(tmp_path) -> None:
    """The 'track vanishing gradients in your own model' use: a deep sigmoid MLP classifier."""
    torch.manual_seed(0)
    layers = [nn.Linear(10, 32), nn.Sigmoid()]
    for _ in range(8):
        layers += [nn.Linear(32, 32), nn.Sigmoid()]
    model = nn.Sequential(*layers, nn.Linear(32, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    messages: list[str] = []
    rules = [AlertRule("ratio", "first_last_ratio", "grad_out_norm", factor=100.0)]
    with Recorder(model, out=tmp_path / "run", alerts=rules, alert_printer=messages.append, flush_every=2) as rec:
        for step in range(6):
            x, y = torch.randn(32, 10), torch.randint(0, 3, (32,))
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
            rec.step(step, "train")
    run = rec.run()
    grads = run.stat("grad_out_norm")
    assert list(grads.columns) == [str(i) for i in range(0, 19, 2)]  # input to output
    assert (grads.iloc[:, 0] < grads.iloc[:, -1] / 100).all()  # sigmoid chain: vanished by > 100x
    assert len(messages) == 1 and "ratio" in messages[0]  # printed once although every step qualifies
    assert list(run.alerts["rule"]) == ["ratio"] and int(run.alerts["step"].iloc[0]) == 0
    assert run.status["state"] == "done"


def test_layer_order_follows_execution_not_registration() -> None:
    class Reversed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.last = nn.Linear(4, 1)
            self.first = nn.Linear(3, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.last(torch.relu(self.first(x)))

    rec = Recorder(Reversed(), stats=["act_out_var"]).attach()
    rec.models["model"](torch.randn(5, 3)).sum().backward()
    rec.step(0)
    table = rec.run().layers
    assert table.sort_values("layer_index")["layer"].tolist() == ["first", "last"]


def test_no_host_sync_in_the_hot_path(monkeypatch) -> None:
    """Between flushes the recorder never reads a tensor on the host."""
    import sys

    calls: list[str] = []

    def counting(name):
        original = getattr(torch.Tensor, name)

        def wrapper(self, *args, **kwargs):
            caller = sys._getframe(1).f_globals.get("__name__", "")
            if caller.startswith("gradscope.record"):
                calls.append(f"{caller}:{name}")
            return original(self, *args, **kwargs)

        return wrapper

    for name in ("item", "cpu", "tolist", "numpy", "__float__", "__int__", "__bool__", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, counting(name))
    disc, gen = make_disc(), Gen().to(DT)
    opt_d, opt_g = torch.optim.SGD(disc.parameters(), lr=0.01), torch.optim.SGD(gen.parameters(), lr=0.01)
    rec = Recorder({"D": disc, "G": gen}, flush_every=1000).attach()
    for step in range(4):
        x = torch.randn(4, 2, 8, 8, dtype=DT, requires_grad=True)
        out = disc(x)
        rec.record_input_gradients("D", x, out)
        rec.log_scalars(step, {"loss": out.mean(), "lr": 0.01})
        gan_iteration(disc, gen, opt_d, opt_g, rec, step)
    assert calls == []
    rec.flush()
    assert any(c.endswith(":cpu") for c in calls)  # the one batched copy happens at the flush


def test_input_gradient_norms_match_per_sample_autograd_and_leave_training_alone() -> None:
    disc = make_disc()
    twin = copy.deepcopy(disc)
    x = torch.randn(4, 2, 8, 8, dtype=DT)
    expected = []
    for i in range(4):
        xi = x[i:i + 1].clone().requires_grad_(True)
        (g,) = torch.autograd.grad(twin(xi).sum(), xi)
        expected.append(float(g.norm()))
    rec = Recorder({"D": disc}, alerts=[]).attach()
    sigma_before = disc.conv2.parametrizations.weight[0].sigma.clone()  # set in float32 at registration
    without_output = rec.record_input_gradients("D", x, kind="fake")
    np.testing.assert_allclose(without_output.numpy(), expected, rtol=1e-12)
    # Its own forward pass recomputed sigma in float64; the probe put the old buffer back.
    assert torch.equal(disc.conv2.parametrizations.weight[0].sigma, sigma_before)
    leaf = x.clone().requires_grad_(True)
    out = disc(leaf)
    with_output = rec.record_input_gradients("D", leaf, out, kind="real")
    np.testing.assert_allclose(with_output.numpy(), expected, rtol=1e-12)
    out.sum().backward()  # the caller's graph is intact
    assert leaf.grad is not None
    twin_leaf = x.clone().requires_grad_(True)
    twin(twin_leaf).sum().backward()
    for p, q in zip(disc.parameters(), twin.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=0)
    # Several batches of one concatenated forward pass, one backward pass: same per-sample norms.
    pair = x.clone().requires_grad_(True)
    halves = [pair[:2], pair[2:]]
    logits = disc(torch.cat(halves))
    first, second = rec.record_input_gradients("D", halves, [logits[:2], logits[2:]], kind=["p", "q"])
    np.testing.assert_allclose(torch.cat([first, second]).numpy(), expected, rtol=1e-12)
    rec.step(0, "d")
    run = rec.run()
    scalars = dict(zip(run.scalars["name"], run.scalars["value"]))
    assert scalars["slope_real_max"] == pytest.approx(max(expected), rel=1e-12)
    assert scalars["slope_fake_min"] == pytest.approx(min(expected), rel=1e-12)
    assert scalars["slope_real_mean"] == pytest.approx(float(np.mean(expected)), rel=1e-12)
    assert scalars["slope_q_max"] == pytest.approx(max(expected[2:]), rel=1e-12)
    # The extra backward passes were hidden from the hooks: grad_out pools the single training backward.
    grads = {r.layer: r.value for r in run.layers[run.layers["stat"] == "grad_out_norm"].itertuples()}
    h = twin_leaf
    z1 = twin.conv1(h)
    z1.retain_grad()
    twin.fc(F.leaky_relu(twin.conv2(F.leaky_relu(z1, 0.1)), 0.1).flatten(1)).sum().backward()
    assert grads["conv1"] == pytest.approx(float(z1.grad.norm()), rel=1e-12)


def test_slopes_follow_their_own_schedule() -> None:
    disc = make_disc()
    rec = Recorder({"D": disc}, every=2, slopes_every=4, alerts=[]).attach()
    computed = []
    for step in range(9):
        rec.begin(step, "d")
        x = torch.randn(2, 2, 8, 8, dtype=DT, requires_grad=rec.collecting_slopes)
        out = disc(x)
        computed.append(rec.record_input_gradients("D", x, out) is not None if x.requires_grad else False)
        out.sum().backward()
        rec.step(step, "d")
    assert computed == [True, False, False, False, True, False, False, False, True]
    run = rec.run()
    assert sorted(set(run.scalars["step"])) == [0, 4, 8]
    assert sorted(set(run.layers["step"])) == [0, 2, 4, 6, 8]
    with pytest.raises(ValueError, match="multiple of every"):
        Recorder(disc, every=2, slopes_every=3)


def sn_mlp() -> tuple[nn.Module, torch.Tensor]:
    """SN'd ReLU MLP 2-16-16-1; its first layer's eigenvalue of largest magnitude is negative."""
    torch.manual_seed(0)
    return normalize(MLPDiscriminator(hidden=16, depth=2).to(DT), "sn"), torch.randn(8, 2, dtype=DT)


def sn_convnet() -> tuple[nn.Module, torch.Tensor]:
    """SN'd leaky-ReLU conv 3x3 -> conv 4x4/2 -> linear with biases, on 6x6 inputs (<= 192 weights a layer)."""
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.LeakyReLU(0.2), nn.Conv2d(3, 4, 4, stride=2, padding=1),
                        nn.LeakyReLU(0.2), nn.Flatten(), nn.Linear(4 * 3 * 3, 1), nn.Flatten(0))
    return normalize(net.to(DT), "sn"), torch.randn(5, 2, 6, 6, dtype=DT)


def dense_hessian_spectra(net: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per raw weight, the eigenvalues of the dense float64 Hessian of mean(net(x)), each from a fresh copy
    of ``net`` (so every evaluation starts from the same power-iteration buffers the probe starts from)."""
    spectra = {}
    for name, raw in net.named_parameters():
        if raw.ndim < 2:
            continue
        def objective(flat: torch.Tensor, name=name, shape=raw.shape) -> torch.Tensor:
            return functional_call(copy.deepcopy(net), {name: flat.reshape(shape)}, (x,)).mean()
        hessian = torch.autograd.functional.hessian(objective, raw.detach().reshape(-1).clone())
        spectra[name] = torch.linalg.eigvalsh(hessian)
    return spectra


@pytest.mark.parametrize("make", [sn_mlp, sn_convnet])
def test_hessian_norms_match_the_dense_hessian_on_every_layer(make) -> None:
    net, x = make()
    spectra = dense_hessian_spectra(net, x)
    params = dict(net.named_parameters())
    buffers = [b.clone() for b in net.buffers()]
    got = hessian_norms(net, x, [params[name] for name in spectra], max_iter=300, tol=1e-10)
    assert all(torch.equal(a, b) for a, b in zip(buffers, net.buffers()))  # buffers restored
    for (name, eigenvalues), value in zip(spectra.items(), got):
        assert float(value) == pytest.approx(float(eigenvalues.abs().max()), rel=1e-8), name
    last = spectra[list(spectra)[-1]]
    # The single-output last layer: an exact pair +-lambda, where a power-iteration Rayleigh quotient stalls.
    assert float(last[0]) == pytest.approx(-float(last[-1]), rel=1e-9)
    if make is sn_mlp:
        first = spectra[list(spectra)[0]]
        assert -float(first[0]) > float(first[-1]) > 0  # the oracle covers a negative top eigenvalue


def test_hessian_norms_with_the_recorders_budget_and_a_flat_layer() -> None:
    net, x = sn_mlp()
    spectra = dense_hessian_spectra(net, x)
    params = dict(net.named_parameters())
    # Default budget (20 Hessian-vector products, tol 1e-4) on 32-, 256- and 16-weight blocks.
    for value, eigenvalues in zip(hessian_norms(net, x, [params[name] for name in spectra]), spectra.values()):
        assert float(value) == pytest.approx(float(eigenvalues.abs().max()), rel=1e-6)
    # A bias-free ReLU net is piecewise linear in each single weight: zero curvature, exactly.
    plain = nn.Sequential(nn.Linear(3, 4, bias=False), nn.ReLU(), nn.Linear(4, 1, bias=False)).to(DT)
    assert [float(v) for v in hessian_norms(plain, x.new_ones(2, 3), [plain[0].weight, plain[2].weight])] == [0, 0]


def test_recorder_hessian_top_is_the_spectral_norm_of_every_layer_block() -> None:
    net, x = sn_mlp()
    oracle = copy.deepcopy(net)
    rec = Recorder({"D": net}, hessian_every=2, stats=["hessian_top"], alerts=[]).attach()
    before = [b.clone() for b in net.buffers()]
    net(x).mean().backward()
    after_step = [b.clone() for b in net.buffers()]
    assert not all(torch.equal(a, b) for a, b in zip(before, after_step))  # training's power step moved u, v
    oracle(x)  # the same power step; the probe then differentiates one more forward from there
    spectra = dense_hessian_spectra(oracle, x)
    rec.step(0, "d")
    assert all(torch.equal(a, b) for a, b in zip(after_step, net.buffers()))  # the probe's step is undone
    table = rec.run().layers.sort_values("layer_index")
    assert list(table["stat"]) == ["hessian_top"] * 3
    expected = [float(e.abs().max()) for e in spectra.values()]
    assert list(table["value"]) == pytest.approx(expected, rel=1e-6)


def test_hessian_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="hessian_tol must be a finite number > 0"):
        Recorder(make_disc(), hessian_every=1, hessian_tol=0)
    with pytest.raises(ValueError, match="hessian_iterations must be an integer >= 1"):
        Recorder(make_disc(), hessian_every=1, hessian_iterations=0)


def test_foreign_parametrization_uses_the_observed_effective_weight() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 1)).to(DT)
    torch.nn.utils.parametrizations.spectral_norm(model[0])
    rec = Recorder(model, stats=["lecun_ratio", "lecun_ratio_raw", "grad_w_eff_norm"], alerts=[]).attach()
    x = torch.randn(9, 5, dtype=DT)
    with parametrize.cached():
        w_eff = model[0].weight
        w_eff.retain_grad()
        out = model(x)
    out.sum().backward()
    rec.step(0)
    got = recorded(rec, layer="0")
    assert got[("0", "lecun_ratio")] == pytest.approx(5 * float(w_eff.detach().var(unbiased=False)), rel=1e-12)
    assert got[("0", "grad_w_eff_norm")] == pytest.approx(float(w_eff.grad.norm()), rel=1e-12)
    raw = model[0].parametrizations.weight.original
    assert got[("0", "lecun_ratio_raw")] == pytest.approx(5 * float(raw.detach().var(unbiased=False)), rel=1e-12)


def test_tensorboard_output(tmp_path) -> None:
    pytest.importorskip("tensorboard")
    model = nn.Sequential(nn.Linear(3, 2))
    with Recorder(model, out=tmp_path / "run", tensorboard=True, alerts=[]) as rec:
        model(torch.randn(4, 3)).sum().backward()
        rec.log_scalars(0, {"loss": 1.0})
        rec.step(0)
    events = list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(events[0].parent), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    assert "loss" in acc.Tags()["scalars"] and "model/grad_out_norm/train/0" in acc.Tags()["scalars"]
    assert set(acc.Tags()["histograms"]) == {"model/param/0.weight", "model/param/0.bias"}  # every parameter


def test_non_finite_values_are_recorded_as_nan_and_alerted() -> None:
    model = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 1))
    messages: list[str] = []
    rec = Recorder(model, alert_printer=messages.append, stats=["act_out_var", "grad_out_norm"]).attach()
    x = torch.randn(4, 3)
    x[0, 0] = math.inf
    model(x).sum().backward()
    rec.log_scalars(0, {"loss": torch.tensor(float("nan"))})
    rec.step(0)
    run = rec.run()
    assert run.layers["value"].isna().any()
    assert set(run.alerts["rule"]) == {"non_finite"}
    assert any("scalar loss" in m for m in messages)


@pytest.mark.parametrize("norm", ["bssn", "sn-diff-gamma", "strict"])
def test_gradscope_normalizations_are_read_from_their_buffers(norm: str) -> None:
    from gradscope.norms import normalize, parametrization_of, raw_weight

    torch.manual_seed(0)
    disc = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.LeakyReLU(0.1), nn.Conv2d(8, 8, 4, 2, 1),
                         nn.LeakyReLU(0.1), nn.Flatten(), nn.Linear(8 * 4 * 4, 1))
    disc(torch.randn(1, 3, 8, 8))  # strict SN takes the input size from a first forward pass
    normalize(disc, norm, 1.3 if norm == "bssn" else 1.0)
    opt = torch.optim.Adam(disc.parameters(), lr=0.01)
    rec = Recorder({"D": disc}, alerts=[]).attach()
    for step in range(2):
        opt.zero_grad()
        disc(torch.randn(4, 3, 8, 8)).mean().backward()
        opt.step()
        rec.step(step, "d")
    got = recorded(rec, step=1)
    for name in ("0", "2", "5"):
        module = disc[int(name)]
        param = parametrization_of(module)
        for key, value in param.sigma_estimates().items():
            assert got[(name, key)] == pytest.approx(float(value), rel=1e-6), (name, key)
        shape = raw_weight(module).shape  # (reading module.weight would advance the power iteration)
        fan_in = shape[1] * math.prod(shape[2:])
        assert got[(name, "lecun_ratio")] == pytest.approx(
            fan_in * float(effective_weight(module).var(unbiased=False)), rel=1e-4)
        if norm == "sn-diff-gamma":
            assert got[(name, "gamma")] == pytest.approx(float(param.gamma.detach()), rel=1e-6)
            assert float(param.gamma.detach()) != 1.0  # it learned, and the recorder saw the new value
        else:
            assert (name, "gamma") not in got


def test_schedule_predicts_repeating_phase_patterns() -> None:
    from gradscope.record.schedule import Schedule

    schedule = Schedule(every=2, exact_every=None, hessian_every=None, slopes_every=None)
    pattern = ["d", "d", "d", "g"]  # n_dis = 3: only the first D update of a step is recorded
    armed = []
    for step in range(6):
        for phase in pattern:
            armed.append((step, phase, schedule.armed))
            cheap = schedule.due(step)[0]
            schedule.finish(step, phase, recorded=cheap and not schedule.done(step, phase))
    # Once a step with a new number has begun the previous step's pattern is known, and collection
    # matches recording exactly (before that the recorder errs on the side of collecting).
    wanted = [(s, p, s % 2 == 0 and i in (0, 3)) for s in range(1, 6) for i, p in enumerate(pattern)]
    assert armed[5:] == wanted[1:]
    assert all(on for _, _, on in armed[:4])
