"""The training experiments E1-E4: their statistics, collapse rule, sweeps and tiny end-to-end runs."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats as scipy_stats

from analyses import stats
from analyses.common import HOLDS, INCONCLUSIVE, VIOLATED

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- statistics


def test_t_interval_matches_scipy_one_sample_confidence_interval():
    rng = np.random.default_rng(0)
    for n in (2, 3, 5, 12):
        x = rng.normal(0.3, 0.7, n)
        mean, low, high = stats.t_interval(x)
        reference = scipy_stats.ttest_1samp(x, 0.0).confidence_interval(0.95)
        assert mean == pytest.approx(x.mean())
        assert (low, high) == pytest.approx((reference.low, reference.high), rel=1e-12)


def test_paired_log_ratio_is_the_t_interval_of_log_ratios_and_drops_bad_pairs():
    a = np.array([1.0, 2.0, 4.0, 3.0, -1.0])
    b = np.array([1.5, 2.5, 7.0, 4.0, 2.0])          # the last pair has a negative reference: dropped
    effect = stats.paired_log_ratio(a, b)
    logs = np.log(b[:4] / a[:4])
    reference = scipy_stats.ttest_1samp(logs, 0.0).confidence_interval(0.95)
    assert effect.n == 4 and effect.paired and effect.log
    assert (effect.low, effect.high) == pytest.approx((reference.low, reference.high), rel=1e-12)
    assert effect.verdict("positive") == (HOLDS if reference.low > 0 else INCONCLUSIVE)


def test_verdict_follows_the_interval_only():
    assert stats.t_effect([0.1, 0.2, 0.15]).verdict("positive") == HOLDS
    assert stats.t_effect([0.1, 0.2, 0.15]).verdict("negative") == VIOLATED
    assert stats.t_effect([0.1, -0.2, 0.15]).verdict("positive") == INCONCLUSIVE
    assert stats.t_effect([0.5]).verdict("positive") == INCONCLUSIVE          # one seed: no interval
    with pytest.raises(ValueError, match="direction must be"):
        stats.t_effect([1.0, 2.0]).verdict("up")


def test_seeds_needed_reaches_the_stated_power_by_the_noncentral_t():
    for spread, effect in ((0.05, 0.05), (0.1, 0.05), (0.02, 0.05)):
        n = stats.seeds_needed(spread, effect)
        df, shift = n - 1, effect / (spread / math.sqrt(n))
        critical = scipy_stats.t.ppf(0.975, df)
        power = 1 - scipy_stats.nct.cdf(critical, df, shift) + scipy_stats.nct.cdf(-critical, df, shift)
        assert power >= 0.78, (spread, effect, n, power)
        if n > 2:
            df, shift = n - 2, effect / (spread / math.sqrt(n - 1))
            critical = scipy_stats.t.ppf(0.975, df)
            assert 1 - scipy_stats.nct.cdf(critical, df, shift) < 0.85
    assert stats.seeds_needed(0.0, 0.05) is None
    assert stats.seeds_needed(0.05, 0.05, paired=False) > stats.seeds_needed(0.05, 0.05)


def test_bootstrap_difference_of_planted_collapse_flags():
    clear = stats.bootstrap_difference(np.zeros(6), np.ones(6))
    assert clear.estimate == 1.0 and clear.verdict("positive") == HOLDS
    mixed = stats.bootstrap_difference([0, 1, 0, 1], [1, 0, 1, 0])
    assert mixed.verdict("positive") == INCONCLUSIVE


def test_equivalence_check_holds_inside_and_is_violated_outside_the_margin():
    close = stats.t_effect(np.log([1.02, 0.98, 1.01, 0.99, 1.0]), paired=False, log=True)
    far = stats.t_effect(np.log([2.0, 2.1, 1.9, 2.05]), paired=False, log=True)
    wide = stats.t_effect(np.log([0.5, 2.0]), paired=False, log=True)
    assert stats.equivalence_check("E1", "q", close, 1.25).verdict == HOLDS
    assert stats.equivalence_check("E1", "q", far, 1.25).verdict == VIOLATED
    assert stats.equivalence_check("E1", "q", wide, 1.25).verdict == INCONCLUSIVE


def test_effect_check_writes_interval_n_and_power_in_its_detail():
    check = stats.effect_check("E2", "FID ratio", stats.paired_log_ratio([100, 110, 90], [80, 85, 75]), "negative")
    assert check.verdict == HOLDS and check.measured < 1 and check.bound_or_prediction == 1.0
    assert "n=3 paired" in check.detail and "seeds per arm" in check.detail and "[" in check.detail


# ----------------------------------------------------------------------------- class coverage, collapse rule


class _FixedImages(torch.nn.Module):
    """A planted generator: returns rows of ``images`` (cycled), whatever the latent."""

    def __init__(self, images: torch.Tensor) -> None:
        super().__init__()
        self.images = images
        self.z_dim = 2
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def sample_latent(self, n, *, device=None, generator=None):
        return torch.randn(n, self.z_dim, generator=generator).to(device or "cpu")

    def forward(self, z):
        index = torch.arange(z.shape[0]) % self.images.shape[0]
        return self.images[index]


def test_planted_collapse_covers_one_class_and_real_digits_cover_all():
    from gradscope.data import load_dataset
    from gradscope.metrics import class_histogram, classes_covered, get_extractor

    dataset = load_dataset("mnist")
    extractor = get_extractor("mnist")
    # The file is sorted by label: draw across it.
    spread = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))[:1000]
    real = _FixedImages(dataset.get_batch(spread))
    one_digit = _FixedImages(dataset.get_batch(torch.tensor([0])))
    assert classes_covered(class_histogram(real, extractor, n_samples=1000)) == 10
    assert classes_covered(class_histogram(one_digit, extractor, n_samples=300)) == 1


def test_e3_collapse_rule_fires_on_divergence_few_classes_and_rising_fid():
    from analyses.e3_stability import collapsed

    runs = pd.DataFrame({"status": ["done", "done", "diverged", "done", "failed"],
                         "classes_covered": [10, 3, np.nan, 10, np.nan],
                         "final_fid": [100.0, 100.0, np.nan, 400.0, np.nan],
                         "best_fid": [90.0, 90.0, np.nan, 100.0, np.nan]})
    flags = collapsed(runs)
    assert flags.tolist()[:4] == [0.0, 1.0, 1.0, 1.0] and math.isnan(flags.iloc[4])


# ----------------------------------------------------------------------------- sweeps of arms


def test_a_grid_axis_of_tables_sets_several_flags_per_arm():
    from gradscope.sweep import parse_spec

    spec = parse_spec({"base": {"iterations": 5, "dataset": "digits"},
                       "grid": {"arm": [{"norm": "none", "init": "lecun"}, {"norm": "bssn", "scale": 1.4}],
                                "seed": [0, 1]}})
    assert [p.run_id for p in spec.points] == ["norm=none_init=lecun_seed=0", "norm=none_init=lecun_seed=1",
                                               "norm=bssn_scale=1.4_seed=0", "norm=bssn_scale=1.4_seed=1"]
    assert spec.points[2].params == {"norm": "bssn", "scale": 1.4, "seed": 0}
    with pytest.raises(ValueError, match="mixes tables and plain values"):
        parse_spec({"grid": {"arm": [{"norm": "sn"}, "bsn"]}})
    with pytest.raises(ValueError, match="unknown flag 'nrm'"):
        parse_spec({"grid": {"arm": [{"nrm": "sn"}]}})


def test_every_experiment_declares_small_sweeps_with_five_seeds_on_the_32px_geometry():
    from analyses import e1_gradients, e2_scale, e3_stability, e4_gammas
    from gradscope.sweep import parse_spec

    # The headline sweeps have 5 seeds per cell; the ones the CPU budget cut say so in their docstrings.
    expected = {("e1_gradients", "adam"): 5, ("e1_gradients", "sgd"): 5, ("e2_scale", "quality"): 5,
                ("e2_scale", "schedule"): 3, ("e4_gammas", "gammas"): 3}
    for module in (e1_gradients, e2_scale, e4_gammas):
        for name, data in module.sweeps("small").items():
            spec = parse_spec({"name": name, **data})
            seeds = len(set(p.params["seed"] for p in spec.points))
            assert seeds == expected[(module.__name__.split(".")[-1], name)], (module.__name__, name)
            assert spec.base["dataset"] == "mnist" and spec.base["image-size"] == 32
    assert set(e1_gradients.sweeps("small")) == {"adam", "sgd"}
    assert e1_gradients.sweeps("small")["adam"]["base"]["iterations"] >= 2000
    assert e2_scale.sweeps("small")["quality"]["grid"]["scale"] == [1.0, 1.2, 1.4, 1.6]
    paper = parse_spec({"name": "q", **e2_scale.sweeps("paper")["quality"]})
    assert paper.base["dataset"] == "cifar10" and len(paper.points) == 2 * 19 * 5
    assert set(e3_stability.sweeps("small")) == {"lr", "ndis5"}


# ----------------------------------------------------------------------------- same seed, same numbers


def _tiny_mnist_run(out: Path, threads: str) -> Path:
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MPLBACKEND": "Agg"}
    subprocess.run([sys.executable, "-m", "gradscope", "run", "--dataset", "mnist", "--width", "0.125",
                    "--batch-size", "16", "--iterations", "6", "--eval-every", "0", "--sample-every", "0",
                    "--checkpoint-every", "0", "--quiet", "--out", str(out)], check=True, env=env, cwd=ROOT,
                   timeout=300)
    return out


def test_two_processes_with_one_mnist_config_write_identical_tables(tmp_path):
    from gradscope.record import load_run

    first = load_run(_tiny_mnist_run(tmp_path / "a", "1"))
    second = load_run(_tiny_mnist_run(tmp_path / "b", "2"))
    assert json.loads((tmp_path / "a" / "config.json").read_text())["cpu_threads"] == 1
    pd.testing.assert_frame_equal(first.layers, second.layers, check_exact=True)
    pd.testing.assert_frame_equal(first.scalars, second.scalars, check_exact=True)


# ----------------------------------------------------------------------------- tiny end-to-end runs


@pytest.fixture(scope="module")
def tiny_results(tmp_path_factory):
    from analyses.runner import run_selected

    out = tmp_path_factory.mktemp("experiments")
    outcome = run_selected(["e1", "e2", "e3", "e4"], "tiny", out, progress=None)
    assert not outcome.errors, outcome.errors
    return out, outcome


@pytest.mark.slow
def test_tiny_experiments_run_judge_and_draw(tiny_results):
    out, outcome = tiny_results
    for name, result in outcome.results.items():
        assert result.checks, name
        assert all(c.verdict in (HOLDS, VIOLATED, INCONCLUSIVE) for c in result.checks)
        assert not any(c.must_hold for c in result.checks)          # empirical claims are never must-hold
        assert any(p.suffix == ".png" for p in result.figures), name
        assert list((out / name / "results").glob("*.csv.gz")), name
    e1 = outcome.results["e1"]
    assert any("strict SN / SN" in c.quantity for c in e1.checks)
    assert any("BSSN / SSN" in c.quantity for c in outcome.results["e2"].checks)
    for check in e1.checks + outcome.results["e2"].checks:
        if "t interval" in check.detail:
            assert "n=2 paired" in check.detail or "n=2 independent" in check.detail, check


@pytest.mark.slow
def test_from_results_redraws_the_same_verdicts_without_training(tiny_results, tmp_path):
    from analyses.runner import run_selected

    out, outcome = tiny_results
    redrawn = run_selected(["e1", "e2", "e3", "e4"], "tiny", tmp_path, progress=None,
                           from_results=_results_tree(out, tmp_path / "results"))
    assert not redrawn.errors, redrawn.errors
    for name, result in outcome.results.items():
        before = [(c.quantity, c.verdict, round(c.measured, 9)) for c in result.checks]
        after = [(c.quantity, c.verdict, round(c.measured, 9)) for c in redrawn.results[name].checks]
        assert before == after, name
        assert not (tmp_path / name / "sweeps").exists()


def _results_tree(out: Path, dest: Path) -> Path:
    import shutil

    for name in ("e1", "e2", "e3", "e4"):
        shutil.copytree(out / name / "results", dest / name)
    return dest


@pytest.mark.slow
def test_e2_paper_pipeline_runs_end_to_end_on_fake_cifar_archives(tmp_path, monkeypatch):
    from analyses.runner import run_selected
    from data_helpers import make_cifar_archive

    (tmp_path / "data").mkdir()
    make_cifar_archive(tmp_path / "data", per_batch=4)
    monkeypatch.setenv("GRADSCOPE_DATA", str(tmp_path / "data"))
    outcome = run_selected(["e2"], "tiny", tmp_path / "out", progress=None, dataset="cifar10")
    assert not outcome.errors, outcome.errors
    runs = pd.read_csv(tmp_path / "out" / "e2" / "results" / "e2_runs.csv.gz")
    assert len(runs) == 4 and set(runs["status"]) == {"done"}
    config = json.loads(next((tmp_path / "out" / "e2" / "sweeps" / "quality" / "runs").glob("*/config.json"))
                        .read_text())
    assert config["dataset"] == "cifar10" and config["image_size"] == 32
    with pytest.raises(ValueError, match="--dataset and --no-train apply to e1..e4"):
        from analyses.registry import run_analysis
        run_analysis("c6", "tiny", tmp_path / "c6", dataset="cifar10")


def test_default_job_geometry_keeps_sigma_op_at_least_sigma_fwd_unlike_8px_digits():
    from gradscope.data import load_dataset
    from gradscope.linalg import layer_sigmas, weight_layers
    from gradscope.norms.base import raw_weight
    from gradscope.train import RunConfig
    from gradscope.train.networks import build_networks

    def ratios(config, dataset):
        torch.manual_seed(0)
        D, _ = build_networks(config, dataset)
        layers = [la for la in weight_layers(D, torch.zeros(1, *dataset.sample_shape)) if la.kind == "conv"]
        return [(s := layer_sigmas(la, weight=raw_weight(la.module)))["sigma_op"] / s["sigma_fwd"] for la in layers]

    default = RunConfig()
    assert (default.dataset, default.image_size, default.width) == ("mnist", 32, 0.25)
    assert min(ratios(default, load_dataset("mnist"))) >= 1.0          # measured 1.17 .. 2.40
    assert min(ratios(RunConfig(dataset="digits"), load_dataset("digits", image_size=8))) < 1.0
