"""``GradscopeTrainerCallback``: record a Hugging Face ``Trainer``
(``pip install 'transformers>=4.41' 'accelerate>=1.1'``).

How steps are marked
--------------------
``on_optimizer_step`` (right after ``optimizer.step()``, before ``zero_grad``, so this step's
``.grad`` is still there) marks step ``state.global_step + 1``: the value ``global_step`` takes
a moment later, at ``on_step_end``. Steps count optimizer updates from 1; with
``gradient_accumulation_steps=k`` the ``k`` micro-batches of an update are pooled into one recorded
step. Transformers versions without ``on_optimizer_step`` fall back to ``on_step_end`` (then
``grad_w_raw_norm`` is missing: the gradients are already zeroed there).

Passes between the end of one update and the start of the next (evaluation, logging, saving) are
hidden from the hooks. Only the main process (``state.is_world_process_zero``) records.

Output
------
A gradscope run directory, ``out`` or ``<args.output_dir>/gradscope``; ``tensorboard=True`` adds
event files under ``.../gradscope/tensorboard``, so ``tensorboard --logdir <output_dir>`` shows them
beside the Trainer's own. With ``scalars=True`` the numbers the Trainer logs (``loss``,
``grad_norm``, ``learning_rate``, ``eval_loss``, ...) are stored in the run's scalars table at their
``global_step``, so the non-finite alert sees the loss too. ``train(resume_from_checkpoint=...)``
continues the same run directory from the checkpoint's step.

The Trainer has no callback for an exception: a training that raises leaves the run marked
``running`` with what was flushed. Call :meth:`GradscopeTrainerCallback.close` yourself to mark it::

    try:
        trainer.train()
    except BaseException as exc:
        callback.close(error=exc)
        raise

This module is named after the library it serves; it imports it absolutely (``import transformers``
inside ``gradscope.integrations`` finds the top-level package, never this file).
"""
from __future__ import annotations

import numbers
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from gradscope.integrations._core import (Session, check_name, check_recorder_options, resolve_models, state_of,
                                          unwrap_compiled)
from gradscope._install import TRANSFORMERS
from gradscope.record import Recorder

INSTALL_HINT = f"GradscopeTrainerCallback needs Hugging Face transformers: {TRANSFORMERS}"

try:
    import transformers
    from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
except ImportError:  # pragma: no cover - exercised where the extra is missing
    raise ImportError(INSTALL_HINT) from None


class GradscopeTrainerCallback(TrainerCallback):
    """A ``transformers.TrainerCallback`` that records per-layer statistics while ``Trainer.train`` runs.

    Parameters
    ----------
    models : nn.Module or dict of str to nn.Module or str, optional
        What to record; strings are submodule paths of the Trainer's model (``{"body": "transformer"}``).
        Default: the whole model as net ``"model"`` (the Trainer calls its ``forward``).
    out : str or Path, optional
        Run directory; default ``<args.output_dir>/gradscope``. Must not hold a run unless training
        resumes from a checkpoint (then it is continued) or ``overwrite`` is set.
    every : int
        Record the cheap statistics on steps divisible by ``every``.
    tensorboard : bool
        Also write TensorBoard events to ``out/tensorboard`` (``pip install 'tensorboard>=2.12'``).
    phase : str
        The phase name of the recorded steps.
    scalars : bool
        Store the Trainer's logged numbers in the run's scalars table.
    overwrite : bool
        Replace a run already in ``out``.
    **recorder_options
        Any other :class:`~gradscope.Recorder` keyword (``exact_every``, ``stats``, ``alerts``, ...).

    Examples
    --------
    >>> from gradscope.integrations.transformers import GradscopeTrainerCallback  # doctest: +SKIP
    >>> trainer = Trainer(model=model, args=args, train_dataset=data,
    ...                   callbacks=[GradscopeTrainerCallback(every=10)])          # doctest: +SKIP
    >>> trainer.train()                                                           # doctest: +SKIP
    >>> gradscope.load_run(f"{args.output_dir}/gradscope").layers                 # doctest: +SKIP
    """

    def __init__(self, models: nn.Module | Mapping[str, nn.Module | str] | None = None, *,
                 out: str | os.PathLike[str] | None = None, every: int = 1, tensorboard: bool = False,
                 phase: str = "train", scalars: bool = True, overwrite: bool = False,
                 **recorder_options: Any) -> None:
        check_name("phase", phase)
        self.models, self.phase, self.scalars, self.overwrite = models, phase, bool(scalars), bool(overwrite)
        self.options = check_recorder_options({**recorder_options, "every": every, "tensorboard": tensorboard})
        self._out = None if out is None else Path(out)
        self.out: Path | None = None
        self.session: Session | None = None
        self._marked = False

    @property
    def recorder(self) -> Recorder | None:
        """The recorder while training runs, else ``None``."""
        return self.session.recorder if self.session is not None and not self.session.closed else None

    def close(self, state: str | None = None, error: BaseException | None = None) -> None:
        """Flush and mark the run ``state`` (default: ``done``, or what ``error`` implies); idempotent."""
        if self.session is not None:
            self.session.close(state or state_of(error), error)

    # --- the Trainer's events ------------------------------------------------------------------
    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       model: nn.Module | None = None, **kwargs: Any) -> None:
        self.close()
        if not state.is_world_process_zero:
            return
        if model is None:
            raise ValueError("GradscopeTrainerCallback got no model from the Trainer; pass models={...}")
        self.out = self._out if self._out is not None else Path(args.output_dir) / "gradscope"
        config = {"integration": "transformers", "transformers": transformers.__version__,
                  "model": type(model).__name__, "phases": [self.phase]}
        chosen = unwrap_compiled({"model": model}) if self.models is None else resolve_models(self.models, model)
        self.session = Session(chosen, self.out, start_step=state.global_step + 1, overwrite=self.overwrite,
                               config=config, options=self.options)
        self.session.pause()

    def on_step_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                      **kwargs: Any) -> None:
        if self.recorder is not None:
            self._marked = False
            self.session.resume()

    def on_optimizer_step(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                          **kwargs: Any) -> None:
        if self.recorder is not None:
            self.session.step(state.global_step + 1, self.phase)
            self._marked = True
            self.session.pause()

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    **kwargs: Any) -> None:
        if self.recorder is None:
            return
        if not self._marked:
            self.session.step(state.global_step, self.phase)
        self.session.pause()

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
               logs: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        if self.recorder is None or not self.scalars or not logs:
            return
        numbers_only = {name: float(value) for name, value in logs.items()
                        if isinstance(value, numbers.Real) and not isinstance(value, bool)}
        if numbers_only:
            self.recorder.log_scalars(state.global_step, numbers_only)

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                     **kwargs: Any) -> None:
        self.close("done")
