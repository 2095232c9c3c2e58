"""When to record, and whether the hooks should collect for the step that is about to run.

The hooks run before ``Recorder.step(step, phase)`` tells which step they
belonged to, so the schedule decides in advance. ``Recorder.begin`` makes
that exact; without it the next (step, phase) is predicted from the pattern
of the previous step's phases (e.g. ``d, g`` or ``d, d, d, d, d, g``), which
is exact for loops that repeat the same phases every step.

Which steps carry the cheap statistics is a :class:`RecordEvery`: every ``N``
steps, or piecewise (dense early, sparse later) for long runs.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from gradscope._checks import check_int_at_least

#: The forms :meth:`RecordEvery.parse` accepts, named in its errors.
VALID_FORMS = ("N, or parts P@U (period P below step U) then a last period, where a period is N or logK "
               "(K steps per decade, K <= 1000), e.g. 1@1000,10@10000,100 or 1@1000,log20")
MAX_PER_DECADE = 1000
# Far above the error of K * log10(step) in floats (~1e-12 for K = 1000 up to 1e10 steps).
_SLACK = 1e-9
LOG = "log"


def _decade_bin(step: int, per_decade: int) -> int:
    """``floor(per_decade * log10(step))`` for ``step >= 1``, exactly (integers, no rounding at bin edges)."""
    power = step ** per_decade
    i = int(per_decade * math.log10(step))
    while i > 0 and 10 ** i > power:
        i -= 1
    while 10 ** (i + 1) <= power:
        i += 1
    return i


def _ceil_root(i: int, per_decade: int) -> int:
    """The smallest integer ``s >= 1`` with ``s ** per_decade >= 10 ** i`` (the ``i``-th log point)."""
    target = 10 ** i
    s = max(1, int(10 ** (i / per_decade)))
    while s ** per_decade < target:
        s += 1
    while s > 1 and (s - 1) ** per_decade >= target:
        s -= 1
    return s


class RecordEvery:
    """A recording schedule: every ``N`` steps, or piecewise with a period (or log spacing) per range of steps.

    Each part but the last is ``(period, until)``: that period holds for the
    steps below ``until`` (and at or above the previous part's ``until``); the
    last part is the period from there on. A period ``P`` records the steps
    divisible by ``P`` (multiples of ``P`` counted from step 0, so a period
    keeps its steps whatever the parts before it); ``"logK"`` records the
    steps ``ceil(10 ** (i / K))`` for ``i = 0, 1, ...`` (``K`` per decade once
    they are more than one step apart) and step 0.

    Parameters
    ----------
    *parts : int, str or tuple of (int or str, int)
        ``(period, until)`` pairs with increasing ``until``, then one period. A
        period is an integer >= 1 or ``"logK"`` with ``1 <= K <= 1000``.

    Examples
    --------
    >>> schedule = RecordEvery((1, 4), (2, 10), 5)
    >>> str(schedule), schedule.steps(30)
    ('1@4,2@10,5', [0, 1, 2, 3, 4, 6, 8, 10, 15, 20, 25])
    >>> RecordEvery.parse("1@10,log5").steps(200)
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 16, 26, 40, 64, 100, 159]
    >>> RecordEvery.parse("5").period
    5
    """

    def __init__(self, *parts: int | str | tuple[int | str, int]) -> None:
        if not parts:
            raise ValueError(f"a recording schedule needs at least one period; valid forms: {VALID_FORMS}")
        spans: list[tuple[str, int, int, int | None]] = []  # (kind, value, start, until)
        start = 0
        for index, part in enumerate(parts):
            last = index == len(parts) - 1
            if isinstance(part, tuple):
                if last or len(part) != 2:
                    raise ValueError(f"{part!r}: only the parts before the last are (period, until) pairs; "
                                     f"valid forms: {VALID_FORMS}")
                period, until = part
                if isinstance(until, bool) or not isinstance(until, int) or until <= start:
                    raise ValueError(f"the end step {until!r} must be an integer above {start} (the ends "
                                     f"increase); valid forms: {VALID_FORMS}")
            elif not last:
                raise ValueError(f"{part!r} is not the last part, so it needs an end step, as "
                                 f"(period, until) or P@U; valid forms: {VALID_FORMS}")
            else:
                period, until = part, None
            kind, value = self._period(period)
            spans.append((kind, value, start, until))
            start = until if until is not None else start
        self._spans = tuple(spans)

    @staticmethod
    def _period(period: Any) -> tuple[str, int]:
        if isinstance(period, str) and period.strip().startswith(LOG):
            digits = period.strip()[len(LOG):].strip()
            if digits.isdigit() and 1 <= int(digits) <= MAX_PER_DECADE:
                return LOG, int(digits)
            raise ValueError(f"{period!r}: a log period is logK with K from 1 to {MAX_PER_DECADE} steps per "
                             f"decade; valid forms: {VALID_FORMS}")
        if isinstance(period, str) and period.strip().isdigit():
            period = int(period)
        if isinstance(period, bool) or not isinstance(period, int) or period < 1:
            raise ValueError(f"a period must be an integer >= 1 or logK, got {period!r}; valid forms: "
                             f"{VALID_FORMS}")
        return "every", period

    # --- building -------------------------------------------------------------------------------------
    @classmethod
    def parse(cls, text: str, what: str = "recording schedule") -> RecordEvery:
        """Read the compact form ``P@U,...,LAST`` (see :data:`VALID_FORMS`); errors are one-line ``ValueError``.

        Examples
        --------
        >>> RecordEvery.parse("1@1000, 10@10000, 100")
        RecordEvery('1@1000,10@10000,100')
        >>> RecordEvery.parse("1@1000")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: bad recording schedule '1@1000': the last part '1@1000' must be a period without @...
        """
        if not isinstance(text, str):
            raise TypeError(f"{what} must be text such as {VALID_FORMS.split('e.g. ')[1]}, got {text!r}")
        tokens = [token.strip() for token in text.split(",")]
        parts: list[str | tuple[str, int]] = []
        for index, token in enumerate(tokens):
            if not token:
                raise ValueError(f"bad {what} {text!r}: an empty part; valid forms: {VALID_FORMS}")
            period, at, until = (t.strip() for t in token.partition("@"))
            if index == len(tokens) - 1:
                if at:
                    raise ValueError(f"bad {what} {text!r}: the last part {token!r} must be a period without @ "
                                     f"(what to record after the last end step); valid forms: {VALID_FORMS}")
                parts.append(period)
            elif not at:
                raise ValueError(f"bad {what} {text!r}: part {token!r} needs an end step, as P@U (only the last "
                                 f"part has none); valid forms: {VALID_FORMS}")
            elif not until.isdigit():
                raise ValueError(f"bad {what} {text!r}: the end step in {token!r} must be an integer; "
                                 f"valid forms: {VALID_FORMS}")
            else:
                parts.append((period, int(until)))
        try:
            return cls(*parts)
        except ValueError as exc:
            raise ValueError(f"bad {what} {text!r}: {exc}") from None

    @classmethod
    def of(cls, value: int | str | RecordEvery, what: str = "every") -> RecordEvery:
        """``value`` as a schedule: an int ``N`` (every ``N`` steps), the compact text, or a schedule."""
        if isinstance(value, RecordEvery):
            return value
        if isinstance(value, str):
            return cls.parse(value, what=what)
        return cls(check_int_at_least(what, value, 1))

    # --- reading --------------------------------------------------------------------------------------
    @property
    def period(self) -> int | None:
        """``N`` for a plain every-``N`` schedule, ``None`` for a piecewise one."""
        kind, value, _, _ = self._spans[0]
        return value if len(self._spans) == 1 and kind == "every" else None

    def _span(self, step: int) -> tuple[str, int, int, int | None]:
        for span in self._spans:
            if span[3] is None or step < span[3]:
                return span
        raise AssertionError("the last part has no end")  # pragma: no cover

    def tick(self, step: int) -> int | None:
        """The index of ``step`` on its part's lattice (``step // P``, or the log bin); ``None`` if not recorded.

        Parts' lattices count from step 0, so ``tick(step) % 10 == 0`` picks every
        10th step of a period (multiples of ``10 * P``) or of a log sequence.
        """
        kind, value, _, _ = self._span(step)
        if kind == "every":
            return step // value if step % value == 0 else None
        if step <= 1:
            return 0
        upper, lower = value * math.log10(step), value * math.log10(step - 1)
        if math.floor(upper + _SLACK) == math.floor(lower - _SLACK):
            return None  # no bin edge near (step - 1, step]: the float logs settle it without big integers
        i = _decade_bin(step, value)
        return i if _decade_bin(step - 1, value) < i else None

    def due(self, step: int) -> bool:
        """Whether ``step`` is recorded."""
        return self.tick(step) is not None

    def iter_steps(self, stop: int, start: int = 0) -> Iterator[int]:
        """The recorded steps in ``[start, stop)``, in order (without testing every step)."""
        for kind, value, begin, until in self._spans:
            low, high = max(start, begin), stop if until is None else min(stop, until)
            if low >= high:
                continue
            if kind == "every":
                yield from range(-(-low // value) * value, high, value)
                continue
            if low == 0:
                yield 0
            i, previous = (_decade_bin(low - 1, value) if low > 1 else 0), 0
            while True:
                step = _ceil_root(i, value)
                if step >= high:
                    break
                if step >= max(low, 1) and step != previous:
                    yield step
                previous, i = step, i + 1

    def steps(self, stop: int, start: int = 0) -> list[int]:
        """:meth:`iter_steps` as a list."""
        return list(self.iter_steps(stop, start))

    # --- text -----------------------------------------------------------------------------------------
    def __str__(self) -> str:
        parts = [(f"{LOG}{value}" if kind == LOG else str(value)) + ("" if until is None else f"@{until}")
                 for kind, value, _, until in self._spans]
        return ",".join(parts)

    def __repr__(self) -> str:
        return f"RecordEvery({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RecordEvery) and self._spans == other._spans

    def __hash__(self) -> int:
        return hash(self._spans)

    def setting(self) -> int | str:
        """Plain data for a config file: ``N`` for every-``N``, else the compact text."""
        return self.period if self.period is not None else str(self)


class Schedule:
    """Recording schedule, de-duplication of (step, phase) and next-step prediction.

    Parameters
    ----------
    every : int, str or RecordEvery
        The steps of the cheap statistics (see :class:`RecordEvery`).
    exact_every, hessian_every : int or None
        Periods of the exact and Hessian statistics, recorded on their steps whatever ``every`` says
        (off the cheap schedule such a step holds their rows only).
    slopes_every : int or None
        Input gradients on the recorded steps divisible by it (a multiple of a plain ``every``;
        default: every recorded step).
    operator_every : int, optional
        The convolutions' warm ``sigma_op`` step on the recorded steps divisible by it (a multiple of
        a plain ``every``); default: every 10th step of the period in force (``10 * every`` for a
        plain ``every``, multiples of ``10 * P`` in a part of period ``P``, every 10th log bin).
    start_step : int
        The first step number expected.
    """

    def __init__(self, every: int | str | RecordEvery, exact_every: int | None, hessian_every: int | None,
                 slopes_every: int | None, start_step: int = 0, operator_every: int | None = None) -> None:
        self.record = RecordEvery.of(every)
        plain = self.record.period
        #: The plain period as an int (as before schedules), else the :class:`RecordEvery`.
        self.every: int | RecordEvery = plain if plain is not None else self.record
        self.exact_every = None if exact_every is None else check_int_at_least("exact_every", exact_every, 1)
        self.hessian_every = None if hessian_every is None else check_int_at_least("hessian_every", hessian_every, 1)
        self.slopes_every = plain if slopes_every is None else check_int_at_least("slopes_every", slopes_every, 1)
        self.operator_every = None if operator_every is None else \
            check_int_at_least("operator_every", operator_every, 1)
        if plain is not None:
            if self.slopes_every % plain:
                raise ValueError(f"slopes_every must be a multiple of every ({plain}), got {self.slopes_every}")
            if self.operator_every is None:
                self.operator_every = 10 * plain
            if self.operator_every % plain:
                raise ValueError(f"operator_every must be a multiple of every ({plain}), got {self.operator_every}")
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
        return (self.record.due(step), self.exact_every is not None and step % self.exact_every == 0,
                self.hessian_every is not None and step % self.hessian_every == 0)

    def operator_due(self, step: int) -> bool:
        """Whether ``step`` is on the convolutions' ``sigma_op`` schedule."""
        if self.operator_every is not None:
            return step % self.operator_every == 0
        tick = self.record.tick(step)
        return tick is not None and tick % 10 == 0

    def slopes_due(self, step: int) -> bool:
        """Whether ``step`` is on the input-gradient schedule (asked for recorded steps only)."""
        return self.slopes_every is None or step % self.slopes_every == 0

    def done(self, step: int, phase: str | None) -> bool:
        """Whether (step, phase) was already recorded (the first record of a pair wins)."""
        return phase is not None and phase in self.last_recorded and step <= self.last_recorded[phase]

    def arm(self, step: int, phase: str | None) -> None:
        """Collect in the hooks iff (step, phase) will be recorded."""
        self.armed = self.record.due(step) and not self.done(step, phase)
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
            self.armed = self.slopes_armed = self.record.due(step) or self.record.due(step + 1)
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
