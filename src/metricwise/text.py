"""Text helpers shared by answer extraction (:mod:`metricwise.extract`) and the metrics.

Both sides need the same definitions (the exact-match metric and the ``mode`` rule must agree
with what extraction calls "the same answer"), so they live here, below both: this module
imports neither :mod:`metricwise.extract` nor :mod:`metricwise.metrics`, which keeps the two
free of an import cycle.

- :func:`normalize_answer`: the SQuAD v1.1 answer normalization.
- :func:`last_boxed` and :func:`matching_brace`: LaTeX ``\\boxed{...}`` content, for MATH
  answers (extraction cues and the MATH metric).
"""

from __future__ import annotations

import re
import string

__all__ = ["last_boxed", "matching_brace", "normalize_answer"]

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
