"""The GAN losses: hinge (the reference's), non-saturating, and WGAN-GP (the gamma experiments').

With ``r = D(x_real)`` and ``f = D(G(z))`` (logits, shape ``(batch,)``):

=========  ===============================================  ====================
loss       discriminator minimizes                          generator minimizes
=========  ===============================================  ====================
hinge      E[relu(1 - r)] + E[relu(1 + f)]                  -E[f]
ns         E[softplus(-r)] + E[softplus(f)]                 E[softplus(-f)]
wgan-gp    E[f] - E[r] + 10 E[(||grad_x D(x_hat)|| - 1)^2]  -E[f]
=========  ===============================================  ====================

``softplus(-r) = -log sigmoid(r)``: the non-saturating loss of Goodfellow et
al. 2014. The gradient penalty (Gulrajani et al. 2017) is taken at
``x_hat = eps x_real + (1 - eps) x_fake`` with ``eps ~ U(0, 1)`` per sample,
differentiated twice through the (normalized) discriminator.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from gradscope._checks import check_choice
from gradscope.train.config import LOSSES

GP_WEIGHT = 10.0


def discriminator_loss(loss: str, real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """The discriminator's loss without any penalty; float32 even under bf16 autocast.

    Examples
    --------
    >>> r, f = torch.tensor([2.0, 0.0]), torch.tensor([-2.0, 0.5])
    >>> float(discriminator_loss("hinge", r, f))  # (0 + 1)/2 + (0 + 1.5)/2
    1.25
    """
    check_choice("loss", loss, LOSSES)
    r, f = real_logits.float(), fake_logits.float()
    if loss == "hinge":
        return F.relu(1.0 - r).mean() + F.relu(1.0 + f).mean()
    if loss == "ns":
        return F.softplus(-r).mean() + F.softplus(f).mean()
    return f.mean() - r.mean()


def generator_loss(loss: str, fake_logits: Tensor) -> Tensor:
    """The generator's loss.

    Examples
    --------
    >>> float(generator_loss("hinge", torch.tensor([1.0, 3.0])))
    -2.0
    """
    check_choice("loss", loss, LOSSES)
    f = fake_logits.float()
    if loss == "ns":
        return F.softplus(-f).mean()
    return -f.mean()


def interpolate(real: Tensor, fake: Tensor, eps: Tensor) -> Tensor:
    """``eps * real + (1 - eps) * fake`` per sample (``eps`` of shape ``(batch,)``), a leaf requiring grad.

    Examples
    --------
    >>> x = interpolate(torch.zeros(2, 3), torch.ones(2, 3), torch.tensor([0.25, 1.0]))
    >>> x[:, 0].tolist(), x.requires_grad
    ([0.75, 0.0], True)
    """
    weight = eps.to(device=real.device, dtype=real.dtype).view((-1,) + (1,) * (real.dim() - 1))
    return (weight * real.detach() + (1.0 - weight) * fake.detach()).requires_grad_(True)


def gradient_penalty(logits: Tensor, points: Tensor) -> Tensor:
    """``E[(||grad_x D(x)|| - 1)^2]`` at ``points`` (which ``logits = D(points)`` came from).

    The graph is kept (``create_graph=True``) so the penalty's own gradient
    reaches D's weights through the second derivative.

    Examples
    --------
    >>> x = torch.randn(4, 3, requires_grad=True)
    >>> w = torch.tensor([3.0, 4.0, 0.0])
    >>> float(gradient_penalty(x @ w, x))  # ||w|| = 5 for every sample
    16.0
    """
    (grad,) = torch.autograd.grad(logits.float().sum(), points, create_graph=True)
    return (grad.flatten(1).norm(dim=1) - 1.0).pow(2).mean()

