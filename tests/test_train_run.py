"""End-to-end runs: every arch and dataset kind, exact resume, divergence, run-directory safety, ``gradscope eval``."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from data_helpers import make_cifar_archive, make_stl_archive, write_image
from gradscope import cli
from gradscope.record import load_run
from gradscope.train import RunConfig, resume, train
from gradscope.train import api as train_api
from gradscope.train.checkpoint import list_checkpoints, load_checkpoint

# Exact spectral norms (dense SVDs of every layer) cost seconds per step for the image nets: on for the MLP only.
TINY = dict(iterations=2, eval_every=0, checkpoint_every=1, keep_checkpoints=0, flush_every=1, quiet=True)


def _make_data(kind: str, root: Path) -> str:
    root.mkdir(parents=True)
    if kind == "cifar10":
        make_cifar_archive(root, per_batch=1)
    elif kind == "stl10":
        make_stl_archive(root, count=4)
    elif kind == "celeba":
        for i in range(4):
            write_image(root / "img_align_celeba" / f"{i:06d}.jpg", 178, 218, seed=i, fmt="JPEG")
    elif kind == "imagenet":
        for i in range(4):
            write_image(root / "imagenet" / "train" / f"n0{i % 2}" / f"{i}.JPEG", 40, 30, seed=i, fmt="JPEG")
    elif kind == "folder":
        for i in range(4):
            write_image(root / "any" / f"{i}.png", 20, 24, seed=i)
    return str(root)


def _assert_trained(result, steps: int, nets=("D", "G")) -> None:
    assert (result.state, result.step, result.exit_code) == ("done", steps, 0)
    status = json.loads((result.run_dir / "status.json").read_text())
    assert (status["state"], status["step"]) == ("done", steps)
    assert [s for s, _ in list_checkpoints(result.run_dir)] == list(range(1, steps + 1))
    assert (result.run_dir / "samples" / "step_00000000.png").exists()
    assert (result.run_dir / "samples" / f"step_{steps:08d}.png").exists()
    run = load_run(result.run_dir)
    losses = run.scalars[run.scalars["name"].isin(["loss_d", "loss_g", "d_real", "d_fake"])]
    assert sorted(losses["step"].unique()) == list(range(1, steps + 1))
    assert losses["value"].notna().all() and len(losses) == 4 * steps
    assert set(run.layers["net"]) == set(nets) and set(run.layers["phase"]) == {"d", "g"}
    sigma = run.layers[(run.layers["stat"] == "sigma") & (run.layers["net"] == "D")]
    assert len(sigma) and (sigma["value"] > 0).all()
    assert {"slope_real_mean", "slope_fake_max"} <= set(run.scalars["name"])
    assert run.config["norm"] == "sn" and run.config["world_size"] == 1


@pytest.mark.parametrize("dataset,arch,size,batch", [
    ("digits", "sndcgan", 8, 4), ("ring8", "mlp", None, 8), ("grid25", "mlp", None, 8),
    ("cifar10", "resnet", 32, 2), ("stl10", "sndcgan", 8, 2), ("celeba", "sndcgan", 8, 2),
    ("imagenet", "sndcgan", 8, 2), ("folder", "sndcgan", 8, 2),
])
def test_each_arch_and_dataset_kind_trains(tmp_path, dataset, arch, size, batch):
    data_dir = _make_data(dataset, tmp_path / "data") if dataset not in ("digits", "ring8", "grid25") else None
    if dataset == "folder":
        data_dir = str(Path(data_dir) / "any")
    cfg = RunConfig(dataset=dataset, arch=arch, image_size=size, batch_size=batch, data_dir=data_dir,
                    workers=0, exact_every=2 if arch == "mlp" else 0, out=str(tmp_path / "run"), **TINY)
    _assert_trained(train(cfg), 2)


def _tables(path: Path) -> dict[str, pd.DataFrame]:
    run = load_run(path)
    return {"scalars": run.scalars, "layers": run.layers, "alerts": run.alerts}


def _assert_same_run(a: Path, b: Path, step: int) -> None:
    ta, tb = _tables(a), _tables(b)
    for name in ta:
        pd.testing.assert_frame_equal(ta[name], tb[name], check_exact=True, obj=name)
    ca, cb = (load_checkpoint(dict(list_checkpoints(p))[step]) for p in (a, b))
    for net in ("D", "G", "G_ema"):
        if ca[net] is None:
            continue
        for key, value in ca[net].items():
            assert torch.equal(value, cb[net][key]), (net, key)
    assert ca["opt_D"]["state"].keys() == cb["opt_D"]["state"].keys()


def test_stop_and_resume_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    base = dict(dataset="digits", image_size=8, batch_size=4, loss="wgan-gp", n_dis=2, ema=0.9, iterations=6,
                checkpoint_every=3, eval_every=3, eval_samples=40, sample_every=3, exact_every=0, flush_every=2,
                quiet=True)
    whole = train(RunConfig(out=str(tmp_path / "whole"), **base))
    assert whole.state == "done" and "digits_fid" in whole.metrics
    calls = []

    def stop_on_fourth_check(self):
        calls.append(1)
        return signal.SIGTERM if len(calls) >= 4 else None

    with monkeypatch.context() as patch:
        patch.setattr(train_api.StopRequest, "__call__", stop_on_fourth_check)
        first = train(RunConfig(out=str(tmp_path / "split"), **base))
    assert (first.state, first.step, first.exit_code) == ("interrupted", 4, 128 + signal.SIGTERM)
    assert json.loads((tmp_path / "split" / "status.json").read_text())["state"] == "interrupted"
    second = resume(tmp_path / "split")
    assert (second.state, second.step) == ("done", 6)
    assert second.metrics == whole.metrics
    _assert_same_run(tmp_path / "whole", tmp_path / "split", 6)


def _spawn_run(out: Path, *flags: str) -> subprocess.Popen:
    argv = [sys.executable, "-m", "gradscope", "run", "--out", str(out), "--quiet", *flags]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "timed out waiting for " + str(path)
        time.sleep(0.05)


RING = ["--dataset", "ring8", "--batch-size", "16", "--iterations", "60", "--checkpoint-every", "10",
        "--eval-every", "25", "--eval-samples", "200", "--exact-every", "7", "--flush-every", "3"]


def test_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path):
    proc = _spawn_run(tmp_path / "killed", *RING)
    _wait_for(tmp_path / "killed" / "checkpoints" / "step_00000020.pt", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert json.loads((tmp_path / "killed" / "status.json").read_text())["state"] == "running"
    args = cli.build_parser("run").parse_args(["run", *RING, "--quiet", "--out", str(tmp_path / "whole")])
    from gradscope.train.cli import config_from_args

    whole = train(config_from_args(args))
    resumed = resume(tmp_path / "killed")
    assert (resumed.state, resumed.step) == (whole.state, whole.step) == ("done", 60)
    _assert_same_run(tmp_path / "whole", tmp_path / "killed", 60)


def test_sigterm_checkpoints_and_exits_143(tmp_path):
    proc = _spawn_run(tmp_path / "run", *RING[:5], "100000", "--checkpoint-every", "1000", "--eval-every", "0")
    _wait_for(tmp_path / "run" / "scalars" / "000002.parquet", proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["state"] == "interrupted"
    assert [s for s, _ in list_checkpoints(tmp_path / "run")] == [status["step"]]
    assert f"--resume {tmp_path / 'run'}" in err


def test_divergence_stops_cleanly_and_keeps_data_and_the_last_good_checkpoint(tmp_path, monkeypatch):
    from gradscope.train import loop

    real_loss, calls = loop.generator_loss, []

    def poisoned(loss, logits):  # the 4th generator loss is NaN, as if the run had blown up at step 4
        calls.append(1)
        value = real_loss(loss, logits)
        return value * float("nan") if len(calls) == 4 else value

    monkeypatch.setattr(loop, "generator_loss", poisoned)
    result = train(RunConfig(dataset="ring8", batch_size=8, iterations=10, checkpoint_every=1, eval_every=0,
                             out=str(tmp_path / "run"), quiet=True))
    assert (result.state, result.step, result.exit_code) == ("diverged", 4, 3)
    assert result.reason == "non-finite loss_g at step 4"
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert (status["state"], status["step"], status["reason"]) == ("diverged", 4, result.reason)
    assert [s for s, _ in list_checkpoints(tmp_path / "run")] == [1, 2, 3]
    run = load_run(tmp_path / "run")
    losses = run.scalars[run.scalars["name"] == "loss_g"].set_index("step")["value"]
    assert list(losses.index) == [1, 2, 3, 4] and losses.iloc[:3].notna().all() and pd.isna(losses.loc[4])
    assert sorted(run.layers["step"].unique()) == [1, 2, 3, 4]


def test_a_diverging_run_exits_with_code_3(tmp_path):
    flags = ["--dataset", "ring8", "--norm", "none", "--lr-d", "1e30", "--lr-g", "1e30", "--batch-size", "8",
             "--iterations", "50", "--eval-every", "0"]
    proc = subprocess.run([sys.executable, "-m", "gradscope", "run", "--out", str(tmp_path / "run"), "--quiet",
                           *flags], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 3, proc.stderr
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["state"] == "diverged" and 1 <= status["step"] < 50
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("gradscope run: diverged: non-finite") and "Traceback" not in proc.stderr


def test_out_directory_is_never_overwritten_without_overwrite(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["run", "--dataset", "ring8", "--batch-size", "8", "--iterations", "2", "--eval-every", "0", "--quiet",
            "--out", str(out)]
    assert cli.main(argv) == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert cli.main(argv) == 2
    assert f"already holds this run; continue it with --resume {out}" in capsys.readouterr().err
    assert cli.main([*argv, "--norm", "bsn", "--seed", "3"]) == 2
    err = capsys.readouterr().err
    assert "holds a different run (norm 'bsn' here vs 'sn' there; seed 3 here vs 0 there)" in err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert cli.main([*argv[:-1], str(other)]) == 2
    assert "is not an empty directory" in capsys.readouterr().err
    assert cli.main([*argv, "--norm", "bsn", "--overwrite"]) == 0
    assert json.loads((out / "config.json").read_text())["norm"] == "bsn"
    assert [s for s, _ in list_checkpoints(out)] == [2]


def test_eval_command_reproduces_the_training_time_numbers(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["run", "--dataset", "grid25", "--batch-size", "16", "--iterations", "4", "--eval-every", "2",
                     "--eval-samples", "300", "--checkpoint-every", "2", "--quiet", "--out", str(out)]) == 0
    scalars = load_run(out).scalars
    logged = scalars[(scalars["step"] == 2) & scalars["name"].isin(["modes_covered", "high_quality_fraction"])]
    assert cli.main(["eval", str(out), "--checkpoint", "2", "--samples", "300"]) == 0
    stored = json.loads((out / "eval" / "step_00000002.json").read_text())
    assert stored["step"] == 2
    for name, value in zip(logged["name"], logged["value"]):
        assert stored["metrics"][name] == pytest.approx(value, abs=0)
    assert "step 2: modes_covered" in capsys.readouterr().out
    assert cli.main(["eval", str(out), "--checkpoint", "3"]) == 2
    assert "no checkpoint of step 3; available steps: 2, 4" in capsys.readouterr().err


def test_gpu_options_are_rejected_on_cpu_before_anything_is_written(tmp_path):
    for extra in ({"amp": "bf16"}, {"compile": True}):
        with pytest.raises(ValueError, match="needs a CUDA device"):
            train(RunConfig(dataset="ring8", device="cpu", out=str(tmp_path / "r"), **extra))
    assert not (tmp_path / "r").exists()


def test_one_power_iteration_per_discriminator_update_and_none_in_the_generator_update(tmp_path):
    from gradscope.data import load_dataset
    from gradscope.norms import SpectralParametrization
    from gradscope.train.distributed import DistContext
    from gradscope.train.loop import Trainer

    cfg = RunConfig(image_size=8, batch_size=4, n_dis=3, eval_every=0, quiet=True)
    trainer = Trainer(cfg, load_dataset("digits", image_size=8), device=torch.device("cpu"),
                      context=DistContext(), run_dir=tmp_path)
    calls = []
    for module in trainer.D.modules():
        if isinstance(module, SpectralParametrization):
            module.register_forward_hook(lambda m, args, out: calls.append(m.training))
    layers = sum(isinstance(m, SpectralParametrization) for m in trainer.D.modules())
    trainer._d_update(1)
    assert calls == [True] * layers  # real, fake (and interpolates) in one forward: one power step
    calls.clear()
    before = {k: v.clone() for k, v in trainer.D.state_dict().items()}
    trainer._g_update(1)
    assert not any(calls)  # only eval-mode reads of the normalized weights
    # weights and power-iteration vectors untouched (the sigma buffers re-read u^T W v of the current W)
    assert all(torch.equal(before[k], v) for k, v in trainer.D.state_dict().items() if "sigma" not in k)
    assert all(p.grad is None for p in trainer.D.parameters())


def test_bf16_autocast_path_trains_with_float32_losses_and_weights(tmp_path):
    # train() refuses --amp on CPU; the trainer's autocast path itself is device-agnostic, so exercise it here.
    from gradscope.data import load_dataset
    from gradscope.train.distributed import DistContext
    from gradscope.train.loop import Trainer

    cfg = RunConfig(image_size=8, batch_size=4, amp="bf16", loss="wgan-gp", eval_every=0, quiet=True)
    trainer = Trainer(cfg, load_dataset("digits", image_size=8), device=torch.device("cpu"),
                      context=DistContext(), run_dir=tmp_path)
    values = trainer.train_step(1)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in values.values())
    assert all(p.dtype == torch.float32 for p in [*trainer.D.parameters(), *trainer.G.parameters()])


def _random_inception_weights(path: Path) -> Path:
    """torch-fidelity's Inception-v3 at a random initialisation, saved as a state dict (nothing downloaded)."""
    from gradscope.metrics.inception import InceptionUnavailable, torch_fidelity_inception_class

    try:
        cls = torch_fidelity_inception_class()[0]
    except InceptionUnavailable as exc:
        pytest.skip(f"torch-fidelity's Inception cannot be loaded here: {exc}")
    empty = path.with_name("empty.pth")
    torch.save({}, empty)
    with pytest.MonkeyPatch.context() as patch, torch.random.fork_rng(devices=[]):
        patch.setattr(cls, "load_state_dict", lambda self, state_dict, strict=True: None)
        torch.manual_seed(0)
        network = cls("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(empty))
    torch.save(network.state_dict(), path)
    return path


def test_inception_weights_flag_reaches_the_extractor(tmp_path, monkeypatch):
    import hashlib

    from gradscope.metrics import clear_extractor_cache

    monkeypatch.setenv("GRADSCOPE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # an empty hub cache: only the flag can help
    weights = _random_inception_weights(tmp_path / "pt_inception-2015-12-05.pth")
    data_dir = Path(_make_data("folder", tmp_path / "data")) / "any"
    clear_extractor_cache()
    out = tmp_path / "run"
    try:
        assert cli.main(["run", "--dataset", "folder", "--data-dir", str(data_dir), "--image-size", "8",
                         "--batch-size", "2", "--workers", "0", "--iterations", "1", "--eval-every", "1",
                         "--eval-samples", "2", "--eval-metrics", "kid", "--exact-every", "0", "--no-record",
                         "--quiet", "--inception-weights", str(weights), "--out", str(out)]) == 0
    finally:
        clear_extractor_cache()
    scalars = load_run(out).scalars
    kid = scalars[scalars["name"] == "inception_kid_mean"]
    assert list(kid["step"]) == [0, 1] and kid["value"].notna().all()
    # The reference statistics are keyed by the extractor's name, which carries the weights file's digest.
    cached = list((tmp_path / "cache" / "reference").glob("*.pt"))
    assert len(cached) == 1 and hashlib.sha256(weights.read_bytes()).hexdigest()[:10] in cached[0].name


def test_two_processes_give_identical_numbers_whatever_their_thread_setting(tmp_path):
    """A small run's numbers depend on its config only: a sweep worker (OMP_NUM_THREADS = its share of the
    cores) and a plain `gradscope run` write the same bits. Two threads used to change d_fake at step 1."""
    argv = ["run", "--dataset", "digits", "--norm", "sn", "--iterations", "3", "--batch-size", "8", "--eval-every",
            "0", "--sample-every", "0", "--exact-every", "0", "--checkpoint-every", "3", "--quiet"]
    outs = {}
    for threads in ("1", "2"):
        outs[threads] = tmp_path / f"threads{threads}"
        env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "PYTHONHASHSEED": threads}
        proc = subprocess.run([sys.executable, "-m", "gradscope", *argv, "--out", str(outs[threads])],
                              capture_output=True, text=True, timeout=300, env=env)
        assert proc.returncode == 0, proc.stderr[-2000:]
    for table in ("scalars", "layers"):
        (first,), (second,) = (sorted((outs[t] / table).glob("*.parquet")) for t in ("1", "2"))
        assert first.read_bytes() == second.read_bytes(), table
    _assert_same_run(outs["1"], outs["2"], 3)
    assert all(json.loads((out / "config.json").read_text())["cpu_threads"] == 1 for out in outs.values())


def test_tensorboard_flag_writes_events_kept_by_resume_and_names_its_extra(tmp_path, capsys, monkeypatch):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    argv = ["run", "--dataset", "digits", "--batch-size", "4", "--iterations", "2", "--eval-every", "0",
            "--sample-every", "0", "--exact-every", "0", "--quiet", "--out", str(out)]
    assert cli.main([*argv, "--tensorboard"]) == 0
    assert json.loads((out / "config.json").read_text())["tensorboard"] is True
    assert cli.main(["run", "--resume", str(out), "--iterations", "3", "--quiet"]) == 0  # no flag: kept
    steps: dict[str, set[int]] = {}
    for events in sorted((out / "tensorboard").glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            steps.setdefault(tag, set()).update(e.step for e in acc.Scalars(tag))
    assert steps["loss_d"] == {1, 2, 3}
    assert any(tag.startswith("D/grad_out_norm/d/") for tag in steps)

    capsys.readouterr()
    assert cli.main([*argv[:-1], str(tmp_path / "off"), "--tensorboard", "--no-record"]) == 2
    assert "--tensorboard shows what the recorder records; drop --no-record" in capsys.readouterr().err
    monkeypatch.setattr("gradscope.record.tensorboard.tensorboard_available", lambda: False)
    assert cli.main([*argv[:-1], str(tmp_path / "missing"), "--tensorboard"]) == 2
    assert capsys.readouterr().err.strip() == ("gradscope run: error: --tensorboard: TensorBoard output needs the "
                                               "tensorboard package: pip install 'tensorboard>=2.12'")
    assert not (tmp_path / "missing").exists()
