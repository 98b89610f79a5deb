"""Exact match and token F1 with the SQuAD v1.1 evaluation script's definitions.

Normalization (``normalize_answer``): lower-case, drop ASCII punctuation, drop the articles
"a", "an", "the", collapse whitespace. Token F1 is the harmonic mean of precision and recall of
the normalized tokens' multiset overlap; with several references the best one counts. As in
v1.1 (unlike the v2.0 script), an empty prediction or reference has F1 0, even against another
empty string.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from metricwise.metrics.base import Metric, StatisticsMetric, register
from metricwise.metrics.overlap import NgramStatistics, bag_sizes, token_statistics
from metricwise.text import equality_pairwise, f1_from_counts, normalize_answer


@register("exact_match")
class ExactMatch(Metric):
    """1.0 when the normalized answers are equal, else 0.0. Bayes decision: the weighted mode."""

    bayes_rule = "mode"

    def normalize(self, value: Any) -> Any:
        return normalize_answer(value)

    def _score_one(self, pred: Any, ref: Any) -> float:
        return float(normalize_answer(pred) == normalize_answer(ref))

    def pairwise(self, cands: Sequence[Any], refs: Sequence[Any]) -> np.ndarray:
        """(C, R) equality matrix of normalized answers, by integer codes; O(C x R) array work."""
        return equality_pairwise(cands, refs, self.normalize)


def _token_bag(text: Any) -> Counter:
    return Counter(normalize_answer(text).split())


@register("token_f1")
class TokenF1(StatisticsMetric):
    """SQuAD token F1 between normalized answers (0..1). Decided by MBR.

    ``pairwise`` scores distinct strings only: their tokens are numbered together
    (:meth:`statistics`) and every pair's token overlap comes from one
    :func:`metricwise.metrics.overlap.overlap_from_entries` call (sparse pairs and matrix
    products), instead of C x R ``Counter`` intersections.
    """

    def _score_one(self, pred: Any, ref: Any) -> float:
        p, r = _token_bag(pred), _token_bag(ref)
        overlap = np.array([[sum((p & r).values())]], dtype=np.float64)
        return float(
            f1_from_counts(overlap, bag_sizes([p])[:, None], bag_sizes([r])[None, :])[0, 0]
        )

    def statistics(self, texts: Sequence[Any]) -> NgramStatistics:
        """The normalized token bags of ``texts`` (``sizes[:, 0]``: token counts), numbered
        alike for all; compare rows of one call with :meth:`pairwise_statistics`."""
        return token_statistics([normalize_answer(x).split() for x in texts], 1)

    def pairwise_statistics(self, cand: NgramStatistics, ref: NgramStatistics) -> np.ndarray:
        """(C, R) token F1 from the :meth:`statistics` of C candidates and R references (both
        from one call, or its ``take``; the same object twice uses the symmetric kernel)."""
        overlap = cand.overlap(ref)[0]
        return f1_from_counts(overlap, cand.sizes[:, :1], ref.sizes[None, :, 0])
