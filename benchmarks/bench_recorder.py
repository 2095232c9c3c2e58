"""Cost of the recorder on the SNDCGAN GAN step (one D update + one G update), measured side by side.

Variants run interleaved in one process on the same models, in blocks of steps in
a new seeded order each round, each block after an untimed lead-in step, so machine
load drifts hit them alike (the loop is ``interleave.py``'s):

- ``off``: no recorder attached;
- ``every1``: every cheap statistic every step (flushing to a run directory every 100 steps);
- ``every1+slopes``: the same plus per-sample input-gradient norms on real and fake batches
  every step (one extra input-gradient backward pass through D);
- ``every1+slopes10``: every cheap statistic every step, the input-gradient norms every 10th step;
- ``every10``: every cheap statistic every 10th step.

Reports each variant's median wall time and median process CPU time per step, the amortized CPU
time (the recorder's buffered writes included), with ratios to ``off`` (CPU time is the steadier
measure on a shared machine; use ``--threads 1`` there so that idle OpenMP threads do not spin),
and the rows and disk space the recorder wrote. Targets (issue 3): every1 <= 1.15x on CPU (1.10x
on GPU), every10 <= 1.03x. ``bench_recorder_models.py`` compares the same recorder on other models
and against plain gradient-norm and TensorBoard-histogram logging.

Run::

    python benchmarks/bench_recorder.py --rounds 12 --steps 4 [--threads 1]
"""
from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable

import torch
import torch.nn.functional as F

from gradscope.models import SNDCGANDiscriminator, SNDCGANGenerator

from interleave import (Probe, RecorderProbe, add_timing_arguments, interleave, make_probes, parse_timing_arguments,
                        report)

VARIANTS = ("off", "every1", "every1+slopes", "every1+slopes10", "every10")


def make_gan(norm: str, image_size: int, device: torch.device) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The SNDCGAN pair at ``image_size``, D normalized by ``norm`` (``"none"``: not at all), seeded."""
    torch.manual_seed(0)
    disc, gen = SNDCGANDiscriminator(image_size=image_size), SNDCGANGenerator(image_size=image_size)
    if norm != "none":
        from gradscope.norms import normalize

        normalize(disc, norm, 1.0)
    return disc.to(device), gen.to(device)


def make_step(disc: torch.nn.Module, gen: torch.nn.Module, batch: int, image_size: int,
              device: torch.device) -> Callable[[int, Probe], None]:
    """One GAN step (hinge loss, Adam): a D update then a G update, calling the probe's hooks."""
    opt_d = torch.optim.Adam(disc.parameters(), lr=1e-4, betas=(0.5, 0.999))
    opt_g = torch.optim.Adam(gen.parameters(), lr=1e-4, betas=(0.5, 0.999))
    real = torch.rand(batch, 3, image_size, image_size, device=device) * 2 - 1

    def gan_step(it: int, probe: Probe) -> None:
        # D update, real and fake in one forward pass as gradscope's trainer does.
        probe.begin(it, "d")
        z = torch.randn(batch, gen.z_dim, device=device)
        with torch.no_grad():
            fake = gen(z)
        slopes = probe.wants_input_gradients
        x_real, x_fake = real.detach().requires_grad_(slopes), fake.requires_grad_(slopes)
        logits = disc(torch.cat([x_real, x_fake]))
        d_real, d_fake = logits[:batch], logits[batch:]
        loss_d = F.relu(1 - d_real).mean() + F.relu(1 + d_fake).mean()
        if slopes:
            probe.input_gradients("D", [x_real, x_fake], [d_real, d_fake], ["real", "fake"])
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        probe.after_backward(disc, "d")
        opt_d.step()
        probe.scalars(it, {"loss_d": loss_d, "d_real": d_real.mean(), "d_fake": d_fake.mean()})
        probe.after_step(it, "d", disc)
        probe.begin(it, "g")
        # G update; D's parameters are frozen so the G step computes no D weight gradients.
        for p in disc.parameters():
            p.requires_grad_(False)
        opt_g.zero_grad(set_to_none=True)
        loss_g = -disc(gen(torch.randn(batch, gen.z_dim, device=device))).mean()
        loss_g.backward()
        probe.after_backward(gen, "g")
        opt_g.step()
        for p in disc.parameters():
            p.requires_grad_(True)
        probe.scalars(it, {"loss_g": loss_g})
        probe.after_step(it, "g", gen)

    return gan_step


def recorder_probe(name: str, models: dict[str, torch.nn.Module], out: str) -> Probe:
    """The probe of one of :data:`VARIANTS`."""
    if name == "off":
        return Probe()
    every = 10 if name == "every10" else 1
    slopes_every = 10 if name.endswith("slopes10") else None
    return RecorderProbe(models, f"{out}/{name}", every=every, slopes="slopes" in name, slopes_every=slopes_every)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_timing_arguments(parser, VARIANTS, rounds=12, steps=4)
    parser.add_argument("--batch", type=int, default=64, help="real (and fake) images per D step")
    parser.add_argument("--image-size", type=int, default=32, help="image side in pixels")
    parser.add_argument("--norm", default="sn", help="normalization of D (none, sn, bsn, ...)")
    args, names, device = parse_timing_arguments(parser, VARIANTS)
    disc, gen = make_gan(args.norm, args.image_size, device)
    gan_step = make_step(disc, gen, args.batch, args.image_size, device)
    with tempfile.TemporaryDirectory(prefix="bench-recorder-") as out:
        probes = make_probes(names, lambda name: recorder_probe(name, {"D": disc, "G": gen}, out))
        results = interleave(gan_step, probes, args.rounds, args.steps, device)
    print(report(f"SNDCGAN GAN step (D+G), batch {args.batch}, {args.image_size}x{args.image_size}, norm {args.norm}, "
                 f"device {device}, threads {torch.get_num_threads()}, rounds {args.rounds}", results))


if __name__ == "__main__":
    main()
