"""C7: forward / backward variance gains under SN, BSN, SSN, BSSN -- the tiny analysis and its verdicts."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from analyses import c7_bidirectional as c7


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    return c7.run("tiny", tmp_path_factory.mktemp("c7"), seed=0)


def test_tiny_run_reports_every_comparison(result):
    assert result.ok and not any(c.must_hold for c in result.checks)  # nothing here is claimed as a theorem
    quantities = [c.quantity for c in result.checks]
    assert any("BSN vs SN" in q for q in quantities) and any("BSSN (c=1.41) vs SN" in q for q in quantities)
    assert all(c.verdict in ("holds", "violated", "inconclusive") for c in result.checks)
    assert all(0 < p.stat().st_size < 300 * 1024 for p in result.figures) and len(result.figures) == 4


def test_scaling_by_kaimings_c_brings_sn_gains_towards_one(result):
    summary = result.tables["c7_distance_init"].set_index("setup")
    assert summary.loc["ssn c=1.41", "forward"] < summary.loc["sn", "forward"]
    bssn = [c for c in result.checks if c.quantity.startswith("init: distance from 1, BSSN (c=1.41) vs SN")][0]
    assert bssn.verdict == "holds"


def test_ssn_multiplies_every_forward_gain_by_c_squared(result):
    ratios = result.tables["c7_ratios_init"]
    forward = ratios[ratios["direction"] == "forward"]
    sn = forward[forward["setup"] == "sn"].set_index(["draw", "layer_index"])["ratio"]
    ssn = forward[forward["setup"] == "ssn c=1.41"].set_index(["draw", "layer_index"])["ratio"]
    gain = (ssn / sn).to_numpy()
    # leaky ReLU is positively homogeneous and biases are zero at init: exactly c^2 per layer
    assert np.allclose(gain, c7.KAIMING_C ** 2, rtol=1e-3)


def test_distance_from_one_is_the_mean_absolute_log10_ratio():
    ratios = pd.DataFrame({"setup": ["a", "a", "b", "b"], "direction": ["forward", "backward"] * 2,
                           "ratio": [1.0, 10.0, 0.1, 0.1]})
    distance = c7.distance_from_one(ratios, ["setup"]).set_index("setup")
    assert distance.loc["a", "forward"] == 0 and distance.loc["a", "backward"] == pytest.approx(1)
    assert distance.loc["b", "both"] == pytest.approx(1)


def test_compare_has_an_inconclusive_margin():
    assert c7.compare("q", 0.5, 1.0).verdict == "holds"
    assert c7.compare("q", 1.02, 1.0).verdict == "inconclusive"
    assert c7.compare("q", 1.5, 1.0).verdict == "violated"
    assert c7.KAIMING_C == pytest.approx(math.sqrt(2 / 1.01))
