"""JSON Lines in and out: the one reader of every command's input, and JSON-safe writing."""

from __future__ import annotations

import io
import json
import math
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from metricwise.errors import InvalidParameterError


@dataclass(frozen=True)
class JsonLine:
    """One non-blank line of a JSON Lines input: its 1-based number and the parsed value, or why not."""

    number: int
    value: Any = None
    error: str | None = None


def iter_jsonl(path: str | Path) -> Iterator[JsonLine]:
    """The non-blank lines of a JSON Lines file (``"-"`` for standard input), parsed one by one.

    Bytes are decoded line by line, so a line that is not UTF-8 is reported by its number like a
    line that is not JSON (``error`` is set and ``value`` is None) and the lines after it still
    come. A missing file or a directory raises :class:`~metricwise.errors.InvalidParameterError`.
    """
    name = "<stdin>" if str(path) == "-" else str(path)
    if str(path) == "-":
        # A text stream without bytes underneath (a test's StringIO) is read as its UTF-8 bytes.
        stream: IO[bytes] = getattr(sys.stdin, "buffer", None) or io.BytesIO(
            sys.stdin.read().encode("utf-8")
        )
    else:
        try:
            stream = open(path, "rb")  # noqa: SIM115 (closed below; stdin is not ours to close)
        except FileNotFoundError:
            raise InvalidParameterError(f"The input file {name!r} does not exist.") from None
        except IsADirectoryError:
            raise InvalidParameterError(
                f"The input {name!r} is a directory; expected a JSON Lines file."
            ) from None
    try:
        for number, raw in enumerate(stream, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield JsonLine(
                    number,
                    error=f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})",
                )
                continue
            if not line.strip():
                continue
            if number == 1 and line.startswith("\ufeff"):
                line = line[1:]  # a byte-order mark written by some editors
            try:
                yield JsonLine(number, json.loads(line))
            except json.JSONDecodeError as exc:
                yield JsonLine(number, error=f"not valid JSON ({exc.msg} at column {exc.colno})")
    finally:
        if str(path) != "-":
            stream.close()


def read_jsonl(path: str | Path) -> list[JsonLine]:
    """Every non-blank line of a JSON Lines file as objects; raises at the first malformed line.

    Raises
    ------
    InvalidParameterError
        Naming the file and the line: not UTF-8, not JSON, or not a JSON object.
    """
    name = "<stdin>" if str(path) == "-" else str(path)
    lines = []
    for line in iter_jsonl(path):
        if line.error is None and not isinstance(line.value, dict):
            line = JsonLine(
                line.number, error=f"expected a JSON object, got {type(line.value).__name__}"
            )
        if line.error is not None:
            raise InvalidParameterError(f"{name}: line {line.number}: {line.error}")
        lines.append(line)
    return lines


def answer_text(value: Any) -> str:
    """A decision's output as the text of a choice.

    Numbers get at most 15 significant digits, which every float holds exactly, so that a mean
    reads 4.175 rather than 4.175000000000001; the exact value is the decision's ``output``
    (the ``metricwise`` object of a served answer). Whole numbers are written without ".0".
    """
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return str(value).lower()
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    if not math.isfinite(number):
        return str(number)
    if number.is_integer() and abs(number) < 1e15:
        return str(int(number))
    return format(number, ".15g")


def json_safe(value: Any) -> Any:
    """Replace NaN/inf (not valid JSON) by null and numpy scalars by Python ones, recursively;
    keys become strings (as JSON writes them). The one conversion for files and the server."""
    if hasattr(value, "item") and not isinstance(value, (list, tuple, dict, str)):
        try:
            value = value.item()
        except (TypeError, ValueError):  # an array of several items: not a scalar
            return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_json_line(sink: IO[str], record: dict[str, Any]) -> None:
    sink.write(json.dumps(json_safe(record), ensure_ascii=False) + "\n")


def json_or_text(raw: str) -> Any:
    """``raw`` read as JSON where it is (``8``, ``true``, ``"quoted"``), else the text itself:
    how ``K=V`` option values and metric spec arguments are read."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw
