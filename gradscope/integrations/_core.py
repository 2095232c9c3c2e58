"""What the integrations share: a recorder with its own run directory, a gate that hides passes outside
training steps, and the optimizer hooks that mark a step whenever an optimizer steps.

Nothing here imports Lightning or transformers: the plain-loop helper and both callbacks build on it.
"""
from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gradscope._checks import check_int_at_least
from gradscope.record import Recorder, RunWriter
from gradscope.record.layers import check_name  # re-used by the integrations: one place to follow it

#: Recorder arguments an integration sets itself; every other ``Recorder`` keyword may be passed through.
OWN_ARGUMENTS = frozenset({"self", "models", "out", "start_step"})


def check_recorder_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` if every key is a :class:`~gradscope.Recorder` keyword an integration passes through.

    Examples
    --------
    >>> check_recorder_options({"every": 10})
    {'every': 10}
    >>> check_recorder_options({"evry": 10})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: unknown recorder option 'evry'; valid: alert_printer, alerts, device_sync_every, every, ...
    """
    valid = sorted(set(inspect.signature(Recorder).parameters) - OWN_ARGUMENTS)
    for key in options:
        if key not in valid:
            raise ValueError(f"unknown recorder option {key!r}; valid: {', '.join(valid)}")
    return dict(options)


def check_phases(phases: object, count: int, what: str) -> tuple[str, ...]:
    """Phase names for ``count`` optimizers: ``phases`` checked, or ``train`` for one and ``opt0, opt1, ...``."""
    if phases is None:
        return ("train",) if count == 1 else tuple(f"opt{i}" for i in range(count))
    names = (phases,) if isinstance(phases, str) else tuple(phases)  # type: ignore[arg-type]
    if len(names) != count:
        raise ValueError(f"phases names {len(names)} phase(s) ({', '.join(map(str, names))}) but {what} has "
                         f"{count} optimizer(s); give one phase per optimizer, in order")
    if len(set(names)) != len(names):
        raise ValueError(f"phases must be distinct, got {', '.join(map(str, names))}")
    for name in names:
        check_name("phase", name)
    return names


def open_writer(out: str | os.PathLike[str], start_step: int, overwrite: bool) -> RunWriter:
    """The run directory ``out`` for a recorder whose first step is ``start_step``.

    A directory that already holds a run is continued when training resumes (``start_step > 1``; rows
    after ``start_step - 1`` are dropped, as a resumed ``gradscope run`` does), replaced with
    ``overwrite``, and otherwise refused with a one-line ``ValueError``.
    """
    path = Path(out)
    writer = RunWriter(path, resume=True)  # opens (and locks) what is there without judging it
    if start_step > 1 and not overwrite:
        writer.truncate_after(start_step - 1)
        return writer
    if writer.holds_run():
        try:
            if not overwrite:
                raise ValueError(f"{str(path)!r} already holds a gradscope run; pass another out= or overwrite=True")
            replacement = RunWriter(path, overwrite=True)  # shares the lock, so it is never let go in between
        finally:
            writer.close()
        return replacement
    return writer


class Session:
    """A :class:`~gradscope.Recorder` that an integration opened, with the run directory it owns.

    Parameters
    ----------
    models : nn.Module or dict of str to nn.Module
        What to record.
    out : str or Path
        The run directory (see :func:`open_writer`).
    start_step : int
        The first step that will be marked.
    overwrite : bool
        Replace a run already in ``out``.
    config : dict
        Extra keys of the run's ``config.json`` (which integration, library versions).
    options : dict
        Further :class:`~gradscope.Recorder` keywords (checked by :func:`check_recorder_options`).
    """

    def __init__(self, models: nn.Module | Mapping[str, nn.Module], out: str | os.PathLike[str], *,
                 start_step: int, overwrite: bool, config: Mapping[str, Any], options: Mapping[str, Any]) -> None:
        check_int_at_least("start_step", start_step, 0)
        self.writer = open_writer(out, start_step, overwrite)
        self.last_step: int | None = start_step - 1 if start_step > 0 else None
        self._gate: ExitStack | None = None
        self._closed = False
        try:
            self.recorder = Recorder(models, out=self.writer, start_step=start_step, **options)
            # The writer is passed in, so the recorder leaves config, provenance and status to its owner.
            self.writer.write_config({**config, "start_step": start_step, "recorder": self.recorder.settings()})
            self.writer.write_provenance(device=str(_device_of(self.recorder.models)))
            self.writer.set_status("running", step=start_step - 1)
            self.recorder.attach()
        except BaseException:
            self.writer.close()  # a session that never started must not keep the directory locked
            raise

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` ran."""
        return self._closed

    def pause(self) -> None:
        """Hide every pass from the hooks until :meth:`resume` (validation, evaluation, logging)."""
        if self._gate is None:
            self._gate = ExitStack()
            self._gate.enter_context(self.recorder.paused())

    def resume(self) -> None:
        """Let the hooks see passes again."""
        if self._gate is not None:
            self._gate.close()
            self._gate = None

    def step(self, step: int, phase: str) -> None:
        """Mark the end of an optimizer step (the recorder decides whether it is on its schedule)."""
        self.recorder.step(step, phase)
        self.last_step = step if self.last_step is None else max(step, self.last_step)

    def close(self, state: str = "done", error: BaseException | None = None) -> None:
        """Flush, remove the hooks and mark the run ``state`` (with the error's first line, if any)."""
        if self._closed:
            return
        self._closed = True
        try:
            self.resume()
            self.recorder.close(state)
            info = {}
            if error is not None:
                text = str(error).strip()
                info["error"] = text.splitlines()[0] if text else type(error).__name__
            elif state == "done" and self.recorder.nonfinite is not None:  # as a Recorder(out=...) marks it
                state, info["reason"] = "diverged", self.recorder.nonfinite
            self.writer.set_status(state, step=self.last_step, **info)
        finally:
            self.writer.close()  # releases the run directory's lock


def state_of(exception: BaseException | None) -> str:
    """The run state an exception leaves: ``interrupted`` for Ctrl-C, ``failed`` otherwise, ``done`` for none."""
    if exception is None:
        return "done"
    return "interrupted" if isinstance(exception, KeyboardInterrupt) else "failed"


class StepHooks:
    """Calls ``on_step(index)`` after every ``step()`` of the optimizer at ``index`` in ``optimizers``.

    Uses torch's ``Optimizer.register_step_post_hook``: the hook runs right after the update and before
    any ``zero_grad``, so the recorder still reads this step's ``.grad``. An optimizer step that a
    gradient scaler skips (non-finite gradients) calls no hook.
    """

    def __init__(self, optimizers: list[torch.optim.Optimizer], on_step: Callable[[int], None]) -> None:
        for i, opt in enumerate(optimizers):
            if not isinstance(opt, torch.optim.Optimizer):
                raise ValueError(f"optimizer {i} must be a torch.optim.Optimizer, got {type(opt).__name__}")
        self.handles = [opt.register_step_post_hook(lambda *_, i=i: on_step(i))
                        for i, opt in enumerate(optimizers)]

    def remove(self) -> None:
        """Remove every hook."""
        for handle in self.handles:
            handle.remove()
        self.handles = []


def unwrap_compiled(models: nn.Module | Mapping[str, nn.Module]) -> nn.Module | dict[str, nn.Module]:
    """``models`` with each ``torch.compile`` wrapper replaced by the module it compiles.

    The hooks work either way (dynamo runs the original module's hooks), but a wrapper's layers are
    named ``_orig_mod.<name>``; unwrapped, they keep the names of the module the user wrote.
    """
    if isinstance(models, nn.Module):
        inner = getattr(models, "_orig_mod", None)  # what torch.compile's OptimizedModule wraps
        return inner if isinstance(inner, nn.Module) else models
    if isinstance(models, Mapping):
        return {name: unwrap_compiled(model) if isinstance(model, nn.Module) else model
                for name, model in models.items()}
    return models


def resolve_models(models: nn.Module | Mapping[str, nn.Module | str] | None, root: nn.Module,
                   ) -> nn.Module | dict[str, nn.Module]:
    """What to record inside ``root``: ``models`` with submodule paths (``"disc"``) looked up in ``root``,
    or, for ``None``, :func:`default_models` of ``root``."""
    if models is None:
        return unwrap_compiled(default_models(root))
    if isinstance(models, nn.Module):
        return unwrap_compiled(models)
    if not isinstance(models, Mapping) or not models:
        raise ValueError("models must be an nn.Module or a non-empty dict of names to nn.Modules or submodule "
                         f"paths, got {type(models).__name__}")
    resolved: dict[str, nn.Module] = {}
    for name, value in models.items():
        if isinstance(value, str):
            try:
                value = root.get_submodule(value)
            except AttributeError:
                children = ", ".join(child for child, _ in root.named_children()) or "none"
                raise ValueError(f"{type(root).__name__} has no submodule {value!r}; its children: "
                                 f"{children}") from None
        resolved[name] = value
    return unwrap_compiled(resolved)


def default_models(root: nn.Module) -> dict[str, nn.Module]:
    """The children of ``root`` that hold parameters (what the recorder watches), named by attribute.

    A ``LightningModule``'s training code usually calls its children (``self.net(x)``), not itself,
    and each child is a natural net to name (``gen``, ``disc``): so the children are the nets. ``ModuleList`` / ``ModuleDict`` children, which are never called
    themselves, are replaced by their elements (``blocks.0``, ``blocks.1``, ...).

    Examples
    --------
    >>> class Pair(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.gen, self.disc, self.loss = nn.Linear(2, 3), nn.Sequential(nn.Linear(3, 1)), nn.BCELoss()
    >>> sorted(default_models(Pair()))
    ['disc', 'gen']
    """
    found: dict[str, nn.Module] = {}

    def visit(module: nn.Module, prefix: str) -> None:
        for name, child in module.named_children():
            if isinstance(child, (nn.ModuleList, nn.ModuleDict)):
                visit(child, f"{prefix}{name}.")
            elif any(True for _ in child.parameters()):
                found[prefix + name] = child

    visit(root, "")
    if not found:
        raise ValueError(f"{type(root).__name__} has no child module with layers gradscope records; pass "
                         "models={'name': submodule, ...}")
    return found


def _device_of(models: Mapping[str, nn.Module]) -> torch.device:
    for model in models.values():
        for param in model.parameters():
            return param.device
    return torch.device("cpu")
