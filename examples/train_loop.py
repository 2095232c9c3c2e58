"""Record your own model in a plain PyTorch loop with ``gradscope.Recorder``.

A small convolutional regressor (nothing from gradscope's models) learns a fixed random
"teacher" network; the recorder writes per-layer statistics (activation variances,
back-propagated gradient norms, sigma_fwd and the conv operator norm sigma_op, the LeCun
ratio) to a run directory, read back with ``gradscope.load_run``. ``--norm sn`` (or bssn,
strict, ...) spectrally normalizes the model first; the default only watches it.

    python examples/train_loop.py --out runs/loop                 # 300 steps, a few seconds
    python examples/train_loop.py --norm bssn --scale 1.41 --out runs/loop-bssn
    gradscope plot runs/loop runs/loop-bssn --out plots            # compare the two
    python examples/train_loop.py --tiny                          # 4 steps (the test suite)

``GRADSCOPE_EXAMPLE_TINY=1`` has the same effect as ``--tiny``.
"""
from __future__ import annotations

import argparse
import os
import tempfile

import torch
from torch import nn

import gradscope


def make_model(width: int = 16) -> nn.Module:
    """A conv net for 1x16x16 inputs: three convolutions, then a linear read-out."""
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1), nn.LeakyReLU(0.1),
        nn.Conv2d(width, 2 * width, 4, stride=2, padding=1), nn.LeakyReLU(0.1),
        nn.Conv2d(2 * width, 2 * width, 4, stride=2, padding=1), nn.LeakyReLU(0.1),
        nn.Flatten(), nn.Linear(2 * width * 4 * 4, 1),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps")
    parser.add_argument("--every", type=int, default=10, help="record every N steps")
    parser.add_argument("--norm", default=None, help="normalize the model first: sn, bssn, strict, ...")
    parser.add_argument("--scale", type=float, default=1.0, help="constant c of the normalization")
    parser.add_argument("--out", default=None, help="run directory (default: a temporary one)")
    parser.add_argument("--tiny", action="store_true", help="4 steps, for a quick test")
    args = parser.parse_args(argv)
    if args.tiny or os.environ.get("GRADSCOPE_EXAMPLE_TINY") == "1":
        args.steps, args.every = 4, 2
    out = args.out or tempfile.mkdtemp(prefix="gradscope-loop-")

    torch.manual_seed(0)
    teacher, model = make_model(), make_model()
    if args.norm:
        gradscope.normalize(model, norm=args.norm, scale=args.scale)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    # operator_every: how often a conv's operator norm (sigma_op) takes its power step (default 10 x every)
    with gradscope.Recorder(model, every=args.every, operator_every=2 * args.every, out=out) as rec:
        for step in range(1, args.steps + 1):
            x = torch.randn(32, 1, 16, 16)
            with torch.no_grad():
                target = teacher(x)
            opt.zero_grad()
            loss = nn.functional.mse_loss(model(x), target)
            loss.backward()
            opt.step()
            rec.step(step, phase="train")

    run = gradscope.load_run(out)
    layers = run.layers
    table = (layers[layers["stat"].isin(["grad_out_norm", "sigma_fwd", "sigma_op"])]
             .pivot_table(index="layer", columns="stat", values="value", aggfunc="last"))
    print(f"recorded {layers['step'].nunique()} steps of {args.steps} into {out}; last loss {loss.item():.4g}")
    print("last recorded values per layer (sigma_fwd: the raw weight's reshape norm; sigma_op: the layer's "
          "operator norm with the weight it uses; grad_out_norm: the gradient reaching its output)")
    print(table.to_string(float_format=lambda v: f"{v:.4g}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
