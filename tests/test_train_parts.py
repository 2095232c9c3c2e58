"""The trainer's parts against independent oracles: losses, penalty, data order, RNG, checkpoints, pictures."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn

from gradscope.train.checkpoint import find_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint
from gradscope.train.losses import discriminator_loss, generator_loss, gradient_penalty, interpolate
from gradscope.train.networks import EMA, frozen
from gradscope.train.rng import capture_rng_state, restore_rng_state
from gradscope.train.samples import image_grid, save_image_grid
from gradscope.train.stream import BatchStream, epoch_permutation


class _Points:
    """A minimal in-memory dataset whose samples are their own indices (for order checks)."""

    in_memory = True
    name = "index"

    def __init__(self, n: int) -> None:
        self.data = torch.arange(n, dtype=torch.float32).unsqueeze(1)

    def __len__(self) -> int:
        return self.data.shape[0]

    def decode(self, raw):
        return raw


class Foreign:
    """An arbitrary class: a checkpoint holding one must not be unpickled."""


# --- losses ------------------------------------------------------------------------------------------

def test_losses_match_their_definitions_in_float64():
    r = torch.tensor([2.5, 0.3, -1.0], dtype=torch.float64)
    f = torch.tensor([-3.0, 0.2, 1.5], dtype=torch.float64)
    hinge_d = np.mean(np.maximum(0, 1 - r.numpy())) + np.mean(np.maximum(0, 1 + f.numpy()))
    ns_d = -np.mean(np.log(1 / (1 + np.exp(-r.numpy())))) - np.mean(np.log(1 - 1 / (1 + np.exp(-f.numpy()))))
    ns_g = -np.mean(np.log(1 / (1 + np.exp(-f.numpy()))))
    assert discriminator_loss("hinge", r, f).item() == pytest.approx(hinge_d, rel=1e-6)
    assert discriminator_loss("ns", r, f).item() == pytest.approx(ns_d, rel=1e-6)
    assert discriminator_loss("wgan-gp", r, f).item() == pytest.approx(f.mean().item() - r.mean().item(), rel=1e-6)
    assert generator_loss("hinge", f).item() == pytest.approx(-f.mean().item(), rel=1e-6)
    assert generator_loss("wgan-gp", f).item() == pytest.approx(-f.mean().item(), rel=1e-6)
    assert generator_loss("ns", f).item() == pytest.approx(ns_g, rel=1e-6)
    with pytest.raises(ValueError, match="valid choices"):
        discriminator_loss("l2", r, f)


def test_gradient_penalty_value_and_second_derivative():
    # D(x) = ||x||^2 / 2 has grad x: penalty = mean (||x|| - 1)^2; its weight-free gradient w.r.t. x
    # is 2 (||x|| - 1) x / ||x||, reached only through create_graph (double backward).
    x = torch.tensor([[3.0, 4.0], [0.6, 0.8]], dtype=torch.float64, requires_grad=True)
    penalty = gradient_penalty(0.5 * x.pow(2).sum(dim=1), x)
    assert penalty.item() == pytest.approx(((5 - 1) ** 2 + (1 - 1) ** 2) / 2)
    (grad,) = torch.autograd.grad(penalty, x)
    norms = x.detach().norm(dim=1, keepdim=True)
    expected = 2 * (norms - 1) * x.detach() / norms / 2
    assert torch.allclose(grad, expected)


def test_gradient_penalty_reaches_weights_through_a_spectrally_normalized_layer():
    torch.manual_seed(0)
    layer = nn.utils.parametrizations.spectral_norm(nn.Linear(4, 1, dtype=torch.float64))
    layer.eval()  # fixed u, v: the penalty is a smooth function of the raw weight
    x = torch.randn(3, 4, dtype=torch.float64)

    def penalty_of(raw: torch.Tensor) -> torch.Tensor:
        points = x.clone().requires_grad_(True)
        w = raw / torch.dot(layer.parametrizations.weight[0]._u, raw @ layer.parametrizations.weight[0]._v)
        return gradient_penalty(points @ (2.0 * w).t(), points)

    raw = layer.parametrizations.weight.original.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(penalty_of, (raw,))


def test_interpolate_mixes_per_sample_and_is_a_leaf():
    real, fake = torch.zeros(3, 2, 2), torch.ones(3, 2, 2)
    mixed = interpolate(real, fake, torch.tensor([0.0, 0.5, 1.0]))
    assert mixed.is_leaf and mixed.requires_grad
    assert mixed[:, 0, 0].tolist() == [1.0, 0.5, 0.0]


# --- data order ---------------------------------------------------------------------------------------

def test_each_epoch_visits_every_sample_once_and_epochs_differ():
    stream = BatchStream(_Points(10), 3, seed=5)
    epoch0 = torch.cat([next(stream) for _ in range(3)]).squeeze(1).long().tolist()
    assert len(set(epoch0)) == 9  # 3 batches of 3; the tail sample of the epoch is dropped
    assert epoch0 == epoch_permutation(10, 5, 0)[:9].tolist()
    epoch1 = torch.cat([next(stream) for _ in range(3)]).squeeze(1).long().tolist()
    assert epoch1 == epoch_permutation(10, 5, 1)[:9].tolist() and epoch1 != epoch0


def test_stream_resumes_at_its_position_and_shards_by_rank():
    data = _Points(50)
    whole = BatchStream(data, 8, seed=1)
    batches = [next(whole).squeeze(1) for _ in range(9)]
    resumed = BatchStream(data, 8, seed=1)
    resumed.load_state_dict({"position": 4})
    assert torch.equal(next(resumed).squeeze(1), batches[4])
    ranks = [BatchStream(data, 8, seed=1, rank=r, world_size=2, position=7) for r in range(2)]
    assert torch.equal(torch.cat([next(s).squeeze(1) for s in ranks]), batches[7])


def test_stream_rejects_bad_sizes():
    with pytest.raises(ValueError, match="divisible"):
        BatchStream(_Points(10), 3, seed=0, world_size=2)
    with pytest.raises(ValueError, match="fewer than --batch-size"):
        BatchStream(_Points(4), 8, seed=0)


# --- RNG and checkpoints -------------------------------------------------------------------------------

def test_rng_snapshot_restores_every_generator():
    gen = torch.Generator().manual_seed(3)
    state = capture_rng_state({"latents": gen})
    first = (torch.rand(2), np.random.rand(2), random.random(), torch.rand(2, generator=gen))
    torch.rand(5), np.random.rand(5), random.random(), torch.rand(5, generator=gen)
    restore_rng_state(state, {"latents": gen})
    again = (torch.rand(2), np.random.rand(2), random.random(), torch.rand(2, generator=gen))
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    assert first[2] == again[2] and torch.equal(first[3], again[3])


def test_checkpoints_are_atomic_pruned_and_weights_only(tmp_path):
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, {"step": step, "w": torch.full((2,), float(step))}, keep=2)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2, 3]
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".tmp")]
    assert load_checkpoint(find_checkpoint(tmp_path))["w"].tolist() == [3.0, 3.0]
    with pytest.raises(FileNotFoundError, match="available steps: 2, 3"):
        find_checkpoint(tmp_path, 1)

    torch.save({"step": 4, "obj": Foreign()}, tmp_path / "checkpoints" / "step_00000004.pt")
    with pytest.raises(ValueError, match="cannot be read"):
        load_checkpoint(find_checkpoint(tmp_path))
    (tmp_path / "checkpoints" / "step_00000005.pt").write_bytes(b"\x80\x02truncated")
    with pytest.raises(ValueError, match="cannot be read"):
        load_checkpoint(find_checkpoint(tmp_path, 5))


# --- networks -------------------------------------------------------------------------------------------

def test_frozen_discriminator_keeps_power_iteration_and_grads():
    torch.manual_seed(0)
    disc = nn.Sequential(nn.utils.parametrizations.spectral_norm(nn.Linear(3, 4)), nn.ReLU(), nn.Linear(4, 1))
    u_before = disc[0].parametrizations.weight[0]._u.clone()
    x = torch.randn(5, 3, requires_grad=True)
    with frozen(disc):
        disc(x).sum().backward()
    assert torch.equal(disc[0].parametrizations.weight[0]._u, u_before)  # eval mode: no power-iteration step
    assert all(p.grad is None for p in disc.parameters()) and x.grad is not None
    assert disc.training and all(p.requires_grad for p in disc.parameters())
    disc(torch.randn(5, 3))
    assert not torch.equal(disc[0].parametrizations.weight[0]._u, u_before)  # training mode: one step


def test_ema_is_the_exponential_average_and_copies_buffers():
    net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    ema = EMA(net, decay=0.9)
    start = [p.detach().clone() for p in net.parameters()]
    expected = [s.clone() for s in start]
    for k in range(3):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(1.0)
        net(torch.randn(4, 2))  # moves the batch-norm statistics
        ema.update(net)
        expected = [0.9 * e + 0.1 * p.detach() for e, p in zip(expected, net.parameters())]
    for average, value in zip(ema.module.parameters(), expected):
        assert torch.allclose(average, value, atol=1e-6)
    assert torch.equal(ema.module[1].running_mean, net[1].running_mean)


# --- pictures -------------------------------------------------------------------------------------------

def test_image_grid_places_tiles_and_maps_range(tmp_path):
    images = torch.stack([torch.full((1, 8, 8), v) for v in (-1.0, 0.0, 1.0, 0.5)])
    grid = image_grid(images, nrow=2, padding=2)
    tile = 48  # 8 pixels enlarged 6x
    assert grid.shape == (2 * tile + 3 * 2, 2 * tile + 3 * 2)
    corners = [grid[2 + r * (tile + 2), 2 + c * (tile + 2)] for r in range(2) for c in range(2)]
    assert corners == [0, 128, 255, 191]
    assert grid[0, 0] == 0 and grid[tile + 3, 5] == 0  # padding
    from PIL import Image

    path = save_image_grid(torch.rand(5, 3, 16, 16) * 2 - 1, tmp_path / "g.png")
    assert Image.open(path).mode == "RGB"


# --- what the generator starts from -------------------------------------------------------------------

def _step0_generator(tmp_path, **settings):
    from gradscope.data import load_dataset
    from gradscope.metrics import generate_samples
    from gradscope.train import RunConfig
    from gradscope.train.distributed import DistContext
    from gradscope.train.loop import Trainer

    config = RunConfig(image_size=8, batch_size=4, ema=0.99, workers=0, **settings)
    dataset = load_dataset("digits", image_size=8)
    trainer = Trainer(config, dataset, device=torch.device("cpu"), context=DistContext(), run_dir=tmp_path)
    samples = torch.cat(list(generate_samples(trainer.sampling_generator, 8, seed=config.seed)))
    return trainer.G.state_dict(), samples


def test_step0_generator_does_not_depend_on_the_discriminator(tmp_path):
    """Same seed: G's weights, buffers and step-0 samples are bit-identical whatever D's norm, scale or init."""
    from gradscope.norms import NORMS

    reference, reference_samples = _step0_generator(tmp_path, norm="none", seed=3)
    variants = [{"norm": norm, "scale": 1.4 if norm != "none" else 1.0} for norm in NORMS]
    variants.append({"norm": "bssn", "init": "lecun"})
    for settings in variants:
        state, samples = _step0_generator(tmp_path, seed=3, **settings)
        assert state.keys() == reference.keys()
        for key, value in state.items():
            assert torch.equal(value, reference[key]), (settings, key)
        assert torch.equal(samples, reference_samples), settings
    other, other_samples = _step0_generator(tmp_path, norm="none", seed=4)
    assert not torch.equal(other["stem.0.weight"], reference["stem.0.weight"])
    assert not torch.equal(other_samples, reference_samples)


def test_thread_rule_ignores_the_environment_for_small_runs_and_keeps_a_recorded_count(monkeypatch):
    from gradscope.train.distributed import configure_threads

    before = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    try:
        assert configure_threads(small=True) == 1 == torch.get_num_threads()
        assert configure_threads(small=False) == 2 == torch.get_num_threads()
        assert configure_threads(small=True, recorded=3) == 3 == torch.get_num_threads()
        with pytest.raises(ValueError, match="recorded thread count"):
            configure_threads(recorded=0)
    finally:
        torch.set_num_threads(before)
