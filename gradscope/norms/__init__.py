"""The spectral-normalization family as ``torch.nn.utils.parametrize`` parametrizations.

Use :func:`normalize` to apply a mode (one of :data:`NORMS`) to a whole model;
read a layer through :func:`parametrization_of`, :func:`raw_weight` and
:func:`effective_weight` (no power-iteration side effects). Under
``normalize(..., power_schedule="authors")`` call :func:`advance_power_iteration`
after each optimizer step (:mod:`gradscope.norms.schedule`).
"""
from __future__ import annotations

from gradscope.norms.api import NORMS, SCALED_NORMS, SUPPORTED_LAYERS, normalize
from gradscope.norms.base import SpectralParametrization, effective_weight, parametrization_of, raw_weight
from gradscope.norms.bidirectional import BidirectionalSpectralNorm
from gradscope.norms.gamma import GammaScaling
from gradscope.norms.schedule import POWER_SCHEDULES, advance_power_iteration
from gradscope.norms.spectral import SpectralNorm
from gradscope.norms.strict import StrictSpectralNorm

__all__ = [
    "NORMS", "POWER_SCHEDULES", "SCALED_NORMS", "SUPPORTED_LAYERS", "BidirectionalSpectralNorm", "GammaScaling",
    "SpectralNorm", "SpectralParametrization", "StrictSpectralNorm", "advance_power_iteration", "effective_weight",
    "normalize", "parametrization_of", "raw_weight",
]
