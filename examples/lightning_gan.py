"""Record a PyTorch Lightning GAN with ``gradscope.integrations.GradscopeCallback``.

A small MLP GAN learns a ring of 8 Gaussians (the ``ring8`` set of the mode-collapse
literature) with manual optimization: one D update and one G update per batch, D spectrally
normalized by ``gradscope.normalize``. The callback records D and G (``{"D": "disc", "G":
"gen"}`` names the LightningModule's children) with the phases ``d`` and ``g`` of the two
optimizers; both updates of a batch carry that batch's step.

    pip install -e ".[lightning]"
    python examples/lightning_gan.py --out runs/lightning-gan      # 400 batches, some 15 s on a CPU
    gradscope plot runs/lightning-gan --out plots
    python examples/lightning_gan.py --tiny                        # 3 batches (the test suite)

``GRADSCOPE_EXAMPLE_TINY=1`` has the same effect as ``--tiny``.
"""
from __future__ import annotations

import argparse
import math
import os
import tempfile

import torch
from torch import nn

import gradscope

try:
    import lightning.pytorch as pl
except ImportError:  # pragma: no cover - the message says what to install
    raise SystemExit("this example needs PyTorch Lightning: pip install -e '.[lightning]'") from None

from gradscope.integrations import GradscopeCallback


def ring8(n: int, seed: int = 0) -> torch.Tensor:
    """``n`` points from 8 Gaussians (std 0.02) equally spaced on the unit circle."""
    g = torch.Generator().manual_seed(seed)
    angles = torch.randint(0, 8, (n,), generator=g) * (2 * math.pi / 8)
    centers = torch.stack([angles.cos(), angles.sin()], dim=1)
    return centers + 0.02 * torch.randn(n, 2, generator=g)


class GAN(pl.LightningModule):
    """Hinge-loss GAN on 2D points; D is spectrally normalized (``norm``), G is plain."""

    def __init__(self, norm: str = "sn", z_dim: int = 8, hidden: int = 64):
        super().__init__()
        self.automatic_optimization = False
        self.z_dim = z_dim
        self.gen = nn.Sequential(nn.Linear(z_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, 2))
        self.disc = nn.Sequential(nn.Linear(2, hidden), nn.LeakyReLU(0.1), nn.Linear(hidden, hidden),
                                  nn.LeakyReLU(0.1), nn.Linear(hidden, 1))
        gradscope.normalize(self.disc, norm=norm)

    def training_step(self, batch, batch_idx):
        (real,) = batch
        opt_d, opt_g = self.optimizers()
        fake = self.gen(torch.randn(len(real), self.z_dim))
        loss_d = torch.relu(1 - self.disc(real)).mean() + torch.relu(1 + self.disc(fake.detach())).mean()
        opt_d.zero_grad()
        self.manual_backward(loss_d)
        opt_d.step()
        loss_g = -self.disc(self.gen(torch.randn(len(real), self.z_dim))).mean()
        opt_g.zero_grad()
        self.manual_backward(loss_g)
        opt_g.step()
        self.log_dict({"loss_d": loss_d.detach(), "loss_g": loss_g.detach()}, prog_bar=False)

    def configure_optimizers(self):
        betas = (0.5, 0.999)
        return [torch.optim.Adam(self.disc.parameters(), 2e-4, betas=betas),
                torch.optim.Adam(self.gen.parameters(), 2e-4, betas=betas)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=400, help="training batches (one D and one G update each)")
    parser.add_argument("--every", type=int, default=10, help="record every N batches")
    parser.add_argument("--norm", default="sn", help="normalization of D: sn, bssn, strict, ...")
    parser.add_argument("--out", default=None, help="run directory (default: a temporary one)")
    parser.add_argument("--tiny", action="store_true", help="3 batches, for a quick test")
    args = parser.parse_args(argv)
    if args.tiny or os.environ.get("GRADSCOPE_EXAMPLE_TINY") == "1":
        args.batches, args.every = 3, 1
    out = args.out or tempfile.mkdtemp(prefix="gradscope-lightning-")

    torch.manual_seed(0)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(ring8(64 * args.batches)), batch_size=64)
    callback = GradscopeCallback({"D": "disc", "G": "gen"}, phases=("d", "g"), every=args.every, out=out)
    # Lightning counts the steps of both optimizers: two per batch
    trainer = pl.Trainer(max_steps=2 * args.batches, callbacks=[callback], accelerator="cpu", devices=1,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=out)
    trainer.fit(GAN(args.norm), loader)

    layers = gradscope.load_run(out).layers
    d = layers[(layers["net"] == "D") & (layers["stat"] == "grad_out_norm")]
    print(f"recorded {layers['step'].nunique()} steps into {out}")
    table = d.pivot_table(index="step", columns="layer", values="value")
    print("D's back-propagated gradient norm per layer (rows: some of the recorded steps)")
    print(table.iloc[::max(1, len(table) // 8)].to_string(float_format=lambda v: f"{v:.3g}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
