"""Exact MBR: every hypothesis against every reference, H x R evaluations (in blocks of rows
under the memory budget)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from metricwise.mbr.base import MBRMethod
from metricwise.mbr.ranking import Scored, best_index, check_ranked, expected_scores
from metricwise.metrics.base import Metric
from metricwise.types import MBRStats


@dataclass(frozen=True)
class Exact(MBRMethod):
    """argmax over hypotheses h of sum_j w_j u(h, y_j), every pair evaluated."""

    name = "exact"

    def choose(
        self,
        metric: Metric,
        hypotheses: list[Any],
        evidence: np.ndarray,
        refs: list[Any],
        weights: np.ndarray,
        counts: np.ndarray,
    ) -> Scored:
        n_h, n_r = len(hypotheses), len(refs)
        expected = expected_scores(metric, hypotheses, refs, weights)
        check_ranked(expected, metric, hypotheses)
        best = best_index(expected, evidence, hypotheses, metric.higher_is_better)
        stats = MBRStats("exact", n_h, n_r, evaluations=n_h * n_r, rounds=1, remaining=n_h)
        return Scored(hypotheses[best], float(expected[best]), stats)
