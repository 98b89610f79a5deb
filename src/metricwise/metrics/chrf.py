"""chrF and chrF++ with sacrebleu's definitions, for every (candidate, reference) pair at once.

chrF (Popović, "chrF: character n-gram F-score for automatic MT evaluation", WMT 2015) is the
F-beta score of character n-gram precision and recall averaged over the orders 1..6; chrF++
(Popović, "chrF++: words helping character n-grams", WMT 2017) adds word unigrams and bigrams.
This module reproduces ``sacrebleu.sentence_chrf(hyp, [ref])`` (sacrebleu 2.x) exactly:
whitespace removed before extracting character n-grams, beta = 2, precision and recall averaged
over the *effective* orders (those where both sides have n-grams), 0-100 scale; optionally the
epsilon smoothing of the original chrF++.py (``eps_smoothing=True``).

``pairwise`` numbers the n-grams of all distinct strings at once (:meth:`CHRF.statistics`,
numpy sorts instead of a ``Counter`` per string and order), computes the clipped matches of all
pairs with :func:`metricwise.metrics.overlap.overlap_from_entries` (all orders at once), and the
F-score with array work over the (C, R) matrix. :meth:`CHRF.aggregate_statistics` scores
candidates against one aggregated reference instead (approximate MBR in linear time).
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from itertools import chain, count
from typing import Any

import numpy as np

from metricwise.errors import InvalidParameterError
from metricwise.metrics.base import AggregatableMetric, register
from metricwise.metrics.overlap import NgramStatistics, ngram_entries
from metricwise.text import as_text

#: ASCII punctuation that chrF++ splits off the start or end of a word (``string.punctuation``).
_PUNCTUATION = frozenset("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
#: The epsilon of chrF++.py-style smoothing (as sacrebleu).
_EPS = 1e-16
#: Cells per block of rows in which the F-score is computed (64 Ki float64 = 512 KiB per array).
_BLOCK_CELLS = 64 * 1024


def words_for_chrf(text: str) -> list[str]:
    """chrF++'s word tokens: whitespace split, one ASCII punctuation mark split off each word.

    A word longer than one character loses its last character to a separate token when that is
    punctuation, otherwise its first character when that is (so ``"(hi)"`` gives ``"(hi"`` and
    ``")"``, as in sacrebleu and the original chrF++.py).

    >>> words_for_chrf("Hello, (world) 'x")
    ['Hello', ',', '(world', ')', "'", 'x']
    """
    words: list[str] = []
    for word in text.split():
        if len(word) > 1 and word[-1] in _PUNCTUATION:
            words += [word[:-1], word[-1]]
        elif len(word) > 1 and word[0] in _PUNCTUATION:
            words += [word[0], word[1:]]
        else:
            words.append(word)
    return words


def _check_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise InvalidParameterError(
            f"The {name!r} parameter of chrf must be an int >= {minimum}. Got {value!r} instead."
        )
    return int(value)


@register("chrf")
class CHRF(AggregatableMetric):
    """chrF / chrF++ (0-100) equal to ``sacrebleu.sentence_chrf(pred, [ref])``. Decided by MBR.

    Parameters
    ----------
    char_order:
        Largest character n-gram order (default 6).
    word_order:
        Largest word n-gram order (default 0; 2 gives chrF++).
    beta:
        Weight of recall relative to precision (default 2).
    lowercase:
        Lower-case both sides first.
    whitespace:
        Keep whitespace inside character n-grams (sacrebleu's ``whitespace``; default False).
    eps_smoothing:
        Average the per-order F-scores with epsilon smoothing (chrF++.py, NLTK, Moses) instead
        of sacrebleu's default (F-score of the precision and recall averaged over the effective
        orders).

    Notes
    -----
    ``pairwise(cands, refs)`` returns the (C, R) float64 matrix ``M[i, j] = chrF(cands[i],
    refs[j])``. Cost: n-gram statistics of the distinct strings (O(total characters x orders),
    in numpy); one :func:`~metricwise.metrics.overlap.overlap_from_entries` for all orders; then
    O(C x R x orders) array work. With a list of references, ``score`` takes the best one, as
    sacrebleu does.

    Examples
    --------
    >>> from metricwise import metrics
    >>> round(metrics.get("chrf").score("The cat sat on the mat.", "The cat sat on a mat."), 4)
    71.4225
    """

    higher_is_better = True
    symmetric = False
    bayes_rule = None

    def __init__(
        self,
        *,
        char_order: int = 6,
        word_order: int = 0,
        beta: float = 2,
        lowercase: bool = False,
        whitespace: bool = False,
        eps_smoothing: bool = False,
    ) -> None:
        self.char_order = _check_int(char_order, "char_order", 0)
        self.word_order = _check_int(word_order, "word_order", 0)
        if self.char_order + self.word_order < 1:
            raise InvalidParameterError(
                "The 'char_order' and 'word_order' parameters of chrf must not both be 0. "
                f"Got char_order={char_order!r}, word_order={word_order!r} instead."
            )
        if (
            isinstance(beta, bool)
            or not isinstance(beta, numbers.Real)
            or not (0 <= beta < float("inf"))
        ):
            raise InvalidParameterError(
                f"The 'beta' parameter of chrf must be a finite number >= 0. Got {beta!r} instead."
            )
        for flag, value in (
            ("lowercase", lowercase),
            ("whitespace", whitespace),
            ("eps_smoothing", eps_smoothing),
        ):
            if not isinstance(value, bool):
                raise InvalidParameterError(
                    f"The {flag!r} parameter of chrf must be True or False. Got {value!r} instead."
                )
        self.beta: float = beta
        self.lowercase: bool = lowercase
        self.whitespace: bool = whitespace
        self.eps_smoothing: bool = eps_smoothing

    # -- n-gram statistics ----------------------------------------------------------------------
    def statistics(self, texts: Sequence[Any]) -> NgramStatistics:
        """The n-gram bags of ``texts``, as arrays, and their sizes.

        Returns
        -------
        NgramStatistics
            The n-gram bags of every order (character orders 1..char_order, then word orders
            1..word_order), one row per text, n-grams numbered alike for all texts; ``sizes``
            has shape (len(texts), char_order + word_order), each text's n-gram count per
            order. Compare rows of one call with :meth:`pairwise_statistics` or
            :meth:`aggregate_statistics`.

        Notes
        -----
        Whitespace is removed (unless ``whitespace``) before extracting character n-grams, as
        in sacrebleu. The n-grams of all texts are numbered with a few numpy sorts per order
        (:func:`~metricwise.metrics.overlap.ngram_entries`) instead of a ``Counter`` per text
        and order: O(total characters x orders).
        """
        prepared = [as_text(t, self.name) for t in texts]
        if self.lowercase:
            prepared = [t.lower() for t in prepared]
        chars = prepared if self.whitespace else ["".join(t.split()) for t in prepared]
        lengths = np.fromiter(map(len, chars), dtype=np.int64, count=len(chars))
        # One code point per character (Python's len); surrogatepass keeps lone surrogates.
        codes = np.frombuffer("".join(chars).encode("utf-32-le", "surrogatepass"), dtype="<u4")
        entries = ngram_entries(codes.astype(np.int64), lengths, self.char_order)
        sizes = [np.maximum(lengths - n, 0) for n in range(self.char_order)]
        if self.word_order:
            words = [words_for_chrf(t) for t in prepared]
            word_lengths = np.fromiter(map(len, words), dtype=np.int64, count=len(words))
            tokens = list(chain.from_iterable(words))
            number = dict(zip(dict.fromkeys(tokens), count()))
            ids = np.fromiter(map(number.__getitem__, tokens), dtype=np.int64, count=len(tokens))
            entries += ngram_entries(ids, word_lengths, self.word_order)
            sizes += [np.maximum(word_lengths - n, 0) for n in range(self.word_order)]
        n_orders = self.char_order + self.word_order
        table = np.array(sizes, dtype=np.float64).reshape(n_orders, len(texts)).T
        return NgramStatistics.from_entries(entries, np.ascontiguousarray(table))

    # -- the metric -----------------------------------------------------------------------------
    def _score_one(self, pred: Any, ref: Any) -> float:
        return float(self._pairwise_unique([pred], [ref])[0, 0])

    def pairwise_statistics(self, cand: NgramStatistics, ref: NgramStatistics) -> np.ndarray:
        """(C, R) chrF from the :meth:`statistics` of C candidates and R references.

        Both must come from one :meth:`statistics` call (or its ``take``); passing the same
        object twice uses the symmetric kernel. One
        :func:`~metricwise.metrics.overlap.overlap_from_entries` for all orders, then
        :meth:`from_statistics` over the (C, R) matrix.
        """
        n_c, n_r = cand.n_texts, ref.n_texts
        matches = cand.overlap(ref)  # (orders, C, R)
        hyp_counts, ref_counts = cand.sizes.T[:, :, None], ref.sizes.T[:, None, :]
        # The F-score is a dozen elementwise passes: in blocks of rows that stay in cache they
        # run about twice as fast as over the whole matrix (same operations, same values).
        rows = max(1, _BLOCK_CELLS // max(1, n_r))
        if n_c <= rows:
            return self.from_statistics(matches, hyp_counts, ref_counts)
        out = np.empty((n_c, n_r), dtype=np.float64)
        for i in range(0, n_c, rows):
            block = [m[i : i + rows] for m in matches]
            out[i : i + rows] = self.from_statistics(block, hyp_counts[:, i : i + rows], ref_counts)
        return out

    def aggregate_statistics(
        self, cand: NgramStatistics, ref: NgramStatistics, weights: np.ndarray
    ) -> np.ndarray:
        """Shape (C,): chrF of each candidate against the weighted average of the references.

        The reference-aggregated chrF of Vamvas and Sennrich ("Linear-time Minimum Bayes Risk
        Decoding with Reference Aggregation", 2024; ``fastchrf.aggregate_chrf``), after the
        expected n-gram counts of DeNero, Chiang and Knight ("Fast Consensus Decoding over
        Translation Forests", ACL 2009): the R references are replaced by one whose count of
        each n-gram g is ``sum_j w_j count_j(g)`` and whose size per order is
        ``sum_j w_j size_j`` (``weights`` normalised to sum 1); matches are
        ``sum_g min(count_c(g), mean count(g))``. Not the expected chrF (chrF is not linear in
        the counts), but its argmax usually agrees; cost O(entries) instead of O(C x R).

        Both statistics must come from one :meth:`statistics` call. With uniform weights this
        equals ``fastchrf.aggregate_chrf`` (up to its float32 rounding).
        """
        w = np.asarray(weights, dtype=np.float64)
        w = w / w.sum()
        n_c, n_orders = cand.n_texts, cand.n_orders
        c, r = cand.entries, ref.entries
        mean_count = np.bincount(r.cols, weights=w[r.rows] * r.vals, minlength=len(cand.item_order))
        clipped = np.minimum(c.vals, mean_count[c.cols])
        # One sum per (candidate, order): the orders' n-grams are numbered together.
        cell = c.rows * n_orders + cand.item_order[c.cols]
        matches = np.bincount(cell, weights=clipped, minlength=n_c * n_orders)
        matches = matches.reshape(n_c, n_orders).T
        return self.from_statistics(matches, cand.sizes.T, w @ ref.sizes)

    def from_statistics(
        self, matches: Sequence[np.ndarray] | np.ndarray, hyp_counts: Any, ref_counts: Any
    ) -> np.ndarray:
        """chrF (0-100) from per-order statistics, elementwise over broadcastable arrays.

        Parameters
        ----------
        matches, hyp_counts, ref_counts:
            Indexable by order (character orders first, then word orders): clipped n-gram
            matches, hypothesis n-gram counts, reference n-gram counts.

        Follows ``sacrebleu.CHRF._compute_f_score`` operation by operation: every value is
        bitwise what sacrebleu computes. The default (not ``eps_smoothing``) path works in
        place on the broadcast shape, about four passes per order instead of a dozen
        temporaries, and masks only where an order is missing on some side.
        """
        if self.eps_smoothing:
            return self._eps_smoothed(matches, hyp_counts, ref_counts)
        factor = self.beta**2
        shape = np.broadcast_shapes(*(np.shape(m) for m in matches))
        sum_prec = np.zeros(shape, dtype=np.float64)
        sum_rec = np.zeros(shape, dtype=np.float64)
        part = np.empty(shape, dtype=np.float64)
        # The number of effective orders stays a scalar while every cell has every order.
        n_effective: np.ndarray | float = 0.0
        with np.errstate(divide="ignore", invalid="ignore"):
            for k, match in enumerate(matches):
                n_hyp = np.asarray(hyp_counts[k], dtype=np.float64)
                n_ref = np.asarray(ref_counts[k], dtype=np.float64)
                # sacrebleu counts no hypothesis n-grams of an order the reference lacks, so an
                # order is effective exactly where both sides have n-grams of it; elsewhere it
                # adds nothing (adding 0.0 to a non-negative sum leaves it unchanged).
                effective = (n_hyp > 0) & (n_ref > 0)
                where: Any = True if effective.all() else np.broadcast_to(effective, shape)
                np.divide(match, n_hyp, out=part)
                np.add(sum_prec, part, out=sum_prec, where=where)
                np.divide(match, n_ref, out=part)
                np.add(sum_rec, part, out=sum_rec, where=where)
                n_effective = n_effective + (1.0 if where is True else effective)
            n_effective = np.broadcast_to(n_effective, shape)
            # avg = sum / n where n > 0, else 0 (a sum over no order is 0 too, so dividing by
            # 1 there gives the same 0).
            some = n_effective > 0
            avg_prec = np.divide(sum_prec, n_effective, out=sum_prec, where=some)
            avg_rec = np.divide(sum_rec, n_effective, out=sum_rec, where=some)
            score = np.multiply(avg_prec, 1 + factor, out=part)
            score *= avg_rec
            denominator = avg_prec * factor
            denominator += avg_rec
            score /= denominator
            score *= 100
            # Both averages are >= 0, so their sum is 0 exactly where both are.
            score[(avg_prec == 0) & (avg_rec == 0)] = 0.0
            return score

    def _eps_smoothed(
        self, matches: Sequence[np.ndarray] | np.ndarray, hyp_counts: Any, ref_counts: Any
    ) -> np.ndarray:
        """chrF with chrF++.py's epsilon smoothing: the mean of per-order F-scores."""
        factor = self.beta**2
        shape = np.broadcast_shapes(*(np.shape(m) for m in matches))
        eps_score = np.zeros(shape, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            for k, match in enumerate(matches):
                n_ref = np.broadcast_to(np.asarray(ref_counts[k], dtype=np.float64), shape)
                n_hyp = np.where(
                    n_ref > 0,
                    np.broadcast_to(np.asarray(hyp_counts[k], dtype=np.float64), shape),
                    0.0,
                )
                prec = np.where(n_hyp > 0, match / n_hyp, _EPS)
                rec = np.where(n_ref > 0, match / n_ref, _EPS)
                denom = factor * prec + rec
                eps_score = eps_score + np.where(denom > 0, (1 + factor) * prec * rec / denom, _EPS)
            return 100 * eps_score / len(matches)

    def signature(self) -> str:
        case = "lc" if self.lowercase else "mixed"
        space = "yes" if self.whitespace else "no"
        eff = "no" if self.eps_smoothing else "yes"
        return (
            f"chrf(nc={self.char_order},nw={self.word_order},beta={self.beta:g},case={case},"
            f"space={space},eff={eff})"
        )
