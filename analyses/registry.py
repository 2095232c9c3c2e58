"""Where the analyses live: names ``c1`` .. ``c8`` (claims) and ``e1`` .. ``e4`` (the paper's training
experiments) mapped to modules, imported only when used.

A module for claim ``cN`` is the file ``analyses/cN_<anything>.py`` (``eN`` likewise); it is
found by that prefix, so adding an analysis needs no edit here. A missing or
broken module is reported (:class:`AnalysisUnavailable`), never crashes the
other analyses.
"""
from __future__ import annotations

import importlib
import time
from pathlib import Path
from types import ModuleType

from analyses.common import AnalysisResult, check_scale

CLAIMS: tuple[str, ...] = tuple(f"c{i}" for i in range(1, 9))
EXPERIMENTS: tuple[str, ...] = tuple(f"e{i}" for i in range(1, 5))
NAMES: tuple[str, ...] = CLAIMS + EXPERIMENTS
_PACKAGE_DIR = Path(__file__).resolve().parent


class AnalysisUnavailable(RuntimeError):
    """The analysis module is missing or fails to import."""


def normalize_name(name: str) -> str:
    """``"C5"``, ``"c5"`` or ``"c5_lecun"`` -> ``"c5"``; a one-line ``ValueError`` for anything else.

    Examples
    --------
    >>> normalize_name("C5")
    'c5'
    """
    key = str(name).strip().lower().split("_", 1)[0]
    if key not in NAMES:
        raise ValueError(f"unknown analysis {name!r}; valid choices: {', '.join(NAMES)}")
    return key


def parse_names(spec: str | None) -> list[str]:
    """A comma-separated list (``"C1,C5"``) -> normalized names in claim order; ``None``/empty -> all."""
    if spec is None or not spec.strip():
        return list(NAMES)
    chosen = {normalize_name(part) for part in spec.split(",") if part.strip()}
    return [n for n in NAMES if n in chosen]


def module_name(name: str) -> str | None:
    """The dotted module name for ``name`` or ``None`` when no file implements it."""
    key = normalize_name(name)
    candidates = sorted(_PACKAGE_DIR.glob(f"{key}_*.py"))
    return f"analyses.{candidates[0].stem}" if candidates else None


def load(name: str) -> ModuleType:
    """Import the analysis module for ``name``; raise :class:`AnalysisUnavailable` if it cannot."""
    key = normalize_name(name)
    dotted = module_name(key)
    if dotted is None:
        raise AnalysisUnavailable(f"{key}: no module analyses/{key}_*.py")
    try:
        module = importlib.import_module(dotted)
    except Exception as exc:  # a broken analysis must not take the others down
        raise AnalysisUnavailable(f"{key}: {dotted} failed to import: {type(exc).__name__}: {exc}") from exc
    # A training experiment (e1..e4) declares its sweeps, ``collect`` and ``conclude``, and runs through
    # analyses.experiments.run_experiment; a claim's analysis has its own ``run``.
    required = ("CLAIM", "TITLE") + (("PARAMS", "sweeps", "collect", "conclude", "RESULT_TABLES")
                                     if is_experiment(module) else ("run",))
    for attr in required:
        if not hasattr(module, attr):
            raise AnalysisUnavailable(f"{key}: {dotted} lacks {attr}")
    return module


def is_experiment(module: ModuleType) -> bool:
    """Whether ``module`` is a training experiment (it declares ``sweeps``) rather than a claim's checks."""
    return hasattr(module, "sweeps")


def available() -> dict[str, str | None]:
    """Name -> module (or ``None`` where missing), without importing anything."""
    return {n: module_name(n) for n in NAMES}


def run_analysis(name: str, scale: str, out: str | Path, seed: int = 0,
                 from_results: str | Path | None = None, dataset: str | None = None,
                 train: bool = True) -> AnalysisResult:
    """Run one analysis into ``out`` and save its checks and summary there.

    Parameters
    ----------
    name : str
        ``"c1"`` .. ``"c8"`` or ``"e1"`` .. ``"e4"`` (any case).
    scale : str
        ``"tiny"``, ``"small"`` or ``"paper"``.
    out : path
        Directory for its tables, figures, ``checks.csv`` and ``result.json``.
    seed : int
        Random seed passed to the analysis.
    from_results : path, optional
        A folder of the analysis's committed compact tables (``results/<scale>/<name>``):
        redraw and re-judge from them instead of running anything (training experiments only).
    dataset : str, optional
        Train the experiment's runs on this dataset instead of its scale's (training experiments only).
    train : bool
        ``False``: judge what the experiment's sweeps hold so far, starting no run (training experiments only).
    """
    check_scale(scale)
    module = load(name)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if is_experiment(module):
        from analyses.experiments import redraw_experiment, run_experiment

        result = (redraw_experiment(module, scale, Path(from_results), out) if from_results is not None
                  else run_experiment(module, scale, out, seed, dataset, train=train))
    elif from_results is not None:
        raise ValueError(f"{normalize_name(name)} has no committed results to redraw; run it instead")
    elif dataset is not None or not train:
        raise ValueError(f"{normalize_name(name)} runs no sweeps; --dataset and --no-train apply to e1..e4")
    else:
        result = module.run(scale, out, seed=seed)
    if not isinstance(result, AnalysisResult):
        raise AnalysisUnavailable(f"{name}: run() returned {type(result).__name__}, not AnalysisResult")
    result.notes.append(f"ran in {time.perf_counter() - start:.1f} s at scale {scale!r}, seed {seed}")
    result.save(out)
    return result
