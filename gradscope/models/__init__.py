"""The model zoo: discriminator / generator pairs of the reference experiments.

============  ==============================  =====================================
arch          image sizes                     source
============  ==============================  =====================================
``sndcgan``   multiples of 8 (32, 48, 64)     Miyato et al. 2018; THEORY.md
``resnet``    32 (CIFAR-10), 128 (ImageNet)   Miyato et al. 2018, the authors' code
``mlp``       flat vectors (2D mixtures)      mode-collapse literature
============  ==============================  =====================================

Every discriminator returns one logit per sample, shape ``(batch,)``; every
generator is a :class:`LatentGenerator` with ``z_dim`` and ``sample_latent``.
"""
from __future__ import annotations

from torch import nn

from gradscope._checks import check_choice
from gradscope.models.base import ImageGenerator, LatentGenerator
from gradscope.models.mlp import MLP_DEFAULT_Z_DIM, MLPDiscriminator, MLPGenerator
from gradscope.models.resnet import RESNET_D_LAYOUTS, RESNET_IMAGE_SIZES, ResNetDiscriminator, ResNetGenerator
from gradscope.models.sndcgan import SNDCGAN_D_CONVS, SNDCGANDiscriminator, SNDCGANGenerator

ARCHS: tuple[str, ...] = ("sndcgan", "resnet", "mlp")
IMAGE_Z_DIM = 128

__all__ = [
    "ARCHS", "ImageGenerator", "LatentGenerator", "MLPDiscriminator", "MLPGenerator", "RESNET_D_LAYOUTS",
    "RESNET_IMAGE_SIZES", "ResNetDiscriminator", "ResNetGenerator", "SNDCGAN_D_CONVS", "SNDCGANDiscriminator",
    "SNDCGANGenerator", "build_pair",
]


def build_pair(
    arch: str,
    image_size: int | None = None,
    channels: int | None = None,
    *,
    z_dim: int | None = None,
    data_dim: int | None = None,
    width: float = 1.0,
    d_layout: str = "miyato",
) -> tuple[nn.Module, LatentGenerator]:
    """Build a fresh ``(discriminator, generator)`` pair in its reference initialization.

    Parameters
    ----------
    arch : {"sndcgan", "resnet", "mlp"}
        Architecture family.
    image_size : int, optional
        Image side for the image architectures (default 32). Not accepted for ``mlp``.
    channels : int, optional
        Image channels for the image architectures (default 3). Not accepted for ``mlp``.
    z_dim : int, optional
        Latent size; 128 for the image architectures, 16 for ``mlp`` by default.
    data_dim : int, optional
        Dimension of a data point for ``mlp`` (default 2). Not accepted for the image architectures.
    width : float
        Channel multiplier of both networks (``sndcgan`` only; 1 is the reference width).
    d_layout : {"miyato", "authors"}
        Block layout of the ``resnet`` discriminator (:data:`RESNET_D_LAYOUTS`; see
        :class:`ResNetDiscriminator`); the other archs have only ``"miyato"``.

    Returns
    -------
    (nn.Module, LatentGenerator)

    Examples
    --------
    >>> D, G = build_pair("sndcgan", 16, 1, z_dim=32)
    >>> D(G(G.sample_latent(4))).shape
    torch.Size([4])
    >>> D, G = build_pair("mlp")
    >>> G.z_dim, G.output_shape
    (16, (2,))
    """
    check_choice("arch", arch, ARCHS)
    if width != 1.0 and arch != "sndcgan":
        raise ValueError(f"width {width:g} applies to the sndcgan arch only; {arch} has its reference width (1)")
    check_choice("d_layout", d_layout, RESNET_D_LAYOUTS)
    if d_layout != "miyato" and arch != "resnet":
        raise ValueError(f"d_layout {d_layout!r} applies to the resnet arch only; {arch} has one layout ('miyato')")
    if arch == "mlp":
        if image_size is not None or channels is not None:
            raise ValueError("the mlp arch works on flat vectors: pass data_dim, not image_size or channels")
        dim = 2 if data_dim is None else data_dim
        latent = MLP_DEFAULT_Z_DIM if z_dim is None else z_dim
        return MLPDiscriminator(in_dim=dim), MLPGenerator(z_dim=latent, out_dim=dim)
    if data_dim is not None:
        raise ValueError(f"data_dim applies to the mlp arch only; the {arch} arch takes image_size and channels")
    size = 32 if image_size is None else image_size
    depth = 3 if channels is None else channels
    latent = IMAGE_Z_DIM if z_dim is None else z_dim
    if arch == "sndcgan":
        return SNDCGANDiscriminator(size, depth, width=width), SNDCGANGenerator(size, depth, latent, width=width)
    return ResNetDiscriminator(size, depth, layout=d_layout), ResNetGenerator(size, depth, latent)
