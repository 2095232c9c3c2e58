"""The console side of a run: a tqdm bar (it/s, ETA, losses, latest alert) and one line per event.

The bar is drawn only on a terminal; event lines (evaluations, checkpoints,
the end) go to stdout either way, through ``tqdm.write`` so they do not tear
the bar. ``quiet`` silences both.
"""
from __future__ import annotations

import sys
import time
from collections.abc import Mapping

from tqdm.auto import tqdm

#: Scalars shown on the bar, with their short labels.
BAR_FIELDS: tuple[tuple[str, str], ...] = (("loss_d", "D"), ("loss_g", "G"))
ALERT_WIDTH = 60


class Progress:
    """Progress display of one run (a no-op on ranks other than 0 and when ``quiet``)."""

    def __init__(self, total: int, initial: int, *, enabled: bool, desc: str = "train") -> None:
        self.enabled, self.total, self.initial = enabled, total, initial
        self.started = time.perf_counter()
        self.bar = None
        if enabled and sys.stderr.isatty():
            self.bar = tqdm(total=total, initial=initial, desc=desc, unit="it", dynamic_ncols=True,
                            smoothing=0.1, file=sys.stderr)

    def update(self, step: int, scalars: Mapping[str, float], alert: str | None = None) -> None:
        """Move the bar to ``step`` with the latest scalars and alert."""
        if self.bar is None:
            return
        parts = {label: f"{scalars[name]:.3f}" for name, label in BAR_FIELDS if name in scalars}
        if alert:
            parts["alert"] = alert if len(alert) <= ALERT_WIDTH else alert[:ALERT_WIDTH - 1] + "…"
        self.bar.set_postfix(parts, refresh=False)
        self.bar.update(step - self.bar.n)

    def note(self, step: int, scalars: Mapping[str, float]) -> None:
        """Without a bar (not a terminal), print a progress line: step, losses and speed."""
        if not self.enabled or self.bar is not None:
            return
        done = step - self.initial
        rate = done / max(time.perf_counter() - self.started, 1e-9)
        losses = "  ".join(f"{label} {scalars[name]:.3f}" for name, label in BAR_FIELDS if name in scalars)
        print(f"step {step}/{self.total}  {losses}  ({rate:.2f} it/s)", flush=True)

    def write(self, line: str) -> None:
        """Print an event line (not in quiet mode)."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(line, file=sys.stdout)
        else:
            print(line, flush=True)

    def close(self) -> None:
        """Remove the bar."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def format_metrics(values: Mapping[str, float]) -> str:
    """``"digits_fid 41.20  digits_is_mean 6.03"`` (stds and KID spreads left out for brevity).

    Examples
    --------
    >>> format_metrics({"digits_fid": 41.2, "digits_is_std": 0.1, "modes_covered": 8.0})
    'digits_fid 41.2  modes_covered 8'
    """
    shown = {k: v for k, v in values.items() if not k.endswith("_std")}
    return "  ".join(f"{k} {v:.4g}" for k, v in shown.items())
