"""Step time of the SNDCGAN discriminator under the normalization family, as ratios to torch's spectral_norm.

Measures, in one process and interleaved (variant order rotates each round,
the median over rounds is reported):

1. a forward + backward step of ``SNDCGANDiscriminator`` (training mode, one
   power step per layer per forward) on a batch of ``--batch`` images;
2. the normalization alone: computing every layer's normalized weight and
   back-propagating a scalar through them (what the variants differ in).

Variants: no normalization, ``torch.nn.utils.parametrizations.spectral_norm``,
and gradscope's ``sn``, ``bsn`` and ``strict``. Targets: ``sn`` <= 1.05x and
``bsn`` <= 1.3x torch's SN on the full step. Usage::

    python benchmarks/bench_norms.py [--batch 64] [--image-size 32] [--rounds 30] [--device cpu] [--threads N]
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as torch_spectral_norm

from gradscope.models import SNDCGANDiscriminator
from gradscope.norms import normalize

VARIANTS = ("none", "torch-sn", "sn", "bsn", "strict")


def build(variant: str, image_size: int, device: torch.device, x: torch.Tensor) -> nn.Module:
    """A discriminator with the same initial weights for every variant, normalized as ``variant`` says."""
    torch.manual_seed(0)
    d = SNDCGANDiscriminator(image_size=image_size).to(device)
    if variant == "torch-sn":
        for module in list(d.modules()):
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                torch_spectral_norm(module)
    elif variant != "none":
        normalize(d, variant)
    d(x[:1])  # strict learns its input sizes here; the same warm forward for everyone
    return d


def full_step(d: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        d.zero_grad(set_to_none=True)
        d(x).mean().backward()
    return step


def weights_only(d: nn.Module) -> Callable[[], None]:
    layers = [m for m in d.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]

    def step() -> None:
        d.zero_grad(set_to_none=True)
        torch.stack([m.weight.sum() for m in layers]).sum().backward()
    return step


def interleaved_medians(steps: dict[str, Callable[[], None]], rounds: int, warmup: int,
                        sync: Callable[[], None]) -> dict[str, float]:
    """Median seconds per call of each step, timed in rotating order so drifts hit all alike."""
    names = list(steps)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(warmup + rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            sync()
            start = time.perf_counter()
            steps[name]()
            sync()
            if r >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def report(title: str, medians: dict[str, float]) -> None:
    ref = medians["torch-sn"]
    print(f"\n{title}")
    print(f"{'variant':<10} {'median ms':>10} {'x torch-sn':>11}")
    for name, seconds in medians.items():
        print(f"{name:<10} {seconds * 1e3:>10.3f} {seconds / ref:>11.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    x = torch.randn(args.batch, 3, args.image_size, args.image_size, device=device)
    models = {v: build(v, args.image_size, device, x) for v in VARIANTS}
    print(f"SNDCGAN D, batch {args.batch}, {args.image_size}x{args.image_size}, {device}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}, median of {args.rounds} interleaved rounds")
    report("forward + backward step", interleaved_medians(
        {v: full_step(m, x) for v, m in models.items()}, args.rounds, args.warmup, sync))
    report("normalized weights + backward only", interleaved_medians(
        {v: weights_only(m) for v, m in models.items() if v != "none"}, args.rounds * 10, args.warmup, sync))


if __name__ == "__main__":
    main()
