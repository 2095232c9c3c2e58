"""Every random-number state a run touches, as tensors and plain values (safe for ``weights_only`` loads).

The trainer draws its own randomness (latents, penalty interpolation) from a
dedicated ``torch.Generator`` and the data order from a seed, but libraries it
calls may use the global generators of torch, CUDA, NumPy and ``random``: all
of them are saved so that a resumed run draws exactly what an uninterrupted one
would.
"""
from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def capture_rng_state(generators: dict[str, torch.Generator] | None = None) -> dict[str, Any]:
    """Snapshot the global RNGs and the named ``generators``.

    Examples
    --------
    >>> state = capture_rng_state()
    >>> a = torch.rand(1); restore_rng_state(state); bool(torch.rand(1) == a)
    True
    """
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, py_state, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": {"version": int(version), "state": list(py_state), "gauss_next": gauss_next},
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generators": {name: g.get_state() for name, g in (generators or {}).items()},
    }
    return state


def restore_rng_state(state: dict[str, Any], generators: dict[str, torch.Generator] | None = None) -> None:
    """Restore a :func:`capture_rng_state` snapshot (CUDA states only for the devices present)."""
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state((numpy_state["kind"], numpy_state["keys"].numpy().astype(np.uint32),
                         numpy_state["pos"], numpy_state["has_gauss"], numpy_state["cached"]))
    python_state = state["python"]
    random.setstate((python_state["version"], tuple(python_state["state"]), python_state["gauss_next"]))
    cuda_states = state.get("cuda") or []
    if cuda_states and torch.cuda.is_available():
        for index, cuda_state in enumerate(cuda_states[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, index)
    for name, generator in (generators or {}).items():
        generator.set_state(state["generators"][name])
