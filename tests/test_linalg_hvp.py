"""Symmetric Lanczos and Hessian-vector products against dense float64 eigendecompositions and Hessians."""
from __future__ import annotations

import pytest
import torch

from gradscope.linalg import power
from gradscope.linalg.hvp import hessian_extremes, hessian_vector_product, symmetric_lanczos

DT = torch.float64


def random_symmetric(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, n, generator=g, dtype=DT)
    return (a + a.T) / 2


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_extremes_of_an_indefinite_matrix_match_eigvalsh(seed: int) -> None:
    a = random_symmetric(60, seed)
    eigenvalues = torch.linalg.eigvalsh(a)
    res = symmetric_lanczos(lambda v: a @ v, torch.ones(60, dtype=DT), tol=1e-10)
    assert res.converged
    assert res.lowest == pytest.approx(float(eigenvalues[0]), rel=1e-9)
    assert res.highest == pytest.approx(float(eigenvalues[-1]), rel=1e-9)
    top = float(eigenvalues[eigenvalues.abs().argmax()])
    assert res.value == pytest.approx(top, rel=1e-9) and res.norm == pytest.approx(abs(top), rel=1e-9)
    assert torch.allclose(a @ res.vector, top * res.vector, atol=1e-6 * abs(top))


def test_symmetric_pair_and_negative_top_eigenvalue() -> None:
    # +-3 exactly, plus a bulk close below: a power iteration's Rayleigh quotient stalls between +3 and -3.
    q, _ = torch.linalg.qr(torch.randn(30, 30, generator=torch.Generator().manual_seed(4), dtype=DT))
    spectrum = torch.cat([torch.tensor([3.0, -3.0], dtype=DT), torch.linspace(-2.9, 2.9, 28, dtype=DT)])
    a = q @ torch.diag(spectrum) @ q.T
    res = symmetric_lanczos(lambda v: a @ v, torch.randn(30, generator=torch.Generator().manual_seed(5), dtype=DT),
                            tol=1e-10)
    assert (res.lowest, res.highest) == (pytest.approx(-3.0, rel=1e-9), pytest.approx(3.0, rel=1e-9))
    negative = torch.diag(torch.tensor([-7.0, 6.9, 1.0, 0.5], dtype=DT))
    res = symmetric_lanczos(lambda v: negative @ v, torch.ones(4, dtype=DT), tol=1e-12)
    assert res.value == pytest.approx(-7.0, rel=1e-12) and res.norm == pytest.approx(7.0, rel=1e-12)


def test_zero_operator_and_a_restarted_basis(monkeypatch) -> None:
    res = symmetric_lanczos(torch.zeros_like, torch.ones(5, 2, dtype=DT))
    assert (res.norm, res.converged, res.iterations, res.vector.shape) == (0.0, True, 1, (5, 2))
    a = random_symmetric(50, 7)
    expected = float(torch.linalg.eigvalsh(a).abs().max())
    monkeypatch.setattr(power, "_BASIS_BYTES", 4 * 50 * 8)  # four vectors, then a restart
    res = symmetric_lanczos(lambda v: a @ v, torch.ones(50, dtype=DT), tol=1e-8, max_iter=2000)
    assert res.converged and res.iterations > 4
    assert res.norm == pytest.approx(expected, rel=1e-7)


def test_unconverged_runs_warn_and_return_a_lower_bound() -> None:
    a = random_symmetric(80, 8)
    expected = float(torch.linalg.eigvalsh(a).abs().max())
    with pytest.warns(RuntimeWarning, match="not settled"):
        res = symmetric_lanczos(lambda v: a @ v, torch.ones(80, dtype=DT), tol=1e-12, max_iter=3)
    assert not res.converged and res.iterations == 3 and res.norm <= expected


def test_bad_parameters_are_rejected() -> None:
    with pytest.raises(ValueError, match="tol must be a finite number > 0"):
        symmetric_lanczos(lambda v: v, torch.ones(2), tol=0)
    with pytest.raises(ValueError, match="max_iter must be an integer >= 1"):
        symmetric_lanczos(lambda v: v, torch.ones(2), max_iter=0)
    with pytest.raises(ValueError, match="non-zero start vector"):
        symmetric_lanczos(lambda v: v, torch.zeros(2))
    w = torch.ones(3, requires_grad=True)
    with pytest.raises(ValueError, match="does not match weight shape"):
        hessian_vector_product(torch.ones(2), w)


def test_hessian_products_and_extremes_match_the_dense_hessian() -> None:
    g = torch.Generator().manual_seed(9)
    m, b = torch.randn(6, 4, generator=g, dtype=DT), torch.randn(6, generator=g, dtype=DT)

    def objective(w: torch.Tensor) -> torch.Tensor:
        return torch.tanh(m @ w.reshape(-1) + b).pow(3).sum() - (w ** 2).sum() * 0.1

    w = torch.randn(2, 2, generator=g, dtype=DT, requires_grad=True)
    (grad,) = torch.autograd.grad(objective(w), w, create_graph=True)
    dense = torch.autograd.functional.hessian(objective, w.detach().reshape(-1)).reshape(4, 4)
    v = torch.randn(2, 2, generator=g, dtype=DT)
    assert torch.allclose(hessian_vector_product(grad, w)(v).reshape(-1), dense @ v.reshape(-1), atol=1e-12)
    eigenvalues = torch.linalg.eigvalsh(dense)
    res = hessian_extremes(grad, w, tol=1e-12, generator=torch.Generator().manual_seed(0))
    assert (res.lowest, res.highest) == (pytest.approx(float(eigenvalues[0]), rel=1e-10),
                                         pytest.approx(float(eigenvalues[-1]), rel=1e-10))
