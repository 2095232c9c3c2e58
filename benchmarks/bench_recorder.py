"""Cost of the recorder on the SNDCGAN GAN step (one D update + one G update), measured side by side.

Variants run interleaved in one process on the same models, in rotating
order, so machine load drifts hit them alike:

- ``off``: no recorder attached;
- ``every1``: every cheap statistic every step (flushing to a run directory every 100 steps);
- ``every1+slopes``: the same plus per-sample input-gradient norms on real and fake batches;
- ``every10``: every cheap statistic every 10th step.

Reports the median step time of each variant and its ratio to ``off``.
Targets (issue 3): every1 <= 1.15x on CPU (1.10x on GPU), every10 <= 1.03x.

Run::

    python benchmarks/bench_recorder.py --rounds 12 --steps 4
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from gradscope.models import SNDCGANDiscriminator, SNDCGANGenerator
from gradscope.record import Recorder


def make_gan(norm: str, image_size: int, device: torch.device) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    disc, gen = SNDCGANDiscriminator(image_size=image_size), SNDCGANGenerator(image_size=image_size)
    if norm != "none":
        from gradscope.norms import normalize

        normalize(disc, norm, 1.0)
    return disc.to(device), gen.to(device)


def make_step(disc: torch.nn.Module, gen: torch.nn.Module, batch: int, image_size: int,
              device: torch.device) -> Callable[[int, Recorder | None, bool], None]:
    opt_d = torch.optim.Adam(disc.parameters(), lr=1e-4, betas=(0.5, 0.999))
    opt_g = torch.optim.Adam(gen.parameters(), lr=1e-4, betas=(0.5, 0.999))
    real = torch.rand(batch, 3, image_size, image_size, device=device) * 2 - 1

    def gan_step(it: int, rec: Recorder | None, slopes: bool) -> None:
        # D update (hinge loss).
        z = torch.randn(batch, gen.z_dim, device=device)
        with torch.no_grad():
            fake = gen(z)
        opt_d.zero_grad(set_to_none=True)
        x_real = real.requires_grad_(slopes)
        x_fake = fake.requires_grad_(slopes)
        d_real, d_fake = disc(x_real), disc(x_fake)
        loss_d = F.relu(1 - d_real).mean() + F.relu(1 + d_fake).mean()
        if rec is not None and slopes:
            rec.record_input_gradients("D", x_real, d_real, kind="real")
            rec.record_input_gradients("D", x_fake, d_fake, kind="fake")
        loss_d.backward()
        opt_d.step()
        if rec is not None:
            rec.log_scalars(it, {"loss_d": loss_d, "d_real": d_real.mean(), "d_fake": d_fake.mean()})
            rec.step(it, "d")
        # G update; D's parameters are frozen so the G step leaves D's .grad alone.
        for p in disc.parameters():
            p.requires_grad_(False)
        opt_g.zero_grad(set_to_none=True)
        loss_g = -disc(gen(torch.randn(batch, gen.z_dim, device=device))).mean()
        loss_g.backward()
        opt_g.step()
        for p in disc.parameters():
            p.requires_grad_(True)
        if rec is not None:
            rec.log_scalars(it, {"loss_g": loss_g})
            rec.step(it, "g")
        if device.type == "cuda":
            torch.cuda.synchronize()

    return gan_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=12, help="interleaved rounds per variant")
    parser.add_argument("--steps", type=int, default=4, help="GAN steps per round (timed together)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--norm", default="sn", help="normalization of D (none, sn, bsn, ...)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--variants", default="off,every1,every1+slopes,every10")
    args = parser.parse_args()
    device = torch.device(args.device)
    disc, gen = make_gan(args.norm, args.image_size, device)
    gan_step = make_step(disc, gen, args.batch, args.image_size, device)
    out = tempfile.mkdtemp(prefix="bench-recorder-")
    names = args.variants.split(",")
    recorders: dict[str, Recorder | None] = {
        "off": None,
        "every1": Recorder({"D": disc, "G": gen}, every=1, out=f"{out}/every1", alert_printer=None),
        "every1+slopes": Recorder({"D": disc, "G": gen}, every=1, out=f"{out}/slopes", alert_printer=None),
        "every10": Recorder({"D": disc, "G": gen}, every=10, out=f"{out}/every10", alert_printer=None),
    }
    counters = {name: 0 for name in names}
    times: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(2):  # warm-up (allocator, first-call costs) for every variant
        for name in names:
            rec = recorders[name]
            if rec is not None:
                rec.attach()
            gan_step(counters[name], rec, name.endswith("slopes"))
            counters[name] += 1
            if rec is not None:
                rec.detach()
    for r in range(args.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            rec = recorders[name]
            if rec is not None:
                rec.attach()
            # every10 must see whole 10-step periods to be measured at its true average cost.
            n = 10 if name == "every10" else args.steps
            start = time.perf_counter()
            for _ in range(n):
                gan_step(counters[name], rec, name.endswith("slopes"))
                counters[name] += 1
            times[name].append((time.perf_counter() - start) / n)
            if rec is not None:
                rec.detach()
    for rec in recorders.values():
        if rec is not None:
            rec.close()
    base = statistics.median(times["off"]) if "off" in times else float("nan")
    print(f"SNDCGAN GAN step (D+G), batch {args.batch}, {args.image_size}x{args.image_size}, norm {args.norm}, "
          f"device {device}, threads {torch.get_num_threads()}, rounds {args.rounds}")
    mean_base = statistics.fmean(times["off"]) if "off" in times else float("nan")
    print(f"{'variant':<16}{'median ms/step':>16}{'ratio':>8}{'mean ms/step':>14}{'ratio':>8}")
    for name in names:
        med, mean = statistics.median(times[name]), statistics.fmean(times[name])
        print(f"{name:<16}{med * 1e3:>16.1f}{med / base:>8.3f}{mean * 1e3:>14.1f}{mean / mean_base:>8.3f}")


if __name__ == "__main__":
    main()
