"""Minimum Bayes risk search: one module per method, each a frozen dataclass of its settings.

========================== ===================================== ==============================
method                     module                                settings
========================== ===================================== ==============================
``exact``                  :mod:`metricwise.mbr.exact`           none
``prune``                  :mod:`metricwise.mbr.prune`           first_round, growth, bootstrap,
                                                                 min_wins, seed
``aggregate``              :mod:`metricwise.mbr.aggregate`       none (chrF)
``aggregate_to_fine``      :mod:`metricwise.mbr.aggregate`       top (chrF)
========================== ===================================== ==============================

``decide(..., mbr="prune")`` names a method with its default settings;
``decide(..., mbr=Prune(bootstrap=1000))`` sets them. A pointwise metric (a reward model) needs
no search: its best-of-N is reported as method ``"pointwise"``. The ranking, tie-breaking and
memory budget every method shares are in :mod:`metricwise.mbr.ranking`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from metricwise.errors import InvalidParameterError, UnknownNameError, did_you_mean
from metricwise.mbr.aggregate import Aggregate, AggregateToFine
from metricwise.mbr.base import MBRMethod
from metricwise.mbr.exact import Exact
from metricwise.mbr.prune import Prune
from metricwise.mbr.ranking import Scored, best_index, check_ranked
from metricwise.metrics.base import Metric
from metricwise.types import MBRStats

__all__ = [
    "METHODS",
    "Aggregate",
    "AggregateToFine",
    "Exact",
    "MBRMethod",
    "Prune",
    "Scored",
    "resolve_method",
    "search",
]

#: The methods by name, in the order ``--help`` lists them.
METHODS: dict[str, type[MBRMethod]] = {
    cls.name: cls for cls in (Exact, Prune, Aggregate, AggregateToFine)
}


def resolve_method(method: object) -> MBRMethod:
    """An :class:`MBRMethod` from a name (its default settings) or a method object."""
    if isinstance(method, MBRMethod):
        return method
    if isinstance(method, str) and method in METHODS:
        return METHODS[method]()
    names = list(METHODS)
    raise UnknownNameError(
        f"The 'mbr' parameter of decide must be one of {', '.join(names)} (or an MBR method "
        f"object such as metricwise.mbr.Prune(bootstrap=1000)). Got {method!r} instead."
        f"{did_you_mean(str(method), names)}"
    )


def search(
    metric: Metric,
    hypotheses: list[Any],
    evidence: np.ndarray,
    refs: list[Any],
    weights: np.ndarray,
    counts: np.ndarray,
    method: MBRMethod,
    context: str | None = None,
) -> Scored:
    """The MBR choice among ``hypotheses`` against the weighted distinct samples ``refs``.

    Parameters
    ----------
    metric:
        The utility (or loss).
    hypotheses:
        H distinct candidates (for MBR over the samples, the same list object as ``refs``).
    evidence:
        Shape (H,): each hypothesis's weight among the samples, for tie-breaking.
    refs, weights, counts:
        R distinct samples, shape (R,) weights summing to 1, and shape (R,) how many samples
        each stands for.
    method:
        An :class:`MBRMethod` (see :data:`METHODS`). Ignored for a pointwise metric
        (``metric.pointwise``), whose expected utility is its score: H evaluations of
        ``metric.pointwise_scores`` decide, reported as method ``"pointwise"``.
    context:
        The question, passed to a pointwise metric's ``pointwise_scores``.

    Returns
    -------
    Scored
        The chosen hypothesis, its exact expected metric against all of ``refs`` (for the
        approximations one more row of R evaluations), and :class:`MBRStats`.
    """
    n_h, n_r = len(hypotheses), len(refs)
    if metric.pointwise:
        # sum_j w_j u(h, y_j) = u(h) when u ignores y (the weights sum to 1): best-of-N.
        scores = np.asarray(metric.pointwise_scores(hypotheses, context=context), dtype=np.float64)
        if scores.shape != (n_h,):
            raise InvalidParameterError(
                f"The pointwise_scores of metric {metric.name!r} must return shape ({n_h},), one "
                f"score per hypothesis. Got shape {scores.shape} instead."
            )
        check_ranked(scores, metric, hypotheses)
        best = best_index(scores, evidence, hypotheses, metric.higher_is_better)
        stats = MBRStats("pointwise", n_h, n_r, evaluations=n_h, rounds=1, remaining=n_h)
        return Scored(hypotheses[best], float(scores[best]), stats)
    return method.choose(metric, hypotheses, evidence, refs, weights, counts)
