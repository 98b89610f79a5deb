"""Reading task data: the files of a data directory, with the dataset hub as a fallback.

Files are read from a data directory (``--data_dir`` or ``METRICWISE_DATA_DIR``) laid out as in
``../shared/data`` (its SOURCES.md says where each file comes from). When a file is missing and
the ``datasets`` package is installed, :func:`read_records` fetches the same data from the Hugging
Face hub instead (that needs network access); otherwise it raises an error naming the path it
expected and how to set the directory.

The readers here know file formats (JSON Lines, JSON, CSV/TSV, UTF-8 text), never a benchmark:
a task family module parses its own files with them, and the YAML loader reads user files with
:func:`read_rows`. Every error names the file and, where there is one, the line.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metricwise.errors import InvalidParameterError
from metricwise.io import iter_jsonl

__all__ = [
    "HubSource",
    "Record",
    "line_of",
    "read_json",
    "read_jsonl_records",
    "read_records",
    "read_rows",
    "read_text",
    "to_float",
]

#: One row of a data file as a parser returns it (those of :func:`read_jsonl_records` carry
#: ``_line``, their 1-based line, for messages).
Record = dict[str, Any]


# -- data sources -------------------------------------------------------------------------------
@dataclass(frozen=True)
class HubSource:
    """The Hugging Face hub copy of a data file.

    ``parts`` lists ``(config name or None, split)`` pairs whose rows are concatenated in
    order: ``datasets.load_dataset(path, name, split=split)`` for each. ``note`` says how the
    copy differs from the file (it is shown in the warning issued when the copy is used).
    """

    path: str
    parts: tuple[tuple[str | None, str], ...]
    note: str = ""

    def describe(self) -> str:
        parts = ", ".join(f"{name}/{split}" if name else split for name, split in self.parts)
        return f"{self.path} ({parts})"


def _data_problem(task: str, data_dir: Path | None, relpath: str) -> str:
    if data_dir is None:
        return (
            f"Task {task!r} reads the file {relpath} from a data directory, and none is set. Set it with "
            f"--data_dir DIR or the METRICWISE_DATA_DIR environment variable (DIR/{relpath} must exist)."
        )
    where = Path(data_dir).expanduser().absolute()
    if not where.is_dir():
        return (
            f"Task {task!r} reads {where / relpath}, but the data directory {where} does not exist. Set the "
            f"directory with --data_dir DIR or the METRICWISE_DATA_DIR environment variable (DIR/{relpath} must exist)."
        )
    return (
        f"Task {task!r} reads {where / relpath}, which does not exist. Set the data directory with --data_dir DIR "
        f"or the METRICWISE_DATA_DIR environment variable (DIR/{relpath} must exist)."
    )


def _load_hub(hub: HubSource) -> list[Mapping[str, Any]]:
    import datasets  # optional; only reached when the package is importable

    rows: list[Mapping[str, Any]] = []
    for name, split in hub.parts:
        rows.extend(datasets.load_dataset(hub.path, name, split=split))
    return rows


def read_records(
    task: str,
    data_dir: Path | None,
    relpath: str,
    parse: Callable[[Path], list[Record]],
    hub: HubSource | None = None,
    hub_record: Callable[[Mapping[str, Any]], Record] | None = None,
) -> list[Record]:
    """The records of ``data_dir / relpath``, falling back to the dataset hub.

    Raises
    ------
    InvalidParameterError
        When the file is missing and the hub cannot be used (the message names the expected
        path, how to set the data directory and what the hub fallback needs), or when the file
        is empty or malformed (the parser names the file and line).
    """
    if data_dir is not None:
        path = Path(data_dir).expanduser() / relpath
        if path.is_file():
            records = parse(path)
            if not records:
                raise InvalidParameterError(
                    f"The data file {path.absolute()} of task {task!r} is empty: it has no rows."
                )
            return records
    problem = _data_problem(task, data_dir, relpath)
    if hub is None or hub_record is None:
        raise InvalidParameterError(
            problem + " This file has no dataset hub copy that metricwise can load."
        )
    if importlib.util.find_spec("datasets") is None:
        raise InvalidParameterError(
            problem
            + f" Without it, metricwise can fetch {hub.describe()} from the Hugging Face hub: "
            "that needs `pip install datasets` and network access."
        )
    try:
        rows = _load_hub(hub)
    except Exception as exc:  # any failure of the hub (network, missing dataset, changed schema)
        raise InvalidParameterError(
            problem
            + f" Fetching {hub.describe()} from the Hugging Face hub failed too: {type(exc).__name__}: {exc}"
        ) from exc
    note = f" ({hub.note})" if hub.note else ""
    warnings.warn(
        f"Task {task!r}: {relpath} is not in the data directory, so it was read from the Hugging Face "
        f"hub copy {hub.describe()}{note}.",
        stacklevel=2,
    )
    records = []
    for i, row in enumerate(rows):
        try:
            records.append(hub_record(row))
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise InvalidParameterError(
                f"Row {i} of {hub.describe()} from the Hugging Face hub does not have the expected fields "
                f"({type(exc).__name__}: {exc})."
            ) from None
    if not records:
        raise InvalidParameterError(f"{hub.describe()} from the Hugging Face hub has no rows.")
    return records


# -- file formats -------------------------------------------------------------------------------
def read_text(path: Path) -> str:
    """The UTF-8 text of a data file; raises naming the file when it is not UTF-8."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidParameterError(
            f"The data file {path.absolute()} is not UTF-8 text ({exc})."
        ) from None


def read_jsonl_records(path: Path, required: Sequence[str] = ()) -> list[Record]:
    """Objects of a JSON Lines file, one per non-blank line, with ``required`` keys checked.

    Lines are read by :func:`metricwise.io.iter_jsonl`, the reader of every command's input;
    unlike :func:`metricwise.io.read_jsonl` this checks ``required`` keys, records each object's
    line as ``_line`` and words its messages as every data-file message here (:func:`line_of`).

    Raises
    ------
    InvalidParameterError
        Naming the file and the (1-based) line of the first malformed row.
    """
    records = []
    for line in iter_jsonl(path):
        where = f"Line {line.number} of {path.absolute()}"
        if line.error is not None:
            raise InvalidParameterError(f"{where} is {line.error}.")
        obj = line.value
        if not isinstance(obj, dict):
            raise InvalidParameterError(
                f"{where} must be a JSON object. Got {type(obj).__name__} instead."
            )
        missing = [k for k in required if k not in obj]
        if missing:
            raise InvalidParameterError(
                f"{where} has no {', '.join(map(repr, missing))} field (it has {sorted(obj)})."
            )
        obj["_line"] = line.number
        records.append(obj)
    return records


def read_json(path: Path) -> Any:
    """The parsed JSON of a data file, or None when it is blank; raises naming the file and line."""
    text = read_text(path)
    if not text.strip():
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidParameterError(
            f"The data file {path.absolute()} is not valid JSON: {exc.msg} at line {exc.lineno}."
        ) from None


def line_of(path: Path, line: int) -> str:
    """``"Line N of /abs/path"``: how every data-file message names a line."""
    return f"Line {line} of {path.absolute()}"


# -- numbers ------------------------------------------------------------------------------------
def to_float(text: Any, where: str) -> float:
    """``text`` as a finite float (commas dropped); raises naming ``where``."""
    if isinstance(text, bool):
        raise InvalidParameterError(f"{where}: expected a number. Got {text!r} instead.")
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        try:
            value = float(str(text).strip().replace(",", ""))
        except ValueError:
            raise InvalidParameterError(
                f"{where}: expected a number. Got {text!r} instead."
            ) from None
    if not math.isfinite(value):
        raise InvalidParameterError(f"{where}: expected a finite number. Got {text!r} instead.")
    return value


# -- tables (the YAML loader's JSONL, CSV and TSV files) ----------------------------------------
def read_rows(path: Path, delimiter: str | None, where: str) -> list[tuple[int, dict[str, Any]]]:
    """(line number, row) pairs of a JSONL, CSV or TSV file."""
    if not path.is_file():
        raise InvalidParameterError(
            f"The data file {path.absolute()} named by {where} does not exist."
        )
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        rows = [(r.pop("_line"), r) for r in read_jsonl_records(path)]
    elif suffix in (".csv", ".tsv"):
        sep = delimiter or ("\t" if suffix == ".tsv" else ",")
        rows = []
        try:
            with path.open(encoding="utf-8", newline="") as f:
                reader = csv.DictReader(f, delimiter=sep)
                if reader.fieldnames is None:
                    rows = []
                else:
                    for row in reader:
                        if None in row:
                            raise InvalidParameterError(
                                f"Line {reader.line_num} of {path.absolute()} has more fields than the header "
                                f"({len(reader.fieldnames)}: {reader.fieldnames})."
                            )
                        if all(v is None or not str(v).strip() for v in row.values()):
                            continue
                        rows.append((reader.line_num, dict(row)))
        except UnicodeDecodeError as exc:
            raise InvalidParameterError(
                f"The data file {path.absolute()} is not UTF-8 text ({exc})."
            ) from None
        except csv.Error as exc:
            raise InvalidParameterError(
                f"The data file {path.absolute()} is not valid CSV ({exc})."
            ) from None
    else:
        raise InvalidParameterError(
            f"The data file of {where} must end in .jsonl, .csv or .tsv. Got {path.name!r} instead."
        )
    if not rows:
        raise InvalidParameterError(
            f"The data file {path.absolute()} named by {where} is empty: it has no rows."
        )
    return rows
