"""Text helpers shared by answer extraction (:mod:`metricwise.extract`) and the metrics.

Both sides need the same definitions (the exact-match metric and the ``mode`` rule must agree
with what extraction calls "the same answer"), so they live here, below both: this module
imports neither :mod:`metricwise.extract` nor :mod:`metricwise.metrics`, which keeps the two
free of an import cycle.

- :func:`normalize_answer`: the SQuAD v1.1 answer normalization.
- :func:`last_boxed` and :func:`matching_brace`: LaTeX ``\\boxed{...}`` content, for MATH
  answers (extraction cues and the MATH metric).

The building blocks that several text metrics share are here too, so that each is written once:

- :func:`as_text`: the input check of the string-only metrics (BLEU, chrF, ROUGE-L).
- :func:`f1_from_counts`: the F1 of a match count, for token F1 (SQuAD) and ROUGE-L.
- :func:`equality_pairwise`: the (C, R) equality matrix of normalized answers, for the exact-match
  metrics.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import numpy as np

from metricwise.errors import InvalidParameterError

__all__ = [
    "as_text",
    "equality_pairwise",
    "f1_from_counts",
    "last_boxed",
    "matching_brace",
    "normalize_answer",
]

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = frozenset(string.punctuation)
_BOXED_BARE = re.compile(r"\\boxed ([^\s$]+)")


def normalize_answer(text: str) -> str:
    """SQuAD v1.1 answer normalization: lower case, no punctuation, no articles, single spaces.

    The official evaluation script's ``normalize_answer``: lower-case, drop ASCII punctuation,
    drop the articles "a", "an", "the", collapse whitespace. Non-strings are converted with
    ``str`` first.

    Examples
    --------
    >>> normalize_answer("The  Eiffel Tower!")
    'eiffel tower'
    """
    text = str(text).lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def matching_brace(text: str, start: int) -> int:
    """Index of the ``}`` that closes a ``{`` opened just before ``text[start]``; -1 if none.

    Nested braces are counted, so ``matching_brace("{a{b}c}", 1)`` is 6.
    """
    depth = 1
    for i in range(start, len(text)):
        ch = text[i]
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i
    return -1


def last_boxed(text: str) -> str | None:
    """The brace-balanced content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) in ``text``.

    Examples
    --------
    >>> last_boxed("so $x = \\\\boxed{\\\\frac{1}{2}}$.")
    '\\\\frac{1}{2}'
    >>> last_boxed("no box") is None
    True
    """
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        m = _BOXED_BARE.search(text)
        return m.group(1) if m else None
    opening = text.index("{", start) + 1
    close = matching_brace(text, opening)
    return text[opening:close] if close >= 0 else None


def as_text(value: Any, metric: str) -> str:
    """Return ``value`` when it is a string; raise otherwise (``metric`` names the metric).

    The string metrics refuse numbers and ``None`` rather than scoring their ``str``: a number
    among text samples means the wrong extractor was used.
    """
    if not isinstance(value, str):
        raise InvalidParameterError(
            f"The candidates and references of {metric} must be strings. "
            f"Got {value!r} ({type(value).__name__}) instead."
        )
    return value


def f1_from_counts(matches: np.ndarray, pred_len: np.ndarray, ref_len: np.ndarray) -> np.ndarray:
    """F1 of precision ``matches / pred_len`` and recall ``matches / ref_len``, elementwise.

    Parameters
    ----------
    matches:
        Match counts (token overlap, LCS length), float64, typically shape (C, R).
    pred_len, ref_len:
        Prediction and reference lengths, float64, broadcastable against ``matches``
        (typically (C, 1) and (1, R)).

    Returns
    -------
    numpy.ndarray
        float64 F1 in [0, 1], of the broadcast shape; 0 wherever ``matches`` is 0 (including
        empty sides, as in SQuAD v1.1 and rouge-score).
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = matches / pred_len
        recall = matches / ref_len
        f1 = 2 * precision * recall / (precision + recall)
    return np.where(matches > 0, f1, 0.0)


def equality_pairwise(
    cands: Sequence[Any], refs: Sequence[Any], key: Callable[[Any], Hashable]
) -> np.ndarray:
    """The (C, R) float64 matrix ``M[i, j] = float(key(cands[i]) == key(refs[j]))``.

    ``key`` (a normalization) runs once per input; the keys become integer codes, so the
    comparison is O(C x R) array work instead of C x R string comparisons.
    """
    codes: dict[Hashable, int] = {}
    c = np.fromiter(
        (codes.setdefault(key(x), len(codes)) for x in cands), dtype=np.int64, count=len(cands)
    )
    r = np.fromiter(
        (codes.setdefault(key(x), len(codes)) for x in refs), dtype=np.int64, count=len(refs)
    )
    return (c[:, None] == r[None, :]).astype(np.float64)
