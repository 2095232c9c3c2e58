"""Cost of the recorder on the SNDCGAN GAN step (one D update + one G update), measured side by side.

Variants run interleaved in one process on the same models, in rotating
order, so machine load drifts hit them alike:

- ``off``: no recorder attached;
- ``every1``: every cheap statistic every step (flushing to a run directory every 100 steps);
- ``every1+slopes``: the same plus per-sample input-gradient norms on real and fake batches
  every step (one extra input-gradient backward pass through D);
- ``every1+slopes10``: every cheap statistic every step, the input-gradient norms every 10th step;
- ``every10``: every cheap statistic every 10th step.

Reports each variant's median and mean wall time per step and median process CPU time per step,
with ratios to ``off`` (CPU time is the steadier measure on a shared machine; use ``--threads 1``
there so that idle OpenMP threads do not spin).
Targets (issue 3): every1 <= 1.15x on CPU (1.10x on GPU), every10 <= 1.03x.

Run::

    python benchmarks/bench_recorder.py --rounds 12 --steps 4 [--threads 1]
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
        # D update (hinge loss), real and fake in one forward pass as gradscope's trainer does.
        if rec is not None:
            rec.begin(it, "d")
        z = torch.randn(batch, gen.z_dim, device=device)
        with torch.no_grad():
            fake = gen(z)
        slopes = slopes and rec is not None and rec.collecting_slopes
        x_real, x_fake = real.detach().requires_grad_(slopes), fake.requires_grad_(slopes)
        logits = disc(torch.cat([x_real, x_fake]))
        d_real, d_fake = logits[:batch], logits[batch:]
        loss_d = F.relu(1 - d_real).mean() + F.relu(1 + d_fake).mean()
        if slopes:
            rec.record_input_gradients("D", [x_real, x_fake], [d_real, d_fake], kind=["real", "fake"])
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        if rec is not None:
            rec.log_scalars(it, {"loss_d": loss_d, "d_real": d_real.mean(), "d_fake": d_fake.mean()})
            rec.step(it, "d")
            rec.begin(it, "g")
        # G update; D's parameters are frozen so the G step computes no D weight gradients.
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
    parser.add_argument("--variants", default="off,every1,every1+slopes,every1+slopes10,every10")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    disc, gen = make_gan(args.norm, args.image_size, device)
    gan_step = make_step(disc, gen, args.batch, args.image_size, device)
    out = tempfile.mkdtemp(prefix="bench-recorder-")
    names = args.variants.split(",")
    recorders: dict[str, Recorder | None] = {
        "off": None,
        "every1": Recorder({"D": disc, "G": gen}, every=1, out=f"{out}/every1", alert_printer=None),
        "every1+slopes": Recorder({"D": disc, "G": gen}, every=1, out=f"{out}/slopes", alert_printer=None),
        "every1+slopes10": Recorder({"D": disc, "G": gen}, every=1, slopes_every=10, out=f"{out}/slopes10",
                                    alert_printer=None),
        "every10": Recorder({"D": disc, "G": gen}, every=10, out=f"{out}/every10", alert_printer=None),
    }
    counters = {name: 0 for name in names}
    times: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(2):  # warm-up (allocator, first-call costs) for every variant
        for name in names:
            rec = recorders[name]
            if rec is not None:
                rec.attach()
            gan_step(counters[name], rec, "slopes" in name)
            counters[name] += 1
            if rec is not None:
                rec.detach()
    for r in range(args.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            rec = recorders[name]
            if rec is not None:
                rec.attach()
            # Variants with a 10-step period must see whole periods to be measured at their average cost.
            n = 10 if name.endswith("10") else args.steps
            start, start_cpu = time.perf_counter(), time.process_time()
            for _ in range(n):
                gan_step(counters[name], rec, "slopes" in name)
                counters[name] += 1
            times[name].append((time.perf_counter() - start) / n)
            cpu[name].append((time.process_time() - start_cpu) / n)
            if rec is not None:
                rec.detach()
    for rec in recorders.values():
        if rec is not None:
            rec.close()
    base = statistics.median(times["off"]) if "off" in times else float("nan")
    print(f"SNDCGAN GAN step (D+G), batch {args.batch}, {args.image_size}x{args.image_size}, norm {args.norm}, "
          f"device {device}, threads {torch.get_num_threads()}, rounds {args.rounds}")
    mean_base = statistics.fmean(times["off"]) if "off" in times else float("nan")
    cpu_base = statistics.median(cpu["off"]) if "off" in cpu else float("nan")
    print(f"{'variant':<16}{'median wall ms':>15}{'ratio':>7}{'mean wall ms':>14}{'ratio':>7}"
          f"{'median CPU ms':>15}{'ratio':>7}")
    for name in names:
        med, mean, med_cpu = statistics.median(times[name]), statistics.fmean(times[name]), statistics.median(cpu[name])
        print(f"{name:<16}{med * 1e3:>15.1f}{med / base:>7.3f}{mean * 1e3:>14.1f}{mean / mean_base:>7.3f}"
              f"{med_cpu * 1e3:>15.1f}{med_cpu / cpu_base:>7.3f}")


if __name__ == "__main__":
    main()
