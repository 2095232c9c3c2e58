"""gradscope: spectral normalization in GANs, made runnable, observable and checkable.

The public API, in the order data flows through it (what the model is ->
what is observed -> what is concluded):

- normalization and initialization: :func:`normalize`, :data:`NORMS`,
  :func:`init_`, :data:`INIT_SCHEMES`, :func:`parametrization_of`,
  :func:`raw_weight`, :func:`effective_weight`;
- exact spectral norms: :mod:`gradscope.linalg` (:func:`reshape_norms`,
  :func:`conv_operator_norm`, :func:`rmt_spectral_norm`);
- models and data: :func:`build_pair`, :func:`load_dataset`;
- recording: :class:`Recorder`, :class:`AlertRule`, :func:`load_run`, :func:`register_layout` (with
  :class:`Operator`) for your own layer types, and :func:`watch` for a plain
  training loop (the Lightning and Hugging Face callbacks are in :mod:`gradscope.integrations`, so
  that their libraries are imported only where they are used);
- training: :class:`RunConfig`, :func:`resume` and ``gradscope.train.train(config)`` (the
  sub-package ``gradscope.train`` holds the trainer, so the function is not re-exported);
- sample quality: :func:`evaluate_generator`, :func:`frechet_distance`,
  :func:`inception_score`, :func:`kernel_inception_distance`, :func:`mode_metrics`;
- figures and reports from recorded runs: :func:`plot_runs`, :func:`plot_gradient_flow`,
  :func:`write_report`.

Names are imported on first use, so ``import gradscope`` (and the CLI) start fast.

Examples
--------
Normalize a discriminator with bidirectional scaled SN, record it for a few
steps and read the per-layer statistics back:

>>> import torch, gradscope
>>> from gradscope.models import SNDCGANDiscriminator
>>> D = gradscope.normalize(SNDCGANDiscriminator(image_size=32), norm="bssn", scale=1.2)
>>> with gradscope.Recorder({"D": D}, out="runs/demo") as rec:       # doctest: +SKIP
...     for step in range(3):
...         D(torch.randn(8, 3, 32, 32)).mean().backward()
...         rec.step(step, phase="d")
>>> gradscope.load_run("runs/demo").layers.head()                     # doctest: +SKIP
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from gradscope._lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "NORMS": "gradscope.norms",
    "normalize": "gradscope.norms",
    "parametrization_of": "gradscope.norms",
    "raw_weight": "gradscope.norms",
    "effective_weight": "gradscope.norms",
    "SpectralParametrization": "gradscope.norms",
    "INIT_SCHEMES": "gradscope.init",
    "init_": "gradscope.init",
    "reshape_norms": "gradscope.linalg",
    "conv_operator_norm": "gradscope.linalg",
    "rmt_spectral_norm": "gradscope.linalg",
    "ARCHS": "gradscope.models",
    "build_pair": "gradscope.models",
    "DATASETS": "gradscope.data",
    "load_dataset": "gradscope.data",
    "Recorder": "gradscope.record",
    "AlertRule": "gradscope.record",
    "STATS": "gradscope.record",
    "Run": "gradscope.record",
    "RunWriter": "gradscope.record",
    "load_run": "gradscope.record",
    "register_layout": "gradscope.record",
    "Operator": "gradscope.record",
    "watch": "gradscope.integrations.loop",
    "RunConfig": "gradscope.train",
    "RunResult": "gradscope.train",
    "resume": "gradscope.train",
    "evaluate_generator": "gradscope.metrics",
    "frechet_distance": "gradscope.metrics",
    "inception_score": "gradscope.metrics",
    "kernel_inception_distance": "gradscope.metrics",
    "mode_metrics": "gradscope.metrics",
    "plot_runs": "gradscope.plot.runs",
    "plot_gradient_flow": "gradscope.plot.flow",
    "write_report": "gradscope.plot.report",
}

__all__ = ["__version__", *sorted(_EXPORTS)]

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from gradscope.data import DATASETS, load_dataset
    from gradscope.init import INIT_SCHEMES, init_
    from gradscope.integrations.loop import watch
    from gradscope.linalg import conv_operator_norm, reshape_norms, rmt_spectral_norm
    from gradscope.metrics import (evaluate_generator, frechet_distance, inception_score,
                                   kernel_inception_distance, mode_metrics)
    from gradscope.models import ARCHS, build_pair
    from gradscope.plot.flow import plot_gradient_flow
    from gradscope.plot.report import write_report
    from gradscope.plot.runs import plot_runs
    from gradscope.norms import (NORMS, SpectralParametrization, effective_weight, normalize,
                                 parametrization_of, raw_weight)
    from gradscope.record import STATS, AlertRule, Operator, Recorder, Run, RunWriter, load_run, register_layout
    from gradscope.train import RunConfig, RunResult, resume


__getattr__, __dir__ = lazy_exports("gradscope", _EXPORTS, globals())
