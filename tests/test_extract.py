"""Answer extraction: exact cases for every feature of the number grammar, the text extractors,
the Extractor spec, and property tests (round trips, never raising, always in range)."""

from __future__ import annotations

import ast
import doctest
import math
import re
import string
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metricwise import extract, text
from metricwise.errors import InvalidParameterError, UnknownNameError
from metricwise.extract import (
    DEFAULT_CUES,
    Extractor,
    answer_after,
    clip,
    extract_number,
    first_line,
    normalize_answer,
    parse_number,
    regex_extract,
)
from metricwise.metrics import squad

# (text, first, last, answer): the three `which` readings with no range and percent="keep".
NUMBER_CASES = [
    # signs and decimals
    ("-0.5", -0.5, -0.5, -0.5),
    ("+4", 4.0, 4.0, 4.0),
    ("\u22123.25", -3.25, -3.25, -3.25),  # Unicode minus
    (".5", 0.5, 0.5, 0.5),
    ("5.", 5.0, 5.0, 5.0),
    ("x=-5", -5.0, -5.0, -5.0),
    ("3-5", 3.0, 5.0, 5.0),  # a hyphen between digits is not a sign
    ("item-2", 2.0, 2.0, 2.0),
    ("- 5 apples", 5.0, 5.0, 5.0),  # a list dash is not a sign
    ("3.5-4.5", 3.5, 4.5, 4.5),
    # thousands separators: groups of exactly three digits, never a decimal comma
    ("1,000.25", 1000.25, 1000.25, 1000.25),
    ("1,234,567", 1234567.0, 1234567.0, 1234567.0),
    ("-1,234", -1234.0, -1234.0, -1234.0),
    ("1,23", 1.0, 23.0, 23.0),
    ("1,5", 1.0, 5.0, 5.0),
    ("1,2345", 1.0, 2345.0, 2345.0),
    ("12345,678", 12345.0, 678.0, 678.0),
    ("1, 2, 3", 1.0, 3.0, 3.0),
    ("1{,}234", 1234.0, 1234.0, 1234.0),  # LaTeX
    # fractions, mixed numbers, "out of"
    ("3/4", 0.75, 0.75, 0.75),
    ("-1/2", -0.5, -0.5, -0.5),
    ("3 / 4", 0.75, 0.75, 0.75),
    ("1 1/2", 1.5, 1.5, 1.5),
    ("-2 3/4 cups", -2.75, -2.75, -2.75),
    ("3 4/5", 3.8, 3.8, 3.8),
    ("3 5/4", 3.0, 1.25, 1.25),  # improper: not a mixed number
    ("3.5/5", 3.5, 3.5, 3.5),  # decimal over integer: a score out of 5
    ("4/5.0", 4.0, 4.0, 4.0),
    ("The answer is 3.5/5", 3.5, 3.5, 3.5),
    ("4 out of 5", 4.0, 4.0, 4.0),
    ("I'd give it 4 OUT OF 10.", 4.0, 4.0, 4.0),
    ("3/0", None, None, None),  # division by zero is not a number
    ("1 / 2 / 3", 1.0, 3.0, 3.0),  # slashes on both sides: not a fraction
    ("\\frac{3}{4}", 0.75, 0.75, 0.75),
    ("-\\dfrac{1}{2}", -0.5, -0.5, -0.5),
    # percents
    ("50%", 50.0, 50.0, 50.0),
    ("50 %", 50.0, 50.0, 50.0),
    ("12.5 percent", 12.5, 12.5, 12.5),
    ("50\\%", 50.0, 50.0, 50.0),
    # scientific notation
    ("1e3", 1000.0, 1000.0, 1000.0),
    ("1e-3", 0.001, 0.001, 0.001),
    ("2.5E+4", 25000.0, 25000.0, 25000.0),
    ("6.02 x 10^23", 6.02e23, 6.02e23, 6.02e23),
    ("6.02×10^{23}", 6.02e23, 6.02e23, 6.02e23),
    ("1.5 \\times 10^{-3}", 0.0015, 0.0015, 0.0015),
    ("2 * 10**3", 2000.0, 2000.0, 2000.0),
    ("10^3", 10.0, 3.0, 3.0),  # a bare power is not scientific notation
    ("5eggs", 5.0, 5.0, 5.0),
    # currency
    ("$12", 12.0, 12.0, 12.0),
    ("$1,234.50", 1234.5, 1234.5, 1234.5),
    ("-$5", -5.0, -5.0, -5.0),
    ("$-5", -5.0, -5.0, -5.0),
    ("€3.20 or £4", 3.2, 4.0, 4.0),
    # numbers in text and answer cues
    ("The answer is 7.", 7.0, 7.0, 7.0),
    ("#### 1,234", 1234.0, 1234.0, 1234.0),
    ("\\boxed{42}", 42.0, 42.0, 42.0),
    ("Step 1: 2 + 3 = 5. Step 2: 5 * 2 = 10.\n#### 10", 1.0, 10.0, 10.0),
    ("The answer is 42, not 43.", 42.0, 43.0, 42.0),
    ("Answer: 6. So 12 in total.", 6.0, 12.0, 6.0),
    ("We get $\\boxed{\\frac{1}{2}}$ after 3 steps", 0.5, 3.0, 0.5),
    ("The final answer is -3.", -3.0, -3.0, -3.0),
    ("The answer is 42. I hope that answer is right.", 42.0, 42.0, 42.0),
    ("I think 3 or 4", 3.0, 4.0, 4.0),  # no cue: the last number
    ("Answer: Paris, 2 times", 2.0, 2.0, 2.0),
    # dates, times and versions split into integers
    ("12:30", 12.0, 30.0, 30.0),
    ("2024-01-15", 2024.0, 15.0, 15.0),
    ("01/15/2024", 1.0, 2024.0, 2024.0),
    ("15.01.2024", 15.0, 2024.0, 2024.0),
    ("v1.2.3", 1.0, 3.0, 3.0),
    ("192.168.1.1", 192.0, 1.0, 1.0),
    # no number
    ("no digits here", None, None, None),
    ("", None, None, None),
    ("inf", None, None, None),
    ("-inf", None, None, None),
    ("NaN", None, None, None),
    ("Infinity", None, None, None),
    ("1e999", None, None, None),  # overflows: skipped
    ("1e999 or 5", 5.0, 5.0, 5.0),
    ("٣", None, None, None),  # only ASCII digits are digits
    ("...5", 5.0, 5.0, 5.0),
]


@pytest.mark.parametrize(("text", "first", "last", "answer"), NUMBER_CASES)
def test_parse_number_cases(
    text: str, first: float | None, last: float | None, answer: float | None
) -> None:
    for which, expected in (("first", first), ("last", last), ("answer", answer)):
        got = parse_number(text, which=which)  # type: ignore[arg-type]
        if expected is None:
            assert got is None, (text, which, got)
        else:
            assert got == pytest.approx(expected, rel=1e-12), (text, which, got)


@pytest.mark.parametrize(
    ("text", "valid_range", "expected_first", "expected_last"),
    [
        ("4/5", (1, 5), 4.0, 4.0),  # b is the scale's top: "4 out of 5"
        ("4/5", None, 0.8, 0.8),
        ("4/5", (0, 10), 0.8, 0.8),
        ("45/100", (0, 100), 45.0, 45.0),
        ("1/2", (0, 1), 0.5, 0.5),
        ("3 4/5", (0, 5), 3.0, 4.0),  # the out-of reading wins over a mixed number
        ("Rating: 4/5 stars", (1.0, 5.0), 4.0, 4.0),
    ],
)
def test_parse_number_out_of_range_top(
    text: str, valid_range: tuple[float, float] | None, expected_first: float, expected_last: float
) -> None:
    assert parse_number(text, valid_range=valid_range) == pytest.approx(expected_first)
    assert parse_number(text, valid_range=valid_range, which="last") == pytest.approx(expected_last)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("45%", 0.45), ("12.5 percent", 0.125), ("50\\%", 0.5), ("45", 45.0), ("-5%", -0.05)],
)
def test_parse_number_percent_fraction(text: str, expected: float) -> None:
    assert parse_number(text, percent="fraction") == pytest.approx(expected)


def test_parse_number_does_not_clip() -> None:
    assert parse_number("7", valid_range=(0, 5)) == 7.0


def test_parse_number_passes_numbers_through() -> None:
    assert parse_number(3) == 3.0
    assert parse_number(np.float32(2.5)) == 2.5
    assert parse_number(np.int64(4)) == 4.0
    assert parse_number(float("nan")) is None
    assert parse_number(float("inf")) is None


def test_parse_number_custom_cues() -> None:
    text = "Result => 8, checked 9"
    assert parse_number(text, which="answer") == 9.0
    assert parse_number(text, which="answer", cues=("result =>",)) == 8.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"which": "frist"},
            r"The 'which' parameter of parse_number must be one of .* Got 'frist' instead\. Did you mean 'first'\?",
        ),
        ({"percent": "fraktion"}, r"The 'percent' parameter of parse_number"),
        ({"valid_range": (5, 0)}, r"The 'valid_range' parameter of parse_number must be a pair"),
        ({"valid_range": (0, float("inf"))}, r"valid_range"),
        ({"valid_range": (0, 1, 2)}, r"valid_range"),
        ({"valid_range": ("0", "5")}, r"valid_range"),
        (
            {"cues": ("",)},
            r"The 'cues' parameter of parse_number",
        ),
    ],
)
def test_parse_number_bad_parameters(kwargs: dict, match: str) -> None:
    if "cues" in kwargs:
        kwargs = {**kwargs, "which": "answer"}
    with pytest.raises(InvalidParameterError, match=match):
        parse_number("3", **kwargs)


def test_parse_number_rejects_non_text() -> None:
    with pytest.raises(
        InvalidParameterError,
        match=r"The 'text' parameter of parse_number must be a str\. Got None instead\.",
    ):
        parse_number(None)  # type: ignore[arg-type]
    with pytest.raises(InvalidParameterError):
        parse_number(True)  # type: ignore[arg-type]


# -- clip and extract_number ------------------------------------------------------------------
def test_clip() -> None:
    assert clip(7, (0, 5)) == 5.0
    assert clip(-1, (0, 5)) == 0.0
    assert clip(2.5, (0, 5)) == 2.5
    assert clip(float("inf"), (0, 5)) == 5.0
    assert math.isnan(clip(float("nan"), (0, 5)))
    with pytest.raises(
        InvalidParameterError,
        match=r"The 'valid_range' parameter of clip .* Got \(5, 5\) instead\.",
    ):
        clip(1, (5, 5))
    with pytest.raises(InvalidParameterError, match="valid_range"):
        clip(1, (float("nan"), 5))
    with pytest.raises(InvalidParameterError, match="valid_range"):
        clip(1, 5)  # type: ignore[arg-type]
    with pytest.raises(
        InvalidParameterError,
        match=r"The 'value' parameter of clip must be a number\. Got '3' instead\.",
    ):
        clip("3", (0, 5))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "kwargs", "expected"),
    [
        ("I'd say 7", {"valid_range": (0, 5)}, 5.0),
        ("I'd say -2", {"valid_range": (0, 5)}, 0.0),
        ("I'd say 7", {"valid_range": (0, 5), "clip_to_range": False}, None),
        ("I'd say 3", {"valid_range": (0, 5), "clip_to_range": False}, 3.0),
        ("I'd say 7", {}, 7.0),
        ("Rating: 4/5", {"valid_range": (1, 5)}, 4.0),
        ("3.5/5", {"valid_range": (0, 5)}, 3.5),
        ("nothing", {"valid_range": (0, 5)}, None),
        ("Scores 1 and 9. Answer: 4", {"valid_range": (0, 5), "which": "answer"}, 4.0),
        ("Scores 1 and 9", {"valid_range": (0, 5), "which": "last"}, 5.0),
        ("80%", {"valid_range": (0, 1), "percent": "fraction"}, 0.8),
    ],
)
def test_extract_number(text: str, kwargs: dict, expected: float | None) -> None:
    got = extract_number(text, **kwargs)
    assert got == (None if expected is None else pytest.approx(expected))


# -- text extractors --------------------------------------------------------------------------
def test_normalize_answer_is_the_squad_one() -> None:
    assert normalize_answer is squad.normalize_answer is text.normalize_answer
    assert normalize_answer("The  Eiffel Tower!") == "eiffel tower"


def _metricwise_imports(path: Path) -> set[str]:
    """The metricwise modules that one source file imports (at module level or inside a function)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m.split(".")[0] == "metricwise"}


def test_extract_and_metrics_do_not_import_each_other() -> None:
    # Both sit above metricwise.text; an edge between them would make a package cycle
    # (extract -> metrics -> math_answer -> extract), as there was before text.py.
    package = Path(extract.__file__).parent
    assert not {
        m for m in _metricwise_imports(package / "extract.py") if m.startswith("metricwise.metrics")
    }
    for path in sorted((package / "metrics").glob("*.py")):
        assert not {m for m in _metricwise_imports(path) if m.startswith("metricwise.extract")}, (
            path
        )
    assert _metricwise_imports(package / "text.py") <= {"metricwise.errors"}


@pytest.mark.parametrize(
    "module", ["metricwise.extract", "metricwise.metrics.squad", "metricwise.text"]
)
def test_each_module_imports_first_in_a_fresh_interpreter(module: str) -> None:
    subprocess.run([sys.executable, "-c", f"import {module}"], check=True)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Paris\nLondon", "Paris"),
        ("\n\n  Paris  \nLondon", "Paris"),
        ("", ""),
        ("\n \n", ""),
        ("one line", "one line"),
    ],
)
def test_first_line(text: str, expected: str) -> None:
    assert first_line(text) == expected


def test_regex_extract() -> None:
    assert regex_extract("Label: positive.", r"Label:\s*(\w+)") == "positive"
    assert regex_extract("call 555-1234", r"\d{3}-\d{4}") == "555-1234"  # no group: the whole match
    assert regex_extract("LABEL: yes", r"label: (\w+)", flags=re.IGNORECASE) == "yes"
    assert regex_extract("a=1 b=2", r"(?P<key>\w)=(?P<val>\d)", group="val") == "1"
    assert regex_extract("a=1", r"(\w)=(\d)", group=2) == "1"
    assert regex_extract("a=1", re.compile(r"=(\d)")) == "1"
    assert regex_extract("nothing", r"(\d+)") is None
    assert regex_extract("b", r"(a)?b") is None  # the group did not take part


def test_regex_extract_errors() -> None:
    with pytest.raises(
        InvalidParameterError,
        match=r"The 'pattern' parameter of regex_extract must be a valid regular expression\. Got '\(' instead",
    ):
        regex_extract("x", "(")
    with pytest.raises(InvalidParameterError, match=r"The 'group' parameter of regex_extract"):
        regex_extract("x", r"(x)", group=2)
    with pytest.raises(InvalidParameterError, match=r"The 'group' parameter"):
        regex_extract("x", r"(x)", group="nope")
    with pytest.raises(InvalidParameterError, match=r"The 'flags' parameter"):
        regex_extract("x", re.compile("x"), flags=re.I)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Paris is large. The answer is Paris.", "Paris"),
        ("The answer is: Paris.\nQuestion: next?", "Paris"),
        ("so 6 * 7 = 42\n#### 42", "42"),
        ("Final answer is 42", "42"),
        ("**Answer:** 42", "42"),
        ("**Answer: B**", "B"),
        ("answer=5", "5"),
        ("The answer is\n\n  Rome!", "Rome"),
        ("Thus $\\boxed{\\frac{1}{2}}$.", "\\frac{1}{2}"),
        ("\\boxed{x^{2}} is it", "x^{2}"),
        ("\\boxed{unclosed", "unclosed"),
        ("The answer is 3.\nWait, the answer is", "3"),  # the last cue is empty: the previous one
        ("Answer: 4 #### 5", "5"),
        ("The answer is \\boxed{7}.", "7"),
        ("The answer is", ""),  # a cue with nothing after it
        ("  Paris  ", "Paris"),  # no cue: the whole text
        ("The answer is island", "island"),
    ],
)
def test_answer_after(text: str, expected: str) -> None:
    assert answer_after(text) == expected


def test_answer_after_custom_cues() -> None:
    assert answer_after("x => Paris", cues="=>") == "Paris"
    assert answer_after("Label - positive", cues=["label -"]) == "positive"
    assert answer_after("  no cue  ", cues=()) == "no cue"
    with pytest.raises(InvalidParameterError, match=r"The 'cues' parameter of answer_after"):
        answer_after("x", cues=[""])
    assert "\\boxed{" in DEFAULT_CUES and "####" in DEFAULT_CUES


# -- Extractor --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("spec", "text", "expected"),
    [
        ("number", "between 3 and 4", 3.0),
        ("number:first", "between 3 and 4", 3.0),
        ("number:last", "between 3 and 4", 4.0),
        ("number:answer", "3 then 4. The answer is 3.", 3.0),
        (" number : last ", "1 2", 2.0),
        ("first_line", "\n Paris \nLondon", "Paris"),
        ("first_line", "\n\n", None),
        ("answer", "The answer is Paris.", "Paris"),
        ("answer", "The answer is", None),
        ("text", "  Paris ", "Paris"),
        ("regex:Label: (\\w+)", "Label: positive", "positive"),
        ("regex:\\d+:\\d+", "at 12:30", "12:30"),  # colons after the first belong to the pattern
        ("regex:(x)", "y", None),
        ("number", "none", None),
    ],
)
def test_extractor_from_spec(spec: str, text: str, expected: object) -> None:
    got = Extractor.from_spec(spec)(text)
    assert got == expected


def test_extractor_options() -> None:
    ex = Extractor(kind="number", which="answer", valid_range=(0, 5))
    assert ex("So... the answer is 4.5/5.") == 4.5
    assert ex("The answer is 9") == 5.0
    assert Extractor(kind="number", valid_range=(0, 5), clip_to_range=False)("9") is None
    assert Extractor.from_spec("number:answer", valid_range=[0, 5]).valid_range == (0.0, 5.0)
    assert Extractor.from_spec("number", percent="fraction")("50%") == 0.5
    assert Extractor(kind="regex", pattern=r"(?P<x>\d)", group="x")("a7") == "7"
    assert Extractor(kind="number", which="answer", cues=("=>",))("1 => 2, 3") == 2.0
    assert Extractor(kind="number")(3) == 3.0  # already parsed samples pass through


def test_extractor_is_hashable_and_round_trips() -> None:
    specs = ["number", "number:last", "number:answer", "first_line", "answer", "text", "regex:a(b)"]
    for spec in specs:
        ex = Extractor.from_spec(spec)
        assert ex.spec == spec
        assert Extractor.from_spec(ex.spec) == ex
        assert hash(ex) == hash(Extractor.from_spec(spec))
    ex = Extractor.from_spec("number")
    assert Extractor.from_spec(ex) is ex
    assert Extractor.from_spec(ex, which="last").which == "last"
    assert Extractor(
        kind="number", which="answer", valid_range=(0, 5), percent="fraction"
    ).signature() == ("number:answer[range=0..5,percent=fraction]")
    assert Extractor.from_spec("first_line").signature() == "first_line"


def test_extractor_signature_is_stable_and_tells_extractors_apart() -> None:
    # Evaluation signatures embed it: equal extractors, equal strings; different results,
    # different strings.
    assert (
        Extractor.from_spec("number:answer", valid_range=(0, 5)).signature()
        == Extractor(kind="number", which="answer", valid_range=(0.0, 5.0)).signature()
        == "number:answer[range=0..5]"
    )
    assert Extractor(valid_range=(-0.0, 5)).signature() == "number[range=0..5]"
    assert Extractor(valid_range=(1, 2.5), clip_to_range=False).signature() == (
        "number[range=1..2.5,reject]"
    )
    assert Extractor.from_spec("answer", cues=("final:", "=>")).signature() == (
        "answer[cues=['final:', '=>']]"
    )
    distinct = [
        Extractor(),
        Extractor(which="last"),
        Extractor(which="answer"),
        Extractor(valid_range=(0, 1)),
        Extractor(valid_range=(0, 1.0000001)),
        Extractor(valid_range=(0, 1), clip_to_range=False),
        Extractor(percent="fraction"),
        Extractor(which="answer", cues=("final:",)),
        Extractor(kind="first_line"),
        Extractor(kind="answer"),
        Extractor(kind="answer", cues=("final:",)),
        Extractor(kind="text"),
        Extractor(kind="regex", pattern="a(b)"),
        Extractor(kind="regex", pattern="a(b)", flags=re.IGNORECASE),
        Extractor(kind="regex", pattern="(a)(b)", group=2),
    ]
    signatures = [ex.signature() for ex in distinct]
    assert len(set(signatures)) == len(signatures), signatures
    # Options that cannot change the result leave it alone.
    assert Extractor(clip_to_range=False).signature() == "number"
    assert Extractor(kind="text", which="last", cues=("x",)).signature() == "text"


@pytest.mark.parametrize(
    ("spec", "suggestion"),
    [
        ("numbr", "number"),
        ("first-line", "first_line"),
        ("number:lst", "number:last"),
        ("regx:\\d+", "regex"),
        ("anwser", "answer"),
        ("", None),
        ("regex", "regex:<pattern>"),  # regex needs a pattern
        ("bogus", None),
    ],
)
def test_extractor_unknown_spec(spec: str, suggestion: str | None) -> None:
    with pytest.raises(InvalidParameterError) as info:
        Extractor.from_spec(spec)
    message = str(info.value)
    assert isinstance(info.value, UnknownNameError)
    assert f"Got {spec!r} instead." in message
    if suggestion is None:
        assert "Did you mean" not in message
    else:
        assert f"Did you mean {suggestion!r}?" in message


def test_extractor_bad_parameters() -> None:
    with pytest.raises(
        InvalidParameterError, match=r"The 'kind' parameter of Extractor .* Did you mean 'number'\?"
    ):
        Extractor(kind="nubmer")  # type: ignore[arg-type]
    with pytest.raises(
        InvalidParameterError,
        match=r"The 'pattern' parameter of Extractor must be a regular expression",
    ):
        Extractor(kind="regex")
    with pytest.raises(
        InvalidParameterError,
        match=r"The 'pattern' parameter of Extractor must be a valid regular expression\. Got '\[' instead",
    ):
        Extractor.from_spec("regex:[")
    with pytest.raises(InvalidParameterError, match=r"The 'which' parameter of Extractor"):
        Extractor(which="middle")  # type: ignore[arg-type]
    with pytest.raises(InvalidParameterError, match=r"The 'valid_range' parameter of Extractor"):
        Extractor(valid_range=(1, 0))
    with pytest.raises(
        InvalidParameterError, match=r"The 'spec' parameter of Extractor.from_spec must be a string"
    ):
        Extractor.from_spec(3)  # type: ignore[arg-type]
    with pytest.raises(
        InvalidParameterError, match=r"The 'text' parameter of Extractor must be a str"
    ):
        Extractor(kind="first_line")(3)  # type: ignore[arg-type]


@pytest.mark.parametrize("module", [extract, text], ids=lambda m: m.__name__)
def test_doctests(module) -> None:
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0


# -- properties -------------------------------------------------------------------------------
finite_floats = st.floats(allow_nan=False, allow_infinity=False)
words = st.lists(st.text(alphabet=string.ascii_letters, min_size=1, max_size=8), max_size=4).map(
    " ".join
)


def _formats(x: float, decimals: int) -> list[tuple[str, float]]:
    """Ways to write x, with the value each spelling denotes."""
    fixed = f"{x:.{decimals}f}"
    sci = f"{x:.{decimals}e}"
    grouped = f"{x:,.{decimals}f}"
    return [
        (repr(x), x),
        (fixed, float(fixed)),
        (grouped, float(grouped.replace(",", ""))),
        (sci, float(sci)),
    ]


@settings(max_examples=300, deadline=None)
@given(
    x=finite_floats,
    decimals=st.integers(0, 6),
    before=words,
    after=words,
    prefix=st.sampled_from(["", "(", "$", "= ", "\n"]),
    suffix=st.sampled_from(["", ".", ",", "!", "?", ";", ")", "\n"]),
)
def test_formatted_number_round_trips(
    x: float, decimals: int, before: str, after: str, prefix: str, suffix: str
) -> None:
    for spelled, value in _formats(x, decimals):
        if not math.isfinite(value):  # "2e+308" after rounding
            continue
        text = f"{before} {prefix}{spelled}{suffix} {after}"
        for which in ("first", "last", "answer"):
            got = parse_number(text, which=which)  # type: ignore[arg-type]
            assert got is not None, (text, which)
            assert got == value or math.isclose(got, value, rel_tol=1e-9), (text, which, got, value)


number_like = st.text(
    alphabet="0123456789.,-+−/eE%$€ x×^*{}\\:\nboxedfracanswerisoutof#", max_size=40
)
any_text = st.one_of(st.text(max_size=60), number_like)


@settings(max_examples=300, deadline=None)
@given(
    text=any_text,
    which=st.sampled_from(["first", "last", "answer"]),
    percent=st.sampled_from(["keep", "fraction"]),
    top=st.none() | st.integers(1, 10),
)
def test_parse_number_never_raises(text: str, which: str, percent: str, top: int | None) -> None:
    valid_range = None if top is None else (0, top)
    got = parse_number(text, which=which, percent=percent, valid_range=valid_range)  # type: ignore[arg-type]
    assert got is None or (isinstance(got, float) and math.isfinite(got))
    assert isinstance(answer_after(text), str)
    assert isinstance(first_line(text), str)


@settings(max_examples=300, deadline=None)
@given(
    text=any_text,
    lo=st.floats(-1e6, 1e6),
    width=st.floats(1e-6, 1e6),
    clip_to_range=st.booleans(),
    which=st.sampled_from(["first", "last", "answer"]),
)
def test_extract_number_stays_in_range(
    text: str, lo: float, width: float, clip_to_range: bool, which: str
) -> None:
    hi = lo + width
    got = extract_number(text, valid_range=(lo, hi), clip_to_range=clip_to_range, which=which)  # type: ignore[arg-type]
    assert got is None or lo <= got <= hi
