"""The run's scalars table (losses, D outputs, metrics): through the recorder when it is on, else direct."""
from __future__ import annotations

from collections.abc import Mapping

import pandas as pd
import torch
from torch import Tensor


class ScalarLog:
    """Logs ``(step, name, value)`` rows without a host synchronization per step.

    With a recorder, rows go through ``Recorder.log_scalars`` (its alert rules
    see the losses and its flushes write them); without one they are kept as
    tensors and written at least every ``flush_every`` steps. With neither
    (ranks other than 0) logging is a no-op.
    """

    def __init__(self, writer=None, recorder=None, flush_every: int = 100) -> None:
        self.writer, self.recorder, self.flush_every = writer, recorder, flush_every
        self._pending: list[tuple[int, list[str], Tensor]] = []
        self._last_flush: int | None = None

    def log(self, step: int, values: Mapping[str, float | Tensor]) -> None:
        """Queue one step's scalars."""
        if self.recorder is not None:
            self.recorder.log_scalars(step, values)
            return
        if self.writer is None or not values:
            return
        tensors = [v.detach().double().reshape(()) if isinstance(v, Tensor) else torch.tensor(float(v), dtype=torch.float64)
                   for v in values.values()]
        device = tensors[0].device
        self._pending.append((step, list(values), torch.stack([t.to(device) for t in tensors])))
        if self._last_flush is None:
            self._last_flush = step
        if step - self._last_flush >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        """Write everything queued to the run directory."""
        if self.recorder is not None:
            self.recorder.flush()
            return
        if self.writer is None:
            return
        if self._pending:
            frames = [pd.DataFrame({"step": [step] * len(names), "name": names, "value": values.cpu().numpy()})
                      for step, names, values in self._pending]
            self.writer.append_scalars(pd.concat(frames, ignore_index=True))
            self._pending = []
            self._last_flush = None
        self.writer.flush()
