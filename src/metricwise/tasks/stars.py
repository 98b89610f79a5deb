"""Generated hotel reviews rated 1-5 stars: a bounded rating that needs no data files.

========== ========================================== ==== ==================================================
task       evaluated items (file)                     rows few-shot pool
========== ========================================== ==== ==================================================
stars      generated (seed 1)                         200  generated (seed 2), 100
========== ========================================== ==== ==================================================

Each review names four things about a hotel stay, one short sentence each ("The staff were
rude. The bed was comfortable. The wifi was slow. The breakfast was delicious."), and each is
either praised or criticised. The rating is defined by construction: 1 star plus 1 for each
thing praised, so 1 to 5, and the instruction says so. Item ``i`` praises ``i % 5`` things, so
every prefix of the items (``--limit 40``) has each rating equally often. The answer is scored
by squared error (primary) and absolute error, clipped into ``valid_range`` (1, 5) as STS-B's
0-5 scores are.

Why the theory predicts a gain here (written before the default model was run on it; see
``docs/results/demo.md``): this is the setting of MALI (Lukasik et al. 2024), a bounded numeric
rating scored by squared error. If the model's distribution over ratings were the truth, the
mean of its samples would minimise expected squared error and the median expected absolute
error; greedy decoding returns roughly the mode, which is worse whenever that distribution is
spread or skewed. A small base model is genuinely unsure here (it has to count four
judgements), so its samples spread over the scale. Even when they carry no information about
the review at all, the mean of N samples removes the variance of a single guess and moves
towards the middle of the scale: for one answer ``y`` and a truth ``t``,
``E(y - t)^2 = (E y - t)^2 + Var y``, and the mean keeps the first term while dividing the
second by N. The mode keeps a single point's error. So: the mean beats greedy on squared error,
the median gains less on absolute error (the samples are whole stars, where median and mode
often coincide), and neither beats the constant ``prior`` (3 stars: squared error 2.0 on
balanced ratings) unless the model actually reads the reviews.

The shots come from another seed and never repeat an evaluated review.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

from metricwise.tasks.base import Item, Task
from metricwise.tasks.registry import builtin_task
from metricwise.tasks.splits import generated_items, generated_loader

__all__ = ["ASPECTS", "generate_reviews"]

STARS_EVAL_SEED = 1
STARS_SHOT_SEED = 2
STARS_EVAL_SIZE = 200
STARS_SHOT_SIZE = 100
#: Things each review names; its rating is 1 + the number of them praised.
STARS_PER_REVIEW = 4

#: (subject, verb, praising adjectives, criticising adjectives): every subject reads the same
#: whichever adjective it gets, and no adjective is ambiguous about its side.
ASPECTS: tuple[tuple[str, str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("room", "was", ("clean", "spacious"), ("dirty", "cramped")),
    ("staff", "were", ("friendly", "helpful"), ("rude", "unhelpful")),
    ("breakfast", "was", ("delicious", "fresh"), ("bland", "stale")),
    ("location", "was", ("convenient", "quiet"), ("remote", "noisy")),
    ("bed", "was", ("comfortable", "soft"), ("hard", "lumpy")),
    ("wifi", "was", ("fast", "reliable"), ("slow", "unreliable")),
    ("price", "was", ("fair", "reasonable"), ("steep", "outrageous")),
)


def _review(rng: random.Random, praised: int) -> str:
    chosen = rng.sample(ASPECTS, STARS_PER_REVIEW)  # random subjects in a random order
    good = set(rng.sample(range(STARS_PER_REVIEW), praised))
    sentences = []
    for j, (subject, verb, positive, negative) in enumerate(chosen):
        adjective = rng.choice(positive if j in good else negative)
        sentences.append(f"The {subject} {verb} {adjective}.")
    return " ".join(sentences)


def generate_reviews(
    n: int, seed: int, *, prefix: str = "r", exclude: Iterable[str] = ()
) -> list[Item]:
    """``n`` distinct hotel reviews with their 1-5 star ratings, deterministic in ``seed``.

    Item ``i`` praises ``i % 5`` of its four subjects (so any prefix is balanced over the
    ratings) and is rated ``1 + i % 5`` stars. Reviews in ``exclude`` are skipped.

    Examples
    --------
    >>> items = generate_reviews(5, seed=1)
    >>> [it.target for it in items]
    ['1', '2', '3', '4', '5']
    >>> items[0].fields["review"].count(".")
    4
    >>> generate_reviews(5, seed=1) == items
    True
    """
    return generated_items(n, seed, _draw, "review", prefix=prefix, exclude=exclude)


def _draw(rng: random.Random, i: int) -> tuple[str, int]:
    """Review ``i`` praises ``i % 5`` of its subjects and is rated one star more."""
    praised = i % (STARS_PER_REVIEW + 1)
    return _review(rng, praised), 1 + praised


builtin_task(
    Task(
        name="stars",
        description="Generated hotel reviews (no data needed): 200 reviews of four things each, "
        "rated 1 star plus 1 per thing praised (1-5).",
        answer_type="number",
        metrics=("squared_error", "absolute_error"),
        corpus_metrics=("pearson", "accuracy"),
        extractor="number",
        valid_range=(1.0, 5.0),
        instruction="Rate each hotel review from 1 to 5 stars: 1 star, plus 1 star for each of "
        "the four things the guest liked.",
        template="Review: {review}",
        answer_prefix="\nStars (1-5):",
        max_tokens=6,
        loader=generated_loader(
            _draw,
            "review",
            prefix="r",
            evaluated=(STARS_EVAL_SIZE, STARS_EVAL_SEED),
            shots=(STARS_SHOT_SIZE, STARS_SHOT_SEED),
        ),
    )
)
