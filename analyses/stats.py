"""Verdicts over seeds: one effect, its 95 % interval, n, and the seeds a 5 % effect would need.

Every claim about training (E1-E4, C5 and C8 over training) is decided here,
the same way: each seed gives one number per arm; the effect is the mean of
the per-seed values (or of the per-seed differences, when two arms share the
seed and are therefore *paired*); a Student-t interval (``n - 1`` degrees of
freedom) bounds it; and the verdict follows from the interval alone:

- ``holds`` when the whole interval lies on the claimed side of zero,
- ``violated`` when it lies entirely on the other side,
- ``inconclusive`` otherwise (including ``n < 2``, where no interval exists).

Ratios (gradient norms, FIDs) are compared on the log scale, ``log(b / a)``,
so that the interval is symmetric in "twice as large" / "half as large" and
reported back as a ratio. The power line says how many seeds a given
relative effect (default 5 %) would need at the measured spread for a
two-sided 5 % test with 80 % power (t quantiles at n - 1 degrees of freedom).

Fractions of runs (collapse rates) are compared with a seeded percentile
bootstrap of the difference, resampling runs within each arm.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as _scipy_stats

from analyses.common import HOLDS, INCONCLUSIVE, VIOLATED, Check

LEVEL = 0.95
POWER = 0.8
#: The relative effect whose required seed count every verdict line reports.
REFERENCE_EFFECT = 0.05
MAX_SEEDS = 100_000


@dataclass(frozen=True)
class Effect:
    """An effect with its interval, on the scale it was measured (``log`` effects: a log ratio).

    Attributes
    ----------
    estimate, low, high : float
        Mean effect and its ``level`` interval (NaN when ``n < 2`` for the bounds).
    n : int
        Seeds (pairs, when ``paired``).
    spread : float
        Standard deviation of the per-seed values (of the differences when paired).
    paired, log : bool
        Whether the arms shared seeds; whether the effect is a log ratio.
    seeds_needed : int or None
        Seeds a :data:`REFERENCE_EFFECT` would need at ``spread`` (``None`` when the spread is 0 or unknown).
    method : str
        How the interval was made: ``"t"`` (Student t over seeds) or ``"bootstrap"`` (percentile, over runs).
    """

    estimate: float
    low: float
    high: float
    n: int
    spread: float
    paired: bool
    log: bool
    seeds_needed: int | None
    method: str = "t"

    def verdict(self, direction: str) -> str:
        """``holds`` / ``violated`` / ``inconclusive`` for the claim that the effect is positive / negative.

        Examples
        --------
        >>> t_effect([0.1, 0.2, 0.15]).verdict("positive")
        'holds'
        >>> t_effect([0.1, -0.2, 0.15]).verdict("positive")
        'inconclusive'
        """
        if direction not in ("positive", "negative"):
            raise ValueError(f"direction must be 'positive' or 'negative', got {direction!r}")
        if not (np.isfinite(self.low) and np.isfinite(self.high)):
            return INCONCLUSIVE
        sign = 1.0 if direction == "positive" else -1.0
        low, high = sorted((sign * self.low, sign * self.high))
        if low > 0:
            return HOLDS
        if high < 0:
            return VIOLATED
        return INCONCLUSIVE

    def describe(self, unit: str = "") -> str:
        """``"ratio 0.61 [0.52, 0.72], n=5 paired; a 5 % effect needs 3 seeds"``-style text."""
        if self.log:
            head = f"ratio {math.exp(self.estimate):.3g} [{_exp(self.low):.3g}, {_exp(self.high):.3g}]"
        else:
            head = f"{self.estimate:.3g}{unit} [{self.low:.3g}, {self.high:.3g}]"
        kind = "paired" if self.paired else "independent"
        need = ("a 5 % effect needs any n (no spread)" if self.seeds_needed is None
                else f"a {REFERENCE_EFFECT:.0%} effect needs {self.seeds_needed} seeds per arm at this spread")
        return f"{head} ({LEVEL:.0%} {self.method} interval), n={self.n} {kind}; {need}"


def _exp(value: float) -> float:
    return math.exp(value) if np.isfinite(value) else float("nan")


def _finite(values) -> np.ndarray:
    array = np.asarray(values, dtype=float).ravel()
    return array[np.isfinite(array)]


def t_interval(values, level: float = LEVEL) -> tuple[float, float, float]:
    """``(mean, low, high)``: the Student-t interval of the mean of ``values`` (NaN bounds when n < 2).

    Examples
    --------
    >>> mean, low, high = t_interval([1.0, 2.0, 3.0])
    >>> round(mean, 3), round(low, 3), round(high, 3)
    (2.0, -0.484, 4.484)
    """
    x = _finite(values)
    if not len(x):
        return float("nan"), float("nan"), float("nan")
    mean = float(x.mean())
    if len(x) < 2:
        return mean, float("nan"), float("nan")
    half = float(_scipy_stats.t.ppf(0.5 + level / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return mean, mean - half, mean + half


def seeds_needed(spread: float, effect: float, *, paired: bool = True, level: float = LEVEL,
                 power: float = POWER) -> int | None:
    """Smallest n with ``(t_{1-a/2,n-1} + t_{power,n-1}) * spread * sqrt(k / n) <= effect``.

    ``k`` is 1 for paired arms, 2 for independent ones.

    ``None`` when ``spread`` is 0 or not finite (then any n resolves an exact effect, or nothing can be said).

    Examples
    --------
    >>> seeds_needed(0.05, 0.05)    # spread equal to the effect: about 10 pairs
    10
    >>> seeds_needed(0.0, 0.05) is None
    True
    """
    if not np.isfinite(spread) or spread <= 0 or effect <= 0:
        return None
    k = 1.0 if paired else 2.0

    def resolves(n: int) -> bool:
        quantile = _scipy_stats.t.ppf(0.5 + level / 2, n - 1) + _scipy_stats.t.ppf(power, n - 1)
        return quantile * spread * math.sqrt(k / n) <= effect

    if not resolves(MAX_SEEDS):
        return MAX_SEEDS
    low, high = 2, MAX_SEEDS          # the left side shrinks with n: bisect for the first n that resolves
    while low < high:
        middle = (low + high) // 2
        if resolves(middle):
            high = middle
        else:
            low = middle + 1
    return low


def t_effect(values, *, paired: bool = True, log: bool = False, level: float = LEVEL,
             reference_effect: float = REFERENCE_EFFECT) -> Effect:
    """The effect whose per-seed values (or paired differences) are ``values``.

    ``log=True`` means the values are log ratios: the power line then asks for
    ``log(1 + reference_effect)``.
    """
    x = _finite(values)
    mean, low, high = t_interval(x, level)
    spread = float(x.std(ddof=1)) if len(x) >= 2 else float("nan")
    target = math.log1p(reference_effect) if log else reference_effect * max(abs(mean), 1e-12)
    return Effect(mean, low, high, int(len(x)), spread, paired, log, seeds_needed(spread, target, paired=paired))


def paired_log_ratio(reference, treated, **kwargs) -> Effect:
    """Effect of ``treated`` over ``reference`` seed by seed: mean of ``log(treated / reference)``.

    Both must be positive and aligned (entry ``i`` of each from seed ``i``). A
    seed where either value is not positive or not finite is dropped.

    Examples
    --------
    >>> e = paired_log_ratio([1.0, 2.0, 4.0], [2.0, 4.1, 7.8])
    >>> round(math.exp(e.estimate), 2), e.verdict("positive")
    (2.0, 'holds')
    """
    a, b = np.asarray(reference, dtype=float), np.asarray(treated, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"need two aligned 1-D arrays, got shapes {a.shape} and {b.shape}")
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = np.where((a > 0) & (b > 0), np.log(b / a), np.nan)
    return t_effect(ratios, paired=True, log=True, **kwargs)


def bootstrap_difference(a, b, *, resamples: int = 10_000, level: float = LEVEL, seed: int = 0) -> Effect:
    """``mean(b) - mean(a)`` of two independent samples (e.g. 0/1 collapse flags) with a percentile bootstrap.

    Examples
    --------
    >>> e = bootstrap_difference([0, 0, 0, 0, 0], [1, 1, 1, 1, 0])
    >>> round(e.estimate, 2), e.verdict("positive")
    (0.8, 'holds')
    """
    x, y = _finite(a), _finite(b)
    if not len(x) or not len(y):
        nan = float("nan")
        return Effect(nan, nan, nan, min(len(x), len(y)), nan, False, False, None, "bootstrap")
    rng = np.random.default_rng(seed)
    draws = (rng.choice(y, (resamples, len(y))).mean(axis=1) - rng.choice(x, (resamples, len(x))).mean(axis=1))
    low, high = np.quantile(draws, [0.5 - level / 2, 0.5 + level / 2])
    spread = float(np.sqrt((x.var(ddof=1) if len(x) > 1 else 0.0) / 2 + (y.var(ddof=1) if len(y) > 1 else 0.0) / 2))
    estimate = float(y.mean() - x.mean())
    return Effect(estimate, float(low), float(high), int(min(len(x), len(y))), spread, False, False,
                  seeds_needed(spread, REFERENCE_EFFECT, paired=False), "bootstrap")


def effect_check(claim: str, quantity: str, effect: Effect, direction: str, *, unit: str = "",
                 must_hold: bool = False, note: str = "") -> Check:
    """A :class:`Check` whose verdict is ``effect.verdict(direction)``; the interval, n and power go in ``detail``.

    ``measured`` is the effect (a ratio for log effects), ``bound_or_prediction`` the null value
    (1 for ratios, 0 otherwise) and ``relation`` the claimed side of it.
    """
    null = 1.0 if effect.log else 0.0
    measured = math.exp(effect.estimate) if effect.log and np.isfinite(effect.estimate) else effect.estimate
    relation = ">" if direction == "positive" else "<"
    detail = effect.describe(unit) + (f"; {note}" if note else "")
    return Check(claim, quantity, float(measured), null, effect.verdict(direction), must_hold, relation, detail)


def equivalence_check(claim: str, quantity: str, effect: Effect, margin: float, *, note: str = "") -> Check:
    """Whether a log-ratio effect is *equal* to 1 within a factor ``margin``, judged on its interval.

    ``holds`` when the whole 95 % interval lies inside ``[1/margin, margin]``,
    ``violated`` when it lies wholly outside (beyond one end), ``inconclusive``
    otherwise: seeds narrow the interval until one of the first two happens.

    Examples
    --------
    >>> e = t_effect(np.log([1.02, 0.97, 1.05, 1.0]), paired=False, log=True)
    >>> equivalence_check("C5", "ratio", e, 1.25).verdict
    'holds'
    """
    if not effect.log:
        raise ValueError("equivalence_check needs a log-ratio effect (t_effect(..., log=True))")
    bound = math.log(margin)
    low, high = effect.low, effect.high
    if not (np.isfinite(low) and np.isfinite(high)):
        verdict = INCONCLUSIVE
    elif -bound <= low and high <= bound:
        verdict = HOLDS
    elif low > bound or high < -bound:
        verdict = VIOLATED
    else:
        verdict = INCONCLUSIVE
    measured = math.exp(effect.estimate) if np.isfinite(effect.estimate) else float("nan")
    detail = effect.describe() + f"; equal to 1 within a factor {margin:g} when the interval lies inside " \
        f"[{1 / margin:.3g}, {margin:g}]" + (f"; {note}" if note else "")
    return Check(claim, quantity, measured, 1.0, verdict, False, "~", detail)
