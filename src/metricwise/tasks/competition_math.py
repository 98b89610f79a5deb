"""MATH competition problems (Hendrycks et al., 2021): exact match of the final \\boxed{} answer.

========== ========================================== ==== ==================================================
task       evaluated items (file)                     rows few-shot pool
========== ========================================== ==== ==================================================
math       math/math.jsonl (5000)                     4500 rows 9, 19, ... with a solution <= 800 chars (419)
========== ========================================== ==== ==================================================

Shots show the worked solution, which ends in its \\boxed{} answer (one is appended when the
solution has none); the ``math_exact_match`` metric compares normalised final answers.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from metricwise.errors import InvalidParameterError
from metricwise.extract import last_boxed
from metricwise.tasks.base import Item, Task
from metricwise.tasks.readers import HubSource, Record, line_of, read_jsonl_records
from metricwise.tasks.registry import builtin_task
from metricwise.tasks.splits import holdout_loader

#: MATH shots: held-apart rows whose worked solution is at most this long (keeps prompts short).
MATH_SHOT_MAX_CHARS = 800


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


builtin_task(
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
    )
)
