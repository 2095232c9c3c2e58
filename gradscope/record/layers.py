"""What the recorder watches: every module with parameters, each parameter, each weight operator.

Three kinds of *targets* get rows, all numbered by one ``uid`` (the step
buffer's slot arithmetic) and named from ``named_modules`` / ``named_parameters``:

- :class:`Layer`: a module holding parameters of its own (forward and backward
  statistics); named by its module path;
- :class:`ParamTarget`: one parameter (norm, RMS, gradient, update, non-finite
  entries); named ``<module path>.<parameter name>``, a normalized weight by the
  name of the tensor it parametrizes;
- :class:`OperatorTarget`: one matrix-shaped weight read as a linear operator
  through its layer type's layout (:mod:`gradscope.record.layouts`): spectral
  norms, LeCun ratio, weight gradients; named like its layer for the layer's
  ``weight``, ``<path>.<param>[<label>]`` otherwise.

A module whose weights its parent uses directly, without calling its forward
(``MultiheadAttention``'s ``out_proj``), gets parameter and operator rows but no
forward / backward rows. Nothing here relies on the model being a gradscope model. A module with a
weight the recorder cannot read as an operator is listed once, with the reason.
"""
from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from gradscope.init import INITIALIZABLE_TYPES, layer_fans
from gradscope.norms.base import SpectralParametrization, parametrization_of
from gradscope.record.layouts import Operator, module_tensor, operators_of
from gradscope.record.spectral import WarmSpectral

ROOT_NAME = "root"


@dataclass(eq=False)
class Layer:
    """One watched module (it holds parameters of its own).

    Attributes
    ----------
    net, name : str
        The model's name in the recorder and the module's ``named_modules`` path (``"root"`` for the model).
    module : nn.Module
        The module.
    uid : int
        Index over every target of every net (slot arithmetic).
    order : int
        Position in its net from input to output (first-run order once known).
    params, operators : list
        Its :class:`ParamTarget` and :class:`OperatorTarget` entries.
    uninterpreted : str or None
        Why its weights get no spectral statistics, when it has matrix-shaped ones but no layout.
    """

    net: str
    name: str
    module: nn.Module
    uid: int
    order: int
    transposed: bool
    parametrization: SpectralParametrization | None
    # A parametrization gradscope does not know (e.g. torch's spectral_norm): W_eff is only
    # observable as the output of the module's ParametrizationList.
    foreign: bool
    params: list[ParamTarget] = field(default_factory=list)
    operators: list[OperatorTarget] = field(default_factory=list)
    uninterpreted: str | None = None
    input_size: tuple[int, ...] | None = None
    last_effective: Tensor | None = field(default=None, repr=False)

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
            "parameters": {p.tensor_name: list(p.tensor.shape) for p in self.params},
            "operators": [op.name for op in self.operators],
            "normalization": getattr(self.parametrization, "norm", None) if self.parametrization is not None
            else ("foreign" if self.foreign else None),
            "input_size": list(self.input_size) if self.input_size is not None else None,
        }
        main = next((op for op in self.operators if op.name == self.name), None)
        if main is not None:
            info.update(weight_shape=list(main.raw.shape), fan_in=main.fan_in)
        if self.uninterpreted:
            info["uninterpreted"] = self.uninterpreted
        if isinstance(m, nn.modules.conv._ConvNd):
            info.update(stride=list(m.stride), padding=m.padding if isinstance(m.padding, str) else list(m.padding),
                        dilation=list(m.dilation), groups=m.groups, padding_mode=m.padding_mode)
        return info


class _PartOfLayer:
    """A target that lives inside a :class:`Layer`: it shares the layer's net and position."""

    layer: Layer

    @property
    def net(self) -> str:
        return self.layer.net

    @property
    def order(self) -> int:
        return self.layer.order


@dataclass(eq=False)
class ParamTarget(_PartOfLayer):
    """One parameter of a layer."""

    layer: Layer
    tensor_name: str
    tensor: nn.Parameter
    uid: int
    # The uid of an operator of the same layer whose matrix is this whole parameter and whose weight
    # moments are recorded anyway (LeCun ratios): the parameter's norm is read off them (NaN: none).
    norm_operator: float = math.nan

    @property
    def name(self) -> str:
        """``<module path>.<parameter name>``."""
        return f"{self.layer.name}.{self.tensor_name}"

    @property
    def numel(self) -> int:
        return self.tensor.numel()


@dataclass(eq=False)
class OperatorTarget(_PartOfLayer):
    """One matrix-shaped weight of a layer, read as a linear operator by its layout."""

    layer: Layer
    operator: Operator
    uid: int
    param_uid: int
    fan_in: float
    spectral: WarmSpectral
    whole: bool = True  # its matrix holds every entry of the parameter (not a slice such as q of in_proj)

    @property
    def name(self) -> str:
        return self.operator.name(self.layer.name)

    # Fixed when the layers are discovered, and read for every operator on every recorded step: cached.
    @functools.cached_property
    def param(self) -> str:
        return self.operator.param

    @functools.cached_property
    def kind(self) -> str:
        return self.operator.kind

    @functools.cached_property
    def lecun(self) -> bool:
        return self.operator.lecun and self.fan_in > 0

    @functools.cached_property
    def normalization(self) -> SpectralParametrization | None:
        """gradscope's normalization of this weight, if any (it parametrizes ``weight``)."""
        return self.layer.parametrization if self.param == "weight" else None

    @property
    def plain(self) -> float:
        """1.0 when the weight is used as stored (no parametrization), else 0.0 (an array-friendly flag)."""
        return 0.0 if parametrize.is_parametrized(self.layer.module, self.param) else 1.0

    @property
    def raw(self) -> Tensor:
        """The stored (raw) parameter."""
        return module_tensor(self.layer.module, self.param)

    def matrix(self, weight: Tensor) -> Tensor:
        """``weight`` (shaped like the parameter) as this operator's matrix."""
        return self.operator.matrix(weight)

    def raw_matrix(self) -> Tensor:
        """The raw weight's matrix, detached."""
        return self.matrix(self.raw.detach())

    def effective(self) -> Tensor | None:
        """The weight the layer uses, shaped like the parameter (the last observed one for foreign ones)."""
        if self.normalization is not None:
            return self.raw * self.normalization.multiplier().to(self.raw.dtype)
        if parametrize.is_parametrized(self.layer.module, self.param):
            # Never evaluate a parametrization here: it may have side effects (a power-iteration step in
            # training mode) that the training run must not see. Use what the layer's forward produced.
            return self.layer.last_effective if self.param == "weight" else None
        return self.raw


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


def _inside_parametrizations(model: nn.Module) -> set[int]:
    inside: set[int] = set()
    for module in model.modules():
        if parametrize.is_parametrized(module):
            for plist in module.parametrizations.values():
                inside |= {id(m) for m in plist.modules()}
    return inside


def _own_tensors(module: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The module's own parameters; a parametrized one under its tensor's name, its parametrizations' under
    ``<tensor>.<name>`` (e.g. a normalization's ``weight.gamma``)."""
    out = [(name, p) for name, p in module.named_parameters(recurse=False)]
    if parametrize.is_parametrized(module):
        for tensor, plist in module.parametrizations.items():
            out.append((tensor, plist.original))
            for name, p in plist.named_parameters():
                if name != "original":
                    out.append((f"{tensor}.{name.split('.', 1)[-1]}", p))
    return out


def _fan_in(module: nn.Module, op: Operator, matrix: Tensor) -> float:
    if op.param == "weight" and not op.label and isinstance(module, INITIALIZABLE_TYPES):
        return layer_fans(module).fan_in
    return float(matrix.shape[1])


def discover_layers(models: Mapping[str, nn.Module]) -> dict[str, list[Layer]]:
    """Every module with parameters of every model, in registration order, with its parameters and operators.

    Raises
    ------
    ValueError
        When a model has no parameters, a module belongs to two nets, or a layout does not fit a weight.
    """
    found: dict[str, list[Layer]] = {}
    uid = 0
    seen_modules: dict[int, str] = {}
    param_uid_of: dict[int, int] = {}  # id(parameter) -> its target's uid (tied parameters share one)
    unread: list[str] = []
    for net, model in models.items():
        inside = _inside_parametrizations(model)
        layers: list[Layer] = []
        for name, module in model.named_modules():
            tensors = [] if id(module) in inside else _own_tensors(module)
            if not tensors:
                continue
            if id(module) in seen_modules:
                raise ValueError(f"layer {name or ROOT_NAME!r} of {net!r} is also part of {seen_modules[id(module)]!r}; "
                                 "record each module under one name only")
            seen_modules[id(module)] = net
            param = parametrization_of(module)
            layer = Layer(net=net, name=name or ROOT_NAME, module=module, uid=uid, order=len(layers),
                          transposed=isinstance(module, nn.modules.conv._ConvTransposeNd), parametrization=param,
                          foreign=param is None and parametrize.is_parametrized(module, "weight"))
            uid += 1
            param_uids: dict[str, int] = {}
            for tensor_name, tensor in tensors:
                if id(tensor) not in param_uid_of:  # a shared (tied) parameter is recorded once, by its first owner
                    param_uid_of[id(tensor)] = uid
                    layer.params.append(ParamTarget(layer, tensor_name, tensor, uid))
                    uid += 1
                param_uids[tensor_name] = param_uid_of[id(tensor)]
            operators = operators_of(layer.name, module)
            if operators is None:
                matrices = [n for n, t in tensors if t.ndim >= 2]
                if matrices:
                    layer.uninterpreted = (f"no layout for {type(module).__module__}.{type(module).__qualname__} "
                                           f"(weights {', '.join(matrices)}): per-parameter statistics only; "
                                           "declare one with gradscope.register_layout")
                    unread.append(f"{net}/{layer.name}: {layer.uninterpreted}")
                operators = []
            for op in operators:
                weight = module_tensor(module, op.param).detach()
                matrix = op.matrix(weight)
                whole = matrix.numel() == weight.numel()
                target = OperatorTarget(layer, op, uid, param_uids.get(op.param, -1), _fan_in(module, op, matrix),
                                        WarmSpectral(seed=uid), whole)
                layer.operators.append(target)
                for owned in layer.params:
                    if whole and target.lecun and owned.uid == target.param_uid and math.isnan(owned.norm_operator):
                        owned.norm_operator = float(target.uid)
                uid += 1
            layers.append(layer)
        if not layers:
            raise ValueError(f"model {net!r} has no parameters to record")
        found[net] = layers
    if unread:
        warnings.warn("gradscope.Recorder: " + "; ".join(unread), stacklevel=3)
    return found


#: Parameter bytes per chunk of layers collected together on the CPU: the weights, their gradients and
#: the update snapshots of a chunk (about 3x this) stay in a 1 MiB L2 cache between the families' passes.
CPU_CHUNK_BYTES = 256 * 1024


def cache_sized_chunks(layers: Sequence[Layer], device: torch.device,
                       budget: int = CPU_CHUNK_BYTES) -> list[list[Layer]]:
    """``layers`` in consecutive groups of at most ``budget`` parameter bytes (a larger layer alone).

    Each statistic family reads every weight once per recorded step. On the CPU, running all families
    on one group before the next keeps a group's tensors in cache between them, instead of streaming
    every weight from memory once per family. On an accelerator one group keeps each family to a few
    batched kernels.

    >>> lin = [Layer("m", str(i), nn.Linear(64, 64), i, i, False, None, False) for i in range(3)]
    >>> for layer in lin: layer.params = [ParamTarget(layer, "weight", layer.module.weight, 10 + layer.uid)]
    >>> [len(chunk) for chunk in cache_sized_chunks(lin, torch.device("cpu"), budget=40_000)]  # 16 kB each
    [2, 1]
    """
    if device.type != "cpu":
        return [list(layers)] if layers else []
    chunks: list[list[Layer]] = []
    used = budget
    for layer in layers:
        size = sum(p.tensor.numel() * p.tensor.element_size() for p in layer.params)
        if used + size > budget:
            chunks.append([])
            used = 0
        chunks[-1].append(layer)
        used += size
    return chunks


def all_targets(layers: Mapping[str, list[Layer]]) -> list[Any]:
    """Every layer, parameter and operator target, indexed by ``uid``."""
    targets: list[Any] = []
    for net_layers in layers.values():
        for layer in net_layers:
            targets += [layer, *layer.params, *layer.operators]
    targets.sort(key=lambda t: t.uid)
    return targets


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
