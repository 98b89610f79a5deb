"""Answer extraction: turn raw model outputs into numbers or short answers.

Every sample goes through one of these functions before a decision, so they are written to be
fast (regular expressions compiled at import, one left-to-right scan, early exit for the first
number) and never to raise on odd text: a text without an answer gives ``None``.

Numbers
-------
:func:`parse_number` reads the numbers of a text left to right and returns the first, the last,
or the one after an answer cue. The grammar and the choices made for ambiguous inputs:

- Signs ``+``, ``-`` and the Unicode minus U+2212. A sign glued to a preceding letter or digit
  is a hyphen, not a sign: ``"3-5"`` is 3 then 5, ``"item-2"`` is 2. A sign must touch its
  digits: in the list item ``"- 5 apples"`` the number is 5.
- Decimals ``"3.5"``, ``".5"`` and ``"5."``; exponents ``"1e-3"``, ``"2.5E+4"``;
  ``"6.02 x 10^23"`` (also ``×``, ``*``, ``\\times``, ``\\cdot``, ``^`` or ``**``).
- Thousands separators: commas followed by groups of exactly three digits, ``"1,234,567.5"``.
  A comma before any other number of digits is not a separator, and never a decimal comma:
  ``"1,5"`` is 1 then 5 and ``"1,23"`` is 1 then 23.
- Currency symbols ``$ € £ ¥ ₹`` before the number (also after the sign) are ignored.
- Percents ``"45%"``, ``"45 %"``, ``"45 percent"``, ``"45\\%"``: 45 with ``percent="keep"``,
  0.45 with ``percent="fraction"``.
- Fractions ``"3/4"`` = 0.75 and ``"-1/2"`` = -0.5 (integer over integer, no sign on the
  denominator, spaces around the slash allowed); mixed numbers ``"1 1/2"`` = 1.5 (a whole
  number, spaces, then a proper fraction); LaTeX ``\\frac{3}{4}`` (and ``\\dfrac``,
  ``\\tfrac``) with plain numbers inside.
- "Out of" readings give the numerator: ``"4 out of 5"`` is 4; ``"a/b"`` where ``a`` or ``b``
  has a decimal point is a score, ``"3.5/5"`` is 3.5; and when ``valid_range`` is given and
  ``b`` equals its upper bound, ``"4/5"`` with ``valid_range=(1, 5)`` is 4. In all three the
  denominator is used up and is not a number of its own (so ``which="last"`` gives 4 too).
  That reading wins over a mixed number: ``"3 4/5"`` with ``valid_range=(0, 5)`` is 3 then 4.
- ``"a/0"`` (a true division by zero) is not a number; both parts are used up.
- Dates, times and versions are split into their integer parts, never read as one number:
  ``"12:30"`` is 12 then 30, ``"2024-01-15"`` is 2024, 1, 15, ``"01/15/2024"`` and
  ``"15.01.2024"`` and ``"1.2.3"`` are 1, 15, 2024 / 15, 1, 2024 / 1, 2, 3 (a run of three or
  more digit groups joined by the same ``.`` or ``/``). ``"a/b"`` next to another slash
  (``"1 / 2 / 3"``) is not a fraction.
- ``"10^3"`` alone is 10 then 3 (only ``"m x 10^k"`` is scientific notation).
- Only ASCII digits 0-9 are digits. ``"inf"``, ``"nan"`` and ``"Infinity"`` contain no
  number, and a number that overflows (``"1e999"``) is skipped: non-finite values are never
  returned. One that underflows (``"1e-999"``) is 0.0.

Nothing is clipped by :func:`parse_number`; :func:`extract_number` clips (or rejects) values
outside ``valid_range``.

Answer cues
-----------
:data:`DEFAULT_CUES` are matched case-insensitively; the last one with something after it wins.
After a cue, a leading ``:``, ``=``, ``*`` or ``is`` is skipped and the answer runs to the end of
its line (a cue at the end of a line takes the next non-empty line). A cue ending in ``{``
(``\\boxed{``) takes the brace-balanced content instead. Models that keep writing the next
few-shot question after their answer should be cut with stop strings while sampling: the last
cue would otherwise be the invented one.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal, NamedTuple

from metricwise.errors import InvalidParameterError, UnknownNameError, did_you_mean
from metricwise.text import last_boxed, matching_brace, normalize_answer

# normalize_answer (in the README) and last_boxed (used by tasks) live in metricwise.text, below
# both extract and metrics; they stay importable from here.
__all__ = [
    "DEFAULT_CUES",
    "EXTRACTOR_KINDS",
    "Extractor",
    "answer_after",
    "clip",
    "extract_number",
    "first_line",
    "last_boxed",
    "normalize_answer",
    "parse_number",
    "regex_extract",
]

Which = Literal["first", "last", "answer"]
PercentMode = Literal["keep", "fraction"]
ExtractorKind = Literal["number", "first_line", "regex", "answer", "text"]

WHICH: tuple[str, ...] = ("first", "last", "answer")
PERCENT_MODES: tuple[str, ...] = ("keep", "fraction")
EXTRACTOR_KINDS: tuple[str, ...] = ("number", "first_line", "regex", "answer", "text")

#: Phrases after which the answer follows, matched case-insensitively. A cue that ends in ``{``
#: takes the brace-balanced content after it.
DEFAULT_CUES: tuple[str, ...] = (
    "\\boxed{",
    "####",
    "final answer",
    "answer is",
    "answer:",
    "answer =",
)

# -- the number grammar -----------------------------------------------------------------------
# One match is an optional sign and currency symbol followed by either a date/version chain
# (split into its integer parts) or one number: mantissa, exponent, "x 10^k", percent sign.
_NUMBER = re.compile(
    r"""
    (?=[-+$€£¥₹0-9.])  # a cheap first-character test that makes scanning ~5x faster
    (?P<sign>[-+])?
    (?P<cur>[$€£¥₹])?
    (?P<sign2>(?<=[$€£¥₹])[-+])?
    (?:
        (?P<chain>[0-9]+(?P<sep>[./])[0-9]+(?:(?P=sep)[0-9]+)+)
      | (?P<mant>
            [0-9]{1,3}(?:,[0-9]{3})+(?![0-9])(?:\.[0-9]*)?
          | [0-9]+(?:\.[0-9]*)?
          | (?<![\w.])\.[0-9]+
        )
        (?:[eE](?P<exp>[-+]?[0-9]+))?
        (?:[ \t]*(?:[xX×*·]|\\times|\\cdot)[ \t]*10[ \t]*(?:\^|\*\*)[ \t]*\{?[ \t]*
            (?P<sci>[-+]?[0-9]{1,4})[ \t]*\}?)?
        (?P<pct>[ \t]*(?:\\?%|(?i:per[ ]?cent)\b))?
    )
    """,
    re.VERBOSE,
)
_DIGIT_RUN = re.compile(r"[0-9]+")
_ANY_DIGIT = re.compile(r"[0-9]")
_SLASH_GAP = re.compile(r"[ \t]*/[ \t]*")
_SLASH_DIGIT_AFTER = re.compile(r"[ \t]*/[ \t]*[0-9]")
_SPACE_GAP = re.compile(r"[ \t]+")
_OUT_OF_GAP = re.compile(r"\s+out\s+of\s+", re.IGNORECASE)
_LATEX_FRAC = re.compile(
    r"\\[dt]?frac\s*\{\s*([-+]?[0-9][0-9.,]*)\s*\}\s*\{\s*([0-9][0-9.,]*)\s*\}"
)
_CUE_LEAD = re.compile(r"[\s:=*]*(?:is\b[\s:=*]*)?", re.IGNORECASE)
_TRAILING_PUNCTUATION = " \t\r\n.,;:!?*"


class _Token(NamedTuple):
    """One number as written, before fractions and "out of" readings are applied."""

    start: int  # where it starts (its sign, if the sign counts)
    end: int
    value: float
    plain: bool  # no exponent, percent or chain: may take part in a fraction or "out of"
    integer: bool  # plain and written without a decimal point
    signed: bool  # carries an explicit sign
    currency: bool


def _tokens(text: str, fraction_percent: bool) -> Iterator[_Token]:
    for m in _NUMBER.finditer(text):
        sign, cur, sign2, chain, _sep, mant, exp, sci, pct = m.groups()
        start = m.start()
        if sign is not None and start > 0 and (text[start - 1].isalnum() or text[start - 1] == "_"):
            sign, start = None, start + 1  # a hyphen ("3-5", "item-2"), not a sign
        if chain is not None:
            offset = m.start(4)
            for part in _DIGIT_RUN.finditer(chain):
                yield _Token(
                    offset + part.start(),
                    offset + part.end(),
                    float(part.group()),
                    False,
                    False,
                    False,
                    False,
                )
            continue
        if "," in mant:
            mant = mant.replace(",", "")
        # float() of a digit string never raises and saturates to inf / 0 on huge exponents.
        if exp is None:
            value = float(mant if sci is None else f"{mant}e{sci}")
        else:
            value = float(f"{mant}e{exp}")
            if sci is not None:  # "1e2 x 10^3": rare, so not worth an exact decimal sum
                value *= float(f"1e{sci}")
        if pct is not None and fraction_percent:
            value /= 100.0
        if (sign == "-") != (sign2 == "-"):
            value = -value
        plain = exp is None and sci is None and pct is None
        yield _Token(
            start,
            m.end(),
            value,
            plain,
            plain and "." not in mant,
            sign is not None or sign2 is not None,
            cur is not None,
        )


def _slash_before(text: str, start: int) -> bool:
    i = start - 1
    while i >= 0 and text[i] in " \t":
        i -= 1
    return i >= 0 and text[i] == "/"


def _is_fraction(text: str, a: _Token, b: _Token) -> bool:
    """Whether ``a / b`` is written as one fraction (not part of a date such as 1/15/2024)."""
    return (
        a.plain
        and b.plain
        and not b.signed
        and not b.currency
        and _SLASH_GAP.fullmatch(text, a.end, b.start) is not None
        and _SLASH_DIGIT_AFTER.match(text, b.end) is None
    )


def _combine(text: str, buf: list[_Token], hi: float | None) -> tuple[float | None, int]:
    """The value starting at ``buf[0]`` and how many tokens it uses (fraction, mixed, out of)."""
    t0 = buf[0]
    if len(buf) < 2 or not t0.plain or _slash_before(text, t0.start):
        return t0.value, 1
    t1 = buf[1]
    if t1.plain and _OUT_OF_GAP.fullmatch(text, t0.end, t1.start) is not None:
        return t0.value, 2
    if _is_fraction(text, t0, t1):
        if not (t0.integer and t1.integer) or (hi is not None and t1.value == hi):
            return t0.value, 2  # "3.5/5", "4/5" on a 1-5 scale: a score out of b
        if t1.value == 0:
            return None, 2
        return t0.value / t1.value, 2
    if (
        len(buf) >= 3
        and t0.integer
        and not t1.signed
        and _SPACE_GAP.fullmatch(text, t0.end, t1.start)
    ):
        t2 = buf[2]
        if (
            t1.integer
            and t2.integer
            and 0 < t1.value < t2.value
            and not (hi is not None and t2.value == hi)
            and _is_fraction(text, t1, t2)
        ):
            return math.copysign(abs(t0.value) + t1.value / t2.value, t0.value), 3
    return t0.value, 1


def _values(text: str, hi: float | None, fraction_percent: bool) -> Iterator[float]:
    """Yield the finite numbers of ``text`` left to right (lazily: the first costs little)."""
    tokens = _tokens(text, fraction_percent)
    buf: list[_Token] = []
    exhausted = False
    while True:
        while not exhausted and len(buf) < 3:
            token = next(tokens, None)
            if token is None:
                exhausted = True
            else:
                buf.append(token)
        if not buf:
            return
        value, used = _combine(text, buf, hi)
        del buf[:used]
        if value is not None and math.isfinite(value):
            yield value


def _preprocess(text: str) -> str:
    if "\u2212" in text:
        text = text.replace("\u2212", "-")
    if "\\" in text and "frac" in text:
        text = _LATEX_FRAC.sub(r"\1/\2", text)
    if "{,}" in text:  # LaTeX thousands separator 1{,}234
        text = text.replace("{,}", ",")
    return text


# -- answer cues ------------------------------------------------------------------------------
def _cue_regex(cue: str) -> str:
    """A cue as a regex: a space matches any whitespace, and may be absent before punctuation
    (``"answer ="`` matches ``"answer=5"``); word boundaries at alphanumeric ends."""
    parts, pos = [], 0
    for gap in re.finditer(r" +", cue):
        parts.append(re.escape(cue[pos : gap.start()]))
        parts.append(r"\s+" if cue[gap.end() : gap.end() + 1].isalnum() else r"\s*")
        pos = gap.end()
    parts.append(re.escape(cue[pos:]))
    body = "".join(parts)
    if cue[:1].isalnum():
        body = r"\b" + body
    if cue[-1:].isalnum():
        body += r"\b"
    return body


@lru_cache(maxsize=64)
def _cue_pattern(cues: tuple[str, ...]) -> re.Pattern[str] | None:
    if not cues:
        return None
    ordered = sorted(
        set(cues), key=lambda c: (-len(c), c)
    )  # longest first: "final answer" before "answer:"
    return re.compile("|".join(_cue_regex(c) for c in ordered), re.IGNORECASE)


def _check_cues(cues: Iterable[str], where: str) -> tuple[str, ...]:
    if isinstance(cues, str):
        cues = (cues,)
    try:
        result = tuple(cues)
    except TypeError:
        raise InvalidParameterError(
            f"The 'cues' parameter of {where} must be a sequence of non-empty strings. Got {cues!r} instead."
        ) from None
    if not all(isinstance(c, str) and c.strip() for c in result):
        raise InvalidParameterError(
            f"The 'cues' parameter of {where} must be a sequence of non-empty strings. Got {result!r} instead."
        )
    return result


def _cue_segment(text: str, m: re.Match[str], stop: int) -> str:
    """The answer after one cue match: the brace content for ``\\boxed{``, else the rest of the
    line, up to ``stop`` (where the next cue starts)."""
    end = m.end()
    if m.group().endswith("{"):
        close = matching_brace(text, end)
        if close >= 0:
            return text[end:close].strip()
    lead = _CUE_LEAD.match(text, end, stop)
    pos = lead.end() if lead is not None else end
    newline = text.find("\n", pos, stop)
    line = text[pos : stop if newline < 0 else newline]
    return line.rstrip(_TRAILING_PUNCTUATION).strip()


def _cue_segments(text: str, cues: tuple[str, ...]) -> tuple[list[str], bool]:
    """The non-empty answers after each cue, last cue first, and whether any cue was found."""
    pattern = _cue_pattern(cues)
    if pattern is None:
        return [], False
    matches = list(pattern.finditer(text))
    if not matches:
        return [], False
    stops = [m.start() for m in matches[1:]] + [len(text)]
    segments = [
        _cue_segment(text, m, stop)
        for m, stop in zip(reversed(matches), reversed(stops), strict=True)
    ]
    return [s for s in segments if s], True


# -- validation -------------------------------------------------------------------------------
def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_range(valid_range: Any, where: str) -> tuple[float, float]:
    message = (
        f"The 'valid_range' parameter of {where} must be a pair (lo, hi) of finite numbers with "
        f"lo < hi. Got {valid_range!r} instead."
    )
    try:
        lo, hi = valid_range
    except (TypeError, ValueError):
        raise InvalidParameterError(message) from None
    if not (_is_number(lo) and _is_number(hi)):
        raise InvalidParameterError(message)
    lo, hi = float(lo), float(hi)
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise InvalidParameterError(message)
    return lo, hi


def _check_choice(value: Any, name: str, where: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        hint = did_you_mean(value, list(choices)) if isinstance(value, str) else ""
        raise InvalidParameterError(
            f"The {name!r} parameter of {where} must be one of {', '.join(map(repr, choices))}. "
            f"Got {value!r} instead.{hint}"
        )


def _check_text(text: Any, where: str) -> str:
    if not isinstance(text, str):
        raise InvalidParameterError(
            f"The 'text' parameter of {where} must be a str. Got {text!r} instead."
        )
    return text


# -- public API -------------------------------------------------------------------------------
def parse_number(
    text: str,
    *,
    which: Which = "first",
    valid_range: tuple[float, float] | None = None,
    percent: PercentMode = "keep",
    cues: Iterable[str] = DEFAULT_CUES,
) -> float | None:
    """Find a number in ``text`` and return it as a float, or ``None`` when there is none.

    See the module docstring for the full grammar and the choices made for ambiguous inputs
    (dates, ``"1,23"``, ``"3.5/5"``, ...). The value is never clipped.

    Parameters
    ----------
    text:
        The model output. A real number (int, float, numpy scalar) is returned as a float when
        finite, so that already parsed samples can pass through.
    which:
        ``"first"`` or ``"last"`` number of the text, or ``"answer"``: the first number after
        the last answer cue (:data:`DEFAULT_CUES`: ``\\boxed{...}``, ``####``,
        ``"answer is"``, ``"answer:"``, ...) that has one, falling back to the last number.
    valid_range:
        ``(lo, hi)`` of the target scale. Only used to read ``"a/hi"`` as ``"a out of hi"``.
    percent:
        ``"keep"``: ``"45%"`` is 45.0. ``"fraction"``: ``"45%"`` is 0.45.
    cues:
        The answer cues for ``which="answer"`` (see :func:`answer_after`).

    Returns
    -------
    float or None
        A finite float, or ``None``. Runs in O(len(text)); ``which="first"`` stops at the first
        number.

    Examples
    --------
    >>> parse_number("The answer is 3.5/5")
    3.5
    >>> parse_number("about 3/4 of it"), parse_number("1 1/2 cups"), parse_number("-1,234.5")
    (0.75, 1.5, -1234.5)
    >>> parse_number("4/5", valid_range=(1, 5)), parse_number("4 out of 5")
    (4.0, 4.0)
    >>> parse_number("45%"), parse_number("45%", percent="fraction")
    (45.0, 0.45)
    >>> parse_number("6.02 x 10^23"), parse_number("$1,234.50")
    (6.02e+23, 1234.5)
    >>> parse_number("3 + 4 = 7. #### 7", which="answer"), parse_number("1, 2, 3", which="last")
    (7.0, 3.0)
    >>> parse_number("no digits here") is None, parse_number("inf") is None
    (True, True)
    """
    if _is_number(text):
        number = float(text)
        return number if math.isfinite(number) else None
    text = _check_text(text, "parse_number")
    _check_choice(which, "which", "parse_number", WHICH)
    _check_choice(percent, "percent", "parse_number", PERCENT_MODES)
    hi = None if valid_range is None else check_range(valid_range, "parse_number")[1]
    fraction_percent = percent == "fraction"
    if _ANY_DIGIT.search(text) is None:
        return None
    text = _preprocess(text)
    if which == "first":
        return next(_values(text, hi, fraction_percent), None)
    if which == "answer":
        for segment in _cue_segments(text, _check_cues(cues, "parse_number"))[0]:
            found = next(_values(segment, hi, fraction_percent), None)
            if found is not None:
                return found
    last: float | None = None
    for value in _values(text, hi, fraction_percent):
        last = value
    return last


def clip(value: float, valid_range: tuple[float, float]) -> float:
    """Clip ``value`` to the closed interval ``valid_range = (lo, hi)``.

    NaN stays NaN (as with :func:`numpy.clip`); infinities go to the bounds.

    Raises
    ------
    InvalidParameterError
        When ``value`` is not a number, or ``valid_range`` is not two finite numbers with
        ``lo < hi``.

    Examples
    --------
    >>> clip(7, (0, 5)), clip(-1.5, (0, 5)), clip(2.5, (0, 5))
    (5.0, 0.0, 2.5)
    """
    lo, hi = check_range(valid_range, "clip")
    if not _is_number(value):
        raise InvalidParameterError(
            f"The 'value' parameter of clip must be a number. Got {value!r} instead."
        )
    value = float(value)
    if math.isnan(value):
        return value
    return min(max(value, lo), hi)


def extract_number(
    text: str,
    *,
    valid_range: tuple[float, float] | None = None,
    clip_to_range: bool = True,
    which: Which = "first",
    percent: PercentMode = "keep",
    cues: Iterable[str] = DEFAULT_CUES,
) -> float | None:
    """Parse a number with :func:`parse_number`, then bring it into ``valid_range``.

    Parameters
    ----------
    text, which, percent, cues:
        As in :func:`parse_number`.
    valid_range:
        ``(lo, hi)``, or ``None`` for no range.
    clip_to_range:
        ``True``: a value outside the range is clipped to it (a model that answers 6 on a 0-5
        scale means "as high as it goes"). ``False``: a value outside the range is rejected
        (``None``), so that a decision can leave the sample out. Either way the result is in
        the range or ``None``.

    Examples
    --------
    >>> extract_number("I'd say 7", valid_range=(0, 5))
    5.0
    >>> extract_number("I'd say 7", valid_range=(0, 5), clip_to_range=False) is None
    True
    >>> extract_number("Rating: 4/5", valid_range=(1, 5))
    4.0
    """
    value = parse_number(text, which=which, valid_range=valid_range, percent=percent, cues=cues)
    if value is None or valid_range is None:
        return value
    if clip_to_range:
        return clip(value, valid_range)
    lo, hi = check_range(valid_range, "extract_number")
    return value if lo <= value <= hi else None


def first_line(text: str) -> str:
    """The first non-empty line of ``text``, stripped; ``""`` when there is none.

    Examples
    --------
    >>> first_line("\\n  Paris\\nQuestion: ...")
    'Paris'
    """
    text = _check_text(text, "first_line")
    for line in text.splitlines():
        stripped = line.strip()
        if stripped:
            return stripped
    return ""


def regex_extract(
    text: str, pattern: str | re.Pattern[str], *, group: int | str = 1, flags: int = 0
) -> str | None:
    """The given group of the first match of ``pattern`` in ``text``, or ``None``.

    Parameters
    ----------
    pattern:
        A regular expression (string or compiled). Compiled once and cached by :mod:`re`.
    group:
        Group number or name. A pattern without groups returns the whole match (group 0).
    flags:
        :mod:`re` flags for a string pattern.

    Returns
    -------
    str or None
        ``None`` when nothing matches or the group did not take part in the match.

    Raises
    ------
    InvalidParameterError
        When ``pattern`` is not a valid regular expression or has no such group.

    Examples
    --------
    >>> regex_extract("Label: positive.", r"Label:\\s*(\\w+)")
    'positive'
    >>> regex_extract("call 555-1234", r"\\d{3}-\\d{4}")
    '555-1234'
    """
    text = _check_text(text, "regex_extract")
    compiled = _compile_pattern(pattern, flags, "regex_extract")
    if compiled.groups == 0 and group == 1:
        group = 0
    _check_group(compiled, group, "regex_extract")
    m = compiled.search(text)
    return None if m is None else m.group(group)


def _compile_pattern(pattern: Any, flags: int, where: str) -> re.Pattern[str]:
    if isinstance(pattern, re.Pattern):
        if flags:
            raise InvalidParameterError(
                f"The 'flags' parameter of {where} must be 0 when the pattern is already compiled. "
                f"Got {flags!r} instead."
            )
        return pattern
    if not isinstance(pattern, str):
        raise InvalidParameterError(
            f"The 'pattern' parameter of {where} must be a regular expression string. Got {pattern!r} instead."
        )
    try:
        return re.compile(pattern, flags)
    except re.error as exc:
        raise InvalidParameterError(
            f"The 'pattern' parameter of {where} must be a valid regular expression. "
            f"Got {pattern!r} instead ({exc})."
        ) from None


def _check_group(compiled: re.Pattern[str], group: Any, where: str) -> None:
    ok = (
        isinstance(group, int) and not isinstance(group, bool) and 0 <= group <= compiled.groups
    ) or (isinstance(group, str) and group in compiled.groupindex)
    if not ok:
        raise InvalidParameterError(
            f"The 'group' parameter of {where} must name a group of {compiled.pattern!r} "
            f"(0..{compiled.groups} or one of {sorted(compiled.groupindex)}). Got {group!r} instead."
        )


def answer_after(text: str, cues: Iterable[str] = DEFAULT_CUES) -> str:
    """The answer after the last answer cue in ``text``, else the whole text, stripped.

    Cues are matched case-insensitively (a space in a cue matches any whitespace). After the
    cue, a leading ``:``, ``=``, ``*`` or ``is`` is skipped, the answer runs to the end of its
    line, and trailing punctuation (``.,;:!?*``) is removed. A cue ending in ``{`` takes the
    brace-balanced content. When the last cue has nothing after it, the previous one is used;
    when cues are present but none has an answer, the result is ``""``.

    Parameters
    ----------
    cues:
        The cue phrases (a single string is one cue). Default :data:`DEFAULT_CUES`.

    Examples
    --------
    >>> answer_after("Paris is large. The answer is Paris.")
    'Paris'
    >>> answer_after("so 6 * 7 = 42\\n#### 42")
    '42'
    >>> answer_after("Thus $\\\\boxed{\\\\frac{1}{2}}$.")
    '\\\\frac{1}{2}'
    >>> answer_after("  Paris  ")
    'Paris'
    """
    text = _check_text(text, "answer_after")
    segments, found = _cue_segments(text, _check_cues(cues, "answer_after"))
    if segments:
        return segments[0]
    return "" if found else text.strip()


@dataclass(frozen=True)
class Extractor:
    """A reusable extraction step: callable on a text, returning the answer or ``None``.

    Parameters
    ----------
    kind:
        ``"number"`` (:func:`extract_number`), ``"first_line"`` (:func:`first_line`),
        ``"regex"`` (:func:`regex_extract`), ``"answer"`` (:func:`answer_after`) or
        ``"text"`` (the whole text, stripped).
    which, valid_range, clip_to_range, percent:
        For ``kind="number"``, as in :func:`extract_number`.
    pattern, group, flags:
        For ``kind="regex"``, as in :func:`regex_extract`; ``pattern`` is required there.
    cues:
        For ``kind="answer"``, and ``kind="number"`` with ``which="answer"``: as in
        :func:`answer_after`.

    Text kinds return ``None`` instead of an empty string, so that a decision counts the sample
    as unparsable.

    Examples
    --------
    >>> Extractor(kind="number", which="answer", valid_range=(0, 5))("So... the answer is 4.5/5.")
    4.5
    >>> Extractor.from_spec("number:last")("between 3 and 4")
    4.0
    >>> Extractor.from_spec("regex:Label: (\\\\w+)")("Label: positive")
    'positive'
    >>> Extractor.from_spec("first_line")("\\n") is None
    True
    """

    kind: ExtractorKind = "number"
    which: Which = "first"
    valid_range: tuple[float, float] | None = None
    clip_to_range: bool = True
    percent: PercentMode = "keep"
    pattern: str | None = None
    group: int | str = 1
    flags: int = 0
    cues: tuple[str, ...] = DEFAULT_CUES
    _compiled: re.Pattern[str] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in EXTRACTOR_KINDS:
            hint = (
                did_you_mean(self.kind, list(EXTRACTOR_KINDS)) if isinstance(self.kind, str) else ""
            )
            raise UnknownNameError(
                f"The 'kind' parameter of Extractor must be one of {', '.join(map(repr, EXTRACTOR_KINDS))}. "
                f"Got {self.kind!r} instead.{hint}"
            )
        _check_choice(self.which, "which", "Extractor", WHICH)
        _check_choice(self.percent, "percent", "Extractor", PERCENT_MODES)
        if self.valid_range is not None:
            object.__setattr__(self, "valid_range", check_range(self.valid_range, "Extractor"))
        object.__setattr__(self, "cues", _check_cues(self.cues, "Extractor"))
        if self.kind == "regex":
            if self.pattern is None:
                raise InvalidParameterError(
                    "The 'pattern' parameter of Extractor must be a regular expression when kind='regex'. Got None instead."
                )
            compiled = _compile_pattern(self.pattern, self.flags, "Extractor")
            group = 0 if compiled.groups == 0 and self.group == 1 else self.group
            _check_group(compiled, group, "Extractor")
            object.__setattr__(self, "group", group)
            object.__setattr__(self, "_compiled", compiled)

    def __call__(self, text: str) -> float | str | None:
        if self.kind == "number":
            return extract_number(
                text,
                valid_range=self.valid_range,
                clip_to_range=self.clip_to_range,
                which=self.which,
                percent=self.percent,
                cues=self.cues,
            )
        text = _check_text(text, "Extractor")
        if self.kind == "regex" and self._compiled is not None:  # compiled in __post_init__
            m = self._compiled.search(text)
            result = None if m is None else m.group(self.group)
        elif self.kind == "first_line":
            result = first_line(text)
        elif self.kind == "answer":
            result = answer_after(text, self.cues)
        else:
            result = text.strip()
        return result or None

    @property
    def spec(self) -> str:
        """The short spec that :meth:`from_spec` reads back (keyword options not included)."""
        if self.kind == "number":
            return "number" if self.which == "first" else f"number:{self.which}"
        if self.kind == "regex":
            return f"regex:{self.pattern}"
        return self.kind

    def signature(self) -> str:
        """The spec plus every option that changes the result, for reproducible reports.

        Stable: equal extractors give equal strings in every process (no hashes, no set order),
        and extractors that can extract differently give different strings, e.g.
        ``"number:answer[range=0..5,percent=fraction]"``. Evaluation signatures embed it.
        """
        options = []
        if self.kind == "number":
            if self.valid_range is not None:
                lo, hi = self.valid_range
                options.append(f"range={_number_text(lo)}..{_number_text(hi)}")
                if not self.clip_to_range:
                    options.append("reject")
            if self.percent != "keep":
                options.append(f"percent={self.percent}")
        if self.kind == "regex" and (self.group != 1 or self.flags):
            options.append(f"group={self.group},flags={self.flags}")
        uses_cues = self.kind == "answer" or (self.kind == "number" and self.which == "answer")
        if uses_cues and self.cues != DEFAULT_CUES:
            options.append(f"cues={list(self.cues)!r}")
        return self.spec + (f"[{','.join(options)}]" if options else "")

    @classmethod
    def from_spec(cls, spec: str | Extractor, **options: Any) -> Extractor:
        """Build an extractor from a short spec string, with keyword options on top.

        Specs: ``"number"``, ``"number:first"``, ``"number:last"``, ``"number:answer"``,
        ``"first_line"``, ``"answer"``, ``"text"``, ``"regex:<pattern>"`` (everything after
        the first colon is the pattern). Keyword ``options`` are passed to the constructor,
        e.g. ``Extractor.from_spec("number:answer", valid_range=(0, 5))``. An
        :class:`Extractor` given without options is returned as is.

        Raises
        ------
        UnknownNameError
            (an :class:`InvalidParameterError`) for an unknown spec, with a suggestion.
        """
        if isinstance(spec, Extractor):
            return spec if not options else cls(**{**_fields(spec), **options})
        if not isinstance(spec, str):
            raise InvalidParameterError(
                f"The 'spec' parameter of Extractor.from_spec must be a string such as 'number:last'. Got {spec!r} instead."
            )
        head, sep, rest = spec.strip().partition(":")
        head = head.strip()
        if head == "regex" and sep:
            return cls(kind="regex", pattern=rest, **options)
        if head == "number" and sep:
            which = rest.strip()
            if which not in WHICH:
                raise UnknownNameError(
                    f"The 'spec' parameter of Extractor.from_spec must be one of {_spec_list()}. "
                    f"Got {spec!r} instead.{did_you_mean(spec.strip(), list(_SPECS))}"
                )
            return cls(kind="number", which=which, **options)  # type: ignore[arg-type]
        if not sep and head in ("number", "first_line", "answer", "text"):
            return cls(kind=head, **options)  # type: ignore[arg-type]
        if head == "regex":
            hint = " Did you mean 'regex:<pattern>'?"
        else:
            hint = did_you_mean(spec.strip(), list(_SPECS)) or did_you_mean(head, list(_SPECS))
        if not hint and sep:
            hint = did_you_mean(head, ["regex", "number"])
        raise UnknownNameError(
            f"The 'spec' parameter of Extractor.from_spec must be one of {_spec_list()}. Got {spec!r} instead.{hint}"
        )


def _number_text(value: float) -> str:
    """``value`` as ``:g`` writes it ("5", "0.5") unless that rounds it; then its ``repr``.

    ``:g`` alone keeps six significant digits, so ranges (0, 1) and (0, 1.0000001) would share a
    signature; -0.0 is written as 0.0 (the same range).
    """
    value = float(value) + 0.0
    short = f"{value:g}"
    return short if float(short) == value else repr(value)


_SPECS: tuple[str, ...] = (
    "number",
    "number:first",
    "number:last",
    "number:answer",
    "first_line",
    "answer",
    "text",
    "regex",
)


def _spec_list() -> str:
    return ", ".join(repr(s) for s in _SPECS[:-1]) + ", 'regex:<pattern>'"


def _fields(extractor: Extractor) -> dict[str, Any]:
    return {
        "kind": extractor.kind,
        "which": extractor.which,
        "valid_range": extractor.valid_range,
        "clip_to_range": extractor.clip_to_range,
        "percent": extractor.percent,
        "pattern": extractor.pattern,
        "group": extractor.group,
        "flags": extractor.flags,
        "cues": extractor.cues,
    }
