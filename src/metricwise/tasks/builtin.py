"""The built-in tasks: data loaders, prompts, extractors and metrics for each benchmark.

Files are read from a data directory (``--data_dir`` or ``METRICWISE_DATA_DIR``) laid out as in
``../shared/data`` (its SOURCES.md says where each file comes from). When a file is missing and
the ``datasets`` package is installed, the loader fetches the same data from the Hugging Face
hub instead (that needs network access); otherwise it raises an error naming the path it
expected and how to set the directory.

========== ========================================== ==== ==================================================
task       evaluated items (file)                     rows few-shot pool
========== ========================================== ==== ==================================================
stsb       stsb/sts-dev.csv                           1500 stsb/sts-train.csv (5749 rows, 5743 kept)
sst5       sst5/stsa.fine.test                        2210 sst5/stsa.fine.train (8544 rows, 8541 kept)
triviaqa   triviaqa/triviaqa_sm_sub.jsonl (3000)      2700 rows 9, 19, 29, ... (300)
nq_open    nq_open/NQ-open.dev.jsonl (3610)           3249 rows 9, 19, 29, ... (361)
squad      squad/dev-v1.1.json (10570)                9947 articles 9, 19, 29, 39 (623 questions)
gsm8k      gsm8k/test.jsonl                           1319 gsm8k/train.jsonl (7473)
multiarith math_word/MultiArith_MultiArith.json (600) 540  rows 9, 19, 29, ... (60)
addsub     math_word/AddSub_AddSub.json (395)         356  rows 9, 19, 29, ... (39)
singleeq   math_word/SingleEq_questions.json (508)    458  rows 9, 19, 29, ... (50)
asdiv      math_word/ASDiv.xml (2084 of 2305)         1876 every 10th numeric problem (208, 207 kept)
math       math/math.jsonl (5000)                     4500 rows 9, 19, ... with a solution <= 800 chars (419)
arith      generated (seed 1)                         200  generated (seed 2), 100
========== ========================================== ==== ==================================================

"Rows 9, 19, 29, ..." are the 0-based rows ``i`` with ``i % 10 == 9``: every tenth row is held
apart, so that the pool spreads over the whole file (some files are ordered by problem type). In
every task a pool row whose fields repeat an evaluated item's (same text up to case and spacing)
is dropped, so the pool never overlaps the evaluated items ("kept" above). Row ids are the
0-based row numbers in the file (``"dev-12"``, ``"train-3"`` where a task reads two files; the
question id for SQuAD; the problem id for ASDiv), so ids never collide between the two splits.

Numeric tasks answer with a number: references are floats, the extractor parses the number
(``"number"``, or ``"number:answer"`` for reasoning tasks, which reads the number after "The
answer is"), and the metrics are absolute and squared error, with accuracy (|pred - ref| <
1e-6) as a corpus metric. Reasoning shots end with "The answer is N." (GSM8K: its worked
solution without the calculator annotations; the word-problem sets: their equation, when it is
plain arithmetic).
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from metricwise.errors import InvalidParameterError
from metricwise.extract import last_boxed
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

__all__ = [
    "HubSource",
    "generate_arith",
]

#: MATH shots: held-apart rows whose worked solution is at most this long (keeps prompts short).
MATH_SHOT_MAX_CHARS = 800

ARITH_EVAL_SEED = 1
ARITH_SHOT_SEED = 2
ARITH_EVAL_SIZE = 200
ARITH_SHOT_SIZE = 100


# -- numbers ------------------------------------------------------------------------------------
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


# -- arithmetic word problems -------------------------------------------------------------------
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


# -- MATH ---------------------------------------------------------------------------------------
def _math_record(problem: Any, answer: Any, solution: Any, where: str) -> Record:
    problem, answer, solution = str(problem).strip(), str(answer).strip(), str(solution).strip()
    if not problem or not answer:
        raise InvalidParameterError(f"{where}: the problem and the answer must not be empty.")
    return {"problem": problem, "answer": answer, "solution": solution}


def _parse_math(path: Path) -> list[Record]:
    return [
        _math_record(
            o["context"], o["answer"], o.get("chain_of_thought", ""), line_of(path, o["_line"])
        )
        for o in read_jsonl_records(path, ("context", "answer"))
    ]


def _math_hub(row: Mapping[str, Any]) -> Record:
    answer = last_boxed(str(row["solution"]))
    if answer is None:
        raise ValueError("the solution has no \\boxed{} answer")
    return _math_record(row["problem"], answer, row["solution"], "a hub row")


def _math_item(r: Record, item_id: str) -> Item:
    solution = r["solution"]
    if last_boxed(solution) is None:
        solution = f"{solution} The answer is $\\boxed{{{r['answer']}}}$.".strip()
    return Item(item_id, {"problem": r["problem"]}, (r["answer"],), solution)


# -- generated arithmetic -----------------------------------------------------------------------
def _arith_question(rng: random.Random, kind: int) -> tuple[str, int]:
    if kind == 0:
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        return f"What is {a} + {b}?", a + b
    if kind == 1:
        a = rng.randint(100, 999)
        b = rng.randint(10, 99)
        return f"What is {a} - {b}?", a - b
    if kind == 2:
        a, b = rng.randint(3, 19), rng.randint(3, 12)
        return f"What is {a} x {b}?", a * b
    while True:
        q = rng.choice((2, 3, 4, 5, 8, 10))
        p = rng.randint(1, q - 1)
        if math.gcd(p, q) == 1:
            break
    m = rng.randint(2, 25)
    return f"What is {p}/{q} of {q * m}?", p * m


def generate_arith(
    n: int, seed: int, *, prefix: str = "q", exclude: Iterable[str] = ()
) -> list[Item]:
    """``n`` distinct arithmetic questions with integer answers, deterministic in ``seed``.

    Four kinds in turn (item ``i`` is of kind ``i % 4``, so any prefix is balanced): the sum of
    two 2-digit numbers, a 3-digit minus a 2-digit number, a product of two small numbers, and
    a fraction of a number (``"What is 3/4 of 96?"``). Questions in ``exclude`` are skipped.

    Examples
    --------
    >>> items = generate_arith(4, seed=1)
    >>> [it.fields["question"].split()[3] for it in items]
    ['+', '-', 'x', 'of']
    >>> generate_arith(4, seed=1) == items
    True
    """
    rng = random.Random(seed)
    seen = set(exclude)
    items: list[Item] = []
    while len(items) < n:
        question, answer = _arith_question(rng, len(items) % 4)
        if question in seen:
            continue
        seen.add(question)
        items.append(
            Item(f"{prefix}{len(items):03d}", {"question": question}, (float(answer),), str(answer))
        )
    return items


def _load_arith(data_dir: Path | None, split: str) -> list[Item]:
    evaluated = generate_arith(ARITH_EVAL_SIZE, ARITH_EVAL_SEED, prefix="q")
    if split == "eval":
        return evaluated
    return generate_arith(
        ARITH_SHOT_SIZE,
        ARITH_SHOT_SEED,
        prefix="shot",
        exclude=[it.fields["question"] for it in evaluated],
    )


# -- the tasks ----------------------------------------------------------------------------------
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


def _builtin_tasks() -> dict[str, Task]:
    tasks = [
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
        ),
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
        ),
        _word_task(
            "addsub",
            "AddSub",
            "math_word/AddSub_AddSub.json",
            _parse_math_json,
            None,
            None,
            _word_item,
            "Question: {question}",
        ),
        _word_task(
            "singleeq",
            "SingleEq",
            "math_word/SingleEq_questions.json",
            _parse_math_json,
            None,
            None,
            _word_item,
            "Question: {question}",
        ),
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
        ),
        Task(
            name="math",
            description="MATH competition problems: exact match of the final \\boxed{} answer (every 10th row held apart for shots).",
            answer_type="text",
            metrics=("math_exact_match",),
            extractor="answer",
            instruction="Solve each problem. Put the final answer in \\boxed{}.",
            template="Problem: {problem}",
            answer_prefix="\nSolution:",
            stop=("Problem:",),
            max_tokens=384,
            loader=holdout_loader(
                "math",
                "math/math.jsonl",
                _parse_math,
                HubSource(
                    "EleutherAI/hendrycks_math",
                    tuple(
                        (subject, "test")
                        for subject in (
                            "algebra",
                            "counting_and_probability",
                            "geometry",
                            "intermediate_algebra",
                            "number_theory",
                            "prealgebra",
                            "precalculus",
                        )
                    ),
                    "the same 5000 test problems, grouped by subject",
                ),
                _math_hub,
                _math_item,
                shot_filter=lambda r: len(r["solution"]) <= MATH_SHOT_MAX_CHARS,
            ),
        ),
        Task(
            name="arith",
            description="Generated arithmetic (no data needed): 200 questions such as 'What is 47 + 38?' or 'What is 3/4 of 96?'.",
            answer_type="number",
            metrics=_NUMERIC_METRICS,
            corpus_metrics=("accuracy",),
            extractor="number",
            template="Question: {question}",
            max_tokens=12,
            loader=_load_arith,
        ),
    ]
    return {t.name: t for t in tasks}


for _task in _builtin_tasks().values():
    builtin_task(_task)
