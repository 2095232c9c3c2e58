"""Layouts: how a layer's weights are linear operators, one small declared rule per layer type.

The recorder takes spectral statistics of every matrix-shaped weight it can
interpret. A *layout* says, for one module type, which of its parameters are
operators and how each is read as a matrix ``(out, in)``:

- ``Linear``: the weight itself; ``Conv{1,2,3}d``: the forward reshape
  ``(c_out, c_in/groups * prod(k))``, and a convolution on the layer's input
  size for the operator norm; ``ConvTranspose{1,2,3}d`` likewise with the output
  channels on dimension 1;
- ``Embedding`` / ``EmbeddingBag``: the table transposed (one-hot index -> vector);
- ``MultiheadAttention``: the packed ``in_proj_weight`` as three matrices
  (q, k, v), or the three separate projections; its ``out_proj`` is a ``Linear``;
- projections stored ``(in, out)``, such as ``transformers``' ``Conv1D``
  (matched by class name, so ``transformers`` is never imported): the weight
  transposed;
- recurrent layers (``RNN``, ``LSTM``, ``GRU``): every ``weight_ih_*`` / ``weight_hh_*``.

Register a rule for your own module with :func:`register_layout`.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import Tensor, nn
from torch.nn.utils import parametrize

from gradscope.linalg.reshape import forward_dim, reshape_weight

MATRIX, CONV = "matrix", "conv"
OPERATOR_KINDS = (MATRIX, CONV)


@dataclass(frozen=True)
class Operator:
    """One weight of a layer read as a linear operator.

    Parameters
    ----------
    param : str
        The parameter's name on the module (``"weight"``, ``"in_proj_weight"``); for a
        parametrized weight, the name of the parametrized tensor.
    view : callable, optional
        ``weight -> (out, in)`` matrix (a view where possible); ``None``: the weight is that matrix.
    label : str
        Tells apart several operators cut from one parameter (``"q"``, ``"k"``, ``"v"``).
    kind : {"matrix", "conv"}
        ``"conv"``: the layer is a convolution whose operator norm on its input size
        (``sigma_op``) differs from the matrix norm of ``view(weight)``.
    lecun : bool
        Whether the LeCun ratio ``fan_in * Var(W)`` means something for it (not for an
        embedding table, whose input is one-hot).

    Examples
    --------
    >>> Operator("weight", view=lambda w: w.t()).name("h.0.mlp.c_fc")
    'h.0.mlp.c_fc'
    >>> Operator("in_proj_weight", label="q").name("attn")
    'attn.in_proj_weight[q]'
    """

    param: str
    view: Callable[[Tensor], Tensor] | None = None
    label: str = ""
    kind: str = MATRIX
    lecun: bool = True

    def __post_init__(self) -> None:
        if self.kind not in OPERATOR_KINDS:
            raise ValueError(f"unknown operator kind {self.kind!r}; valid: {', '.join(OPERATOR_KINDS)}")

    def matrix(self, weight: Tensor) -> Tensor:
        """The weight as an ``(out, in)`` matrix."""
        return weight if self.view is None else self.view(weight)

    def name(self, layer: str) -> str:
        """The row name of this operator in a layer named ``layer``: the layer itself for its plain weight."""
        if self.param == "weight" and not self.label:
            return layer
        return f"{layer}.{self.param}" + (f"[{self.label}]" if self.label else "")


#: A layout: ``module -> its operators`` (an empty list: the module has no matrix-shaped weight).
Layout = Callable[[nn.Module], Sequence[Operator]]
LayoutKey = type | str

_LAYOUTS: dict[LayoutKey, Layout] = {}


def register_layout(module_type: LayoutKey, layout: Layout) -> None:
    """Declare how the weights of ``module_type`` (a class, or a ``"module.QualName"`` string) are operators.

    Subclasses inherit their base's layout unless they have their own. A
    string key matches a class by its qualified name without importing it.

    Examples
    --------
    >>> import torch
    >>> class Bilinear2(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.kernel = nn.Parameter(torch.zeros(3, 5))   # stored (in, out)
    >>> register_layout(Bilinear2, lambda m: [Operator("kernel", view=lambda w: w.t())])
    >>> [op.param for op in operators_of("b", Bilinear2())]
    ['kernel']
    """
    if not (isinstance(module_type, type) and issubclass(module_type, nn.Module)) and \
            not (isinstance(module_type, str) and "." in module_type):
        raise ValueError(f"module_type must be an nn.Module subclass or a 'package.module.ClassName' string, "
                         f"got {module_type!r}")
    if not callable(layout):
        raise ValueError(f"layout must be callable (module -> list of Operator), got {type(layout).__name__}")
    _LAYOUTS[module_type] = layout


def layout_of(module: nn.Module) -> Layout | None:
    """The layout that applies to ``module`` (nearest class in its MRO), or ``None``."""
    for cls in type(module).__mro__:
        found = _LAYOUTS.get(cls) or _LAYOUTS.get(f"{cls.__module__}.{cls.__qualname__}")
        if found is not None:
            return found
    return None


def module_tensor(module: nn.Module, name: str) -> Tensor:
    """The tensor ``name`` of ``module`` as the layer uses it (parametrized tensors included)."""
    if parametrize.is_parametrized(module, name):
        return module.parametrizations[name].original
    return getattr(module, name)


def operators_of(path: str, module: nn.Module) -> list[Operator] | None:
    """The validated operators of ``module`` (named ``path``), or ``None`` when no layout applies.

    Raises
    ------
    ValueError
        When a layout names a parameter the module lacks, or its view of the
        weight is not a matrix (naming the module).
    """
    layout = layout_of(module)
    if layout is None:
        return None
    operators = list(layout(module))
    where = f"layout of {type(module).__name__} {path or 'root'!r}"
    for op in operators:
        if not isinstance(op, Operator):
            raise ValueError(f"{where}: a layout returns Operator objects, got {type(op).__name__}")
        # getattr (and hasattr) on a parametrized tensor would run its parametrization: read the original.
        weight = getattr(module, op.param, None) if not parametrize.is_parametrized(module, op.param) else \
            module_tensor(module, op.param)
        if not isinstance(weight, Tensor):
            raise ValueError(f"{where}: the module has no tensor {op.param!r}")
        try:
            matrix = op.matrix(weight.detach())
        except (RuntimeError, ValueError, IndexError) as exc:
            raise ValueError(f"{where}: cannot view {op.param} of shape {tuple(weight.shape)} as a matrix ({exc})"
                             ) from None
        if not isinstance(matrix, Tensor) or matrix.ndim != 2:
            shape = tuple(matrix.shape) if isinstance(matrix, Tensor) else type(matrix).__name__
            raise ValueError(f"{where}: {op.param} of shape {tuple(weight.shape)} must view as a 2-d matrix, "
                             f"got {shape}")
    return operators


# --- the built-in layouts -------------------------------------------------------------------------
def _conv(module: nn.Module) -> list[Operator]:
    dim = forward_dim(isinstance(module, nn.modules.conv._ConvTransposeNd))
    return [Operator("weight", view=lambda w: reshape_weight(w, dim), kind=CONV)]


def _transposed_weight(module: nn.Module) -> list[Operator]:
    return [Operator("weight", view=lambda w: w.t())]


def _embedding(module: nn.Module) -> list[Operator]:
    return [Operator("weight", view=lambda w: w.t(), lecun=False)]


def _stored_in_out(module: nn.Module) -> list[Operator]:
    # transformers' Conv1D keeps its weight (in, out) and computes x @ W + b.
    nf, shape = getattr(module, "nf", None), tuple(module_tensor(module, "weight").shape)
    if nf is not None and shape[-1] != nf:
        raise ValueError(f"{type(module).__name__} weight of shape {shape} does not end in "
                         f"nf={nf}: not an (in, out) projection")
    return _transposed_weight(module)


def _attention(module: nn.Module) -> list[Operator]:
    if getattr(module, "_qkv_same_embed_dim", False):
        width, shape = module.embed_dim, tuple(module_tensor(module, "in_proj_weight").shape)
        if shape != (3 * width, width):
            raise ValueError(f"MultiheadAttention in_proj_weight of shape {shape} is "
                             f"not (3 * {width}, {width})")
        return [Operator("in_proj_weight", view=lambda w, i=i: w[i * width:(i + 1) * width], label=label)
                for i, label in enumerate("qkv")]
    return [Operator(f"{label}_proj_weight") for label in "qkv"]


def _recurrent(module: nn.Module) -> list[Operator]:
    return [Operator(name) for name, p in module.named_parameters(recurse=False)
            if name.startswith(("weight_ih", "weight_hh")) and p.ndim == 2]


register_layout(nn.Linear, lambda m: [Operator("weight")])
register_layout(nn.modules.conv._ConvNd, _conv)
register_layout(nn.Embedding, _embedding)
register_layout(nn.EmbeddingBag, _embedding)
register_layout(nn.MultiheadAttention, _attention)
register_layout(nn.RNNBase, _recurrent)
register_layout("transformers.pytorch_utils.Conv1D", _stored_in_out)
