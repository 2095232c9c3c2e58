"""gradscope.linalg against independent oracles: explicit index-loop operator matrices, numpy SVD."""
from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest
import torch

from gradscope.linalg import (
    circular_singular_values,
    conv_adjoint,
    conv_apply,
    conv_geometry,
    conv_geometry_of,
    conv_operator_matrix,
    conv_operator_norm,
    kernel_gradient,
    lanczos,
    power_iteration,
    power_step_,
    reshape_norms,
    reshape_weight,
    rmt_spectral_norm,
)

DT = torch.float64


def _source_index(p: int, n: int, mode: str) -> int | None:
    """Index into the unpadded input read at padded-coordinate offset ``p`` (None: a zero pad)."""
    if 0 <= p < n:
        return p
    if mode == "zeros":
        return None
    if mode == "circular":
        return p % n
    if mode == "replicate":
        return min(max(p, 0), n - 1)
    return -p if p < 0 else 2 * (n - 1) - p  # reflect


def oracle_conv_matrix(w: np.ndarray, size, stride, pads, dilation, mode="zeros", groups=1) -> np.ndarray:
    """Dense matrix of a convolution, from the definition out[o, j] = sum_{c,t} w[o, c, t] x[c, j*s + t*d - lo]."""
    c_out, c_in_g = w.shape[:2]
    kernel = w.shape[2:]
    out = [(n + lo + hi - d * (k - 1) - 1) // s + 1 for n, (lo, hi), d, k, s in zip(size, pads, dilation, kernel, stride)]
    mat = np.zeros((c_out * math.prod(out), c_in_g * groups * math.prod(size)))
    per_group = c_out // groups
    for o in range(c_out):
        for c_local in range(c_in_g):
            c = (o // per_group) * c_in_g + c_local
            for opos in itertools.product(*map(range, out)):
                row = np.ravel_multi_index((o, *opos), (c_out, *out))
                for tap in itertools.product(*map(range, kernel)):
                    src = [_source_index(j * s + t * d - lo, n, mode)
                           for j, t, s, d, (lo, _), n in zip(opos, tap, stride, dilation, pads, size)]
                    if None in src:
                        continue
                    col = np.ravel_multi_index((c, *src), (c_in_g * groups, *size))
                    mat[row, col] += w[(o, c_local, *tap)]
    return mat


def oracle_conv_transpose_matrix(w: np.ndarray, size, stride, padding, dilation, output_padding, groups=1):
    """Dense matrix of a transposed convolution from its scatter definition y[oc, i*s + t*d - p] += w x[ic, i]."""
    c_in, c_out_g = w.shape[:2]
    kernel = w.shape[2:]
    out = [(n - 1) * s - 2 * p + d * (k - 1) + op + 1
           for n, s, p, d, k, op in zip(size, stride, padding, dilation, kernel, output_padding)]
    mat = np.zeros((c_out_g * groups * math.prod(out), c_in * math.prod(size)))
    per_group = c_in // groups
    for ic in range(c_in):
        for oc_local in range(c_out_g):
            oc = (ic // per_group) * c_out_g + oc_local
            for ipos in itertools.product(*map(range, size)):
                col = np.ravel_multi_index((ic, *ipos), (c_in, *size))
                for tap in itertools.product(*map(range, kernel)):
                    dst = [i * s + t * d - p for i, t, s, d, p in zip(ipos, tap, stride, dilation, padding)]
                    if all(0 <= j < o for j, o in zip(dst, out)):
                        mat[np.ravel_multi_index((oc, *dst), (c_out_g * groups, *out)), col] += w[(ic, oc_local, *tap)]
    return mat


def _top(mat: np.ndarray) -> float:
    return float(np.linalg.svd(mat, compute_uv=False)[0])


# (weight shape, input size, stride, padding, dilation, padding_mode, groups)
CONV_CASES = [
    ((3, 2, 3), (7,), 1, 1, 1, "zeros", 1),
    ((2, 3, 4), (9,), 2, 1, 1, "zeros", 1),
    ((4, 1, 3), (6,), 1, 2, 2, "zeros", 2),
    ((3, 2, 3), (6,), 1, 1, 1, "circular", 1),
    ((2, 2, 3), (5,), 2, 2, 1, "reflect", 1),
    ((2, 2, 3, 3), (5, 4), 1, 1, 1, "zeros", 1),
    ((3, 2, 4, 4), (6, 6), 2, 1, 1, "zeros", 1),
    ((2, 3, 3, 2), (5, 6), (2, 1), (0, 1), 1, "zeros", 1),
    ((2, 2, 3, 3), (5, 5), 1, 1, 1, "circular", 1),
    ((4, 2, 3, 3), (4, 5), 1, 2, (2, 1), "circular", 2),
    ((2, 2, 3, 3), (5, 5), 2, 1, 1, "replicate", 1),
    ((2, 2, 2, 3), (4, 5), 1, "same", 1, "zeros", 1),
    ((2, 1, 2, 2, 2), (3, 3, 4), 1, 1, 1, "zeros", 1),
]


def _case(shape, size, stride, padding, dilation, mode, groups, seed=0):
    w = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=DT)
    geom = conv_geometry(shape, size, stride, padding, dilation, mode, groups=groups)
    oracle = oracle_conv_matrix(w.numpy(), geom.input_size, geom.stride, geom.padding, geom.dilation, mode, groups)
    return w, geom, oracle


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: f"{len(c[0]) - 2}d-{c[5]}-s{c[2]}-p{c[3]}")
def test_conv_apply_and_adjoint_match_the_oracle_matrix(case):
    w, geom, oracle = _case(*case)
    dense = conv_operator_matrix(w, geom).numpy()
    np.testing.assert_allclose(dense, oracle, atol=1e-12)
    n_out = oracle.shape[0]
    basis = torch.eye(n_out, dtype=DT).reshape(n_out, *geom.output_shape[1:])
    adjoint_rows = conv_adjoint(w, basis, geom).reshape(n_out, -1).numpy()  # row j: A^T e_j
    np.testing.assert_allclose(adjoint_rows.T, oracle.T, atol=1e-12)


TRANSPOSED_CASES = [  # (weight shape, input size, stride, padding, dilation, output_padding, groups)
    ((3, 2, 3), (5,), 2, 1, 1, 1, 1),
    ((2, 3, 4, 4), (3, 3), 2, 1, 1, 0, 1),
    ((2, 2, 3, 3), (3, 4), 2, 1, 1, (1, 0), 1),
    ((4, 1, 3, 3), (3, 3), 1, 0, 2, 1, 2),
    ((2, 2, 3, 3), (4, 4), 1, 1, 1, 0, 1),
]


def _all_geometries():
    for shape, size, stride, padding, dilation, mode, groups in CONV_CASES:
        yield conv_geometry(shape, size, stride, padding, dilation, mode, groups=groups)
    for shape, size, stride, padding, dilation, output_padding, groups in TRANSPOSED_CASES:
        yield conv_geometry(shape, size, stride, padding, dilation, transposed=True, output_padding=output_padding,
                            groups=groups)


@pytest.mark.parametrize("geom", list(_all_geometries()), ids=lambda g: f"{g.ndim}d-{g.padding_mode}-t{g.transposed}")
def test_kernel_gradient_is_the_autograd_gradient_of_the_bilinear_form(geom):
    gen = torch.Generator().manual_seed(5)
    w = torch.randn(geom.weight_shape, generator=gen, dtype=DT, requires_grad=True)
    u = torch.randn(geom.output_shape, generator=gen, dtype=DT)
    v = torch.randn(geom.input_shape, generator=gen, dtype=DT)
    (expected,) = torch.autograd.grad((u * conv_apply(w, v, geom)).sum(), w)
    torch.testing.assert_close(kernel_gradient(u, v, geom), expected)


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: f"{len(c[0]) - 2}d-{c[5]}-s{c[2]}-p{c[3]}")
def test_conv_operator_norm_matches_the_oracle_for_every_method(case):
    w, geom, oracle = _case(*case)
    expected = _top(oracle)
    shape, size, stride, padding, dilation, mode, groups = case
    methods = ["auto", "lanczos", "power", "dense"] + (["fft"] if geom.fft_diagonalizable else [])
    for method in methods:
        got = conv_operator_norm(w, size, stride, padding, dilation, mode, groups=groups, method=method)
        assert got.dtype == DT and got.ndim == 0
        assert float(got) == pytest.approx(expected, rel=1e-6), method
        assert float(got) <= expected * (1 + 1e-12), method  # iterative estimates are lower bounds


@pytest.mark.parametrize("shape,size,stride,padding,dilation,output_padding,groups", TRANSPOSED_CASES)
def test_transposed_conv_operator_matches_the_scatter_oracle(shape, size, stride, padding, dilation,
                                                              output_padding, groups):
    w = torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=DT)
    geom = conv_geometry(shape, size, stride, padding, dilation, transposed=True, output_padding=output_padding,
                         groups=groups)
    oracle = oracle_conv_transpose_matrix(w.numpy(), geom.input_size, geom.stride,
                                          [lo for lo, _ in geom.padding], geom.dilation, geom.output_padding, groups)
    np.testing.assert_allclose(conv_operator_matrix(w, geom).numpy(), oracle, atol=1e-12)
    n_out = oracle.shape[0]
    basis = torch.eye(n_out, dtype=DT).reshape(n_out, *geom.output_shape[1:])
    adjoint_rows = conv_adjoint(w, basis, geom).reshape(n_out, -1).numpy()  # row j: A^T e_j
    np.testing.assert_allclose(adjoint_rows.T, oracle.T, atol=1e-12)
    got = conv_operator_norm(w, size, stride, padding, dilation, transposed=True, output_padding=output_padding,
                             groups=groups)
    assert float(got) == pytest.approx(_top(oracle), rel=1e-6)
    # torch's own layer agrees with the operator
    layer = torch.nn.ConvTranspose2d if len(shape) == 4 else torch.nn.ConvTranspose1d
    module = layer(shape[0], shape[1] * groups, shape[2:], stride, padding, output_padding, groups, False,
                   dilation).double()
    module.weight.data.copy_(w)
    x = torch.randn(geom.input_shape, dtype=DT)
    torch.testing.assert_close(module(x), conv_apply(w, x, conv_geometry_of(module, size)))


@pytest.mark.parametrize("shape,size,dilation,groups", [
    ((3, 2, 3), (7,), 1, 1), ((2, 4, 3, 3), (4, 5), 1, 1), ((4, 2, 3, 3), (5, 5), 2, 2), ((2, 3, 2, 2), (4, 4), 1, 1),
])
def test_fft_gives_all_singular_values_of_circular_convolutions(shape, size, dilation, groups):
    w = torch.randn(shape, generator=torch.Generator().manual_seed(2), dtype=DT)
    geom = conv_geometry(shape, size, 1, "same", dilation, "circular", groups=groups)
    oracle = oracle_conv_matrix(w.numpy(), size, geom.stride, geom.padding, geom.dilation, "circular", groups)
    expected = np.linalg.svd(oracle, compute_uv=False)
    got = circular_singular_values(w, geom).numpy()
    assert got.shape == expected.shape  # every singular value, none missing
    np.testing.assert_allclose(got, expected, atol=1e-10)
    got32 = circular_singular_values(w.float(), geom)
    assert got32.dtype == torch.float32
    np.testing.assert_allclose(got32.numpy(), expected, rtol=1e-4, atol=1e-5)


def test_reshape_norms_match_numpy_svd_of_explicit_reshapes():
    rng = np.random.default_rng(0)
    conv = rng.standard_normal((6, 4, 3, 3))
    fwd, bwd = reshape_norms(torch.from_numpy(conv))
    assert float(fwd) == pytest.approx(_top(conv.reshape(6, 36)), rel=1e-12)
    assert float(bwd) == pytest.approx(_top(conv.transpose(1, 0, 2, 3).reshape(4, 54)), rel=1e-12)
    # ConvTranspose weight (c_in, c_out, k, k): forward reshape has the output channels (dim 1) first
    tconv = rng.standard_normal((5, 3, 4, 4))
    fwd_t, bwd_t = reshape_norms(torch.from_numpy(tconv), transposed=True)
    assert float(fwd_t) == pytest.approx(_top(tconv.transpose(1, 0, 2, 3).reshape(3, 80)), rel=1e-12)
    assert float(bwd_t) == pytest.approx(_top(tconv.reshape(5, 48)), rel=1e-12)
    linear = rng.standard_normal((7, 3))
    lf, lb = reshape_norms(torch.from_numpy(linear))
    assert float(lf) == float(lb) == pytest.approx(_top(linear), rel=1e-12)
    f32, _ = reshape_norms(torch.from_numpy(conv).float(), dtype=torch.float64)
    assert f32.dtype == torch.float64
    assert reshape_weight(torch.zeros(4, 3, 2, 2), 1).shape == (3, 16)


def test_rmt_prediction_formula_and_gaussian_matrices():
    assert rmt_spectral_norm((64, 16, 3, 3), 0.5) == pytest.approx(0.5 * (8 + 12))
    assert rmt_spectral_norm((16, 64, 3, 3), 0.5, transposed=True) == pytest.approx(0.5 * (8 + 12))
    g = torch.Generator().manual_seed(3)
    w = 0.02 * torch.randn(256, 64, 3, 3, generator=g, dtype=DT)
    ratio = float(reshape_norms(w)[0]) / rmt_spectral_norm(w.shape, 0.02)
    assert 0.95 < ratio < 1.02  # Bai-Yin: the edge of the spectrum, slightly below for finite sizes
    with pytest.raises(ValueError, match="std"):
        rmt_spectral_norm((3, 3), 0.0)


@pytest.mark.parametrize("c_in,c_out,k,stride,size", [(3, 8, 3, 1, 8), (8, 8, 4, 2, 8), (4, 6, 5, 2, 9),
                                                      (6, 6, 3, 3, 9), (5, 4, 2, 1, 6)])
def test_operator_norm_lies_between_reshape_norm_and_overlap_bound(c_in, c_out, k, stride, size):
    for seed in range(3):
        w = torch.randn(c_out, c_in, k, k, generator=torch.Generator().manual_seed(seed), dtype=DT)
        sigma_fwd = float(reshape_norms(w)[0])
        sigma_op = float(conv_operator_norm(w, size, stride, k // 2))
        overlap = math.ceil(k / stride)  # sqrt(prod over both dims of ceil(k/stride))
        assert sigma_fwd * (1 - 1e-9) <= sigma_op <= overlap * sigma_fwd


@pytest.mark.parametrize("c_in,c_out,k,stride,reported", [(3, 64, 3, 1, 2.18), (16, 16, 3, 1, 1.53),
                                                           (8, 8, 4, 2, 1.18), (16, 32, 3, 1, 1.60)])
def test_theory_c6_ratios_on_8x8_inputs(c_in, c_out, k, stride, reported):
    ratios = []
    for seed in range(4):
        w = torch.randn(c_out, c_in, k, k, generator=torch.Generator().manual_seed(seed), dtype=DT)
        ratios.append(float(conv_operator_norm(w, 8, stride, 1)) / float(reshape_norms(w)[0]))
    assert float(np.mean(ratios)) == pytest.approx(reported, rel=0.08)


def test_power_iteration_and_lanczos_on_a_known_spectrum():
    values = torch.linspace(1.0, 2.0, 40, dtype=DT)
    q, _ = torch.linalg.qr(torch.randn(40, 40, generator=torch.Generator().manual_seed(4), dtype=DT))
    a = q @ torch.diag(values) @ q.T
    v0 = torch.ones(40, dtype=DT)
    for solver in (power_iteration, lanczos):
        res = solver(lambda x: a @ x, lambda y: a.T @ y, v0, tol=1e-9)
        assert res.converged and float(res.sigma) == pytest.approx(2.0, rel=1e-8)
        assert float(res.sigma) <= 2.0 + 1e-12
        assert torch.allclose(a @ res.v, res.sigma * res.u, atol=1e-3)
    fast = lanczos(lambda x: a @ x, lambda y: a.T @ y, v0, tol=1e-9).iterations
    slow = power_iteration(lambda x: a @ x, lambda y: a.T @ y, v0, tol=1e-9).iterations
    assert fast < slow
    with pytest.warns(RuntimeWarning, match="not settled"):
        power_iteration(lambda x: a @ x, lambda y: a.T @ y, v0, tol=1e-12, max_iter=3)


def test_power_step_updates_buffers_in_place():
    a = torch.diag(torch.tensor([5.0, 2.0, 1.0]))
    u, v = torch.ones(3) / 3**0.5, torch.ones(3) / 3**0.5
    pointers = u.data_ptr(), v.data_ptr()
    power_step_(lambda x: a @ x, lambda y: a.T @ y, u, v, n_iterations=40)
    assert (u.data_ptr(), v.data_ptr()) == pointers
    assert float(u @ (a @ v)) == pytest.approx(5.0, rel=1e-5)


def test_geometry_of_modules_and_output_sizes():
    assert conv_geometry_of(torch.nn.Conv2d(3, 4, 4, 2, 1), 32).output_shape == (1, 4, 16, 16)
    assert conv_geometry_of(torch.nn.ConvTranspose2d(4, 2, 4, 2, 1), 16).output_shape == (1, 2, 32, 32)
    assert conv_geometry_of(torch.nn.Conv1d(2, 2, 4, padding="same"), 10).padding == ((1, 2),)
    assert conv_geometry_of(torch.nn.Conv3d(1, 2, 3, padding=1, padding_mode="circular"), 4).fft_diagonalizable


@pytest.mark.parametrize("kwargs,match", [
    (dict(padding_mode="mirror"), "valid choices: 'zeros', 'circular', 'reflect', 'replicate'"),
    (dict(padding_mode="circular", transposed=True), "transposed"),
    (dict(stride=0), "stride"),
    (dict(padding=-1), "padding"),
    (dict(padding="full"), "valid choices: 'same', 'valid'"),
    (dict(padding="same", stride=2), "stride 1"),
    (dict(output_padding=1), "transposed"),
    (dict(output_padding=2, stride=2, transposed=True), "output_padding"),
    (dict(method="svd"), "valid choices: 'auto', 'fft', 'lanczos', 'power', 'dense'"),
    (dict(method="fft"), "circular"),
    (dict(padding=5, padding_mode="reflect"), "too large"),
    (dict(groups=3), "groups"),
])
def test_bad_input_is_a_one_line_value_error(kwargs, match):
    w = torch.randn(4, 2, 3, 3)
    with pytest.raises(ValueError, match=match):
        conv_operator_norm(w, 5, **kwargs)


def test_bad_shapes_are_value_errors():
    with pytest.raises(ValueError, match="too small"):
        conv_operator_norm(torch.randn(4, 2, 5, 5), 3)
    with pytest.raises(ValueError, match="3, 4 or 5 dimensions"):
        conv_operator_norm(torch.randn(4, 2), 3)
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        reshape_norms(torch.randn(4))
    with pytest.raises(ValueError, match="input_size"):
        conv_operator_norm(torch.randn(4, 2, 3, 3), (5, 5, 5))


def test_float64_on_request_and_weight_device():
    w = torch.randn(4, 3, 3, 3)
    got = conv_operator_norm(w, 6, 1, 1, dtype=DT)
    assert got.dtype == DT and got.device == w.device
    assert float(got) == pytest.approx(float(conv_operator_norm(w.double(), 6, 1, 1, method="dense")), rel=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        conv_operator_norm(w, 6, 1, 1)  # float32 converges to its default tolerance without warning
