"""Initializations: variances against the formulas, truncation, biases, fans against counting oracles."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from scipy import stats
from torch import nn
from torch.nn.utils import parametrizations

from gradscope.norms import normalize, raw_weight

from gradscope.init import (
    INIT_SCHEMES,
    Fans,
    detect_negative_slope,
    init_,
    layer_fans,
    scheme_variance,
    truncated_normal_variance,
)

# Layers with >= 2^18 weights. The relative standard deviation of a sample variance over n
# i.i.d. draws is sqrt((kurtosis - 1) / n) <= sqrt(2 / n): 0.0028 at n = 2^18, 0.0014 at 2^20.
# A tolerance of 2.5% (>= 9 such deviations) therefore never fails for a correct variance,
# while the fan conventions told apart here (operator vs torch) differ by 25% or more.
LARGE_LAYERS = {
    "linear": lambda: nn.Linear(1024, 1024),
    "conv1d": lambda: nn.Conv1d(256, 512, 3, stride=2),
    "conv2d_s2": lambda: nn.Conv2d(256, 256, 4, stride=2, padding=1),
    "conv2d_groups": lambda: nn.Conv2d(512, 256, 3, groups=2),
    "conv3d": lambda: nn.Conv3d(96, 128, 3, stride=(1, 2, 2)),
    "deconv1d": lambda: nn.ConvTranspose1d(512, 256, 4, stride=2),
    "deconv2d_s2": lambda: nn.ConvTranspose2d(512, 128, 4, stride=2, padding=1),
    "deconv3d": lambda: nn.ConvTranspose3d(128, 96, 3, stride=(1, 1, 2)),
}
REL_TOL = 0.025


def _expected_variance(scheme: str, layer: nn.Module, slope: float = 0.0) -> float:
    fan_in, fan_out = layer_fans(layer)
    # the authors' code truncates its convolutions only (linear and deconv2d: random_normal_initializer)
    untruncated = isinstance(layer, (nn.Linear, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d))
    return {
        "dcgan": 0.02**2 * stats.truncnorm(-2, 2).var(),
        "dcgan-authors": 0.02**2 * (1.0 if untruncated else stats.truncnorm(-2, 2).var()),
        "lecun": 1 / fan_in,
        "xavier": 2 / (fan_in + fan_out),
        "kaiming": 2 / ((1 + slope**2) * fan_in),
    }[scheme]


@pytest.mark.parametrize("scheme", INIT_SCHEMES)
@pytest.mark.parametrize("kind", sorted(LARGE_LAYERS))
def test_empirical_variance_matches_formula(scheme: str, kind: str) -> None:
    layer = LARGE_LAYERS[kind]()
    nn.init.uniform_(layer.bias, 1.0, 2.0)
    init_(layer, scheme, generator=torch.Generator().manual_seed(0))
    w = layer.weight.detach().double()
    assert w.numel() >= 2**18
    assert abs(w.mean().item()) < 6 * math.sqrt(w.var().item() / w.numel())
    assert w.var().item() == pytest.approx(_expected_variance(scheme, layer), rel=REL_TOL)
    assert torch.count_nonzero(layer.bias) == 0


def test_dcgan_is_truncated_at_two_std_and_redraws() -> None:
    layer = nn.Linear(1024, 1024)
    init_(layer, "dcgan", generator=torch.Generator().manual_seed(1))
    w = layer.weight.detach().flatten()
    assert w.abs().max().item() <= 0.04
    # Redrawing (not clipping) leaves no atom at the bounds and fills the tails near them.
    assert (w.abs() >= 0.04 * (1 - 1e-6)).float().mean().item() < 1e-4
    assert (w.abs() > 0.036).float().mean().item() > 0.01
    ks = stats.kstest(w.double().numpy(), stats.truncnorm(-2, 2, scale=0.02).cdf)
    assert ks.pvalue > 1e-3


def test_xavier_is_uniform_within_glorot_bound() -> None:
    layer = nn.Linear(1024, 512)
    init_(layer, "xavier", generator=torch.Generator().manual_seed(2))
    bound = math.sqrt(6 / (1024 + 512))
    w = layer.weight.detach()
    assert w.abs().max().item() <= bound
    assert w.abs().max().item() > 0.999 * bound


def test_truncated_normal_variance_matches_scipy() -> None:
    for t in (0.5, 1.0, 2.0, 3.0):
        assert truncated_normal_variance(0.3, t) == pytest.approx(0.09 * stats.truncnorm(-t, t).var(), rel=1e-12)


@pytest.mark.parametrize(
    ("layer", "operator", "torch_convention"),
    [
        (nn.Linear(7, 5), (7, 5), (7, 5)),
        (nn.Conv1d(3, 8, 5), (15, 40), (15, 40)),
        (nn.Conv2d(64, 128, 4, stride=2, padding=1), (64 * 16, 128 * 16 / 4), (64 * 16, 128 * 16)),
        (nn.Conv2d(6, 4, (3, 5), stride=(1, 2), groups=2), (3 * 15, 2 * 15 / 2), (3 * 15, 4 * 15)),
        (nn.Conv2d(4, 4, 3, dilation=2), (36, 36), (36, 36)),
        (nn.Conv3d(2, 3, 2, stride=2), (16, 3), (16, 24)),
        (nn.ConvTranspose1d(10, 6, 4, stride=2), (20, 24), (24, 40)),
        (nn.ConvTranspose2d(512, 256, 4, stride=2, padding=1), (512 * 4, 256 * 16), (256 * 16, 512 * 16)),
        (nn.ConvTranspose2d(64, 3, 3, stride=1, padding=1), (64 * 9, 27), (27, 64 * 9)),
        (nn.ConvTranspose2d(6, 4, 3, stride=2, groups=2), (3 * 9 / 4, 2 * 9), (2 * 9, 6 * 9)),
        (nn.ConvTranspose3d(4, 2, (2, 3, 4), stride=(2, 1, 2)), (4 * 24 / 4, 2 * 24), (2 * 24, 4 * 24)),
    ],
)
def test_fans_hand_computed(layer: nn.Module, operator: tuple, torch_convention: tuple) -> None:
    assert layer_fans(layer) == Fans(*map(float, operator))
    assert layer_fans(layer, convention="torch") == Fans(*map(float, torch_convention))
    assert layer_fans(layer, "torch") == Fans(*map(float, nn.init._calculate_fan_in_and_fan_out(layer.weight)))


def _central_mean(counts: torch.Tensor, periods: tuple[int, ...]) -> float:
    """Mean over a central window spanning whole stride periods (no border effects)."""
    index = [0, 0]
    for size, period in zip(counts.shape[2:], periods):
        start = size // 2 - size // 2 % period
        index.append(slice(start, start + 2 * period))
    return counts[tuple(index)].double().mean().item()


@pytest.mark.parametrize(
    "layer",
    [
        nn.Conv2d(4, 6, 3, stride=2),
        nn.Conv2d(4, 6, (4, 3), stride=(2, 3), groups=2, dilation=(1, 2)),
        nn.Conv1d(3, 5, 5, stride=3),
        nn.ConvTranspose2d(4, 6, 4, stride=2, padding=1),
        nn.ConvTranspose2d(6, 4, 3, stride=(2, 1), groups=2),
        nn.ConvTranspose1d(3, 5, 5, stride=2, dilation=2),
    ],
)
def test_operator_fans_count_connections(layer: nn.Module) -> None:
    """Oracle: with all-ones weights and inputs, an output holds its number of inputs (fan_in),
    and d(sum of outputs)/d(input) holds the number of outputs an input feeds (fan_out)."""
    dims = layer.weight.dim() - 2
    transposed = isinstance(layer, (nn.ConvTranspose1d, nn.ConvTranspose2d))
    x = torch.ones(1, layer.in_channels, *[48] * dims, dtype=torch.float64, requires_grad=True)
    ones = torch.ones_like(layer.weight, dtype=torch.float64)
    kwargs = dict(stride=layer.stride, padding=layer.padding, dilation=layer.dilation, groups=layer.groups)
    op = {(False, 1): F.conv1d, (False, 2): F.conv2d, (True, 1): F.conv_transpose1d, (True, 2): F.conv_transpose2d}
    y = op[(transposed, dims)](x, ones, **kwargs)
    y.sum().backward()
    periods = tuple(layer.stride)
    fan_in, fan_out = layer_fans(layer)
    assert _central_mean(y.detach(), periods) == pytest.approx(fan_in, rel=1e-12)
    assert _central_mean(x.grad, periods) == pytest.approx(fan_out, rel=1e-12)


def test_kaiming_reads_leaky_relu_slope() -> None:
    model = nn.Sequential(nn.Linear(1024, 1024), nn.LeakyReLU(0.2), nn.Linear(1024, 1))
    assert detect_negative_slope(model) == 0.2
    init_(model, "kaiming", generator=torch.Generator().manual_seed(3))
    assert model[0].weight.var().item() == pytest.approx(2 / (1.04 * 1024), rel=REL_TOL)
    init_(model, "kaiming", negative_slope=1.0, generator=torch.Generator().manual_seed(3))
    assert model[0].weight.var().item() == pytest.approx(1 / 1024, rel=REL_TOL)
    relu_model = nn.Sequential(nn.Linear(1024, 1024), nn.ReLU())
    assert detect_negative_slope(relu_model) == 0.0
    init_(relu_model, "kaiming", generator=torch.Generator().manual_seed(3))
    assert relu_model[0].weight.var().item() == pytest.approx(2 / 1024, rel=REL_TOL)


def test_mixed_slopes_need_an_explicit_slope() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.LeakyReLU(0.1), nn.Linear(4, 4), nn.LeakyReLU(0.2))
    with pytest.raises(ValueError, match="negative_slope"):
        init_(model, "kaiming")
    init_(model, "kaiming", negative_slope=0.1)
    init_(model, "lecun")  # the slope only matters to kaiming


def test_parametrized_layer_initializes_raw_weight() -> None:
    layer = parametrizations.spectral_norm(nn.Conv2d(256, 256, 4, stride=2))
    init_(layer, "lecun", generator=torch.Generator().manual_seed(4))
    raw = layer.parametrizations.weight.original.detach()
    assert raw.var().item() == pytest.approx(1 / (256 * 16), rel=REL_TOL)
    assert torch.count_nonzero(layer.bias) == 0


def test_gradscope_normalized_layer_initializes_raw_weight() -> None:
    model = normalize(nn.Sequential(nn.ConvTranspose2d(512, 256, 4, stride=2), nn.ReLU()), norm="bsn")
    init_(model, "kaiming", generator=torch.Generator().manual_seed(6))
    raw = raw_weight(model[0]).detach()
    assert raw.var().item() == pytest.approx(2 / (512 * 16 / 4), rel=REL_TOL)


def test_leaves_other_modules_and_is_reproducible() -> None:
    def build() -> nn.Module:
        torch.manual_seed(99)
        return nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8), nn.ConvTranspose2d(8, 4, 4, stride=2))

    a, b = build(), build()
    nn.init.constant_(a[1].weight, 3.0)
    init_(a, "xavier", generator=torch.Generator().manual_seed(5))
    init_(b, "xavier", generator=torch.Generator().manual_seed(5))
    assert torch.equal(a[0].weight, b[0].weight) and torch.equal(a[2].weight, b[2].weight)
    assert torch.all(a[1].weight == 3.0)
    assert init_(a, "dcgan") is a


def test_scheme_variance_formulas() -> None:
    fans = Fans(300.0, 100.0)
    assert scheme_variance("lecun", fans) == pytest.approx(1 / 300)
    assert scheme_variance("xavier", fans) == pytest.approx(2 / 400)
    assert scheme_variance("kaiming", fans, 0.1) == pytest.approx(2 / (1.01 * 300))
    assert scheme_variance("dcgan", fans) == pytest.approx(0.02**2 * 0.77374, rel=1e-4)


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="'dcgan', 'lecun', 'xavier', 'kaiming', 'dcgan-authors'"):
        init_(nn.Linear(2, 2), "orthogonal")
    with pytest.raises(ValueError, match="no layer to initialize"):
        init_(nn.Sequential(nn.ReLU()), "lecun")
    with pytest.raises(ValueError, match="unsupported layer type BatchNorm2d"):
        layer_fans(nn.BatchNorm2d(3))
    with pytest.raises(ValueError, match="'operator', 'torch'"):
        layer_fans(nn.Linear(2, 2), convention="tf")
    with pytest.raises(ValueError, match="negative_slope"):
        init_(nn.Linear(2, 2), "kaiming", negative_slope=-0.1)


# --- dcgan-authors: the authors' TF initializers (truncated convs, untruncated linear / deconv) --------------

def test_dcgan_authors_truncates_convs_only() -> None:
    from gradscope.models import SNDCGANDiscriminator, SNDCGANGenerator

    gen = torch.Generator().manual_seed(5)
    D, G = init_(SNDCGANDiscriminator(32), "dcgan-authors", generator=gen), init_(SNDCGANGenerator(32),
                                                                                  "dcgan-authors", generator=gen)
    untruncated = [D.linear, G.stem[0], *(m for m in G.modules() if isinstance(m, nn.ConvTranspose2d))]
    convs = [m for m in D.modules() if isinstance(m, nn.Conv2d)]
    assert len(untruncated) == 6 and len(convs) == 7
    tail = 2 * stats.norm.sf(2.0)  # P(|w| > 2 std) of the untruncated normal: 0.0455
    for layer in untruncated:
        w = layer.weight.detach().double().flatten()
        beyond = (w.abs() > 0.04).double().mean().item()
        n = w.numel()
        # binomial fraction within 6 standard errors of the normal's tail mass, and present at all
        assert beyond > 0 and abs(beyond - tail) < 6 * math.sqrt(tail * (1 - tail) / n) + 1e-12, (layer, beyond)
        assert stats.kstest(w.numpy(), stats.norm(scale=0.02).cdf).pvalue > 1e-4
    for layer in convs:
        w = layer.weight.detach().double().flatten()
        assert w.abs().max().item() <= 0.04
        assert stats.kstest(w.numpy(), stats.truncnorm(-2, 2, scale=0.02).cdf).pvalue > 1e-4
    assert all(not m.bias.any() for m in [*untruncated, *convs])


def test_dcgan_authors_variance_needs_the_layer() -> None:
    assert scheme_variance("dcgan-authors", Fans(4.0, 2.0), layer=nn.Linear(4, 2)) == pytest.approx(0.02**2)
    assert scheme_variance("dcgan-authors", Fans(4.0, 2.0), layer=nn.Conv2d(1, 2, 2)) == pytest.approx(
        0.02**2 * stats.truncnorm(-2, 2).var(), rel=1e-12)
    with pytest.raises(ValueError, match="pass layer="):
        scheme_variance("dcgan-authors", Fans(4.0, 2.0))


def test_dcgan_is_unchanged_by_the_authors_variant() -> None:
    model = nn.Sequential(nn.Linear(64, 32), nn.Conv2d(3, 8, 3), nn.ConvTranspose2d(8, 3, 4))
    init_(model, "dcgan", generator=torch.Generator().manual_seed(9))
    squares = [float(p.detach().double().pow(2).sum()) for p in model.parameters() if p.dim() > 1]
    # pinned from the code before dcgan-authors existed: the same draws, truncated everywhere
    assert squares == pytest.approx([0.6340245240107844, 0.07257290390159084, 0.11926187761502972], rel=1e-12)
    assert all(p.abs().max() <= 0.04 for p in model.parameters() if p.dim() > 1)
