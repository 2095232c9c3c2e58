"""Step time with gradscope's recorder at every step / every 10th step vs off, beside common loggers, on three models.

Issue 12. For each model, the variants run interleaved in one process on the same
model and optimizer, in blocks of steps in a new seeded order each round, each
block after an untimed lead-in step (``interleave.py``'s loop, shared with
``bench_recorder.py``), so drifts of the machine's load hit them alike:

- ``off``: the bare training step; ``off2``: the same again, a control whose ratio to ``off``
  shows the noise floor of the measurement (an A/A test);
- ``every1`` / ``every10``: ``gradscope.Recorder(model, every=1 or 10, out=tmpdir, alert_printer=None)``,
  ``rec.step(i)`` after each optimizer step (``rec.begin`` before it, the loss via ``rec.log_scalars``);
- ``gradnorm``: a plain per-parameter gradient-norm logger as Lightning does it: after
  ``backward()``, ``lightning.pytorch.utilities.grad_norm(module, norm_type=2)`` (one
  ``p.grad.norm(2)`` per parameter and their total), every value turned into a Python float
  as logging it does (a local equivalent of ``grad_norm`` when Lightning is not installed);
- ``tb_hist``: ``torch.utils.tensorboard.SummaryWriter.add_histogram`` of every parameter
  after every optimizer step (to a temporary directory);
- ``sums``: the floor of the recorder's activation and gradient statistics, not a logger: bare
  hooks on every module with parameters that take ``sum(t)`` and ``sum(t**2)`` of its input, its
  output, the gradient w.r.t. its output and its share of the gradient w.r.t. its input (a view of
  the input, as the recorder does), every step, stacked once per step, nothing read on the host.
  These reductions read each activation and gradient once from memory; what ``every1`` costs above
  ``sums`` is everything else (the other statistics and the recorder's own bookkeeping).

Models (random init, random data; one step takes about 0.2-0.6 s of CPU time on one thread):

- ``sndcgan``: gradscope's SNDCGAN pair at 32x32 with spectral norm on D, a full GAN step
  (one D and one G update, hinge loss, Adam), as in ``bench_recorder.py`` but at batch 16
  (``bench_recorder.py``'s 64 takes ~3.5 s of CPU per step; ``--batch 64`` for that);
- ``gpt2``: ``transformers.GPT2LMHeadModel(GPT2Config(n_layer=12, n_embd=256, n_head=8,
  vocab_size=2048, n_positions=128))``, a causal language-modelling step with AdamW on
  random token batches (batch 4 x 64 tokens);
- ``cnn50``: 50 3x3 convolutions with ReLU (16 channels at 32x32, 32 at 16x16, 64 at 8x8,
  He-normal init), global average pooling and a linear head; cross-entropy on random labels,
  SGD with momentum (batch 16).

Printed per model: median wall and process CPU milliseconds per step with ratios to ``off``,
the amortized CPU time (all timed blocks plus the final flush of buffered rows / events), and,
for the recorder, the layer-table rows per recorded step and the disk space per training step
(also for ``tb_hist``). CPU time is the measure to trust on a shared machine; use ``--threads 1``.
Targets on CPU (issue 12): every1 <= 1.15x, every10 <= 1.03x.

``--profile every1`` instead profiles that variant alone with cProfile for ``--steps`` steps
(after warm-up) and prints the top cumulative entries of ``gradscope/record``.

``--sync-check`` (CUDA only) instead trains each of ``--variants`` (default here: ``off`` and
``every1``) for 2 warm-up steps and then ``--steps`` steps under
``torch.cuda.set_sync_debug_mode("error")``, which raises at the first call that waits for the device
(a copy to the host, ``.item()``, ``nonzero``...), and prints which variants ran through. The
recorder's final flush (one batched copy, a synchronization by design) runs after the mode is reset.
On the CPU the same property is tested on the meta device (``tests/test_record_sync.py``).

Run::

    python benchmarks/bench_recorder_models.py --model all --rounds 8 --steps 2 --threads 1
    python benchmarks/bench_recorder_models.py --model gpt2 --profile every1 --steps 10 --threads 1
    python benchmarks/bench_recorder_models.py --device cuda --sync-check --steps 4
"""
from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import tempfile
import time
from collections.abc import Callable, Mapping
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from bench_recorder import make_gan, make_step
from gradscope.record.buffer import sum_and_square_sum
from gradscope.record.hooks import first_tensor
from gradscope.record.layers import discover_layers, normalize_models
from interleave import (Probe, RecorderProbe, add_timing_arguments, directory_bytes, interleave, make_probes,
                        parse_timing_arguments, report)

MODELS = ("sndcgan", "gpt2", "cnn50")
VARIANTS = ("off", "off2", "every1", "every10", "gradnorm", "tb_hist", "sums")
Step = Callable[[int, Probe], None]


# --- the baselines ------------------------------------------------------------------------------------
def _grad_norm_fallback(module: nn.Module, norm_type: float) -> dict[str, torch.Tensor]:
    """Each parameter's gradient norm and their total, keyed like Lightning's ``grad_norm``."""
    norms = {f"grad_{norm_type}_norm/{name}": p.grad.detach().norm(norm_type)
             for name, p in module.named_parameters() if p.grad is not None}
    if norms:
        norms[f"grad_{norm_type}_norm_total"] = torch.stack(list(norms.values())).norm(norm_type)
    return norms


def lightning_grad_norm() -> tuple[Callable[[nn.Module, float], Mapping[str, torch.Tensor]], str]:
    """Lightning's ``grad_norm`` utility (it needs no Trainer), or the local equivalent; and which one it is."""
    try:
        from lightning.pytorch.utilities import grad_norm
    except ImportError:
        return _grad_norm_fallback, "local equivalent (lightning not installed)"
    return grad_norm, "lightning.pytorch.utilities.grad_norm"


class GradNormProbe(Probe):
    """Per-parameter 2-norms of the gradients after every backward pass, as Python floats."""

    def __init__(self) -> None:
        self.grad_norm, self.source = lightning_grad_norm()
        self.logged: dict[str, float] = {}

    def after_backward(self, module: nn.Module, phase: str) -> None:
        self.logged = {key: float(value) for key, value in self.grad_norm(module, 2).items()}


class SumsProbe(Probe):
    """Sum and sum of squares of every recorded module's input, output and both gradients (``sums``), with the
    recorder's own layer discovery and reduction and nothing else."""

    def __init__(self, models: nn.Module | Mapping[str, nn.Module]) -> None:
        layers = discover_layers(normalize_models(models))
        self.modules = [layer.module for net in layers.values() for layer in net]
        self.values: list[torch.Tensor] = []
        self.handles: list[torch.utils.hooks.RemovableHandle] = []
        self.last: torch.Tensor | None = None

    def _sums(self, t: torch.Tensor) -> None:
        self.values += sum_and_square_sum(t)

    def _pre(self, module: nn.Module, args: tuple) -> tuple | None:
        x = args[0] if args and isinstance(args[0], torch.Tensor) and args[0].is_floating_point() else None
        if x is None or not torch.is_grad_enabled():
            return None
        self._sums(x)
        if not x.requires_grad:
            return None
        x = x.view_as(x)
        x.register_hook(self._sums)
        return (x, *args[1:])

    def _post(self, module: nn.Module, args: tuple, output: object) -> None:
        output = first_tensor(output)
        if output is not None and torch.is_grad_enabled():
            self._sums(output)
            if output.requires_grad:
                output.register_hook(self._sums)

    def enter(self) -> None:
        for m in self.modules:
            self.handles += [m.register_forward_pre_hook(self._pre), m.register_forward_hook(self._post)]

    def exit(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def after_step(self, it: int, phase: str, module: nn.Module) -> None:
        if self.values:
            self.last = torch.stack(self.values)  # one vector per step, as the recorder packs its values
        self.values = []


class HistogramProbe(Probe):
    """A TensorBoard histogram of every parameter of the updated module after every optimizer step."""

    def __init__(self, out: str) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.out = out
        self.writer = SummaryWriter(out)

    def after_step(self, it: int, phase: str, module: nn.Module) -> None:
        for name, p in module.named_parameters():
            self.writer.add_histogram(f"{phase}/{name}", p.detach(), it)

    def drain(self) -> None:
        self.writer.flush()  # waits for the writer thread's queue: its work belongs to this variant

    def settle(self) -> None:
        self.writer.flush()

    def finish(self, steps: int) -> dict[str, float]:
        self.writer.close()
        return {"disk KB/step": directory_bytes(self.out) / 1024 / max(steps, 1)}


def make_probe(name: str, models: nn.Module | dict[str, nn.Module], out: str) -> Probe:
    """The probe of one of :data:`VARIANTS` (writing below ``out``)."""
    if name in ("off", "off2"):
        return Probe()
    if name in ("every1", "every10"):
        return RecorderProbe(models, f"{out}/{name}", every=int(name.removeprefix("every")))
    if name == "gradnorm":
        return GradNormProbe()
    if name == "sums":
        return SumsProbe(models)
    return HistogramProbe(f"{out}/{name}")


# --- the models -----------------------------------------------------------------------------------------
class Model:
    """A model to benchmark: what the recorder watches, the training step, a title and its last loss."""

    def __init__(self, watched: nn.Module | dict[str, nn.Module], step: Step, title: str,
                 loss: Callable[[], float] | None = None) -> None:
        self.watched, self.step, self.title, self.loss = watched, step, title, loss


def single_net_step(model: nn.Module, opt: torch.optim.Optimizer, loss_of: Callable[[int], torch.Tensor],
                    last: list[torch.Tensor]) -> Step:
    """One optimizer step on ``loss_of(it)``, calling the probe's hooks (phase ``"train"``)."""

    def step(it: int, probe: Probe) -> None:
        probe.begin(it, "train")
        loss = loss_of(it)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        probe.after_backward(model, "train")
        opt.step()
        probe.scalars(it, {"loss": loss})
        probe.after_step(it, "train", model)
        last[:] = [loss.detach()]

    return step


def build_sndcgan(batch: int, device: torch.device) -> Model:
    disc, gen = make_gan("sn", 32, device)
    batch = batch or 16
    return Model({"D": disc, "G": gen}, make_step(disc, gen, batch, 32, device),
                 f"SNDCGAN GAN step (D+G, SN on D, hinge loss, Adam), batch {batch}, 32x32")


def build_gpt2(batch: int, device: torch.device, seq_len: int = 64, n_batches: int = 8) -> Model:
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # a loss-type notice on the first forward pass
    torch.manual_seed(0)
    config = GPT2Config(n_layer=12, n_embd=256, n_head=8, vocab_size=2048, n_positions=128)
    model = GPT2LMHeadModel(config).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4)
    batch = batch or 4
    tokens = torch.randint(0, config.vocab_size, (n_batches, batch, seq_len), device=device)
    last: list[torch.Tensor] = []

    def loss_of(it: int) -> torch.Tensor:
        x = tokens[it % n_batches]
        return model(input_ids=x, labels=x).loss

    n_params = sum(p.numel() for p in model.parameters()) / 1e6
    return Model(model, single_net_step(model, opt, loss_of, last),
                 f"GPT-2 LM step (12 blocks, d 256, 8 heads, vocab 2048, {n_params:.1f}M params, "
                 f"attention {model.config._attn_implementation}), AdamW, batch {batch} x {seq_len} tokens",
                 lambda: float(last[0]) if last else float("nan"))


def plain_cnn(depth: int = 50, widths: tuple[int, ...] = (16, 32, 64), classes: int = 10) -> nn.Sequential:
    """``depth`` 3x3 conv + ReLU layers in ``len(widths)`` stages (stride 2 into each later stage), pool, linear."""
    per_stage = [depth // len(widths) + (i < depth % len(widths)) for i in range(len(widths))]
    layers: list[nn.Module] = []
    c_in = 3
    for stage, (width, n) in enumerate(zip(widths, per_stage)):
        for i in range(n):
            conv = nn.Conv2d(c_in, width, 3, stride=2 if stage and i == 0 else 1, padding=1)
            nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")  # keeps 50 plain layers' scale
            nn.init.zeros_(conv.bias)
            layers += [conv, nn.ReLU()]
            c_in = width
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, classes))


def build_cnn50(batch: int, device: torch.device, n_batches: int = 8) -> Model:
    torch.manual_seed(0)
    model = plain_cnn().to(device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    batch = batch or 16
    x = torch.randn(n_batches, batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (n_batches, batch), device=device)
    last: list[torch.Tensor] = []
    n_conv = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    return Model(model, single_net_step(model, opt, lambda it: F.cross_entropy(model(x[it % n_batches]),
                                                                               y[it % n_batches]), last),
                 f"plain CNN, {n_conv} 3x3 convs + ReLU (16/32/64 channels), linear head, SGD momentum, "
                 f"batch {batch}, 32x32", lambda: float(last[0]) if last else float("nan"))


BUILDERS = {"sndcgan": build_sndcgan, "gpt2": build_gpt2, "cnn50": build_cnn50}


# --- running ----------------------------------------------------------------------------------------------
def profile(model: Model, name: str, steps: int, out: str, top: int = 15) -> str:
    """cProfile of ``steps`` steps of one variant (after 2 warm-up steps): the top cumulative ``gradscope/record``
    entries, with the profiled steps' total for scale."""
    probe = make_probe(name, model.watched, out)
    probe.enter()
    for it in range(2):
        model.step(it, probe)
    probe.settle()
    profiler = cProfile.Profile()
    start = time.process_time()
    profiler.enable()
    for it in range(2, 2 + steps):
        model.step(it, probe)
    probe.settle()
    profiler.disable()
    total = time.process_time() - start
    probe.exit()
    probe.finish(2 + steps)
    text = io.StringIO()
    stats = pstats.Stats(profiler, stream=text)
    stats.sort_stats("cumulative").print_stats("gradscope/record", top)
    return (f"profile of {name} on {model.title}: {steps} steps + final flush, {total * 1e3 / steps:.1f} CPU ms/step "
            f"under cProfile (which inflates Python-heavy code)\n{text.getvalue()}")


def sync_check(model: Model, names: list[str], steps: int, out: str) -> str:
    """Which variants train ``steps`` steps (after 2 warm-up steps) with no host synchronization (see the docstring)."""
    lines = [f"sync check on {model.title}, {steps} steps after 2 warm-up steps:"]
    for name in names:
        probe = make_probe(name, model.watched, f"{out}/{name}")
        probe.enter()
        for it in range(2):  # first steps allocate, start the power iterations, pick kernels
            model.step(it, probe)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for it in range(2, 2 + steps):
                model.step(it, probe)
            verdict = "no synchronizing call"
        except RuntimeError as exc:
            verdict = f"synchronized at step {it}: {str(exc).splitlines()[0]}"
        finally:
            torch.cuda.set_sync_debug_mode(0)
        probe.settle()
        probe.exit()
        probe.finish(2 + steps)
        lines.append(f"  {name:<10} {verdict}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", default="all", choices=(*MODELS, "all"), help="model to benchmark (all: each in turn)")
    add_timing_arguments(parser, VARIANTS, rounds=8, steps=2)
    parser.add_argument("--batch", type=int, default=0, help="batch size (0: each model's default: sndcgan 16, gpt2 4 sequences of 64 tokens, cnn50 16)")
    parser.add_argument("--profile", metavar="VARIANT", choices=VARIANTS,
                        help="profile this variant alone (for --steps steps) instead of timing the variants")
    parser.add_argument("--sync-check", action="store_true",
                        help="CUDA: check that the variants (default off,every1) never wait for the device")
    args, names, device = parse_timing_arguments(parser, VARIANTS)
    if args.sync_check:
        if device.type != "cuda" or not torch.cuda.is_available():
            parser.error("--sync-check needs --device cuda and a CUDA device (on the CPU: tests/test_record_sync.py)")
        if args.variants == ",".join(VARIANTS):
            names = ["off", "every1"]
    grad_norm_source = lightning_grad_norm()[1] if "gradnorm" in names else None
    for key in MODELS if args.model == "all" else (args.model,):
        start = time.perf_counter()
        try:
            model = BUILDERS[key](args.batch, device)
        except ImportError as exc:
            print(f"{key} skipped: {exc}\n", flush=True)
            continue
        with tempfile.TemporaryDirectory(prefix=f"bench-recorder-{key}-") as out:
            if args.profile:
                print(profile(model, args.profile, args.steps, out), flush=True)
                continue
            if args.sync_check:
                print(sync_check(model, names, args.steps, out) + "\n", flush=True)
                continue
            probes = make_probes(names, partial(make_probe, models=model.watched, out=out))
            results = interleave(model.step, probes, args.rounds, args.steps, device)
        print(report(f"{model.title}; device {device}, threads {torch.get_num_threads()}, rounds {args.rounds}",
                     results))
        notes = [f"last loss {model.loss():.4g}"] if model.loss is not None else []
        notes += [f"gradnorm: {grad_norm_source}"] if grad_norm_source else []
        print("; ".join([*notes, f"{time.perf_counter() - start:.0f} s wall"]) + "\n", flush=True)


if __name__ == "__main__":
    main()
