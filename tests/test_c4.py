"""C4: the equal-allocation optimum against scipy and AM-GM; comparison verdicts; tiny run."""
from __future__ import annotations

import numpy as np
import pytest

from analyses import c4_gamma as c4
from analysis_helpers import holding_must_checks


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    return c4.run("tiny", tmp_path_factory.mktemp("c4"), seed=0)


def test_tiny_run_math_holds_and_training_is_not_judged(result):
    assert len(holding_must_checks(result)) == 5
    trained = [c for c in result.checks if c.quantity.startswith("ring8")]
    assert trained and all(c.verdict == "inconclusive" for c in trained)  # 40 iterations cannot show a drift
    runs = result.tables["c4_runs"]
    assert set(runs["norm"]) == set(c4.GAMMA_NORMS)
    assert runs.loc[runs["norm"] == "sn-same-gamma", "final_spread"].max() == 0.0
    assert all(0 < p.stat().st_size < 300 * 1024 for p in result.figures)


def test_bound_by_hand_and_by_the_identity():
    assert c4.allocation_bound(np.array([1.0, 2.0, 4.0])) == 84.0  # 2^2 4^2 + 1 4^2 + 1 2^2
    g = np.array([0.5, 3.0, 1.5, 2.0])
    assert c4.allocation_bound(g) == pytest.approx(np.prod(g) ** 2 * np.sum(g**-2.0), rel=1e-14)
    with pytest.raises(ValueError, match="positive"):
        c4.allocation_bound(np.array([1.0, -1.0]))


@pytest.mark.parametrize("L, C", [(2, 0.3), (4, 5.0), (7, 1.7)])
def test_scipy_finds_the_equal_allocation(L, C):
    start = np.exp(np.random.default_rng(L).normal(0, 1, L))
    start *= (C / start.prod()) ** (1 / L)
    optimum = c4.minimize_allocation(C, L, start)
    assert np.prod(optimum) == pytest.approx(C, rel=1e-12)
    assert optimum == pytest.approx(np.full(L, C ** (1 / L)), rel=1e-5)
    assert c4.allocation_bound(optimum) == pytest.approx(c4.equal_allocation_minimum(C, L), rel=1e-10)
    assert c4.allocation_excess(start) > 1.0


def test_per_layer_gammas_get_equal_log_gradients_only_without_biases():
    free, biased = c4.gamma_gradients(0.0), c4.gamma_gradients(0.1)
    assert free == pytest.approx(np.full(4, free[0]), rel=1e-10) and abs(free[0]) > 0
    assert np.ptp(biased) > 0.1 * np.abs(biased).max()


def test_paired_comparison_is_decided_by_the_interval_over_seeds():
    compare = c4.paired_comparison
    assert compare("C4", "q", np.array([2.0, 1.05]), np.array([1.0, 1.0]), higher_is_worse=True,
                   scale="small").verdict == "inconclusive"
    better_than_claimed = (np.array([0.5, 0.6, 0.55, 0.52]), np.ones(4))
    assert compare("C4", "q", *better_than_claimed, higher_is_worse=True, scale="small").verdict == "violated"
    assert compare("C4", "q", *better_than_claimed, higher_is_worse=True, scale="tiny").verdict == "inconclusive"
    lower_quality = compare("C4", "modes", np.array([4.0, 5.0, 4.5, 4.2]), np.full(4, 8.0), higher_is_worse=False,
                            scale="small")
    ratios = np.array([4.0, 5.0, 4.5, 4.2]) / 8.0
    assert lower_quality.verdict == "holds" and lower_quality.measured == pytest.approx(np.exp(np.log(ratios).mean()))
    assert "n=4 paired" in lower_quality.detail
    with pytest.raises(ValueError, match="equal-length"):
        compare("C4", "q", np.array([1.0]), np.array([1.0, 2.0]), higher_is_worse=True, scale="small")
