"""Every file under examples/ works at a tiny size: configs load and run, sweep specs parse and dry-run,
scripts run in a subprocess with ``--tiny``.

The preset configs and the setting A/B/C sweeps are compared with what they claim to be (the run
presets, the sweep presets, E3's CPU sweep), so an example cannot drift from the code it copies.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import gradscope
from gradscope.cli import main
from gradscope.sweep import parse_spec
from gradscope.sweep.spec import load_spec
from gradscope.train.config import RunConfig, load_config_file, resolve_config

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
CONFIGS = sorted((EXAMPLES / "configs").glob("*.toml"))
SWEEPS = sorted((EXAMPLES / "sweeps").glob("*.toml"))
#: A run of a few iterations on the built-in digits: no data files, no evaluation, no samples.
TINY_RUN = ["--iterations", "2", "--batch-size", "8", "--eval-every", "0", "--sample-every", "0",
            "--checkpoint-every", "0", "--exact-every", "0", "--quiet"]


def test_every_example_is_listed_in_the_examples_readme():
    readme = (EXAMPLES / "README.md").read_text()
    files = [p for p in EXAMPLES.rglob("*") if p.is_file() and p.suffix in (".toml", ".py")]
    assert len(files) >= 11
    for path in files:
        assert str(path.relative_to(EXAMPLES)) in readme, path


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_loads_and_a_tiny_override_runs(path, tmp_path):
    values = load_config_file(path)
    config = resolve_config({}, path)
    assert isinstance(config, RunConfig)
    if "preset" in values:  # the file applies its preset, then its own keys
        others = {k: v for k, v in values.items() if k != "preset"}
        assert config == RunConfig.from_preset(values["preset"], **others)
        assert path.stem == f"preset-{values['preset']}" and config.iterations >= 400_000
    dataset = [] if config.dataset in ("mnist", "digits", "ring8", "grid25") else ["--dataset", "digits"]
    out = tmp_path / "run"
    assert main(["run", "--config", str(path), *dataset, *TINY_RUN, "--out", str(out)]) == 0
    run = gradscope.load_run(out)
    assert run.status["state"] == "done" and run.config["norm"] == config.norm
    assert len(run.layers)


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_sweep_spec_parses_and_dry_runs(path, tmp_path, capsys):
    spec = load_spec(path)
    assert main(["sweep", str(path), "--out", str(tmp_path / "sweep"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"{len(spec.points)} runs" in out and spec.points[-1].run_id in out
    assert not (tmp_path / "sweep" / "runs").exists()


@pytest.mark.parametrize("setting, runs", [("A", 190), ("B", 40), ("C", 20)])
def test_setting_sweeps_are_the_authors_grids(setting, runs):
    example = load_spec(EXAMPLES / "sweeps" / f"stability-{setting}.toml")
    preset = parse_spec({"preset": f"{setting}-cifar10"})
    assert len(example.points) == runs
    assert [(p.run_id, p.flags) for p in example.points] == [(p.run_id, p.flags) for p in preset.points]


def test_cpu_sweep_is_e3s_learning_rate_sweep_at_small_scale():
    from analyses import e3_stability

    example = load_spec(EXAMPLES / "sweeps" / "stability-cpu.toml")
    e3 = parse_spec(e3_stability.sweeps("small")["lr"])
    assert example.fingerprint() == e3.fingerprint() and len(example.points) == 16


#: script -> (the optional library it needs, how it is made tiny: the --tiny flag or the variable)
SCRIPTS = {"train_loop.py": (None, "env"), "lightning_gan.py": ("lightning", "flag"),
           "hf_trainer.py": ("transformers", "flag")}


@pytest.mark.parametrize("name", SCRIPTS)
def test_script_runs_tiny_in_a_subprocess(name, tmp_path):
    library, tiny = SCRIPTS[name]
    if library:
        pytest.importorskip(library)
    if name == "hf_trainer.py":
        pytest.importorskip("accelerate")
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    argv = [sys.executable, str(EXAMPLES / name), "--out", str(out)]
    if tiny == "flag":
        argv.append("--tiny")
    else:
        env["GRADSCOPE_EXAMPLE_TINY"] = "1"
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "recorded" in proc.stdout
    run = gradscope.load_run(out / "gradscope" if name == "hf_trainer.py" else out)
    assert run.status["state"] == "done" and run.layers["step"].nunique() >= 2
