"""A small two-phase training loop shared by the recorder's storage and alert tests."""
from __future__ import annotations

import torch
from torch import nn

from gradscope.record import Recorder


def train_two_phases(rec: Recorder, model: nn.Module, opt: torch.optim.Optimizer, steps: range,
                     nan_step: int = 5) -> None:
    """Two phases per step (as a GAN's D and G updates), logging a ``marker`` scalar that is NaN at ``nan_step``."""
    for step in steps:
        for phase in ("a", "b"):
            opt.zero_grad()
            loss = model(torch.randn(6, 4)).pow(2).mean()
            loss.backward()
            opt.step()
            rec.log_scalars(step, {f"loss_{phase}": loss, "marker": float("nan") if step == nan_step else 1.0})
            rec.step(step, phase)
