"""Weight initializations of the reference setup and of the SN-as-initialization view (claims C5, C7).

Every scheme draws i.i.d. zero-mean weights whose variance is fixed by the
layer's fans, and sets biases to zero:

=================  ===============================================  ======================
scheme             weight distribution                              variance
=================  ===============================================  ======================
``dcgan``          normal(0, 0.02) truncated at +-2 std, resampled  0.02^2 * 0.7737...
``dcgan-authors``  Conv: as ``dcgan``; Linear, ConvTranspose:       Conv: as ``dcgan``;
                   normal(0, 0.02), not truncated                   others: 0.02^2
``lecun``          normal                                           1 / fan_in
``xavier``         uniform(-b, b), b = sqrt(6 / (fan_in + fan_out))  2 / (fan_in + fan_out)
``kaiming``        normal                                           2 / ((1 + a^2) fan_in)
=================  ===============================================  ======================

``dcgan`` is TensorFlow's ``truncated_normal(stddev=0.02)`` used by the
authors' SNDCGAN: values beyond two standard deviations are redrawn, so the
realised variance is ``0.02^2 * (1 - 2*2*phi(2) / (2*Phi(2) - 1))``, about
``0.7737 * 0.02^2``. The authors' code (fjxmlzn/BSN, ``op.py``) truncates only
its convolutions: ``linear`` and ``deconv2d`` use ``random_normal_initializer(0.02)``,
so D's final linear layer and G's linear and transposed-conv layers have
untruncated tails; ``dcgan-authors`` reproduces that split (``dcgan`` stays
gradscope's reference, truncated everywhere, so that existing results do not
change). ``xavier`` is Glorot's uniform form (the authors' ResNet
initializer); ``a`` in ``kaiming`` is the negative slope of the model's leaky
ReLU (0 for ReLU), read from its ``nn.LeakyReLU`` modules unless given.

Fans
----
The variance formulas preserve activation variance forward (``fan_in``) and
gradient variance backward (``fan_out``), so the fans here are those of the
layer *as a linear operator* (convention ``"operator"``, the default):
``fan_in`` is the number of input entries one output entry sums, ``fan_out``
the number of output entries one input entry feeds, averaged over positions
away from the border. With ``K = prod(kernel_size)``, ``S = prod(stride)`` and
``g`` groups:

=================  =====================  =====================
layer              fan_in                 fan_out
=================  =====================  =====================
Linear(n, m)       n                      m
Conv (c_in->c_out) (c_in / g) K           (c_out / g) K / S
ConvTranspose      (c_in / g) K / S       (c_out / g) K
=================  =====================  =====================

Dilation does not change the counts. ``K / S`` is the average of
``ceil``/``floor`` counts when the stride does not divide the kernel.

PyTorch's ``nn.init._calculate_fan_in_and_fan_out`` (convention ``"torch"``,
also what TensorFlow computes) reads the stored weight shape instead:
``fan_in = weight.shape[1] * K`` and ``fan_out = weight.shape[0] * K``. For a
stride-1, ungrouped Conv this equals the operator convention. It ignores the
stride and the groups in ``fan_out``. For a ConvTranspose, whose weight is
stored as ``(c_in, c_out / g, k...)``, it swaps the roles: its ``fan_in``
``(c_out / g) K`` is the transposed layer's operator *fan_out* (the fan_in of
the forward convolution it is the adjoint of), and its ``fan_out`` ``c_in K``
is ``g * S`` times the operator fan_in. So LeCun under the torch convention
does not preserve the forward variance of a strided transposed convolution
(the SNDCGAN generator's 4x4/2 deconvolutions get a variance ``c_in / (4 c_out)``
times the forward-preserving one).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from gradscope._checks import check_choice, check_positive
from gradscope.norms.api import SUPPORTED_LAYERS
from gradscope.norms.base import raw_weight

INIT_SCHEMES: tuple[str, ...] = ("dcgan", "lecun", "xavier", "kaiming", "dcgan-authors")
FAN_CONVENTIONS: tuple[str, ...] = ("operator", "torch")

#: Standard deviation of the reference SNDCGAN initializer before truncation.
DCGAN_STD = 0.02
#: Truncation point of the reference initializer, in standard deviations.
DCGAN_TRUNCATION = 2.0

_TRANSPOSED_TYPES = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
#: The layers with a weight to initialize: those :func:`gradscope.norms.normalize` normalizes.
INITIALIZABLE_TYPES: tuple[type[nn.Module], ...] = SUPPORTED_LAYERS


class Fans(NamedTuple):
    """A layer's fan-in and fan-out (floats: strided layers average non-integer counts)."""

    fan_in: float
    fan_out: float


def truncated_normal_variance(std: float = DCGAN_STD, truncation: float = DCGAN_TRUNCATION) -> float:
    """Variance of a zero-mean normal with standard deviation ``std`` truncated at ``+-truncation * std``.

    Examples
    --------
    >>> round(truncated_normal_variance(1.0, 2.0), 4)
    0.7737
    """
    check_positive("std", std)
    check_positive("truncation", truncation)
    t = float(truncation)
    density = math.exp(-0.5 * t * t) / math.sqrt(2.0 * math.pi)
    mass = math.erf(t / math.sqrt(2.0))
    return float(std) ** 2 * (1.0 - 2.0 * t * density / mass)


def layer_fans(module: nn.Module, convention: str = "operator") -> Fans:
    """Fan-in and fan-out of a Linear, Conv{1,2,3}d or ConvTranspose{1,2,3}d layer.

    Parameters
    ----------
    module : nn.Module
        The layer (parametrized layers are read through their raw weight's shape).
    convention : {"operator", "torch"}
        ``"operator"``: counts of the layer as a linear map (see the module
        docstring); ``"torch"``: PyTorch's ``_calculate_fan_in_and_fan_out`` on
        the stored weight.

    Returns
    -------
    Fans
        ``(fan_in, fan_out)``.

    Examples
    --------
    >>> layer_fans(nn.Conv2d(64, 128, 4, stride=2))
    Fans(fan_in=1024.0, fan_out=512.0)
    >>> layer_fans(nn.ConvTranspose2d(512, 256, 4, stride=2))
    Fans(fan_in=2048.0, fan_out=4096.0)
    >>> layer_fans(nn.ConvTranspose2d(512, 256, 4, stride=2), convention="torch")
    Fans(fan_in=4096.0, fan_out=8192.0)
    """
    check_choice("fan convention", convention, FAN_CONVENTIONS)
    if not isinstance(module, INITIALIZABLE_TYPES):
        valid = ", ".join(t.__name__ for t in INITIALIZABLE_TYPES)
        raise ValueError(f"unsupported layer type {type(module).__name__}; valid types: {valid}")
    shape = raw_weight(module).shape
    if convention == "torch" or isinstance(module, nn.Linear):
        receptive = math.prod(shape[2:])
        return Fans(float(shape[1] * receptive), float(shape[0] * receptive))
    taps = math.prod(module.kernel_size)
    taps_per_stride = taps / math.prod(module.stride)
    groups = module.groups
    if isinstance(module, _TRANSPOSED_TYPES):
        return Fans(module.in_channels / groups * taps_per_stride, module.out_channels / groups * taps)
    return Fans(module.in_channels / groups * taps, module.out_channels / groups * taps_per_stride)


def detect_negative_slope(model: nn.Module) -> float:
    """The leaky-ReLU slope used by ``model``: that of its ``nn.LeakyReLU`` modules, 0 if it has none.

    Raises ``ValueError`` when the model mixes several slopes (pass one explicitly).

    Examples
    --------
    >>> detect_negative_slope(nn.Sequential(nn.Linear(2, 2), nn.LeakyReLU(0.1)))
    0.1
    """
    slopes = sorted({float(m.negative_slope) for m in model.modules() if isinstance(m, nn.LeakyReLU)})
    if len(slopes) > 1:
        raise ValueError(f"model uses several leaky-ReLU slopes {slopes}; pass negative_slope explicitly")
    return slopes[0] if slopes else 0.0


def authors_truncate(layer: nn.Module) -> bool:
    """Whether ``dcgan-authors`` draws ``layer`` from the truncated normal (convolutions) or not.

    Examples
    --------
    >>> authors_truncate(nn.Conv2d(3, 8, 3)), authors_truncate(nn.ConvTranspose2d(8, 3, 4))
    (True, False)
    """
    # TF's conv2d op of the authors uses truncated_normal_initializer; linear and deconv2d random_normal.
    return isinstance(layer, INITIALIZABLE_TYPES) and not isinstance(layer, (nn.Linear, *_TRANSPOSED_TYPES))


def scheme_variance(scheme: str, fans: Fans, negative_slope: float = 0.0, *,
                    layer: nn.Module | None = None) -> float:
    """The weight variance a scheme gives a layer with the given fans.

    ``layer`` is needed by ``dcgan-authors`` only, whose variance depends on the
    layer type (see :func:`authors_truncate`), not on the fans.

    Examples
    --------
    >>> scheme_variance("kaiming", Fans(100.0, 50.0))
    0.02
    >>> scheme_variance("xavier", Fans(100.0, 300.0))
    0.005
    >>> round(scheme_variance("dcgan-authors", Fans(4.0, 2.0), layer=nn.Linear(4, 2)), 6)
    0.0004
    """
    check_choice("init scheme", scheme, INIT_SCHEMES)
    if scheme == "dcgan":
        return truncated_normal_variance()
    if scheme == "dcgan-authors":
        if layer is None:
            raise ValueError("init scheme 'dcgan-authors' depends on the layer type: pass layer=")
        return truncated_normal_variance() if authors_truncate(layer) else DCGAN_STD**2
    if scheme == "lecun":
        return 1.0 / fans.fan_in
    if scheme == "xavier":
        return 2.0 / (fans.fan_in + fans.fan_out)
    return 2.0 / ((1.0 + negative_slope**2) * fans.fan_in)


def _truncated_normal_(
    tensor: torch.Tensor, std: float, truncation: float, generator: torch.Generator | None
) -> None:
    # TF's truncated_normal: redraw the values beyond the bound (rejection sampling). About 5%
    # fall outside two std, so few rounds are needed; far faster than inverse-CDF sampling.
    flat = tensor.view(-1) if tensor.is_contiguous() else torch.empty(tensor.numel(), dtype=tensor.dtype)
    flat.normal_(0.0, std, generator=generator)
    bound = truncation * std
    index = (flat.abs() > bound).nonzero().squeeze(1)
    while index.numel():
        redraw = torch.empty(index.numel(), dtype=flat.dtype, device=flat.device).normal_(0.0, std, generator=generator)
        flat[index] = redraw
        index = index[redraw.abs() > bound]
    if flat.data_ptr() != tensor.data_ptr():
        tensor.copy_(flat.view_as(tensor))


def init_(
    model: nn.Module,
    scheme: str,
    *,
    negative_slope: float | None = None,
    fan_convention: str = "operator",
    generator: torch.Generator | None = None,
) -> nn.Module:
    """Initialize every Linear / Conv / ConvTranspose layer of ``model`` in place; biases become zero.

    Parametrized layers (gradscope's normalizations, ``torch.nn.utils.parametrizations``)
    have their raw weight initialized, the tensor the optimizer updates. Other
    modules (batch norm, embeddings) are left as they are. A normalization's
    persistent power-iteration vectors are not reset: initialize before
    normalizing, or let the iterations re-converge.

    Parameters
    ----------
    model : nn.Module
        The model (or a single layer).
    scheme : {"dcgan", "lecun", "xavier", "kaiming", "dcgan-authors"}
        See the module docstring for the distributions and variances.
    negative_slope : float, optional
        Leaky-ReLU slope ``a`` for ``kaiming``; detected from the model's
        ``nn.LeakyReLU`` modules when omitted (0, i.e. ReLU, if there are none).
    fan_convention : {"operator", "torch"}
        How fans are counted; see :func:`layer_fans`.
    generator : torch.Generator, optional
        Random generator for reproducible draws.

    Returns
    -------
    nn.Module
        ``model`` itself.

    Examples
    --------
    >>> layer = init_(nn.Linear(400, 300), "lecun")
    >>> abs(layer.weight.var().item() * 400 - 1) < 0.05
    True
    >>> bool((layer.bias == 0).all())
    True
    """
    check_choice("init scheme", scheme, INIT_SCHEMES)
    check_choice("fan convention", fan_convention, FAN_CONVENTIONS)
    if negative_slope is None:
        negative_slope = detect_negative_slope(model) if scheme == "kaiming" else 0.0
    else:
        check_positive("negative_slope", negative_slope, allow_zero=True)
    layers = [m for m in model.modules() if isinstance(m, INITIALIZABLE_TYPES)]
    if not layers:
        valid = ", ".join(t.__name__ for t in INITIALIZABLE_TYPES)
        raise ValueError(f"model has no layer to initialize; supported types: {valid}")
    with torch.no_grad():
        for layer in layers:
            weight = raw_weight(layer)
            if scheme == "dcgan" or (scheme == "dcgan-authors" and authors_truncate(layer)):
                _truncated_normal_(weight, DCGAN_STD, DCGAN_TRUNCATION, generator)
            elif scheme == "dcgan-authors":
                nn.init.normal_(weight, 0.0, DCGAN_STD, generator=generator)
            else:
                variance = scheme_variance(scheme, layer_fans(layer, fan_convention), negative_slope)
                if scheme == "xavier":
                    # uniform(-b, b) has variance b^2 / 3
                    bound = math.sqrt(3.0 * variance)
                    nn.init.uniform_(weight, -bound, bound, generator=generator)
                else:
                    nn.init.normal_(weight, 0.0, math.sqrt(variance), generator=generator)
            if layer.bias is not None:
                layer.bias.zero_()
    return model
