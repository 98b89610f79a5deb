"""Cosine similarity of sentence embeddings (all-MiniLM-L6-v2 by default). Decided by MBR.

Needs the ``[embed]`` extra. ``pairwise`` embeds each distinct string once and fills the matrix
with one product: O((C + R) encoder passes + C x R x dim).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from metricwise.embeddings import cosine_matrix, get_encoder
from metricwise.metrics.base import Metric, register
from metricwise.models import DEFAULT_EMBEDDER


@register("embedding_cosine")
class EmbeddingCosine(Metric):
    """Cosine similarity (-1..1) of sentence embeddings; 1 for identical texts."""

    def __init__(self, model: str = DEFAULT_EMBEDDER, device: str = "cpu") -> None:
        self.model = model
        self.device = device
        self._encoder = get_encoder(model, device)

    def _score_one(self, pred: Any, ref: Any) -> float:
        return float(self.pairwise([pred], [ref])[0, 0])

    def pairwise(self, cands: Sequence[Any], refs: Sequence[Any]) -> np.ndarray:
        def unique(c: list[Any], r: list[Any]) -> np.ndarray:
            vectors = self._encoder.encode([str(x) for x in c] + [str(x) for x in r])
            out = cosine_matrix(vectors[: len(c)], vectors[len(c) :])
            # Identical texts are exactly similar; float32 rounding would otherwise give 0.9999999.
            # The inputs are distinct on each side, so each text meets its twin at most once.
            ref_index = {text: j for j, text in enumerate(r)}
            for i, text in enumerate(c):
                j = ref_index.get(text)
                if j is not None:
                    out[i, j] = 1.0
            return out

        return self._pairwise_deduplicated(cands, refs, unique)

    def signature(self) -> str:
        return f"embedding_cosine({self.model})"
