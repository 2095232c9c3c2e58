"""Input conversion shared by the formulas: numpy or torch in, checked float64 numpy out."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch


def as_float64(name: str, value: Any, ndim: int) -> np.ndarray:
    """Convert a numpy array or torch tensor to float64 numpy with a checked rank and finite values."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().double().numpy()
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a numeric array, got {type(value).__name__}") from None
    if array.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return array


def as_float64_tensor(name: str, value: Any) -> torch.Tensor:
    """A 2-D float64 tensor, kept on its device when ``value`` is already a tensor (KID runs there)."""
    if isinstance(value, torch.Tensor):
        if value.ndim != 2:
            raise ValueError(f"{name} must have 2 dimension(s), got shape {tuple(value.shape)}")
        # MPS has no float64: compute there on the CPU instead.
        tensor = value.detach().to("cpu" if value.device.type == "mps" else value.device, torch.float64)
        if not bool(torch.isfinite(tensor).all()):
            raise ValueError(f"{name} contains NaN or infinite values")
        return tensor
    return torch.from_numpy(as_float64(name, value, 2))
