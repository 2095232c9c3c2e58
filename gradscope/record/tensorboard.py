"""Optional TensorBoard output (scalars and weight histograms), when the ``tensorboard`` package is installed."""
from __future__ import annotations

import importlib.util
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from gradscope._install import TENSORBOARD
from gradscope.record.layers import ParamTarget

INSTALL_HINT = f"TensorBoard output needs the tensorboard package: {TENSORBOARD}"


def tensorboard_available() -> bool:
    """Whether ``torch.utils.tensorboard`` can be used."""
    return importlib.util.find_spec("tensorboard") is not None


class TensorBoardSink:
    """Mirrors recorded rows into TensorBoard event files under ``log_dir``.

    Tags are ``net/stat/phase/layer`` for layer statistics (TensorBoard groups
    them per net and statistic) and the scalar's name for scalars. A resumed
    run passes ``purge_step`` so events after the checkpoint are hidden.
    """

    def __init__(self, log_dir: Path, purge_step: int | None = None) -> None:
        if not tensorboard_available():
            raise ValueError(INSTALL_HINT)
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)

    def write_layers(self, columns: Mapping[str, np.ndarray]) -> None:
        """Add each layer row as a scalar event."""
        for step, phase, net, layer, stat, value in zip(columns["step"], columns["phase"], columns["net"],
                                                        columns["layer"], columns["stat"], columns["value"]):
            self.writer.add_scalar(f"{net}/{stat}/{phase}/{layer}", float(value), int(step))

    def write_scalars(self, step: int, names: Iterable[str], values: np.ndarray) -> None:
        """Add model-level scalars."""
        for name, value in zip(names, values):
            self.writer.add_scalar(str(name), float(value), int(step))

    def write_histograms(self, params: Iterable[ParamTarget], step: int) -> None:
        """Histogram of every parameter (one host copy each, at flush time only)."""
        for param in params:
            self.writer.add_histogram(f"{param.net}/param/{param.name}", param.tensor.detach().float().cpu(), int(step))

    def flush(self) -> None:
        """Write events to disk."""
        self.writer.flush()

    def close(self) -> None:
        """Close the event file."""
        self.writer.close()
