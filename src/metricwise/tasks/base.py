"""The task contract: items with references, a prompt with k-shot examples, an extractor, metrics.

A :class:`Task` knows how to load its evaluated items and its few-shot pool from a data
directory, how to turn an item (and its shots) into a prompt, how to pull the answer out of a
generation (an :class:`~metricwise.extract.Extractor` spec) and which metrics score it.

:func:`check_task` validates a task however it was made (a built-in one, one with overrides,
one from a YAML file), so every task meets the same checks.
"""

from __future__ import annotations

import os
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from metricwise.errors import InvalidParameterError, UnknownNameError, did_you_mean
from metricwise.evaluate.corpus import corpus_statistic_names

AnswerType = Literal["number", "text"]

#: The splits :meth:`Task.load` serves: the evaluated items, and the pool few-shot examples
#: come from (a train split, or a held-apart part of the same file, never overlapping).
SPLITS: tuple[str, ...] = ("eval", "fewshot")

#: Corpus-level statistics the evaluation runner computes (number tasks only).


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


def format_number(value: float) -> str:
    """The canonical text of a reference number: ``18``, ``-3``, ``9.43`` (shortest repr).

    Examples
    --------
    >>> format_number(18.0), format_number(9.43), format_number(-0.5)
    ('18', '9.43', '-0.5')
    """
    value = float(value)
    if value.is_integer() and abs(value) < 1e16:
        return str(int(value))
    return repr(value)


# -- validation of a Task (built-in, overridden or from a file) --------------------------------
def check_strings(value: Any, key: str, where: str, *, allow_empty: bool = True) -> tuple[str, ...]:
    """``value`` (one string or a list of them) as a tuple; raises naming ``key`` and ``where``."""
    if isinstance(value, str):
        value = [value]
    if (
        not isinstance(value, (list, tuple))
        or not all(isinstance(v, str) for v in value)
        or (not allow_empty and not value)
    ):
        need = "a non-empty list of strings" if not allow_empty else "a list of strings"
        raise InvalidParameterError(
            f"The {key!r} field of {where} must be {need}. Got {value!r} instead."
        )
    return tuple(value)


def check_task(task: Task, where: str | None = None) -> Task:
    """Check a task's settings; return it unchanged, or raise a clear error.

    Checks the answer type, that every metric is registered (with a suggestion), the corpus
    metrics, the extractor spec, the valid range, the stop strings, ``max_tokens`` and that the
    template is a valid format string.

    Raises
    ------
    InvalidParameterError
        (or :class:`~metricwise.errors.UnknownNameError` for unknown names) naming the task.
    """
    # Imported here so that the task contract does not pull in the metric registry on import.
    from metricwise.extract import Extractor, check_range
    from metricwise.metrics import names as metric_names
    from metricwise.metrics.base import parse_spec

    where = where or f"task {task.name!r}"
    if not isinstance(task.name, str) or not task.name.strip():
        raise InvalidParameterError(
            f"The 'name' field of {where} must be a non-empty string. Got {task.name!r} instead."
        )
    if task.answer_type not in ("number", "text"):
        raise InvalidParameterError(
            f"The 'answer_type' field of {where} must be 'number' or 'text'. Got {task.answer_type!r} instead."
            + (
                did_you_mean(task.answer_type, ["number", "text"])
                if isinstance(task.answer_type, str)
                else ""
            )
        )
    metrics = check_strings(task.metrics, "metrics", where, allow_empty=False)
    known = metric_names()
    for m in metrics:
        name = parse_spec(m)[0]
        if name not in known:
            raise UnknownNameError(
                f"The 'metrics' field of {where} must name registered metrics ({', '.join(known)}). "
                f"Got {m!r} instead.{did_you_mean(name, known)}"
            )
    for c in check_strings(task.corpus_metrics, "corpus_metrics", where):
        known = corpus_statistic_names()
        if c not in known:
            raise UnknownNameError(
                f"The 'corpus_metrics' field of {where} must name {', '.join(map(repr, known))}. "
                f"Got {c!r} instead.{did_you_mean(c, known)}"
            )
        if task.answer_type != "number":
            raise InvalidParameterError(
                f"The 'corpus_metrics' field of {where} applies to answer_type 'number' only. Got {c!r} for a text task instead."
            )
    if not isinstance(task.extractor, str):
        raise InvalidParameterError(
            f"The 'extractor' field of {where} must be a spec string such as 'number'. Got {task.extractor!r} instead."
        )
    try:
        Extractor.from_spec(task.extractor)
    except InvalidParameterError as exc:
        raise type(exc)(f"In {where}: {exc}") from None
    if task.valid_range is not None:
        check_range(task.valid_range, where)
    check_strings(task.stop, "stop", where)
    if any(not s for s in task.stop):
        raise InvalidParameterError(
            f"The 'stop' field of {where} must not contain empty strings. Got {list(task.stop)!r} instead."
        )
    if (
        not isinstance(task.max_tokens, int)
        or isinstance(task.max_tokens, bool)
        or task.max_tokens < 1
    ):
        raise InvalidParameterError(
            f"The 'max_tokens' field of {where} must be an int >= 1. Got {task.max_tokens!r} instead."
        )
    for key in (
        "template",
        "answer_prefix",
        "instruction",
        "example_separator",
        "description",
        "version",
    ):
        if not isinstance(getattr(task, key), str):
            raise InvalidParameterError(
                f"The {key!r} field of {where} must be a string. Got {getattr(task, key)!r} instead."
            )
    template_fields(task.template, where)
    check_strings(task.similarity_fields, "similarity_fields", where)
    return task


def template_fields(template: str, where: str) -> list[str]:
    """The field names a ``str.format`` template reads, in order; raises on a malformed one."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise InvalidParameterError(
            f"The 'template' field of {where} must be a str.format template (write literal braces as {{{{ and }}}}). "
            f"Got {template!r} instead ({exc})."
        ) from None
    names: list[str] = []
    for _, field_name, _, _ in parsed:
        if field_name is None:
            continue
        base = field_name.split(".")[0].split("[")[0]
        if not base or base.isdigit():
            raise InvalidParameterError(
                f"The 'template' field of {where} must name its fields ({{question}}), not use positional ones. Got {template!r} instead."
            )
        if base not in names:
            names.append(base)
    return names
