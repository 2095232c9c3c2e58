"""Words on the figures: layer names, which loss a gradient is of, and what each statistic is.

- :func:`short_layer_names`: ``named_modules`` paths shortened for panel titles and ticks, never ambiguous.
- :func:`loss_symbol`: ``L`` for any model; ``L_D`` / ``L_G`` in a GAN run of gradscope's trainer,
  whose phase ``d`` back-propagates D's loss and phase ``g`` G's loss (through D into G).
- :func:`stat_label`: an axis label for a statistic, recorded names unknown to gradscope included.
"""
from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: Longest panel title / tick label before a layer path is shortened.
MAX_NAME_CHARS = 26
ELLIPSIS = "\u2026"
_GAP = " " + ELLIPSIS + " "
GAN_NETS = frozenset({"D", "G"})
GAN_PHASES = frozenset({"d", "g"})


def short_layer_names(paths: Iterable[str], max_chars: int = MAX_NAME_CHARS) -> dict[str, str]:
    """Path -> a name of at most about ``max_chars`` characters that no other path shares.

    A long path keeps its first component and as many trailing components as
    fit, and more when needed (``encoder.layers.3.attn.out_proj`` ->
    ``encoder … 3.attn.out_proj`` when other layers end in ``attn.out_proj``):
    the ellipsis stands for whole components, and the tail grows until every
    shortened name is distinct, so a title always identifies one layer.

    Examples
    --------
    >>> names = [f"encoder.layers.{i}.attn.out_proj" for i in range(2)] + ["head"]
    >>> short_layer_names(names, max_chars=20)
    {'encoder.layers.0.attn.out_proj': 'encoder … 0.attn.out_proj', \
'encoder.layers.1.attn.out_proj': 'encoder … 1.attn.out_proj', 'head': 'head'}
    """
    if max_chars < 4:
        raise ValueError(f"max_chars must be >= 4, got {max_chars}")
    unique = list(dict.fromkeys(str(p) for p in paths))
    keep = {path: 1 for path in unique}  # trailing components kept by each shortened path
    while True:
        names = {path: _shorten(path, keep[path], max_chars) for path in unique}
        owners: dict[str, list[str]] = {}
        for path, name in names.items():
            owners.setdefault(name, []).append(path)
        clashes = [p for group in owners.values() if len(group) > 1 for p in group if names[p] != p]
        if not clashes:
            return names
        for path in clashes:
            keep[path] += 1


def _shorten(path: str, keep: int, max_chars: int) -> str:
    parts = path.split(".")
    if len(path) <= max_chars or len(parts) <= 2:
        return path
    # grow the tail until it is distinctive enough (keep) and as long as the budget allows
    tail = max(keep, 1)
    while tail < len(parts) - 1 and len(parts[0]) + len(_GAP) + len(".".join(parts[-(tail + 1):])) <= max_chars:
        tail += 1
    if tail >= len(parts) - 1:
        return path
    # spaces around the ellipsis show it stands for whole components: "a … 1.x" is never "a.layers.11.x"
    return parts[0] + _GAP + ".".join(parts[-tail:])


@dataclass(frozen=True)
class LossSymbol:
    """Which loss the back-propagated gradients of one net and phase are of.

    Attributes
    ----------
    symbol : str
        ``"L"``, or ``"L_D"`` / ``"L_G"`` in a GAN run.
    meaning : str or None
        What the loss is (``"hinge loss of D"``, the user's ``loss_name``), or ``None`` if unknown.
    """

    symbol: str
    meaning: str | None = None

    def note(self) -> str:
        """``"L_D: hinge loss of D"``, or ``""`` when the meaning is unknown."""
        return f"{self.symbol}: {self.meaning}" if self.meaning else ""


def is_gan_run(nets: Collection[str], phases: Collection[str]) -> bool:
    """Whether a run records a GAN the way gradscope's trainer does (nets ``D`` and ``G``, phases ``d`` / ``g``)."""
    return GAN_NETS <= set(nets) and bool(set(phases)) and set(phases) <= GAN_PHASES


def loss_symbol(nets: Collection[str], phases: Collection[str], phase: str,
                config: Mapping[str, Any] | None = None, loss_name: str | None = None) -> LossSymbol:
    """The loss whose gradients a run records in ``phase``.

    In a GAN run phase ``d`` back-propagates D's loss (into D) and phase ``g``
    the generator's loss (through D, whose weights are frozen, into G).
    Any other run has one loss ``L``, described by ``loss_name`` when given.

    Examples
    --------
    >>> loss_symbol({"D", "G"}, {"d", "g"}, "g", {"loss": "hinge"})
    LossSymbol(symbol='L_G', meaning='hinge loss of G')
    >>> loss_symbol({"model"}, {"train"}, "train", loss_name="cross-entropy")
    LossSymbol(symbol='L', meaning='cross-entropy')
    """
    if loss_name is not None and (not isinstance(loss_name, str) or not loss_name.strip()):
        raise ValueError(f"loss_name must be a non-blank string, got {loss_name!r}")
    config = config or {}
    if is_gan_run(nets, phases) and phase in GAN_PHASES:
        who = "D" if phase == "d" else "G"
        kind = loss_name or config.get("loss")
        return LossSymbol(f"L_{who}", f"{kind} loss of {who}" if kind else f"loss of {who}")
    return LossSymbol("L", loss_name.strip() if loss_name else None)


def merge_symbols(symbols: Sequence[LossSymbol]) -> LossSymbol:
    """One symbol for runs overlaid in a figure (their meanings joined when they differ)."""
    if not symbols:
        return LossSymbol("L")
    names = list(dict.fromkeys(s.symbol for s in symbols))
    meanings = list(dict.fromkeys(s.meaning for s in symbols if s.meaning))
    return LossSymbol(names[0] if len(names) == 1 else "L", " / ".join(meanings) or None)


# stat -> (axis label with {L} for the loss symbol, what it is in words)
_STAT_LABELS: dict[str, tuple[str, str]] = {
    "grad_out_norm": ("||d{L}/d output||", "back-propagated gradient norm at the layer's output"),
    "grad_in_norm": ("||d{L}/d input||", "gradient norm at the layer's input"),
    "grad_out_var": ("Var(d{L}/d output)", "variance of the gradient at the layer's output"),
    "grad_in_var": ("Var(d{L}/d input)", "variance of the gradient at the layer's input"),
    "grad_w_raw_norm": ("||d{L}/dW|| (raw W)", "norm of the raw weight's gradient"),
    "grad_w_eff_norm": ("||d{L}/dW_eff||", "norm of the gradient w.r.t. the effective weight"),
    "act_in_var": ("Var(layer input)", "variance of the layer's input"),
    "act_out_var": ("Var(layer output)", "variance of the layer's output"),
    "act_in_mean": ("mean(layer input)", "mean of the layer's input"),
    "act_out_mean": ("mean(layer output)", "mean of the layer's output"),
    "sigma": ("sigma (divisor)", "sigma the normalization divides by"),
    "sigma_fwd": ("sigma_fwd estimate", "running estimate of the forward-reshape sigma"),
    "sigma_bwd": ("sigma_bwd estimate", "running estimate of the backward-reshape sigma"),
    "sigma_raw_fwd": ("sigma(W), fwd reshape", "exact spectral norm of the raw weight"),
    "sigma_raw_bwd": ("sigma(W), bwd reshape", "exact spectral norm of the raw weight, backward reshape"),
    "sigma_op": ("||W_eff||_op", "operator norm of the layer with its effective weight"),
    "gamma": ("gamma", "learnable scale of the normalization"),
    "lecun_ratio": ("fan_in * Var(W_eff)", "LeCun ratio of the effective weight"),
    "lecun_ratio_raw": ("fan_in * Var(W)", "LeCun ratio of the raw weight"),
    "hessian_top": ("||H||_2", "largest |eigenvalue| of the weight Hessian"),
    # per-parameter rows (``layer`` is the parameter's path, e.g. ``encoder.0.weight``)
    "param_norm": ("||p||", "norm of each parameter"),
    "param_rms": ("rms(p)", "root mean square of each parameter's entries"),
    "param_grad_norm": ("||d{L}/dp||", "norm of each parameter's gradient"),
    "param_update_ratio": ("||dp|| / ||p||", "relative size of each parameter's update"),
    "param_nonfinite": ("non-finite entries", "NaN or infinite entries of each parameter"),
}


def stat_label(stat: str, loss: LossSymbol | str = "L") -> str:
    """Axis label of a per-layer statistic; a name gradscope does not know labels itself.

    Examples
    --------
    >>> stat_label("grad_out_norm", LossSymbol("L_D"))
    '||dL_D/d output||'
    >>> stat_label("my_custom_norm")
    'my_custom_norm'
    """
    symbol = loss.symbol if isinstance(loss, LossSymbol) else str(loss)
    if stat in _STAT_LABELS:
        return _STAT_LABELS[stat][0].replace("{L}", symbol)
    return stat


def stat_meaning(stat: str) -> str:
    """What a statistic is in a few words (its name for one gradscope does not know)."""
    return _STAT_LABELS[stat][1] if stat in _STAT_LABELS else stat.replace("_", " ")


def uses_loss(stat: str) -> bool:
    """Whether ``stat`` is a gradient of the loss (its label names the loss)."""
    return stat in _STAT_LABELS and "{L}" in _STAT_LABELS[stat][0]


def with_note(label: str, loss: LossSymbol) -> str:
    """``label`` with the loss's meaning on a second line when known (``||dL/d output||\\nL: cross-entropy``)."""
    note = loss.note()
    return f"{label}\n{note}" if note else label
