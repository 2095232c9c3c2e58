"""gradscope.norms: the normalization family against torch's spectral_norm, dense SVDs and conv operator norms."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm as torch_spectral_norm

from gradscope.linalg import conv_geometry_of, conv_operator_matrix, conv_operator_norm, reshape_norms
from gradscope.norms import (
    NORMS,
    BidirectionalSpectralNorm,
    SpectralNorm,
    StrictSpectralNorm,
    effective_weight,
    normalize,
    parametrization_of,
    raw_weight,
)

DT = torch.float64


def small_d(image: int = 8) -> nn.Sequential:
    """A miniature SNDCGAN-like discriminator (conv 3x3/1, conv 4x4/2, linear), leaky ReLU 0.1."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, 1, 1), nn.LeakyReLU(0.1),
        nn.Conv2d(4, 6, 4, 2, 1), nn.LeakyReLU(0.1),
        nn.Flatten(), nn.Linear(6 * (image // 2) ** 2, 1),
    )


def weighted_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.ConvTranspose2d))]


def images(batch: int = 5, seed: int = 1, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(batch, 3, 8, 8, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def train_steps(model: nn.Module, steps: int = 3, dtype=torch.float32) -> None:
    """A few optimizer steps with two forwards (real, fake) per backward, as in GAN training."""
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for step in range(steps):
        loss = model(images(seed=step, dtype=dtype)).mean() - model(images(seed=100 + step, dtype=dtype)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.named_buffers()}


def assert_same_buffers(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, rtol=0, atol=0)


def assert_same_outputs(got: nn.Module, expected: nn.Module) -> None:
    """Both models map the same images to bit-identical outputs."""
    torch.testing.assert_close(got(images()), expected(images()), rtol=0, atol=0)


# ---------------------------------------------------------------- reference match

@pytest.mark.parametrize("make", [lambda: nn.Linear(7, 5), lambda: nn.Conv2d(3, 6, 3), lambda: nn.ConvTranspose2d(6, 4, 4, 2)],
                         ids=["linear", "conv2d", "convtranspose2d"])
def test_sn_matches_torch_spectral_norm_step_by_step(make):
    torch.manual_seed(0)
    ours, ref = make().double(), None
    ref = copy.deepcopy(ours)
    torch.manual_seed(1)
    normalize(ours, "sn")
    torch.manual_seed(1)
    torch_spectral_norm(ref)
    p = parametrization_of(ours)
    x_shape = (2, 7) if isinstance(ours, nn.Linear) else (2, ours.in_channels, 6, 6)
    opt_ours = torch.optim.SGD(ours.parameters(), lr=0.1)
    opt_ref = torch.optim.SGD(ref.parameters(), lr=0.1)
    for step in range(4):
        x = torch.randn(x_shape, dtype=DT, generator=torch.Generator().manual_seed(step))
        for model, opt in ((ours, opt_ours), (ref, opt_ref)):
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
        torch.testing.assert_close(p.u, ref.parametrizations.weight[0]._u, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(p.v, ref.parametrizations.weight[0]._v, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(raw_weight(ours), raw_weight(ref), rtol=1e-10, atol=1e-12)
    ours.eval(), ref.eval()
    torch.testing.assert_close(ours.weight, ref.weight, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(p.sigma, (raw_weight(ref) / ref.weight).flatten()[0])


@pytest.mark.parametrize("make,transposed", [(lambda: nn.Linear(9, 4), False), (lambda: nn.Conv2d(3, 6, 3), False),
                                             (lambda: nn.ConvTranspose2d(6, 4, 4, 2), True),
                                             (lambda: nn.Conv1d(4, 5, 3), False)])
def test_converged_sigmas_equal_dense_svds_of_the_reshapes(make, transposed):
    torch.manual_seed(0)
    sn_layer, bsn_layer = make().double(), make().double()
    normalize(sn_layer, "sn", n_power_iterations=300)
    normalize(bsn_layer, "bsn", n_power_iterations=300)
    for layer in (sn_layer, bsn_layer):
        _ = layer.weight  # one training-mode access = 300 power steps
    fwd, bwd = reshape_norms(raw_weight(sn_layer), transposed=transposed)
    assert float(parametrization_of(sn_layer).sigma) == pytest.approx(float(fwd), rel=1e-9)
    est = parametrization_of(bsn_layer).sigma_estimates()
    fwd_b, bwd_b = reshape_norms(raw_weight(bsn_layer), transposed=transposed)
    assert float(est["sigma_fwd"]) == pytest.approx(float(fwd_b), rel=1e-9)
    assert float(est["sigma_bwd"]) == pytest.approx(float(bwd_b), rel=1e-9)
    assert float(est["sigma"]) == pytest.approx(float(fwd_b + bwd_b) / 2, rel=1e-9)
    bsn_layer.eval()
    torch.testing.assert_close(bsn_layer.weight, raw_weight(bsn_layer) * 2 / (fwd_b + bwd_b))
    if isinstance(bsn_layer, nn.Linear):
        assert float(est["sigma_fwd"]) == float(est["sigma_bwd"])


def test_bsn_equals_sn_on_linear_layers():
    torch.manual_seed(0)
    a = nn.Linear(6, 3)
    b = copy.deepcopy(a)
    torch.manual_seed(5)
    normalize(a, "sn")
    torch.manual_seed(5)
    normalize(b, "bsn")
    for _ in range(3):
        torch.testing.assert_close(a.weight, b.weight, rtol=0, atol=0)


def test_scaled_modes_multiply_the_weight_and_leave_the_bias():
    base, scaled = small_d(), small_d()
    for plain, name in (("sn", "ssn"), ("bsn", "bssn")):
        base, scaled = small_d(), small_d()
        torch.manual_seed(3)
        normalize(base, plain)
        torch.manual_seed(3)
        normalize(scaled, name, scale=1.7)
        for m_base, m_scaled in zip(weighted_layers(base), weighted_layers(scaled)):
            torch.testing.assert_close(m_scaled.weight, 1.7 * m_base.weight)
            torch.testing.assert_close(m_scaled.bias, m_base.bias)
            assert not parametrize.is_parametrized(m_scaled, "bias")
            p = parametrization_of(m_scaled)
            assert p.norm == name and p.scale == 1.7


def test_scale_applies_to_strict_and_gamma_modes_too():
    for norm in ("strict", "sn-same-gamma"):
        plain, scaled = small_d(), small_d()
        torch.manual_seed(3)
        normalize(plain, norm, input_sizes={"0": 8, "2": 8} if norm == "strict" else None)
        torch.manual_seed(3)
        normalize(scaled, norm, 0.8, input_sizes={"0": 8, "2": 8} if norm == "strict" else None)
        for m_plain, m_scaled in zip(weighted_layers(plain), weighted_layers(scaled)):
            torch.testing.assert_close(m_scaled.weight, 0.8 * m_plain.weight)
            assert float(parametrization_of(m_scaled).multiplier()) == pytest.approx(
                0.8 * float(parametrization_of(m_plain).multiplier()))


# ---------------------------------------------------------------- strict

@pytest.mark.parametrize("make,size", [
    (lambda: nn.Conv2d(2, 3, 3, 1, 1), 5), (lambda: nn.Conv2d(3, 2, 4, 2, 1), 6),
    (lambda: nn.Conv1d(2, 3, 3, padding=1, padding_mode="circular"), 7), (lambda: nn.Conv2d(2, 2, 3, dilation=2), 7),
    (lambda: nn.ConvTranspose2d(3, 2, 4, 2, 1), 3), (lambda: nn.Conv2d(4, 4, 3, padding=1, groups=2), 4),
])
def test_strict_sigma_is_the_conv_operator_norm(make, size):
    torch.manual_seed(0)
    layer = make().double()
    normalize(layer, "strict", n_power_iterations=500)
    x = torch.randn(1, layer.in_channels, *(size,) * (raw_weight(layer).ndim - 2), dtype=DT)
    layer(x)  # materializes the operator's vectors, then 500 power steps
    layer(x)
    p = parametrization_of(layer)
    assert isinstance(p, StrictSpectralNorm) and p.input_size == x.shape[2:]
    raw = raw_weight(layer).detach()
    geom = conv_geometry_of(layer, x.shape[2:])
    dense = float(torch.linalg.matrix_norm(conv_operator_matrix(raw, geom), ord=2))
    exact = float(conv_operator_norm(raw, x.shape[2:], layer.stride, layer.padding, layer.dilation,
                                     layer.padding_mode, geom.transposed, layer.output_padding, layer.groups))
    assert exact == pytest.approx(dense, rel=1e-7)
    est = p.sigma_estimates()
    assert float(est["sigma"]) == pytest.approx(dense, rel=1e-6)
    transposed = isinstance(layer, nn.ConvTranspose2d)
    assert float(est["sigma_fwd"]) == pytest.approx(float(reshape_norms(raw, transposed=transposed)[0]), rel=1e-6)
    layer.eval()
    torch.testing.assert_close(layer.weight, raw / p.sigma)
    # the effective operator is 1-Lipschitz
    w_eff = effective_weight(layer)
    assert float(torch.linalg.matrix_norm(conv_operator_matrix(w_eff, geom), ord=2)) == pytest.approx(1.0, rel=1e-6)


def test_strict_takes_input_size_from_first_forward_or_argument():
    d = normalize(small_d(), "strict")
    with pytest.raises(RuntimeError, match="input size is unknown"):
        _ = d[0].weight
    d(images())
    assert parametrization_of(d[0]).input_size == (8, 8)
    assert parametrization_of(d[2]).input_size == (8, 8)
    assert isinstance(parametrization_of(d[5]), SpectralNorm)  # linear: strict = sn
    assert parametrization_of(d[5]).norm == "strict"
    given = normalize(small_d(), "strict", input_sizes={"0": 8, "2": (8, 8)})
    assert parametrization_of(given[2]).v.shape == (1, 4, 8, 8)
    sigma_given = parametrization_of(given[2]).sigma.clone()
    given(images())
    assert parametrization_of(given[2]).input_size == (8, 8)
    assert float(parametrization_of(given[2]).sigma) == pytest.approx(float(sigma_given), rel=0.05)


@pytest.mark.parametrize("norm", ["sn", "bsn", "strict", "sn-diff-gamma"])
def test_first_forward_under_inference_mode_then_training(norm):
    d = normalize(small_d(), norm).eval()
    with torch.inference_mode():
        d(images())
    d.train()
    train_steps(d, steps=2)
    assert not any(b.is_inference() for b in d.buffers())


def test_strict_conv_transpose_with_output_size_argument():
    torch.manual_seed(0)
    layer = nn.ConvTranspose2d(2, 3, 3, 2, 1).double()
    normalize(layer, "strict", n_power_iterations=300)
    x = torch.randn(1, 2, 4, 4, dtype=DT)
    out = layer(x, output_size=(8, 8))  # output_padding 1 instead of the module's 0
    layer(x, output_size=(8, 8))
    assert out.shape[2:] == (8, 8)
    p = parametrization_of(layer)
    assert p.u.shape == (1, 3, 8, 8)
    exact = conv_operator_norm(raw_weight(layer), 4, 2, 1, transposed=True, output_padding=1, method="dense")
    assert float(p.sigma) == pytest.approx(float(exact), rel=1e-6)


# ---------------------------------------------------------------- gamma

def test_same_gamma_has_one_parameter_and_diff_gamma_one_per_layer():
    same = normalize(small_d(), "sn-same-gamma")
    diff = normalize(small_d(), "sn-diff-gamma")
    gammas_same = [n for n, _ in same.named_parameters() if n.endswith("gamma")]
    gammas_diff = [n for n, _ in diff.named_parameters() if n.endswith("gamma")]
    assert len(gammas_same) == 1
    assert len(gammas_diff) == 3
    for model in (same, diff):
        loss = model(images()).sum()
        loss.backward()
        for name, param in model.named_parameters():
            if name.endswith("gamma"):
                assert param.grad is not None and float(param.grad.abs()) > 0


def test_gamma_multiplies_weight_and_bias():
    plain, gamma = small_d(), small_d()
    torch.manual_seed(2)
    normalize(plain, "sn")
    torch.manual_seed(2)
    normalize(gamma, "sn-diff-gamma")
    for m in weighted_layers(gamma):
        with torch.no_grad():
            parametrization_of(m).gamma.fill_(2.5)
    plain.eval(), gamma.eval()
    for mp, mg in zip(weighted_layers(plain), weighted_layers(gamma)):
        torch.testing.assert_close(mg.weight, 2.5 * mp.weight)
        torch.testing.assert_close(mg.bias, 2.5 * mp.bias)
        torch.testing.assert_close(effective_weight(mg), mg.weight)
        assert float(parametrization_of(mg).multiplier()) == pytest.approx(2.5 / float(parametrization_of(mg).sigma))


# ---------------------------------------------------------------- module behaviour, every mode

NORMALIZING = [n for n in NORMS if n != "none"]


def _normalized(norm: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    scale = 1.3 if norm in ("ssn", "bssn") else 1.0
    return normalize(small_d(), norm, scale)


@pytest.mark.parametrize("norm", NORMALIZING)
def test_multiplier_and_estimates_describe_the_effective_weight(norm):
    d = _normalized(norm)
    train_steps(d)
    d.eval()
    d(images())
    for m in weighted_layers(d):
        p = parametrization_of(m)
        assert p.norm == norm
        torch.testing.assert_close(effective_weight(m), m.weight.detach())
        est = p.sigma_estimates()
        assert "sigma" in est and all(not t.requires_grad and t.ndim == 0 for t in est.values())
        if norm in ("bsn", "bssn"):
            assert {"sigma_fwd", "sigma_bwd"} <= set(est)
        if norm == "strict" and isinstance(m, nn.Conv2d):
            assert float(est["sigma"]) > float(est["sigma_fwd"])  # C6: operator norm above reshape norm


@pytest.mark.parametrize("norm", NORMALIZING)
def test_state_dict_round_trip_into_a_fresh_model(norm):
    trained = _normalized(norm, seed=0)
    train_steps(trained)
    fresh = _normalized(norm, seed=7)
    fresh.load_state_dict(trained.state_dict())
    assert_same_buffers(buffers(fresh), buffers(trained))
    trained.eval(), fresh.eval()
    assert_same_outputs(fresh, trained)
    trained.train(), fresh.train()
    assert_same_outputs(fresh, trained)


@pytest.mark.parametrize("norm", NORMALIZING)
def test_deepcopy_is_independent_and_equal(norm):
    d = _normalized(norm)
    d(images())
    twin = copy.deepcopy(d)
    before = buffers(d)
    train_steps(twin)  # advances the copy's vectors and weights only
    assert_same_buffers(buffers(d), before)
    if norm == "sn-same-gamma":
        gammas = {id(parametrization_of(m).gamma) for m in weighted_layers(twin)}
        assert len(gammas) == 1 and id(parametrization_of(d[0]).gamma) not in gammas
    d2 = copy.deepcopy(d)
    d.eval(), d2.eval()
    assert_same_outputs(d2, d)


@pytest.mark.parametrize("norm", NORMALIZING)
def test_to_float64_converts_buffers_and_runs(norm):
    d = _normalized(norm)
    d(images())
    d = d.to(DT)
    assert all(b.dtype == DT for b in d.buffers())
    train_steps(d, steps=2, dtype=DT)
    for m in weighted_layers(d):
        assert parametrization_of(m).sigma.dtype == DT and m.weight.dtype == DT


@pytest.mark.parametrize("norm", NORMALIZING)
def test_eval_mode_leaves_buffers_unchanged(norm):
    d = _normalized(norm)
    train_steps(d)
    d(images())  # a training forward after the last step: sigma matches the current weights
    before = buffers(d)
    d.eval()
    d(images(seed=3))
    d(images(seed=4))
    assert_same_buffers(buffers(d), before)


def test_a_model_normalized_in_eval_mode_stays_in_eval_mode():
    d = small_d().eval()
    normalize(d, "bsn")
    before = buffers(d)
    d(images())
    assert_same_buffers(buffers(d), before)
    assert not any(m.training for m in d.modules())


@pytest.mark.parametrize("norm", NORMALIZING)
def test_training_forward_advances_the_vectors(norm):
    d = _normalized(norm)
    d(images())
    before = buffers(d)
    d(images())
    changed = [k for k, v in buffers(d).items() if k.split(".")[-1].startswith(("u", "v")) and not torch.equal(v, before[k])]
    assert changed


@pytest.mark.parametrize("norm", ["sn", "bsn", "strict", "sn-same-gamma"])
def test_gradient_penalty_double_backward_is_exact(norm):
    """Double backward through the parametrization, checked against finite differences (eval: u, v fixed)."""
    d = _normalized(norm).to(DT)
    d(images(dtype=DT))
    d.eval()
    x = images(batch=2, dtype=DT).requires_grad_(True)
    name = "2.parametrizations.weight.original"
    w0 = dict(d.named_parameters())[name].detach().clone().requires_grad_(True)

    def penalty(w):
        out = torch.func.functional_call(d, {name: w}, (x,))
        (grad_x,) = torch.autograd.grad(out.sum(), x, create_graph=True)
        return (grad_x.flatten(1).norm(dim=1) - 1).square().mean()

    assert torch.autograd.gradcheck(penalty, (w0,), eps=1e-6, atol=1e-6)
    loss = penalty(dict(d.named_parameters())[name])
    loss.backward()
    assert all(p.grad is not None for n, p in d.named_parameters() if "original" in n and n.startswith("2."))


def test_sn_n_power_iterations_per_training_forward():
    torch.manual_seed(0)
    layer = nn.Conv2d(3, 5, 3).double()
    normalize(layer, "sn", n_power_iterations=3)
    p = parametrization_of(layer)
    u, v = p.u.clone(), p.v.clone()
    mat = raw_weight(layer).detach().flatten(1)
    for _ in range(3):
        u = torch.nn.functional.normalize(mat @ v, dim=0)
        v = torch.nn.functional.normalize(mat.T @ u, dim=0)
    _ = layer.weight
    torch.testing.assert_close(p.u, u)
    torch.testing.assert_close(p.v, v)
    torch.testing.assert_close(p.sigma, u @ mat @ v)


# ---------------------------------------------------------------- selection and bad input

def test_skip_by_name_or_predicate_and_none():
    d = normalize(small_d(), "sn", skip=["5"])
    assert parametrization_of(d[5]) is None and parametrization_of(d[0]) is not None
    d = normalize(small_d(), "bsn", skip=lambda name, m: isinstance(m, nn.Linear))
    assert parametrization_of(d[5]) is None and isinstance(parametrization_of(d[2]), BidirectionalSpectralNorm)
    d = normalize(small_d(), "none")
    assert all(parametrization_of(m) is None for m in weighted_layers(d))


@pytest.mark.parametrize("call,match", [
    (lambda: normalize(small_d(), "sn2"), "valid choices: 'none', 'sn', 'bsn', 'ssn', 'bssn', 'strict'"),
    (lambda: normalize(small_d(), "ssn", scale=0), "scale"),
    (lambda: normalize(small_d(), "bssn", scale=-1.0), "scale"),
    (lambda: normalize(small_d(), "none", scale=1.5), "normalizing mode"),
    (lambda: normalize(small_d(), "sn", n_power_iterations=0), "n_power_iterations"),
    (lambda: normalize(normalize(small_d(), "sn"), "sn"), "already normalized"),
    (lambda: normalize(torch_spectral_norm(nn.Linear(2, 2)), "bsn"), "already normalized"),
    (lambda: normalize(nn.Sequential(nn.ReLU(), nn.BatchNorm1d(3)), "sn"), "no layer to normalize"),
    (lambda: normalize("model", "sn"), "torch.nn.Module"),
    (lambda: normalize(nn.Sequential(nn.LazyLinear(3)), "sn"), "lazy"),
    (lambda: normalize(small_d(), "sn", skip=["conv9"]), "valid: \\['0', '2', '5'\\]"),
    (lambda: normalize(small_d(), "strict", input_sizes={"5": 4}), "not normalized conv layers"),
    (lambda: normalize(small_d(), "sn", input_sizes={"0": 8}), "only to norm 'strict'"),
])
def test_bad_input_is_a_clear_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()
