"""Exact match for MATH answers, after a LaTeX-aware normalization.

SQuAD normalization drops signs and punctuation, so it would count 5, -5 and 0.5 (or
``\\frac{1}{33}`` and ``\\frac{13}{3}``) as the same answer. ``normalize_math_answer`` instead
follows the MATH paper's ``is_equiv`` (Hendrycks et al., 2021): it unwraps ``\\boxed``, drops ``$``,
``\\left``/``\\right``, units in ``\\text{}``, degrees and percent signs, ``x =``, thousands
separators and trailing zeros, and writes fractions and roots one way.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from metricwise.metrics.base import Metric, register
from metricwise.text import equality_pairwise, last_boxed


def _strip_text_commands(s: str) -> str:
    r"""``\text{...}``: units after a value are dropped, a lone word is unwrapped."""
    pattern = re.compile(r"\\(?:text|textbf|mbox|mathrm)\{([^{}]*)\}")
    while True:
        m = pattern.search(s)
        if m is None:
            return s
        before = s[: m.start()].strip()
        inner = m.group(1).strip()
        # "188\text{ units}", "5\text{ cm}^2": units after a value are dropped.
        if before and re.search(r"[0-9}]\s*$", before):
            unit_power = re.match(r"\s*\^\s*(?:\{\s*\d\s*\}|\d)", s[m.end() :])
            end = m.end() + (unit_power.end() if unit_power else 0)
            s = s[: m.start()] + s[end:]
        else:
            s = s[: m.start()] + inner + s[m.end() :]


_FRAC_ARG = r"(\{[^{}]*\}|\\[a-zA-Z]+|[0-9a-zA-Z])"
_FRAC = re.compile(r"\\frac\s*" + _FRAC_ARG + r"\s*" + _FRAC_ARG)


def _brace(arg: str) -> str:
    return arg if arg.startswith("{") else "{" + arg + "}"


def _fix_fracs(s: str) -> str:
    r"""``\frac12`` -> ``\frac{1}{2}``, ``\frac\pi4`` -> ``\frac{\pi}{4}``, ``\sqrt3`` -> ``\sqrt{3}``."""
    s = _FRAC.sub(lambda m: "\\frac" + _brace(m.group(1)) + _brace(m.group(2)), s)
    return re.sub(r"\\sqrt\s*(\\[a-zA-Z]+|[0-9a-zA-Z])", lambda m: "\\sqrt{" + m.group(1) + "}", s)


def normalize_math_answer(answer: str) -> str:
    r"""A canonical string for a MATH answer, so that equivalent notations compare equal.

    In the spirit of the MATH paper's ``is_equiv`` (Hendrycks et al., 2021), steps in order:

    1. the content of the last ``\boxed{...}`` when there is one; surrounding ``$`` removed;
    2. ``\left``/``\right``, spacing commands (``\!``, ``\,``, ``\;``, ``\:``, ``\quad``),
       ``^\circ``, ``\%``/``%`` and ``\$`` removed; ``\dfrac``/``\tfrac`` -> ``\frac``;
       ``,\!`` thousands separators removed (``6,\!000`` -> ``6000``);
    3. ``\text{...}`` (also ``\textbf``, ``\mbox``, ``\mathrm``): dropped after a value (units:
       ``188\text{ units}`` -> ``188``), unwrapped otherwise (``\text{even}`` -> ``even``);
    4. a leading ``x =`` (one-letter variable) removed;
    5. ``\frac12`` -> ``\frac{1}{2}``, ``\sqrt3`` -> ``\sqrt{3}``; an integer ratio ``a/b`` ->
       ``\frac{a}{b}``;
    6. all whitespace removed, a trailing ``.`` removed, ``.5`` -> ``0.5``, and a plain decimal
       number written without trailing zeros (``5.0`` -> ``5``, ``2.50`` -> ``2.5``).

    Answers that are not numbers keep their LaTeX; nothing is evaluated symbolically
    (``\frac{1}{2}`` and ``0.5`` stay different).

    Examples
    --------
    >>> normalize_math_answer("$\\dfrac{1}{2}$"), normalize_math_answer("\\frac12")
    ('\\frac{1}{2}', '\\frac{1}{2}')
    >>> normalize_math_answer("188\\text{ units}"), normalize_math_answer("6,\\!000")
    ('188', '6000')
    >>> normalize_math_answer("x = 5.0"), normalize_math_answer("68^\\circ"), normalize_math_answer("-3")
    ('5', '68', '-3')
    >>> normalize_math_answer("\\left( 3, \\frac{\\pi}{2} \\right)")
    '(3,\\frac{\\pi}{2})'
    """
    s = str(answer).strip()
    boxed = last_boxed(s)
    if boxed is not None:
        s = boxed
    s = s.strip().strip("$").strip()
    s = s.replace("\n", " ")
    s = s.replace(",\\!", "")
    for command in (
        "\\left",
        "\\right",
        "\\!",
        "\\,",
        "\\;",
        "\\:",
        "\\quad",
        "\\qquad",
        "\\displaystyle",
    ):
        s = s.replace(
            command, "" if command.startswith(("\\left", "\\right", "\\display")) else " "
        )
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = re.sub(r"\^\s*\{?\s*\\circ\s*\}?", "", s).replace("\\circ", "")
    s = s.replace("\\%", "").replace("%", "").replace("\\$", "")
    s = _strip_text_commands(s)
    s = re.sub(r"^\s*[a-zA-Z]\s*=\s*(?=\S)", "", s)
    s = _fix_fracs(s)
    s = re.sub(r"^(-?\d+)\s*/\s*(\d+)$", r"\\frac{\1}{\2}", s.strip())
    s = "".join(s.split())
    s = s.rstrip(".")
    s = re.sub(r"(?<![0-9])\.(\d)", r"0.\1", s)
    if re.fullmatch(r"-?\d+\.\d+", s):
        s = s.rstrip("0").rstrip(".")
    return s


@register("math_exact_match")
class MathExactMatch(Metric):
    """1.0 when the LaTeX-normalized MATH answers are equal, else 0.0. Bayes decision: the mode."""

    bayes_rule = "mode"

    def normalize(self, value: Any) -> Any:
        return normalize_math_answer(str(value))

    def _score_one(self, pred: Any, ref: Any) -> float:
        return float(self.normalize(pred) == self.normalize(ref))

    def pairwise(self, cands: Sequence[Any], refs: Sequence[Any]) -> np.ndarray:
        """(C, R) equality matrix of normalized answers by integer codes; O(C x R) array work."""
        return equality_pairwise(cands, refs, self.normalize)
