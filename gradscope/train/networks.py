"""The two networks of a run, their optimizers and the generator's moving average."""
from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from gradscope.train.config import RunConfig


def build_networks(config: RunConfig, dataset) -> tuple[nn.Module, nn.Module]:
    """``(D, G)`` for ``config`` and ``dataset``, on the CPU, from the global RNG (seed it first).

    D is re-initialized with ``config.init`` (when given) and then normalized
    with ``config.norm`` / ``config.scale`` under ``config.power_schedule``
    (``torch``: one power-iteration step per training-mode forward pass;
    ``authors``: the trainer advances the vectors after each D optimizer step);
    a ResNet D takes ``config.d_layout``. G keeps its architecture's reference
    initialization and batch norm.
    """
    from gradscope.init import init_
    from gradscope.models import build_pair
    from gradscope.norms import normalize

    if dataset.kind == "points":
        D, G = build_pair(config.arch, z_dim=config.z_dim, data_dim=int(dataset.sample_shape[0]))
    else:
        D, G = build_pair(config.arch, dataset.image_size, dataset.channels, z_dim=config.z_dim,
                          width=config.width, d_layout=config.d_layout)
    if config.init is not None:
        init_(D, config.init)
    D = normalize(D, norm=config.norm, scale=config.scale, n_power_iterations=1,
                  power_schedule=config.power_schedule)
    # One forward in eval mode (no power-iteration step) fixes what a normalization learns from its first
    # input (strict SN's operator size) on every rank before DDP wraps the model.
    D.eval()
    with torch.no_grad():
        D(torch.zeros(1, *dataset.sample_shape))
    D.train()
    return D, G


def make_optimizer(module: nn.Module, name: str, lr: float, betas: tuple[float, float]) -> torch.optim.Optimizer:
    """``name`` (``"adam"`` or plain ``"sgd"``) over the trainable parameters of ``module`` (a shared gamma once)."""
    params = [p for p in module.parameters() if p.requires_grad]
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    return torch.optim.Adam(params, lr=lr, betas=betas)


@contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """Evaluate ``module`` as a fixed function: eval mode (no power-iteration step), no weight gradients.

    The generator's update differentiates through D without changing it, so D's
    normalizations keep the sigma of the last D update and D's ``.grad`` stays empty.
    (Under ``power_schedule="authors"`` the forward still takes its own unstored
    power step, as in the authors' G step; the stored vectors do not move.)
    """
    was_training = module.training
    flags = [(p, p.requires_grad) for p in module.parameters()]
    module.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        module.train(was_training)


class EMA:
    """Exponential moving average of a module's parameters; buffers (batch-norm statistics) are copied.

    Examples
    --------
    >>> net = nn.Linear(1, 1, bias=False)
    >>> ema = EMA(net, decay=0.5)
    >>> with torch.no_grad(): _ = net.weight.fill_(ema.module.weight.item() + 2.0)
    >>> ema.update(net); float(ema.module.weight - net.weight)
    -1.0
    """

    def __init__(self, module: nn.Module, decay: float) -> None:
        self.decay = float(decay)
        self.module = copy.deepcopy(module).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        """Move the average a step ``1 - decay`` towards ``module``'s current weights."""
        for average, current in zip(self.module.parameters(), module.parameters()):
            average.lerp_(current.detach(), 1.0 - self.decay)
        for average, current in zip(self.module.buffers(), module.buffers()):
            average.copy_(current)
