"""The authors' training settings A, B and C (THEORY.md, "Reference setup") as run presets.

All three train the SNDCGAN with the hinge loss, batch 64 and Adam, and
evaluate IS / FID every 10k iterations:

=======  ==================  ============  =====  =========================================
preset   lr (D, G)           betas         n_dis  iterations
=======  ==================  ============  =====  =========================================
A        1e-4, 1e-4          (0.5, 0.999)  1      400k (cifar10, celeba), 800k (stl10)
B        2e-4, 2e-4          (0.5, 0.999)  1      as A
C        1e-4, 1e-4          (0.5, 0.9)    5      400k
=======  ==================  ============  =====  =========================================

Setting A sweeps the scale ``c`` and setting B the four learning-rate pairs in
{1e-4, 2e-4}; a preset is one run, so B fixes the pair the paper adds to A
(2e-4 for both) and the sweep presets (``gradscope sweep``) cover the grids.
Without ``--dataset`` a preset trains on cifar10.
"""
from __future__ import annotations

from typing import Any

from gradscope._checks import check_choice

PRESET_DATASET = "cifar10"
_LONG_DATASETS = {"stl10": 800_000}

_COMMON: dict[str, Any] = {
    "arch": "sndcgan", "loss": "hinge", "batch_size": 64, "ema": 0.0, "iterations": 400_000,
    "eval_every": 10_000, "eval_samples": 10_000, "sample_every": 10_000, "checkpoint_every": 10_000,
    "exact_every": 1_000, "flush_every": 500,
}

PRESETS: dict[str, dict[str, Any]] = {
    "A": {**_COMMON, "lr_d": 1e-4, "lr_g": 1e-4, "betas": (0.5, 0.999), "n_dis": 1},
    "B": {**_COMMON, "lr_d": 2e-4, "lr_g": 2e-4, "betas": (0.5, 0.999), "n_dis": 1, "scale": 1.0},
    "C": {**_COMMON, "lr_d": 1e-4, "lr_g": 1e-4, "betas": (0.5, 0.9), "n_dis": 5},
}


def preset_values(name: str, dataset: str | None = None) -> dict[str, Any]:
    """The field values of preset ``name`` for ``dataset`` (default cifar10).

    Examples
    --------
    >>> v = preset_values("C")
    >>> v["n_dis"], v["betas"], v["dataset"]
    (5, (0.5, 0.9), 'cifar10')
    >>> preset_values("A", "stl10")["iterations"]
    800000
    """
    check_choice("preset", name, tuple(PRESETS))
    dataset = dataset or PRESET_DATASET
    values = {**PRESETS[name], "dataset": dataset, "preset": name}
    if name in ("A", "B") and dataset in _LONG_DATASETS:
        values["iterations"] = _LONG_DATASETS[dataset]
    return values
