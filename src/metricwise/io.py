"""JSON helpers shared by the CLI and the evaluation outputs."""

from __future__ import annotations

import json
import math
from typing import IO, Any


def json_safe(value: Any) -> Any:
    """Replace NaN/inf (not valid JSON) by null and numpy scalars by Python ones, recursively."""
    if hasattr(value, "item") and not isinstance(value, (list, tuple, dict)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_json_line(sink: IO[str], record: dict[str, Any]) -> None:
    sink.write(json.dumps(json_safe(record), ensure_ascii=False) + "\n")
