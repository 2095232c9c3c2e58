"""Validation at the public boundary: one-line errors that name the valid choices."""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def check_choice(what: str, value: Any, choices: Iterable[Any]) -> Any:
    """Return ``value`` if it is one of ``choices``; else raise a one-line ``ValueError``.

    Examples
    --------
    >>> check_choice("norm", "sn", ("none", "sn"))
    'sn'
    """
    choices = tuple(choices)
    if value not in choices:
        listed = ", ".join(repr(c) for c in choices)
        raise ValueError(f"unknown {what} {value!r}; valid choices: {listed}")
    return value


def check_positive(what: str, value: float, *, allow_zero: bool = False) -> float:
    """Return ``value`` if it is a finite number > 0 (or >= 0); else raise ``ValueError``."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number, got {value!r}") from None
    ok = number >= 0 if allow_zero else number > 0
    if not ok or number != number or number in (float("inf"), float("-inf")):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{what} must be a finite number {bound}, got {value!r}")
    return value


def check_int_at_least(what: str, value: Any, minimum: int) -> int:
    """Return ``value`` if it is an integer >= ``minimum``; else raise ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return value
