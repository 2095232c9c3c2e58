"""Sample-quality metrics: formulas against independent oracles, extractors, caching, fallback, evaluation."""
from __future__ import annotations

import functools
import logging
import math
import shutil
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import scipy.linalg
import torch
from scipy.stats import entropy
from torch import nn

from gradscope.data import load_dataset
from gradscope.metrics import (
    InceptionExtractor,
    InceptionUnavailable,
    SampleQuality,
    clear_extractor_cache,
    evaluate_generator,
    frechet_distance,
    generate_samples,
    gaussian_statistics,
    get_extractor,
    inception_score,
    kernel_inception_distance,
    load_digits_extractor,
    mode_metrics,
    reference_statistics,
    train_digits_classifier,
)
from gradscope.metrics import inception as inception_module
from gradscope.metrics.digits import VERSION


# --- Fréchet distance -------------------------------------------------------------------------

def _random_covariance(rng: np.random.Generator, d: int, rank: int | None = None) -> np.ndarray:
    a = rng.normal(size=(d, rank or d))
    return a @ a.T / (rank or d)


def _scipy_frechet(mu1, s1, mu2, s2) -> float:
    """The textbook formula with scipy's general matrix square root, float64."""
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean).real)


def test_frechet_distance_matches_closed_form_for_diagonal_covariances():
    rng = np.random.default_rng(0)
    a, b = rng.uniform(0.1, 3.0, size=6), rng.uniform(0.1, 3.0, size=6)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-12)


def test_frechet_distance_matches_scipy_on_full_and_singular_covariances():
    rng = np.random.default_rng(1)
    for rank in (None, 3):  # full rank, then rank 3 of 12 (fewer samples than dimensions)
        s1, s2 = _random_covariance(rng, 12, rank), _random_covariance(rng, 12)
        mu1, mu2 = rng.normal(size=12), rng.normal(size=12)
        ours = frechet_distance(mu1, s1, mu2, s2)
        assert ours == pytest.approx(_scipy_frechet(mu1, s1, mu2, s2), rel=1e-8, abs=1e-8)
        assert ours == pytest.approx(frechet_distance(mu2, s2, mu1, s1), rel=1e-9)


def test_frechet_distance_accepts_torch_and_rejects_bad_shapes():
    s = torch.eye(3, dtype=torch.float64)
    assert frechet_distance(torch.zeros(3), s, torch.ones(3), 4 * s) == pytest.approx(3 + 3 * 1.0)
    with pytest.raises(ValueError, match="shapes do not match"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(np.array([np.nan, 0.0]), np.eye(2), np.zeros(2), np.eye(2))


def test_fid_of_a_feature_set_with_itself_is_zero_and_grows_with_a_shift():
    rng = np.random.default_rng(2)
    features = rng.normal(size=(500, 64)) @ rng.normal(size=(64, 64))
    mu, sigma = gaussian_statistics(features)
    assert np.allclose(mu, features.mean(axis=0)) and np.allclose(sigma, np.cov(features, rowvar=False))
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-8 * np.trace(sigma)
    mu2, sigma2 = gaussian_statistics(features + 0.5)
    assert frechet_distance(mu, sigma, mu2, sigma2) == pytest.approx(64 * 0.25, rel=1e-6)


# --- Inception Score ---------------------------------------------------------------------------

def test_inception_score_extremes():
    for k in (2, 7, 10):
        confident = np.eye(k)[np.arange(k * 30) % k]
        mean, std = inception_score(confident, splits=10)
        assert mean == pytest.approx(k, rel=1e-12) and std == pytest.approx(0.0, abs=1e-12)
    identical = np.tile([0.1, 0.2, 0.7], (50, 1))
    assert inception_score(identical, splits=5) == pytest.approx((1.0, 0.0), abs=1e-12)


def test_inception_score_matches_a_direct_kl_computation():
    rng = np.random.default_rng(3)
    probs = rng.dirichlet(np.full(5, 0.3), size=103)
    scores = []
    for i in range(4):
        chunk = probs[i * 103 // 4:(i + 1) * 103 // 4]
        marginal = chunk.mean(axis=0)
        scores.append(math.exp(np.mean([entropy(p, marginal) for p in chunk])))
    assert inception_score(probs, splits=4) == pytest.approx((np.mean(scores), np.std(scores)), rel=1e-10)


def test_inception_score_validates_its_input():
    with pytest.raises(ValueError, match="probability vectors"):
        inception_score(np.full((20, 3), 0.5))
    with pytest.raises(ValueError, match="at least splits=10"):
        inception_score(np.eye(3))


# --- Kernel Inception Distance ------------------------------------------------------------------

def _loop_unbiased_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    d = x.shape[1]
    k = lambda a, b: (a @ b / d + 1.0) ** 3  # noqa: E731
    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def test_kid_matches_an_explicit_double_loop():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(15, 4)), rng.normal(0.3, 1.2, size=(15, 4))
    # A subset of all rows is a permutation, which the estimator does not see: one exact value.
    mean, std = kernel_inception_distance(x, y, subsets=3, subset_size=15)
    assert mean == pytest.approx(_loop_unbiased_mmd2(x, y), rel=1e-10)
    assert std == pytest.approx(0.0, abs=1e-12)


def test_kid_is_unbiased_on_identical_distributions_and_positive_on_different_ones():
    rng = np.random.default_rng(5)
    estimates = [kernel_inception_distance(rng.normal(size=(40, 8)), rng.normal(size=(40, 8)), subsets=1,
                                           subset_size=40)[0] for _ in range(300)]
    estimates = np.array(estimates)
    assert (estimates < 0).sum() > 60 and (estimates > 0).sum() > 60
    assert abs(estimates.mean()) < 3 * estimates.std() / math.sqrt(len(estimates))
    x, y = rng.normal(size=(400, 8)), rng.normal(0.5, 1.0, size=(400, 8))
    mean, std = kernel_inception_distance(x, y, subsets=20, subset_size=100)
    assert mean > 5 * std > 0


def test_kid_runs_on_torch_tensors_and_validates():
    x = torch.randn(30, 5, generator=torch.Generator().manual_seed(0))
    assert kernel_inception_distance(x, x.numpy(), subsets=2, subset_size=30)[0] == pytest.approx(
        _loop_unbiased_mmd2(x.double().numpy(), x.double().numpy()), rel=1e-9)
    with pytest.raises(ValueError, match="same feature dimension"):
        kernel_inception_distance(np.zeros((5, 2)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="subsets must be an integer"):
        kernel_inception_distance(np.zeros((5, 2)), np.zeros((5, 2)), subsets=0)


# --- Mode metrics -------------------------------------------------------------------------------

RING = np.array([[math.cos(2 * math.pi * k / 8), math.sin(2 * math.pi * k / 8)] for k in range(8)]) * 2.0
STD = 0.02


def test_mode_metrics_all_modes_evenly():
    rng = np.random.default_rng(6)
    samples = np.repeat(RING, 50, axis=0) + rng.normal(scale=STD / 2, size=(400, 2))
    assert mode_metrics(samples, RING, STD) == {"modes_covered": 8.0, "high_quality_fraction": 1.0,
                                                "kl_uniform": pytest.approx(0.0, abs=1e-12)}


def test_mode_metrics_half_the_modes_and_off_mode_samples():
    on_modes = np.repeat(RING[::2], 10, axis=0)  # 4 of 8 modes, 10 samples each
    off_modes = np.array([[0.0, 0.0], [5.0, 5.0], [2.0 + 3.5 * STD, 0.0]])  # the last just outside 3 std
    result = mode_metrics(np.vstack([on_modes, off_modes, [[2.0 + 2.5 * STD, 0.0]]]), RING, STD)
    assert result["modes_covered"] == 4.0
    assert result["high_quality_fraction"] == pytest.approx(41 / 44)
    p = np.array([11, 10, 10, 10]) / 41
    assert result["kl_uniform"] == pytest.approx(float(np.sum(p * np.log(8 * p))), rel=1e-12)
    assert result["kl_uniform"] == pytest.approx(math.log(2), abs=0.01)


def test_mode_metrics_min_count_and_no_high_quality_sample():
    samples = np.vstack([np.repeat(RING[:1], 5, axis=0), RING[1:2]])
    assert mode_metrics(samples, RING, STD)["modes_covered"] == 2.0
    assert mode_metrics(samples, RING, STD, min_count=2)["modes_covered"] == 1.0
    nothing = mode_metrics(np.full((10, 2), 9.0), RING, STD)
    assert nothing["modes_covered"] == 0.0 and nothing["high_quality_fraction"] == 0.0
    assert math.isnan(nothing["kl_uniform"])
    with pytest.raises(ValueError, match=r"shape \(N, 2\)"):
        mode_metrics(np.zeros((4, 3)), RING, STD)
    with pytest.raises(ValueError, match="std must be"):
        mode_metrics(np.zeros((4, 2)), RING, 0.0)


# --- The digits classifier and its cache -----------------------------------------------------------

@pytest.fixture(scope="module")
def digits_cache(tmp_path_factory):
    """A cache directory holding the digits classifier, trained once for this module."""
    root = tmp_path_factory.mktemp("gradscope-cache")
    extractor = load_digits_extractor(cache_dir=root)
    assert not extractor.loaded_from_cache
    return root


def test_digits_classifier_is_accurate_and_cached(digits_cache):
    extractor = load_digits_extractor(cache_dir=digits_cache)
    assert extractor.loaded_from_cache
    assert extractor.accuracy > 0.95
    assert extractor.name.startswith(f"digits-cnn-{VERSION}-") and extractor.family == "digits"
    # The cached accuracy is real: re-measure it on the 32x32 digits that training runs use.
    dataset = load_dataset("digits")
    _, logits = extractor.features(dataset.data)
    assert float((logits.argmax(dim=1) == dataset.labels).float().mean()) > 0.95


def test_digits_training_is_reproducible_and_leaves_the_global_rng_alone():
    state = torch.get_rng_state()
    first, _ = train_digits_classifier(seed=3, epochs=1)
    assert torch.equal(torch.get_rng_state(), state)
    second, _ = train_digits_classifier(seed=3, epochs=1)
    other, _ = train_digits_classifier(seed=4, epochs=1)
    for key, value in first.state_dict().items():
        assert torch.equal(value, second.state_dict()[key])
    assert not torch.equal(first.state_dict()["out.weight"], other.state_dict()["out.weight"])


def test_cache_directory_comes_from_the_environment(digits_cache, tmp_path, monkeypatch):
    shutil.copytree(digits_cache / "metrics", tmp_path / "metrics")
    monkeypatch.setenv("GRADSCOPE_CACHE", str(tmp_path))
    assert load_digits_extractor().loaded_from_cache
    assert SampleQuality("digits").extractor.loaded_from_cache  # a name resolves through the same cache


def test_cache_and_data_directories_share_one_root(tmp_path, monkeypatch):
    from gradscope.data import default_data_dir
    from gradscope.metrics import default_cache_dir

    monkeypatch.delenv("GRADSCOPE_CACHE", raising=False)
    monkeypatch.delenv("GRADSCOPE_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "gradscope"
    assert default_data_dir() == default_cache_dir() / "data"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "gradscope"
    monkeypatch.setenv("GRADSCOPE_CACHE", str(tmp_path / "mine"))
    assert default_cache_dir() == tmp_path / "mine"
    assert default_cache_dir("~/given") == tmp_path / "home" / "given"


def test_corrupt_cache_entry_is_retrained(tmp_path, monkeypatch):
    path = tmp_path / "metrics" / f"digits-classifier-{VERSION}-seed0.pt"
    path.parent.mkdir()
    path.write_bytes(b"not a torch file")
    calls = []

    def fake_training(seed, source="digits"):
        calls.append(seed)
        return train_digits_classifier(seed, epochs=1, source=source)

    monkeypatch.setattr("gradscope.metrics.digits.train_digits_classifier", fake_training)
    extractor = load_digits_extractor(cache_dir=tmp_path)
    assert calls == [0] and not extractor.loaded_from_cache
    assert load_digits_extractor(cache_dir=tmp_path).loaded_from_cache


def test_reference_statistics_are_cached_per_count(digits_cache):
    extractor = load_digits_extractor(cache_dir=digits_cache)
    dataset = load_dataset("digits", image_size=16)
    first = reference_statistics(dataset, extractor, n_samples=300, cache_dir=digits_cache)
    again = reference_statistics(dataset, extractor, n_samples=300, cache_dir=digits_cache)
    assert not first.from_cache and again.from_cache and again.count == 300
    assert np.array_equal(first.mu, again.mu) and np.array_equal(first.sigma, again.sigma)
    assert len(list((digits_cache / "reference").glob("digits-16px-digits-cnn-*-n300.pt"))) == 1
    whole = reference_statistics(dataset, extractor, n_samples=10_000, cache_dir=digits_cache)
    assert whole.count == len(dataset) and not whole.from_cache


# --- SampleQuality ------------------------------------------------------------------------------

def test_sample_quality_of_real_data_against_itself(digits_cache):
    extractor = load_digits_extractor(cache_dir=digits_cache)
    images = load_dataset("digits").data[:400]
    quality = SampleQuality(extractor, kid_subsets=10, kid_subset_size=100)
    quality.update(images[:200], real=True)
    quality.update(images[200:], real=True)
    quality.update(images, real=False)
    scores = quality.compute()
    assert set(scores) == {"digits_fid", "digits_is_mean", "digits_is_std", "digits_kid_mean", "digits_kid_std"}
    assert abs(scores["digits_fid"]) < 1e-6 * np.trace(quality.reference().sigma)
    assert scores["digits_is_mean"] > 8.0  # confident, nearly balanced predictions over 10 digits
    noise = torch.rand(400, 1, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    quality.reset()
    quality.update(noise, real=False)
    worse = quality.compute()
    assert worse["digits_fid"] > 100 * max(scores["digits_fid"], 1e-3)
    assert worse["digits_kid_mean"] > 10 * worse["digits_kid_std"]
    quality.reset(keep_real=False)
    quality.update(noise, real=False)
    with pytest.raises(ValueError, match="no real data"):
        quality.compute()


def test_sample_quality_validates(digits_cache):
    extractor = load_digits_extractor(cache_dir=digits_cache)
    with pytest.raises(ValueError, match="unknown metric 'lpips'"):
        SampleQuality(extractor, metrics=("fid", "lpips"))
    with pytest.raises(ValueError, match="no generated data"):
        SampleQuality(extractor, metrics=("is",)).compute()
    quality = SampleQuality(extractor, metrics=("fid",))
    stats = reference_statistics(load_dataset("digits", image_size=16), extractor, n_samples=50,
                                 cache_dir=digits_cache)
    stats.extractor_name = "someone-else"
    with pytest.raises(ValueError, match="from extractor 'someone-else'"):
        quality.set_reference(stats)


# --- evaluate_generator ----------------------------------------------------------------------------

class _Replay(nn.Module):
    """A 'generator' that returns dataset rows chosen by its latent: a perfect memoriser."""

    def __init__(self, data: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("data", data)
        self.scale = nn.Parameter(torch.ones(()))
        self.z_dim = 1

    def sample_latent(self, n, device=None, generator=None):
        return torch.rand(n, 1, generator=generator).to(device)

    def forward(self, z):
        index = (z[:, 0] * self.data.shape[0]).long().clamp(max=self.data.shape[0] - 1)
        return self.data[index] * self.scale


class _Mixture(nn.Module):
    """Samples an isotropic Gaussian mixture exactly: mode from z[0], offset from z[1:]."""

    def __init__(self, centers: torch.Tensor, std: float) -> None:
        super().__init__()
        self.register_buffer("centers", centers)
        self.std = std
        self.z_dim = 3
        self.dummy = nn.Linear(1, 1)

    def sample_latent(self, n, device=None, generator=None):
        return torch.randn(n, 3, generator=generator).to(device)

    def forward(self, z):
        mode = (torch.special.ndtr(z[:, 0]) * len(self.centers)).long().clamp(max=len(self.centers) - 1)
        return self.centers[mode] + self.std * z[:, 1:]


def test_evaluate_generator_on_a_2d_mixture():
    dataset = load_dataset("grid25")
    generator = _Mixture(dataset.centers, dataset.std)
    scores = evaluate_generator(generator, dataset, n_samples=5000, seed=1)
    assert scores["modes_covered"] == 25.0
    # P(|N(0, I_2)| <= 3) = 1 - exp(-4.5) = 0.9889 for an exact sample of the mixture.
    assert scores["high_quality_fraction"] == pytest.approx(1 - math.exp(-4.5), abs=0.01)
    assert scores["kl_uniform"] < 0.02


def test_evaluate_generator_on_digits_images(digits_cache):
    dataset = load_dataset("digits")
    real = _Replay(dataset.data).train()
    rng_state = torch.get_rng_state()
    scores = evaluate_generator(real, dataset, n_samples=600, batch_size=128, cache_dir=digits_cache,
                                kid_subsets=10, kid_subset_size=200)
    assert torch.equal(torch.get_rng_state(), rng_state) and real.training
    assert scores == evaluate_generator(real, dataset, n_samples=600, batch_size=256, cache_dir=digits_cache,
                                        kid_subsets=10, kid_subset_size=200)
    blank = _Replay(torch.full((1, 1, 32, 32), -1.0)).eval()
    worse = evaluate_generator(blank, dataset, n_samples=600, cache_dir=digits_cache, kid_subsets=10,
                               kid_subset_size=200)
    assert not blank.training
    assert scores["digits_fid"] < 0.05 * worse["digits_fid"]
    assert scores["digits_kid_mean"] < 0.05 * worse["digits_kid_mean"]
    assert scores["digits_is_mean"] > 8.0 and worse["digits_is_mean"] == pytest.approx(1.0, abs=1e-6)


def test_evaluate_generator_validates(digits_cache):
    dataset = load_dataset("digits")
    generator = _Replay(dataset.data[:5])
    with pytest.raises(ValueError, match="unknown feature extractor 'clip'"):
        evaluate_generator(generator, dataset, extractor="clip")
    with pytest.raises(ValueError, match="unknown dataset kind"):
        evaluate_generator(generator, object())
    with pytest.raises(ValueError, match="n_samples must be an integer >= 1"):
        generate_samples(generator, 0)  # checked at the call, not at the first batch


# --- Inception: fallback and library paths ------------------------------------------------------------

@pytest.fixture
def fresh_extractors():
    clear_extractor_cache()
    yield
    clear_extractor_cache()


def test_missing_library_falls_back_with_one_warning(digits_cache, monkeypatch, caplog, fresh_extractors):
    for name in ("torch_fidelity", inception_module.MODULE):  # as if not installed
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(InceptionUnavailable, match="not installed"):
        inception_module.torch_fidelity_inception_class()
    with caplog.at_level(logging.WARNING, logger="gradscope.metrics"):
        first = get_extractor("inception", cache_dir=digits_cache)
        second = get_extractor("inception", cache_dir=digits_cache)
    assert first is second and first.family == "digits"
    warnings = [r.getMessage() for r in caplog.records if r.name == "gradscope.metrics"]
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert "torch-fidelity is not installed" in warnings[0] and "not comparable" in warnings[0]


def test_auto_uses_digits_quietly_for_digits_and_warns_elsewhere(digits_cache, tmp_path, caplog,
                                                                  fresh_extractors):
    with caplog.at_level(logging.WARNING, logger="gradscope.metrics"):
        assert get_extractor("auto", cache_dir=digits_cache, dataset_name="digits").family == "digits"
        assert not caplog.records
        fallback = get_extractor("auto", cache_dir=digits_cache, dataset_name="cifar10",
                                 inception_weights=tmp_path / "missing.pth")
    assert fallback.family == "digits"
    assert len(caplog.records) == 1 and "Inception metrics unavailable" in caplog.records[0].getMessage()


class _Payload:
    """Stands for any pickled object that is not a tensor."""


def test_weights_file_must_be_a_plain_state_dict(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"x": torch.zeros(1), "code": _Payload()}, path)  # unpickling it would import and run code
    with pytest.raises(InceptionUnavailable, match="not a plain weights file"):
        inception_module.inception_weights_file(path, "http://127.0.0.1/none.pth", download=False)
    with pytest.raises(InceptionUnavailable, match="does not exist"):
        inception_module.inception_weights_file(tmp_path / "nope.pth", "http://127.0.0.1/none.pth", download=False)


@pytest.fixture
def local_server(tmp_path):
    """An HTTP server on 127.0.0.1 serving ``tmp_path / "served"``."""
    folder = tmp_path / "served"
    folder.mkdir()
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(folder))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_default_weights_are_downloaded_into_torch_hub_and_checked(local_server, tmp_path, monkeypatch):
    folder, base = local_server
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    weights = {"fc.weight": torch.randn(3, 2)}
    torch.save(weights, folder / "weights-inception-test.pth")
    with pytest.raises(InceptionUnavailable, match="pass --inception-weights"):
        inception_module.inception_weights_file(None, f"{base}/weights-inception-test.pth", download=False)
    path = inception_module.inception_weights_file(None, f"{base}/weights-inception-test.pth", download=True)
    assert path == tmp_path / "torch-home" / "hub" / "checkpoints" / "weights-inception-test.pth"
    assert torch.equal(torch.load(path, weights_only=True)["fc.weight"], weights["fc.weight"])
    (folder / "weights-inception-test.pth").unlink()  # now found in the hub cache, not fetched again
    assert inception_module.inception_weights_file(None, f"{base}/weights-inception-test.pth", download=True) == path
    with pytest.raises(InceptionUnavailable, match=r"could not be downloaded \(HTTPError"):
        inception_module.inception_weights_file(None, f"{base}/missing.pth", download=True)


def _library_inception_class():
    try:
        return inception_module.torch_fidelity_inception_class()[0]
    except InceptionUnavailable as exc:
        pytest.skip(f"torch-fidelity's Inception cannot be loaded here: {exc}")


@pytest.fixture(scope="module")
def random_inception_weights(tmp_path_factory):
    """A state dict of torch-fidelity's Inception-v3 at its random initialisation (nothing downloaded)."""
    cls = _library_inception_class()
    folder = tmp_path_factory.mktemp("inception")
    empty = folder / "empty.pth"
    torch.save({}, empty)
    with pytest.MonkeyPatch.context() as patch, torch.random.fork_rng(devices=[]):
        patch.setattr(cls, "load_state_dict", lambda self, state_dict, strict=True: None)
        torch.manual_seed(0)
        network = cls("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(empty))
    path = folder / "random-inception.pth"
    torch.save(network.state_dict(), path)
    return path


def test_inception_extractor_runs_the_library_network(random_inception_weights):
    extractor = InceptionExtractor(random_inception_weights, "cpu")
    assert extractor.name.startswith("inception-v3-torch-fidelity-") and extractor.family == "inception"
    images = torch.rand(3, 1, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    pool, logits = extractor.features(images)
    assert pool.shape == (3, 2048) and logits.shape == (3, 1008)
    pixels = ((images + 1) * 127.5).round().to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    direct_pool, direct_logits = extractor.network(pixels)
    assert torch.equal(pool, direct_pool) and torch.equal(logits, direct_logits)
    assert not torch.allclose(pool[0], pool[1])


def test_evaluate_generator_through_inception_end_to_end(random_inception_weights, digits_cache, caplog,
                                                          fresh_extractors):
    dataset = load_dataset("digits", image_size=16)
    dataset.data = dataset.data[:3]  # a 3-image 'dataset' keeps Inception on CPU quick
    with caplog.at_level(logging.WARNING, logger="gradscope.metrics"):
        scores = evaluate_generator(_Replay(dataset.data), dataset, n_samples=4, extractor="inception",
                                    inception_weights=random_inception_weights, cache_dir=digits_cache,
                                    metrics=("kid",), kid_subsets=5)  # FID at d=2048 costs seconds of eigh
    assert not caplog.records
    assert set(scores) == {"inception_kid_mean", "inception_kid_std"}
    assert all(math.isfinite(v) for v in scores.values())
    assert list((digits_cache / "reference").glob("digits-16px-inception-v3-torch-fidelity-*-n3.pt"))
