"""Bidirectional spectral normalization (``bsn``; ``bssn`` with a constant scale), Lin et al. (2021)."""
from __future__ import annotations

from torch import Tensor, nn

from gradscope.linalg import forward_dim, reshape_weight
from gradscope.norms.spectral import ScaledParametrization, initial_singular_vectors


class BidirectionalSpectralNorm(ScaledParametrization):
    """``W_eff = scale * gamma * W / ((sigma_fwd + sigma_bwd) / 2)``.

    ``sigma_fwd`` is the norm of the reshape ``(c_out, c_in*k*k)`` (as in ``sn``),
    ``sigma_bwd`` that of ``(c_in, c_out*k*k)``, each estimated from its own
    persistent power-iteration vectors (buffers ``u_fwd``, ``v_fwd``, ``u_bwd``,
    ``v_bwd``). The average mirrors Xavier initialization balancing forward
    activations and backward gradients. A linear layer has ``sigma_fwd = sigma_bwd``;
    there a single pair of vectors is kept and the result equals ``sn``.

    Parameters are those of :class:`gradscope.norms.SpectralNorm`.

    Examples
    --------
    >>> from torch.nn.utils import parametrize
    >>> conv = nn.Conv2d(3, 8, 3)
    >>> _ = parametrize.register_parametrization(conv, "weight", BidirectionalSpectralNorm(conv.weight))
    >>> sorted(conv.parametrizations.weight[0].sigma_estimates())
    ['sigma', 'sigma_bwd', 'sigma_fwd']
    """

    norm = "bsn"

    def __init__(self, weight: Tensor, *, transposed: bool = False, n_power_iterations: int = 1,
                 eps: float = 1e-12, scale: float = 1.0, gamma: nn.Parameter | None = None,
                 power_schedule: str = "torch") -> None:
        super().__init__(weight, n_power_iterations=n_power_iterations, eps=eps, scale=scale, gamma=gamma,
                         power_schedule=power_schedule)
        self.dim_fwd = forward_dim(transposed) if weight.ndim > 2 else 0
        self.two_sided = weight.ndim > 2
        sides = ("fwd", "bwd") if self.two_sided else ("fwd",)
        for side in sides:
            u, v = initial_singular_vectors(reshape_weight(weight, self._dim(side)), self.eps, self._warmup())
            self.register_buffer(f"u_{side}", u)
            self.register_buffer(f"v_{side}", v)
        self.register_buffer("sigma_fwd", self.sigma.clone())
        self.register_buffer("sigma_bwd", self.sigma.clone())

    def _dim(self, side: str) -> int:
        return self.dim_fwd if side == "fwd" else 1 - self.dim_fwd

    def forward(self, weight: Tensor) -> Tensor:
        """Return the normalized weight (torch schedule: advancing both sides' vectors in training mode)."""
        sigma_fwd = self._sigma(reshape_weight(weight, self.dim_fwd), self.u_fwd, self.v_fwd)
        if self.two_sided:
            sigma_bwd = self._sigma(reshape_weight(weight, 1 - self.dim_fwd), self.u_bwd, self.v_bwd)
            sigma = (sigma_fwd + sigma_bwd) / 2
        else:
            sigma_bwd = sigma = sigma_fwd
        self.sigma_fwd.copy_(sigma_fwd.detach())
        self.sigma_bwd.copy_(sigma_bwd.detach())
        return self._rescale(weight, sigma)

    def advance_(self, weight: Tensor) -> None:
        """Authors' schedule: move each side's stored vectors one update on ``weight`` (the raw weight)."""
        weight = weight.detach()
        for side in ("fwd", "bwd") if self.two_sided else ("fwd",):
            self._advance(reshape_weight(weight, self._dim(side)), getattr(self, f"u_{side}"),
                          getattr(self, f"v_{side}"))

    def sigma_estimates(self) -> dict[str, Tensor]:
        """``{"sigma", "sigma_fwd", "sigma_bwd"}``; ``sigma`` is their mean, the divisor."""
        return {"sigma": self.sigma.detach(), "sigma_fwd": self.sigma_fwd.detach(),
                "sigma_bwd": self.sigma_bwd.detach()}
