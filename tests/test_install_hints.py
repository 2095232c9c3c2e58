"""The install commands gradscope prints are true: they install what pyproject declares, and none pulls a
second torch (or the CUDA stack) beside an installed torch."""
from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from gradscope import _install

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
EXTRAS: dict[str, list[str]] = PYPROJECT["optional-dependencies"]
#: Each user-facing extra and the command printed for it (``test`` and ``docs`` serve the checkout only).
HINT_OF_EXTRA = {"lightning": _install.LIGHTNING, "transformers": _install.TRANSFORMERS,
                 "tensorboard": _install.TENSORBOARD, "ray": _install.RAY}
ALL_HINTS = {*HINT_OF_EXTRA.values(), _install.MLXTEND, _install.FIDELITY}
#: A ``pip install`` command as it stands in a message or a docstring: options, then requirements, each
#: quoted ('lightning>=2.1') or bare (torch-fidelity==0.4.0).
COMMAND = re.compile(r"pip install((?: --?[a-z-]+)*(?: '[^'\s]+'| [A-Za-z0-9][A-Za-z0-9_.\-=<>!~\[\],]*)+)")


def _requirements(command: str) -> list[str]:
    words = shlex.split(command)
    assert words[:2] == ["pip", "install"], command
    return [w for w in words[2:] if not w.startswith("-")]


def test_each_hint_installs_exactly_what_pyproject_declares():
    for extra, command in HINT_OF_EXTRA.items():
        assert _requirements(command) == EXTRAS[extra], extra
    # Every extra a user would install has its printed command (a new one needs its line in _install.py).
    assert set(EXTRAS) - {"test", "docs"} == set(HINT_OF_EXTRA)
    assert _requirements(_install.MLXTEND) == [d for d in PYPROJECT["dependencies"] if d.startswith("mlxtend")]


def test_torch_fidelity_is_installed_without_its_dependencies_as_ci_does():
    assert _install.FIDELITY == "pip install --no-deps torch-fidelity==0.4.0"
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    (line,) = [line for line in ci.splitlines() if "torch-fidelity" in line and not line.lstrip().startswith("#")]
    words = shlex.split(line)
    assert "--no-deps" in words and _requirements(_install.FIDELITY)[0] in words
    # No extra may carry torch-fidelity or torchvision: pip would resolve a torch for torchvision.
    declared = " ".join(req for reqs in EXTRAS.values() for req in reqs)
    assert "torch-fidelity" not in declared and "torchvision" not in declared


def test_every_install_command_in_the_code_is_one_of_the_true_ones():
    found: dict[str, set[str]] = {}
    for path in sorted([*(ROOT / "gradscope").rglob("*.py"), *(ROOT / "analyses").rglob("*.py")]):
        if path.name == "_install.py":  # the commands' source, with prose about the wrong ones
            continue
        text = path.read_text(encoding="utf-8")
        assert "gradscope[" not in text, f"{path}: 'gradscope[extra]' installs another project from PyPI"
        for match in COMMAND.finditer(text):
            found.setdefault(match.group(0), set()).add(str(path.relative_to(ROOT)))
    unknown = {cmd: where for cmd, where in found.items() if cmd not in ALL_HINTS}
    assert not unknown, f"install commands that are not in gradscope/_install.py: {unknown}"
    assert found, "the scan found no install command at all"


# --- the resolution, where pip reaches an index ----------------------------------------------------------------
NETWORK_ERRORS = ("NewConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "Max retries exceeded",
                  "Temporary failure in name resolution", "Name or service not known", "Network is unreachable",
                  "ProxyError", "SSLError", "Connection refused", "timed out")


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _installed_closure(requirements: list[str]) -> dict[str, importlib.metadata.Distribution]:
    """The installed distributions that ``requirements`` need, transitively (markers evaluated, no extras)."""
    from packaging.requirements import Requirement

    found: dict[str, importlib.metadata.Distribution] = {}
    todo = [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        if (req.marker is not None and not req.marker.evaluate({"extra": ""})) or _canonical(req.name) in found:
            continue
        try:
            dist = importlib.metadata.distribution(req.name)
        except importlib.metadata.PackageNotFoundError:
            continue  # pip will plan it: what a user would get too
        found[_canonical(req.name)] = dist
        todo.extend(Requirement(r) for r in dist.requires or ())
    return found


def _dist_info(dist: importlib.metadata.Distribution) -> Path | None:
    for f in dist.files or ():
        if f.name == "METADATA" and f.parent.name.endswith(".dist-info"):
            return Path(dist.locate_file(f)).parent
    return None


def _dry_run(python: Path, args: list[str], report: Path, timeout: float) -> list[tuple[str, str]]:
    """``(name, version)`` of what ``pip install args`` would install into ``python``'s environment."""
    cmd = [sys.executable, "-m", "pip", "--python", str(python), "install", "--dry-run", "--quiet",
           "--report", str(report), "--timeout", "10", "--retries", "1", "--disable-pip-version-check", *args]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.skip(f"pip did not resolve {args} against its indexes within {timeout:.0f} s")
    if proc.returncode != 0:
        if any(err in proc.stderr for err in NETWORK_ERRORS):
            pytest.skip(f"pip cannot reach a package index here: {proc.stderr.strip().splitlines()[-1]}")
        raise AssertionError(proc.stderr[-3000:])
    return [(item["metadata"]["name"].lower().replace("_", "-"), item["metadata"]["version"])
            for item in json.loads(report.read_text(encoding="utf-8"))["install"]]


@pytest.mark.timeout(180)
def test_each_hint_resolved_beside_the_installed_core_keeps_its_torch(tmp_path):
    """A fresh environment that holds what ``pip install -e .`` left (torch and the core dependencies, their
    installed metadata linked in): resolving every hint in it plans no torch, no torchvision and no
    CUDA wheels that this torch does not itself require."""
    pytest.importorskip("packaging")
    if importlib.util.find_spec("pip") is None:
        pytest.skip("pip is not installed in this environment")
    if tuple(int(p) for p in importlib.metadata.version("pip").split(".")[:2]) < (22, 3):
        pytest.skip("pip older than 22.3 has no --python")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    core = _installed_closure(PYPROJECT["dependencies"])
    assert "torch" in core
    for dist in core.values():
        info = _dist_info(dist)
        if info is not None:
            (site / info.name).symlink_to(info, target_is_directory=True)

    from packaging.requirements import Requirement

    torch_needs = {_canonical(Requirement(req).name) for req in importlib.metadata.requires("torch") or ()}
    hinted = [req for command in HINT_OF_EXTRA.values() for req in _requirements(command)]
    planned = _dry_run(python, hinted, tmp_path / "hints.json", timeout=90)  # CI (current pip): ~35 s
    names = {_canonical(name) for name, _ in planned}
    assert "torch" not in names and "torchvision" not in names, planned
    cuda = {n for n in names if n.startswith(("nvidia-", "cuda-", "triton")) and n not in torch_needs}
    assert not cuda, f"the hints pull CUDA wheels beside an installed torch: {sorted(cuda)}"
    assert {_canonical(r.split(">")[0]) for r in hinted} <= names | set(core), planned  # resolved for real

    fidelity = _dry_run(python, shlex.split(_install.FIDELITY)[2:], tmp_path / "fidelity.json", timeout=30)
    assert [_canonical(name) for name, _ in fidelity] == ["torch-fidelity"], fidelity
