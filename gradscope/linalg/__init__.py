"""Exact spectral norms: of weight reshapes (dense SVD) and of convolution operators (FFT / power iteration).

The building blocks (the operator's apply/adjoint pair, in-place power steps)
are shared with the strict spectral normalization in :mod:`gradscope.norms`.
"""
from __future__ import annotations

from gradscope.linalg.conv import (
    PADDING_MODES,
    ConvGeometry,
    conv_adjoint,
    conv_apply,
    conv_geometry,
    conv_geometry_of,
    conv_operator_matrix,
    kernel_gradient,
)
from gradscope.linalg.hvp import SymmetricExtremes, hessian_extremes, hessian_vector_product, symmetric_lanczos
from gradscope.linalg.operator_norm import METHODS, circular_singular_values, conv_operator_norm, default_tol
from gradscope.linalg.power import TopSingular, lanczos, normalize_into_, power_iteration, power_step_
from gradscope.linalg.reshape import forward_dim, forward_reshape_dims, reshape_norms, reshape_weight, rmt_spectral_norm

# Last: layers needs gradscope.norms.base, whose package imports the names above.
from gradscope.linalg.layers import WeightLayer, layer_sigmas, weight_layers  # noqa: E402

__all__ = [
    "METHODS", "PADDING_MODES", "ConvGeometry", "SymmetricExtremes", "TopSingular", "WeightLayer",
    "circular_singular_values", "conv_adjoint", "conv_apply", "conv_geometry", "conv_geometry_of",
    "conv_operator_matrix", "conv_operator_norm", "default_tol", "forward_dim", "forward_reshape_dims",
    "hessian_extremes",
    "hessian_vector_product", "kernel_gradient", "lanczos", "layer_sigmas", "normalize_into_", "power_iteration",
    "power_step_", "reshape_norms", "reshape_weight", "rmt_spectral_norm", "symmetric_lanczos", "weight_layers",
]
