"""Project files: the API reference covers the public API and CI builds it strictly; LICENSE, CITATION.cff
and CHANGELOG.md agree with pyproject.toml."""
from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

import gradscope

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
PAPER = "Why Spectral Normalization Stabilizes GANs: Analysis and Improvements"


# --- API reference ----------------------------------------------------------------------------------------------
def test_the_api_reference_documents_every_public_name_once():
    text = (ROOT / "docs" / "api.rst").read_text(encoding="utf-8")
    assert ".. currentmodule:: gradscope" in text
    documented = re.findall(r"^\.\. auto(?:function|class|data)::\s+(\S+)", text, flags=re.M)
    public = set(gradscope.__all__) - {"__version__"}
    assert len(documented) == len(set(documented))
    # gradscope.train.train is not re-exported (the sub-package holds the trainer) but is public too.
    assert set(documented) == public | {"gradscope.train.train"}


def test_sphinx_reads_numpy_docstrings_from_the_checkout_and_needs_no_network():
    conf = (ROOT / "docs" / "conf.py").read_text(encoding="utf-8")
    assert '"sphinx.ext.autodoc"' in conf and '"sphinx.ext.napoleon"' in conf
    assert "napoleon_numpy_docstring = True" in conf
    assert "intersphinx" not in conf.split('"""', 2)[2]  # nothing fetched at build time
    assert "api" in (ROOT / "docs" / "index.rst").read_text(encoding="utf-8")


def test_ci_builds_the_docs_with_warnings_as_errors_from_the_docs_extra():
    assert any(req.split(">")[0].lower() == "sphinx" for req in PROJECT["optional-dependencies"]["docs"])
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    installs = [line for line in ci.splitlines() if re.search(r"pip install .*-e ", line)]
    assert any("docs" in re.search(r'-e "\.\[([a-z,]+)\]"', line).group(1).split(",") for line in installs)
    (build,) = [shlex.split(line) for line in ci.splitlines() if "sphinx" in line and not line.lstrip().startswith("#")]
    assert "-W" in build and build[-2:] == ["docs", "docs/_build/html"]
    assert "docs/_build/" in (ROOT / ".gitignore").read_text(encoding="utf-8").splitlines()


# --- LICENSE, CITATION.cff, CHANGELOG.md -------------------------------------------------------------------------
def test_license_is_the_mit_text_that_pyproject_names():
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert PROJECT["license"] == "MIT"
    assert text.startswith("MIT License\n\nCopyright (c) 2026 the gradscope authors\n")
    assert "Permission is hereby granted, free of charge" in text and 'THE SOFTWARE IS PROVIDED "AS IS"' in text


def _citation() -> dict:
    yaml = pytest.importorskip("yaml", reason="PyYAML reads CITATION.cff")
    return yaml.safe_load((ROOT / "CITATION.cff").read_text(encoding="utf-8"))


REFERENCE_TYPES = {"article", "conference-paper", "software", "generic", "report", "thesis", "book"}


def _check_reference(ref: dict) -> None:
    """The keys CFF 1.2.0 requires of a reference (type, title, authors), and the paper's identity."""
    assert ref["type"] in REFERENCE_TYPES
    assert ref["title"] == PAPER
    assert [(a["given-names"], a["family-names"]) for a in ref["authors"]] == [
        ("Zinan", "Lin"), ("Vyas", "Sekar"), ("Giulia", "Fanti")]
    assert isinstance(ref["year"], int)
    assert "2009.02773" in ref["url"]


def test_citation_cff_is_cff_1_2_0_for_the_tool_with_the_paper_as_preferred_citation():
    cff = _citation()
    # The keys CFF 1.2.0 requires of the file, with their types.
    assert cff["cff-version"] == "1.2.0"
    assert isinstance(cff["message"], str) and cff["message"].strip()
    assert isinstance(cff["title"], str) and cff["title"].startswith("gradscope")
    assert cff["authors"] and all(set(a) & {"name", "family-names"} for a in cff["authors"])
    assert cff.get("type", "software") == "software"
    # What pyproject says of the tool.
    assert str(cff["version"]) == PROJECT["version"] == gradscope.__version__
    assert cff["license"] == PROJECT["license"]
    # The paper: NeurIPS 2021 as the preferred citation, the arXiv preprint as a reference.
    preferred = cff["preferred-citation"]
    _check_reference(preferred)
    assert preferred["type"] == "conference-paper" and preferred["year"] == 2021
    assert "NeurIPS 2021" in preferred["conference"]["name"]
    assert cff["references"]
    for ref in cff["references"]:
        _check_reference(ref)


def test_citation_cff_passes_cffconvert_where_it_is_installed():
    exe = shutil.which("cffconvert")
    if exe is None:
        pytest.skip("cffconvert is not installed (it pins jsonschema 3, so it is kept out of the test extra)")
    proc = subprocess.run([exe, "--validate", "-i", str(ROOT / "CITATION.cff")], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_changelog_covers_the_current_version():
    text = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert text.startswith("# Changelog\n")
    assert re.search(rf"^## {re.escape(PROJECT['version'])}\b", text, flags=re.M)
