"""User tasks without code: a YAML file naming a JSONL or CSV data file and how to prompt and score.

A complete example (``examples/my_task.yaml``)::

    name: unit_conversion
    data: my_task.jsonl              # JSONL, CSV or TSV; relative to this YAML file
    template: "Question: {question}" # str.format over the row's fields
    reference: answer                # the field with the gold answer
    answer_type: number              # number | text
    extractor: number                # number, number:last, number:answer, first_line, answer, text, regex:<pattern>
    metrics: [absolute_error, squared_error]
    corpus_metrics: [accuracy]       # number tasks: accuracy, pearson, spearman
    fewshot:
      holdout: 4                     # the last 4 rows are the few-shot pool, never evaluated
    stop: ["\\n"]
    max_tokens: 12

Keys
----
Required: ``data``, ``reference``, ``answer_type``, and ``template`` or ``input``.

``name`` (default: the file's stem), ``description``, ``version`` (default ``"1"``);
``data``: the data file (``.jsonl``, ``.csv``, ``.tsv``; CSV and TSV need a header row);
``delimiter``: the CSV delimiter (default ``,``; ``\\t`` for ``.tsv``);
``id_field``: a field with a unique id per row (default: the row number);
``input``: the fields the prompt reads (a list; default: those the template names);
``template``: the question part of one example (default: one ``"Field: {field}"`` line per
input field); ``answer_prefix`` (default ``"\\nAnswer:"``), ``instruction``,
``example_separator`` (default a blank line);
``reference``: the field with the answer: a string, a number, or a list of accepted answers
(aliases; JSONL only); a number task needs one number;
``target``: the field shown as the answer in few-shot examples (default: the first reference);
``answer_type``: ``number`` or ``text``;
``extractor`` (default ``number`` / ``first_line``), ``valid_range`` (``[lo, hi]``),
``metrics`` (default ``[absolute_error, squared_error]`` / ``[exact_match, token_f1]``),
``corpus_metrics``, ``stop`` (default ``["\\n"]``), ``max_tokens`` (default 16),
``similarity_fields`` (the fields embedded by the similar/diverse shot strategies);
``fewshot``: ``{holdout: N}`` (the last N rows of ``data`` are the pool and are not evaluated)
or ``{file: shots.jsonl}`` (a separate file with the same fields).

Every problem is reported with the file (and the line of a bad data row); unknown keys come with
a "did you mean" suggestion.
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from metricwise.errors import (
    InvalidParameterError,
    MissingDependencyError,
    UnknownNameError,
    did_you_mean,
)
from metricwise.tasks.base import (
    Item,
    Task,
    check_strings,
    check_task,
    format_number,
    template_fields,
)
from metricwise.tasks.readers import read_rows

__all__ = ["TASK_FILE_KEYS", "load_task_file"]

#: Keys a YAML task file may use.
TASK_FILE_KEYS: tuple[str, ...] = (
    "name",
    "description",
    "version",
    "data",
    "delimiter",
    "id_field",
    "input",
    "template",
    "answer_prefix",
    "instruction",
    "example_separator",
    "reference",
    "target",
    "answer_type",
    "extractor",
    "valid_range",
    "metrics",
    "corpus_metrics",
    "fewshot",
    "stop",
    "max_tokens",
    "similarity_fields",
)
_REQUIRED: tuple[str, ...] = ("data", "reference", "answer_type")
_FEWSHOT_KEYS: tuple[str, ...] = ("holdout", "file")
_DEFAULT_METRICS = {
    "number": ("absolute_error", "squared_error"),
    "text": ("exact_match", "token_f1"),
}
_DEFAULT_EXTRACTOR = {"number": "number", "text": "first_line"}


# -- reading a task file ------------------------------------------------------------------------
def _load_yaml(path: Path) -> Any:
    try:
        import yaml
    except ImportError:
        raise MissingDependencyError("YAML task files need PyYAML: pip install pyyaml.") from None
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidParameterError(f"The task file {path} cannot be read ({exc}).") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidParameterError(f"The task file {path} is not valid YAML: {exc}") from None


def _field(
    config: Mapping[str, Any],
    key: str,
    kind: type | tuple[type, ...],
    what: str,
    where: str,
    default: Any = None,
) -> Any:
    if key not in config or config[key] is None:
        return default
    value = config[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise InvalidParameterError(
            f"The {key!r} field of {where} must be {what}. Got {value!r} instead."
        )
    return value


def _resolve(base: Path, name: str) -> Path:
    path = Path(os.path.expanduser(name))
    return path if path.is_absolute() else base / path


class _RowReader:
    """Turns the rows of a data file into Items, checking each row."""

    def __init__(
        self,
        *,
        inputs: list[str],
        reference: str,
        target: str | None,
        id_field: str | None,
        answer_type: str,
    ) -> None:
        self.inputs = inputs
        self.reference = reference
        self.target = target
        self.id_field = id_field
        self.answer_type = answer_type

    def references(self, value: Any, where: str) -> tuple[Any, ...]:
        if self.answer_type == "number":
            if isinstance(value, list) and len(value) == 1:
                value = value[0]
            if isinstance(value, numbers.Real) and not isinstance(value, bool):
                number = float(value)
            elif isinstance(value, str):
                try:
                    number = float(value.strip().replace(",", ""))
                except ValueError:
                    number = float("nan")
            else:
                number = float("nan")
            if number != number or number in (float("inf"), float("-inf")):
                raise InvalidParameterError(
                    f"{where}: the reference {self.reference!r} must be one finite number for answer_type 'number'. Got {value!r} instead."
                )
            return (number,)
        values = value if isinstance(value, list) else [value]
        refs = []
        for v in values:
            if isinstance(v, bool) or not isinstance(v, (str, numbers.Real)):
                raise InvalidParameterError(
                    f"{where}: the reference {self.reference!r} must be a string, a number or a list of them. Got {value!r} instead."
                )
            text = v.strip() if isinstance(v, str) else format_number(float(v))
            if text:
                refs.append(text)
        if not refs:
            raise InvalidParameterError(f"{where}: the reference {self.reference!r} is empty.")
        return tuple(dict.fromkeys(refs))

    def item(self, row: Mapping[str, Any], line: int, path: Path, default_id: str) -> Item:
        where = f"Line {line} of {path.absolute()}"
        needed = (
            [*self.inputs, self.reference]
            + ([self.target] if self.target else [])
            + ([self.id_field] if self.id_field else [])
        )
        missing = [k for k in dict.fromkeys(needed) if k not in row or row[k] is None]
        if missing:
            raise InvalidParameterError(
                f"{where} has no {', '.join(map(repr, missing))} field (it has {sorted(row)})."
            )
        refs = self.references(row[self.reference], where)
        if self.target:
            target = str(row[self.target]).strip()
        else:
            target = format_number(refs[0]) if self.answer_type == "number" else str(refs[0])
        item_id = str(row[self.id_field]) if self.id_field else default_id
        return Item(item_id, {k: row[k] for k in self.inputs}, refs, target)


def load_task_file(path: str | os.PathLike[str]) -> Task:
    """Build a :class:`~metricwise.tasks.base.Task` from a YAML task file.

    Data files are read (and checked) when the task is loaded, not here; paths in the file are
    relative to the file's own directory. See the module docstring for the keys.

    Raises
    ------
    InvalidParameterError
        For a missing or malformed file, unknown keys (with a suggestion), missing keys or
        values of the wrong type; :class:`~metricwise.errors.MissingDependencyError` when
        PyYAML is not installed.
    """
    file = Path(os.path.expanduser(os.fspath(path))).absolute()
    if not file.is_file():
        raise InvalidParameterError(f"The task file {file.absolute()} does not exist.")
    where = f"task file {file.absolute()}"
    config = _load_yaml(file)
    if not isinstance(config, dict):
        raise InvalidParameterError(
            f"The {where} must be a YAML mapping of keys such as data, template and metrics. Got {type(config).__name__} instead."
        )
    for key in config:
        if key not in TASK_FILE_KEYS:
            raise UnknownNameError(
                f"Unknown key {key!r} in {where}.{did_you_mean(str(key), list(TASK_FILE_KEYS))} "
                f"Known keys: {', '.join(TASK_FILE_KEYS)}."
            )
    missing = [k for k in _REQUIRED if config.get(k) is None]
    if "template" not in config and "input" not in config:
        missing.append("template (or input)")
    if missing:
        raise InvalidParameterError(f"The {where} is missing {', '.join(map(repr, missing))}.")

    answer_type = config["answer_type"]
    if answer_type not in ("number", "text"):
        raise InvalidParameterError(
            f"The 'answer_type' field of {where} must be 'number' or 'text'. Got {answer_type!r} instead."
            + (
                did_you_mean(answer_type, ["number", "text"])
                if isinstance(answer_type, str)
                else ""
            )
        )
    data = _field(config, "data", str, "a file name", where)
    reference = _field(config, "reference", str, "the name of a field", where)
    target = _field(config, "target", str, "the name of a field", where)
    id_field = _field(config, "id_field", str, "the name of a field", where)
    delimiter = _field(config, "delimiter", str, "one character", where)
    if delimiter is not None and len(delimiter) != 1:
        raise InvalidParameterError(
            f"The 'delimiter' field of {where} must be one character. Got {delimiter!r} instead."
        )
    template = _field(config, "template", str, "a string such as 'Question: {question}'", where)
    inputs = (
        list(check_strings(config["input"], "input", where, allow_empty=False))
        if config.get("input") is not None
        else None
    )
    if template is None:
        if inputs is None:  # unreachable: the missing-key check asked for one of them
            raise InvalidParameterError(f"The {where} is missing 'template' (or 'input').")
        template = "\n".join(
            f"{name.replace('_', ' ').capitalize()}: {{{name}}}" for name in inputs
        )
    named = template_fields(template, where)
    if inputs is None:
        inputs = named
    else:
        extra = [n for n in named if n not in inputs]
        if extra:
            raise InvalidParameterError(
                f"The 'template' field of {where} reads {', '.join(map(repr, extra))}, which 'input' does not list ({inputs})."
            )
    fewshot = _field(
        config, "fewshot", dict, "a mapping such as {holdout: 5} or {file: shots.jsonl}", where
    )
    holdout: int | None = None
    shots_file: Path | None = None
    if fewshot is not None:
        for key in fewshot:
            if key not in _FEWSHOT_KEYS:
                raise UnknownNameError(
                    f"Unknown key {key!r} under 'fewshot' in {where}.{did_you_mean(str(key), list(_FEWSHOT_KEYS))} "
                    "Use holdout: N (the last N rows) or file: <path>."
                )
        if ("holdout" in fewshot) == ("file" in fewshot):
            raise InvalidParameterError(
                f"The 'fewshot' field of {where} must have exactly one of holdout: N or file: <path>. Got {fewshot!r} instead."
            )
        if "holdout" in fewshot:
            holdout = fewshot["holdout"]
            if not isinstance(holdout, int) or isinstance(holdout, bool) or holdout < 1:
                raise InvalidParameterError(
                    f"The 'fewshot.holdout' field of {where} must be an int >= 1. Got {holdout!r} instead."
                )
        else:
            if not isinstance(fewshot["file"], str):
                raise InvalidParameterError(
                    f"The 'fewshot.file' field of {where} must be a file name. Got {fewshot['file']!r} instead."
                )
            shots_file = _resolve(file.parent, fewshot["file"])

    valid_range = config.get("valid_range")
    if valid_range is not None:
        if not isinstance(valid_range, (list, tuple)) or len(valid_range) != 2:
            raise InvalidParameterError(
                f"The 'valid_range' field of {where} must be a pair [lo, hi]. Got {valid_range!r} instead."
            )
        valid_range = tuple(valid_range)
    version = config.get("version", "1")
    if isinstance(version, bool) or not isinstance(version, (str, int, float)):
        raise InvalidParameterError(
            f"The 'version' field of {where} must be a string. Got {version!r} instead."
        )
    max_tokens = config.get("max_tokens", 16)

    data_path = _resolve(file.parent, data)
    reader = _RowReader(
        inputs=inputs,
        reference=reference,
        target=target,
        id_field=id_field,
        answer_type=answer_type,
    )

    def load(data_dir: Path | None, split: str) -> list[Item]:
        rows = read_rows(data_path, delimiter, where)
        items = [
            reader.item(row, line, data_path, f"row-{i}") for i, (line, row) in enumerate(rows)
        ]
        if holdout is not None and holdout >= len(items):
            raise InvalidParameterError(
                f"The 'fewshot.holdout' field of {where} must be smaller than the number of rows of {data_path.absolute()} "
                f"({len(items)}), so that some rows are evaluated. Got {holdout} instead."
            )
        cut = len(items) - (holdout or 0)
        if split == "eval":
            return items[:cut]
        if holdout is not None:
            return items[cut:]
        if shots_file is not None:
            shot_rows = read_rows(shots_file, delimiter, where)
            return [
                reader.item(row, line, shots_file, f"shot-{i}")
                for i, (line, row) in enumerate(shot_rows)
            ]
        raise InvalidParameterError(
            f"The {where} has no few-shot pool: add 'fewshot: {{holdout: N}}' or 'fewshot: {{file: shots.jsonl}}', "
            "or evaluate with --num_fewshot 0."
        )

    task = Task(
        name=_field(config, "name", str, "a string", where, file.stem),
        description=_field(
            config, "description", str, "a string", where, f"User task from {file.name} ({data})."
        ),
        answer_type=answer_type,
        metrics=check_strings(
            config.get("metrics", _DEFAULT_METRICS[answer_type]),
            "metrics",
            where,
            allow_empty=False,
        ),
        corpus_metrics=check_strings(config.get("corpus_metrics") or (), "corpus_metrics", where),
        extractor=_field(
            config,
            "extractor",
            str,
            "an extractor spec such as 'number' or 'first_line'",
            where,
            _DEFAULT_EXTRACTOR[answer_type],
        ),
        template=template,
        answer_prefix=_field(config, "answer_prefix", str, "a string", where, "\nAnswer:"),
        instruction=_field(config, "instruction", str, "a string", where, ""),
        example_separator=_field(config, "example_separator", str, "a string", where, "\n\n"),
        valid_range=valid_range,
        stop=check_strings(config["stop"], "stop", where)
        if config.get("stop") is not None
        else ("\n",),
        max_tokens=max_tokens,
        version=str(version),
        similarity_fields=check_strings(
            config.get("similarity_fields") or (), "similarity_fields", where
        ),
        loader=load,
    )
    return check_task(task, where)
