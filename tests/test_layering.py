"""Data flows one way: the library (gradscope/) never imports the analyses built on top of it, and the
integrations (gradscope/integrations/, above ``record``) are the only place that imports the optional
training libraries, while nothing else in gradscope/ imports the integrations."""
from __future__ import annotations

import ast
from pathlib import Path

import gradscope

PACKAGE_ROOT = Path(gradscope.__file__).resolve().parent
FORBIDDEN = "analyses"


INTEGRATIONS = "gradscope.integrations"
#: Imported by gradscope/integrations/ only (each an optional extra; ``import gradscope`` must stay fast).
OPTIONAL_LIBRARIES = ("lightning", "pytorch_lightning", "transformers", "accelerate")


def forbidden_imports(source: str, forbidden: str = FORBIDDEN) -> list[tuple[int, str]]:
    """``(line, module)`` of every ``import analyses...`` / ``from analyses... import`` / literal
    ``import_module("analyses...")`` / ``__import__("analyses...")`` in ``source`` (or of ``forbidden``,
    a dotted module name, and its submodules)."""

    def _names_top(name: str | None) -> bool:
        return name is not None and (name == forbidden or name.startswith(forbidden + "."))

    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if _names_top(alias.name)]
        elif isinstance(node, ast.ImportFrom):
            # a relative import inside gradscope/ stays inside gradscope/
            if node.level == 0 and _names_top(node.module):
                found.append((node.lineno, node.module))
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            callee = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            first = node.args[0]
            if (callee in ("import_module", "__import__") and isinstance(first, ast.Constant)
                    and isinstance(first.value, str) and _names_top(first.value)):
                found.append((node.lineno, first.value))
    return found


def test_detector_finds_every_import_form_and_nothing_else():
    planted = (
        "import analyses\n"
        "import os, analyses.common as c\n"
        "from analyses.layers import weight_layers\n"
        "def f():\n"
        "    from analyses import c1_exploding\n"
        "    importlib.import_module('analyses.c2_raw_gradient')\n"
        "    return __import__('analyses')\n"
    )
    assert forbidden_imports(planted) == [
        (1, "analyses"), (2, "analyses.common"), (3, "analyses.layers"), (5, "analyses"),
        (6, "analyses.c2_raw_gradient"), (7, "analyses"),
    ]
    innocent = (
        "import analysesx\n"
        "from gradscope.plot.report import find_analyses\n"
        "from . import analyses\n"
        "importlib.import_module(module_name)\n"
        "print('analyses.c1')\n"
    )
    assert forbidden_imports(innocent) == []


def test_no_gradscope_module_imports_analyses():
    modules = sorted(PACKAGE_ROOT.rglob("*.py"))
    assert len(modules) > 20 and PACKAGE_ROOT / "linalg" / "layers.py" in modules
    offenders = [f"{path.relative_to(PACKAGE_ROOT.parent)}:{line} imports {name}"
                 for path in modules for line, name in forbidden_imports(path.read_text(encoding="utf-8"))]
    assert offenders == []


def test_only_the_integrations_import_optional_libraries_and_nothing_imports_the_integrations():
    integrations = PACKAGE_ROOT / "integrations"
    assert (integrations / "lightning.py").exists() and (integrations / "transformers.py").exists()
    offenders = []
    for path in sorted(PACKAGE_ROOT.rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        where = path.relative_to(PACKAGE_ROOT.parent)
        inside = integrations in path.parents
        for library in () if inside else OPTIONAL_LIBRARIES:
            offenders += [f"{where}:{line} imports {name}" for line, name in forbidden_imports(source, library)]
        # gradscope/__init__.py names ``watch`` lazily (its import sits under TYPE_CHECKING)
        if not inside and path != PACKAGE_ROOT / "__init__.py":
            offenders += [f"{where}:{line} imports {name}" for line, name in forbidden_imports(source, INTEGRATIONS)]
    assert offenders == []
    assert forbidden_imports("from gradscope.integrations.loop import watch\nimport transformers.trainer\n"
                             "import gradscope.integrationsx\n", INTEGRATIONS) == [(1, "gradscope.integrations.loop")]
