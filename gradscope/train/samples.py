"""Sample pictures saved during training: an image grid, or generated vs real points for the 2D sets."""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

#: Small images are enlarged (nearest neighbour) to at least this many pixels per side so a grid is legible.
MIN_TILE = 48


def image_grid(images: Tensor, nrow: int | None = None, padding: int = 2) -> np.ndarray:
    """Tile ``(N, C, H, W)`` images in [-1, 1] into one ``uint8`` array (``(h, w)`` or ``(h, w, 3)``).

    Examples
    --------
    >>> grid = image_grid(torch.zeros(6, 1, 8, 8), nrow=3, padding=1)
    >>> grid.shape, int(grid[1 + 3, 1 + 3])  # zeros map to mid-grey
    ((2 * 8 * 6 + 3, 3 * 8 * 6 + 4), 128)
    """
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be (N, 1 or 3, H, W), got shape {tuple(images.shape)}")
    n, c, h, w = images.shape
    factor = max(1, math.ceil(MIN_TILE / max(h, w)))
    pixels = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    pixels = pixels.repeat_interleave(factor, dim=2).repeat_interleave(factor, dim=3)
    h, w = h * factor, w * factor
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    grid = np.zeros((c, rows * (h + padding) + padding, nrow * (w + padding) + padding), dtype=np.uint8)
    for index in range(n):
        r, col = divmod(index, nrow)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        grid[:, top:top + h, left:left + w] = pixels[index].numpy()
    return grid[0] if c == 1 else grid.transpose(1, 2, 0)


def save_image_grid(images: Tensor, path: str | os.PathLike[str], nrow: int | None = None) -> Path:
    """Write :func:`image_grid` of ``images`` as a PNG file (parents created); return the path."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image_grid(images, nrow)).save(path)
    return path


def save_point_plot(points: Tensor, real: Tensor, path: str | os.PathLike[str], title: str = "") -> Path:
    """Scatter generated ``points`` over ``real`` ones (both ``(N, 2)``) into a PNG file; return the path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(4, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    real_np, fake_np = real.detach().cpu().numpy(), points.detach().float().cpu().numpy()
    ax.scatter(real_np[:, 0], real_np[:, 1], s=2, c="0.7", label="real")
    ax.scatter(fake_np[:, 0], fake_np[:, 1], s=2, c="tab:red", label="generated")
    lim = float(np.abs(real_np).max()) * 1.3
    ax.set(xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal", title=title)
    ax.legend(loc="upper right", fontsize="small", markerscale=4)
    fig.tight_layout()
    fig.savefig(path)
    return path
