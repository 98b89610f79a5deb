"""The contract of an MBR search method: a frozen settings dataclass that chooses one of H
hypotheses against R weighted references."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from metricwise.mbr.ranking import PairScorer, Scored
from metricwise.metrics.base import Metric
from metricwise.types import MBRStats


@dataclass(frozen=True)
class MBRMethod:
    """How an MBR decision searches for its answer; the fields are the method's settings.

    A method picks one of H distinct ``hypotheses`` against R distinct references ``refs``
    (weights summing to 1; ``counts`` samples each stand for), ties broken by ``evidence`` (each
    hypothesis's weight among the samples) as exact MBR breaks them, and reports its answer's
    exact expected metric and what it computed (:class:`~metricwise.types.MBRStats`).
    """

    #: The name ``decide(..., mbr=NAME)`` and ``--mbr NAME`` use.
    name: ClassVar[str] = ""
    #: Whether the method averages the references' statistics (an
    #: :class:`~metricwise.metrics.base.AggregatableMetric` such as chrF only).
    needs_aggregation: ClassVar[bool] = False

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
        best, rounds, remaining = self.search(scorer, evidence, weights, counts)
        n_h, n_r = len(hypotheses), len(refs)
        expected_best = float(scorer.pairwise(np.array([best]), np.arange(n_r))[0] @ weights)
        stats = MBRStats(
            self.name, n_h, n_r, scorer.evaluations, rounds=rounds, remaining=remaining
        )
        return Scored(hypotheses[best], expected_best, stats)

    def search(
        self, scorer: PairScorer, evidence: np.ndarray, weights: np.ndarray, counts: np.ndarray
    ) -> tuple[int, int, int]:
        """(index of the chosen hypothesis, rounds, hypotheses left at the end)."""
        raise NotImplementedError
