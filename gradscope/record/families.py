"""Every statistic the recorder takes, declared once, by family.

A :class:`Family` is one home for a group of statistics: which rows it
writes (``target``: per layer, per parameter or per weight operator), where
it hooks (``hook``), what it accumulates on the device (``sums``: sum and sum
of squares with an entry count; ``direct``: one value per step), how the host
turns that into numbers (``derive``), its schedule and its documentation.
The step buffer's slot layout, the hooks' switches, the host derivations and
:data:`gradscope.record.STATS` are all generated from :data:`FAMILIES`;
adding a statistic means adding (or extending) one family here.

Device-side collection happens in ``collect`` (at ``Recorder.step``, for
``hook="step"`` families) or in the module / tensor hooks (``hook="forward"``
or ``"backward"``, whose ``sums`` name the tensor they read: ``"input"`` or
``"output"``). Nothing in a ``collect`` reads a value on the host, except
on the exact and Hessian schedules, which are allowed to synchronize.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from gradscope.linalg import reshape_norms
from gradscope.record.layouts import CONV
from gradscope.record.spectral import nonfinite_norm

if TYPE_CHECKING:  # pragma: no cover
    from gradscope.record.buffer import StepBuffer
    from gradscope.record.layers import Layer

CHEAP, EXACT, HESSIAN = "cheap", "exact", "hessian"
LAYER, PARAM, OPERATOR = "layer", "param", "operator"
Derived = dict[str, tuple[np.ndarray, np.ndarray]]


@dataclass
class StepContext:
    """What a family's ``collect`` sees at ``Recorder.step``.

    ``layers`` is one chunk of the step's layers (see :func:`gradscope.record.layers.cache_sized_chunks`):
    ``collect`` runs once per chunk and must add values for these layers' targets only.
    """

    buffer: StepBuffer
    layers: Sequence[Layer]
    want: set[str]
    exact: bool
    effective_grads: Mapping[int, Tensor]
    grad_seen: set[int]
    snapshots: Mapping[int, Tensor]
    operator_due: bool = True
    hessian: Callable[[], Mapping[int, Tensor]] = field(default=lambda: {})
    #: Gradient norms taken as each gradient was accumulated: (the .grad then, its version, the norm).
    early_grad_norms: Mapping[int, tuple[Callable[[], Tensor | None], int, Tensor]] = field(default_factory=dict)

    _grad_norms: dict[int, Tensor] | None = field(default=None, repr=False)

    def wants(self, family: Family) -> bool:
        """Whether any statistic of ``family`` is selected."""
        return bool(self.want & set(family.stats))

    def param_grad_norms(self) -> dict[int, Tensor]:
        """``||p.grad||`` by parameter uid for the parameters that received a gradient this step (one
        ``_foreach_norm``, shared by the per-parameter and the per-operator statistics)."""
        if self._grad_norms is None:
            self._grad_norms, stale = {}, []
            for p in (p for layer in self.layers for p in layer.params if p.uid in self.grad_seen):
                grad, early = p.tensor.grad, self.early_grad_norms.get(p.uid)
                if grad is None:
                    continue
                if early is not None and early[0]() is grad and early[1] == grad._version:
                    self._grad_norms[p.uid] = early[2]
                else:
                    stale.append(p)
            norms = torch._foreach_norm([p.tensor.grad.detach() for p in stale]) if stale else []
            self._grad_norms.update((p.uid, norm) for p, norm in zip(stale, norms))
        return self._grad_norms


class Derivation:
    """Host-side view of one recorded step: every quantity's sums per target ``uid``."""

    def __init__(self, sums: np.ndarray, hits: np.ndarray, counts: np.ndarray, targets: Sequence[Any],
                 attributes: dict[str, np.ndarray] | None = None) -> None:
        self.sums, self.hits, self.counts, self.targets = sums, hits, counts, targets
        # The targets' attributes do not change between steps: a caller recording many steps passes one
        # dict for all of them.
        self.attributes = {} if attributes is None else attributes

    def attr(self, name: str, default: float = math.nan) -> np.ndarray:
        """A target attribute (``fan_in``, ``numel``, ``plain``) as an array over uids."""
        key = f"{name}|{default}"
        if key not in self.attributes:
            self.attributes[key] = np.array([getattr(t, name, default) for t in self.targets], dtype=float)
        return self.attributes[key]

    def direct(self, quantity: str) -> tuple[np.ndarray, np.ndarray]:
        """(present, value) of a direct quantity."""
        q = SLOTS.direct[quantity]
        return self.hits[:, q], self.sums[:, q]

    def moments(self, quantity: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(present, mean, variance, norm) of a sum quantity."""
        q = SLOTS.sums[quantity]
        n = self.counts[:, q]
        present = self.hits[:, q] & (n > 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            mean = self.sums[:, q] / n
            # E[x^2] - E[x]^2 can dip below zero by rounding; NaN / inf pass through unchanged.
            var = np.maximum(self.sums[:, q + 1] / n - mean * mean, 0.0)
        return present, mean, var, np.sqrt(self.sums[:, q + 1])


@dataclass(frozen=True)
class Family:
    """One group of statistics and everything the recorder needs to take them (see the module docstring)."""

    name: str
    target: str
    hook: str
    schedule: str
    stats: dict[str, str]
    derive: Callable[[Derivation], Derived]
    sums: dict[str, str] = field(default_factory=dict)
    direct: tuple[str, ...] = ()
    collect: Callable[[StepContext], None] | None = None
    # A cheap family whose values are also refined on the exact schedule's steps.
    refined_on_exact: bool = False

    def due(self, cheap: bool, exact: bool, hessian: bool) -> bool:
        """Whether the family collects on a step with these schedules due."""
        return {CHEAP: cheap, EXACT: exact, HESSIAN: hessian}[self.schedule] or (self.refined_on_exact and exact)


# --- per-layer forward and backward statistics (hooks) ------------------------------------------
def _moment_stats(d: Derivation, quantities: tuple[str, ...], location: str) -> Derived:
    """``<quantity>_<location>`` (``"mean"`` or ``"norm"``) and ``<quantity>_var`` of sum quantities."""
    out: Derived = {}
    for quantity in quantities:
        present, mean, var, norm = d.moments(quantity)
        out[f"{quantity}_{location}"] = (present, mean if location == "mean" else norm)
        out[f"{quantity}_var"] = (present, var)
    return out


ACTIVATIONS = Family(
    "activations", LAYER, "forward", CHEAP,
    {"act_in_mean": "mean of the layer's (first, floating-point) input",
     "act_in_var": "variance of the layer's input",
     "act_out_mean": "mean of the layer's output (pre-activation; the first tensor of a tuple output)",
     "act_out_var": "variance of the layer's output (C7 forward ratio)"},
    lambda d: _moment_stats(d, ("act_in", "act_out"), "mean"), sums={"act_in": "input", "act_out": "output"})

GRADIENTS = Family(
    "gradients", LAYER, "backward", CHEAP,
    {"grad_out_norm": "norm of the loss gradient w.r.t. the layer's output (back-propagated gradient)",
     "grad_out_var": "variance of the loss gradient w.r.t. the layer's output (C7 backward ratio)",
     "grad_in_norm": "norm of the gradient w.r.t. the layer's input flowing through this layer",
     "grad_in_var": "variance of the gradient w.r.t. the layer's input flowing through this layer"},
    lambda d: _moment_stats(d, ("grad_out", "grad_in"), "norm"), sums={"grad_out": "output", "grad_in": "input"})


# --- per-operator statistics of the weights ------------------------------------------------------
def _operators(ctx: StepContext) -> list:
    return [op for layer in ctx.layers for op in layer.operators]


def _collect_normalization(ctx: StepContext) -> None:
    for op in _operators(ctx):
        param = op.normalization
        if param is None:
            continue
        estimates = param.sigma_estimates()
        for key in ("sigma", "sigma_bwd"):
            if key in ctx.want and key in estimates:
                ctx.buffer.add(op.uid, key, estimates[key])
        if "gamma" in ctx.want and param.gamma is not None:
            ctx.buffer.add(op.uid, "gamma", param.gamma)


NORMALIZATION = Family(
    "normalization", OPERATOR, "step", CHEAP,
    {"sigma": "sigma the normalization divides by, read from its own buffers (normalized layers only)",
     "sigma_bwd": "the normalization's running estimate of the backward-reshape sigma (BSN)",
     "gamma": "learnable scale of the normalization (sn-same-gamma / sn-diff-gamma)"},
    lambda d: {name: d.direct(name) for name in ("sigma", "sigma_bwd", "gamma")},
    direct=("sigma", "sigma_bwd", "gamma"), collect=_collect_normalization)


def _collect_spectral(ctx: StepContext) -> None:
    fwd, op_norm = "sigma_fwd" in ctx.want, "sigma_op" in ctx.want
    for op in _operators(ctx):
        if fwd:
            own = op.normalization.sigma_estimates().get("sigma_fwd") if op.normalization is not None else None
            estimate = own if own is not None else op.spectral.forward_step(op.raw_matrix())
            ctx.buffer.add(op.uid, "sigma_fwd", estimate)
        if op_norm:
            # A plain matrix is its own operator: its forward estimate is sigma_op between exact steps.
            reuse = fwd and not ctx.exact and op.kind != CONV and op.normalization is None and op.plain
            if op.kind == CONV and not (ctx.exact or ctx.operator_due):
                continue  # a conv's power step costs a batch-1 conv pair: it has its own period
            value = estimate if reuse else op.spectral.operator_step(op, converged=ctx.exact)
            if value is not None:
                ctx.buffer.add(op.uid, "sigma_op", value)


SPECTRAL = Family(
    "spectral", OPERATOR, "step", CHEAP,
    {"sigma_fwd": "spectral norm of the raw weight's forward reshape (c_out first): the normalization's own "
                  "estimate where it keeps one, else the recorder's warm-started power iteration (one step per "
                  "recorded step, two matrix-vector products)",
     "sigma_op": "operator norm of the layer with W_eff on its real input size (C6): a warm-started power "
                 "step per recorded step (every operator_every steps for convolutions), converged on the exact "
                 "schedule"},
    lambda d: {name: d.direct(name) for name in ("sigma_fwd", "sigma_op")},
    direct=("sigma_fwd", "sigma_op"), collect=_collect_spectral, refined_on_exact=True)


def _collect_weights(ctx: StepContext) -> None:
    for op in _operators(ctx):
        if not op.lecun:
            continue
        ctx.buffer.add_sums(op.uid, "w_raw", op.raw_matrix())
        if op.normalization is not None:
            ctx.buffer.add(op.uid, "multiplier", op.normalization.multiplier())
        elif op.layer.foreign and op.layer.last_effective is not None and op.param == "weight":
            ctx.buffer.add_sums(op.uid, "w_eff", op.matrix(op.layer.last_effective))


def _derive_weights(d: Derivation) -> Derived:
    fan_in, plain = d.attr("fan_in"), d.attr("plain", 0.0) > 0
    raw_present, _, raw_var, _ = d.moments("w_raw")
    eff_present, _, eff_var, _ = d.moments("w_eff")
    mult_present, mult = d.direct("multiplier")
    # W_eff = multiplier * W for gradscope's normalizations; observed directly for foreign ones.
    with np.errstate(invalid="ignore", over="ignore"):  # a diverged weight's NaN / inf is recorded as such
        lecun = np.where(mult_present, fan_in * mult * mult * raw_var, fan_in * eff_var)
    lecun = np.where(plain, fan_in * raw_var, lecun)
    return {"lecun_ratio_raw": (raw_present, fan_in * raw_var),
            "lecun_ratio": ((raw_present & (mult_present | plain)) | eff_present, lecun)}


WEIGHTS = Family(
    "weights", OPERATOR, "step", CHEAP,
    {"lecun_ratio": "fan_in * Var(W_eff), W_eff the weight the layer uses (C5; 1 = LeCun)",
     "lecun_ratio_raw": "fan_in * Var(W) of the raw, un-normalized weight"},
    _derive_weights, sums={"w_raw": "step", "w_eff": "step"}, direct=("multiplier",), collect=_collect_weights)


def _collect_weight_grads(ctx: StepContext) -> None:
    with_grad = [op for op in _operators(ctx) if op.param_uid in ctx.grad_seen and op.raw.grad is not None]
    shared = ctx.param_grad_norms()
    # An operator that views its whole parameter has the parameter's gradient norm; slices need their own.
    own = [op for op in with_grad if not (op.whole and op.param_uid in shared)]
    norms = dict(zip((op.uid for op in own), torch._foreach_norm([op.matrix(op.raw.grad.detach()) for op in own])
                     if own else []))
    for op in with_grad:
        ctx.buffer.add(op.uid, "grad_w_raw_norm", norms[op.uid] if op.uid in norms else shared[op.param_uid])
    if "grad_w_eff_norm" in ctx.want:
        for op in _operators(ctx):
            grad = ctx.effective_grads.get(op.layer.uid) if op.param == "weight" else None
            if grad is not None:
                ctx.buffer.add(op.uid, "grad_w_eff_norm", torch.linalg.vector_norm(op.matrix(grad)))


def _derive_weight_grads(d: Derivation) -> Derived:
    plain = d.attr("plain", 0.0) > 0
    raw_present, raw = d.direct("grad_w_raw_norm")
    eff_present, eff = d.direct("grad_w_eff_norm")
    return {"grad_w_raw_norm": (raw_present, raw),
            "grad_w_eff_norm": (np.where(plain, raw_present, eff_present), np.where(plain, raw, eff))}


WEIGHT_GRADS = Family(
    "weight_grads", OPERATOR, "backward", CHEAP,
    {"grad_w_raw_norm": "norm of the raw weight's .grad when step() is called (C2)",
     "grad_w_eff_norm": "norm of the gradient w.r.t. the effective weight W_eff (C1)"},
    _derive_weight_grads, direct=("grad_w_raw_norm", "grad_w_eff_norm"), collect=_collect_weight_grads)


# --- per-parameter statistics ----------------------------------------------------------------------
_ONES: dict[torch.device, Tensor] = {}


def _one(device: torch.device) -> Tensor:
    """A shared 0-d 1.0 on ``device``: a flag in the step buffer that costs no kernel."""
    if device not in _ONES:
        _ONES[device] = torch.ones((), device=device)
    return _ONES[device]


def _collect_params(ctx: StepContext) -> None:
    # Only the parameters this step trains: a net used as a fixed function in another phase (D in the
    # generator's update) would repeat its parameters' values, with an update ratio of 0.
    params = [p for layer in ctx.layers for p in layer.params if p.uid in ctx.grad_seen]
    if not params:
        return
    if ctx.want & {"param_norm", "param_rms", "param_update_ratio", "param_nonfinite"}:
        # A weight whose operator's moments the weights family takes has its norm read off them on the host
        # (sqrt of the sum of squares): one pass over the weights fewer.
        moments_taken = ctx.wants(WEIGHTS)
        own = []
        for p in params:
            if moments_taken and not math.isnan(p.norm_operator):
                ctx.buffer.add(p.uid, "param_read_off", _one(p.tensor.device))
            else:
                own.append(p)
        for p, norm in zip(own, torch._foreach_norm([p.tensor.detach() for p in own]) if own else []):
            ctx.buffer.add(p.uid, "param_norm", norm)
    if "param_grad_norm" in ctx.want:
        for uid, norm in ctx.param_grad_norms().items():
            ctx.buffer.add(uid, "param_grad_norm", norm)
    if "param_update_ratio" in ctx.want:
        moved = [p for p in params if p.uid in ctx.snapshots]
        if moved:
            # The snapshots are this step's own copies: turn them into the updates in place.
            steps = [ctx.snapshots[p.uid] for p in moved]
            torch._foreach_sub_(steps, [p.tensor.detach() for p in moved])
            for p, norm in zip(moved, torch._foreach_norm(steps)):
                ctx.buffer.add(p.uid, "param_update", norm)


def _derive_params(d: Derivation) -> Derived:
    present, norm = d.direct("param_norm")
    read_off = d.direct("param_read_off")[0]  # flagged only where no own norm was taken and an operator is
    if read_off.any():
        raw_present, _, _, raw_norm = d.moments("w_raw")
        at = d.attr("norm_operator")[read_off].astype(np.int64)
        present, norm = present.copy(), norm.copy()
        present[read_off], norm[read_off] = raw_present[at], raw_norm[at]
    moved, update = d.direct("param_update")
    with np.errstate(divide="ignore", invalid="ignore"):
        rms = norm / np.sqrt(d.attr("numel"))
        # A parameter that did not move has ratio 0 even at norm 0 (a zero bias with a zero learning rate);
        # one that moved away from exactly 0 has no finite ratio and gets no row.
        ratio = np.where(update == 0, 0.0, update / norm)
    defined = moved & present & ((norm > 0) | (update == 0))
    return {"param_norm": (present, norm), "param_rms": (present, rms),
            "param_grad_norm": d.direct("param_grad_norm"), "param_update_ratio": (defined, ratio),
            # A norm is finite exactly when every entry is: the flag costs nothing on the device.
            "param_nonfinite": (present, (~np.isfinite(norm)).astype(float))}


PARAMS = Family(
    "params", PARAM, "step", CHEAP,
    {"param_norm": "Frobenius norm of the parameter (every parameter that received a gradient in the "
                   "recorded step, after the optimizer's update; rows named by its path)",
     "param_rms": "root mean square of the parameter's entries",
     "param_grad_norm": "norm of the parameter's .grad when step() is called",
     "param_update_ratio": "||p_after - p_before|| / ||p_after|| over the recorded step (the optimizer's "
                           "relative update; keeps a copy of the net's parameters during recorded steps)",
     "param_nonfinite": "1 when the parameter holds a NaN or infinite entry, else 0 (read off its norm)"},
    _derive_params, direct=("param_norm", "param_grad_norm", "param_update", "param_read_off"),
    collect=_collect_params)


# --- the slower schedules --------------------------------------------------------------------------
@torch.no_grad()
def _collect_exact(ctx: StepContext) -> None:
    for op in _operators(ctx):
        weight = op.raw.detach() if op.kind == CONV else op.raw_matrix()
        bad = nonfinite_norm(weight)  # a diverged weight has a NaN / inf norm; its SVD would raise instead
        if bad is not None:
            fwd = bwd = bad
        elif op.kind == CONV:
            fwd, bwd = reshape_norms(weight, transposed=op.layer.transposed)
        else:
            fwd, bwd = reshape_norms(weight)
        if "sigma_raw_fwd" in ctx.want:
            ctx.buffer.add(op.uid, "sigma_raw_fwd", fwd)
        if "sigma_raw_bwd" in ctx.want:
            ctx.buffer.add(op.uid, "sigma_raw_bwd", bwd)


EXACT_NORMS = Family(
    "exact", OPERATOR, "step", EXACT,
    {"sigma_raw_fwd": "exact spectral norm of the raw weight's forward reshape (c_out first)",
     "sigma_raw_bwd": "exact spectral norm of the raw weight's backward reshape (c_in first)"},
    lambda d: {name: d.direct(name) for name in ("sigma_raw_fwd", "sigma_raw_bwd")},
    direct=("sigma_raw_fwd", "sigma_raw_bwd"), collect=_collect_exact)


def _collect_hessian(ctx: StepContext) -> None:
    values = ctx.hessian()  # one probe per step, shared by every chunk of layers: each adds its own operators
    for op in _operators(ctx):
        if op.uid in values:
            ctx.buffer.add(op.uid, "hessian_top", values[op.uid])


HESSIAN_TOP = Family(
    "hessian", OPERATOR, "step", HESSIAN,
    {"hessian_top": "||H||_2, the largest |eigenvalue| of the Hessian of mean D(x) in the raw weight (C3)"},
    lambda d: {"hessian_top": d.direct("hessian_top")}, direct=("hessian_top",), collect=_collect_hessian)

#: Every family, in the order their rows are written.
FAMILIES: tuple[Family, ...] = (NORMALIZATION, SPECTRAL, WEIGHTS, ACTIVATIONS, GRADIENTS, WEIGHT_GRADS, PARAMS,
                                EXACT_NORMS, HESSIAN_TOP)


@dataclass(frozen=True)
class SlotLayout:
    """Offsets of every quantity inside a target's block of the step buffer (generated from the families)."""

    sums: dict[str, int]
    direct: dict[str, int]
    size: int


def _slot_layout(families: Sequence[Family]) -> SlotLayout:
    sums = list(dict.fromkeys(q for f in families for q in f.sums))
    direct = list(dict.fromkeys(q for f in families for q in f.direct))
    return SlotLayout({q: 2 * i for i, q in enumerate(sums)},
                      {q: 2 * len(sums) + i for i, q in enumerate(direct)}, 2 * len(sums) + len(direct))


SLOTS = _slot_layout(FAMILIES)
