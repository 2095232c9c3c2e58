"""Shared timing loop of the recorder benchmarks: variants interleaved in a shuffled order on one model.

A *variant* is a :class:`Probe`: what runs beside the training step (nothing for
``off``, a :class:`gradscope.record.Recorder`, a plain gradient-norm logger...).
The training step is one callable ``step(it, probe)`` shared by every variant, which
calls the probe's hooks at the usual places (``begin`` before the forward pass,
``after_backward`` between backward and the optimizer step, ``scalars`` and
``after_step`` after it). :func:`interleave` runs the variants one block of steps
after another, in a fresh seeded permutation each round so that drifts of the
machine's load hit every variant alike, and :func:`report` prints medians and
ratios to ``off``.

Two guards against one variant's cost landing in another's block: a plain
rotation keeps every variant behind the same neighbour (measured: ``off``, always
right after the TensorBoard variant, came out ~10% slower than ``off``-like
variants), hence the shuffle; and each block starts with an untimed lead-in step
(page faults, caches, the allocator after the previous variant), while a probe's
:meth:`Probe.drain` waits, inside its own timed block, for work it left running
in the background (TensorBoard's writer thread).

Not a script; imported by ``bench_recorder.py`` and ``bench_recorder_models.py``
(run as ``python benchmarks/<script>.py``, which puts this folder on ``sys.path``).
"""
from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from gradscope.record import Recorder


class Probe:
    """A variant's work beside the training step; this base class does nothing (the ``off`` variant).

    ``period`` is the variant's schedule length: timed blocks span whole multiples of it, so a
    variant that records every 10th step is measured at its average cost.
    """

    period = 1

    def enter(self) -> None:
        """Before each block of steps (untimed): e.g. register hooks."""

    def exit(self) -> None:
        """After each block of steps (untimed): e.g. remove hooks, so other variants run without them."""

    def begin(self, it: int, phase: str) -> None:
        """Before the forward pass of step ``it``'s ``phase``."""

    def after_backward(self, module: nn.Module, phase: str) -> None:
        """Between ``backward()`` and the optimizer step that updates ``module``."""

    def scalars(self, it: int, values: Mapping[str, Tensor]) -> None:
        """Model-level scalars of the step (losses)."""

    def after_step(self, it: int, phase: str, module: nn.Module) -> None:
        """After the optimizer step that updated ``module``."""

    @property
    def wants_input_gradients(self) -> bool:
        """Whether the coming step should make its inputs require grad for :meth:`input_gradients`."""
        return False

    def input_gradients(self, net: str, x: list[Tensor], outputs: list[Tensor], kinds: list[str]) -> None:
        """Per-sample input-gradient norms (only recorder variants compute them)."""

    def drain(self) -> None:
        """At the end of each timed block (timed): wait for work left running in the background, so that
        its cost is charged to this variant and not to the next block."""

    def settle(self) -> None:
        """Finish pending work (write buffered data); timed once at the end and amortized over the steps."""

    def finish(self, steps: int) -> dict[str, float]:
        """Close after ``steps`` training steps; returns storage figures for the table (untimed)."""
        return {}


def directory_bytes(path: str | os.PathLike) -> int:
    """Total size of the files below ``path``."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


class RecorderProbe(Probe):
    """A :class:`gradscope.record.Recorder` on ``models``, writing to ``out``, ``rec.step`` after every update.

    ``slopes``: the step also records per-sample input-gradient norms (the recorder's schedule decides when).
    Further keyword arguments go to the recorder.
    """

    def __init__(self, models: nn.Module | Mapping[str, nn.Module], out: str, every: int = 1,
                 slopes: bool = False, **options: Any) -> None:
        self.out = out
        self.rec = Recorder(models, every=every, out=out, alert_printer=None, **options)
        self.slopes = slopes
        self.period = math.lcm(self.rec.every, self.rec.slopes_every or self.rec.every)

    def enter(self) -> None:
        self.rec.attach()

    def exit(self) -> None:
        self.rec.detach()

    def begin(self, it: int, phase: str) -> None:
        self.rec.begin(it, phase)

    def scalars(self, it: int, values: Mapping[str, Tensor]) -> None:
        self.rec.log_scalars(it, values)

    def after_step(self, it: int, phase: str, module: nn.Module) -> None:
        self.rec.step(it, phase)

    @property
    def wants_input_gradients(self) -> bool:
        return self.slopes and self.rec.collecting_slopes

    def input_gradients(self, net: str, x: list[Tensor], outputs: list[Tensor], kinds: list[str]) -> None:
        if self.slopes:
            self.rec.record_input_gradients(net, x, outputs, kind=kinds)

    def settle(self) -> None:
        self.rec.flush()

    def finish(self, steps: int) -> dict[str, float]:
        layers = self.rec.run().layers
        self.rec.close()
        recorded = layers["step"].nunique() if len(layers) else 0
        return {"rows/rec step": len(layers) / recorded if recorded else 0.0,
                "disk KB/step": directory_bytes(self.out) / 1024 / max(steps, 1)}


@dataclass
class Timings:
    """One variant's timed blocks (seconds per step) and its end-of-run ``settle`` cost."""

    name: str
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    steps: int = 0
    total_cpu: float = 0.0
    settle_cpu: float = 0.0
    settled_steps: int = 0  # steps whose buffered work the final settle does (timed and lead-in)
    extra: dict[str, float] = field(default_factory=dict)
    error: str | None = None

    def add(self, wall: float, cpu: float, steps: int) -> None:
        self.wall.append(wall / steps)
        self.cpu.append(cpu / steps)
        self.steps += steps
        self.total_cpu += cpu

    @property
    def median_wall(self) -> float:
        return statistics.median(self.wall) if self.wall else math.nan

    @property
    def median_cpu(self) -> float:
        return statistics.median(self.cpu) if self.cpu else math.nan

    @property
    def amortized_cpu(self) -> float:
        """CPU time per step over every timed block plus the final ``settle``'s share (buffered writes)."""
        if not self.steps:
            return math.nan
        return self.total_cpu / self.steps + self.settle_cpu / max(self.settled_steps, 1)


def make_probes(names: list[str], factory: Callable[[str], Probe]) -> dict[str, Probe]:
    """``{name: factory(name)}``, leaving out (with a message) the variants whose probe cannot be built."""
    probes: dict[str, Probe] = {}
    for name in names:
        try:
            probes[name] = factory(name)
        except Exception as exc:  # noqa: BLE001 -- e.g. a recorder that rejects the model: time the others
            print(f"variant {name} left out: {type(exc).__name__}: {exc}", flush=True)
    return probes


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleave(step: Callable[[int, Probe], None], probes: Mapping[str, Probe], rounds: int, steps: int,
               device: torch.device, warmup: int = 2, lead_in: int = 1, seed: int = 0) -> dict[str, Timings]:
    """Time ``step`` under every probe, interleaved: ``rounds`` rounds of one block per variant.

    Each variant numbers its own steps from 0 (a recorder sees increasing steps). A block runs
    ``lead_in`` untimed steps, then ``steps`` timed steps rounded up to a multiple of the variant's
    ``period`` (any ``period`` consecutive steps hold one recorded step), then the probe's ``drain``
    (timed). The order of the blocks is a new permutation each round (seeded by ``seed``). After
    ``warmup`` untimed steps per variant (first-call costs) each probe settles untimed, so the final
    timed ``settle`` covers exactly the timed steps (and their lead-ins). A variant whose block
    raises is reported as failed and dropped; Ctrl-C ends the rounds early and reports what ran.
    """
    names = list(probes)
    rng = random.Random(seed)
    counters = {name: 0 for name in names}
    results = {name: Timings(name) for name in names}

    def run(name: str, n: int) -> None:
        for _ in range(n):
            step(counters[name], probes[name])
            counters[name] += 1

    def block(name: str, n: int, lead: int = 0) -> tuple[float, float]:
        probe = probes[name]
        probe.enter()
        try:
            run(name, lead)
            _sync(device)
            start, start_cpu = time.perf_counter(), time.process_time()
            run(name, n)
            probe.drain()
            _sync(device)
            return time.perf_counter() - start, time.process_time() - start_cpu
        finally:
            probe.exit()

    def settle(name: str) -> float:
        start_cpu = time.process_time()
        probes[name].settle()
        _sync(device)
        return time.process_time() - start_cpu

    def guarded(name: str, work: Callable[..., Any], *args: Any) -> Any:
        try:
            return work(name, *args)
        except Exception as exc:  # noqa: BLE001 -- a broken variant must not take the others down
            results[name].error = f"{type(exc).__name__}: {exc}"
            print(f"variant {name} failed and is dropped:\n{traceback.format_exc(limit=4)}", flush=True)
            names.remove(name)
            return None

    for name in list(names):
        if guarded(name, block, warmup) is not None:
            guarded(name, settle)
    settled_from = dict(counters)
    try:
        for _ in range(rounds):
            order = list(names)
            rng.shuffle(order)
            for name in order:
                n = probes[name].period * math.ceil(steps / probes[name].period)
                timed = guarded(name, block, n, lead_in)
                if timed is not None:
                    results[name].add(*timed, n)
    except KeyboardInterrupt:
        print("interrupted: reporting the rounds that ran", flush=True)
    for name in list(names):
        cpu = guarded(name, settle)
        if cpu is not None:
            results[name].settle_cpu = cpu
            results[name].settled_steps = counters[name] - settled_from[name]
    for name in probes:
        try:
            results[name].extra = probes[name].finish(counters[name])
        except Exception as exc:  # noqa: BLE001 -- the timings are still worth printing
            print(f"variant {name}: finishing failed ({type(exc).__name__}: {exc})", flush=True)
    return results


def add_timing_arguments(parser: argparse.ArgumentParser, variants: tuple[str, ...], rounds: int,
                         steps: int) -> None:
    """The options every interleaved benchmark takes: ``--variants``, ``--rounds``, ``--steps``, ``--threads``,
    ``--device``."""
    parser.add_argument("--variants", default=",".join(variants),
                        help=f"comma-separated subset of {', '.join(variants)}")
    parser.add_argument("--rounds", type=int, default=rounds, help="interleaved rounds (timed blocks per variant)")
    parser.add_argument("--steps", type=int, default=steps,
                        help="training steps per timed block (rounded up to a multiple of a variant's period, "
                             "so every10 blocks have 10)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (0: torch's default; use 1 on a shared machine)")
    parser.add_argument("--device", default="cpu", help="torch device")


def parse_timing_arguments(parser: argparse.ArgumentParser, variants: tuple[str, ...]
                           ) -> tuple[argparse.Namespace, list[str], torch.device]:
    """Parse the command line, check ``--variants``, apply ``--threads``; returns (args, variants, device)."""
    args = parser.parse_args()
    names = [name for name in args.variants.split(",") if name]
    unknown = sorted(set(names) - set(variants))
    if unknown or not names:
        parser.error(f"unknown or no variants {unknown}; valid: {', '.join(variants)}")
    if args.rounds < 1 or args.steps < 1:
        parser.error("--rounds and --steps must be at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    return args, list(dict.fromkeys(names)), torch.device(args.device)


def report(title: str, results: Mapping[str, Timings], base: str = "off") -> str:
    """The table of medians, ratios to ``base`` and the probes' storage figures, as printable text."""
    if not results:
        return f"{title}\nno variant ran"
    ref = results.get(base) or next(iter(results.values()))
    extras = list(dict.fromkeys(key for t in results.values() for key in t.extra))
    head = (f"{'variant':<16}{'wall ms':>9}{'ratio':>7}{'CPU ms':>9}{'ratio':>7}{'amort CPU ms':>13}{'ratio':>7}"
            + "".join(f"{key:>15}" for key in extras))
    note = (f"(medians of per-step times over timed blocks; amortized = timed CPU time per step + the final flush per step; "
            f"ratios to {ref.name})")
    lines = [title, note, head]
    for t in results.values():
        if t.error is not None and not t.cpu:
            lines.append(f"{t.name:<16}failed: {t.error}")
            continue
        row = (f"{t.name:<16}{t.median_wall * 1e3:>9.1f}{t.median_wall / ref.median_wall:>7.3f}"
               f"{t.median_cpu * 1e3:>9.1f}{t.median_cpu / ref.median_cpu:>7.3f}"
               f"{t.amortized_cpu * 1e3:>13.1f}{t.amortized_cpu / ref.amortized_cpu:>7.3f}")
        row += "".join(f"{t.extra[key]:>15.1f}" if key in t.extra else f"{'-':>15}" for key in extras)
        if t.error is not None:
            row += f"  (failed later: {t.error})"
        lines.append(row)
    lines.append(f"blocks per variant: {', '.join(f'{t.name} {len(t.cpu)}x{t.steps // max(len(t.cpu), 1)}' for t in results.values())}")
    return "\n".join(lines)
