"""``watch()``: record a plain training loop without touching its body.

The loop stays as it is; every ``optimizer.step()`` marks a step, found through torch's
``Optimizer.register_step_post_hook`` (so gradient accumulation is one recorded step per optimizer
step, and every forward and backward pass since the previous step is pooled into it).
"""
from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from gradscope._checks import check_int_at_least
from gradscope.integrations._core import StepHooks, check_name, check_recorder_options, unwrap_compiled
from gradscope.record import Recorder


@contextmanager
def watch(models: nn.Module | Mapping[str, nn.Module],
          optimizers: torch.optim.Optimizer | Mapping[str, torch.optim.Optimizer], *,
          out: str | os.PathLike[str] | None = None, every: int = 1, tensorboard: bool = False,
          start_step: int = 1, **recorder_options: Any) -> Iterator[Recorder]:
    """Record ``models`` while a plain loop trains them; every optimizer step marks a step.

    Parameters
    ----------
    models : nn.Module or dict of str to nn.Module
        What to record (as for :class:`~gradscope.Recorder`; the modules whose ``forward`` the loop calls).
    optimizers : Optimizer or dict of str to Optimizer
        One optimizer (phase ``"train"``), or several keyed by phase name **in the order they step
        within one iteration**, e.g. ``{"d": opt_d, "g": opt_g}``.
    out : str or Path, optional
        Run directory (must not hold a run yet); ``None`` keeps the rows in memory (``rec.run()``).
    every : int
        Record the cheap statistics on steps divisible by ``every``.
    tensorboard : bool
        Also write TensorBoard events to ``out/tensorboard`` (``pip install 'tensorboard>=2.12'``).
    start_step : int
        Number of the first iteration (1: step ``k`` is the state after ``k`` updates, as in
        ``gradscope run``, Lightning's and Hugging Face's ``global_step``).
    **recorder_options
        Any other :class:`~gradscope.Recorder` keyword (``exact_every``, ``stats``, ``alerts``, ...).

    Yields
    ------
    Recorder
        The attached recorder (``log_scalars``, ``paused()``, ``run()``); closed on exit, with the run
        marked ``done``, ``failed`` or ``interrupted``.

    Notes
    -----
    Step numbers count iterations: an iteration ends when the *last* optimizer of ``optimizers``
    steps, and each optimizer's step is recorded as ``(iteration, its phase)``. With one optimizer,
    step ``k`` is its ``k``-th step. With ``{"d": opt_d, "g": opt_g}`` and five D updates per G
    update, the five D updates of iteration ``k`` all carry step ``k`` and the first is recorded, as
    ``gradscope run --n-dis 5`` does. Hooks see only modules in ``models`` whose own ``forward`` runs.

    Examples
    --------
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> with watch(model, opt, alerts=[]) as rec:
    ...     for batch in torch.randn(6, 16, 4):
    ...         model(batch).pow(2).mean().backward()
    ...         opt.step()
    ...         opt.zero_grad()
    >>> sorted(rec.run().layers["step"].unique().tolist())
    [1, 2, 3, 4, 5, 6]
    """
    check_int_at_least("start_step", start_step, 0)
    if isinstance(optimizers, torch.optim.Optimizer):
        named = {"train": optimizers}
    elif isinstance(optimizers, Mapping) and optimizers:
        named = dict(optimizers)
        for phase in named:
            check_name("phase", phase)
    else:
        raise ValueError("optimizers must be a torch.optim.Optimizer or a non-empty dict of phase name to "
                         f"Optimizer, got {type(optimizers).__name__}")
    phases = list(named)
    options = check_recorder_options(recorder_options)
    recorder = Recorder(unwrap_compiled(models), every=every, out=out, tensorboard=tensorboard,
                        start_step=start_step, **options)
    completed = start_step - 1

    def stepped(index: int) -> None:
        nonlocal completed
        recorder.step(completed + 1, phases[index])
        if index == len(phases) - 1:
            completed += 1

    with recorder:
        hooks = StepHooks(list(named.values()), stepped)
        try:
            yield recorder
        finally:
            hooks.remove()
