"""C6: reshape vs operator norm of conv layers, strict vs popular SN -- tiny run, oracles, planted violation."""
from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from analyses import c6_strict as c6
from analysis_helpers import holding_must_checks
from gradscope.linalg import layer_sigmas, weight_layers
from gradscope.models import SNDCGANDiscriminator


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    return c6.run("tiny", tmp_path_factory.mktemp("c6"), seed=0)


def test_tiny_run_holds(result):
    assert len({c.quantity for c in holding_must_checks(result)}) == 5
    table = result.tables["c6_sigma_ratios"]
    convs = table[table["kind"] == "conv"]
    assert (convs["ratio"] >= 1 - 1e-4).all() and (convs["ratio"] <= convs["overlap"] * (1 + 1e-4)).all()
    assert all(0 < p.stat().st_size < 300 * 1024 for p in result.figures) and len(result.figures) == 4


def test_strict_sn_gradients_vanish_more_with_depth(result):
    grads = result.tables["c6_strict_vs_popular"]
    wide = grads.pivot_table(index="layer_index", columns="norm", values="grad_out_norm")
    assert wide["strict"].iloc[0] < 0.5 * wide["sn"].iloc[0]     # input side: much smaller
    assert wide["strict"].iloc[-1] == pytest.approx(wide["sn"].iloc[-1])  # output side: equal
    decay = [c for c in result.checks if "below popular" in c.quantity][0]
    assert decay.verdict == "holds"


def test_random_kernel_ratios_follow_the_prediction(result):
    table = result.tables["c6_sigma_ratios"]
    theory = table[table["state"] == "theory_config"]
    assert ((theory["ratio"] / theory["prediction"] - 1).abs() < 0.12).all()
    assert ((theory["ratio"] / theory["theory_md_value"] - 1).abs() < 0.12).all()
    assert c6.predicted_ratio(64, 64, 3, 1) == pytest.approx(1.5)
    assert c6.predicted_ratio(3, 64, 3, 1) == pytest.approx(3 * (math.sqrt(3) + 8) / (8 + 3 * math.sqrt(3)))


def _dense_operator_norm(conv: nn.Conv2d, size: int) -> float:
    """Oracle: the convolution applied to every unit input, stacked into a matrix, dense SVD."""
    n_in = conv.in_channels * size * size
    basis = torch.eye(n_in, dtype=torch.float64).reshape(n_in, conv.in_channels, size, size)
    out = F.conv2d(basis, conv.weight.detach().double(), stride=conv.stride, padding=conv.padding)
    return float(torch.linalg.svdvals(out.reshape(n_in, -1))[0])


@pytest.mark.parametrize("k, stride, size", [(3, 1, 5), (4, 2, 6), (3, 2, 5)])
def test_layer_sigmas_against_dense_oracle(k, stride, size):
    torch.manual_seed(k + stride)
    conv = nn.Conv2d(2, 3, k, stride, padding=(k - stride) // 2 if k > stride else 0, bias=False)
    layer = weight_layers(conv, torch.zeros(1, 2, size, size))[0]
    sig = layer_sigmas(layer, tol=1e-10)
    assert sig["sigma_op"] == pytest.approx(_dense_operator_norm(conv, size), rel=1e-6)
    w = conv.weight.detach().double()
    assert sig["sigma_fwd"] == pytest.approx(float(torch.linalg.svdvals(w.reshape(3, -1))[0]), rel=1e-9)
    assert sig["sigma_bwd"] == pytest.approx(float(torch.linalg.svdvals(w.transpose(0, 1).reshape(2, -1))[0]),
                                             rel=1e-9)
    assert sig["overlap"] == math.ceil(k / stride)


def test_overlap_counts_windows_by_brute_force():
    for k, s, d in [(3, 1, 1), (4, 2, 1), (3, 2, 1), (5, 2, 2), (3, 3, 1), (2, 3, 1)]:
        conv = nn.Conv2d(1, 1, k, s, dilation=d)
        layer = weight_layers(conv, torch.zeros(1, 1, 20, 20))[0]
        positions = range(0, 20 - d * (k - 1), s)
        count = max(sum(1 for j in positions for t in range(k) if j + t * d == p) for p in range(20))
        assert layer.overlap_factor() == pytest.approx(count), (k, s, d)


def test_too_small_input_is_a_planted_violation_of_the_lower_bound():
    # at 16x16 images conv7 sees a 2x2 input and conv6's 4x4/2 windows start at -1 and 1 on a 4x4 input:
    # no window lies inside the input, and sigma_op < sigma_fwd becomes possible
    model = SNDCGANDiscriminator(16, 3)
    table = pd.DataFrame(c6.ratio_rows(model, torch.zeros(1, 3, 16, 16), "init", 0)).set_index("layer")
    assert not table.loc["conv7 3x3/1", "patch_fits"] and not table.loc["conv6 4x4/2", "patch_fits"]
    assert table.loc[["conv1 3x3/1", "conv5 3x3/1"], "patch_fits"].all()
    low, high = c6.bound_checks(table.reset_index(), "init")
    assert low.must_hold and low.verdict == "violated"
    assert high.verdict == "holds"
    assert (table.loc[table["patch_fits"] & (table["kind"] == "conv"), "ratio"] >= 1 - 1e-4).all()


def test_strict_vs_popular_identity_is_exact_without_biases():
    torch.manual_seed(0)
    model = SNDCGANDiscriminator(24, 3)
    grads = c6.strict_vs_popular(model, torch.randn(4, 3, 24, 24))
    identity = c6.gradient_checks(grads)[0]
    assert identity.verdict == "holds" and identity.measured < 1e-4
    with torch.no_grad():  # biases break positive homogeneity, and with it the identity
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                m.bias.fill_(0.5)
    broken = c6.gradient_checks(c6.strict_vs_popular(model, torch.randn(4, 3, 24, 24)))[0]
    assert broken.verdict == "violated"
