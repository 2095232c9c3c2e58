"""``normalize``: apply one normalization mode to every Linear / Conv / ConvTranspose layer of a model."""
from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence

from torch import nn
from torch.nn.utils import parametrize

from gradscope._checks import check_choice, check_int_at_least, check_positive
from gradscope.norms.base import SpectralParametrization
from gradscope.norms.bidirectional import BidirectionalSpectralNorm
from gradscope.norms.gamma import GammaScaling, new_gamma
from gradscope.norms.schedule import POWER_SCHEDULES
from gradscope.norms.spectral import SpectralNorm
from gradscope.norms.strict import StrictSpectralNorm

NORMS = ("none", "sn", "bsn", "ssn", "bssn", "strict", "sn-same-gamma", "sn-diff-gamma")
SCALED_NORMS = ("ssn", "bssn")
#: The layers with a weight to normalize (and to initialize: :data:`gradscope.init.INITIALIZABLE_TYPES`).
SUPPORTED_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d,
                                                 nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
Skip = Collection[str] | Callable[[str, nn.Module], bool]


def _layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    found = []
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.lazy.LazyModuleMixin):
            raise ValueError(f"layer {name!r} is lazy ({type(module).__name__}); run a forward pass first")
        if parametrize.is_parametrized(module, "weight") or hasattr(module, "weight_orig"):
            raise ValueError(f"layer {name!r} is already normalized or parametrized; normalize a fresh model")
        if isinstance(module, SUPPORTED_LAYERS):
            found.append((name, module))
    return found


def _selected(layers: list[tuple[str, nn.Module]], skip: Skip) -> list[tuple[str, nn.Module]]:
    if callable(skip):
        return [(name, m) for name, m in layers if not skip(name, m)]
    if isinstance(skip, str):
        skip = (skip,)
    names = {name for name, _ in layers}
    unknown = sorted(set(skip) - names)
    if unknown:
        raise ValueError(f"skip names {unknown} are not normalizable layers; valid: {sorted(names)}")
    return [(name, m) for name, m in layers if name not in skip]


def _input_sizes(layers: list[tuple[str, nn.Module]], input_sizes: Mapping[str, int | Sequence[int]] | None,
                 ) -> Mapping[str, int | Sequence[int]]:
    input_sizes = dict(input_sizes or {})
    convs = {name for name, m in layers if isinstance(m, nn.modules.conv._ConvNd)}
    unknown = sorted(set(input_sizes) - convs)
    if unknown:
        raise ValueError(f"input_sizes names {unknown} are not normalized conv layers; valid: {sorted(convs)}")
    return input_sizes


def _parametrization(norm: str, module: nn.Module, scale: float, gamma: nn.Parameter | None,
                     input_size: int | Sequence[int] | None, power_schedule: str,
                     **common: float) -> SpectralParametrization:
    weight = module.weight
    transposed = isinstance(module, nn.modules.conv._ConvTransposeNd)
    if norm in ("bsn", "bssn"):
        return BidirectionalSpectralNorm(weight, transposed=transposed, scale=scale, gamma=gamma,
                                         power_schedule=power_schedule, **common)
    if norm == "strict" and isinstance(module, nn.modules.conv._ConvNd):
        return StrictSpectralNorm.from_module(module, input_size=input_size, scale=scale, gamma=gamma, **common)
    # a linear layer's operator norm is its matrix norm: strict = sn there
    return SpectralNorm(weight, transposed=transposed, scale=scale, gamma=gamma, power_schedule=power_schedule,
                        **common)


def normalize(model: nn.Module, norm: str = "sn", scale: float = 1.0, *, n_power_iterations: int = 1,
              skip: Skip = (), input_sizes: Mapping[str, int | Sequence[int]] | None = None,
              eps: float = 1e-12, power_schedule: str = "torch") -> nn.Module:
    """Normalize every ``Linear`` / ``Conv{1,2,3}d`` / ``ConvTranspose{1,2,3}d`` weight of ``model`` in place.

    Each layer's ``weight`` gets a ``torch.nn.utils.parametrize`` parametrization
    (a :class:`~gradscope.norms.base.SpectralParametrization`), so the model stays an
    ordinary module: ``state_dict``, ``deepcopy``, ``.to()``, DDP and double backward work.

    Parameters
    ----------
    model : torch.nn.Module
        The model (e.g. a discriminator); modified in place and returned.
    norm : str
        One of :data:`NORMS`:

        - ``"sn"``: Miyato's SN, divide by the norm of the kernel reshaped to ``(c_out, rest)``;
        - ``"bsn"``: divide by the mean of the forward and backward reshape norms;
        - ``"ssn"`` / ``"bssn"``: ``sn`` / ``bsn`` times the constant ``scale`` (the names of C7);
        - ``"strict"``: divide convolutions by their operator norm on the real input size;
        - ``"sn-same-gamma"`` / ``"sn-diff-gamma"``: ``sn`` times one learnable scalar shared by
          all layers / one per layer (initialized to 1), multiplying weight and bias;
        - ``"none"``: leave the model as it is (still validated).
    scale : float
        The constant ``c`` multiplying every normalized weight. ``ssn`` / ``bssn`` are the
        paper's names for ``sn`` / ``bsn`` with a scale; it applies to every normalizing mode
        (e.g. to tune ``strict``), and must be 1 for ``none``.
    n_power_iterations : int
        Power steps per training forward (none in eval mode); under ``power_schedule="authors"``,
        unstored steps per forward and stored steps per :func:`advance_power_iteration`.
    skip : collection of str or callable
        Layer names (as in ``model.named_modules()``) to leave alone, or a predicate
        ``skip(name, module) -> bool``.
    input_sizes : mapping, optional
        ``strict`` only: spatial input size per conv layer name; layers not listed take it
        from their first forward (run one before wrapping the model in DDP).
    eps : float
        Norm floor in the power-iteration normalizations (``"authors"``: added to the norm, as there).
    power_schedule : {"torch", "authors"}
        When the power iteration runs (:data:`POWER_SCHEDULES`, :mod:`gradscope.norms.schedule`):
        ``"torch"`` warms ``u`` up and advances it inside every training forward, treating it
        as a constant; ``"authors"`` (fjxmlzn/BSN) starts cold, takes one unstored,
        differentiable step per forward in any mode, and moves the stored ``u`` only when
        :func:`advance_power_iteration` is called (after each optimizer step of the model).
        The reshape norms only: ``strict`` raises ``ValueError``.

    Returns
    -------
    torch.nn.Module
        ``model``.

    Examples
    --------
    >>> from gradscope.norms import parametrization_of
    >>> d = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.LeakyReLU(0.1), nn.Flatten(), nn.Linear(8 * 4 * 4, 1))
    >>> d = normalize(d, "bssn", scale=1.2)
    >>> p = parametrization_of(d[0])
    >>> p.norm, p.scale, sorted(p.sigma_estimates())
    ('bssn', 1.2, ['sigma', 'sigma_bwd', 'sigma_fwd'])
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_choice("norm", norm, NORMS)
    check_positive("scale", scale)
    if float(scale) != 1.0 and norm == "none":
        raise ValueError(f"scale={scale} needs a normalizing mode; norm 'none' leaves the weights as they are")
    check_int_at_least("n_power_iterations", n_power_iterations, 1)
    check_positive("eps", eps)
    check_choice("power_schedule", power_schedule, POWER_SCHEDULES)
    if power_schedule == "authors" and norm == "strict":
        raise ValueError("power_schedule 'authors' applies to the reshape norms only (sn, ssn, bsn, bssn, "
                         "sn-same-gamma, sn-diff-gamma), not 'strict'")
    layers = _layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no layer to normalize; supported: "
                         + ", ".join(t.__name__ for t in SUPPORTED_LAYERS))
    layers = _selected(layers, skip)
    sizes = _input_sizes(layers, input_sizes)
    if sizes and norm != "strict":
        raise ValueError(f"input_sizes applies only to norm 'strict', not {norm!r}")
    if norm == "none":
        return model
    shared_gamma = new_gamma(layers[0][1].weight) if norm == "sn-same-gamma" and layers else None
    for name, module in layers:
        gamma = shared_gamma
        if norm == "sn-diff-gamma":
            gamma = new_gamma(module.weight)
        param = _parametrization(norm, module, float(scale), gamma, sizes.get(name), power_schedule,
                                 n_power_iterations=n_power_iterations, eps=float(eps))
        param.norm = norm
        lazy = isinstance(param, StrictSpectralNorm) and not param.materialized
        parametrize.register_parametrization(module, "weight", param, unsafe=lazy)
        if lazy:
            param.attach(module)
        if gamma is not None and module.bias is not None:
            parametrize.register_parametrization(module, "bias", GammaScaling(gamma))
        module.parametrizations.train(module.training)  # a model normalized in eval mode stays in eval mode
    return model
