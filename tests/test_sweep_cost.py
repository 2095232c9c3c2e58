"""GPU-hour estimates of sweeps: FLOPs counted on the networks agree with FLOPs worked out by hand."""
from __future__ import annotations

import torch
from torch import nn

from gradscope.models import build_pair
from gradscope.sweep import parse_spec
from gradscope.sweep.cost import (
    ASSUMED_TFLOPS,
    _update_flops,
    gpu_hours,
    run_flops,
    sweep_flops,
)
from gradscope.sweep.manifest import Manifest
from gradscope.sweep.runner import estimate
from gradscope.train import RunConfig


def hand_counted_forward_flops(model: nn.Module, x: torch.Tensor) -> float:
    """2 FLOPs per multiply-add of every Linear / Conv / ConvTranspose, from the shapes seen in a forward pass."""
    total = 0.0

    def count(module, inputs, output):
        nonlocal total
        if isinstance(module, nn.Linear):
            total += 2.0 * inputs[0].shape[0] * module.in_features * module.out_features
        elif isinstance(module, nn.ConvTranspose2d):
            kh, kw = module.kernel_size
            n, _, h, w = inputs[0].shape
            total += 2.0 * n * module.in_channels * module.out_channels // module.groups * kh * kw * h * w
        elif isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            n, _, h, w = output.shape
            total += 2.0 * n * module.in_channels // module.groups * module.out_channels * kh * kw * h * w

    handles = [m.register_forward_hook(count) for m in model.modules()]
    with torch.no_grad():
        model.eval()(x)
    for handle in handles:
        handle.remove()
    return total


def test_counted_generator_flops_equal_the_hand_count_for_both_architectures() -> None:
    for arch, width in (("sndcgan", 0.25), ("sndcgan", 1.0), ("resnet", 1.0)):
        _, G = build_pair(arch, 32, 3, width=width)
        _, g_forward, _ = _update_flops(arch, 3, 32, width, None, 8)
        assert g_forward == hand_counted_forward_flops(G, torch.randn(8, G.z_dim)), arch


def test_a_discriminator_update_costs_about_three_forwards_and_runs_add_up() -> None:
    D, _ = build_pair("sndcgan", 32, 3, width=0.5)
    d_update, g_forward, g_update = _update_flops("sndcgan", 3, 32, 0.5, None, 16)
    d_forward = hand_counted_forward_flops(D, torch.randn(16, 3, 32, 32))
    # backward = gradient w.r.t. weights (1x) and inputs (1x) except for the first layer's input
    assert 2.5 * d_forward < d_update < 3.0 * d_forward + 1
    config = RunConfig(dataset="cifar10", width=0.5, batch_size=16, n_dis=5, iterations=100, eval_every=50,
                       eval_samples=200)
    expected = 100 * (5 * (2 * d_update + g_forward) + g_update) + 3 * 200 * (11.4e9 + g_forward / 16)
    assert run_flops(config) == expected
    assert run_flops(RunConfig(dataset="ring8", arch="mlp")) is None
    assert abs(gpu_hours(ASSUMED_TFLOPS * 1e12 * 3600) - 1.0) < 1e-12


def test_a_dry_run_without_finished_runs_states_gpu_hours_and_the_assumed_throughput() -> None:
    spec = parse_spec({"base": {"dataset": "cifar10", "iterations": 1000, "eval_every": 0},
                       "grid": {"norm": ["sn", "bssn"], "seed": [0, 1]}})
    text = estimate(spec, Manifest(spec.name, spec.fingerprint()))
    flops = sweep_flops(spec)
    assert f"{gpu_hours(flops):,.1f} GPU hours" in text and f"assumed {ASSUMED_TFLOPS:g} TFLOP/s" in text
    assert flops == 4 * run_flops(RunConfig(dataset="cifar10", iterations=1000, eval_every=0))
