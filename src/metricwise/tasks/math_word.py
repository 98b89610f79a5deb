"""Math word problems: a number after worked reasoning (GSM8K, MultiArith, AddSub, SingleEq, ASDiv).

========== ========================================== ==== ==================================================
task       evaluated items (file)                     rows few-shot pool
========== ========================================== ==== ==================================================
gsm8k      gsm8k/test.jsonl                           1319 gsm8k/train.jsonl (7473)
multiarith math_word/MultiArith_MultiArith.json (600) 540  rows 9, 19, 29, ... (60)
addsub     math_word/AddSub_AddSub.json (395)         356  rows 9, 19, 29, ... (39)
singleeq   math_word/SingleEq_questions.json (508)    458  rows 9, 19, 29, ... (50)
asdiv      math_word/ASDiv.xml (2084 of 2305)         1876 every 10th numeric problem (208, 207 kept)
========== ========================================== ==== ==================================================

References are floats; the extractor (``"number:answer"``) reads the number after "The answer
is"; the metrics are absolute and squared error, with accuracy (|pred - ref| < 1e-6) as a corpus
metric. Shots end with "The answer is N.": GSM8K's worked solution without the calculator
annotations; for the other sets their equation, when it is plain arithmetic
(:func:`equation_target`). ASDiv items keep the problem id as their id.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from metricwise.errors import InvalidParameterError
from metricwise.tasks.base import Item, Task, format_number
from metricwise.tasks.readers import (
    HubSource,
    Record,
    line_of,
    read_json,
    read_jsonl_records,
    read_text,
    to_float,
)
from metricwise.tasks.registry import builtin_task
from metricwise.tasks.splits import MakeItem, holdout_loader, split_loader

__all__ = ["asdiv_answer", "equation_target"]

_NUMERIC_METRICS = ("absolute_error", "squared_error")
_REASONING_STOP = ("\n\n", "Question:")


def _word_task(
    name: str,
    title: str,
    relpath: str,
    parse: Callable[[Path], list[Record]],
    hub: HubSource | None,
    hub_record: Callable[[Mapping[str, Any]], Record] | None,
    make_item: MakeItem,
    template: str,
    prepare: Callable[[list[Record]], list[Record]] | None = None,
) -> Task:
    """A word-problem set in one file, every tenth row held apart for shots."""
    return Task(
        name=name,
        description=f"{title}: a number after reasoning ({relpath}; every 10th row held apart for shots).",
        answer_type="number",
        metrics=_NUMERIC_METRICS,
        corpus_metrics=("accuracy",),
        extractor="number:answer",
        instruction="Solve each math word problem. End with 'The answer is N.'",
        template=template,
        stop=_REASONING_STOP,
        max_tokens=96,
        loader=holdout_loader(name, relpath, parse, hub, hub_record, make_item, prepare=prepare),
    )


# -- GSM8K --------------------------------------------------------------------------------------
_CALC_ANNOTATION = re.compile(r"<<[^<>]*>>")


def _gsm8k_record(question: Any, answer: Any, where: str) -> Record:
    answer = str(answer)
    if "####" not in answer:
        raise InvalidParameterError(
            f"{where}: the answer must end with '#### <number>'. Got {answer[-60:]!r} instead."
        )
    reasoning, _, final = answer.rpartition("####")
    value = to_float(final, f"{where}, the number after '####'")
    steps = " ".join(
        line.strip() for line in _CALC_ANNOTATION.sub("", reasoning).splitlines() if line.strip()
    )
    return {"question": str(question).strip(), "answer": value, "reasoning": steps}


def _parse_gsm8k(path: Path) -> list[Record]:
    return [
        _gsm8k_record(o["question"], o["answer"], line_of(path, o["_line"]))
        for o in read_jsonl_records(path, ("question", "answer"))
    ]


def _gsm8k_hub(row: Mapping[str, Any]) -> Record:
    return _gsm8k_record(row["question"], row["answer"], "a hub row")


def _gsm8k_item(r: Record, item_id: str) -> Item:
    n = format_number(r["answer"])
    target = f"{r['reasoning']} The answer is {n}." if r["reasoning"] else f"The answer is {n}."
    return Item(item_id, {"question": r["question"]}, (float(r["answer"]),), target)


builtin_task(
    Task(
        name="gsm8k",
        description="GSM8K grade-school math: a number after worked reasoning (eval gsm8k/test.jsonl, shots gsm8k/train.jsonl).",
        answer_type="number",
        metrics=_NUMERIC_METRICS,
        corpus_metrics=("accuracy",),
        extractor="number:answer",
        instruction="Solve each math word problem step by step. End with 'The answer is N.'",
        template="Question: {question}",
        stop=_REASONING_STOP,
        max_tokens=192,
        loader=split_loader(
            "gsm8k",
            {
                "eval": (
                    "gsm8k/test.jsonl",
                    "test",
                    HubSource("openai/gsm8k", (("main", "test"),)),
                ),
                "fewshot": (
                    "gsm8k/train.jsonl",
                    "train",
                    HubSource("openai/gsm8k", (("main", "train"),)),
                ),
            },
            _parse_gsm8k,
            _gsm8k_hub,
            _gsm8k_item,
        ),
    )
)


# -- worked answers from equations --------------------------------------------------------------
_PLAIN_EQUATION = re.compile(r"[0-9.+\-*/()xX= ]+")
_NUMBER_TOKEN = re.compile(r"\d+(?:\.\d+)?")
_UNKNOWN_ALONE = re.compile(r"^\s*[xX]\s*=(.*)$|^(.*)=\s*[xX]\s*$")


def _tidy_expression(expr: str) -> str:
    expr = _NUMBER_TOKEN.sub(lambda m: format_number(float(m.group())), expr.replace(" ", ""))
    expr = re.sub(r"([+\-*/=])", r" \1 ", expr)
    expr = expr.replace("X", "x").strip()
    while expr.startswith("(") and expr.endswith(")") and _balanced(expr[1:-1]):
        expr = expr[1:-1].strip()
    return " ".join(expr.split())


def _balanced(expr: str) -> bool:
    depth = 0
    for ch in expr:
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth < 0:
            return False
    return depth == 0


def equation_target(equation: str | None, answer: float) -> str:
    """A one-line worked answer from a dataset's equation, ending with "The answer is N.".

    ``"X=((32.0+42.0)-35.0)"`` gives ``"(32 + 42) - 35 = 39. The answer is 39."``; an equation
    with the unknown inside (``"28+x=54"``) gives ``"28 + x = 54, so x = 26. The answer is 26."``.
    Anything but plain arithmetic gives just ``"The answer is N."``.

    Examples
    --------
    >>> equation_target("X=((32.0+42.0)-35.0)", 39.0)
    '(32 + 42) - 35 = 39. The answer is 39.'
    >>> equation_target("45*3=x", 135.0)
    '45 * 3 = 135. The answer is 135.'
    >>> equation_target("28+x=54", 26.0)
    '28 + x = 54, so x = 26. The answer is 26.'
    """
    n = format_number(answer)
    final = f"The answer is {n}."
    if not equation or not _PLAIN_EQUATION.fullmatch(equation) or equation.count("=") != 1:
        return final
    m = _UNKNOWN_ALONE.match(equation)
    if m:
        expr = _tidy_expression(m.group(1) if m.group(1) is not None else m.group(2))
        if "x" in expr or not expr:
            return final
        return f"{expr} = {n}. {final}"
    if "x" not in equation.lower():
        lhs, _, rhs = equation.partition("=")  # ASDiv: "7+2=9"
        return f"{_tidy_expression(lhs)} = {_tidy_expression(rhs)}. {final}"
    return f"{_tidy_expression(equation)}, so x = {n}. {final}"


# -- MultiArith, AddSub, SingleEq ---------------------------------------------------------------
def _parse_math_json(path: Path) -> list[Record]:
    data = read_json(path)
    if data is None:
        return []
    if not isinstance(data, list):
        raise InvalidParameterError(
            f"The data file {path.absolute()} must be a JSON list of problems. Got {type(data).__name__} instead."
        )
    records = []
    for i, obj in enumerate(data):
        where = f"Problem {i} (0-based) of {path.absolute()}"
        if not isinstance(obj, dict) or "sQuestion" not in obj or "lSolutions" not in obj:
            raise InvalidParameterError(
                f"{where} must be an object with 'sQuestion' and 'lSolutions'."
            )
        solutions = obj["lSolutions"]
        if not isinstance(solutions, list) or len(solutions) != 1:
            raise InvalidParameterError(
                f"{where}: 'lSolutions' must hold exactly one number. Got {solutions!r} instead."
            )
        equations = obj.get("lEquations") or [None]
        records.append(
            {
                "question": " ".join(str(obj["sQuestion"]).split()),
                "answer": to_float(solutions[0], f"{where}, 'lSolutions'"),
                "equation": equations[0],
            }
        )
    return records


def _multiarith_hub(row: Mapping[str, Any]) -> Record:
    return {
        "question": " ".join(str(row["question"]).split()),
        "answer": to_float(row["final_ans"], "final_ans"),
        "equation": None,
    }


def _word_item(r: Record, item_id: str) -> Item:
    return Item(
        item_id,
        {"question": r["question"]},
        (float(r["answer"]),),
        equation_target(r.get("equation"), r["answer"]),
    )


builtin_task(
    _word_task(
        "multiarith",
        "MultiArith",
        "math_word/MultiArith_MultiArith.json",
        _parse_math_json,
        HubSource(
            "ChilleD/MultiArith",
            ((None, "train"), (None, "test")),
            "a different row order (train then test)",
        ),
        _multiarith_hub,
        _word_item,
        "Question: {question}",
    )
)


builtin_task(
    _word_task(
        "addsub",
        "AddSub",
        "math_word/AddSub_AddSub.json",
        _parse_math_json,
        None,
        None,
        _word_item,
        "Question: {question}",
    )
)


builtin_task(
    _word_task(
        "singleeq",
        "SingleEq",
        "math_word/SingleEq_questions.json",
        _parse_math_json,
        None,
        None,
        _word_item,
        "Question: {question}",
    )
)


# -- ASDiv --------------------------------------------------------------------------------------
_ASDIV_NUMBER = re.compile(r"\s*(-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?)\s*(?:\([^()]*\))?\s*")


def asdiv_answer(text: str) -> float | None:
    """The number of an ASDiv answer (``"9 (apples)"`` -> 9.0), or None when it is not one number.

    Examples
    --------
    >>> asdiv_answer("9 (apples)"), asdiv_answer("1,250.5"), asdiv_answer("3:4"), asdiv_answer("5 (cm); 6 (cm)")
    (9.0, 1250.5, None, None)
    """
    m = _ASDIV_NUMBER.fullmatch(text or "")
    return float(m.group(1).replace(",", "")) if m else None


def _parse_asdiv(path: Path) -> list[Record]:
    import xml.etree.ElementTree as ET

    text = read_text(path)
    if not text.strip():
        return []
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise InvalidParameterError(
            f"The data file {path.absolute()} is not valid XML ({exc})."
        ) from None
    records = []
    for problem in root.iter("Problem"):
        pid = problem.get("ID", "")
        parts = {
            tag: (problem.findtext(tag) or "").strip()
            for tag in ("Body", "Question", "Answer", "Formula")
        }
        if not pid or not parts["Question"] or not parts["Answer"]:
            raise InvalidParameterError(
                f"Problem {pid or '(no ID)'} of {path.absolute()} must have an ID, a Question and an Answer."
            )
        records.append(
            {
                "id": pid,
                "body": parts["Body"],
                "question": parts["Question"],
                "answer": parts["Answer"],
                "formula": parts["Formula"],
            }
        )
    return records


def _asdiv_hub(row: Mapping[str, Any]) -> Record:
    return {
        "id": "",
        "body": str(row["body"]).strip(),
        "question": str(row["question"]).strip(),
        "answer": str(row["answer"]),
        "formula": str(row["formula"]),
    }


def _asdiv_numeric(records: list[Record]) -> list[Record]:
    out = []
    for i, r in enumerate(records):
        value = asdiv_answer(r["answer"])
        if value is not None:
            out.append({**r, "id": r["id"] or f"asdiv-{i}", "value": value})
    return out


def _asdiv_item(r: Record, item_id: str) -> Item:
    return Item(
        r["id"],
        {"body": r["body"], "question": r["question"]},
        (r["value"],),
        equation_target(r["formula"], r["value"]),
    )


builtin_task(
    _word_task(
        "asdiv",
        "ASDiv (the problems with one numeric answer)",
        "math_word/ASDiv.xml",
        _parse_asdiv,
        HubSource("EleutherAI/asdiv", (("asdiv", "validation"),)),
        _asdiv_hub,
        _asdiv_item,
        "Question: {body} {question}",
        prepare=_asdiv_numeric,
    )
)
