"""Miyato's spectral normalization (``sn``; ``ssn`` with a constant scale): divide by the reshape's norm."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gradscope._checks import check_choice
from gradscope.linalg import forward_dim, power_step_, reshape_weight
from gradscope.norms.base import SpectralParametrization
from gradscope.norms.schedule import POWER_SCHEDULES, authors_advance_, authors_sigma

WARMUP_ITERATIONS = 15  # at registration, as torch.nn.utils.parametrizations.spectral_norm


def initial_singular_vectors(mat: Tensor, eps: float, warmup: int = WARMUP_ITERATIONS) -> tuple[Tensor, Tensor]:
    """Unit ``(u, v)`` for a matrix: drawn as torch's spectral_norm does (``u`` first), then ``warmup`` power steps.

    ``warmup=0`` is the authors' cold start (the same random draws, no steps).
    """
    mat = mat.detach()
    u = F.normalize(mat.new_empty(mat.shape[0]).normal_(0, 1), dim=0, eps=eps)
    v = F.normalize(mat.new_empty(mat.shape[1]).normal_(0, 1), dim=0, eps=eps)
    power_step_(lambda x: torch.mv(mat, x), lambda y: torch.mv(mat.t(), y), u, v, warmup, eps)
    return u, v


def matrix_sigma(mat: Tensor, u: Tensor, v: Tensor, n_iterations: int, eps: float) -> Tensor:
    """Advance ``u``, ``v`` in place by ``n_iterations`` power steps, then return ``u^T mat v``.

    The power steps run without autograd; the result is differentiable w.r.t.
    ``mat`` (not through ``u``, ``v``), as in Miyato et al. and torch. ``u`` and
    ``v`` are cloned before use so that a second forward (``D(real)`` then
    ``D(fake)``) can update them in place without invalidating the first one's graph.
    """
    if n_iterations:
        power_step_(lambda x: torch.mv(mat, x), lambda y: torch.mv(mat.t(), y), u, v, n_iterations, eps)
    u = u.clone(memory_format=torch.contiguous_format)
    v = v.clone(memory_format=torch.contiguous_format)
    return torch.vdot(u, torch.mv(mat, v))


class ScaledParametrization(SpectralParametrization):
    """Shared mechanics: buffers on the weight's device/dtype, the ``scale * gamma / sigma`` rescaling.

    ``power_schedule`` (one of :data:`~gradscope.norms.schedule.POWER_SCHEDULES`)
    says when the power iteration runs; see :mod:`gradscope.norms.schedule`.
    """

    def __init__(self, weight: Tensor, *, n_power_iterations: int, eps: float, scale: float,
                 gamma: nn.Parameter | None, power_schedule: str = "torch") -> None:
        super().__init__(scale, gamma)
        self.n_power_iterations = int(n_power_iterations)
        self.eps = float(eps)
        self.power_schedule = check_choice("power_schedule", power_schedule, POWER_SCHEDULES)
        self.sigma = torch.ones((), dtype=weight.dtype, device=weight.device)

    @property
    def authors(self) -> bool:
        """Whether the authors' schedule applies (cold start, unstored differentiable step per forward)."""
        return self.power_schedule == "authors"

    def _warmup(self) -> int:
        return 0 if self.authors else WARMUP_ITERATIONS

    def _iterations(self) -> int:
        return self.n_power_iterations if self.training else 0

    def _sigma(self, mat: Tensor, u: Tensor, v: Tensor) -> Tensor:
        # torch: advance the stored u, v (training mode only), differentiate through W only;
        # authors: one unstored, differentiable step from the stored u, in any mode.
        if self.authors:
            return authors_sigma(mat, u, self.n_power_iterations, self.eps)
        return matrix_sigma(mat, u, v, self._iterations(), self.eps)

    def _advance(self, mat: Tensor, u: Tensor, v: Tensor) -> None:
        if not self.authors:
            raise ValueError(f"advance_ belongs to power_schedule 'authors'; this {self.norm} layer uses "
                             f"{self.power_schedule!r}, which advances inside training forwards")
        authors_advance_(mat, u, v, self.n_power_iterations, self.eps)

    def _rescale(self, weight: Tensor, sigma: Tensor) -> Tensor:
        # Records the divisor, then applies it; scalar factors are combined before touching the weight.
        self.sigma.copy_(sigma.detach())
        if self.gamma is None and self.scale == 1.0:
            return weight / sigma
        factor = self.scale / sigma
        if self.gamma is not None:
            factor = factor * self.gamma
        return weight * factor

    def right_inverse(self, value: Tensor) -> Tensor:
        """Assigning ``module.weight = w`` stores ``w`` as the raw weight (as torch's spectral_norm)."""
        return value


class SpectralNorm(ScaledParametrization):
    """``W_eff = scale * gamma * W / sigma_fwd(W)``, Miyato et al. (2018).

    ``sigma_fwd = u^T W_mat v`` with ``W_mat`` the weight reshaped to
    ``(c_out, rest)`` (dim 1 first for ``ConvTranspose``, as torch does),
    ``u``/``v`` persistent buffers advanced by ``n_power_iterations`` power steps
    per training forward and not at all in eval mode; 15 steps at construction
    (``power_schedule="torch"``). Under ``"authors"`` see :mod:`gradscope.norms.schedule`.

    Parameters
    ----------
    weight : Tensor
        The layer's raw weight (read for its shape, device and dtype and the warm-up).
    transposed : bool
        Whether the layer is a ``ConvTranspose`` (output channels on dim 1).
    n_power_iterations : int
        Power steps per training forward.
    eps : float
        Norm floor in normalizations.
    scale : float
        Constant ``c`` multiplying the normalized weight (``ssn``).
    gamma : torch.nn.Parameter, optional
        Learnable scalar multiplying the normalized weight (``sn-*-gamma``).
    power_schedule : {"torch", "authors"}
        When the power iteration runs (:mod:`gradscope.norms.schedule`).

    Examples
    --------
    >>> from torch.nn.utils import parametrize
    >>> layer = nn.Linear(5, 3)
    >>> _ = parametrize.register_parametrization(layer, "weight", SpectralNorm(layer.weight))
    >>> sorted(layer.parametrizations.weight[0].sigma_estimates())
    ['sigma', 'sigma_fwd']
    """

    norm = "sn"

    def __init__(self, weight: Tensor, *, transposed: bool = False, n_power_iterations: int = 1,
                 eps: float = 1e-12, scale: float = 1.0, gamma: nn.Parameter | None = None,
                 power_schedule: str = "torch") -> None:
        super().__init__(weight, n_power_iterations=n_power_iterations, eps=eps, scale=scale, gamma=gamma,
                         power_schedule=power_schedule)
        self.dim = forward_dim(transposed) if weight.ndim > 2 else 0
        u, v = initial_singular_vectors(reshape_weight(weight, self.dim), self.eps, self._warmup())
        self.register_buffer("u", u)
        self.register_buffer("v", v)

    def forward(self, weight: Tensor) -> Tensor:
        """Return the normalized weight (torch schedule: advancing ``u``, ``v`` in training mode)."""
        sigma = self._sigma(reshape_weight(weight, self.dim), self.u, self.v)
        return self._rescale(weight, sigma)

    def advance_(self, weight: Tensor) -> None:
        """Authors' schedule: move the stored ``u`` (and ``v``) one update on ``weight`` (the raw weight)."""
        self._advance(reshape_weight(weight.detach(), self.dim), self.u, self.v)

    def sigma_estimates(self) -> dict[str, Tensor]:
        """``{"sigma", "sigma_fwd"}``: the same value, the forward reshape's norm estimate."""
        sigma = self.sigma.detach()
        return {"sigma": sigma, "sigma_fwd": sigma}
