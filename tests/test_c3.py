"""C3: HVP Hessian norms against the dense Hessian, the derived curvature identity and bounds; tiny run."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from analyses import c3_curvature as c3
from analyses.plain_networks import plain_discriminator
from analysis_helpers import holding_must_checks
from gradscope.linalg import hessian_vector_product


def _small_net(seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(3, 5, bias=False), nn.LeakyReLU(0.1), nn.Linear(5, 4, bias=False), nn.LeakyReLU(0.1),
                        nn.Linear(4, 1, bias=False))
    return plain_discriminator(net, raw=True), torch.randn(3, 3, dtype=torch.float64)


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    return c3.run("tiny", tmp_path_factory.mktemp("c3"), seed=0)


def test_tiny_run_holds_and_the_gap_free_constant_fails_for_exact_sn(result):
    assert len(holding_must_checks(result)) == 6
    planted = [c for c in result.checks if c.quantity.startswith("planted:")]
    assert len(planted) == 1 and planted[0].verdict == "violated" and planted[0].measured > 10
    table = result.tables["c3_hessian"]
    assert table["converged"].all() and set(table["state"]) == {"init", "trained-sn"}
    assert all(0 < p.stat().st_size < 300 * 1024 for p in result.figures)


@pytest.mark.parametrize("mode", c3.SN_MODES)
@pytest.mark.parametrize("layer", ["0", "2", "4"])
def test_hvp_norm_matches_the_dense_hessian(mode, layer):
    raw_net, x = _small_net()
    normalized, _ = c3.normalized_copy(raw_net, x[:1], "popular")
    raw = raw_net[int(layer)].weight.detach()
    objective = c3.layer_objective(normalized, layer, raw, x, mode)
    eigenvalues = torch.linalg.eigvalsh(c3.dense_hessian(objective, raw))
    res = c3.layer_hessian(objective, raw, tol=1e-10)
    norm = float(eigenvalues.abs().max())
    assert res.converged and res.norm == pytest.approx(norm, rel=1e-6)
    # The sign too: an extreme eigenvalue of that magnitude (the last layer has an exact +-lambda pair).
    extremes = [float(e) for e in eigenvalues[[0, -1]] if abs(abs(float(e)) - norm) <= 1e-6 * norm]
    assert any(res.value == pytest.approx(e, rel=1e-6) for e in extremes)


def test_power_sn_curvature_identity_against_autograd():
    # E^T H E = (-2 a <G, E> + 2 a^2 D) / sigma^2 with a = u^T E v, u and v held constant.
    raw_net, x = _small_net(3)
    normalized, _ = c3.normalized_copy(raw_net, x[:1], "popular")
    raw = raw_net[0].weight.detach()
    objective = c3.layer_objective(normalized, "0", raw, x, "power")
    sigma, u, v = c3.top_singular_pair(raw)
    point = raw.clone().requires_grad_(True)
    value = objective(point)
    leaf = normalized[0].weight
    (G,) = torch.autograd.grad(normalized(x).mean(), leaf)
    hvp = hessian_vector_product(torch.autograd.grad(value, point, create_graph=True)[0], point)
    for seed in range(3):
        E = torch.randn(raw.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        E /= torch.linalg.vector_norm(E)
        a = u @ E @ v
        expected = (-2 * a * (G * E).sum() + 2 * a**2 * value) / sigma**2
        assert float((E * hvp(E)).sum()) == pytest.approx(float(expected.detach()), rel=1e-9, abs=1e-14)


def test_bounds_hold_for_both_modes_on_random_nets():
    for seed in range(3):
        raw_net, x = _small_net(seed)
        table = c3.curvature_rows(raw_net, x, c3.SN_MODES, dense=True)
        assert (table["ratio_data"] <= 1 + 1e-9).all() and (table["ratio"] <= 1 + 1e-9).all()
        assert (table["hessian_norm"] - table["hessian_norm_dense"]).abs().max() < 1e-8


def test_exact_sn_curvature_grows_as_the_gap_closes():
    norms = []
    for gap in (1e-1, 1e-2, 1e-3):
        net, raw, x = c3.near_degenerate_net(gap)
        norms.append(c3.layer_hessian(c3.layer_objective(net, "0", raw, x, "exact"), raw).norm)
    assert norms[1] > 5 * norms[0] and norms[2] > 5 * norms[1]
    with pytest.raises(ValueError, match="valid choices"):
        c3.layer_objective(net, "0", raw, x, "svd")
