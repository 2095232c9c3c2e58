"""Sphinx configuration of gradscope's API reference (``sphinx-build -W -b html docs docs/_build/html``).

Only the docstrings of the public API (``gradscope.__all__``) are rendered, with autodoc and napoleon
(numpy-style sections); nothing is fetched from the network (no intersphinx).
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the checkout, also where gradscope is not installed

import gradscope  # noqa: E402

project = "gradscope"
author = "the gradscope authors"
copyright = f"2026, {author}"
version = release = gradscope.__version__

extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon"]
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
napoleon_use_ivar = True  # "Attributes" as fields: the members autodoc lists are not described twice
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"members": True, "undoc-members": False, "show-inheritance": True}
add_module_names = False
python_display_short_literal_types = True
smartquotes = False  # keep "--flag" and quotes in the help texts as typed

exclude_patterns = ["_build"]
html_theme = "alabaster"
html_static_path: list[str] = []
html_show_sourcelink = False


def _drop_inherited_docstring(app, what, name, obj, options, lines):
    """A module-level constant (``NORMS``, ``STATS``...) has no docstring of its own: autodoc would show
    its type's (``tuple``'s, ``dict``'s) instead; the text in api.rst describes it."""
    if what == "data" and lines and type(obj).__doc__ and "\n".join(lines).strip() == type(obj).__doc__.strip():
        lines.clear()


def _helped_fields(cls) -> dict[str, dataclasses.Field]:
    """The fields of a dataclass that carry ``metadata["help"]`` (``RunConfig``'s: its ``--help`` texts)."""
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        return {}
    return {f.name: f for f in dataclasses.fields(cls) if f.metadata.get("help")}


_fields_of_current_class: set[str] = set()


def _field_help(app, what, name, obj, options, lines):
    """List such fields under the class, each with its type, default and help text."""
    if what != "class":
        return
    fields = _helped_fields(obj)
    _fields_of_current_class.clear()
    _fields_of_current_class.update(fields)
    if fields:
        lines.extend(["", ".. rubric:: Fields", ""])
        for f in fields.values():
            default = "" if f.default is dataclasses.MISSING else f" = {f.default!r}"
            lines.extend([f"``{f.name}: {f.type}{default}``", "    " + f.metadata["help"].replace("*", r"\*"), ""])


def _skip_helped_fields(app, what, name, obj, skip, options):
    """...and leave them out of the class's members, where autodoc would list them a second time, bare
    (autodoc reads a class's docstring before it filters the class's members)."""
    if what == "class" and name in _fields_of_current_class:
        return True
    return None


def setup(app):
    app.connect("autodoc-process-docstring", _drop_inherited_docstring)
    app.connect("autodoc-process-docstring", _field_help)
    app.connect("autodoc-skip-member", _skip_helped_fields)
