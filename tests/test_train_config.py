"""RunConfig validation, presets, TOML files and the one-line errors of ``gradscope run`` / ``gradscope eval``."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from gradscope import cli
from gradscope.train import PRESETS, RunConfig, preset_values, resolve_config


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "Traceback" not in err[0]
    return err[0]


# --- RunConfig --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("field,value,fragment", [
    ("norm", "spectral", "unknown norm 'spectral'; valid choices: 'none', 'sn'"),
    ("init", "orthogonal", "unknown init 'orthogonal'; valid choices: 'dcgan'"),
    ("loss", "l2", "unknown loss 'l2'; valid choices: 'hinge', 'ns', 'wgan-gp'"),
    ("dataset", "svhn", "unknown dataset 'svhn'; valid choices: 'mnist', 'digits'"),
    ("arch", "vit", "unknown arch 'vit'; valid choices: 'sndcgan', 'resnet', 'mlp'"),
    ("device", "tpu", "unknown device 'tpu'"),
    ("amp", "fp16", "unknown amp 'fp16'; valid choices: 'none', 'bf16'"),
    ("preset", "D", "unknown preset 'D'; valid choices: 'A', 'B', 'C'"),
    ("eval_metrics", "fid,lpips", "unknown eval metric 'lpips'"),
    ("iterations", 0, "iterations must be an integer >= 1"),
    ("lr_d", -1.0, "lr_d must be a finite number > 0"),
    ("betas", (0.5, 1.5), "betas must be two numbers B1,B2 in [0, 1)"),
    ("ema", 1.0, "ema must be a decay in [0, 1)"),
    ("quiet", "yes", "quiet must be true or false"),
])
def test_bad_values_raise_one_line_naming_the_choices(field, value, fragment):
    with pytest.raises(ValueError) as exc:
        RunConfig(**{field: value})
    assert fragment in str(exc.value) and "\n" not in str(exc.value)


def test_arch_follows_the_dataset_and_mismatches_are_rejected():
    assert RunConfig().arch == "sndcgan" and RunConfig(dataset="grid25").arch == "mlp"
    with pytest.raises(ValueError, match="use --arch mlp"):
        RunConfig(dataset="ring8", arch="sndcgan")
    with pytest.raises(ValueError, match="use --arch sndcgan or resnet"):
        RunConfig(dataset="digits", arch="mlp")
    with pytest.raises(ValueError, match="does not apply"):
        RunConfig(dataset="ring8", image_size=16)


def test_config_round_trips_through_plain_values():
    cfg = RunConfig(norm="bssn", scale=1.4, betas="0.0,0.9", eval_metrics="kid,fid")
    assert cfg.betas == (0.0, 0.9) and cfg.eval_metrics == ("kid", "fid")
    again = RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    with pytest.raises(ValueError, match="unknown key 'learning-rate'"):
        RunConfig.from_dict({"learning-rate": 1})


def test_authors_options_default_off_and_resolve_from_the_preset_on_imagenet():
    cfg = RunConfig(dataset="digits")
    assert (cfg.power_schedule, cfg.d_layout) == ("torch", "miyato")
    assert RunConfig(dataset="imagenet", arch="resnet").d_layout == "miyato"  # no preset: gradscope's layout
    assert RunConfig.from_preset("C", dataset="imagenet", arch="resnet").d_layout == "authors"
    assert RunConfig.from_preset("C", dataset="cifar10", arch="resnet").d_layout == "miyato"
    assert RunConfig.from_preset("C", dataset="imagenet").d_layout == "miyato"  # the preset's sndcgan
    assert RunConfig.from_preset("C", dataset="imagenet", arch="resnet", d_layout="miyato").d_layout == "miyato"
    assert resolve_config({"preset": "A", "dataset": "imagenet", "arch": "resnet"}).d_layout == "authors"
    assert RunConfig(dataset="digits", arch="resnet", d_layout="authors").d_layout == "authors"
    cfg = RunConfig(dataset="digits", norm="bssn", power_schedule="authors")
    assert RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


@pytest.mark.parametrize("settings,fragment", [
    ({"power_schedule": "tf"}, "unknown power_schedule 'tf'; valid choices: 'torch', 'authors'"),
    ({"power_schedule": "authors", "norm": "strict"}, "--power-schedule authors applies to the reshape norms only"),
    ({"d_layout": "tf", "arch": "resnet"}, "unknown d_layout 'tf'; valid choices: 'miyato', 'authors'"),
    ({"d_layout": "authors"}, "--d-layout authors applies to --arch resnet only"),
])
def test_authors_options_errors_are_one_line(settings, fragment):
    with pytest.raises(ValueError) as exc:
        RunConfig(dataset="digits", **settings)
    assert fragment in str(exc.value) and "\n" not in str(exc.value)


def test_authors_options_reach_the_networks():
    import torch

    from gradscope.data import load_dataset
    from gradscope.norms import parametrization_of
    from gradscope.train.networks import build_networks

    cfg = RunConfig(dataset="digits", arch="resnet", image_size=32, d_layout="authors", power_schedule="authors")
    torch.manual_seed(0)
    D, _ = build_networks(cfg, load_dataset("digits", image_size=32))
    assert D.layout == "authors"
    assert all(p.power_schedule == "authors" for p in map(parametrization_of, D.modules()) if p is not None)


# --- presets and files ------------------------------------------------------------------------------------

def test_presets_are_the_reference_settings():
    a, b, c = (preset_values(name) for name in "ABC")
    assert (a["lr_d"], a["lr_g"], a["betas"], a["n_dis"], a["iterations"]) == (1e-4, 1e-4, (0.5, 0.999), 1, 400_000)
    assert (b["lr_d"], b["lr_g"], b["betas"], b["n_dis"]) == (2e-4, 2e-4, (0.5, 0.999), 1)
    assert (c["lr_d"], c["lr_g"], c["betas"], c["n_dis"], c["iterations"]) == (1e-4, 1e-4, (0.5, 0.9), 5, 400_000)
    assert preset_values("A", "stl10")["iterations"] == 800_000
    assert preset_values("C", "stl10")["iterations"] == 400_000
    for values in PRESETS.values():
        assert (values["arch"], values["loss"], values["batch_size"]) == ("sndcgan", "hinge", 64)


def test_precedence_is_defaults_preset_file_flags(tmp_path):
    file = tmp_path / "run.toml"
    file.write_text('preset = "C"\nlr-d = 3e-4\nn_dis = 2\nbetas = [0.1, 0.2]\n')
    cfg = resolve_config({"n_dis": 4, "dataset": "digits"}, file)
    assert cfg.preset == "C" and cfg.dataset == "digits"
    assert cfg.lr_g == 1e-4  # from the preset
    assert cfg.lr_d == 3e-4 and cfg.betas == (0.1, 0.2)  # the file beats the preset
    assert cfg.n_dis == 4  # the flag beats the file
    assert resolve_config({}, None) == RunConfig()
    assert resolve_config({"preset": "A"}).dataset == "cifar10"


def test_config_file_errors_are_one_line(tmp_path):
    bad_key = tmp_path / "a.toml"
    bad_key.write_text("learning_rate = 1\n")
    with pytest.raises(ValueError, match="unknown key 'learning_rate' in .*a.toml; valid keys: norm, init"):
        resolve_config({}, bad_key)
    broken = tmp_path / "b.toml"
    broken.write_text("norm = \n")
    with pytest.raises(ValueError, match="is not valid TOML"):
        resolve_config({}, broken)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_config({}, tmp_path / "missing.toml")


# --- the command line -----------------------------------------------------------------------------------

def test_help_documents_every_flag_with_its_default(capsys):
    with pytest.raises(SystemExit):
        cli.main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    from gradscope.norms import NORMS

    for flag in ("--norm {" + ",".join(NORMS) + "}", "--init {dcgan,lecun",
                 "--scale", "--dataset", "--arch", "--loss {hinge,ns,wgan-gp}", "--iterations", "--batch-size",
                 "--n-dis", "--lr-d", "--lr-g", "--betas B1,B2", "--seed", "--device {auto,cpu,cuda,mps}", "--out",
                 "--config FILE", "--preset {A,B,C}", "--eval-every", "--eval-samples", "--record-every",
                 "--exact-every", "--no-record", "--checkpoint-every", "--sample-every", "--ema", "--amp",
                 "--compile", "--data-dir", "--download", "--image-size", "--resume DIR", "--overwrite", "--quiet",
                 "--inception-weights PATH", "pt_inception-2015-12-05", "--power-schedule {torch,authors}",
                 "--d-layout {miyato,authors}"):
        assert flag in text, flag
    assert "(default: sn)" in text and "(default: hinge)" in text and "(default: 0.5,0.999)" in text
    assert "(default: None)" not in text and "(default: False)" not in text


@pytest.mark.parametrize("argv,fragment", [
    (["--norm", "spectral"], "unknown norm 'spectral'; valid choices"),
    (["--iterations", "many"], "iterations must be an integer >= 1, got 'many'"),
    (["--lr-d", "fast"], "lr_d must be a number, got 'fast'"),
    (["--dataset", "ring8", "--arch", "resnet"], "use --arch mlp"),
    (["--amp", "bf16", "--device", "cpu"], "--amp bf16 needs a CUDA device"),
    (["--compile", "--device", "cpu"], "--compile needs a CUDA device"),
    (["--resume", "nowhere", "--norm", "bsn"], "--norm, --out cannot change"),
    (["--inception-weights", "/nonexistent/pt_inception.pth"],
     "--inception-weights /nonexistent/pt_inception.pth: no such file"),
])
def test_cli_usage_errors_are_one_line_with_exit_2(capsys, tmp_path, argv, fragment):
    assert cli.main(["run", *argv, "--out", str(tmp_path / "r")]) == 2
    line = _one_error_line(capsys)
    assert line.startswith("gradscope run: error: ") and fragment in line
    assert not (tmp_path / "r").exists()


def test_missing_and_corrupt_dataset_files_are_one_line(capsys, tmp_path):
    empty = tmp_path / "data"
    empty.mkdir()
    assert cli.main(["run", "--dataset", "cifar10", "--data-dir", str(empty), "--out", str(tmp_path / "r")]) == 2
    line = _one_error_line(capsys)
    assert "cifar" in line.lower() and "--download" in line
    (empty / "cifar-10-python.tar.gz").write_bytes(b"this is not a gzip file")
    assert cli.main(["run", "--dataset", "cifar10", "--data-dir", str(empty), "--out", str(tmp_path / "r")]) == 2
    assert "cifar" in _one_error_line(capsys).lower()
    assert cli.main(["run", "--dataset", "folder", "--out", str(tmp_path / "r")]) == 2
    assert "--data-dir" in _one_error_line(capsys)


def test_resume_and_eval_of_a_directory_that_is_not_a_run(capsys, tmp_path):
    assert cli.main(["run", "--resume", str(tmp_path)]) == 2
    assert "is not a gradscope run" in _one_error_line(capsys)
    assert cli.main(["eval", str(tmp_path)]) == 2
    assert "is not a gradscope run" in _one_error_line(capsys)


def test_eval_rejects_a_missing_inception_weights_file_in_one_line(capsys, tmp_path):
    missing = tmp_path / "pt_inception-2015-12-05.pth"
    assert cli.main(["eval", str(tmp_path), "--inception-weights", str(missing)]) == 2
    line = _one_error_line(capsys)
    assert line.startswith("gradscope eval: error: --inception-weights ") and "no such file" in line
    with pytest.raises(SystemExit):
        cli.main(["eval", "--help"])
    assert "--inception-weights PATH" in capsys.readouterr().out


def test_inception_weights_is_a_runtime_setting_kept_as_a_string(tmp_path):
    cfg = RunConfig(inception_weights=tmp_path / "w.pth")
    assert cfg.inception_weights == str(tmp_path / "w.pth")  # a missing file is reported when a run starts
    assert "inception_weights" not in cfg.identity()
    with pytest.raises(ValueError, match="inception_weights must be a file path"):
        RunConfig(inception_weights=3)


def test_usage_error_exit_code_through_a_subprocess(tmp_path):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-m", "gradscope", "run", "--loss", "l2", "--out", str(tmp_path / "r")],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("gradscope run: error: unknown loss 'l2'; valid choices: 'hinge', 'ns', "
                                   "'wgan-gp'")
    assert not (tmp_path / "r").exists()
