"""What every MBR method shares: how scores are ranked and ties broken, the memory budget of a
utility matrix, and the scorer of (hypothesis, reference) pairs that computes each string's
statistics once. :mod:`metricwise.decide`'s closed-form rules rank with the same functions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeGuard

import numpy as np

from metricwise.errors import InvalidParameterError, MetricwiseError
from metricwise.metrics.base import AggregatableMetric, Metric, StatisticsMetric
from metricwise.types import MBRStats

TIE_RTOL = 1e-9
#: Memory that one ``metric.pairwise`` call of a rule may use, in bytes. A (C, R) matrix that
#: does not fit is filled in blocks of candidate rows, so a decision over tens of thousands of
#: distinct samples stays in bounded memory instead of asking for C x C x 8 bytes at once.
PAIRWISE_BUDGET_BYTES = 256 * 1024 * 1024
#: How many (rows, R) float64 arrays a metric holds at once while filling one block: chrF keeps
#: one match matrix per order (6 by default) and about as many temporaries for its F-score.
PAIRWISE_WORKING_COPIES = 16


def value_key(value: Any) -> tuple[int, Any]:
    if isinstance(value, (int, float)):
        return (0, float(value))
    return (1, str(value))


def support_order(values: list[Any], weights: np.ndarray) -> list[int]:
    return sorted(range(len(values)), key=lambda k: (-weights[k], value_key(values[k])))


def best_index(
    scores: np.ndarray, weights: np.ndarray, values: list[Any], higher_is_better: bool
) -> int:
    """Index of the optimal score; ties go to the heavier candidate, then the smaller value."""
    tied = tied_with_max(scores if higher_is_better else -scores)
    return min(tied, key=lambda k: (-weights[k], value_key(values[k])))


def check_ranked(scores: np.ndarray, metric: Metric, hypotheses: Sequence[Any]) -> None:
    """Raise a clear error when a metric gave NaN, which no rule can rank (a model-based
    utility overflowing in half precision, say); -inf and +inf rank as the worst and best."""
    bad = np.flatnonzero(np.isnan(scores))
    if bad.size:
        raise MetricwiseError(
            f"The metric {metric.name!r} gave NaN for {bad.size} of {len(scores)} hypotheses "
            f"(the first: {str(hypotheses[int(bad[0])])[:60]!r}), which cannot be ranked. "
            "Check the metric (a model in float16 can overflow; try float32)."
        )


def tied_with_max(scores: np.ndarray) -> list[int]:
    """Indices of the scores within the tie tolerance (``TIE_RTOL``, relative) of the maximum."""
    best = float(np.max(scores))
    if math.isinf(best):  # all -inf (nothing usable) or some +inf: equal to the maximum
        return [k for k in range(len(scores)) if scores[k] == best]
    tol = TIE_RTOL * max(1.0, abs(best))
    return [k for k in range(len(scores)) if scores[k] >= best - tol]


def expected_scores(
    metric: Metric, cands: list[Any], refs: list[Any], weights: np.ndarray
) -> np.ndarray:
    """Shape (C,): ``sum_j weights[j] * metric(cands[i], refs[j])`` for every candidate.

    Parameters
    ----------
    metric:
        The metric whose ``pairwise`` fills the (C, R) matrix.
    cands, refs:
        C candidates and R references (for MBR the same list object on both sides).
    weights:
        Shape (R,), the references' weights.

    Notes
    -----
    The (C, R) float64 matrix is filled in one call when it fits in ``PAIRWISE_BUDGET_BYTES``
    (allowing ``PAIRWISE_WORKING_COPIES`` arrays of its size for the metric's intermediates):
    with identical lists a metric then computes every string's features once. Otherwise it is
    filled in blocks of candidate rows, each reduced to its expected scores before the next, so
    peak memory does not grow with C x R. Time is O(C x R) metric evaluations either way; the
    blocked path repeats the references' per-string features once per block, except for a
    metric with ``statistics`` (chrF, BLEU, token F1), whose statistics are computed once and
    compared block by block (the same values).
    """
    rows = block_rows(len(refs))
    if len(cands) <= rows:
        return metric.pairwise(cands, refs) @ weights
    if has_statistics(metric):
        return PairScorer(metric, cands, refs).expected(np.arange(len(cands)), weights)
    starts = range(0, len(cands), rows)
    return np.concatenate([metric.pairwise(cands[i : i + rows], refs) @ weights for i in starts])


def cell_budget() -> int:
    """How many float64 cells one utility matrix may hold within the memory budget."""
    return PAIRWISE_BUDGET_BYTES // (8 * PAIRWISE_WORKING_COPIES)


def block_rows(n_refs: int) -> int:
    """Candidate rows per ``pairwise`` call that keep a call within the memory budget (>= 1)."""
    return max(1, cell_budget() // max(1, n_refs))


def has_statistics(metric: Metric) -> TypeGuard[StatisticsMetric]:
    """Whether ``metric`` computes per-string statistics once and compares row subsets of them
    (a :class:`~metricwise.metrics.base.StatisticsMetric`: chrF, BLEU, token F1)."""
    return isinstance(metric, StatisticsMetric)


def can_aggregate(metric: Metric) -> TypeGuard[AggregatableMetric]:
    """Whether ``metric`` scores hypotheses against averaged statistics (chrF)."""
    return isinstance(metric, AggregatableMetric)


class PairScorer:
    """Utilities of (hypothesis, reference) index pairs, with the per-string work done once.

    A metric with statistics (see :func:`has_statistics`) has them computed once for all
    strings, and each call compares row subsets of them; any other metric gets
    ``pairwise`` on the strings. ``evaluations`` counts the pairs scored.
    """

    def __init__(self, metric: Metric, hypotheses: list[Any], refs: list[Any]) -> None:
        self.metric = metric
        self.hypotheses, self.refs = hypotheses, refs
        self.evaluations = 0
        self.stats: Any = None
        self.stats_metric: StatisticsMetric | None = None
        if has_statistics(metric):
            same = hypotheses is refs
            self.stats_metric = metric
            self.stats = metric.statistics(hypotheses if same else [*hypotheses, *refs])
            self.hyp_rows = np.arange(len(hypotheses))
            self.ref_rows = self.hyp_rows if same else len(hypotheses) + np.arange(len(refs))

    def pairwise(self, hyp_index: np.ndarray, ref_index: np.ndarray) -> np.ndarray:
        """Shape (len(hyp_index), len(ref_index)): ``u(hypotheses[i], refs[j])``."""
        self.evaluations += len(hyp_index) * len(ref_index)
        if self.stats_metric is None:
            return self.metric.pairwise(
                [self.hypotheses[i] for i in hyp_index], [self.refs[j] for j in ref_index]
            )
        take = self.stats.take
        return self.stats_metric.pairwise_statistics(
            take(self.hyp_rows[hyp_index]), take(self.ref_rows[ref_index])
        )

    def expected(self, hyp_index: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """Shape (len(hyp_index),): exact expected metric against all references, in blocks
        of rows under the memory budget (as :func:`expected_scores`)."""
        rows = block_rows(len(self.refs))
        everything = np.arange(len(self.refs))
        parts = [
            self.pairwise(hyp_index[i : i + rows], everything) @ weights
            for i in range(0, len(hyp_index), rows)
        ]
        return np.concatenate(parts) if parts else np.zeros(0)

    def aggregate(self, weights: np.ndarray) -> np.ndarray:
        """Shape (H,): each hypothesis against the ``weights``-averaged references."""
        metric = self.metric
        if not can_aggregate(metric):  # refused before any work (see _check_mbr)
            raise InvalidParameterError(f"The metric {metric.signature()!r} cannot aggregate.")
        take = self.stats.take
        return metric.aggregate_statistics(take(self.hyp_rows), take(self.ref_rows), weights)


@dataclass(frozen=True)
class Scored:
    """A rule's output together with its expected score, when the rule computed it anyway."""

    value: Any
    expected: float
    mbr: MBRStats | None = None
