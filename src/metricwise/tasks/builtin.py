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
from collections.abc import Iterable
from pathlib import Path

from metricwise.tasks.base import Item, Task
from metricwise.tasks.readers import (
    HubSource,
)
from metricwise.tasks.registry import builtin_task

__all__ = [
    "HubSource",
    "generate_arith",
]

ARITH_EVAL_SEED = 1
ARITH_SHOT_SEED = 2
ARITH_EVAL_SIZE = 200
ARITH_SHOT_SIZE = 100


# -- numbers ------------------------------------------------------------------------------------
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
def _builtin_tasks() -> dict[str, Task]:
    tasks = [
        Task(
            name="arith",
            description="Generated arithmetic (no data needed): 200 questions such as 'What is 47 + 38?' or 'What is 3/4 of 96?'.",
            answer_type="number",
            metrics=("absolute_error", "squared_error"),
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
