"""The README's promises: its Python example runs as printed, and its two set-up commands say what CI runs."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def test_the_python_example_runs_and_writes_what_it_says(tmp_path):
    (example,) = _blocks("python")
    proc = subprocess.run([sys.executable, "-c", example], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "runs" / "mine" / "config.json").is_file()
    assert sorted(p.name for p in (tmp_path / "plots").glob("*.png"))
    assert "grad_out_norm" not in proc.stderr


def test_two_setup_commands_install_then_run_the_job_and_the_tests():
    install_and_run, install_and_test = _blocks("bash")[:2]
    assert install_and_run.strip().endswith("gradscope run --norm sn")
    assert install_and_test.strip().endswith("python -m pytest -q -x tests")
    ci = (README.parent / ".ci" / "run").read_text(encoding="utf-8")
    assert "python -m pytest -q -x" in ci and ci.rstrip().endswith("tests")
