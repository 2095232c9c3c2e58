"""Record where people train: a plain loop, PyTorch Lightning, the Hugging Face ``Trainer``.

- :func:`watch` (also ``gradscope.watch``): a context manager around a plain loop; every
  ``optimizer.step()`` marks a step, the loop body stays as it is;
- :class:`GradscopeCallback`: a Lightning ``Callback`` (``pip install 'lightning>=2.1'``);
- :class:`GradscopeTrainerCallback`: a ``transformers.TrainerCallback``
  (``pip install 'transformers>=4.41' 'accelerate>=1.1'``).

Each writes a gradscope run directory (:func:`gradscope.load_run`, ``gradscope plot``), optionally
with TensorBoard events (``tensorboard=True``, ``pip install 'tensorboard>=2.12'``). Names are
imported on first use: importing this package (or ``gradscope``) never imports Lightning or
transformers, and using a callback without its library raises a one-line ``ImportError`` naming
the extra to install.

torch.compile
-------------
Measured on CPU, torch 2.13, backends ``inductor`` and ``aot_eager``: training through
``torch.compile(model)`` records the same numbers as eager training (``tests/test_integrations.py``
compares every row under ``aot_eager``; under ``inductor`` they agreed to all printed digits), whether
the recorder is handed the original module or the compiled wrapper (whose ``_orig_mod.`` prefix of
layer names the integrations strip; a bare :class:`~gradscope.Recorder` keeps it). Graph breaks
(``TORCH_LOGS=graph_breaks``, ``torch._dynamo.explain``): on a step the recorder records, each watched
layer's forward hook registers a gradient hook on the layer's output (``Tensor.register_hook``),
which dynamo does not trace ("register_hook callbacks that branch on gradient metadata are not
supported"), so each watched layer splits the graph (a 3-layer MLP: 1 graph without the recorder,
7 graphs and 6 breaks with it), and a container that loops over its layers (``nn.Sequential``) runs
that loop eagerly ("graph break in a for/while loop"), each layer compiled on its own. On a step off
the schedule the hooks return at once: 1 graph, no break. So record a compiled model with
``every=N``: most steps then run fully compiled.

Examples
--------
>>> import torch
>>> from torch import nn
>>> from gradscope.integrations import watch
>>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
>>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
>>> with watch(model, opt, alerts=[]) as rec:
...     for batch in torch.randn(3, 16, 4):
...         opt.zero_grad(); model(batch).pow(2).mean().backward(); opt.step()
>>> sorted(rec.run().layers["step"].unique().tolist())
[1, 2, 3]
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from gradscope._lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "watch": "gradscope.integrations.loop",
    "default_models": "gradscope.integrations._core",
    "GradscopeCallback": "gradscope.integrations.lightning",
    "GradscopeTrainerCallback": "gradscope.integrations.transformers",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from gradscope.integrations._core import default_models
    from gradscope.integrations.lightning import GradscopeCallback
    from gradscope.integrations.loop import watch
    from gradscope.integrations.transformers import GradscopeTrainerCallback


__getattr__, __dir__ = lazy_exports("gradscope.integrations", _EXPORTS, globals())
