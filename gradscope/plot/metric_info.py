"""What each sample-quality metric of a run means: its scale, which way is better, and the real-data floor.

The one place these words live: the report's metric table, its metric figure
and the explanations under them read :func:`metric_info`. Metric names are
those the trainer logs (:func:`gradscope.metrics.evaluate_generator`):
``<family>_fid``, ``<family>_is_mean`` / ``_is_std``, ``<family>_kid_mean`` /
``_kid_std`` with family ``digits``, ``mnist`` or ``inception``, and
``modes_covered``, ``high_quality_fraction``, ``kl_uniform`` on the 2D mixtures.
The direction rule is the one ``gradscope run`` prints after its final metrics
(``gradscope.train.api``).

*Floors*: what real data scores against the same reference on the same
number of samples, i.e. what a perfect generator would reach. FID is biased
upwards at finite sample counts, so a floor holds for its sample count only.
The mnist floors are measured (``results/small/e2/e2_floor.csv.gz``: five
disjoint draws of 2,000 real MNIST digits, as in the README); KID is an
unbiased estimate, so real data scores about 0 at any count.

This module imports nothing heavy, so any part of gradscope can use it.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FAMILIES", "Floor", "MetricInfo", "better_hint", "floor_for", "is_quality_metric", "metric_info",
           "quality_metrics"]

#: Feature spaces of the image metrics: prefix -> (words for the features, classes of the classifier).
FAMILIES: dict[str, tuple[str, int]] = {
    "mnist": (("the 128 penultimate features of a small CNN trained on the same MNIST digits; such numbers "
               "compare runs with each other, not with Inception numbers"), 10),
    "digits": (("the 128 penultimate features of a small CNN trained on sklearn's 8x8 digits; such numbers "
                "compare runs with each other, not with Inception numbers"), 10),
    "inception": (("Inception-v3 pool features, the feature space of published numbers (which usually use "
                   "50,000 samples; fewer samples give a higher FID)"), 1000),
}
#: Order of the metric kinds in tables and figures.
_KIND_ORDER = ("fid", "is_mean", "kid_mean", "modes_covered", "high_quality_fraction", "kl_uniform")


@dataclass(frozen=True)
class Floor:
    """The real-vs-real score: ``value`` (``low``-``high`` over draws) on ``n_samples`` samples (None: any)."""

    value: float
    n_samples: int | None
    low: float | None = None
    high: float | None = None

    def words(self) -> str:
        spread = f" ({self.low:.2f}-{self.high:.2f} over 5 draws)" if self.low is not None else ""
        count = f"on {self.n_samples:,} samples" if self.n_samples else "at any sample count"
        return f"real data score {self.value:.3g}{spread} {count}"


#: Measured floors: scalar name -> floors by sample count (see the module docstring).
FLOORS: dict[str, tuple[Floor, ...]] = {
    "mnist_fid": (Floor(0.71, 2000, 0.50, 0.94),),
    "mnist_is_mean": (Floor(9.2, 2000, 9.17, 9.26),),
}


@dataclass(frozen=True)
class MetricInfo:
    """Words for one logged metric.

    ``short`` names it on axes and in table headers (``mnist-FID``); ``unit``
    is its unit for an axis label; ``better`` is ``"lower"``, ``"higher"`` or
    ``None``; ``scale`` its range; ``definition`` what it measures; ``space`` the
    features it is computed on (image metrics); ``std_name`` the scalar holding its spread, if any; ``floors`` the known
    real-vs-real scores.
    """

    name: str
    kind: str
    short: str
    unit: str
    better: str | None
    scale: str
    definition: str
    space: str = ""
    std_name: str | None = None
    floors: tuple[Floor, ...] = ()

    def axis_label(self) -> str:
        """``"mnist-FID (feature units^2)\\nlower is better"``."""
        unit = f" ({self.unit})" if self.unit else ""
        return f"{self.short}{unit}" + (f"\n{self.better} is better" if self.better else "")

    def explanation(self, n_samples: int | None = None) -> str:
        """One paragraph: definition, scale, direction, and the floor for ``n_samples`` where known."""
        parts = [f"{self.definition}."] + ([f"{self.space}."] if self.space else []) + [f"Scale: {self.scale}."]
        if self.better:
            parts.append(f"{self.better.capitalize()} is better.")
        floor = floor_for(self.name, n_samples)
        if floor is not None:
            parts.append(f"Floor: {floor.words()} (drawn dashed).")
        elif self.floors:
            known = "; ".join(f.words() for f in self.floors)
            where = f"these runs used {n_samples:,}" if n_samples else "the runs' sample count is not recorded"
            bias = " (FID is biased upwards at fewer samples)" if self.kind == "fid" else ""
            parts.append(f"Floor known for another sample count only: {known}; {where}, so it is not drawn{bias}.")
        return " ".join(parts)


def _family(name: str) -> tuple[str | None, str]:
    for family in FAMILIES:
        if name.startswith(family + "_"):
            return family, name[len(family) + 1:]
    return None, name


def metric_info(name: str) -> MetricInfo | None:
    """The :class:`MetricInfo` of a logged scalar, or ``None`` when it is not a sample-quality metric.

    Examples
    --------
    >>> metric_info("mnist_fid").better, metric_info("mnist_is_mean").short
    ('lower', 'mnist-IS')
    >>> metric_info("loss_d") is None
    True
    """
    family, kind = _family(name)
    floors = FLOORS.get(name, ())
    if family is not None:
        space, classes = FAMILIES[family]
        space = f"Computed on {space}"
        if kind == "fid":
            return MetricInfo(name, kind, f"{family}-FID", "feature units\u00b2", "lower",
                              "0 (identical Gaussian fits) and up, unbounded",
                              "Fr\u00e9chet distance between Gaussians fitted to the features of real and of "
                              "generated images", space=space, floors=floors)
        if kind == "is_mean":
            return MetricInfo(name, kind, f"{family}-IS", "effective classes", "higher",
                              f"1 to {classes} (the number of classes)",
                              "Inception Score exp(E KL(p(y|x) || p(y))) of the classifier's predictions: high "
                              "when each sample is confidently one class and the classes are diverse; mean over "
                              "10 splits", space=space, std_name=f"{family}_is_std", floors=floors)
        if kind == "kid_mean":
            return MetricInfo(name, kind, f"{family}-KID", "feature units\u00b2", "lower",
                              "about 0 for real data (an unbiased estimate: it can be slightly negative), and up",
                              "Kernel Inception Distance: the unbiased squared MMD between real and generated "
                              "features under a cubic polynomial kernel, mean over random subsets", space=space,
                              std_name=f"{family}_kid_std", floors=floors or (Floor(0.0, None),))
        return None
    if name == "modes_covered":
        return MetricInfo(name, name, "modes covered", "modes", "higher", "0 to the number of modes (8 on "
                          "ring8, 25 on grid25)", "Mixture modes with at least one high-quality sample "
                          "(one within 3 standard deviations of the mode's centre)")
    if name == "high_quality_fraction":
        return MetricInfo(name, name, "high-quality fraction", "", "higher", "0 to 1",
                          "Share of samples within 3 standard deviations of their nearest mode")
    if name == "kl_uniform":
        return MetricInfo(name, name, "KL to uniform modes", "nats", "lower", "0 (every mode equally often) "
                          "and up", "KL divergence of the high-quality samples' mode histogram from uniform")
    return None


def is_quality_metric(name: str) -> bool:
    """Whether ``name`` is a sample-quality metric shown on its own (``*_std`` spreads are not)."""
    return metric_info(name) is not None


def quality_metrics(names) -> list[str]:
    """The sample-quality metrics among ``names``, in display order (FID, IS, KID, then the mode metrics)."""
    found = {str(n) for n in names if is_quality_metric(str(n))}
    return sorted(found, key=lambda n: (_KIND_ORDER.index(metric_info(n).kind), n))


def floor_for(name: str, n_samples: int | None) -> Floor | None:
    """The real-vs-real floor of metric ``name`` measured on ``n_samples`` samples, or ``None`` if unknown."""
    info = metric_info(name)
    if info is None:
        return None
    for floor in info.floors:
        if floor.n_samples is None or (n_samples is not None and floor.n_samples == int(n_samples)):
            return floor
    return None


def better_hint(name: str) -> str:
    """``" (lower is better)"``, ``" (higher is better)"`` or ``""`` for a logged scalar.

    Examples
    --------
    >>> better_hint("mnist_fid"), better_hint("modes_covered"), better_hint("loss_d")
    (' (lower is better)', ' (higher is better)', '')
    """
    info = metric_info(name)
    return f" ({info.better} is better)" if info is not None and info.better else ""
