"""The statistics the recorder can take: names, schedules and meaning, documented in one place.

Every per-layer statistic is stored as a row ``(step, phase, net, layer,
layer_index, stat, value)``; ``layer_index`` orders a net's layers from input
to output (the order they first ran in). Each statistic belongs to one
schedule:

- ``"cheap"``: taken every ``every`` steps from hooks and buffers, with no
  host synchronization;
- ``"exact"``: taken every ``exact_every`` steps (dense SVD and a conv
  operator norm; these do synchronize);
- ``"hessian"``: taken every ``hessian_every`` steps (Lanczos on Hessian-vector
  products: up to ``hessian_iterations`` extra double-backward passes per layer).

Activation and gradient statistics pool every forward / backward pass of a
layer between two ``Recorder.step`` calls, as if the batches had been
concatenated (a discriminator called on a real and on a fake batch gives the
statistics of both together). Variances are population variances (divide by
the number of entries). Norms are Frobenius (all entries).

Model-level numbers go to the scalars table ``(step, name, value)``; the
recorder itself writes :data:`SLOPE_SCALARS` (per-sample input-gradient norms,
see ``Recorder.record_input_gradients``); the trainer adds losses, D(real),
D(fake) through ``Recorder.log_scalars``.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from gradscope._checks import check_choice

CHEAP, EXACT, HESSIAN = "cheap", "exact", "hessian"


@dataclass(frozen=True)
class StatInfo:
    """What one statistic is and on which schedule it is taken."""

    schedule: str
    doc: str


#: Every per-layer statistic, in the order rows are written.
STATS: dict[str, StatInfo] = {
    "sigma": StatInfo(CHEAP, "sigma the normalization divides by, read from its own buffers (normalized layers only)"),
    "sigma_fwd": StatInfo(CHEAP, "the normalization's running estimate of the forward-reshape sigma (BSN)"),
    "sigma_bwd": StatInfo(CHEAP, "the normalization's running estimate of the backward-reshape sigma (BSN)"),
    "gamma": StatInfo(CHEAP, "learnable scale of the normalization (sn-same-gamma / sn-diff-gamma)"),
    "lecun_ratio": StatInfo(CHEAP, "fan_in * Var(W_eff), W_eff the weight the layer uses (C5; 1 = LeCun)"),
    "lecun_ratio_raw": StatInfo(CHEAP, "fan_in * Var(W) of the raw, un-normalized weight"),
    "act_in_mean": StatInfo(CHEAP, "mean of the layer's input activations"),
    "act_in_var": StatInfo(CHEAP, "variance of the layer's input activations"),
    "act_out_mean": StatInfo(CHEAP, "mean of the layer's output (pre-activation)"),
    "act_out_var": StatInfo(CHEAP, "variance of the layer's output (C7 forward ratio)"),
    "grad_out_norm": StatInfo(CHEAP, "norm of the loss gradient w.r.t. the layer's output (back-propagated gradient)"),
    "grad_out_var": StatInfo(CHEAP, "variance of the loss gradient w.r.t. the layer's output (C7 backward ratio)"),
    "grad_in_norm": StatInfo(CHEAP, "norm of the gradient w.r.t. the layer's input flowing through this layer"),
    "grad_in_var": StatInfo(CHEAP, "variance of the gradient w.r.t. the layer's input flowing through this layer"),
    "grad_w_raw_norm": StatInfo(CHEAP, "norm of the raw weight's .grad when step() is called (C2)"),
    "grad_w_eff_norm": StatInfo(CHEAP, "norm of the gradient w.r.t. the effective weight W_eff (C1)"),
    "sigma_raw_fwd": StatInfo(EXACT, "exact spectral norm of the raw weight's forward reshape (c_out first)"),
    "sigma_raw_bwd": StatInfo(EXACT, "exact spectral norm of the raw weight's backward reshape (c_in first)"),
    "sigma_op": StatInfo(EXACT, "operator norm of the layer with W_eff on its real input size (C6)"),
    "hessian_top": StatInfo(HESSIAN, "||H||_2, the largest |eigenvalue| of the Hessian of mean D(x) in the raw "
                                      "weight (C3)"),
}

#: Scalar names written by ``Recorder.record_input_gradients`` (``kind`` is e.g. "real" or "fake").
SLOPE_SCALARS: tuple[str, ...] = ("slope_{kind}_min", "slope_{kind}_mean", "slope_{kind}_max")


def stats_for(schedule: str, selected: Iterable[str]) -> tuple[str, ...]:
    """The names in ``selected`` taken on ``schedule``, in :data:`STATS` order."""
    chosen = set(selected)
    return tuple(name for name, info in STATS.items() if info.schedule == schedule and name in chosen)


def resolve_stats(stats: Iterable[str] | None, exact: bool, hessian: bool) -> tuple[str, ...]:
    """Validate a user's ``stats=`` selection, or pick the default for the active schedules.

    The default is every cheap statistic, plus the exact ones when
    ``exact_every`` is set and ``hessian_top`` when ``hessian_every`` is set.

    Examples
    --------
    >>> resolve_stats(["sigma", "grad_out_norm"], exact=False, hessian=False)
    ('sigma', 'grad_out_norm')
    >>> "sigma_op" in resolve_stats(None, exact=True, hessian=False)
    True
    """
    if stats is None:
        active = {CHEAP} | ({EXACT} if exact else set()) | ({HESSIAN} if hessian else set())
        return tuple(name for name, info in STATS.items() if info.schedule in active)
    if isinstance(stats, str):
        stats = [stats]
    names = list(stats)
    if not names:
        raise ValueError(f"stats must name at least one statistic; valid: {', '.join(STATS)}")
    for name in names:
        check_choice("stat", name, STATS)
        schedule = STATS[name].schedule
        if schedule == EXACT and not exact:
            raise ValueError(f"stat {name!r} is taken on the exact schedule: set exact_every")
        if schedule == HESSIAN and not hessian:
            raise ValueError(f"stat {name!r} is taken on the Hessian schedule: set hessian_every")
    return tuple(name for name in STATS if name in set(names))
