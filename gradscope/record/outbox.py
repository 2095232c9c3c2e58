"""Recorded values on their way out: device tensors -> host -> rows -> alerts and sinks.

The recorder hands over device tensors without reading them, so training
never waits on the host between syncs. A sync copies everything pending to
the host with one transfer per device, turns it into table rows, checks the
alert rules, and hands the rows to the run directory (or keeps them in
memory) and, optionally, to TensorBoard.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from gradscope.record.alerts import AlertMonitor
from gradscope.record.buffer import PackedStep, copy_to_host
from gradscope.record.layers import Layer, all_targets, check_name
from gradscope.record.reader import ALERT_COLUMNS, Run, load_run, tidy_table
from gradscope.record.storage import RunWriter
from gradscope.record.table import LAYER_COLUMNS, SCALAR_COLUMNS, RowPlan, step_rows
from gradscope.record.tensorboard import TensorBoardSink

ScalarBatch = tuple[int, list[str], "Tensor | np.ndarray"]


def scalar_batches(step: int, values: Mapping[str, float | Tensor]) -> list[ScalarBatch]:
    """Group named scalars into one host vector (plain numbers) and one device vector per device (tensors)."""
    floats: dict[str, float] = {}
    tensors: dict[str, Tensor] = {}
    for name, value in values.items():
        check_name("scalar name", name)
        if isinstance(value, Tensor):
            if value.numel() != 1:
                raise ValueError(f"scalar {name!r} must have one element, got shape {tuple(value.shape)}")
            tensors[name] = value.detach().reshape(())
        else:
            floats[name] = float(value)
    batches: list[ScalarBatch] = []
    if floats:
        batches.append((step, list(floats), np.array(list(floats.values()), dtype=np.float64)))
    by_device: dict[torch.device, list[str]] = {}
    for name, t in tensors.items():
        by_device.setdefault(t.device, []).append(name)
    for names in by_device.values():
        vec = torch.stack([tensors[n] for n in names])
        if vec.dtype not in (torch.float32, torch.float64):
            vec = vec.to(torch.float32)
        batches.append((step, names, vec))
    return batches


def first_nonfinite_parameter(step: int, columns: Mapping[str, np.ndarray]) -> str | None:
    """``"non-finite parameter NET/NAME at step S"`` for the first parameter row of ``columns`` (one recorded
    step) whose norm is NaN / infinite or whose ``param_nonfinite`` flag is set, else ``None``.

    Examples
    --------
    >>> cols = {"stat": np.array(["param_norm"] * 2, dtype=object), "value": np.array([1.0, np.nan]),
    ...         "net": np.array(["D", "D"], dtype=object), "layer": np.array(["0.weight", "0.bias"], dtype=object)}
    >>> first_nonfinite_parameter(3, cols)
    'non-finite parameter D/0.bias at step 3'
    """
    stat, value = columns["stat"], columns["value"]
    bad = ((stat == "param_norm") & ~np.isfinite(value)) | ((stat == "param_nonfinite") & (value > 0))
    if not bad.any():
        return None
    i = int(np.flatnonzero(bad)[0])
    return f"non-finite parameter {columns['net'][i]}/{columns['layer'][i]} at step {step}"


def layer_frame(steps: Sequence[Mapping[str, np.ndarray]]) -> pd.DataFrame:
    """One frame of the layer rows of several recorded steps (columns as :func:`step_rows` returns them).

    The numpy columns are joined first and made a frame once: a frame per step, then concatenated,
    converts the name columns object -> string once per step (most of the cost for a few rows each).
    Steps without rows are left out unless all are empty: their empty ``object`` name columns would
    make the joined columns ``object`` rather than ``str`` (the rows and what is stored are the same).
    """
    filled = [columns for columns in steps if len(columns["value"])] or list(steps[:1])
    return pd.DataFrame({name: np.concatenate([columns[name] for columns in filled]) for name in filled[0]})


def scalar_frame(batches: Sequence[tuple[int, Sequence[str], np.ndarray]]) -> pd.DataFrame:
    """One frame of the scalars of several ``(step, names, host values)`` batches, made once (as
    :func:`layer_frame`: a frame per batch would convert its name column to strings once per batch)."""
    return pd.DataFrame({"step": np.concatenate([np.full(len(names), step, dtype=np.int64) for step, names, _ in batches]),
                         "name": np.concatenate([np.array(names, dtype=object) for _, names, _ in batches]),
                         "value": np.concatenate([np.asarray(values, dtype=np.float64) for _, _, values in batches])})


class Outbox:
    """Pending layer statistics and scalars of a recorder, and where they go once on the host.

    Parameters
    ----------
    layers : dict of str to list of Layer
        The recorder's watched layers (to name the rows).
    stats : sequence of str
        The recorded statistics, in row order.
    monitor : AlertMonitor
        Checks every row as it reaches the host.
    writer : RunWriter, optional
        The run directory; ``None`` keeps rows in memory.
    tensorboard : bool
        Mirror rows into ``writer.path / "tensorboard"``.
    """

    def __init__(self, layers: dict[str, list[Layer]], stats: Sequence[str], monitor: AlertMonitor,
                 writer: RunWriter | None, tensorboard: bool) -> None:
        self.layers, self.stats, self.monitor, self.writer = layers, tuple(stats), monitor, writer
        self.targets = all_targets(layers)
        self._attributes: dict[str, np.ndarray] = {}
        self._plans: dict[Any, RowPlan] = {}  # where each step's rows come from, reused across steps
        self.tensorboard = tensorboard
        self.steps: list[PackedStep] = []
        self.scalars: list[ScalarBatch] = []
        self.purge_step: int | None = None
        self._board: TensorBoardSink | None = None
        self._memory: dict[str, list[pd.DataFrame]] = {"layers": [], "scalars": []}
        self._memory_alerts: list[dict[str, Any]] = []
        #: The first non-finite parameter seen on the host (see :func:`first_nonfinite_parameter`).
        self.nonfinite: str | None = None

    def add_step(self, record: PackedStep) -> None:
        """Queue one recorded (step, phase)."""
        self.steps.append(record)

    def add_scalars(self, step: int, names: list[str], values: Tensor | np.ndarray) -> None:
        """Queue model-level scalars (a 1-d device or host vector with one entry per name)."""
        self.scalars.append((step, names, values))

    def discard(self) -> None:
        """Drop everything pending (a resumed run restarts from its checkpoint)."""
        self.steps, self.scalars = [], []

    def sync(self) -> None:
        """Copy pending values to the host (one transfer per device), derive rows, check alerts, store them."""
        if not self.steps and not self.scalars:
            return
        tensors = [vec for record in self.steps for vec, _ in record.parts]
        tensors += [vec for _, _, vec in self.scalars if isinstance(vec, Tensor)]
        host = iter(copy_to_host(tensors))
        layer_columns, scalar_rows, alerts = [], [], []
        for record in self.steps:
            parts = [(next(host), slots) for _, slots in record.parts]
            values = np.concatenate([v for v, _ in parts])
            slots = np.concatenate([s for _, s in parts])
            columns = step_rows(record, values, slots, self.layers, self.targets, self.stats, self._attributes,
                                self._plans)
            alerts += self.monitor.check_layers(record.step, record.phase, columns)
            if self.nonfinite is None:
                self.nonfinite = first_nonfinite_parameter(record.step, columns)
            layer_columns.append(columns)
            if self.tensorboard:
                self.board().write_layers(columns)
        for step, names, vec in self.scalars:
            values = next(host) if isinstance(vec, Tensor) else vec
            alerts += self.monitor.check_scalars(step, names, values)
            scalar_rows.append((step, names, values))
            if self.tensorboard:
                self.board().write_scalars(step, names, values)
        self.discard()
        layers_frame = layer_frame(layer_columns) if layer_columns else None
        scalars_frame = scalar_frame(scalar_rows) if scalar_rows else None
        if self.writer is not None:
            if layers_frame is not None:
                self.writer.append_layers(layers_frame)
            if scalars_frame is not None:
                self.writer.append_scalars(scalars_frame)
            self.writer.append_alerts(alerts)
        else:
            self._memory["layers"] += [] if layers_frame is None else [layers_frame]
            self._memory["scalars"] += [] if scalars_frame is None else [scalars_frame]
            self._memory_alerts += alerts

    def board(self) -> TensorBoardSink:
        """The TensorBoard sink, opened on first use."""
        if self._board is None:
            self._board = TensorBoardSink(self.writer.path / "tensorboard", purge_step=self.purge_step)
        return self._board

    def flush(self, last_step: int | None, watched: Sequence[Any]) -> None:
        """Sync, then write files to disk (with weight histograms of ``watched`` in TensorBoard)."""
        self.sync()
        if self.writer is not None:
            self.writer.flush()
        if self.tensorboard and last_step is not None:
            board = self.board()
            board.write_histograms(watched, last_step)
            board.flush()

    def close(self) -> None:
        """Close the TensorBoard event file (the run directory belongs to whoever opened it)."""
        if self._board is not None:
            self._board.close()

    def run(self, config: dict[str, Any]) -> Run:
        """Everything synced so far: read back from the run directory, or assembled from memory."""
        if self.writer is not None:
            run = load_run(self.writer.path)
            _ = run.layers, run.scalars  # read now: what was synced so far, not what a later flush adds
            return run
        layers = tidy_table(pd.concat(self._memory["layers"], ignore_index=True)
                            if self._memory["layers"] else pd.DataFrame(columns=list(LAYER_COLUMNS)), "layers")
        scalars = tidy_table(pd.concat(self._memory["scalars"], ignore_index=True)
                             if self._memory["scalars"] else pd.DataFrame(columns=list(SCALAR_COLUMNS)), "scalars")
        return Run(path=None, layers=layers, scalars=scalars,
                   alerts=pd.DataFrame(self._memory_alerts, columns=list(ALERT_COLUMNS)), config=config)
