"""`gradscope demo`: the normalization family's spectral norms on the SNDCGAN discriminator."""
from __future__ import annotations

import io
import math
from contextlib import redirect_stderr, redirect_stdout

import numpy as np
import pandas as pd
import pytest
import torch

from gradscope.cli import main
from gradscope.demo import DEFAULT_SCALE, format_table, spectral_table
from gradscope.init import init_
from gradscope.models import SNDCGANDiscriminator

LAYERS = [f"features.conv{i}" for i in range(1, 8)] + ["linear"]


def _run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(["demo", *argv])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def table32() -> pd.DataFrame:
    code, out, _ = _run("--norms", "none,sn,bssn,strict", "--warmup", "30", "--format", "csv")
    assert code == 0
    return pd.read_csv(io.StringIO(out))


def _rows(table: pd.DataFrame, norm: str) -> pd.DataFrame:
    rows = table[table["norm"] == norm].set_index("layer")
    assert list(rows.index) == LAYERS
    return rows


def test_strict_makes_every_operator_norm_one(table32: pd.DataFrame) -> None:
    strict = _rows(table32, "strict")
    np.testing.assert_allclose(strict["sigma_op"], 1.0, rtol=5e-3)
    # ... which leaves the reshape norms below 1: strict shrinks layers more than sn (C6)
    assert (strict["sigma_fwd"].iloc[:-1] < 0.95).all()


def test_sn_bounds_reshapes_not_operators(table32: pd.DataFrame) -> None:
    sn = _rows(table32, "sn")
    # One power step per forward from 15 initial ones: the reshape norm is close to 1, not exactly.
    np.testing.assert_allclose(sn["sigma_fwd"], 1.0, rtol=0.03)
    assert sn.loc["linear", "sigma_op"] == pytest.approx(1.0, rel=1e-3)
    convs = sn.drop(index="linear")
    assert (convs["sigma_op"] > 1.1).all()
    overlap = np.array([3, 2, 3, 2, 3, 2, 3])  # ceil(kernel / stride)
    assert (convs["sigma_op"] / convs["sigma_fwd"] <= overlap * (1 + 1e-3)).all()
    assert convs["sigma_op"].prod() > 5


def test_bssn_balances_both_reshapes_at_the_scale(table32: pd.DataFrame) -> None:
    bssn, none = _rows(table32, "bssn"), _rows(table32, "none")
    np.testing.assert_allclose((bssn["sigma_fwd"] + bssn["sigma_bwd"]) / 2, DEFAULT_SCALE, rtol=0.03)
    np.testing.assert_allclose(bssn["sigma_used"], (none["sigma_fwd"] + none["sigma_bwd"]) / 2, rtol=0.03)


def test_sn_variance_follows_random_matrix_prediction(table32: pd.DataFrame) -> None:
    """C5: fan_in * Var(W / sigma_fwd) ~ (1 + sqrt(m / n))^-2 for the m x n forward reshape."""
    sn = _rows(table32, "sn")
    for name, (m, n) in {"features.conv5": (256, 128 * 9), "features.conv6": (256, 256 * 16),
                         "features.conv7": (512, 256 * 9)}.items():
        assert sn.loc[name, "fanin_var"] == pytest.approx((1 + math.sqrt(m / n)) ** -2, rel=0.05)
    none = _rows(table32, "none")
    # dcgan init: fan_in * 0.02^2 * Var(truncated standard normal at +-2)
    assert none.loc["features.conv7", "fanin_var"] == pytest.approx(256 * 9 * 4e-4 * 0.77374, rel=0.02)


def _dense_conv_matrix(weight: torch.Tensor, size: int, stride: int, padding: int = 1) -> torch.Tensor:
    """The convolution's matrix built tap by tap from its definition (independent of torch's conv)."""
    c_out, c_in, k, _ = weight.shape
    out = (size + 2 * padding - k) // stride + 1
    matrix = torch.zeros(c_out, out, out, c_in, size, size, dtype=weight.dtype)
    for i in range(out):
        for j in range(out):
            for a in range(k):
                for b in range(k):
                    y, x = i * stride + a - padding, j * stride + b - padding
                    if 0 <= y < size and 0 <= x < size:
                        matrix[:, i, j, :, y, x] += weight[:, :, a, b]
    return matrix.reshape(c_out * out * out, c_in * size * size)


def _top_singular_value(matrix: torch.Tensor) -> float:
    gram = matrix @ matrix.T if matrix.shape[0] <= matrix.shape[1] else matrix.T @ matrix
    return torch.linalg.eigvalsh(gram)[-1].sqrt().item()


def test_none_matches_dense_oracles_at_16px() -> None:
    table = spectral_table(["none"], image_size=16, warmup=0, seed=3)
    rows = table.set_index("layer")
    model = SNDCGANDiscriminator(image_size=16)
    init_(model, "dcgan", generator=torch.Generator().manual_seed(3))
    sizes = {"features.conv5": 4, "features.conv6": 4, "features.conv7": 2}
    for name, module in model.named_modules():
        if name not in LAYERS:
            continue
        w = module.weight.detach().double()
        fwd = _top_singular_value(w.flatten(1))
        bwd = _top_singular_value(w.transpose(0, 1).flatten(1))
        assert rows.loc[name, "sigma_fwd"] == pytest.approx(fwd, rel=1e-6)
        assert rows.loc[name, "sigma_bwd"] == pytest.approx(bwd, rel=1e-6)
        if name in sizes:
            dense = _dense_conv_matrix(w, sizes[name], module.stride[0])
            assert rows.loc[name, "sigma_op"] == pytest.approx(_top_singular_value(dense), rel=1e-3)


def test_text_format() -> None:
    code, out, _ = _run("--image-size", "8", "--norms", "sn,strict", "--warmup", "2")
    assert code == 0
    assert "== sn ==" in out and "== strict ==" in out
    assert out.count("product of sigma_op (Lipschitz bound of D)") == 2
    assert "features.conv7" in out and "3x3/1 256->512" in out
    table = spectral_table(["sn"], image_size=8, warmup=2)
    assert format_table(table).splitlines()[0] == "== sn =="


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--norms", "sn,bogus"], "unknown norm 'bogus'"),
        (["--norms", ","], "give at least one norm"),
        (["--image-size", "30"], "divisible by 8"),
        (["--scale", "0"], "scale must be a finite number > 0"),
        (["--warmup", "-1"], "warmup must be an integer >= 0"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(argv: list[str], message: str) -> None:
    code, out, err = _run(*argv)
    assert code == 2 and out == ""
    assert message in err and len(err.strip().splitlines()) == 1
