"""The public API: every advertised name resolves to the object of its home module."""
from __future__ import annotations

import importlib
import subprocess
import sys

import gradscope


def test_every_export_resolves_to_its_home_module():
    for name, module in gradscope._EXPORTS.items():
        assert getattr(gradscope, name) is getattr(importlib.import_module(module), name), name
    assert set(gradscope.__all__) == {"__version__", *gradscope._EXPORTS}


def test_unknown_attribute_is_an_attribute_error():
    try:
        gradscope.no_such_name  # noqa: B018
    except AttributeError as exc:
        assert "no_such_name" in str(exc)
    else:  # pragma: no cover
        raise AssertionError("expected AttributeError")


def test_import_is_lazy():
    code = "import sys, gradscope; print('torch' in sys.modules, 'pandas' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_the_readme_workflow_end_to_end(tmp_path):
    import torch

    from gradscope.models import SNDCGANDiscriminator

    D = gradscope.normalize(SNDCGANDiscriminator(image_size=16), norm="bssn", scale=1.2)
    with gradscope.Recorder({"D": D}, out=tmp_path / "run") as rec:
        for step in range(3):
            D(torch.randn(4, 3, 16, 16)).mean().backward()
            rec.step(step, phase="d")
    layers = gradscope.load_run(tmp_path / "run").layers
    assert set(layers["step"]) == {0, 1, 2}
    assert (layers["net"] == "D").all()
    sigma = layers[(layers["stat"] == "sigma")]
    assert len(sigma) and (sigma["value"] > 0).all()
