"""C1: gradient bounds with operator norms -- tiny run, hand-computed oracles, planted violations."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from analyses import c1_exploding as c1
from analyses.plain_networks import normalized_copy, plain_discriminator
from analysis_helpers import holding_must_checks
from gradscope.linalg import conv_geometry_of, conv_operator_matrix
from gradscope.models import MLPDiscriminator
from gradscope.norms import normalize


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    return c1.run("tiny", tmp_path_factory.mktemp("c1"), seed=0)


def test_tiny_run_bounds_hold_and_planted_cases_are_violated(result):
    assert len(holding_must_checks(result)) >= 6
    planted = [c for c in result.checks if c.quantity.startswith("planted:")]
    assert len(planted) == 3 and all(c.verdict == "violated" and not c.must_hold for c in planted)
    assert set(result.tables["c1_samples"]["state"]) == {"none", "strict", "popular", "trained-sn"}
    assert all(0 < p.stat().st_size < 300 * 1024 for p in result.figures) and len(result.figures) == 2


def test_popular_sn_inflates_the_sndcgan_bound(result):
    samples = result.tables["c1_samples"]
    popular = samples[(samples["net"] == "sndcgan") & (samples["state"] == "popular")]
    strict = samples[(samples["net"] == "sndcgan") & (samples["state"] == "strict")]
    assert popular["lipschitz_op"].iloc[0] > 1.2
    assert strict["lipschitz_op"].iloc[0] == pytest.approx(1.0, rel=1e-6)
    # measured / bound does not depend on per-layer scale (positive homogeneity)
    assert popular["ratio_x"].to_numpy() == pytest.approx(strict["ratio_x"].to_numpy(), rel=1e-8)


def test_linear_discriminator_meets_both_bounds_with_equality():
    # D(x) = w^T x: grad_x = w and grad_w = x, so both bounds are attained.
    net = nn.Sequential(nn.Linear(5, 1, bias=False)).to(torch.float64)
    x = torch.randn(3, 5, dtype=torch.float64)
    samples, layers = c1.measure(net, {"real": x})
    assert samples["ratio_x"].to_numpy() == pytest.approx(1.0, rel=1e-12)
    assert layers["ratio"].to_numpy() == pytest.approx(1.0, rel=1e-12)


def test_constant_kernel_breaks_the_unshared_bound_by_nearly_k():
    net, x = c1.constant_conv_net(size=12)
    _, layers = c1.measure(net, {"constant": x})
    first = layers[layers["layer_index"] == 1].iloc[0]
    assert first["overlap"] == 3.0
    assert 2.0 < first["ratio_paper"] <= 3.0 and first["ratio"] <= 1.0


def test_strict_copy_has_unit_operator_norms_by_dense_svd():
    net = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, bias=False), nn.LeakyReLU(0.1),
                        nn.Conv2d(3, 2, 4, stride=2, padding=1, bias=False), nn.Flatten(),
                        nn.Linear(2 * 3 * 3, 1, bias=False)).to(torch.float64)
    x = torch.randn(1, 2, 6, 6, dtype=torch.float64)
    strict, sigmas = normalized_copy(net, x, "strict")
    for module, size in ((strict[0], 6), (strict[2], 6)):
        dense = conv_operator_matrix(module.weight.detach(), conv_geometry_of(module, size))
        assert float(torch.linalg.matrix_norm(dense, ord=2)) == pytest.approx(1.0, rel=1e-7)
    assert [s["sigma_op"] for s in sigmas] == pytest.approx([1.0, 1.0, 1.0], rel=1e-7)


def test_plain_copy_computes_what_the_normalized_model_computes():
    torch.manual_seed(0)
    model = MLPDiscriminator(hidden=16)
    normalize(model, norm="sn")
    x = torch.randn(6, 2)
    model.train()
    model(x)  # advance the power iteration once; the plain copy must use the same sigma
    model.eval()
    with torch.no_grad():
        expected = model(x).double()
        plain = plain_discriminator(model, biases=True)
        assert plain(x.double()).detach() == pytest.approx(expected, abs=1e-5)
    assert all(m.bias is None for m in plain_discriminator(model).modules() if isinstance(m, nn.Linear))
    with pytest.raises(ValueError, match="nn.Module"):
        plain_discriminator("not a model")
    with pytest.raises(ValueError, match="valid choices"):
        normalized_copy(plain_discriminator(model), x.double(), "reshape")
