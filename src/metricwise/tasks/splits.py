"""A task's two splits from its data files: the evaluated items and the few-shot pool.

Two shapes cover the built-in benchmarks. :func:`split_loader`: a file per split (an eval file
and a train file). :func:`holdout_loader`: one file, of which every ``HOLDOUT_EVERY``-th row is
held apart for shots, i.e. the 0-based rows ``i`` with ``i % 10 == 9`` ("rows 9, 19, 29, ..."),
so that the pool spreads over the whole file (some files are ordered by problem type).

In both, a pool row whose fields repeat an evaluated item's (same text up to case and spacing,
see :func:`~metricwise.tasks.fewshot.fields_key`) is dropped, so the pool never overlaps the
evaluated items. Row ids are the 0-based row numbers in the file (``"dev-12"``, ``"train-3"``
where a task reads two files), unless the task's item maker uses an id of the data (SQuAD's
question id, ASDiv's problem id), so ids never collide between the two splits.

Tasks that need no data (``arith``, ``stars``) generate both splits from two seeds:
:func:`generated_items` and :func:`generated_loader`.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from metricwise.errors import InvalidParameterError
from metricwise.tasks.base import Item
from metricwise.tasks.fewshot import fields_key
from metricwise.tasks.readers import HubSource, Record, read_records

__all__ = [
    "HOLDOUT_EVERY",
    "Loader",
    "MakeItem",
    "generated_items",
    "generated_loader",
    "holdout_loader",
    "split_loader",
]

#: One row in every ``HOLDOUT_EVERY`` rows of a single-file benchmark is held apart for shots.
HOLDOUT_EVERY = 10

#: ``Task.loader``: ``(data directory or None, split) -> items``.
Loader = Callable[[Path | None, str], list[Item]]

#: Builds the item of a record, given its id (the row number, possibly with a split tag).
MakeItem = Callable[[Record, str], Item]


def split_loader(
    task: str,
    files: Mapping[str, tuple[str, str, HubSource | None]],
    parse: Callable[[Path], list[Record]],
    hub_record: Callable[[Mapping[str, Any]], Record] | None,
    make_item: MakeItem,
) -> Loader:
    """A task with a file per split: ``files[split] = (relpath, id tag, hub copy)``."""

    def items(data_dir: Path | None, split: str) -> list[Item]:
        relpath, tag, hub = files[split]
        records = read_records(task, data_dir, relpath, parse, hub, hub_record)
        return [make_item(r, f"{tag}-{i}") for i, r in enumerate(records)]

    def load(data_dir: Path | None, split: str) -> list[Item]:
        if split == "eval":
            return items(data_dir, "eval")
        return _without(items(data_dir, "fewshot"), items(data_dir, "eval"))

    return load


def _without(pool: list[Item], evaluated: list[Item]) -> list[Item]:
    """The pool items whose fields do not repeat an evaluated item's (see ``fields_key``)."""
    seen = {fields_key(it) for it in evaluated}
    return [it for it in pool if fields_key(it) not in seen]


def holdout_loader(
    task: str,
    relpath: str,
    parse: Callable[[Path], list[Record]],
    hub: HubSource | None,
    hub_record: Callable[[Mapping[str, Any]], Record] | None,
    make_item: MakeItem,
    *,
    group: Callable[[list[Record]], list[int]] | None = None,
    prepare: Callable[[list[Record]], list[Record]] | None = None,
    shot_filter: Callable[[Record], bool] | None = None,
) -> Loader:
    """A single-file task: every ``HOLDOUT_EVERY``-th row (or group of rows) is the shot pool.

    ``group`` maps the records to group numbers (SQuAD: articles) held apart together;
    ``prepare`` filters or rewrites the records first (ASDiv: numeric answers only);
    ``shot_filter`` keeps only some held-apart rows as shots (MATH: short solutions).
    """

    def load(data_dir: Path | None, split: str) -> list[Item]:
        records = read_records(task, data_dir, relpath, parse, hub, hub_record)
        if prepare is not None:
            records = prepare(records)
            if not records:
                raise InvalidParameterError(f"Task {task!r} found no usable rows in {relpath}.")
        groups = group(records) if group is not None else list(range(len(records)))
        held = [g % HOLDOUT_EVERY == HOLDOUT_EVERY - 1 for g in groups]
        evaluated = [
            make_item(r, str(i))
            for i, (r, h) in enumerate(zip(records, held, strict=True))
            if not h
        ]
        if split == "eval":
            return evaluated
        pool = [
            make_item(r, str(i))
            for i, (r, h) in enumerate(zip(records, held, strict=True))
            if h and (shot_filter is None or shot_filter(r))
        ]
        return _without(pool, evaluated)

    return load


#: Draws item ``i``'s text and integer answer from the generator's random stream.
Draw = Callable[[random.Random, int], tuple[str, int]]


def generated_items(
    n: int, seed: int, draw: Draw, field: str, *, prefix: str, exclude: Iterable[str] = ()
) -> list[Item]:
    """``n`` distinct generated items, deterministic in ``seed``: ``draw(rng, i)`` gives item
    ``i``'s text (the template field ``field``) and its integer answer; a text already drawn or
    in ``exclude`` is drawn again. Ids are ``prefix`` and the item's number (``q000``)."""
    rng = random.Random(seed)
    seen = set(exclude)
    items: list[Item] = []
    while len(items) < n:
        text, answer = draw(rng, len(items))
        if text in seen:
            continue
        seen.add(text)
        items.append(
            Item(f"{prefix}{len(items):03d}", {field: text}, (float(answer),), str(answer))
        )
    return items


def generated_loader(
    draw: Draw,
    field: str,
    *,
    prefix: str,
    evaluated: tuple[int, int],
    shots: tuple[int, int],
) -> Loader:
    """The loader of a generated task: ``evaluated`` and ``shots`` are (size, seed) of the two
    splits; the few-shot pool (ids ``shot000``...) never repeats an evaluated item."""

    def load(data_dir: Path | None, split: str) -> list[Item]:
        items = generated_items(evaluated[0], evaluated[1], draw, field, prefix=prefix)
        if split == "eval":
            return items
        taken = [item.fields[field] for item in items]
        return generated_items(shots[0], shots[1], draw, field, prefix="shot", exclude=taken)

    return load
