"""C2: the raw-weight gradient formula and Euler's identity against float64 autograd; tiny run."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from analyses import c2_raw_gradient as c2
from analysis_helpers import holding_must_checks


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    return c2.run("tiny", tmp_path_factory.mktemp("c2"), seed=0)


def test_tiny_run_holds(result):
    assert len(holding_must_checks(result)) == 5
    table = result.tables["c2_layers"]
    assert table["formula_error"].max() < 1e-9 and (table["ratio_paper"][table["net"] == "mlp"] <= 1).all()
    assert len(result.tables["c2_sigma_history"]) > 0
    assert all(0 < p.stat().st_size < 300 * 1024 for p in result.figures)


@pytest.mark.parametrize("shape", [(4, 6), (5, 3, 3, 3)])
def test_formula_matches_autograd_through_the_svd(shape):
    torch.manual_seed(1)
    raw = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    x = torch.randn(2, *shape[1:], dtype=torch.float64)

    def D(weight):  # a bias-free leaky-ReLU net that is not linear in the weight's input
        h = torch.nn.functional.leaky_relu(x.flatten(1) @ weight.flatten(1).T, 0.1)
        return h.pow(2).sum()  # not homogeneous of degree 1: the formula must not rely on it

    w_bar = c2.spectral_normalize(raw)
    (auto,) = torch.autograd.grad(D(w_bar), raw)
    leaf = w_bar.detach().requires_grad_(True)
    (G,) = torch.autograd.grad(D(leaf), leaf)
    assert c2.raw_gradient_formula(G, raw.detach()) == pytest.approx(auto, abs=1e-12, rel=1e-10)


def test_euler_identity_on_a_random_leaky_net():
    torch.manual_seed(2)
    net = nn.Sequential(nn.Linear(3, 7, bias=False), nn.LeakyReLU(0.2), nn.Linear(7, 5, bias=False), nn.ReLU(),
                        nn.Linear(5, 1, bias=False)).double()
    x = torch.randn(1, 3, dtype=torch.float64)
    value = net(x).sum()
    grads = torch.autograd.grad(value, [m.weight for m in net if isinstance(m, nn.Linear)])
    for module, G in zip([m for m in net if isinstance(m, nn.Linear)], grads):
        assert float((G * module.weight).sum().detach()) == pytest.approx(float(value.detach()), rel=1e-12)


def test_top_singular_pair_rejects_tensors():
    with pytest.raises(ValueError, match="matrix"):
        c2.top_singular_pair(torch.zeros(2, 2, 2))
