"""Model zoo: the SNDCGAN layer table of THEORY.md, shapes, parameter counts, gradients, bad sizes."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from gradscope.models import (
    ARCHS,
    LatentGenerator,
    MLPDiscriminator,
    MLPGenerator,
    ResNetDiscriminator,
    ResNetGenerator,
    SNDCGANDiscriminator,
    SNDCGANGenerator,
    build_pair,
)
from gradscope.norms import NORMS, SCALED_NORMS, normalize, parametrization_of

# THEORY.md, "Reference setup": (kernel, stride, out channels) of the SNDCGAN discriminator.
THEORY_D = [(3, 1, 64), (4, 2, 64), (3, 1, 128), (4, 2, 128), (3, 1, 256), (4, 2, 256), (3, 1, 512)]
THEORY_G = [(4, 2, 256), (4, 2, 128), (4, 2, 64), (3, 1, 3)]


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _conv_outputs(model: nn.Module, x: torch.Tensor, types: tuple[type, ...] = (nn.Conv2d,)) -> list[tuple]:
    sizes: list[tuple] = []
    hooks = [m.register_forward_hook(lambda m, i, o: sizes.append(tuple(o.shape[1:])))
             for m in model.modules() if isinstance(m, types)]
    model(x)
    for h in hooks:
        h.remove()
    return sizes


def test_sndcgan_discriminator_matches_theory_table() -> None:
    D = SNDCGANDiscriminator()
    convs = [m for m in D.modules() if isinstance(m, nn.Conv2d)]
    assert [(m.kernel_size[0], m.stride[0], m.out_channels) for m in convs] == THEORY_D
    assert all(m.kernel_size[0] == m.kernel_size[1] and m.stride[0] == m.stride[1] for m in convs)
    assert [m.in_channels for m in convs] == [3, 64, 64, 128, 128, 256, 256]
    assert all(m.padding == (1, 1) and m.bias is not None for m in convs)
    slopes = [m.negative_slope for m in D.modules() if isinstance(m, nn.LeakyReLU)]
    assert slopes == [0.1] * 7
    linears = [m for m in D.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(4 * 4 * 512, 1)]
    # Leaky ReLU follows every conv, including the last one before the linear layer.
    order = [type(m) for m in D.features]
    assert order == [nn.Conv2d, nn.LeakyReLU] * 7


@pytest.mark.parametrize("size", [16, 32, 48, 64])
def test_sndcgan_same_padding_sizes(size: int) -> None:
    D = SNDCGANDiscriminator(image_size=size, channels=1)
    sizes = _conv_outputs(D, torch.zeros(1, 1, size, size))
    spatial = [size, size // 2, size // 2, size // 4, size // 4, size // 8, size // 8]
    assert sizes == [(c, s, s) for (_, _, c), s in zip(THEORY_D, spatial)]
    assert D(torch.zeros(3, 1, size, size)).shape == (3,)


@pytest.mark.parametrize(("size", "base"), [(16, 2), (32, 4), (48, 6), (64, 8)])
def test_sndcgan_generator_shapes_and_range(size: int, base: int) -> None:
    torch.manual_seed(0)
    G = SNDCGANGenerator(image_size=size, channels=3, z_dim=16)
    assert G.base_size == base and G.z_dim == 16 and G.output_shape == (3, size, size)
    deconvs = [m for m in G.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert [(m.kernel_size[0], m.stride[0], m.out_channels) for m in deconvs] == THEORY_G
    sizes = _conv_outputs(G, G.sample_latent(2), (nn.ConvTranspose2d,))
    assert [s[1] for s in sizes] == [2 * base, 4 * base, 8 * base, 8 * base]
    x = G(G.sample_latent(4))
    assert x.shape == (4, 3, size, size)
    assert x.abs().max() <= 1 and x.std() > 1e-3


def test_sndcgan_parameter_counts_by_hand() -> None:
    def conv(c_in: int, c_out: int, k: int) -> int:
        return c_in * c_out * k * k + c_out

    d_layers = [conv(3, 64, 3), conv(64, 64, 4), conv(64, 128, 3), conv(128, 128, 4), conv(128, 256, 3),
                conv(256, 256, 4), conv(256, 512, 3), 4 * 4 * 512 + 1]
    assert d_layers == [1792, 65600, 73856, 262272, 295168, 1048832, 1180160, 8193]
    assert _count(SNDCGANDiscriminator()) == sum(d_layers) == 2_935_873
    bn = lambda c: 2 * c  # noqa: E731  (weight and bias)
    g_layers = [128 * 8192 + 8192, bn(8192), conv(512, 256, 4), bn(256), conv(256, 128, 4), bn(128),
                conv(128, 64, 4), bn(64), conv(64, 3, 3)]
    assert _count(SNDCGANGenerator()) == sum(g_layers)
    # 48 px: only the linear layers change with the size.
    assert _count(SNDCGANDiscriminator(48)) - _count(SNDCGANDiscriminator(32)) == (36 - 16) * 512
    assert _count(SNDCGANGenerator(48)) - _count(SNDCGANGenerator(32)) == (36 - 16) * 512 * (128 + 1 + 2)


def test_resnet_cifar_parameter_counts_by_hand() -> None:
    def conv(c_in: int, c_out: int, k: int) -> int:
        return c_in * c_out * k * k + c_out

    optimized = conv(3, 128, 3) + conv(128, 128, 3) + conv(3, 128, 1)
    down = 2 * conv(128, 128, 3) + conv(128, 128, 1)
    plain = 2 * conv(128, 128, 3)
    assert _count(ResNetDiscriminator(32)) == optimized + down + 2 * plain + 129
    g_block = 2 * 256 + conv(256, 256, 3) + 2 * 256 + conv(256, 256, 3) + conv(256, 256, 1)
    head = 2 * 256 + conv(256, 3, 3)
    assert _count(ResNetGenerator(32)) == 128 * 4096 + 4096 + 3 * g_block + head


def test_resnet_cifar_shapes_and_block_resolutions() -> None:
    torch.manual_seed(0)
    D, G = ResNetDiscriminator(32), ResNetGenerator(32)
    resolutions = []
    for block in D.blocks:
        block.register_forward_hook(lambda m, i, o: resolutions.append(tuple(o.shape[1:])))
    x = G(G.sample_latent(2))
    assert x.shape == (2, 3, 32, 32) and x.abs().max() <= 1
    assert D(x).shape == (2,)
    assert resolutions == [(128, 16, 16), (128, 8, 8), (128, 8, 8), (128, 8, 8)]
    assert [type(b.shortcut) for b in D.blocks[2:]] == [nn.Identity, nn.Identity]


def test_resnet_imagenet_shapes_at_batch_one() -> None:
    torch.manual_seed(0)
    D, G = ResNetDiscriminator(128), ResNetGenerator(128)
    d_res, g_res = [], []
    for block in D.blocks:
        block.register_forward_hook(lambda m, i, o: d_res.append(tuple(o.shape[1:])))
    for block in G.blocks:
        block.register_forward_hook(lambda m, i, o: g_res.append(tuple(o.shape[1:])))
    G.eval()  # batch norm at batch 1 needs running statistics
    with torch.no_grad():
        x = G(G.sample_latent(1))
        assert D(x).shape == (1,)
    assert x.shape == (1, 3, 128, 128) and x.abs().max() <= 1
    assert d_res == [(64, 64, 64), (128, 32, 32), (256, 16, 16), (512, 8, 8), (1024, 4, 4), (1024, 4, 4)]
    assert g_res == [(1024, 8, 8), (512, 16, 16), (256, 32, 32), (128, 64, 64), (64, 128, 128)]
    assert G.linear.out_features == 4 * 4 * 1024 and D.linear.in_features == 1024


def test_mlp_pair_structure() -> None:
    D, G = MLPDiscriminator(in_dim=2, hidden=32, depth=3), MLPGenerator(z_dim=5, out_dim=2, hidden=32, depth=3)
    d_linears = [(m.in_features, m.out_features) for m in D.modules() if isinstance(m, nn.Linear)]
    g_linears = [(m.in_features, m.out_features) for m in G.modules() if isinstance(m, nn.Linear)]
    assert d_linears == [(2, 32), (32, 32), (32, 32), (32, 1)]
    assert g_linears == [(5, 32), (32, 32), (32, 32), (32, 2)]
    assert sum(isinstance(m, nn.ReLU) for m in D.modules()) == 3
    assert D(G(G.sample_latent(7))).shape == (7,)
    # The generator's output is linear, not squashed: scaling the last layer scales the points.
    with torch.no_grad():
        G.net[-1].weight.mul_(100.0)
        G.net[-1].bias.fill_(50.0)
    assert G(G.sample_latent(7)).abs().max() > 1


@pytest.mark.parametrize("arch", ARCHS)
def test_gradients_flow_through_the_pair(arch: str) -> None:
    torch.manual_seed(0)
    sizes = {"sndcgan": dict(image_size=16, channels=1), "resnet": dict(image_size=32, channels=1), "mlp": {}}
    D, G = build_pair(arch, **sizes[arch], z_dim=8)
    D(G(G.sample_latent(2))).mean().backward()
    for name, p in [*D.named_parameters(), *G.named_parameters()]:
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        if p.dim() > 1:  # weights; biases just before a batch norm get ~0 gradient by design
            assert p.grad.abs().sum() > 0, name


def test_sample_latent() -> None:
    G = SNDCGANGenerator(16, z_dim=10)
    assert isinstance(G, LatentGenerator)
    z1 = G.sample_latent(6, generator=torch.Generator().manual_seed(3))
    z2 = G.sample_latent(6, device="cpu", generator=torch.Generator().manual_seed(3))
    assert z1.shape == (6, 10) and torch.equal(z1, z2)
    assert abs(G.sample_latent(20000).std().item() - 1) < 0.02
    assert G.double().sample_latent(2).dtype == torch.float64
    with pytest.raises(ValueError, match="n must be an integer >= 1"):
        G.sample_latent(0)


def test_reference_initializations() -> None:
    D = SNDCGANDiscriminator()
    assert all(m.weight.abs().max() <= 0.04 and not m.bias.any()
               for m in D.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    conv = ResNetDiscriminator(32).blocks[1].residual[1]
    assert conv.weight.abs().max() <= math.sqrt(6 / (128 * 9 + 128 * 9))


def test_build_pair() -> None:
    D, G = build_pair("sndcgan", 48, 3)
    assert isinstance(D, SNDCGANDiscriminator) and D.image_size == 48 and G.z_dim == 128
    D, G = build_pair("resnet")
    assert isinstance(G, ResNetGenerator) and G.output_shape == (3, 32, 32)
    D, G = build_pair("mlp", data_dim=3, z_dim=4)
    assert D.in_dim == 3 and G.output_shape == (3,) and G.z_dim == 4


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: SNDCGANDiscriminator(30), "divisible by 8"),
        (lambda: SNDCGANGenerator(36), "divisible by 8"),
        (lambda: SNDCGANDiscriminator(0), "image_size must be an integer >= 8"),
        (lambda: SNDCGANGenerator(32.0), "image_size must be an integer"),
        (lambda: SNDCGANDiscriminator(32, channels=0), "channels must be an integer >= 1"),
        (lambda: SNDCGANDiscriminator(32, negative_slope=-0.1), "negative_slope"),
        (lambda: SNDCGANGenerator(32, z_dim=0), "z_dim must be an integer >= 1"),
        (lambda: ResNetDiscriminator(64), "32 \\(CIFAR-10\\) or 128 \\(ImageNet\\); got 64"),
        (lambda: ResNetGenerator(48), "got 48"),
        (lambda: MLPDiscriminator(depth=0), "depth must be an integer >= 1"),
        (lambda: MLPGenerator(hidden=0), "hidden must be an integer >= 1"),
        (lambda: build_pair("dcgan"), "'sndcgan', 'resnet', 'mlp'"),
        (lambda: build_pair("mlp", 32, 3), "pass data_dim"),
        (lambda: build_pair("sndcgan", data_dim=2), "mlp arch only"),
        (lambda: build_pair("resnet", 64), "got 64"),
    ],
)
def test_bad_input(make, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize("norm", NORMS)
def test_every_normalization_applies_to_the_discriminators(norm: str) -> None:
    torch.manual_seed(0)
    scale = 1.5 if norm in SCALED_NORMS else 1.0
    cases = [(SNDCGANDiscriminator(16), torch.randn(2, 3, 16, 16)), (MLPDiscriminator(), torch.randn(5, 2))]
    if norm == "sn":  # strict on the ResNet works too, but its start-up Lanczos costs seconds per conv
        cases.append((ResNetDiscriminator(32, channels=1), torch.randn(2, 1, 32, 32)))
    for D, x in cases:
        layers = [m for m in D.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        normalize(D, norm=norm, scale=scale)
        out = D(x)
        assert out.shape == (x.shape[0],) and torch.isfinite(out).all()
        out.sum().backward()
        params = [parametrization_of(m) for m in layers]
        assert all(p is None for p in params) if norm == "none" else all(p is not None for p in params)


# --- ResNet discriminator layouts (miyato = gradscope's default, authors = fjxmlzn/BSN's ImageNet D) ---------

def _normalized_layers(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if parametrization_of(m) is not None]


def test_resnet_authors_layout_has_the_extra_shortcut_and_hidden_equal_out() -> None:
    torch.manual_seed(0)
    counts = {}
    for layout in ("miyato", "authors"):
        D = ResNetDiscriminator(128, layout=layout)
        convs = [m for m in D.modules() if isinstance(m, nn.Conv2d)]
        counts[layout] = (len(convs), len(_normalized_layers(normalize(D, "sn"))))
        if layout == "authors":
            # hidden = out channels in every block after the first (64 -> 128: conv 64 -> 128, 128 -> 128)
            first_conv, second_conv = D.blocks[1].residual[1], D.blocks[1].residual[3]
            assert (first_conv.in_channels, first_conv.out_channels) == (64, 128)
            assert (second_conv.in_channels, second_conv.out_channels) == (128, 128)
            last = D.blocks[-1].shortcut
            assert isinstance(last, nn.Sequential) and isinstance(last[0], nn.Conv2d)
            assert last[0].kernel_size == (1, 1) and (last[0].in_channels, last[0].out_channels) == (1024, 1024)
            assert parametrization_of(last[0]) is not None  # normalized like every other layer
            with torch.no_grad():
                assert D(torch.randn(1, 3, 128, 128)).shape == (1,)
    # 18 convolutions (+ the linear layer: 19 normalized layers) vs 17 (+1: 18) in Miyato's layout
    assert counts == {"miyato": (17, 18), "authors": (18, 19)}


def test_resnet_authors_layout_at_32_px_counts_and_shapes() -> None:
    def conv(c_in: int, c_out: int, k: int) -> int:
        return c_in * c_out * k * k + c_out

    D = ResNetDiscriminator(32, layout="authors")
    block = 2 * conv(128, 128, 3) + conv(128, 128, 1)  # every block after the first has a 1x1 shortcut
    assert _count(D) == conv(3, 128, 3) + conv(128, 128, 3) + conv(3, 128, 1) + 3 * block + 129
    assert D(torch.randn(2, 3, 32, 32)).shape == (2,)
    assert ResNetDiscriminator(32).layout == "miyato" and D.layout == "authors"


def test_resnet_default_layout_is_unchanged() -> None:
    """Default = explicit "miyato", bit for bit, and equal to what gradscope built before layouts existed."""
    x = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    built = []
    for kwargs in ({}, {"layout": "miyato"}):
        torch.manual_seed(7)
        D = ResNetDiscriminator(32, channels=1, **kwargs)
        with torch.no_grad():
            built.append((D.state_dict(), D(x)))
    (state, out), (state_m, out_m) = built
    assert state.keys() == state_m.keys() and all(torch.equal(state[k], state_m[k]) for k in state)
    assert torch.equal(out, out_m)
    # pinned from the code before the layout option (commit HEAD of this change): seed 7, 22 tensors
    assert len(state) == 22
    assert sum(float(v.double().pow(2).sum()) for v in state.values()) == pytest.approx(1029.7057219238532, rel=1e-9)
    assert out.tolist() == pytest.approx([2.044799327850342, 1.847141981124878], rel=1e-5)


def test_resnet_layout_errors() -> None:
    with pytest.raises(ValueError, match="unknown discriminator layout 'tf'; valid choices: 'miyato', 'authors'"):
        ResNetDiscriminator(32, layout="tf")
    with pytest.raises(ValueError, match="unknown d_layout 'tf'; valid choices: 'miyato', 'authors'"):
        build_pair("resnet", d_layout="tf")
    with pytest.raises(ValueError, match="applies to the resnet arch only"):
        build_pair("sndcgan", d_layout="authors")
    D, _ = build_pair("resnet", 32, 1, d_layout="authors")
    assert D.layout == "authors"
