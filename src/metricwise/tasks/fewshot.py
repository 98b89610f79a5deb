"""Few-shot example selection: random with a seed, most similar, most diverse.

Every strategy first removes from the pool each item that is evaluated: same ``id`` as an item
of ``items``, or identical fields (compared after lower-casing and collapsing whitespace, so a
duplicated question with a new id is caught too). Pool items with identical fields are kept
once, so a prompt never shows the same example twice.

Strategies
----------
``"random"`` (the default)
    For each item, ``k`` pool items drawn without replacement by a generator seeded with
    ``(seed, a stable hash of the item's id)``. An item's shots therefore do not depend on which
    other items are evaluated or in which order (``--limit`` keeps prompts identical, so stored
    samples are reused).
``"similar"``
    The ``k`` pool items with the highest cosine similarity to the item, by all-MiniLM-L6-v2
    sentence embeddings (Liu et al., 2022, "What Makes Good In-Context Examples for GPT-3?").
    Ties go to the earlier pool item.
``"diverse"``
    Greedy max-min (farthest-point) selection among the ``candidates`` most similar pool items
    (default ``max(4 k, 20)``): start from the most similar, then repeatedly add the candidate
    whose highest cosine to the shots already chosen is lowest (ties: the more similar to the
    item). Relevant but not redundant shots; pass ``candidates=len(pool)`` to spread over the
    whole pool instead.

Shots are returned in the order they should appear in the prompt. For ``"similar"`` and
``"diverse"`` that is increasing similarity, so the most similar example sits right before the
evaluated item (the order Liu et al. found to work best). The embedding strategies are
deterministic and ignore ``seed``.

Cost: embedding the pool once (about 7,500 short questions take tens of seconds on 2 CPU
cores; the encoder caches every text it has seen in the process), then an (items x pool)
similarity product computed in blocks of 256 items.
"""

from __future__ import annotations

import hashlib
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from metricwise.errors import InvalidParameterError, did_you_mean
from metricwise.tasks.base import Item

__all__ = ["STRATEGIES", "default_item_text", "fields_key", "select_shots"]

#: The selection strategies :func:`select_shots` accepts.
STRATEGIES: tuple[str, ...] = ("random", "similar", "diverse")

_BLOCK = 256


class _Encoder(Protocol):
    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


def _normalise_value(value: Any) -> Any:
    if isinstance(value, str):
        return " ".join(value.lower().split())
    if isinstance(value, Mapping):
        return tuple(sorted((str(k), _normalise_value(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_normalise_value(v) for v in value)
    return value if isinstance(value, (numbers.Number, type(None))) else repr(value)


def fields_key(item: Item) -> tuple[Any, ...]:
    """A hashable key under which two items count as the same example.

    The fields, sorted by name, with strings lower-cased and their whitespace collapsed.

    Examples
    --------
    >>> a = Item("1", {"question": "What is  2+2?"}, (4.0,), "4")
    >>> b = Item("7", {"question": "what is 2+2?"}, (4.0,), "4")
    >>> fields_key(a) == fields_key(b)
    True
    """
    return tuple(sorted((str(k), _normalise_value(v)) for k, v in item.fields.items()))


def default_item_text(item: Item) -> str:
    """The text embedded for similarity when no ``text`` function is given.

    The item's string and number fields, in their order, one per line.
    """
    parts = [
        str(v)
        for v in item.fields.values()
        if isinstance(v, (str, numbers.Number)) and not isinstance(v, bool)
    ]
    return "\n".join(parts)


def _stable_seed(item_id: str) -> int:
    return int.from_bytes(
        hashlib.blake2b(item_id.encode("utf-8"), digest_size=8).digest(), "little"
    )


def _check_items(value: Any, name: str) -> list[Item]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise InvalidParameterError(
            f"The {name!r} parameter of select_shots must be a sequence of Item. Got {type(value).__name__} instead."
        )
    for x in value:
        if not isinstance(x, Item):
            raise InvalidParameterError(
                f"The {name!r} parameter of select_shots must be a sequence of Item. Got an element {x!r} instead."
            )
    return list(value)


def _eligible(pool: list[Item], items: list[Item]) -> list[int]:
    """Indices of the pool items that may be shown: not evaluated, first of each duplicate."""
    ids = {it.id for it in items}
    seen = {fields_key(it) for it in items}
    keep = []
    for j, p in enumerate(pool):
        if p.id in ids:
            continue
        key = fields_key(p)
        if key in seen:
            continue
        seen.add(key)
        keep.append(j)
    return keep


def _embed(
    pool: list[Item],
    items: list[Item],
    eligible: list[int],
    text: Callable[[Item], str],
    encoder: _Encoder | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors of the items and of the eligible pool items, float32."""
    if encoder is None:
        from metricwise.embeddings import get_encoder

        encoder = get_encoder()
    item_vecs = np.asarray(encoder.encode([text(it) for it in items]), dtype=np.float32)
    pool_vecs = np.asarray(encoder.encode([text(pool[j]) for j in eligible]), dtype=np.float32)
    return item_vecs, pool_vecs


def _top(sims: np.ndarray, m: int) -> np.ndarray:
    """Indices of the ``m`` largest entries of a row, most similar first; ties by index."""
    if m < sims.shape[0]:
        part = np.argpartition(-sims, m - 1)[:m]
        # Bring in every entry tied with the m-th value so that ties resolve by index.
        threshold = sims[part].min()
        part = np.flatnonzero(sims >= threshold)
    else:
        part = np.arange(sims.shape[0])
    order = np.lexsort((part, -sims[part]))
    return np.asarray(part[order][:m])


def _max_min(candidates: np.ndarray, query_sims: np.ndarray, vecs: np.ndarray, k: int) -> list[int]:
    """Greedy farthest-point selection among ``candidates`` (ordered most similar first)."""
    chosen = [0]  # positions in ``candidates``; the most similar starts
    cand_vecs = vecs[candidates].astype(np.float64)
    closest = cand_vecs @ cand_vecs[0]  # highest cosine of each candidate to the chosen set
    closest[0] = np.inf
    while len(chosen) < k:
        # Lowest "closest" wins; ties go to the earlier (more similar) candidate.
        nxt = int(np.argmin(closest))
        chosen.append(nxt)
        closest = np.maximum(closest, cand_vecs @ cand_vecs[nxt])
        closest[chosen] = np.inf
    picked = candidates[chosen]
    # Prompt order: increasing similarity to the item (the most similar last).
    order = np.lexsort((-picked, query_sims[picked]))
    return [int(x) for x in picked[order]]


def select_shots(
    pool: Sequence[Item],
    items: Sequence[Item],
    k: int,
    strategy: str = "random",
    seed: int = 0,
    *,
    text: Callable[[Item], str] | None = None,
    candidates: int | None = None,
    encoder: Any = None,
) -> list[list[Item]]:
    """Choose ``k`` few-shot examples from ``pool`` for each of ``items``.

    Parameters
    ----------
    pool:
        The few-shot pool (``task.load(data_dir, split="fewshot")``).
    items:
        The evaluated items. None of them, and no pool item with identical fields, is ever
        returned as a shot.
    k:
        Shots per item, an int >= 0.
    strategy:
        ``"random"``, ``"similar"`` or ``"diverse"`` (see the module docstring).
    seed:
        Seed of the ``"random"`` strategy.
    text:
        The text embedded for the similarity strategies; default :func:`default_item_text`.
        Pass ``task.similarity_text`` to embed only the fields a task names.
    candidates:
        For ``"diverse"``: how many of the most similar pool items the max-min selection runs
        over; default ``max(4 k, 20)``.
    encoder:
        Any object with ``encode(texts) -> (n, dim)`` unit vectors; default the shared
        all-MiniLM-L6-v2 encoder of :func:`metricwise.embeddings.get_encoder`.

    Returns
    -------
    list of list of Item
        ``result[i]`` holds the shots of ``items[i]`` in prompt order.

    Raises
    ------
    InvalidParameterError
        For an unknown strategy (with a suggestion), a bad ``k`` or ``seed``, or a pool with
        fewer than ``k`` eligible items.

    Examples
    --------
    >>> pool = [Item(f"p{i}", {"q": f"question {i}"}, (float(i),), str(i)) for i in range(10)]
    >>> items = [Item("e0", {"q": "question 3"}, (3.0,), "3")]
    >>> shots = select_shots(pool, items, 4, seed=1)
    >>> len(shots[0]), any(s.fields == items[0].fields for s in shots[0])
    (4, False)
    >>> select_shots(pool, items, 4, seed=1) == shots
    True
    """
    if strategy not in STRATEGIES:
        hint = did_you_mean(strategy, list(STRATEGIES)) if isinstance(strategy, str) else ""
        raise InvalidParameterError(
            f"The 'strategy' parameter of select_shots must be one of {', '.join(map(repr, STRATEGIES))}. "
            f"Got {strategy!r} instead.{hint}"
        )
    if not isinstance(k, numbers.Integral) or isinstance(k, bool) or k < 0:
        raise InvalidParameterError(
            f"The 'k' parameter of select_shots must be an int >= 0. Got {k!r} instead."
        )
    if not isinstance(seed, numbers.Integral) or isinstance(seed, bool):
        raise InvalidParameterError(
            f"The 'seed' parameter of select_shots must be an int. Got {seed!r} instead."
        )
    if candidates is not None and (
        not isinstance(candidates, numbers.Integral)
        or isinstance(candidates, bool)
        or candidates < 1
    ):
        raise InvalidParameterError(
            f"The 'candidates' parameter of select_shots must be an int >= 1 or None. Got {candidates!r} instead."
        )
    pool_list = _check_items(pool, "pool")
    item_list = _check_items(items, "items")
    k = int(k)
    if k == 0 or not item_list:
        return [[] for _ in item_list]
    eligible = _eligible(pool_list, item_list)
    if len(eligible) < k:
        raise InvalidParameterError(
            f"The 'k' parameter of select_shots must be at most the number of usable pool items "
            f"({len(eligible)} of {len(pool_list)} after removing evaluated items and duplicates). Got {k} instead."
        )

    if strategy == "random":
        out = []
        for it in item_list:
            rng = np.random.default_rng([int(seed) & 0xFFFFFFFFFFFFFFFF, _stable_seed(it.id)])
            picks = rng.choice(len(eligible), size=k, replace=False)
            out.append([pool_list[eligible[int(p)]] for p in picks])
        return out

    item_vecs, pool_vecs = _embed(
        pool_list, item_list, eligible, text or default_item_text, encoder
    )
    m = (
        k
        if strategy == "similar"
        else min(len(eligible), max(k, candidates if candidates is not None else max(4 * k, 20)))
    )
    result: list[list[Item]] = []
    for start in range(0, len(item_list), _BLOCK):
        sims = np.asarray(item_vecs[start : start + _BLOCK] @ pool_vecs.T, dtype=np.float64)
        for row in sims:
            top = _top(row, m)
            if strategy == "similar":
                picked = [int(x) for x in top[::-1]]  # increasing similarity
            else:
                picked = _max_min(top, row, pool_vecs, k)
            result.append([pool_list[eligible[j]] for j in picked])
    return result
