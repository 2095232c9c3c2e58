"""When to record, and whether the hooks should collect for the step that is about to run.

The hooks run before ``Recorder.step(step, phase)`` tells which step they
belonged to, so the schedule decides in advance. ``Recorder.begin`` makes
that exact; without it the next (step, phase) is predicted from the pattern
of the previous step's phases (e.g. ``d, g`` or ``d, d, d, d, d, g``), which
is exact for loops that repeat the same phases every step.
"""
from __future__ import annotations

from typing import Any

from gradscope._checks import check_int_at_least


class Schedule:
    """Recording schedule, de-duplication of (step, phase) and next-step prediction.

    Parameters
    ----------
    every, exact_every, hessian_every, slopes_every : int or None
        Periods of the cheap, exact, Hessian and input-gradient statistics.
    operator_every : int, optional
        Period of the convolutions' warm ``sigma_op`` step (a multiple of ``every``; default ``10 * every``).
    start_step : int
        The first step number expected.
    """

    def __init__(self, every: int, exact_every: int | None, hessian_every: int | None, slopes_every: int | None,
                 start_step: int = 0, operator_every: int | None = None) -> None:
        self.every = check_int_at_least("every", every, 1)
        self.exact_every = None if exact_every is None else check_int_at_least("exact_every", exact_every, 1)
        self.hessian_every = None if hessian_every is None else check_int_at_least("hessian_every", hessian_every, 1)
        self.slopes_every = every if slopes_every is None else check_int_at_least("slopes_every", slopes_every, 1)
        if self.slopes_every % self.every:
            raise ValueError(f"slopes_every must be a multiple of every ({self.every}), got {self.slopes_every}")
        self.operator_every = 10 * self.every if operator_every is None else \
            check_int_at_least("operator_every", operator_every, 1)
        if self.operator_every % self.every:
            raise ValueError(f"operator_every must be a multiple of every ({self.every}), got {self.operator_every}")
        check_int_at_least("start_step", start_step, 0)
        self.last_recorded: dict[str, int] = {}
        self.last_step: int | None = None
        self.cycle_prev: list[str] = []
        self.cycle_cur: list[str] = []
        self.cycle_step: int | None = None
        self.explicit = False
        self.armed = self.slopes_armed = False
        self.arm(start_step, None)

    def due(self, step: int) -> tuple[bool, bool, bool]:
        """Whether ``step`` is on the cheap, exact and Hessian schedules."""
        return (step % self.every == 0, self.exact_every is not None and step % self.exact_every == 0,
                self.hessian_every is not None and step % self.hessian_every == 0)

    def operator_due(self, step: int) -> bool:
        """Whether ``step`` is on the convolutions' ``sigma_op`` schedule."""
        return step % self.operator_every == 0

    def slopes_due(self, step: int) -> bool:
        """Whether ``step`` is on the input-gradient schedule."""
        return step % self.slopes_every == 0

    def done(self, step: int, phase: str | None) -> bool:
        """Whether (step, phase) was already recorded (the first record of a pair wins)."""
        return phase is not None and phase in self.last_recorded and step <= self.last_recorded[phase]

    def arm(self, step: int, phase: str | None) -> None:
        """Collect in the hooks iff (step, phase) will be recorded."""
        self.armed = step % self.every == 0 and not self.done(step, phase)
        self.slopes_armed = self.armed and self.slopes_due(step)

    def begin(self, step: int, phase: str | None) -> None:
        """Explicit announcement of the coming step (switches prediction off for good)."""
        check_int_at_least("step", step, 0)
        self.explicit = True
        self.arm(step, phase)

    def finish(self, step: int, phase: str, recorded: bool) -> None:
        """Account for the end of (step, phase) and arm the hooks for the predicted next one."""
        if recorded:
            self.last_recorded[phase] = step
        self.last_step = step if self.last_step is None else max(step, self.last_step)
        if step != self.cycle_step:
            self.cycle_prev, self.cycle_cur, self.cycle_step = self.cycle_cur, [], step
        self.cycle_cur.append(phase)
        prev, cur = self.cycle_prev, self.cycle_cur
        if self.explicit:
            self.armed = self.slopes_armed = False
        elif not prev:  # first step: one of its other phases or the next step may come next
            self.armed = self.slopes_armed = step % self.every == 0 or (step + 1) % self.every == 0
        elif len(cur) < len(prev) and prev[:len(cur)] == cur:
            self.arm(step, prev[len(cur)])
        else:
            self.arm(step + 1, prev[0])

    _STATE = ("last_recorded", "last_step", "cycle_prev", "cycle_cur", "cycle_step", "explicit", "armed",
              "slopes_armed")

    def state_dict(self) -> dict[str, Any]:
        """Plain-data state for checkpoints."""
        return {name: getattr(self, name) for name in self._STATE} | {
            "last_recorded": dict(self.last_recorded), "cycle_prev": list(self.cycle_prev),
            "cycle_cur": list(self.cycle_cur)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        for name in self._STATE:
            setattr(self, name, state[name])
        self.last_recorded = {str(k): int(v) for k, v in state["last_recorded"].items()}
        self.cycle_prev, self.cycle_cur = list(state["cycle_prev"]), list(state["cycle_cur"])
