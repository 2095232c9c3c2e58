"""The authors' power-iteration schedule against a float64 transcription of its formulas; torch's stays as it was.

Reference (fjxmlzn/BSN ``sn.py`` / ``gan.py``, THEORY.md): cold ``u``; every forward
``v = unit(W^T u)``, ``u' = unit(W v)``, ``sigma = u'^T W v`` with gradients through
``v`` and ``u'`` and ``u'`` not stored; after each optimizer step ``u <- unit(W unit(W^T u))``
on the updated weights; ``unit(x) = x / (||x|| + eps)``.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gradscope.norms import (
    POWER_SCHEDULES,
    advance_power_iteration,
    normalize,
    parametrization_of,
    raw_weight,
)

EPS = 1e-12
TIGHT = dict(rtol=1e-10, atol=1e-12)

LAYERS = {
    "linear": (lambda: nn.Linear(5, 3), lambda: torch.randn(4, 5, dtype=torch.float64)),
    "conv2d": (lambda: nn.Conv2d(2, 4, 3, padding=1), lambda: torch.randn(3, 2, 5, 5, dtype=torch.float64)),
    "deconv2d": (lambda: nn.ConvTranspose2d(3, 2, 4, stride=2, padding=1),
                 lambda: torch.randn(2, 3, 3, 3, dtype=torch.float64)),
}


def _unit(x):
    return x / (x.norm() + EPS)


def _matrix(weight, transposed: bool, side: str = "fwd"):
    """The reshape of a weight: output channels first (``fwd``) or input channels first (``bwd``)."""
    out_first = weight.transpose(0, 1) if transposed else weight
    chosen = out_first if side == "fwd" else out_first.transpose(0, 1)
    return chosen.reshape(chosen.shape[0], -1)


def _ref_sigma(mat, u):
    v = _unit(mat.t() @ u)
    wv = mat @ v
    return _unit(wv) @ wv


def _ref_advance(mat, u):
    mat = mat.detach()
    return _unit(mat @ _unit(mat.t() @ u))


def _apply(layer: nn.Module, weight, bias, x):
    if isinstance(layer, nn.Linear):
        return F.linear(x, weight, bias)
    if isinstance(layer, nn.ConvTranspose2d):
        return F.conv_transpose2d(x, weight, bias, layer.stride, layer.padding)
    return F.conv2d(x, weight, bias, layer.stride, layer.padding)


def _vectors(param, sides):
    return {side: (getattr(param, f"u_{side}") if hasattr(param, f"u_{side}") else param.u) for side in sides}


@pytest.mark.parametrize("norm", ["sn", "bsn"])
@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_authors_schedule_matches_a_float64_reference_over_steps(kind: str, norm: str) -> None:
    make, inputs = LAYERS[kind]
    torch.manual_seed(0)
    layer = make().double()
    transposed = isinstance(layer, nn.ConvTranspose2d)
    sides = ("fwd", "bwd") if norm == "bsn" and kind != "linear" else ("fwd",)
    torch.manual_seed(1)
    rng = torch.get_rng_state()
    normalize(layer, norm, power_schedule="authors")
    param = parametrization_of(layer)
    # cold start: the stored u are the raw random draws (as torch draws them, u then v per side), no warm-up
    torch.set_rng_state(rng)
    for side, u in _vectors(param, sides).items():
        mat = _matrix(raw_weight(layer).detach(), transposed, side)
        expected = F.normalize(torch.empty(mat.shape[0], dtype=torch.float64).normal_(0, 1), dim=0, eps=EPS)
        torch.empty(mat.shape[1], dtype=torch.float64).normal_(0, 1)  # the v draw
        torch.testing.assert_close(u, expected, rtol=0, atol=0)

    w_ref = raw_weight(layer).detach().clone().requires_grad_(True)
    b_ref = layer.bias.detach().clone().requires_grad_(True)
    u_ref = {side: u.clone() for side, u in _vectors(param, sides).items()}
    opt = torch.optim.SGD(layer.parameters(), lr=0.5)
    for step in range(4):
        x, cotangent = inputs(), None
        out = layer(x)
        cotangent = torch.randn_like(out)
        (out * cotangent).sum().backward()

        sigmas = [_ref_sigma(_matrix(w_ref, transposed, side), u_ref[side]) for side in sides]
        sigma_ref = sum(sigmas) / len(sigmas)
        out_ref = _apply(layer, w_ref / sigma_ref, b_ref, x)
        (out_ref * cotangent).sum().backward()
        torch.testing.assert_close(out, out_ref, **TIGHT)
        torch.testing.assert_close(param.sigma, sigma_ref.detach(), **TIGHT)
        torch.testing.assert_close(raw_weight(layer).grad, w_ref.grad, **TIGHT)

        # more forwards, in training or eval mode, take the same unstored step: same output, u unmoved
        stored = {side: u.clone() for side, u in _vectors(param, sides).items()}
        layer.eval()
        with torch.no_grad():
            torch.testing.assert_close(layer(x), out.detach(), **TIGHT)
        layer.train()
        layer(x)
        assert all(torch.equal(u, stored[side]) for side, u in _vectors(param, sides).items()), step

        opt.step()
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            w_ref -= 0.5 * w_ref.grad
            b_ref -= 0.5 * b_ref.grad
        w_ref.grad = b_ref.grad = None
        assert advance_power_iteration(layer) == 1
        u_ref = {side: _ref_advance(_matrix(w_ref, transposed, side), u_ref[side]) for side in sides}
        for side, u in _vectors(param, sides).items():
            torch.testing.assert_close(u, u_ref[side], **TIGHT)


def test_gradients_flow_through_the_iteration_unlike_torchs_schedule() -> None:
    """Same W, same vectors, same sigma value: torch's schedule (u, v constants) gives another dL/dW."""
    torch.manual_seed(3)
    authors = normalize(nn.Conv2d(3, 6, 3, padding=1).double(), "sn", power_schedule="authors")
    torch_style = normalize(nn.Conv2d(3, 6, 3, padding=1).double(), "sn")
    torch_style.load_state_dict(authors.state_dict())
    pa, pt = parametrization_of(authors), parametrization_of(torch_style)
    mat = _matrix(raw_weight(authors).detach(), False)
    with torch.no_grad():  # torch's eval forward uses the stored u, v as they are: give it the authors' step
        v = _unit(mat.t() @ pa.u)
        pt.v.copy_(v)
        pt.u.copy_(_unit(mat @ v))
    torch_style.eval()  # no power step: sigma = u^T W v with the vectors above, differentiated through W only
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    out_a, out_t = authors(x), torch_style(x)
    torch.testing.assert_close(out_a, out_t, rtol=1e-9, atol=1e-12)
    cotangent = torch.randn_like(out_a)
    (out_a * cotangent).sum().backward()
    (out_t * cotangent).sum().backward()
    grad_a, grad_t = raw_weight(authors).grad, raw_weight(torch_style).grad
    relative = ((grad_a - grad_t).norm() / grad_t.norm()).item()
    assert relative > 1e-3, relative  # from a cold u the iteration's own gradient is far from negligible
    torch.testing.assert_close(authors.bias.grad, torch_style.bias.grad, rtol=1e-9, atol=1e-12)


def test_torch_schedule_is_the_default_bit_for_bit() -> None:
    runs = []
    for kwargs in ({}, {"power_schedule": "torch"}):
        torch.manual_seed(0)
        d = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.LeakyReLU(0.1), nn.Flatten(), nn.Linear(8 * 16, 1))
        normalize(d, "bssn", scale=1.3, **kwargs)
        opt = torch.optim.Adam(d.parameters(), 1e-2)
        for _ in range(3):
            d(torch.randn(4, 3, 4, 4)).mean().backward()
            opt.step()
            opt.zero_grad()
        assert advance_power_iteration(d) == 0  # the torch schedule advances inside its forwards
        runs.append(d.state_dict())
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


@pytest.mark.parametrize("norm", ["ssn", "bssn", "sn-same-gamma", "sn-diff-gamma"])
def test_scaled_and_gamma_norms_take_the_schedule(norm: str) -> None:
    torch.manual_seed(0)
    d = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 1)).double()
    normalize(d, norm, scale=1.5 if norm in ("ssn", "bssn") else 1.0, power_schedule="authors")
    params = [parametrization_of(m) for m in (d[0], d[3])]
    assert all(p.power_schedule == "authors" for p in params)
    x = torch.randn(3, 2, 6, 6, dtype=torch.float64)
    d(x).sum().backward()
    conv = params[0]
    mat = _matrix(raw_weight(d[0]).detach(), False)
    sigma = _ref_sigma(mat, conv.u_fwd if norm == "bssn" else conv.u)
    if norm == "bssn":
        sigma = (sigma + _ref_sigma(_matrix(raw_weight(d[0]).detach(), False, "bwd"), conv.u_bwd)) / 2
    torch.testing.assert_close(conv.sigma, sigma, **TIGHT)
    if conv.gamma is not None:
        assert conv.gamma.grad is not None
    assert advance_power_iteration(d) == 2


def test_schedule_errors_are_one_line() -> None:
    with pytest.raises(ValueError, match="applies to the reshape norms only") as exc:
        normalize(nn.Conv2d(1, 2, 3), "strict", power_schedule="authors")
    assert "\n" not in str(exc.value)
    with pytest.raises(ValueError, match="unknown power_schedule 'tf'; valid choices: 'torch', 'authors'"):
        normalize(nn.Linear(2, 2), "sn", power_schedule="tf")
    layer = normalize(nn.Linear(2, 2), "sn")
    with pytest.raises(ValueError, match="advance_ belongs to power_schedule 'authors'"):
        parametrization_of(layer).advance_(raw_weight(layer))
    assert POWER_SCHEDULES == ("torch", "authors")


def test_trainer_advances_once_per_d_update_after_the_optimizer_step(tmp_path) -> None:
    from gradscope.data import load_dataset
    from gradscope.norms import SpectralParametrization
    from gradscope.train import RunConfig
    from gradscope.train.distributed import DistContext
    from gradscope.train.loop import Trainer

    cfg = RunConfig(dataset="digits", image_size=8, batch_size=4, n_dis=2, eval_every=0, quiet=True,
                    power_schedule="authors", workers=0)
    trainer = Trainer(cfg, load_dataset("digits", image_size=8), device=torch.device("cpu"),
                      context=DistContext(), run_dir=tmp_path)
    layers = [(m, parametrization_of(m)) for m in trainer.D.modules() if parametrization_of(m) is not None]
    assert layers and all(p.power_schedule == "authors" for _, p in layers)
    first_layer, first = layers[0]
    u_before = first.u.clone()
    trainer._d_update(1)
    # u moved by one step on the weights *after* the optimizer step
    expected = _ref_advance(raw_weight(first_layer).reshape(first.u.numel(), -1).float(), u_before)
    torch.testing.assert_close(first.u, expected, rtol=1e-5, atol=1e-6)
    calls = []
    for module in trainer.D.modules():
        if isinstance(module, SpectralParametrization):
            module.register_forward_hook(lambda m, args, out: calls.append(m.training))
    state = {k: v.clone() for k, v in trainer.D.state_dict().items()}
    trainer._g_update(1)
    assert calls == [False] * len(layers)  # the G step's forward takes its unstored step (eval mode)
    assert all(torch.equal(state[k], v) for k, v in trainer.D.state_dict().items() if "sigma" not in k)
    assert all(p.grad is None for p in trainer.D.parameters())
