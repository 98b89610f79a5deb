"""Generated arithmetic: a task that needs no data files.

========== ========================================== ==== ==================================================
task       evaluated items (file)                     rows few-shot pool
========== ========================================== ==== ==================================================
arith      generated (seed 1)                         200  generated (seed 2), 100
========== ========================================== ==== ==================================================

Questions such as "What is 47 + 38?" with integer answers; the shots are generated with another
seed and never repeat an evaluated question.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable

from metricwise.tasks.base import Item, Task
from metricwise.tasks.registry import builtin_task
from metricwise.tasks.splits import generated_items, generated_loader

__all__ = ["generate_arith"]

#: The evaluated questions and the few-shot pool come from two seeds; the pool leaves out every
#: evaluated question.
ARITH_EVAL_SEED = 1
ARITH_SHOT_SEED = 2
ARITH_EVAL_SIZE = 200
ARITH_SHOT_SIZE = 100


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
    return generated_items(n, seed, _draw, "question", prefix=prefix, exclude=exclude)


def _draw(rng: random.Random, i: int) -> tuple[str, int]:
    """Question ``i`` is of kind ``i % 4``: any prefix of the items is balanced."""
    return _arith_question(rng, i % 4)


builtin_task(
    Task(
        name="arith",
        description="Generated arithmetic (no data needed): 200 questions such as 'What is 47 + 38?' or 'What is 3/4 of 96?'.",
        answer_type="number",
        metrics=("absolute_error", "squared_error"),
        corpus_metrics=("accuracy",),
        extractor="number",
        template="Question: {question}",
        max_tokens=12,
        loader=generated_loader(
            _draw,
            "question",
            prefix="q",
            evaluated=(ARITH_EVAL_SIZE, ARITH_EVAL_SEED),
            shots=(ARITH_SHOT_SIZE, ARITH_SHOT_SEED),
        ),
    )
)
