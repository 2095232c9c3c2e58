"""``GradscopeCallback``: record a PyTorch Lightning fit (``pip install 'lightning>=2.1'``).

How steps are marked
--------------------
Every optimizer step marks a step, through torch's ``Optimizer.register_step_post_hook`` on each of
``trainer.optimizers``: right after the update, before any ``zero_grad``, so this step's ``.grad`` is
still there. That one mechanism serves both optimization modes:

- automatic optimization: one optimizer, phase ``"train"``, step = ``trainer.global_step`` after
  the update (1, 2, ...). With ``accumulate_grad_batches=k`` the ``k`` micro-batches of an update
  are pooled into one recorded step. An update a gradient scaler skips still closes its step.
- manual optimization (a GAN with two optimizers): each optimizer is a phase, named by ``phases``
  in ``configure_optimizers`` order (default ``opt0``, ``opt1``, ...), and the step is the number of
  training batches that stepped an optimizer so far, this one included: every update inside one
  ``training_step`` carries the same step, like ``gradscope run``'s ``d`` and ``g`` phases of one
  iteration. (``trainer.global_step`` counts each optimizer's steps, so it grows twice as fast.)
  Several updates of one optimizer in one batch: the first is recorded.

Passes outside training batches (sanity check, validation, anything in epoch-end hooks) are hidden
from the hooks. Only global rank 0 records.

Output
------
A gradscope run directory, ``out`` or ``<trainer.log_dir>/gradscope`` (the logger's version folder,
or ``default_root_dir`` without a logger): read it with :func:`gradscope.load_run`, draw it with
``gradscope plot``. ``tensorboard=True`` adds the recorder's own event files under
``.../gradscope/tensorboard``, inside the logger's folder, so ``tensorboard --logdir lightning_logs``
shows Lightning's metrics and gradscope's per-layer curves side by side. Nothing is sent through
``trainer.logger``: per-layer statistics are hundreds of series, which would flood whatever tracker
the logger is (W&B, MLflow, CSV); alerts are printed by the recorder (one line on stderr). The run
is marked ``done`` at the end of training, ``interrupted`` (Ctrl-C) or ``failed`` on an exception.
A fit resumed from a checkpoint continues the same run directory from the checkpoint's step.

torch.compile
-------------
A child compiled with ``torch.compile`` records the same numbers as in eager mode and keeps its layer
names; on recorded steps the hooks split the compiled graph (see :mod:`gradscope.integrations`).

Attribution
-----------
Each pass counts for the update in which it ran. A generator sample drawn before the D update and
reused for the G update puts G's forward pass in phase ``d`` and leaves G without rows in phase ``g``;
draw the G update's sample anew (as ``gradscope run`` does), or run the G update first.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from gradscope.integrations._core import (Session, StepHooks, check_phases, check_recorder_options, resolve_models,
                                          state_of)
from gradscope._install import LIGHTNING
from gradscope.record import Recorder

INSTALL_HINT = f"GradscopeCallback needs PyTorch Lightning: {LIGHTNING}"

try:
    import lightning
    from lightning.pytorch import Callback, LightningModule, Trainer
except ImportError:  # pragma: no cover - exercised where the extra is missing
    raise ImportError(INSTALL_HINT) from None


class GradscopeCallback(Callback):
    """A Lightning ``Callback`` that records per-layer statistics while ``trainer.fit`` trains.

    Parameters
    ----------
    models : nn.Module or dict of str to nn.Module or str, optional
        What to record: e.g. ``{"D": "disc", "G": "gen"}`` (submodule paths of the LightningModule, or
        the modules themselves). Default: every child of the LightningModule that holds recorded layers,
        named by attribute (see :func:`gradscope.integrations.default_models`).
    out : str or Path, optional
        Run directory; default ``<trainer.log_dir>/gradscope``. Must not hold a run unless the fit
        resumes (then it is continued) or ``overwrite`` is set.
    every : int
        Record the cheap statistics on steps divisible by ``every``.
    tensorboard : bool
        Also write TensorBoard events to ``out/tensorboard`` (``pip install 'tensorboard>=2.12'``).
    phases : sequence of str, optional
        Phase names of ``trainer.optimizers``, in ``configure_optimizers`` order (``("g", "d")``);
        default ``"train"`` for one optimizer, else ``opt0``, ``opt1``, ...
    overwrite : bool
        Replace a run already in ``out``.
    **recorder_options
        Any other :class:`~gradscope.Recorder` keyword (``exact_every``, ``stats``, ``alerts``, ...).

    Attributes
    ----------
    recorder : Recorder or None
        The recorder while training runs (on global rank 0), e.g. for ``recorder.log_scalars``.
    out : Path or None
        The run directory, once training started.

    Examples
    --------
    >>> from gradscope.integrations.lightning import GradscopeCallback      # doctest: +SKIP
    >>> trainer = lightning.pytorch.Trainer(max_steps=100, callbacks=[GradscopeCallback(every=10)])  # doctest: +SKIP
    >>> trainer.fit(module, loader)                                          # doctest: +SKIP
    >>> gradscope.load_run(f"{trainer.log_dir}/gradscope").layers            # doctest: +SKIP
    """

    def __init__(self, models: nn.Module | Mapping[str, nn.Module | str] | None = None, *,
                 out: str | os.PathLike[str] | None = None, every: int = 1, tensorboard: bool = False,
                 phases: Sequence[str] | None = None, overwrite: bool = False, **recorder_options: Any) -> None:
        super().__init__()
        self.models, self.overwrite, self.phases = models, bool(overwrite), phases
        self.options = check_recorder_options({**recorder_options, "every": every, "tensorboard": tensorboard})
        self._out = None if out is None else Path(out)
        self.out: Path | None = None
        self.session: Session | None = None
        self._hooks: StepHooks | None = None
        self._names: tuple[str, ...] = ()
        self._automatic = True
        self._completed = 0
        self._stepped = False
        self._restored: int | None = None

    @property
    def recorder(self) -> Recorder | None:
        """The recorder while training runs, else ``None``."""
        return self.session.recorder if self.session is not None and not self.session.closed else None

    # --- start and end ------------------------------------------------------------------------
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Here, not at on_fit_start: optimizers and a checkpoint's global_step are restored by now.
        self._finish("done")
        log_dir = trainer.log_dir  # a collective call under DDP: every rank asks
        self.out = self._out if self._out is not None else Path(log_dir or trainer.default_root_dir) / "gradscope"
        if not trainer.is_global_zero:
            return
        optimizers = list(trainer.optimizers)
        self._names = check_phases(self.phases, len(optimizers), type(pl_module).__name__)
        self._automatic = bool(pl_module.automatic_optimization)
        if self._automatic or self._restored is None:
            # Without the callback's own state, a manual fit resumes at one batch per len(optimizers) steps.
            self._completed = trainer.global_step // (1 if self._automatic else max(len(optimizers), 1))
        else:
            self._completed = self._restored
        config = {"integration": "lightning", "lightning": lightning.__version__, "phases": list(self._names),
                  "automatic_optimization": self._automatic, "module": type(pl_module).__name__}
        self.session = Session(resolve_models(self.models, pl_module), self.out, start_step=self._completed + 1,
                               overwrite=self.overwrite, config=config, options=self.options)
        self.session.pause()
        self._hooks = StepHooks(optimizers, self._optimizer_stepped)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._finish("done")

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._finish(state_of(exception), exception)

    def _finish(self, state: str, error: BaseException | None = None) -> None:
        if self._hooks is not None:
            self._hooks.remove()
            self._hooks = None
        if self.session is not None:
            self.session.close(state, error)

    # --- steps -----------------------------------------------------------------------------------
    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if self.recorder is not None:
            self._stepped = False
            self.session.resume()

    def _optimizer_stepped(self, index: int) -> None:
        if self.recorder is not None:
            self.session.step(self._completed + 1, self._names[index])
            self._stepped = True

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.recorder is None:
            return
        if self._automatic:
            if trainer.global_step > self._completed and not self._stepped:
                # A skipped update (gradient scaler) still ends the step: its passes must not pool into the next.
                self.session.step(trainer.global_step, self._names[0])
            self._completed = trainer.global_step
        elif self._stepped:
            self._completed += 1
        self.session.pause()

    # --- checkpoints -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The number of training batches that stepped (manual optimization resumes its step numbers from it)."""
        return {"completed": self._completed}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (called by Lightning before training resumes)."""
        self._restored = int(state_dict.get("completed", 0))
