"""The task contract: items with references, a prompt with k-shot examples, an extractor, metrics.

A :class:`Task` knows how to load its evaluated items and its few-shot pool from a data
directory, how to turn an item (and its shots) into a prompt, how to pull the answer out of a
generation (an :class:`~metricwise.extract.Extractor` spec) and which metrics score it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from metricwise.errors import InvalidParameterError

AnswerType = Literal["number", "text"]

#: The splits :meth:`Task.load` serves: the evaluated items, and the pool few-shot examples
#: come from (a train split, or a held-apart part of the same file, never overlapping).
SPLITS: tuple[str, ...] = ("eval", "fewshot")


@dataclass(frozen=True)
class Item:
    """One evaluated example.

    Attributes
    ----------
    id:
        Stable identifier within the task (used by the sample store and per-sample logs).
    fields:
        Values the prompt template reads (``question``, ``sentence1``, ``context``, ...).
    references:
        Gold answers: one number for numeric tasks; one or more strings (aliases) for text
        tasks, scored as the best match.
    target:
        The answer as written in a few-shot example (for example "3.8" or "Paris").
    """

    id: str
    fields: Mapping[str, Any]
    references: tuple[Any, ...]
    target: str


@dataclass(frozen=True)
class Task:
    """A benchmark task.

    Attributes
    ----------
    name, description, version:
        ``version`` changes whenever prompts, extraction or data handling change, so that results
        carry it in their signature.
    answer_type:
        ``"number"`` (decisions parse numbers) or ``"text"``.
    metrics:
        Metric names scored per item; the first is the primary one, whose Bayes rule the
        ``mbr``/closed-form decoders target.
    valid_range:
        Clip parsed numbers into it (``(0, 5)`` for STS-B), or ``None``.
    extractor:
        :class:`~metricwise.extract.Extractor` spec applied to every generation.
    instruction:
        Text placed once before the examples.
    template:
        ``str.format`` template of one example's question part, reading ``Item.fields``.
    answer_prefix:
        Placed between the question part and the answer (``"\\nAnswer:"``).
    example_separator:
        Between examples.
    stop:
        Stop strings for generation.
    max_tokens:
        Generation budget per sample.
    corpus_metrics:
        Corpus-level statistics reported beside the per-item metrics (``"pearson"``,
        ``"spearman"``, ``"accuracy"``).
    similarity_fields:
        The fields embedded for similarity-based few-shot selection
        (:meth:`similarity_text`); empty means every string field.
    """

    name: str
    description: str
    answer_type: AnswerType
    metrics: tuple[str, ...]
    extractor: str
    template: str
    answer_prefix: str = "\nAnswer:"
    instruction: str = ""
    example_separator: str = "\n\n"
    valid_range: tuple[float, float] | None = None
    stop: tuple[str, ...] = ("\n",)
    max_tokens: int = 16
    corpus_metrics: tuple[str, ...] = ()
    version: str = "1"
    similarity_fields: tuple[str, ...] = ()
    loader: Any = field(default=None, compare=False, repr=False)

    def load(self, data_dir: Path | None, *, split: str = "eval") -> list[Item]:
        """Items of ``split`` (``"eval"`` or ``"fewshot"``) from ``data_dir``.

        Raises
        ------
        InvalidParameterError
            For an unknown split, a missing data file (the message names the path it expected
            and how to set the data directory) or a malformed one (naming the file and line).
        """
        if split not in SPLITS:
            raise InvalidParameterError(
                f"The 'split' parameter of Task.load must be one of {', '.join(map(repr, SPLITS))}. Got {split!r} instead."
            )
        if self.loader is None:
            raise InvalidParameterError(f"Task {self.name!r} has no data loader.")
        items: list[Item] = self.loader(data_dir, split)
        return items

    def similarity_text(self, item: Item) -> str:
        """The text embedded for similarity-based few-shot selection.

        The values of :attr:`similarity_fields` (every string field when empty), one per line.
        Pass it as ``text=task.similarity_text`` to :func:`metricwise.tasks.fewshot.select_shots`.
        """
        names = self.similarity_fields or tuple(
            k for k, v in item.fields.items() if isinstance(v, str)
        )
        return "\n".join(str(item.fields[k]) for k in names if k in item.fields)

    def format_example(self, item: Item, *, with_answer: bool) -> str:
        try:
            question = self.template.format(**item.fields)
        except KeyError as exc:
            raise InvalidParameterError(
                f"The template of task {self.name!r} reads the field {exc.args[0]!r}, which item {item.id!r} does not have "
                f"(it has {sorted(item.fields)})."
            ) from None
        return question + self.answer_prefix + (f" {item.target}" if with_answer else "")

    def format_prompt(self, item: Item, shots: Sequence[Item] = ()) -> str:
        """The full prompt: instruction, the k shots with their answers, then the item."""
        parts = [self.format_example(s, with_answer=True) for s in shots]
        parts.append(self.format_example(item, with_answer=False))
        body = self.example_separator.join(parts)
        return f"{self.instruction}{self.example_separator}{body}" if self.instruction else body


def resolve_data_dir(data_dir: str | os.PathLike[str] | None) -> Path | None:
    """``data_dir``, else ``$METRICWISE_DATA_DIR``, else ``None`` (loaders may then use a hub)."""
    chosen = data_dir if data_dir is not None else os.environ.get("METRICWISE_DATA_DIR")
    return Path(chosen).expanduser() if chosen else None
