"""Which modules the recorder watches, and what it needs to know about each of them."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn
from torch.nn.utils import parametrize

from gradscope.init import INITIALIZABLE_TYPES, layer_fans
from gradscope.norms.base import SpectralParametrization, parametrization_of, raw_weight

#: Layer types the recorder watches (normalized or not).
SUPPORTED_LAYERS: tuple[type[nn.Module], ...] = INITIALIZABLE_TYPES
ROOT_NAME = "root"


@dataclass(eq=False)
class Layer:
    """One watched layer.

    Attributes
    ----------
    net, name : str
        The model's name in the recorder and the module's name from ``named_modules``.
    module : nn.Module
        The layer.
    uid : int
        Index over every watched layer of every net (slot arithmetic).
    order : int
        Position in its net from input to output (first-run order once known).
    fan_in : float
        Inputs summed into one output unit (:func:`gradscope.init.layer_fans`, operator convention):
        ``in_features``; ``c_in/groups * prod(k)`` for a convolution; ``c_in/groups * prod(k) / prod(stride)``
        on average for a transposed convolution.
    """

    net: str
    name: str
    module: nn.Module
    uid: int
    order: int
    fan_in: float
    transposed: bool
    parametrization: SpectralParametrization | None
    # A parametrization gradscope does not know (e.g. torch's spectral_norm): W_eff is only
    # observable as the output of the module's ParametrizationList.
    foreign: bool
    input_size: tuple[int, ...] | None = None
    last_effective: Tensor | None = field(default=None, repr=False)

    @property
    def raw(self) -> Tensor:
        """The raw weight parameter."""
        return raw_weight(self.module)

    @property
    def parametrizations(self) -> nn.Module | None:
        """The ``ParametrizationList`` of ``weight`` or ``None``."""
        if parametrize.is_parametrized(self.module, "weight"):
            return self.module.parametrizations["weight"]
        return None

    def describe(self) -> dict[str, Any]:
        """JSON-ready description (for ``architecture.json``)."""
        m = self.module
        info: dict[str, Any] = {
            "name": self.name, "layer_index": self.order, "type": type(m).__name__,
            "weight_shape": list(self.raw.shape), "fan_in": self.fan_in,
            "normalization": getattr(self.parametrization, "norm", None) if self.parametrization is not None
            else ("foreign" if self.foreign else None),
            "input_size": list(self.input_size) if self.input_size is not None else None,
        }
        if not isinstance(m, nn.Linear):
            info.update(stride=list(m.stride), padding=m.padding if isinstance(m.padding, str) else list(m.padding),
                        dilation=list(m.dilation), groups=m.groups, padding_mode=m.padding_mode)
        return info


def check_name(what: str, name: object) -> None:
    """``ValueError`` unless ``name`` is a non-blank string that fits in one CSV field unquoted (nets, phases,
    scalar names all become fields of the run's tables).

    Examples
    --------
    >>> check_name("phase", "d,g")
    Traceback (most recent call last):
    ...
    ValueError: phase must be a non-blank string without commas, quotes or newlines, got 'd,g'
    """
    if not isinstance(name, str) or not name.strip() or any(c in name for c in ",\n\r\""):
        raise ValueError(f"{what} must be a non-blank string without commas, quotes or newlines, got {name!r}")


def discover_layers(models: Mapping[str, nn.Module]) -> dict[str, list[Layer]]:
    """Every supported layer of every model, in registration order; ``ValueError`` if a model has none."""
    found: dict[str, list[Layer]] = {}
    uid = 0
    seen: dict[int, str] = {}
    for net, model in models.items():
        layers: list[Layer] = []
        for name, module in model.named_modules():
            if not isinstance(module, SUPPORTED_LAYERS):
                continue
            if id(module) in seen:
                raise ValueError(f"layer {name or ROOT_NAME!r} of {net!r} is also part of {seen[id(module)]!r}; "
                                 "record each module under one name only")
            seen[id(module)] = net
            param = parametrization_of(module)
            foreign = param is None and parametrize.is_parametrized(module, "weight")
            layers.append(Layer(net=net, name=name or ROOT_NAME, module=module, uid=uid, order=len(layers),
                                fan_in=layer_fans(module).fan_in, transposed=bool(getattr(module, "transposed", False)),
                                parametrization=param, foreign=foreign))
            uid += 1
        if not layers:
            kinds = ", ".join(t.__name__ for t in SUPPORTED_LAYERS)
            raise ValueError(f"model {net!r} has no supported layers to record (supported: {kinds})")
        found[net] = layers
    return found


def normalize_models(models: nn.Module | Mapping[str, nn.Module]) -> dict[str, nn.Module]:
    """``{"model": m}`` for a single module; a validated copy of a mapping of named modules."""
    if isinstance(models, nn.Module):
        return {"model": models}
    if not isinstance(models, Mapping) or not models:
        raise ValueError("models must be an nn.Module or a non-empty dict of named nn.Modules, "
                         f"got {type(models).__name__}")
    out: dict[str, nn.Module] = {}
    for name, model in models.items():
        check_name("model name", name)
        if not isinstance(model, nn.Module):
            raise ValueError(f"models[{name!r}] must be an nn.Module, got {type(model).__name__}")
        out[name] = model
    return out
