"""C5: SN as LeCun initialization -- the tiny analysis holds, planted violations are caught."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from analyses import c5_lecun as c5
from analyses.probe import recorded_pass
from analysis_helpers import holding_must_checks
from gradscope.models import SNDCGANDiscriminator


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    return c5.run("tiny", tmp_path_factory.mktemp("c5"), seed=0)


def test_tiny_run_holds_and_writes_its_files(result):
    must = holding_must_checks(result)
    # sigma and ratio for 3 shapes, exact SN after training for LeCun and Kaiming init, spread over inits
    assert len(must) == 9
    for name in ("c5_random_matrices", "c5_training", "c5_trained_exact", "c5_drift", "c5_init_spread"):
        assert (result.out / f"{name}.csv").is_file()
    assert sorted(p.name for p in result.figures) == ["c5_random_matrices.pdf", "c5_random_matrices.png",
                                                      "c5_training.pdf", "c5_training.png"]
    assert all(0 < p.stat().st_size < 300 * 1024 for p in result.figures)


def test_measured_values_are_the_theory_md_numbers(result):
    table = result.tables["c5_random_matrices"]
    mean = table.groupby("shape")["lecun_ratio"].mean()
    assert mean["64x64"] == pytest.approx(0.26, abs=0.03)
    assert mean["128x576"] == pytest.approx(0.466, abs=0.02)
    assert mean["512x4608"] == pytest.approx(0.564, abs=0.01)


def test_top_singular_value_matches_svd():
    w = torch.randn(37, 90, dtype=torch.float64)
    assert c5.top_singular_value(w) == pytest.approx(float(torch.linalg.svdvals(w)[0]), rel=1e-10)
    assert c5.top_singular_value(w.T) == pytest.approx(float(torch.linalg.svdvals(w)[0]), rel=1e-10)


def test_ratio_of_trained_sn_weights_is_recomputed_exactly(result):
    final = result.tables["c5_trained_exact"]
    assert set(final["norm"]) == {"none", "sn"}
    row = final[(final["norm"] == "sn") & (final["layer"] == "features.conv7")].iloc[0]
    assert (row["m"], row["n"]) == (512, 256 * 9)
    assert row["sn_prediction"] == pytest.approx(1 / (1 + math.sqrt(512 / 2304)) ** 2)


def test_a_low_rank_weight_violates_the_random_matrix_prediction():
    g = torch.Generator().manual_seed(0)
    low_rank = torch.randn(256, 1, generator=g) @ torch.randn(1, 1024, generator=g) * 0.05
    noisy = low_rank + 0.01 * torch.randn(256, 1024, generator=g)
    table = c5.with_relative_errors(pd.DataFrame([c5.measure_matrix(noisy, float(noisy.std()))]))
    checks = c5.random_matrix_checks(table)
    assert [c.verdict for c in checks] == ["violated", "violated"] and all(c.must_hold for c in checks)


def test_an_unnormalized_net_with_large_weights_violates_the_sn_prediction():
    model = SNDCGANDiscriminator(8, 1)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(10.0)
    layers = recorded_pass(model, torch.randn(4, 1, 8, 8), stats=["lecun_ratio"])
    prediction = {"features.conv7": c5.lecun_prediction((512, 256, 3, 3), 2304)}
    rows = layers[layers["layer"].isin(prediction)]
    table = pd.DataFrame({"norm": "sn", "init": "planted", "step": rows["step"], "layer": rows["layer"],
                          "layer_index": rows["layer_index"], "lecun_ratio": rows["value"],
                          "sn_prediction": rows["layer"].map(prediction)})
    table["relative_to_prediction"] = table["lecun_ratio"] / table["sn_prediction"]
    final = pd.DataFrame({"norm": ["sn"], "init": ["planted"], "layer": ["features.conv7"], "judged": [True],
                          "relative_to_prediction": [float(table["relative_to_prediction"].iloc[0])]})
    checks = c5.training_checks(table, final)
    exact, as_trained = checks[0], checks[1]
    assert exact.must_hold and exact.verdict == "violated"
    assert as_trained.verdict == "violated"
    assert exact.measured > 50  # fan_in Var = 2304 * (0.02*10)^2*0.77 ~ 71 against ~0.46


def test_sigma_tolerance_shrinks_with_size():
    assert c5.sigma_tolerance(64, 64) == pytest.approx(2 * 64 ** (-2 / 3))
    assert c5.sigma_tolerance(512, 4608) < 0.04 < c5.sigma_tolerance(128, 576) < 0.1


def test_unknown_scale_is_a_one_line_error(tmp_path):
    with pytest.raises(ValueError, match="unknown scale 'big'"):
        c5.run("big", tmp_path)
    assert np.isfinite(c5.TRAINED_TOLERANCE)


def test_sn_removes_the_init_scale_and_a_scale_tracking_ratio_is_caught(result):
    spread = result.tables["c5_init_spread"]
    assert len(spread) >= 4 and (spread["inits"] == 2).all()
    # Without SN, Kaiming's variance is LeCun's times 2 / (1 + 0.1^2) at init; 8 small steps keep it there.
    assert spread["spread_none"].to_numpy() == pytest.approx(2 / 1.01, rel=0.05)
    assert (spread["spread_exact_sn"] < 1.1).all()
    (check,) = c5.init_independence_checks(result.tables["c5_training"], result.tables["c5_trained_exact"])
    assert check.must_hold and check.verdict == "holds"

    # Planted: an "SN" whose trained ratio still carries the init's factor of two.
    final = result.tables["c5_trained_exact"].copy()
    planted = (final["norm"] == "sn") & (final["init"] == "kaiming")
    final.loc[planted, "exact_sn_ratio"] *= 2.5
    (check,) = c5.init_independence_checks(result.tables["c5_training"], final)
    assert check.verdict == "violated" and check.measured > 2.2
