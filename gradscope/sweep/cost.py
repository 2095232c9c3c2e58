"""What a sweep will cost on a GPU before anything has run: FLOPs counted on the real networks.

One training iteration is ``n_dis`` discriminator updates (D forward and
backward on a real and a generated batch, G forward without gradients) and one
generator update (G and D forward and backward). Their FLOPs are counted with
:class:`torch.utils.flop_counter.FlopCounterMode` on the run's own networks on
PyTorch's ``meta`` device (shapes only, nothing computed), plus Inception-v3
on every evaluated sample for datasets scored with Inception. GPU hours then
follow at an *assumed* sustained throughput, which is stated wherever the
estimate is printed: small convolutional GANs keep a GPU far from its peak,
so the throughput is the uncertain part, the FLOPs are not.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gradscope.sweep.spec import SweepSpec
    from gradscope.train.config import RunConfig

#: Sustained throughput assumed for the estimate (about 10 % of an H100's dense bf16 peak, 30 % of an
#: A100's TF32 peak): a stated assumption, not a measurement.
ASSUMED_TFLOPS = 30.0
#: Inception-v3 at 299x299: 5.7 G multiply-adds per image (Szegedy et al. 2016), 2 FLOPs each.
INCEPTION_FLOPS = 11.4e9
#: ``(channels, image size)`` of the datasets when ``image_size`` is not set.
GEOMETRY: dict[str, tuple[int, int]] = {"digits": (1, 8), "mnist": (1, 32), "cifar10": (3, 32), "stl10": (3, 48),
                                        "celeba": (3, 64), "imagenet": (3, 128)}
INCEPTION_DATASETS = frozenset({"cifar10", "stl10", "celeba", "imagenet"})


@lru_cache(maxsize=64)
def _update_flops(arch: str, channels: int, size: int, width: float, z_dim: int | None, batch: int) -> tuple[float, ...]:
    """FLOPs of (D forward+backward on a batch, G forward, G and D forward+backward) for one batch."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from gradscope.models import build_pair

    torch.manual_seed(0)
    D, G = build_pair(arch, size, channels, z_dim=z_dim, width=width)
    D, G = D.to("meta"), G.to("meta")
    z = torch.empty(batch, G.z_dim, device="meta")
    x = torch.empty(batch, channels, size, size, device="meta")
    counts = []
    for step in ("d", "g_forward", "g"):
        with FlopCounterMode(display=False) as counter:
            if step == "d":
                D(x).sum().backward()
            elif step == "g_forward":
                with torch.no_grad():
                    G(z)
            else:
                D(G(z)).sum().backward()
        counts.append(float(counter.get_total_flops()))
    return tuple(counts)


def run_flops(config: RunConfig) -> float | None:
    """Training and evaluation FLOPs of one run (``None`` when its data's geometry is not known in advance).

    Examples
    --------
    >>> from gradscope.train import RunConfig
    >>> flops = run_flops(RunConfig(dataset="mnist", iterations=10, eval_every=0))
    >>> 1e9 < flops < 1e12
    True
    """
    if config.dataset not in GEOMETRY or config.arch == "mlp":
        return None
    channels, native = GEOMETRY[config.dataset]
    size = config.image_size or native
    d, g_forward, g = _update_flops(config.arch, channels, size, float(config.width), config.z_dim,
                                    config.batch_size)
    per_iteration = config.n_dis * (2 * d + g_forward) + g
    total = per_iteration * config.iterations
    if config.dataset in INCEPTION_DATASETS and config.eval_every:
        evaluations = config.iterations // config.eval_every + 1
        total += evaluations * config.eval_samples * (INCEPTION_FLOPS + g_forward / config.batch_size)
    return total


def point_configs(spec: SweepSpec) -> dict[str, RunConfig]:
    """Every run's full configuration by run id, with the defaults of ``gradscope run`` filled in."""
    from gradscope.sweep.spec import _run_parser
    from gradscope.train.cli import config_from_args

    parser = _run_parser()
    return {point.run_id: config_from_args(parser.parse_args(point.argv(Path("unused"))[1:])) for point in spec.points}


def sweep_flops(spec: SweepSpec, configs: dict[str, RunConfig] | None = None) -> float | None:
    """FLOPs of every run of ``spec`` (``None`` if any run's geometry is unknown)."""
    total = 0.0
    for config in (point_configs(spec) if configs is None else configs).values():
        flops = run_flops(config)
        if flops is None:
            return None
        total += flops
    return total


def gpu_hours(flops: float, tflops: float = ASSUMED_TFLOPS) -> float:
    """Hours at ``tflops`` sustained."""
    return flops / (tflops * 1e12) / 3600.0
