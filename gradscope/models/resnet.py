"""The ResNet pair of Miyato et al. (2018) for CIFAR-10 (32 px) and ImageNet (128 px).

Discriminator blocks (ReLU, no normalization besides the one gradscope applies)::

    residual: ReLU, conv3x3 (in -> hidden), ReLU, conv3x3 (hidden -> out), [avgpool 2]
    shortcut: identity, or conv1x1 (in -> out) then [avgpool 2] when in != out or downsampling

with ``hidden = in``. The first block is the "optimized" one, which sees the
image directly: residual conv3x3, ReLU, conv3x3, avgpool; shortcut avgpool
then conv1x1. After the blocks: ReLU, global *sum* pooling, linear -> 1.

Two discriminator layouts (:data:`RESNET_D_LAYOUTS`): ``"miyato"`` is the one
above (Miyato et al.'s chainer code; gradscope's default). ``"authors"`` is the
ImageNet discriminator of Lin et al.'s TensorFlow code (fjxmlzn/BSN,
``down_resnet``): ``hidden = out`` in every block, and every block after the
first has a conv1x1 shortcut, the last (non-downsampling) one included. On the
128 px network that adds one normalized layer: 18 convolutions + the linear
layer (19 normalized layers) instead of 17 + 1. The authors have no 32 px
ResNet; there the same two rules give the two plain blocks conv1x1 shortcuts.

==========  =================================================  ======
image_size  discriminator blocks (out channels; all down but)   G base
==========  =================================================  ======
32          128, 128, 128 (no down), 128 (no down)             256
128         64, 128, 256, 512, 1024, 1024 (no down)            1024
==========  =================================================  ======

Generator blocks::

    residual: BN, ReLU, upsample x2 (nearest), conv3x3 (in -> out), BN, ReLU, conv3x3
    shortcut: upsample x2, conv1x1 (in -> out)

CIFAR: linear z -> 4x4x256, three blocks 256; ImageNet: linear z -> 4x4x1024,
blocks 1024, 512, 256, 128, 64. Then BN, ReLU, conv3x3 to the image
channels, tanh. Weights start from the ``xavier`` (Glorot-uniform) scheme of
the reference; the original additionally scales residual-branch convs by a
gain sqrt(2), which normalized layers divide out anyway.
"""
from __future__ import annotations

from torch import Tensor, nn

from gradscope._checks import check_choice, check_int_at_least
from gradscope.init import init_
from gradscope.models.base import ImageGenerator

RESNET_IMAGE_SIZES: tuple[int, ...] = (32, 128)
#: image_size -> [(out_channels, downsample)] of the discriminator's blocks; the first is the optimized block.
RESNET_D_BLOCKS: dict[int, tuple[tuple[int, bool], ...]] = {
    32: ((128, True), (128, True), (128, False), (128, False)),
    128: ((64, True), (128, True), (256, True), (512, True), (1024, True), (1024, False)),
}
#: image_size -> channels of the 4x4 base grid, then out channels of each upsampling block.
RESNET_G_BASE: dict[int, int] = {32: 256, 128: 1024}
RESNET_G_BLOCKS: dict[int, tuple[int, ...]] = {32: (256, 256, 256), 128: (1024, 512, 256, 128, 64)}
RESNET_G_BOTTOM = 4
RESNET_REFERENCE_INIT = "xavier"
#: Discriminator layouts: ``miyato`` (hidden = in, identity shortcut where shapes allow) and ``authors``
#: (fjxmlzn/BSN: hidden = out, a conv1x1 shortcut in every block after the first).
RESNET_D_LAYOUTS: tuple[str, ...] = ("miyato", "authors")


def _conv3x3(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, 1, 1)


def _check_size(image_size: int) -> int:
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size not in RESNET_IMAGE_SIZES:
        raise ValueError(
            f"ResNet is defined for image_size 32 (CIFAR-10) or 128 (ImageNet); got {image_size!r}"
        )
    return image_size


class OptimizedDiscriminatorBlock(nn.Module):
    """First discriminator block: convolutions straight on the image, always downsampling."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.residual = nn.Sequential(
            _conv3x3(in_channels, out_channels), nn.ReLU(), _conv3x3(out_channels, out_channels), nn.AvgPool2d(2)
        )
        self.shortcut = nn.Sequential(nn.AvgPool2d(2), nn.Conv2d(in_channels, out_channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.residual(x) + self.shortcut(x)


class DiscriminatorBlock(nn.Module):
    """Pre-activation residual block, optionally halving the resolution by average pooling.

    ``layout`` ``"miyato"``: hidden channels = ``in_channels``, identity shortcut
    when the shapes match; ``"authors"``: hidden = ``out_channels`` and always a
    conv1x1 shortcut (see the module docstring).
    """

    def __init__(self, in_channels: int, out_channels: int, downsample: bool, layout: str = "miyato") -> None:
        super().__init__()
        check_choice("discriminator layout", layout, RESNET_D_LAYOUTS)
        authors = layout == "authors"
        hidden = out_channels if authors else in_channels
        pool = [nn.AvgPool2d(2)] if downsample else []
        self.residual = nn.Sequential(
            nn.ReLU(), _conv3x3(in_channels, hidden), nn.ReLU(), _conv3x3(hidden, out_channels), *pool
        )
        learnable = authors or in_channels != out_channels or downsample
        self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1), *pool) if learnable else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.residual(x) + self.shortcut(x)


class GeneratorBlock(nn.Module):
    """Pre-activation residual block with batch norm that doubles the resolution."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.residual = nn.Sequential(
            nn.BatchNorm2d(in_channels), nn.ReLU(), nn.Upsample(scale_factor=2, mode="nearest"),
            _conv3x3(in_channels, out_channels), nn.BatchNorm2d(out_channels), nn.ReLU(),
            _conv3x3(out_channels, out_channels),
        )
        self.shortcut = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(in_channels, out_channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.residual(x) + self.shortcut(x)


class ResNetDiscriminator(nn.Module):
    """Miyato et al.'s ResNet discriminator; returns one logit per image, shape ``(batch,)``.

    Parameters
    ----------
    image_size : {32, 128}
        Selects the CIFAR-10 or the ImageNet width table.
    channels : int
        Input channels.
    layout : {"miyato", "authors"}
        Block layout (:data:`RESNET_D_LAYOUTS`): Miyato et al.'s (hidden = in
        channels; 17 convolutions at 128 px), or the authors' TensorFlow code's
        (hidden = out, a conv1x1 shortcut in the last block too; 18).

    Examples
    --------
    >>> import torch
    >>> ResNetDiscriminator(32)(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2])
    >>> ResNetDiscriminator(32, layout="authors").blocks[-1].shortcut[0]
    Conv2d(128, 128, kernel_size=(1, 1), stride=(1, 1))
    """

    def __init__(self, image_size: int = 32, channels: int = 3, layout: str = "miyato") -> None:
        super().__init__()
        self.image_size = _check_size(image_size)
        self.channels = check_int_at_least("channels", channels, 1)
        self.layout = check_choice("discriminator layout", layout, RESNET_D_LAYOUTS)
        self.input_shape = (channels, image_size, image_size)
        (first, _), *rest = RESNET_D_BLOCKS[image_size]
        blocks: list[nn.Module] = [OptimizedDiscriminatorBlock(channels, first)]
        in_channels = first
        for out_channels, downsample in rest:
            blocks.append(DiscriminatorBlock(in_channels, out_channels, downsample, layout))
            in_channels = out_channels
        self.blocks = nn.Sequential(*blocks)
        self.activation = nn.ReLU()
        self.linear = nn.Linear(in_channels, 1)
        init_(self, RESNET_REFERENCE_INIT)

    def forward(self, x: Tensor) -> Tensor:
        pooled = self.activation(self.blocks(x)).sum(dim=(2, 3))
        return self.linear(pooled).squeeze(1)


class ResNetGenerator(ImageGenerator):
    """Miyato et al.'s ResNet generator: ``z -> images`` in ``[-1, 1]``.

    Parameters
    ----------
    image_size : {32, 128}
        Selects the CIFAR-10 or the ImageNet table: a 4x4 base grid of 256 or
        1024 channels, then 3 or 5 upsampling blocks.
    channels, z_dim : int
        Output channels; latent size (128 in the reference).

    Examples
    --------
    >>> G = ResNetGenerator(32)
    >>> G(G.sample_latent(2)).shape
    torch.Size([2, 3, 32, 32])
    """

    def __init__(self, image_size: int = 32, channels: int = 3, z_dim: int = 128) -> None:
        super().__init__(_check_size(image_size), channels, z_dim)
        self.base_channels = RESNET_G_BASE[image_size]
        self.linear = nn.Linear(z_dim, self.base_channels * RESNET_G_BOTTOM**2)
        blocks, in_channels = [], self.base_channels
        for out_channels in RESNET_G_BLOCKS[image_size]:
            blocks.append(GeneratorBlock(in_channels, out_channels))
            in_channels = out_channels
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.BatchNorm2d(in_channels), nn.ReLU(), _conv3x3(in_channels, channels), nn.Tanh())
        init_(self, RESNET_REFERENCE_INIT)

    def forward(self, z: Tensor) -> Tensor:
        h = self.linear(z).view(-1, self.base_channels, RESNET_G_BOTTOM, RESNET_G_BOTTOM)
        return self.head(self.blocks(h))
