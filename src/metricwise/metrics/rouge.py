"""ROUGE-L with rouge-score's definitions, for every (candidate, reference) pair at once.

ROUGE-L (Lin, "ROUGE: A Package for Automatic Evaluation of Summaries", WAS 2004) is the
F-measure of the longest common subsequence (LCS) of the two token sequences: precision
``LCS / len(prediction)``, recall ``LCS / len(reference)``. This module reproduces Google's
``rouge_score`` 0.1.2, ``RougeScorer(["rougeL"]).score(ref, pred)["rougeL"].fmeasure``: lower
case, every run of characters other than ``[a-z0-9]`` is a separator, optional Porter stemming
of tokens longer than three characters, F1 (beta = 1), 0 when either side has no tokens.

The LCS lengths of all pairs come from :func:`lcs_matrix`, the bit-parallel LCS of Allison and
Dix ("A bit-string longest-common-subsequence algorithm", IPL 1986) in Hyyrö's form ("Bit-
parallel LCS-length computation revisited", AWOCS 2004), vectorised over the pairs with numpy:
one step per token of the longer side, each step a few uint64 operations on all pairs at once,
instead of an O(m x n) Python DP per pair.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from metricwise.errors import InvalidParameterError, MissingDependencyError
from metricwise.metrics.base import Metric, register
from metricwise.metrics.overlap import featurize
from metricwise.text import as_text, f1_from_counts

_ALNUM_RUN = re.compile(r"[a-z0-9]+")
_NON_ALNUM = re.compile(r"[^a-z0-9]+")
_SPACES = re.compile(r"\s+")
_VALID_TOKEN = re.compile(r"^[a-z0-9]+$")
#: Upper bound on the uint64 words of one working array of :func:`lcs_matrix` (16 MiB).
_MAX_BLOCK_WORDS = 2 * 1024 * 1024


def tokenize_rouge(text: str, stem: Callable[[str], str] | None = None) -> list[str]:
    """rouge-score's default tokenizer: lower-cased ``[a-z0-9]`` runs, optionally stemmed.

    >>> tokenize_rouge("The U.S. isn't 2x-bigger!")
    ['the', 'u', 's', 'isn', 't', '2x', 'bigger']
    """
    text = text.lower()
    if stem is None:
        return _ALNUM_RUN.findall(text)
    tokens = _SPACES.split(_NON_ALNUM.sub(" ", text))
    tokens = [stem(t) if len(t) > 3 else t for t in tokens]
    return [t for t in tokens if _VALID_TOKEN.match(t)]


def _popcount(words: np.ndarray) -> np.ndarray:
    """Set bits of each uint64 (``np.bitwise_count`` on numpy >= 2, a byte table before)."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(words)
    table = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)
    return table[words.view(np.uint8)].reshape(*words.shape, 8).sum(axis=-1)


def lcs_matrix(a_seqs: Sequence[np.ndarray], b_seqs: Sequence[np.ndarray]) -> np.ndarray:
    """Return the (A, B) int64 matrix of LCS lengths of ``a_seqs[i]`` and ``b_seqs[j]``.

    Parameters
    ----------
    a_seqs, b_seqs:
        Sequences of 1-d integer arrays (token ids; equal ids are equal tokens).

    Notes
    -----
    Bit-parallel LCS (Allison and Dix 1986; Hyyrö 2004): for a sequence ``a`` of length m, a
    bit vector ``V`` of m bits starts all ones; for each token ``y`` of ``b`` with match mask
    ``M_y`` (bit p set when ``a[p] == y``), ``U = V & M_y`` and ``V = (V + U) | (V - U)``; the
    LCS length is the number of zero bits of ``V`` at the end. Vectors longer than 64 bits are
    uint64 words with an explicit carry. The update runs over all pairs at once; the bit
    vectors go on the side that needs fewer words x steps, and the other side is sorted by
    length so that step j only touches the sequences longer than j. Cost: O(A x B x ceil(m / 64) x n) word operations for
    maximal lengths m, n, in blocks of bounded memory.
    """
    n_a, n_b = len(a_seqs), len(b_seqs)
    out = np.zeros((n_a, n_b), dtype=np.int64)
    if n_a == 0 or n_b == 0:
        return out
    a_len = np.array([len(s) for s in a_seqs], dtype=np.int64)
    b_len = np.array([len(s) for s in b_seqs], dtype=np.int64)
    if a_len.max() == 0 or b_len.max() == 0:
        return out
    # The bit side is the one that needs fewer words per step x steps.
    if -(-int(b_len.max()) // 64) * int(a_len.max()) < -(-int(a_len.max()) // 64) * int(
        b_len.max()
    ):
        return lcs_matrix(b_seqs, a_seqs).T.copy()

    n_words = -(-int(a_len.max()) // 64)
    # Token ids of the b side, renumbered 0..V-1; V is the padding id with an all-zero mask.
    b_tokens, b_local = np.unique(
        np.concatenate([np.asarray(s, dtype=np.int64) for s in b_seqs]), return_inverse=True
    )
    n_vocab = len(b_tokens)
    order = np.argsort(-b_len, kind="stable")
    sorted_len = b_len[order]
    b_start = np.concatenate([[0], np.cumsum(b_len)])
    steps = int(sorted_len[0])
    b_pad = np.full((n_b, steps), n_vocab, dtype=np.int64)
    for row, j in enumerate(order):
        b_pad[row, : b_len[j]] = b_local[b_start[j] : b_start[j + 1]]
    # active[t]: how many (sorted) b sequences are longer than t.
    active = (sorted_len[None, :] > np.arange(steps)[:, None]).sum(axis=1)

    # Every a position whose token occurs on the b side sets one bit of a match mask.
    a_flat = np.concatenate([np.asarray(s, dtype=np.int64) for s in a_seqs])
    a_row = np.repeat(np.arange(n_a), a_len)
    a_pos = np.arange(len(a_flat)) - np.repeat(np.concatenate([[0], np.cumsum(a_len)[:-1]]), a_len)
    where = np.searchsorted(b_tokens, a_flat).clip(0, n_vocab - 1)
    hit = b_tokens[where] == a_flat
    a_row, a_tok, a_pos = a_row[hit], where[hit], a_pos[hit]
    a_bit = np.left_shift(np.uint64(1), (a_pos % 64).astype(np.uint64))

    inv_order = np.empty(n_b, dtype=np.int64)
    inv_order[order] = np.arange(n_b)
    rows_per_block = max(1, _MAX_BLOCK_WORDS // (n_words * max(n_b, n_vocab + 1)))
    for start in range(0, n_a, rows_per_block):
        stop = min(start + rows_per_block, n_a)
        sel = (a_row >= start) & (a_row < stop)
        masks = np.zeros((stop - start, n_vocab + 1, n_words), dtype=np.uint64)
        # Bits of one (row, token, word) are distinct, so adding them is or-ing them.
        np.add.at(masks, (a_row[sel] - start, a_tok[sel], a_pos[sel] // 64), a_bit[sel])
        v = np.full((stop - start, n_b, n_words), np.uint64(0xFFFFFFFFFFFFFFFF), dtype=np.uint64)
        for t in range(steps):
            nb = int(active[t])
            m = masks[:, b_pad[:nb, t], :]
            vs = v[:, :nb, :]
            u = vs & m
            if n_words == 1:
                v[:, :nb, :] = (vs + u) | (vs ^ u)
                continue
            total = np.empty_like(vs)
            carry = np.zeros(vs.shape[:2], dtype=np.uint64)
            for w in range(n_words):
                s = vs[:, :, w] + u[:, :, w]
                c1 = s < vs[:, :, w]
                s2 = s + carry
                carry = (c1 | (s2 < s)).astype(np.uint64)
                total[:, :, w] = s2
            v[:, :nb, :] = total | (vs ^ u)
        zeros = 64 * n_words - _popcount(v).sum(axis=2, dtype=np.int64)
        out[start:stop] = zeros[:, inv_order]
    return out


@register("rouge_l")
class RougeL(Metric):
    """ROUGE-L F-measure (0..1) equal to rouge-score's ``rougeL`` fmeasure. Decided by MBR.

    ``score(pred, ref)`` equals ``RougeScorer(["rougeL"], use_stemmer=...).score(ref,
    pred)["rougeL"].fmeasure`` (rouge-score takes the target first).

    Parameters
    ----------
    use_stemmer:
        Porter-stem tokens longer than three characters, as rouge-score does (needs ``nltk``).

    Notes
    -----
    ``pairwise(cands, refs)`` returns the (C, R) float64 matrix ``M[i, j] = ROUGE-L(cands[i],
    refs[j])``. Cost: tokenisation once per distinct string, then :func:`lcs_matrix` (bit-
    parallel, O(C x R x n) uint64 operations for sentences up to 64 tokens). With a list of
    references, ``score`` takes the best one, as ``RougeScorer.score_multi`` does.

    Examples
    --------
    >>> from metricwise import metrics
    >>> metrics.get("rouge_l").score("the cat sat on the mat", "the cat is on the mat")
    0.8333333333333334
    """

    higher_is_better = True
    symmetric = True
    bayes_rule = None

    def __init__(self, *, use_stemmer: bool = False) -> None:
        if not isinstance(use_stemmer, bool):
            raise InvalidParameterError(
                f"The 'use_stemmer' parameter of rouge_l must be True or False. Got {use_stemmer!r} instead."
            )
        self.use_stemmer = use_stemmer
        self._stem: Callable[[str], str] | None = None
        if use_stemmer:
            try:
                from nltk.stem import porter
            except ImportError:
                raise MissingDependencyError(
                    "The 'use_stemmer' parameter of rouge_l needs nltk's Porter stemmer "
                    "(pip install nltk). Install it or use use_stemmer=False."
                ) from None
            stemmer = porter.PorterStemmer()
            cache: dict[str, str] = {}

            def stem(token: str) -> str:
                if token not in cache:
                    cache[token] = stemmer.stem(token)
                return cache[token]

            self._stem = stem

    def tokens(self, text: str) -> list[str]:
        """The tokens ROUGE-L compares (rouge-score's default tokenizer)."""
        return tokenize_rouge(as_text(text, self.name), self._stem)

    def _score_one(self, pred: Any, ref: Any) -> float:
        return float(self._pairwise_unique([pred], [ref])[0, 0])

    def pairwise(self, cands: Sequence[Any], refs: Sequence[Any]) -> np.ndarray:
        """Return the (C, R) float64 matrix ``M[i, j] = ROUGE-L F(cands[i], refs[j])``."""
        return self._pairwise_deduplicated(cands, refs, self._pairwise_unique)

    def _pairwise_unique(self, cands: list[Any], refs: list[Any]) -> np.ndarray:
        vocab: dict[str, int] = {}

        def ids(text: str) -> np.ndarray:
            toks = self.tokens(text)
            return np.fromiter(
                (vocab.setdefault(t, len(vocab)) for t in toks), dtype=np.int64, count=len(toks)
            )

        c_ids, r_ids = featurize(cands, refs, ids)
        lcs = lcs_matrix(c_ids, r_ids).astype(np.float64)
        pred_len = np.array([len(x) for x in c_ids], dtype=np.float64)[:, None]
        ref_len = np.array([len(x) for x in r_ids], dtype=np.float64)[None, :]
        return f1_from_counts(lcs, pred_len, ref_len)

    def signature(self) -> str:
        return f"rouge_l(stemmer={'yes' if self.use_stemmer else 'no'})"
