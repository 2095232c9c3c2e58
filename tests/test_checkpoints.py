"""Verified checkpoints: content hash and run identity checked on load, fallback to the previous good one,
temporary leftovers removed, the weights-only ``final.pt`` export and the end-of-run summary."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from gradscope import cli
from gradscope.train import RunConfig, resume, train
from gradscope.train.api import summary_lines
from gradscope.train.checkpoint import (
    CheckpointError,
    final_networks,
    list_checkpoints,
    load_checkpoint,
    load_final,
    save_checkpoint,
)
from gradscope.train.loop import LoopOutcome

# ring8's MLP pair: the fastest run there is (a few KB per checkpoint).
RING = {"dataset": "ring8", "batch_size": 8, "eval_every": 0, "checkpoint_every": 1, "keep_checkpoints": 0,
        "exact_every": 0, "flush_every": 1, "quiet": True}
# digits at a quarter of the channels: a conv pair with batch norm in G and a moving average of it.
DIGITS = {"dataset": "digits", "image_size": 8, "batch_size": 4, "width": 0.25, "ema": 0.9, "eval_every": 0,
          "sample_every": 0, "checkpoint_every": 1, "keep_checkpoints": 0, "exact_every": 0, "flush_every": 1,
          "quiet": True}


def _ring_run(out: Path, iterations: int = 3, **extra) -> Path:
    result = train(RunConfig(out=str(out), iterations=iterations, **{**RING, **extra}))
    assert (result.state, result.step) == ("done", iterations)
    return out


def _checkpoint(run: Path, step: int) -> Path:
    return dict(list_checkpoints(run))[step]


def _first_weight(state: dict) -> str:
    return next(k for k, v in state.items() if v.dim() >= 2)


def _warnings(err: str) -> list[str]:
    return [line for line in err.splitlines() if "warning" in line]


# --- the content hash ---------------------------------------------------------------------------------------
def test_zeroing_half_a_weight_is_refused_and_resume_falls_back_to_the_previous_checkpoint(tmp_path, capsys):
    run = _ring_run(tmp_path / "run")
    newest = _checkpoint(run, 3)
    original = load_checkpoint(newest)
    size = newest.stat().st_size
    weight = original["G"][_first_weight(original["G"])].numpy().tobytes()
    data = newest.read_bytes()
    assert data.count(weight) == 1
    at = data.index(weight)
    newest.write_bytes(data[:at] + bytes(len(weight) // 2) + data[at + len(weight) // 2:])  # in place
    assert newest.stat().st_size == size
    zeroed = torch.load(newest, weights_only=True)["G"][_first_weight(original["G"])]
    assert (zeroed.view(-1)[: zeroed.numel() // 2] == 0).all()  # torch itself reads it without a complaint
    with pytest.raises(CheckpointError, match=r"step_00000003\.pt is damaged"):
        load_checkpoint(newest)
    capsys.readouterr()
    resumed = resume(run, quiet=True)
    assert (resumed.state, resumed.step) == ("done", 3)
    (warning,) = _warnings(capsys.readouterr().err)
    assert "step_00000003.pt is damaged" in warning and "resuming from step_00000002.pt" in warning
    assert (newest.parent / "step_00000003.pt.rejected").exists()
    again = load_checkpoint(_checkpoint(run, 3))  # step 3 trained again from step 2: the original, bit for bit
    for net in ("D", "G"):
        for key, value in original[net].items():
            assert torch.equal(value, again[net][key]), (net, key)


def test_hash_covers_every_tensor_and_value(tmp_path):
    base = {"step": 1, "w": torch.arange(4.0), "rng": [1, 2, None], "flag": 0.5}
    sealed = save_checkpoint(tmp_path, 1, base)
    assert load_checkpoint(sealed, required=())["flag"] == 0.5
    for change in ({"w": torch.arange(4.0).reshape(2, 2)}, {"w": torch.arange(4.0).double()}, {"flag": 0.25},
                   {"rng": [1, 2, 3]}):
        payload = torch.load(sealed, weights_only=True)
        payload.update(change)
        torch.save(payload, sealed)
        with pytest.raises(CheckpointError, match="damaged"):
            load_checkpoint(sealed, required=())
        save_checkpoint(tmp_path, 1, base)
    legacy = tmp_path / "checkpoints" / "step_00000002.pt"  # format 1 (before hashes) is still read
    torch.save({"format": 1, "step": 2, "w": torch.ones(1)}, legacy)
    assert load_checkpoint(legacy, required=())["step"] == 2


# --- the run's identity ----------------------------------------------------------------------------------
def test_a_checkpoint_of_another_run_is_refused_naming_both_identities(tmp_path, capsys):
    mine = _ring_run(tmp_path / "mine", iterations=2)
    other = _ring_run(tmp_path / "other", iterations=3, seed=1)
    foreign = mine / "checkpoints" / "step_00000003.pt"
    shutil.copy(_checkpoint(other, 3), foreign)
    config = RunConfig(out=str(mine), iterations=3, **RING)
    with pytest.raises(CheckpointError, match=r"belongs to another run \(config [0-9a-f]{16} there vs "
                                              r"[0-9a-f]{16} here: seed 1 there vs 0 here\)"):
        load_checkpoint(foreign, expect=config)
    capsys.readouterr()
    resumed = resume(mine, iterations=3, quiet=True)
    assert (resumed.state, resumed.step) == ("done", 3)
    (warning,) = _warnings(capsys.readouterr().err)
    assert "step_00000003.pt belongs to another run" in warning and "resuming from step_00000002.pt" in warning
    assert not torch.equal(load_checkpoint(_checkpoint(mine, 3))["G"][_first_weight(resumed.generator.state_dict())],
                           load_checkpoint(_checkpoint(other, 3))["G"][_first_weight(resumed.generator.state_dict())])
    # The foreign file as the only checkpoint: nothing to fall back to, one line and exit 2.
    for _, path in list_checkpoints(mine):
        path.unlink()
    shutil.copy(_checkpoint(other, 3), foreign)
    assert cli.main(["run", "--resume", str(mine), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no usable checkpoint" in err[0] and "seed 1 there vs 0 here" in err[0]


def test_a_checkpoint_renamed_to_another_step_is_refused(tmp_path):
    run = _ring_run(tmp_path / "run", iterations=2)
    shutil.copy(_checkpoint(run, 1), run / "checkpoints" / "step_00000005.pt")
    with pytest.raises(CheckpointError, match=r"step_00000005\.pt holds step 1, not 5"):
        load_checkpoint(run / "checkpoints" / "step_00000005.pt")


@pytest.mark.parametrize("damage,fragment", [
    ("drop", "is incomplete (no D)"),
    ("shape", "does not fit this run (RuntimeError: Error(s) in loading state_dict"),
])
def test_missing_entries_and_wrong_shapes_are_one_line_naming_the_file(tmp_path, capsys, damage, fragment):
    run = _ring_run(tmp_path / "run", iterations=1)
    path = _checkpoint(run, 1)
    payload = load_checkpoint(path)
    if damage == "drop":
        del payload["D"]
    else:
        payload["G"][_first_weight(payload["G"])] = torch.zeros(3)
    save_checkpoint(run, 1, payload)  # sealed again: a consistent file that still does not fit
    capsys.readouterr()
    assert cli.main(["run", "--resume", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(path) in err[0] and fragment in err[0], err
    assert "Traceback" not in err[0]


# --- interrupted writes and runs without a checkpoint ---------------------------------------------------------
def test_temporary_leftovers_of_killed_writes_are_removed_on_the_next_start(tmp_path):
    run = _ring_run(tmp_path / "run", iterations=2)
    leftovers = [run / "checkpoints" / ".tmp-k1ll3d.pt", run / ".tmp-final.pt"]
    for path in leftovers:
        path.write_bytes(b"PK\x03\x04 half a zip")
    resume(run, iterations=3, quiet=True)
    assert not any(path.exists() for path in leftovers)
    assert [s for s, _ in list_checkpoints(run)] == [1, 2, 3]


def test_a_failed_write_leaves_the_previous_checkpoints_usable(tmp_path, monkeypatch):
    run = _ring_run(tmp_path / "run", iterations=2)
    before = {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()}

    def killed(obj, file, *args, **kwargs):
        file.write(b"PK\x03\x04 partial")
        raise KeyboardInterrupt  # as if the process died in the middle of torch.save

    monkeypatch.setattr(torch, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(run, 3, load_checkpoint(_checkpoint(run, 2)), keep=1)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()} == before
    load_checkpoint(_checkpoint(run, 2))


def test_resume_of_a_run_stopped_before_its_first_checkpoint_starts_it_from_step_0(tmp_path, capsys):
    argv = ["run", "--dataset", "ring8", "--batch-size", "8", "--iterations", "2", "--eval-every", "0",
            "--exact-every", "0", "--quiet"]
    run = tmp_path / "run"
    assert cli.main([*argv, "--out", str(run)]) == 0
    shutil.rmtree(run / "checkpoints")  # what a kill before the first checkpoint leaves
    capsys.readouterr()
    assert cli.main([*argv, "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert f"--resume {run} starts it again from step 0" in err
    assert cli.main(["run", "--resume", str(run), "--quiet"]) == 0
    assert "has no checkpoint yet (it stopped before its first one); starting it again from step 0" in \
        capsys.readouterr().err
    assert cli.main([*argv, "--out", str(tmp_path / "fresh")]) == 0
    a, b = load_checkpoint(_checkpoint(run, 2)), load_checkpoint(_checkpoint(tmp_path / "fresh", 2))
    assert all(torch.equal(v, b["G"][k]) for k, v in a["G"].items())


# --- the weights-only export ------------------------------------------------------------------------------------
def test_export_final_is_weights_only_and_reproduces_the_generator(tmp_path):
    result = train(RunConfig(out=str(tmp_path / "run"), iterations=2, export_final=True, **DIGITS))
    final = tmp_path / "run" / "final.pt"
    raw = torch.load(final, weights_only=True)
    assert {"D", "G", "G_ema", "config", "step"} <= set(raw) and "opt_G" not in raw and raw["step"] == 2
    assert final.stat().st_size < 0.6 * _checkpoint(tmp_path / "run", 2).stat().st_size
    nets = final_networks(load_final(final))
    z = result.ema_generator.sample_latent(16, generator=torch.Generator().manual_seed(3))
    for name, live in (("G_ema", result.ema_generator), ("G", result.generator)):
        live.eval()
        with torch.no_grad():
            assert torch.equal(nets[name](z), live(z)), name
    plain = train(RunConfig(out=str(tmp_path / "plain"), iterations=1, **DIGITS))
    assert plain.state == "done" and not (tmp_path / "plain" / "final.pt").exists()
    resume(tmp_path / "plain", iterations=2, export_final=True, quiet=True)  # a runtime flag: --resume takes it
    assert load_final(tmp_path / "plain" / "final.pt")["step"] == 2


# --- what the end of a run says --------------------------------------------------------------------------------
def test_the_end_of_a_run_prints_metrics_size_and_next_commands(tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["run", "--dataset", "ring8", "--batch-size", "8", "--iterations", "2", "--eval-every", "2",
            "--eval-samples", "100", "--exact-every", "0", "--keep-checkpoints", "2", "--export-final",
            "--out", str(run)]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "final metrics (step 2, 100 samples): modes_covered" in out and "(higher is better)" in out
    assert "kl_uniform" in out and "(lower is better)" in out
    assert "on disk: " in out and "checkpoints " in out and "(1 file, --keep-checkpoints 2)" in out
    assert "final.pt" in out
    for command in (f"gradscope plot {run}  ", f"figures into {run / 'plots'}",
                    f"gradscope report {run} -o {run / 'report.html'}", f"gradscope eval {run}",
                    f"gradscope run --resume {run} --iterations 4"):
        assert command in out, command
    assert cli.main(["run", "--resume", str(run), "--iterations", "3", "--quiet"]) == 0
    assert capsys.readouterr().out == ""


def test_summary_names_image_metrics_with_their_direction(tmp_path):
    outcome = LoopOutcome("done", 5, {"digits_fid": 41.2, "digits_is_mean": 6.0, "digits_is_std": 0.1,
                                      "digits_kid_mean": 0.02})
    text = "\n".join(summary_lines(outcome, tmp_path, RunConfig(dataset="digits")))
    assert "digits_fid 41.2 (lower is better)" in text and "digits_is_mean 6 (higher is better)" in text
    assert "digits_kid_mean 0.02 (lower is better)" in text and "is_std" not in text
    none = "\n".join(summary_lines(LoopOutcome("done", 5), tmp_path, RunConfig(eval_every=0)))
    assert f"no sample-quality evaluation (--eval-every 0); gradscope eval {tmp_path}" in none


def test_help_says_what_keep_checkpoints_0_means_and_what_export_final_writes(capsys):
    with pytest.raises(SystemExit):
        cli.main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "0 keeps every one" in text and "--resume needs only the newest" in text
    assert "--export-final" in text and "final.pt" in text and "weights_only=True" in text
