"""The README's promises: its Python examples run as printed, and its two set-up commands say what CI runs."""
from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks(language: str, section: str | None = None) -> list[str]:
    text = README.read_text(encoding="utf-8")
    if section is not None:  # only the blocks under the heading "## <section>"
        text = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def test_the_python_example_runs_and_writes_what_it_says(tmp_path):
    (example,) = _blocks("python", "Watch vanishing or exploding gradients in your own model")
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
    # CI installs at least the extras the README's test command installs, so both run the same tests.
    extras = lambda text: set(re.search(r'-e "\.\[([a-z,]+)\]"', text).group(1).split(","))
    assert {"test", "lightning", "transformers", "tensorboard"} <= extras(install_and_test) <= extras(ci)


def test_the_training_loop_examples_run_and_write_their_runs(tmp_path):
    """The plain-loop, Lightning and Hugging Face examples, in one process (one torch import); an example
    whose library (an optional extra) is missing is left out."""
    needs = {"lightning": ("lightning",), "transformers": ("transformers", "accelerate")}
    blocks = _blocks("python", "Use it in your training loop")
    assert len(blocks) == 3
    chosen = [block for block in blocks if all(importlib.util.find_spec(lib) for key, libs in needs.items()
                                               if key in block for lib in libs)]
    proc = subprocess.run([sys.executable, "-c", "\n".join(chosen)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "runs" / "loop" / "layers").is_dir()
    written = {"lightning": list((tmp_path / "runs" / "lightning").rglob("gradscope/layers/*.parquet")),
               "transformers": list((tmp_path / "runs" / "hf" / "gradscope" / "layers").glob("*.parquet"))}
    for block in chosen:
        for key, files in written.items():
            if key in block:
                assert files, key
