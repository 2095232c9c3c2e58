"""Recording what a model does while it trains, storing it, and reading it back.

Public API: :class:`Recorder` with its :class:`RecordEvery` schedules, :func:`load_run` /
:class:`Run`, :class:`RunWriter`, :class:`AlertRule` with :data:`DEFAULT_RULES`, :data:`STATS`
(every statistic's name, family, schedule and meaning), and :func:`register_layout` /
:class:`Operator` to say how the weights of your own module type are linear operators.
"""
from __future__ import annotations

from gradscope.record.alerts import DEFAULT_RULES, AlertRule
from gradscope.record.layouts import Operator, register_layout
from gradscope.record.reader import Run, load_run
from gradscope.record.recorder import Recorder
from gradscope.record.schedule import RecordEvery
from gradscope.record.stats import SLOPE_SCALARS, STATS
from gradscope.record.storage import STATES, RunWriter

__all__ = ["DEFAULT_RULES", "SLOPE_SCALARS", "STATES", "STATS", "AlertRule", "Operator", "RecordEvery", "Recorder",
           "Run", "RunWriter", "load_run", "register_layout"]
