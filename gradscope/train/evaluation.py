"""What a run shows of its generator: sample-quality numbers and sample pictures, without side effects.

Both run the generator in eval mode (batch norm with its running statistics)
on latents from their own seeded generators, inside ``torch.random.fork_rng``,
so evaluating or not evaluating never changes the training trajectory.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import nn

from gradscope.train.config import RunConfig
from gradscope.train.samples import save_image_grid, save_point_plot

SAMPLES_DIR = "samples"
GRID_SAMPLES = 64
POINT_SAMPLES = 2000
#: Offset of the sample-grid latents' seed from the run's seed (any constant: only reproducibility matters).
GRID_SEED_OFFSET = 7919


def _forked(device: torch.device):
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])


class Evaluator:
    """Computes a run's sample-quality metrics and saves its sample pictures.

    Parameters
    ----------
    config : RunConfig
        ``eval_samples`` and ``seed`` are used.
    dataset : GANDataset
        The training data (reference statistics, real points for the 2D plots).
    device : torch.device
        Where generation and feature extraction run.
    run_dir : Path
        Pictures go to ``run_dir/samples/step_00000100.png``.
    """

    def __init__(self, config: RunConfig, dataset, device: torch.device, run_dir: Path) -> None:
        self.config, self.dataset, self.device = config, dataset, device
        self.folder = Path(run_dir) / SAMPLES_DIR
        self._fixed_latents: torch.Tensor | None = None

    def metrics(self, generator: nn.Module) -> tuple[dict[str, float], float]:
        """``(metrics, seconds)`` of ``generator`` (see :func:`gradscope.metrics.evaluate_generator`)."""
        from gradscope.metrics import evaluate_generator

        started = time.perf_counter()
        with _forked(self.device):
            values = evaluate_generator(generator, self.dataset, n_samples=self.config.eval_samples,
                                        device=self.device, seed=self.config.seed,
                                        metrics=self.config.eval_metrics,
                                        inception_weights=self.config.inception_weights)
        return {k: float(v) for k, v in values.items()}, time.perf_counter() - started

    def _latents(self, generator: nn.Module) -> torch.Tensor:
        if self._fixed_latents is None:
            count = POINT_SAMPLES if self.dataset.kind == "points" else GRID_SAMPLES
            rng = torch.Generator().manual_seed(self.config.seed + GRID_SEED_OFFSET)
            self._fixed_latents = generator.sample_latent(count, device=self.device, generator=rng)
        return self._fixed_latents

    def save_samples(self, generator: nn.Module, step: int) -> Path:
        """Save a picture of ``generator``'s samples from fixed latents; return its path."""
        path = self.folder / f"step_{step:08d}.png"
        was_training = generator.training
        generator.eval()
        try:
            with _forked(self.device), torch.no_grad():
                samples = generator(self._latents(generator))
        finally:
            generator.train(was_training)
        if self.dataset.kind == "points":
            real = self.dataset.get_batch(range(min(POINT_SAMPLES, len(self.dataset))))
            return save_point_plot(samples, real, path, title=f"step {step}")
        return save_image_grid(samples, path, nrow=8)
