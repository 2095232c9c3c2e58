"""Alert rules: what the :class:`~gradscope.record.alerts.AlertMonitor` watches, as plain data.

A rule names a kind of condition (vanishing, exploding, a first/last layer
ratio, non-finite values), the statistic it reads and its thresholds;
:data:`DEFAULT_RULES` are the rules a recorder uses unless told otherwise.
"""
from __future__ import annotations

from dataclasses import dataclass

from gradscope._checks import check_choice, check_int_at_least, check_positive
from gradscope.record.stats import STATS

RULE_KINDS: tuple[str, ...] = ("below_median", "above_median", "first_last_ratio", "non_finite",
                               "below_first", "above_first")
#: Kinds kept so that rules written by older gradscope versions still load and behave as they did.
LEGACY_KINDS: tuple[str, ...] = ("below_first", "above_first")
ANY_STAT = "*"


@dataclass(frozen=True)
class AlertRule:
    """One alert rule (plain data: ``AlertRule(**dataclasses.asdict(rule)) == rule``).

    Parameters
    ----------
    name : str
        Identifier stored with each alert.
    kind : str
        ``"below_median"`` (vanishing): the value falls below ``reference /
        factor``, where ``reference`` is the median of the series' last
        ``window`` recorded finite values (the current one excluded);
        ``"above_median"`` (exploding): it rises above ``reference * factor``;
        ``"first_last_ratio"``: the statistic of a net's first layer (lowest
        ``layer_index``) divided by that of its last layer leaves ``[1 / factor,
        factor]``; ``"non_finite"``: a value is NaN or infinite (``stat="*"``:
        every statistic and every scalar). Legacy ``"below_first"`` /
        ``"above_first"`` compare with the series' first positive finite value
        and fire at most once per layer (``window``, ``min_history``,
        ``patience`` and ``cooldown`` do not apply to them).
    stat : str
        A name from :data:`gradscope.record.STATS`, or ``"*"`` for ``non_finite``.
    factor : float
        Threshold multiple, > 1 (ignored by ``non_finite``).
    window : int
        Recorded values in the running median (>= 1).
    min_history : int
        Recorded values a series needs before a median rule can fire (1 to ``window``).
    patience : int
        Consecutive recorded steps a layer must meet the condition before it counts (>= 1).
    cooldown : int
        Training steps during which the rule stays quiet for a net after an event (>= 1).

    Examples
    --------
    >>> rule = AlertRule("vanishing", "below_median", "grad_in_norm", factor=100.0, patience=3)
    >>> rule.factor, rule.window
    (100.0, 20)
    >>> AlertRule("x", "sideways")
    Traceback (most recent call last):
    ...
    ValueError: unknown alert rule kind 'sideways'; valid choices: 'below_median', 'above_median', \
'first_last_ratio', 'non_finite', 'below_first', 'above_first'
    """

    name: str
    kind: str
    stat: str = "grad_out_norm"
    factor: float = 1e3
    window: int = 20
    min_history: int = 10
    patience: int = 1
    cooldown: int = 1000

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"alert rule name must be a non-empty string, got {self.name!r}")
        check_choice("alert rule kind", self.kind, RULE_KINDS)
        if self.stat != ANY_STAT or self.kind != "non_finite":
            check_choice("alert rule stat", self.stat, STATS)
        if isinstance(self.factor, bool):
            raise ValueError(f"alert rule factor must be a number, got {self.factor!r}")
        check_positive("alert rule factor", self.factor)
        if self.kind != "non_finite" and self.factor <= 1:
            raise ValueError(f"alert rule factor must be > 1, got {self.factor!r}")
        object.__setattr__(self, "factor", float(self.factor))  # stored dicts read the same for 100 and 100.0
        check_int_at_least("alert rule window", self.window, 1)
        check_int_at_least("alert rule min_history", self.min_history, 1)
        if self.min_history > self.window:
            raise ValueError(f"alert rule min_history must be <= window ({self.window}), got {self.min_history}")
        check_int_at_least("alert rule patience", self.patience, 1)
        check_int_at_least("alert rule cooldown", self.cooldown, 1)


#: The rules used when ``Recorder(alerts=None)``. Factors are 1e3: in a healthy SN-DCGAN on mnist
#: (300 steps) a layer's gradient norm strays at most ~30x above and ~5x below its running median
#: (early growth and minibatch noise), so 1e3 leaves a > 30x margin and still flags three orders of
#: magnitude. Vanishing needs 5 consecutive recorded steps: hinge-loss D steps with an exactly zero
#: gradient (every sample beyond the margin) come singly or in short runs and are not a vanishing
#: gradient; at a 10 % rate of such steps, 5 in a row by chance is ~1e-5 per step. The first/last
#: ratio keeps 1e4 (healthy D: < 1e2 across depth). The cooldown (1000 steps) re-reports a condition
#: that persists instead of once per recorded step.
DEFAULT_RULES: tuple[AlertRule, ...] = (
    AlertRule("vanishing_gradient", "below_median", "grad_out_norm", 1e3, patience=5),
    AlertRule("exploding_gradient", "above_median", "grad_out_norm", 1e3),
    AlertRule("gradient_ratio", "first_last_ratio", "grad_out_norm", 1e4),
    AlertRule("non_finite", "non_finite", ANY_STAT),
)
