"""The GAN training loop: D and G updates, logging, evaluation, checkpoints, divergence and stop requests.

Step ``k`` (1-based) is the state after ``k`` generator updates; everything
logged or recorded for update ``k`` carries step ``k``, evaluations at step
``k`` see that state (step 0: before training), and the checkpoint of step
``k`` resumes with update ``k + 1``.

One discriminator update feeds D a single batch ``[real; fake]`` (plus the
interpolates under WGAN-GP): one forward pass, hence exactly one
power-iteration step per D update, as in the reference, and under DDP one
buffer broadcast per backward pass. The generator update differentiates
through D in eval mode with D's weights frozen, so it neither advances D's
power iteration nor leaves gradients on D. Under ``--power-schedule authors``
every D forward (G update included) takes its own unstored power step, and the
stored vectors move once per D update, right after the D optimizer step
(:func:`gradscope.norms.advance_power_iteration`), as in the authors' code.
"""
from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from gradscope.norms import advance_power_iteration
from gradscope.train.checkpoint import CHECKPOINT_FORMAT, checkpoint_path, config_digest, save_checkpoint, save_final
from gradscope.train.config import RunConfig
from gradscope.train.disk import fault_errno
from gradscope.train.distributed import DistContext, wrap
from gradscope.train.evaluation import Evaluator
from gradscope.train.losses import GP_WEIGHT, discriminator_loss, generator_loss, gradient_penalty, interpolate
from gradscope.train.networks import EMA, build_networks, frozen, make_optimizer
from gradscope.train.progress import Progress, format_metrics
from gradscope.train.rng import capture_rng_state, restore_rng_state
from gradscope.train.scalars import ScalarLog
from gradscope.train.stream import BatchStream

#: Offset of the latent generator's seed from the run's seed (weights use the seed itself).
LATENT_SEED_OFFSET = 1
#: Steps between host synchronizations (finiteness check, progress) on an accelerator; every step on CPU.
ACCELERATOR_SYNC_EVERY = 25
#: Per-step scalars, in the order they are checked for finiteness.
D_SCALARS = ("loss_d", "d_real", "d_fake")
G_SCALARS = ("loss_g",)


@dataclass
class LoopOutcome:
    """How the loop ended: ``state`` done / diverged / interrupted at ``step``."""

    state: str
    step: int
    metrics: dict[str, float] = field(default_factory=dict)
    reason: str | None = None
    signal: int | None = None


class Trainer:
    """One run's networks, optimizers and data, and the loop that trains them.

    Parameters
    ----------
    config : RunConfig
        The run.
    dataset : GANDataset
        Training data.
    device : torch.device
        Where this process trains.
    context : DistContext
        Rank and world size (a single process by default).
    run_dir : Path
        Checkpoints and samples are written here (rank 0 only).
    writer : RunWriter or None
        The run directory's writer on rank 0; ``None`` elsewhere.
    progress : Progress
        Console display.
    """

    def __init__(self, config: RunConfig, dataset, *, device: torch.device, context: DistContext,
                 run_dir: Path, writer=None, progress: Progress | None = None) -> None:
        self.config, self.dataset, self.device, self.context = config, dataset, device, context
        self.run_dir, self.writer, self.recorder = Path(run_dir), writer, None
        self.progress = progress or Progress(config.iterations, 0, enabled=False)
        torch.manual_seed(config.seed)
        D, G = build_networks(config, dataset)
        self.D, self.G = D.to(device), G.to(device)
        self.D_train, self.G_train = wrap(self.D, context, device), wrap(self.G, context, device)
        if config.compile:
            self.D_train, self.G_train = torch.compile(self.D_train), torch.compile(self.G_train)
        self.opt_D = make_optimizer(self.D, config.optimizer, config.lr_d, config.betas)
        self.opt_G = make_optimizer(self.G, config.optimizer, config.lr_g, config.betas)
        self.ema = EMA(self.G, config.ema) if config.ema else None
        self.latents = torch.Generator().manual_seed(config.seed + LATENT_SEED_OFFSET)
        self.stream = BatchStream(dataset, config.batch_size, config.seed, rank=context.rank,
                                  world_size=context.world_size, device=device, workers=config.workers)
        share = config.batch_size // context.world_size
        self.share = slice(context.rank * share, (context.rank + 1) * share)
        self.scalar_names = D_SCALARS + (("penalty",) if config.loss == "wgan-gp" else ()) + G_SCALARS
        self.log = ScalarLog(writer, None, config.flush_every)
        self.evaluator = Evaluator(config, dataset, device, self.run_dir) if context.is_main else None
        self.sync_every = 1 if device.type == "cpu" else ACCELERATOR_SYNC_EVERY
        self.step = 0
        self.metrics: dict[str, float] = {}
        self.latest: dict[str, float] = {}

    def attach_recorder(self, recorder) -> None:
        """Record with ``recorder`` (built on ``{"D": self.D, "G": self.G}``); attaches its hooks."""
        self.recorder = recorder.attach()
        self.log = ScalarLog(self.writer, recorder, self.config.flush_every)

    # --- one iteration ------------------------------------------------------------------------------
    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.config.amp == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _latent(self) -> Tensor:
        # Draw the global batch and keep this rank's share: the sequence is the same on any world size.
        return self.G.sample_latent(self.config.batch_size, device=self.device, generator=self.latents)[self.share]

    def _d_update(self, step: int) -> dict[str, Tensor]:
        rec, loss_name = self.recorder, self.config.loss
        if rec is not None:
            rec.begin(step, "d")
        real = next(self.stream)
        z = self._latent()
        with torch.no_grad(), self._autocast():
            fake = self.G_train(z)
        real, fake = real.detach(), fake.detach().to(real.dtype)
        slopes = rec is not None and rec.collecting_slopes
        if slopes:  # leaves, so the recorder takes per-sample input gradients from this very graph
            real.requires_grad_(True)
            fake.requires_grad_(True)
        parts = [real, fake]
        if loss_name == "wgan-gp":
            eps = torch.rand(self.config.batch_size, generator=self.latents)[self.share]
            parts.append(interpolate(real, fake, eps))
        with self._autocast():
            logits = self.D_train(torch.cat(parts))
        b = real.shape[0]
        real_logits, fake_logits = logits[:b], logits[b:2 * b]
        loss = discriminator_loss(loss_name, real_logits, fake_logits)
        values = {"d_real": real_logits.detach().float().mean(), "d_fake": fake_logits.detach().float().mean()}
        if loss_name == "wgan-gp":
            with rec.paused() if rec is not None else contextlib.nullcontext():
                penalty = gradient_penalty(logits[2 * b:], parts[2])
            loss = loss + GP_WEIGHT * penalty
            values["penalty"] = penalty.detach()
        if slopes:
            rec.record_input_gradients("D", [real, fake], [real_logits, fake_logits], ["real", "fake"])
        self.opt_D.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_D.step()
        if self.config.power_schedule == "authors":  # u moves once per D update, on the updated weights
            advance_power_iteration(self.D)
        if rec is not None:
            rec.step(step, "d")
        self.opt_D.zero_grad(set_to_none=True)
        values["loss_d"] = loss.detach()
        return values

    def _g_update(self, step: int) -> dict[str, Tensor]:
        if self.recorder is not None:
            self.recorder.begin(step, "g")
        z = self._latent()
        with self._autocast():
            fake = self.G_train(z)
            with frozen(self.D):
                logits = self.D(fake)
        loss = generator_loss(self.config.loss, logits)
        self.opt_G.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_G.step()
        if self.ema is not None:
            self.ema.update(self.G)
        if self.recorder is not None:
            self.recorder.step(step, "g")
        return {"loss_g": loss.detach()}

    def train_step(self, step: int) -> dict[str, Tensor]:
        """Run update ``step``: ``n_dis`` D updates then one G update; D's scalars are the first update's."""
        d_values = [self._d_update(step) for _ in range(self.config.n_dis)][0]
        return {**d_values, **self._g_update(step)}

    # --- the loop -----------------------------------------------------------------------------------
    @property
    def sampling_generator(self):
        """The generator used for samples and metrics: the moving average when ``--ema`` is on."""
        return self.ema.module if self.ema is not None else self.G

    def _due(self, every: int, step: int) -> bool:
        return step == self.config.iterations or (every > 0 and step % every == 0)

    def _events(self, step: int) -> None:
        cfg = self.config
        if self.context.is_main and cfg.eval_every and (step == 0 or self._due(cfg.eval_every, step)):
            self.metrics, seconds = self.evaluator.metrics(self.sampling_generator)
            # An undefined number (e.g. the mode histogram's KL with no mode covered) is printed, not stored.
            self.log.log(step, {k: v for k, v in self.metrics.items() if math.isfinite(v)})
            self.progress.write(f"step {step:>{len(str(cfg.iterations))}}/{cfg.iterations}  "
                                f"{format_metrics(self.metrics)}  ({seconds:.1f} s)")
        if self.context.is_main and (step == 0 or self._due(cfg.sample_every, step)):
            self.evaluator.save_samples(self.sampling_generator, step)
        if step > 0 and self._due(cfg.checkpoint_every, step):
            self.save_checkpoint()
            self.progress.note(step, self.latest)

    def _check(self, pending: list[tuple[int, Tensor]]) -> tuple[int | None, str | None, dict[str, float]]:
        """First step with a non-finite scalar (and which), and the latest values, from one host copy."""
        if not pending:
            return None, None, {}
        table = torch.stack([values for _, values in pending]).cpu()
        finite = torch.isfinite(table)
        latest = dict(zip(self.scalar_names, table[-1].tolist()))
        if bool(finite.all()):
            return None, None, latest
        row = int((~finite).any(dim=1).nonzero()[0])
        name = self.scalar_names[int((~finite[row]).nonzero()[0])]
        return pending[row][0], name, latest

    def run(self, stop_requested: Callable[[], int | None]) -> LoopOutcome:
        """Train until ``config.iterations``, a non-finite scalar, or a stop request (signal number)."""
        cfg = self.config
        if self.step == 0:
            self._events(0)
        pending: list[tuple[int, Tensor]] = []
        while self.step < cfg.iterations:
            step = self.step + 1
            values = self.train_step(step)
            self.step = step
            self.log.log(step, values)
            pending.append((step, torch.stack([values[name].float() for name in self.scalar_names])))
            due = any(self._due(every, step) for every in (cfg.eval_every, cfg.sample_every, cfg.checkpoint_every))
            if not (due or step % self.sync_every == 0):
                continue
            bad_step, bad_name, self.latest = self._check(pending)
            pending = []
            signum = stop_requested()
            # The losses of step k see the weights before update k: a checkpoint of step k could hold NaN
            # weights from update k behind finite losses. Checked only when one will be written (one sync).
            saving = bad_step is None and (signum is not None or self._due(cfg.checkpoint_every, step))
            bad_weights = self.nonfinite_weights() if saving else None
            stop, diverged = self.context.any(signum is not None, bad_step is not None or bad_weights is not None)
            if diverged:
                where = bad_step if bad_step is not None else step
                if bad_name:
                    reason = f"non-finite {bad_name} at step {where}"
                elif bad_weights:
                    reason = f"non-finite weights in {bad_weights} at step {where}"
                else:
                    reason = "non-finite values on another rank"
                return LoopOutcome("diverged", where, self.metrics, reason=reason)
            self.progress.update(step, self.latest, self.recorder.latest_alert if self.recorder is not None else None)
            self._events(step)
            if stop:
                if not self._due(cfg.checkpoint_every, step):
                    self.save_checkpoint()
                return LoopOutcome("interrupted", step, self.metrics, signal=signum)
        return LoopOutcome("done", self.step, self.metrics)

    def nonfinite_weights(self) -> str | None:
        """``"D"`` / ``"G"`` (the first net holding a NaN or infinite parameter), or ``None``; one host sync."""
        nets = {"D": self.D, "G": self.G}
        flags = torch.stack([torch.stack([torch.isfinite(p).all() for p in net.parameters()]).all()
                             for net in nets.values()]).tolist()
        return next((name for name, finite in zip(nets, flags) if not finite), None)

    # --- checkpoints --------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: weights and buffers, optimizers, RNGs, data position, recorder."""
        self.log.flush()
        return {
            "format": CHECKPOINT_FORMAT, "step": self.step, "config": self.config.to_dict(),
            "identity": {"config_digest": config_digest(self.config.identity()), "step": self.step},
            "world_size": self.context.world_size, "D": self.D.state_dict(), "G": self.G.state_dict(),
            "G_ema": self.ema.module.state_dict() if self.ema is not None else None,
            "opt_D": self.opt_D.state_dict(), "opt_G": self.opt_G.state_dict(),
            "rng": capture_rng_state({"latents": self.latents}), "data": self.stream.state_dict(),
            "metrics": dict(self.metrics),
            "recorder": self.recorder.state_dict() if self.recorder is not None else None,
        }

    def load_state_dict(self, payload: dict[str, Any]) -> None:
        """Continue from a checkpoint (the recorder, if any, drops what it stored after that step)."""
        if payload.get("format") not in range(1, CHECKPOINT_FORMAT + 1):
            raise ValueError(f"checkpoint format {payload.get('format')!r} is not supported "
                             f"(expected 1 to {CHECKPOINT_FORMAT})")
        self.D.load_state_dict(payload["D"])
        self.G.load_state_dict(payload["G"])
        if self.ema is not None:
            self.ema.module.load_state_dict(payload["G_ema"])
        self.opt_D.load_state_dict(payload["opt_D"])
        self.opt_G.load_state_dict(payload["opt_G"])
        restore_rng_state(payload["rng"], {"latents": self.latents})
        self.stream.load_state_dict(payload["data"])
        self.step = int(payload["step"])
        self.metrics = dict(payload.get("metrics") or {})
        if self.recorder is not None and payload.get("recorder") is not None:
            self.recorder.load_state_dict(payload["recorder"])
        if self.writer is not None:
            self.writer.truncate_after(self.step)

    def save_checkpoint(self) -> Path | None:
        """Write the checkpoint of the current step (rank 0) and mark the run's progress in its status."""
        path = None
        if self.context.is_main:
            try:
                path = save_checkpoint(self.run_dir, self.step, self.state_dict(), keep=self.config.keep_checkpoints)
            except RuntimeError as exc:  # torch.save reports a full disk as a RuntimeError without the file
                code = fault_errno(exc)
                if code is None:
                    raise
                raise OSError(code, os.strerror(code), str(checkpoint_path(self.run_dir, self.step))) from exc
            if self.writer is not None:
                self.writer.set_status("running", step=self.step, checkpoint=path.name)
        self.context.barrier()
        return path

    def export_final(self) -> Path | None:
        """Write ``<run>/final.pt`` (rank 0): the weights of D, G and G's average with the config, nothing to resume."""
        if not self.context.is_main:
            return None
        data = self.dataset
        return save_final(self.run_dir, {
            "step": self.step, "config": self.config.to_dict(),
            "data": {"kind": data.kind, "sample_shape": list(data.sample_shape),
                     "image_size": getattr(data, "image_size", None), "channels": getattr(data, "channels", None)},
            "D": self.D.state_dict(), "G": self.G.state_dict(),
            "G_ema": self.ema.module.state_dict() if self.ema is not None else None,
        })
