"""The SNDCGAN pair of the reference setup (Miyato et al. 2018, Table 3; the authors' code).

Discriminator, for an ``n x n`` image (``n`` a multiple of 8)::

    conv 3x3/1  64  -> lrelu      n
    conv 4x4/2  64  -> lrelu      n/2
    conv 3x3/1 128  -> lrelu      n/2
    conv 4x4/2 128  -> lrelu      n/4
    conv 3x3/1 256  -> lrelu      n/4
    conv 4x4/2 256  -> lrelu      n/8
    conv 3x3/1 512  -> lrelu      n/8
    linear (n/8)^2 * 512 -> 1

with leaky-ReLU slope 0.1 and TensorFlow's ``'SAME'`` padding, which for
these kernels on even sizes is one pixel on every side (total padding
``k - s``). (A popular TensorFlow port doubles the channels at each strided
conv instead: 64, 128, 128, 256, 256, 512, 512; this module follows the
paper's table, as THEORY.md does.)

Generator, with ``mg = n / 8``::

    linear 128 -> mg*mg*512, batch norm, ReLU, reshape to 512 x mg x mg
    deconv 4x4/2 256, BN, ReLU      2 mg
    deconv 4x4/2 128, BN, ReLU      4 mg
    deconv 4x4/2  64, BN, ReLU      8 mg = n
    deconv 3x3/1 channels, tanh

The first batch norm acts on the linear layer's ``mg*mg*512`` outputs
feature by feature, before the reshape, as in both public implementations
(Chainer ``BatchNormalization(bottom_width**2 * ch)``; TF ``batch_norm`` on
the dense output). Every layer keeps its bias. Weights start from the
reference ``dcgan`` initialization (truncated normal, std 0.02).
"""
from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn

from gradscope._checks import check_int_at_least, check_positive
from gradscope.init import init_
from gradscope.models.base import ImageGenerator

#: (kernel, stride, out_channels) of the discriminator's convolutions, in order.
SNDCGAN_D_CONVS: tuple[tuple[int, int, int], ...] = (
    (3, 1, 64), (4, 2, 64), (3, 1, 128), (4, 2, 128), (3, 1, 256), (4, 2, 256), (3, 1, 512),
)
#: (kernel, stride, out_channels) of the generator's batch-normalized deconvolutions.
SNDCGAN_G_DECONVS: tuple[tuple[int, int, int], ...] = ((4, 2, 256), (4, 2, 128), (4, 2, 64))
SNDCGAN_G_BASE_CHANNELS = 512
SNDCGAN_REFERENCE_INIT = "dcgan"


def check_sndcgan_image_size(image_size: int) -> int:
    """Return ``image_size`` if the SNDCGAN supports it (a multiple of 8), else raise ``ValueError``."""
    check_int_at_least("image_size", image_size, 8)
    if image_size % 8:
        raise ValueError(f"SNDCGAN needs an image_size divisible by 8 (e.g. 16, 32, 48, 64), got {image_size}")
    return image_size


def scaled_channels(channels: int, width: float) -> int:
    """``channels * width`` rounded, at least 1: the channel count of a network narrowed by ``width``.

    Examples
    --------
    >>> scaled_channels(64, 0.25), scaled_channels(3, 0.1)
    (16, 1)
    """
    return max(1, int(round(channels * check_positive("width", width))))


def _same_padding(kernel: int, stride: int) -> int:
    # TF 'SAME' pads k - s in total when the size is a multiple of the stride; split evenly.
    return (kernel - stride) // 2


class SNDCGANDiscriminator(nn.Module):
    """The SNDCGAN discriminator; returns one logit per image, shape ``(batch,)``.

    Parameters
    ----------
    image_size : int
        Height = width of the input, a multiple of 8 (32 CIFAR-10, 48 STL-10, 64 CelebA).
    channels : int
        Input channels.
    negative_slope : float
        Leaky-ReLU slope (0.1 in the reference).
    width : float
        Multiplies every channel count (64 -> ``round(64 width)``, ...); kernels,
        strides, padding and depth stay the reference's. ``width=0.25`` is the
        CPU-sized network of the default job.

    Examples
    --------
    >>> import torch
    >>> D = SNDCGANDiscriminator(image_size=16)
    >>> D(torch.zeros(2, 3, 16, 16)).shape
    torch.Size([2])
    """

    def __init__(self, image_size: int = 32, channels: int = 3, negative_slope: float = 0.1,
                 width: float = 1.0) -> None:
        super().__init__()
        self.width = float(check_positive("width", width))
        self.image_size = check_sndcgan_image_size(image_size)
        self.channels = check_int_at_least("channels", channels, 1)
        self.negative_slope = float(check_positive("negative_slope", negative_slope, allow_zero=True))
        self.input_shape = (channels, image_size, image_size)
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        in_channels = channels
        for index, (kernel, stride, out_channels) in enumerate(SNDCGAN_D_CONVS, start=1):
            out_channels = scaled_channels(out_channels, width)
            layers[f"conv{index}"] = nn.Conv2d(in_channels, out_channels, kernel, stride, _same_padding(kernel, stride))
            layers[f"act{index}"] = nn.LeakyReLU(self.negative_slope)
            in_channels = out_channels
        self.features = nn.Sequential(layers)
        self.linear = nn.Linear(in_channels * (image_size // 8) ** 2, 1)
        init_(self, SNDCGAN_REFERENCE_INIT)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(self.features(x).flatten(1)).squeeze(1)


class SNDCGANGenerator(ImageGenerator):
    """The SNDCGAN generator: ``z (batch, z_dim) -> images (batch, channels, n, n)`` in ``[-1, 1]``.

    Parameters
    ----------
    image_size : int
        Output height = width, a multiple of 8; the base grid is ``image_size // 8``.
    channels, z_dim : int
        Output channels; latent size (128 in the reference).
    width : float
        Multiplies every hidden channel count (512 -> ``round(512 width)``, ...), as in the discriminator.

    Examples
    --------
    >>> G = SNDCGANGenerator(image_size=16, z_dim=8)
    >>> G(G.sample_latent(2)).shape
    torch.Size([2, 3, 16, 16])
    """

    def __init__(self, image_size: int = 32, channels: int = 3, z_dim: int = 128, width: float = 1.0) -> None:
        super().__init__(check_sndcgan_image_size(image_size), channels, z_dim)
        self.width = float(check_positive("width", width))
        self.base_size = image_size // 8
        self.base_channels = scaled_channels(SNDCGAN_G_BASE_CHANNELS, width)
        base_features = self.base_channels * self.base_size**2
        self.stem = nn.Sequential(nn.Linear(z_dim, base_features), nn.BatchNorm1d(base_features), nn.ReLU())
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        in_channels = self.base_channels
        for index, (kernel, stride, out_channels) in enumerate(SNDCGAN_G_DECONVS, start=1):
            out_channels = scaled_channels(out_channels, width)
            layers[f"deconv{index}"] = nn.ConvTranspose2d(
                in_channels, out_channels, kernel, stride, _same_padding(kernel, stride)
            )
            layers[f"bn{index}"] = nn.BatchNorm2d(out_channels)
            layers[f"act{index}"] = nn.ReLU()
            in_channels = out_channels
        layers[f"deconv{len(SNDCGAN_G_DECONVS) + 1}"] = nn.ConvTranspose2d(in_channels, channels, 3, 1, 1)
        layers["tanh"] = nn.Tanh()
        self.features = nn.Sequential(layers)
        init_(self, SNDCGAN_REFERENCE_INIT)

    def forward(self, z: Tensor) -> Tensor:
        h = self.stem(z).view(-1, self.base_channels, self.base_size, self.base_size)
        return self.features(h)
