"""Sentence BLEU with sacrebleu's definitions, for every (candidate, reference) pair at once.

BLEU (Papineni, Roukos, Ward, Zhu, "BLEU: a method for automatic evaluation of machine
translation", ACL 2002) is the geometric mean of the clipped n-gram precisions (n = 1..4) times
a brevity penalty. At sentence level this module reproduces ``sacrebleu.sentence_bleu(hyp,
[ref])`` (Post, "A Call for Clarity in Reporting BLEU Scores", WMT 2018; sacrebleu 2.x): the
mteval-v13a tokenizer, smoothing method 3 of Chen and Cherry ("A Systematic Comparison of
Smoothing Techniques for Sentence-Level BLEU", WMT 2014; ``"exp"``, the NIST geometric
sequence), effective order (orders the hypothesis is too short for are left out), scores on
sacrebleu's 0-100 scale.

The sufficient statistics of a pair are the hypothesis and reference lengths and, per order n,
the clipped match count and the hypothesis n-gram count. ``pairwise`` tokenises each distinct
string once, numbers the n-grams of all of them together (:meth:`BLEU.statistics`), computes
the match counts of all pairs and orders with
:func:`metricwise.metrics.overlap.overlap_from_entries`, and the score from the statistics
with array operations over the whole (C, R) matrix.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from metricwise.errors import InvalidParameterError
from metricwise.metrics.base import StatisticsMetric, register
from metricwise.metrics.overlap import NgramStatistics, clipped_overlap, token_statistics
from metricwise.text import as_text

#: Default smoothing values (Chen and Cherry 2014), as in sacrebleu; ``None``: no value used.
SMOOTH_DEFAULTS: dict[str, float | None] = {"none": None, "floor": 0.1, "add-k": 1.0, "exp": None}
TOKENIZERS: tuple[str, ...] = ("13a", "none", "char")
#: ``log(0)`` as sacrebleu floors it (``sacrebleu.utils.my_log``).
_LOG_ZERO = -9999999999.0
#: Cells per block of rows in which the score is computed from the statistics (64 Ki float64 =
#: 512 KiB per array, so the dozens of elementwise passes stay in cache).
_BLOCK_CELLS = 64 * 1024

# mteval-v13a.pl tokenisation (the "language-dependent part", for Western languages).
# ASCII symbols  { | } ~  [ \ ] ^ _ `  space ! " # $ % &  ( ) * +  : ; < = > ? @  /  are split off:
# mteval's regex replaces each one c by " c ", which is a per-character translation.
_13A_SYMBOLS = [
    *range(0x7B, 0x7F),
    *range(0x5B, 0x61),
    *range(0x20, 0x27),
    *range(0x28, 0x2C),
    *range(0x3A, 0x41),
    ord("/"),
]
_13A_SPLIT_SYMBOLS = {code: f" {chr(code)} " for code in _13A_SYMBOLS}
_13A_POINT_AFTER_NONDIGIT = re.compile(r"([^0-9])([.,])")
_13A_POINT_BEFORE_NONDIGIT = re.compile(r"([.,])([^0-9])")
_13A_DASH_AFTER_DIGIT = re.compile(r"([0-9])(-)")
_13A_ENTITIES = (("&quot;", '"'), ("&amp;", "&"), ("&lt;", "<"), ("&gt;", ">"))


def tokenize_13a(line: str) -> list[str]:
    """Tokens of ``line`` under mteval-v13a (sacrebleu's default ``tokenize="13a"``).

    Removes ``<skipped>``, joins ``-``-newline hyphenation, unescapes four XML entities, splits
    off ASCII punctuation and symbols, splits periods and commas except between digits, and
    splits a dash that follows a digit.

    >>> tokenize_13a("Hello, world! It costs $3.50 (approx.).")
    ['Hello', ',', 'world', '!', 'It', 'costs', '$', '3.50', '(', 'approx', '.', ')', '.']
    """
    line = line.replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
    if "&" in line:
        for entity, char in _13A_ENTITIES:
            line = line.replace(entity, char)
    line = f" {line} ".translate(_13A_SPLIT_SYMBOLS)
    line = _13A_POINT_AFTER_NONDIGIT.sub(r"\1 \2 ", line)
    line = _13A_POINT_BEFORE_NONDIGIT.sub(r" \1 \2", line)
    line = _13A_DASH_AFTER_DIGIT.sub(r"\1 \2 ", line)
    return line.split()


def _tokenize_char(line: str) -> list[str]:
    """sacrebleu's ``tokenize="char"``: every non-whitespace character is a token."""
    return [ch for ch in line if not ch.isspace()]


class _Features(NamedTuple):
    length: int  # number of tokens
    bags: list[Counter]  # bags[n - 1]: the n-gram counts, n = 1..max order


def _ngram_bags(tokens: list[str], max_order: int) -> list[Counter]:
    return [
        Counter(zip(*(tokens[k:] for k in range(n)), strict=False)) for n in range(1, max_order + 1)
    ]


@register("bleu")
class BLEU(StatisticsMetric):
    """Sentence BLEU (0-100) equal to ``sacrebleu.sentence_bleu(pred, [ref])``. Decided by MBR.

    Parameters
    ----------
    tokenize:
        ``"13a"`` (mteval-v13a, sacrebleu's default), ``"char"`` or ``"none"`` (split on
        whitespace only).
    lowercase:
        Lower-case both sides first (sacrebleu's ``lowercase``).
    smooth_method:
        ``"exp"`` (default; Chen and Cherry method 3), ``"floor"`` (method 1), ``"add-k"``
        (method 2) or ``"none"``.
    smooth_value:
        The epsilon of ``"floor"`` (default 0.1) or the k of ``"add-k"`` (default 1).
    max_ngram_order:
        Largest n-gram order (default 4).
    effective_order:
        Leave out the orders longer than the hypothesis (sacrebleu's sentence default, True).

    Notes
    -----
    ``pairwise(cands, refs)`` returns the (C, R) float64 matrix ``M[i, j] = BLEU(cands[i],
    refs[j])``. Cost: tokenisation once per distinct string and n-gram statistics in numpy
    (O(total tokens x max order)); one overlap call for all orders (sparse pairs and BLAS
    products, see :mod:`metricwise.metrics.overlap`); then O(C x R x max order) array work.
    sacrebleu instead re-tokenises and intersects dictionaries for each of the C x R pairs.

    With a list of references, ``score`` takes the best single reference (the metric contract);
    :meth:`multi_reference_score` gives sacrebleu's multi-reference BLEU instead (each n-gram
    clipped by its largest count in any reference; the reference length closest to the
    hypothesis length).

    Examples
    --------
    >>> from metricwise import metrics
    >>> round(metrics.get("bleu").score("The cat sat on the mat.", "The cat sat on a mat."), 4)
    48.8923
    """

    higher_is_better = True
    symmetric = False
    bayes_rule = None

    def __init__(
        self,
        *,
        tokenize: str = "13a",
        lowercase: bool = False,
        smooth_method: str = "exp",
        smooth_value: float | None = None,
        max_ngram_order: int = 4,
        effective_order: bool = True,
    ) -> None:
        if tokenize not in TOKENIZERS:
            raise InvalidParameterError(
                f"The 'tokenize' parameter of bleu must be one of {', '.join(map(repr, TOKENIZERS))}. "
                f"Got {tokenize!r} instead."
            )
        if smooth_method not in SMOOTH_DEFAULTS:
            raise InvalidParameterError(
                f"The 'smooth_method' parameter of bleu must be one of "
                f"{', '.join(map(repr, SMOOTH_DEFAULTS))}. Got {smooth_method!r} instead."
            )
        if smooth_value is not None and (
            isinstance(smooth_value, bool)
            or not isinstance(smooth_value, (int, float))
            or not (math.isfinite(smooth_value) and smooth_value >= 0)
        ):
            raise InvalidParameterError(
                "The 'smooth_value' parameter of bleu must be a finite number >= 0 or None. "
                f"Got {smooth_value!r} instead."
            )
        if (
            isinstance(max_ngram_order, bool)
            or not isinstance(max_ngram_order, int)
            or max_ngram_order < 1
        ):
            raise InvalidParameterError(
                f"The 'max_ngram_order' parameter of bleu must be an int >= 1. Got {max_ngram_order!r} instead."
            )
        for flag, value in (("lowercase", lowercase), ("effective_order", effective_order)):
            if not isinstance(value, bool):
                raise InvalidParameterError(
                    f"The {flag!r} parameter of bleu must be True or False. Got {value!r} instead."
                )
        self.tokenize = tokenize
        self.lowercase = lowercase
        self.smooth_method = smooth_method
        self.smooth_value = smooth_value
        self.max_ngram_order = max_ngram_order
        self.effective_order = effective_order

    # -- per-string features ------------------------------------------------------------------
    def tokens(self, text: str) -> list[str]:
        """The tokens BLEU counts: lower-cased if asked, right-stripped, then tokenised."""
        text = as_text(text, self.name)
        if self.lowercase:
            text = text.lower()
        text = text.rstrip()
        if self.tokenize == "13a":
            return tokenize_13a(text)
        if self.tokenize == "char":
            return _tokenize_char(text)
        return text.split()

    def _features(self, text: str) -> _Features:
        tokens = self.tokens(text)
        return _Features(len(tokens), _ngram_bags(tokens, self.max_ngram_order))

    # -- the metric -----------------------------------------------------------------------------
    def _score_one(self, pred: Any, ref: Any) -> float:
        return float(self._pairwise_unique([pred], [ref])[0, 0])

    def score(self, pred: Any, ref: Any) -> float:
        """Sentence BLEU; a list of references uses sacrebleu's multi-reference definition.

        Unlike the other metrics (best single reference), BLEU's standard multi-reference form
        pools the references, so ``score(pred, [r1, r2])`` equals
        ``sacrebleu.sentence_bleu(pred, [r1, r2])``; see :meth:`multi_reference_score`.
        """
        if isinstance(ref, (list, tuple)):
            if not ref:
                raise InvalidParameterError(
                    "The 'ref' parameter of bleu.score must not be an empty list."
                )
            return self.multi_reference_score(pred, ref)
        return self._score_one(pred, ref)

    def multi_reference_score(self, pred: Any, refs: Sequence[Any]) -> float:
        """sacrebleu's multi-reference sentence BLEU, ``sacrebleu.sentence_bleu(pred, refs)``.

        Each n-gram is clipped by its largest count in any reference and the brevity penalty uses
        the reference length closest to the hypothesis length (the shorter on ties).
        """
        if isinstance(refs, str) or not isinstance(refs, Sequence) or not refs:
            raise InvalidParameterError(
                f"The 'refs' parameter of {self.name}.multi_reference_score must be a non-empty "
                f"list of strings. Got {refs!r} instead."
            )
        hyp = self._features(pred)
        ref_feats = [self._features(r) for r in refs]
        merged = [Counter[Any]() for _ in range(self.max_ngram_order)]
        for feats in ref_feats:
            for n, bag in enumerate(feats.bags):
                merged[n] |= bag  # multiset union: the largest count of each n-gram
        closest = min((abs(hyp.length - f.length), f.length) for f in ref_feats)[1]
        return float(self._from_features([hyp], [_Features(closest, merged)])[0, 0])

    def statistics(self, texts: Sequence[Any]) -> NgramStatistics:
        """The token n-gram bags (n = 1..max order) of ``texts``, numbered alike for all.

        ``sizes[i, n-1]`` is text i's number of n-grams (column 0: its length in tokens).
        Compare rows of one call with :meth:`pairwise_statistics`. Cost: tokenisation per
        text, then O(total tokens x max order) in numpy
        (:func:`~metricwise.metrics.overlap.token_statistics`).
        """
        return token_statistics([self.tokens(t) for t in texts], self.max_ngram_order)

    def pairwise_statistics(self, cand: NgramStatistics, ref: NgramStatistics) -> np.ndarray:
        """(C, R) sentence BLEU from the :meth:`statistics` of C candidates and R references.

        Both must come from one :meth:`statistics` call (or its ``take``); the same object on
        both sides uses the symmetric kernel. One overlap call for all orders, then
        :meth:`from_statistics` in blocks of rows that stay in cache (same values as one pass).
        """
        n_c, n_r = cand.n_texts, ref.n_texts
        correct = cand.overlap(ref)  # (orders, C, R)
        totals = cand.sizes.T[:, :, None]  # (orders, C, 1): the hypothesis n-gram counts
        sys_len, ref_len = totals[0], ref.sizes[None, :, 0]
        rows = max(1, _BLOCK_CELLS // max(1, n_r))
        if n_c <= rows:
            return self.from_statistics(correct, totals, sys_len, ref_len)
        out = np.empty((n_c, n_r), dtype=np.float64)
        for i in range(0, n_c, rows):
            out[i : i + rows] = self.from_statistics(
                correct[:, i : i + rows], totals[:, i : i + rows], sys_len[i : i + rows], ref_len
            )
        return out

    def _from_features(self, c_feats: list[_Features], r_feats: list[_Features]) -> np.ndarray:
        sys_len = np.array([f.length for f in c_feats], dtype=np.float64)[:, None]
        ref_len = np.array([f.length for f in r_feats], dtype=np.float64)[None, :]
        correct = []
        for n in range(self.max_ngram_order):
            c_bags = [f.bags[n] for f in c_feats]
            # The same list on both sides lets clipped_overlap index it once.
            r_bags = c_bags if r_feats is c_feats else [f.bags[n] for f in r_feats]
            correct.append(clipped_overlap(c_bags, r_bags))
        totals = [np.maximum(sys_len - n, 0.0) for n in range(self.max_ngram_order)]
        return self.from_statistics(correct, totals, sys_len, ref_len)

    def from_statistics(
        self,
        correct: Sequence[np.ndarray] | np.ndarray,
        totals: Sequence[np.ndarray] | np.ndarray,
        sys_len: np.ndarray,
        ref_len: np.ndarray,
    ) -> np.ndarray:
        """BLEU (0-100) from sufficient statistics, elementwise over broadcastable arrays.

        Parameters
        ----------
        correct, totals:
            Per order n = 1..max order: clipped n-gram matches and hypothesis n-gram counts.
        sys_len, ref_len:
            Hypothesis and reference lengths in tokens.

        Follows ``sacrebleu.BLEU.compute_bleu`` step by step (same operations in the same
        order), so values agree to the last bit or two.
        """
        shape = np.broadcast_shapes(sys_len.shape, ref_len.shape, *(np.shape(c) for c in correct))
        sys_len = np.broadcast_to(sys_len, shape)
        ref_len = np.broadcast_to(ref_len, shape)
        method = self.smooth_method
        default = SMOOTH_DEFAULTS[method]
        value = float(self.smooth_value) if self.smooth_value is not None else (default or 0.0)
        any_match = np.zeros(shape, dtype=bool)
        stopped = np.zeros(shape, dtype=bool)  # an order with no hypothesis n-grams ends the loop
        halvings = np.zeros(
            shape, dtype=np.float64
        )  # "exp": 2**k for the k-th order without a match
        n_orders = np.zeros(shape, dtype=np.float64)
        log_sum = np.zeros(shape, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            bp = np.where(
                sys_len < ref_len, np.where(sys_len > 0, np.exp(1.0 - ref_len / sys_len), 0.0), 1.0
            )
            for n in range(self.max_ngram_order):
                c = np.broadcast_to(np.asarray(correct[n], dtype=np.float64), shape)
                t = np.broadcast_to(np.asarray(totals[n], dtype=np.float64), shape)
                any_match |= c > 0
                if method == "add-k" and n > 0:
                    c, t = c + value, t + value
                stopped |= t == 0
                active = ~stopped
                precision = 100.0 * c / t
                if method == "exp":
                    halvings = halvings + (active & (c == 0))
                    precision = np.where(
                        c == 0, 100.0 / (np.ldexp(1.0, halvings.astype(np.int64)) * t), precision
                    )
                elif method == "floor":
                    precision = np.where(c == 0, 100.0 * value / t, precision)
                precision = np.where(active, precision, 0.0)
                log_p = np.where(
                    precision == 0.0, _LOG_ZERO, np.log(np.where(precision > 0, precision, 1.0))
                )
                if self.effective_order:
                    log_sum = log_sum + np.where(active, log_p, 0.0)
                    n_orders = n_orders + active
                else:
                    log_sum = log_sum + log_p
            if self.effective_order:
                n_orders = np.where(n_orders == 0, self.max_ngram_order, n_orders)
            else:
                n_orders = np.full(shape, float(self.max_ngram_order))
            result = bp * np.exp(log_sum / n_orders)
        # sacrebleu returns 0 when no n-gram of any order matches (before add-k smoothing).
        return np.where(any_match, result, 0.0)

    def signature(self) -> str:
        smooth = self.smooth_method
        default = SMOOTH_DEFAULTS[smooth]
        if default is not None:
            smooth += f"[{default if self.smooth_value is None else self.smooth_value:.2f}]"
        case = "lc" if self.lowercase else "mixed"
        eff = "yes" if self.effective_order else "no"
        return f"bleu(tok={self.tokenize},case={case},smooth={smooth},order={self.max_ngram_order},eff={eff})"
