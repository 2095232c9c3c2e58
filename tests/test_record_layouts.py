"""The recorder on models nobody here wrote: every parameterized module, layouts, warm-started spectral norms."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from gradscope.linalg import conv_operator_norm
from gradscope.record import Recorder
from gradscope.record.layouts import Operator, operators_of, register_layout

DT = torch.float64


def _run(model: nn.Module, batches, steps: int = 1, **kwargs):
    rec = Recorder(model, every=1, alerts=[], **kwargs).attach()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for step in range(steps):
        opt.zero_grad()
        batches(step).backward()
        opt.step()
        rec.step(step)
    table = rec.run().layers
    rec.close()
    return rec, table


def _dense_sigma(matrix: torch.Tensor) -> float:
    return float(torch.linalg.svdvals(matrix.detach().to(DT))[0])


def test_gpt2_every_weight_bearing_module_is_recorded_with_its_layout():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=4, n_embd=32, n_head=4, vocab_size=50, n_positions=16)
    model = transformers.GPT2LMHeadModel(config)
    ids = torch.randint(0, 50, (3, 12))
    _, table = _run(model, lambda step: model(ids, labels=ids).loss)
    with_params = {name or "root" for name, m in model.named_modules() if list(m.parameters(recurse=False))}
    assert len(with_params) == 28  # wte, wpe, 6 per block, ln_f, lm_head
    layer_rows = set(table[table["stat"] == "grad_out_norm"]["layer"])
    assert layer_rows == with_params  # every module with parameters: embeddings, layer norms, Conv1D, lm_head
    # Conv1D (weight stored (in, out)) is an operator: its sigma_fwd is the norm of W^T, a lower bound so far.
    c_attn = model.transformer.h[0].attn.c_attn
    assert tuple(c_attn.weight.shape) == (32, 96)
    sigma = table[(table["layer"] == "transformer.h.0.attn.c_attn") & (table["stat"] == "sigma_fwd")]["value"]
    assert len(sigma) == 1 and 0 < float(sigma.iloc[0]) <= _dense_sigma(c_attn.weight) * (1 + 1e-6)
    # Per-parameter rows for every parameter (lm_head.weight is tied to wte.weight: recorded once).
    params = set(table[table["stat"] == "param_norm"]["layer"])
    assert params == {name for name, _ in model.named_parameters()}
    norm = table[(table["layer"] == "transformer.h.1.mlp.c_fc.weight") & (table["stat"] == "param_norm")]["value"]
    assert float(norm.iloc[0]) == pytest.approx(float(model.transformer.h[1].mlp.c_fc.weight.detach().norm()), rel=1e-5)
    # Layer norms have no operator; the embedding table does (no LeCun ratio: its input is one-hot).
    ops = set(table[table["stat"] == "sigma_fwd"]["layer"])
    assert "transformer.h.0.ln_1" not in ops and "transformer.wte" in ops
    assert "transformer.wte" not in set(table[table["stat"] == "lecun_ratio"]["layer"])


def test_multihead_attention_packed_in_proj_is_three_operators_and_out_proj_a_linear():
    torch.manual_seed(1)
    model = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True), 2,
                                  enable_nested_tensor=False)
    x = torch.randn(4, 5, 16)
    _, table = _run(model, lambda step: model(x).pow(2).mean())
    ops = set(table[table["stat"] == "sigma_fwd"]["layer"])
    for i in range(2):
        for label in "qkv":
            assert f"layers.{i}.self_attn.in_proj_weight[{label}]" in ops
        assert f"layers.{i}.self_attn.out_proj" in ops and f"layers.{i}.linear1" in ops
    # The q, k, v fan-ins are the embedding width, so their LeCun ratio is 16 * Var(chunk).
    attn = model.layers[0].self_attn
    k = attn.in_proj_weight.detach()[16:32]
    row = table[(table["layer"] == "layers.0.self_attn.in_proj_weight[k]") & (table["stat"] == "lecun_ratio")]
    assert float(row["value"].iloc[0]) == pytest.approx(16 * float(k.var(unbiased=False)), rel=1e-5)
    grad = table[(table["layer"] == "layers.0.self_attn.in_proj_weight[v]") & (table["stat"] == "grad_w_raw_norm")]
    assert float(grad["value"].iloc[0]) > 0


def test_warm_started_sigma_fwd_and_sigma_op_converge_to_dense_svd_and_the_dense_operator():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 10),
                          nn.ReLU(), nn.Linear(10, 1)).to(DT)
    for p in model.parameters():
        p.requires_grad_(False)  # fixed weights: the estimates must converge to the exact norms
    x = torch.randn(2, 3, 8, 8, dtype=DT, requires_grad=True)
    rec = Recorder(model, every=1, operator_every=1, alerts=[], stats=["sigma_fwd", "sigma_op"]).attach()
    for step in range(300):
        model(x).sum().backward()
        rec.step(step)
    table = rec.run().layers
    last = table[table["step"] == 299].set_index(["layer", "stat"])["value"]
    conv, fc = model[0], model[3]
    exact = {("0", "sigma_fwd"): _dense_sigma(conv.weight.flatten(1)),
             ("0", "sigma_op"): float(conv_operator_norm(conv.weight, (8, 8), 2, 1, method="dense")),
             ("3", "sigma_fwd"): _dense_sigma(fc.weight), ("3", "sigma_op"): _dense_sigma(fc.weight),
             ("5", "sigma_fwd"): _dense_sigma(model[5].weight)}
    for key, value in exact.items():
        assert float(last[key]) <= value * (1 + 1e-9), key  # a lower bound at every step
        assert float(last[key]) == pytest.approx(value, rel=1e-3), key  # within 0.1 % after 300 steps
    # Estimates only increase on a fixed operator (power iteration's Rayleigh quotient is monotone).
    series = table[(table["layer"] == "0") & (table["stat"] == "sigma_op")]["value"].to_numpy()
    assert (series[1:] >= series[:-1] * (1 - 1e-12)).all()
    # By default a convolution's sigma_op steps every 10th recorded step (a batch-1 conv pair each time).
    rec = Recorder(model, every=2, alerts=[], stats=["sigma_op"]).attach()
    for step in range(41):
        model(x).sum().backward()
        rec.step(step)
    table = rec.run().layers
    assert sorted(set(table[table["layer"] == "0"]["step"])) == [0, 20, 40]
    assert sorted(set(table[table["layer"] == "3"]["step"])) == list(range(0, 41, 2))
    with pytest.raises(ValueError, match=r"operator_every must be a multiple of every \(2\), got 5"):
        Recorder(model, every=2, operator_every=5)


def test_warm_vectors_are_saved_and_restored_so_resumed_estimates_match():
    def make():
        torch.manual_seed(3)
        return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 1))

    x = torch.randn(3, 2, 6, 6)

    def train(model, rec, steps):
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        for step in steps:
            opt.zero_grad()
            model(x).sum().backward()
            opt.step()
            rec.step(step)

    a = make()
    rec_a = Recorder(a, alerts=[]).attach()
    train(a, rec_a, range(6))
    full = rec_a.run().layers
    b = make()
    rec_b = Recorder(b, alerts=[]).attach()
    train(b, rec_b, range(3))
    state = rec_b.state_dict()
    c = make()
    c.load_state_dict(b.state_dict())
    rec_c = Recorder(c, alerts=[], start_step=3).attach()
    rec_c.load_state_dict(state)
    train(c, rec_c, range(3, 6))
    resumed = rec_c.run().layers
    pick = lambda t: t[(t["step"] >= 3) & t["stat"].isin(["sigma_fwd", "sigma_op"])].reset_index(drop=True)
    assert pick(full)["value"].tolist() == pick(resumed)["value"].tolist()


def test_user_layout_registration_and_errors_name_the_module():
    class Projection(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.kernel = nn.Parameter(torch.randn(6, 4))  # stored (in, out)

        def forward(self, x):
            return x @ self.kernel

    model = nn.Sequential(Projection(), nn.Tanh(), nn.Linear(4, 1))
    with pytest.warns(UserWarning, match=r"model/0: no layout for .*Projection \(weights kernel\)"):
        rec = Recorder(model, alerts=[])
    assert rec.layers["model"][0].uninterpreted and not rec.layers["model"][0].operators
    register_layout(Projection, lambda m: [Operator("kernel", view=lambda w: w.t())])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            _, table = _run(model, lambda step: model(torch.randn(5, 6)).sum())
        sigma = table[(table["layer"] == "0.kernel") & (table["stat"] == "sigma_fwd")]["value"]
        assert 0 < float(sigma.iloc[0]) <= _dense_sigma(model[0].kernel) * (1 + 1e-6)
        register_layout(Projection, lambda m: [Operator("kernel", view=lambda w: w.reshape(-1))])
        with pytest.raises(ValueError, match=r"layout of Projection '0': kernel of shape \(6, 4\) must view as a 2-d"):
            Recorder(model)
        register_layout(Projection, lambda m: [Operator("weights")])
        with pytest.raises(ValueError, match="layout of Projection '0': the module has no tensor 'weights'"):
            Recorder(model)
    finally:
        from gradscope.record import layouts

        layouts._LAYOUTS.pop(Projection, None)
    with pytest.raises(ValueError, match="module_type must be an nn.Module subclass"):
        register_layout(int, lambda m: [])
    with pytest.raises(ValueError, match="unknown operator kind 'dense'"):
        Operator("weight", kind="dense")


def test_builtin_layouts_read_embedding_recurrent_and_in_out_projections():
    emb = operators_of("emb", nn.Embedding(30, 8))
    assert [op.matrix(torch.zeros(30, 8)).shape for op in emb] == [torch.Size([8, 30])]
    lstm = operators_of("lstm", nn.LSTM(5, 7, num_layers=2))
    assert [op.param for op in lstm] == ["weight_ih_l0", "weight_hh_l0", "weight_ih_l1", "weight_hh_l1"]
    attn = operators_of("a", nn.MultiheadAttention(8, 2, kdim=4, vdim=6))
    assert [op.param for op in attn] == ["q_proj_weight", "k_proj_weight", "v_proj_weight"]
    transformers = pytest.importorskip("transformers")
    conv1d = transformers.pytorch_utils.Conv1D(12, 5)  # nf=12 outputs from nx=5 inputs, weight (5, 12)
    (op,) = operators_of("c", conv1d)
    assert op.matrix(conv1d.weight).shape == (12, 5)


def test_the_recorder_never_evaluates_a_parametrization_itself():
    """A parametrization may have side effects (torch's spectral_norm steps its power iteration in training
    mode): the recorder reads raw weights and the effective weight the layer's own forward produced."""
    calls = []

    class Counting(nn.Module):
        def forward(self, w):
            calls.append(1)
            return w * 0.5

    torch.manual_seed(4)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 5 * 5, 1))
    for layer in (model[0], model[3]):
        torch.nn.utils.parametrize.register_parametrization(layer, "weight", Counting())
    calls.clear()  # registering evaluates each parametrization once
    rec = Recorder(model, every=1, exact_every=2, alerts=[]).attach()
    x = torch.randn(4, 2, 5, 5)
    for step in range(4):
        model(x).sum().backward()
        rec.step(step)
    assert len(calls) == 2 * 4  # the two layers' own forwards, nothing more
    table = rec.run().layers
    # sigma_op comes from the observed effective weight (half the raw one): converged on exact steps.
    w_eff = 0.5 * model[3].parametrizations.weight.original.detach()
    got = table[(table["layer"] == "3") & (table["stat"] == "sigma_op") & (table["step"] == 2)]["value"]
    assert float(got.iloc[0]) == pytest.approx(_dense_sigma(w_eff), rel=1e-6)


def test_a_parameter_with_a_nan_entry_is_flagged_and_the_others_are_not():
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    with torch.no_grad():
        model[2].weight[0, 1] = float("nan")
    rec = Recorder(model, alerts=[], stats=["param_nonfinite", "param_norm"]).attach()
    model(torch.randn(5, 3)).sum().backward()  # no optimizer step: the NaN stays where it was put
    rec.step(0)
    table = rec.run().layers
    flags = table[table["stat"] == "param_nonfinite"].set_index("layer")["value"].to_dict()
    assert flags == {"0.weight": 0.0, "0.bias": 0.0, "2.weight": 1.0, "2.bias": 0.0}


def test_a_zero_parameter_that_does_not_move_has_update_ratio_zero_and_raises_no_alert():
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    with torch.no_grad():
        model[0].bias.zero_()
    printed = []
    rec = Recorder(model, alert_printer=printed.append).attach()
    rest = [p for p in model.parameters() if p is not model[0].bias]
    opt = torch.optim.SGD([{"params": [model[0].bias], "lr": 0.0}, {"params": rest}], lr=0.1)  # bias stays 0
    for step in range(3):
        opt.zero_grad()
        model(torch.randn(5, 3)).sum().backward()
        opt.step()
        rec.step(step)
    table = rec.run().layers
    ratio = table[(table["stat"] == "param_update_ratio") & (table["layer"] == "0.bias")]["value"]
    assert ratio.tolist() == [0.0, 0.0, 0.0] and printed == []
    moved = table[(table["stat"] == "param_update_ratio") & (table["layer"] == "2.weight")]["value"]
    assert (moved > 0).all()


@pytest.mark.parametrize("early", [False, True])
@pytest.mark.parametrize("clip", [False, True])
def test_gradient_norms_are_those_of_the_final_gradients_after_accumulation_and_clipping(clip, early, monkeypatch):
    # On the CPU the norms of large gradients are taken as each is accumulated (while it is in cache); a
    # second accumulation or clipping in place before step() must make them be taken again.
    import gradscope.record.hooks as hooks

    monkeypatch.setattr(hooks, "EARLY_NORM_BYTES", 0 if early else 2**62)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).double()
    rec = Recorder(model, alerts=[], stats=["param_grad_norm", "grad_w_raw_norm"]).attach()
    for step in range(2):
        model.zero_grad()
        for _ in range(2):  # gradient accumulation
            model(torch.randn(4, 3, dtype=torch.float64)).pow(2).sum().backward()
        assert len(rec.observer.grad_norms) == (4 if early else 0)  # which path this case takes
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.01)
        expect = {f"{i}.{name}": float(p.grad.norm()) for i in (0, 2) for name, p in model[i].named_parameters()}
        rec.step(step)
    table = rec.run().layers
    last = table[table["step"] == 1]
    got = last[last["stat"] == "param_grad_norm"].set_index("layer")["value"].to_dict()
    assert got == pytest.approx(expect, rel=1e-12)
    ops = last[last["stat"] == "grad_w_raw_norm"].set_index("layer")["value"].to_dict()
    assert ops == pytest.approx({"0": expect["0.weight"], "2": expect["2.weight"]}, rel=1e-12)


def test_a_tensor_one_layer_returns_and_the_next_takes_is_summed_once(monkeypatch):
    # A layer norm feeding a projection: the projection's input is the norm's output, whose sums the
    # buffer already holds; even with grad_in on (which hands the layer a view of its input).
    import gradscope.record.buffer as buffer

    summed: list[torch.Tensor] = []
    original = buffer.sum_and_square_sum
    monkeypatch.setattr(buffer, "sum_and_square_sum", lambda x: summed.append(x) or original(x))
    model = nn.Sequential(nn.LayerNorm(8), nn.Linear(8, 4))
    x = torch.randn(3, 8)
    rec = Recorder(model, alerts=[], stats=["act_in_mean", "act_out_mean", "grad_in_norm"]).attach()
    out = model(x)
    assert [t.shape for t in summed] == [(3, 8), (3, 8), (3, 4)]  # x, norm(x) (twice used), the output
    assert summed[0] is x and summed[2] is out
    out.sum().backward()
    rec.step(0)
    table = rec.run().layers.set_index(["layer", "stat"])["value"]
    rec.close()
    assert table["1", "act_in_mean"] == pytest.approx(table["0", "act_out_mean"], abs=0)
    assert table["1", "act_in_mean"] == pytest.approx(float(model[0](x).detach().mean()), abs=1e-7)


def test_step_buffer_packs_one_vector_per_device_with_its_slots():
    from gradscope.record.buffer import DIRECT_OFFSET, N_QUANTITIES, StepBuffer

    buffer = StepBuffer()
    buffer.add(0, "sigma_fwd", torch.tensor(2.0))
    buffer.add(1, "sigma_fwd", torch.tensor(3.0, device="meta"))  # a second device (no accelerator needed)
    buffer.add(2, "sigma_op", torch.tensor(5.0, dtype=torch.float64))
    parts = {vec.device.type: (vec, slots) for vec, slots in buffer.pack()}
    assert sorted(parts) == ["cpu", "meta"]
    cpu, cpu_slots = parts["cpu"]
    assert cpu.dtype == torch.float64 and cpu.tolist() == [2.0, 5.0]  # mixed dtypes promote
    assert cpu_slots.tolist() == [DIRECT_OFFSET["sigma_fwd"], 2 * N_QUANTITIES + DIRECT_OFFSET["sigma_op"]]
    assert parts["meta"][1].tolist() == [N_QUANTITIES + DIRECT_OFFSET["sigma_fwd"]]
    single = StepBuffer()
    single.add(0, "sigma_fwd", torch.tensor(1.5))
    single.add(3, "gamma", torch.tensor(0.5))
    ((vec, slots),) = single.pack()
    assert vec.tolist() == [1.5, 0.5] and slots.tolist() == [DIRECT_OFFSET["sigma_fwd"],
                                                              3 * N_QUANTITIES + DIRECT_OFFSET["gamma"]]
