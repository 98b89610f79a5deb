"""MBR against aggregated references (DeNero, Chiang and Knight, "Fast Consensus Decoding over
Translation Forests", ACL 2009; Vamvas and Sennrich, "Linear-time Minimum Bayes Risk Decoding
with Reference Aggregation", 2024): the R references replaced by one whose n-gram counts are
their weighted average. For an :class:`~metricwise.metrics.base.AggregatableMetric` (chrF)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from metricwise.mbr.base import MBRMethod
from metricwise.mbr.ranking import PairScorer, Scored, best_index, support_order
from metricwise.metrics.base import Metric
from metricwise.types import MBRStats


@dataclass(frozen=True)
class Aggregate(MBRMethod):
    """Each hypothesis scored once against the aggregated reference: O(H + R), a different
    objective (the metric of the average, not the average of the metric)."""

    name = "aggregate"
    needs_aggregation = True

    def search(
        self, scorer: PairScorer, evidence: np.ndarray, weights: np.ndarray, counts: np.ndarray
    ) -> tuple[int, int, int]:
        return self._choice(scorer, evidence, weights), 1, len(scorer.hypotheses)

    def _choice(self, scorer: PairScorer, evidence: np.ndarray, weights: np.ndarray) -> int:
        """Index of the hypothesis with the best metric against the aggregated reference.

        DeNero et al. (2009); Vamvas and Sennrich (2024): O(total n-grams) for all H scores instead
        of H x R pairwise evaluations. Ties are broken as exact MBR breaks them.
        """
        scores = scorer.aggregate(weights)
        return best_index(scores, evidence, scorer.hypotheses, scorer.metric.higher_is_better)


@dataclass(frozen=True)
class AggregateToFine(MBRMethod):
    """Aggregate-to-fine (Vamvas and Sennrich 2024): the ``top`` hypotheses best against the
    aggregated reference go on to their exact expected utility.

    Attributes
    ----------
    top:
        How many go on. On chrF at N = 1024 (bench/mbr_speed.py sets, seed 0) 16 missed exact
        MBR's answer in 1 of 10 paraphrase sets and 32 in none (nor in any STS-B or SQuAD
        window), for about 13 ms more per decision.
    """

    name = "aggregate_to_fine"
    needs_aggregation = True
    top: int = 32

    def choose(
        self,
        metric: Metric,
        hypotheses: list[Any],
        evidence: np.ndarray,
        refs: list[Any],
        weights: np.ndarray,
        counts: np.ndarray,
    ) -> Scored:
        scorer = PairScorer(metric, hypotheses, refs)
        best, remaining, expected_best = self._choice(scorer, evidence, weights)
        stats = MBRStats(
            self.name, len(hypotheses), len(refs), scorer.evaluations, rounds=2, remaining=remaining
        )
        return Scored(hypotheses[best], expected_best, stats)

    def _choice(
        self, scorer: PairScorer, evidence: np.ndarray, weights: np.ndarray
    ) -> tuple[int, int, float]:
        """(index of the chosen hypothesis, how many went on to the exact stage, its exact
        expected metric).

        Aggregate-to-fine MBR (Vamvas and Sennrich 2024): the ``self.top`` hypotheses best
        against the aggregated reference (ties at the cut kept in the order exact MBR would break
        them) are scored exactly against every reference, and the best of those wins, ties broken
        as exact MBR breaks them. Cost O(entries) + ``self.top`` x R evaluations.
        """
        hypotheses = scorer.hypotheses
        if len(hypotheses) <= self.top:  # all of them go on: the aggregate ranks nothing
            top = np.arange(len(hypotheses))
        else:
            sign = 1.0 if scorer.metric.higher_is_better else -1.0
            coarse = sign * scorer.aggregate(weights)
            # Stable sort from the order exact MBR's tie-break prefers (more weight, then value).
            ranked = sorted(support_order(hypotheses, evidence), key=lambda i: -coarse[i])
            top = np.array(sorted(ranked[: self.top]))
        fine = scorer.expected(top, weights)
        local = best_index(
            fine, evidence[top], [hypotheses[i] for i in top], scorer.metric.higher_is_better
        )
        return int(top[local]), len(top), float(fine[local])
