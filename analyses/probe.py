"""Probing a discriminator at one moment: the input batches, and one recorded forward / backward pass.

C6 and C7 look at per-layer gradient norms and variances of a discriminator
at a given moment (at initialization, after training) without training it;
:func:`recorded_pass` runs the real :class:`gradscope.record.Recorder` on a
single pass so the numbers mean exactly what they mean in a recorded run.
C1-C3 evaluate gradients on :func:`probe_inputs` (real samples and noise).
"""
from __future__ import annotations

from collections.abc import Iterable

import pandas as pd
import torch
from torch import Tensor, nn

from analyses.plain_networks import DTYPE
from gradscope.record import Recorder

#: Statistics of a single pass that the analyses read.
PASS_STATS: tuple[str, ...] = ("act_in_var", "act_out_var", "grad_out_norm", "grad_out_var", "grad_in_norm",
                               "grad_in_var")


def recorded_pass(model: nn.Module, batch: Tensor, stats: Iterable[str] = PASS_STATS, net: str = "D"
                  ) -> pd.DataFrame:
    """Record one forward and backward pass of ``model(batch).mean()``; return the layer table.

    Parameters
    ----------
    model : nn.Module
        The network (its parameters' ``.grad`` are left as they were).
    batch : Tensor
        Inputs.
    stats : iterable of str
        Names from :data:`gradscope.record.STATS` (cheap schedule).
    net : str
        Name the model is recorded under.

    Returns
    -------
    DataFrame
        Columns ``step, phase, net, layer, layer_index, stat, value`` (step 0, phase ``"probe"``).

    Examples
    --------
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    >>> table = recorded_pass(net, torch.randn(16, 4), stats=["grad_out_norm"])
    >>> sorted(table["layer"].unique())
    ['0', '2']
    """
    saved = {name: None if p.grad is None else p.grad.clone() for name, p in model.named_parameters()}
    with Recorder({net: model}, every=1, stats=list(stats), alerts=[]) as recorder:
        recorder.begin(0, "probe")
        # a leaf that requires grad, so the first layer's input gradient exists
        model(batch.detach().requires_grad_(True)).mean().backward()
        recorder.step(0, "probe")
        table = recorder.run().layers
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.grad = saved[name]
    return table


def digits_batch(size: int, image_size: int, channels: int = 3, seed: int = 0) -> Tensor:
    """``size`` built-in digits (no download) at ``image_size``, repeated to ``channels``, in [-1, 1]."""
    from gradscope.data import load_dataset

    data = load_dataset("digits", image_size=image_size)
    index = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:size]
    return data.get_batch(index).expand(-1, channels, -1, -1).contiguous()


def real_batch(dataset: str, size: int, seed: int, image_size: int | None = None, channels: int = 3) -> Tensor:
    """``size`` training samples of a built-in dataset (images repeated to ``channels``), float64."""
    from gradscope.data import load_dataset

    if dataset == "digits":
        return digits_batch(size, image_size, channels=channels, seed=seed).to(DTYPE)
    data = load_dataset(dataset, seed=seed)
    index = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:size]
    return data.get_batch(index).to(DTYPE)


def probe_inputs(real: Tensor, seed: int) -> dict[str, Tensor]:
    """The inputs every state is measured on: real samples and as many standard-normal ones."""
    noise = torch.randn(real.shape, generator=torch.Generator().manual_seed(seed), dtype=DTYPE)
    return {"real": real, "noise": noise}
