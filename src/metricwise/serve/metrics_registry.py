"""The server's counters, written in the Prometheus text exposition format (version 0.0.4).

A handful of counters and one histogram do not need a client library: this module keeps them
under one lock and renders them on ``GET /metrics``.

======================================================  ======================================
``metricwise_requests_total{endpoint, status}``         requests answered, by HTTP status
``metricwise_request_duration_seconds{endpoint}``       latency histogram, first byte in to
                                                        the whole answer ready
``metricwise_samples_total``                            samples drawn from the backend
``metricwise_tokens_total{kind}``                       prompt and completion tokens
``metricwise_errors_total{type}``                       error answers by OpenAI error type, and
                                                        ``client_disconnected``
``metricwise_queue_depth``, ``metricwise_in_flight``    requests waiting / backend calls running
``metricwise_model_ready``                              1 once the model has loaded
======================================================  ======================================
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Mapping

#: Latency buckets in seconds: a local decision takes milliseconds, a 270M model seconds, a long
#: upstream generation minutes.
BUCKETS: tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
)


def _label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(pairs: Iterable[tuple[str, str]]) -> str:
    inner = ",".join(f'{k}="{_label_value(v)}"' for k, v in pairs)
    return "{" + inner + "}" if inner else ""


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class ServeMetrics:
    """Thread-safe counters of one server; :meth:`render` writes them for Prometheus."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, str], int] = {}
        self._errors: dict[str, int] = {}
        self._samples = 0
        self._tokens = {"prompt": 0, "completion": 0}
        self._latency: dict[str, tuple[list[int], list[float]]] = {}

    def observe_request(self, endpoint: str, status: int, seconds: float) -> None:
        """Count one answered request and its latency."""
        with self._lock:
            key = (endpoint, str(status))
            self._requests[key] = self._requests.get(key, 0) + 1
            counts, total = self._latency.setdefault(endpoint, ([0] * (len(BUCKETS) + 1), [0.0]))
            for i, bound in enumerate(BUCKETS):
                if seconds <= bound:
                    counts[i] += 1
            counts[-1] += 1  # +Inf, which is also the count
            total[0] += seconds

    def observe_error(self, error_type: str) -> None:
        with self._lock:
            self._errors[error_type] = self._errors.get(error_type, 0) + 1

    def observe_sampling(self, samples: int, prompt_tokens: int, completion_tokens: int) -> None:
        with self._lock:
            self._samples += samples
            self._tokens["prompt"] += prompt_tokens
            self._tokens["completion"] += completion_tokens

    def render(self, gauges: Mapping[str, tuple[str, float]] | None = None) -> str:
        """The text format; ``gauges`` maps a name to (help, value) for values read at scrape time."""
        lines: list[str] = []

        def header(name: str, kind: str, text: str) -> None:
            lines.append(f"# HELP {name} {text}")
            lines.append(f"# TYPE {name} {kind}")

        with self._lock:
            header(
                "metricwise_requests_total", "counter", "Requests answered, by endpoint and status."
            )
            for (endpoint, status), count in sorted(self._requests.items()):
                labels = _labels([("endpoint", endpoint), ("status", status)])
                lines.append(f"metricwise_requests_total{labels} {count}")
            header(
                "metricwise_request_duration_seconds",
                "histogram",
                "Seconds from a request's arrival to its answer being ready.",
            )
            for endpoint, (counts, total) in sorted(self._latency.items()):
                for bound, count in zip([*BUCKETS, math.inf], counts, strict=True):
                    labels = _labels([("endpoint", endpoint), ("le", _number(bound))])
                    lines.append(f"metricwise_request_duration_seconds_bucket{labels} {count}")
                labels = _labels([("endpoint", endpoint)])
                lines.append(f"metricwise_request_duration_seconds_sum{labels} {total[0]!r}")
                lines.append(f"metricwise_request_duration_seconds_count{labels} {counts[-1]}")
            header("metricwise_samples_total", "counter", "Samples drawn from the backend.")
            lines.append(f"metricwise_samples_total {self._samples}")
            header("metricwise_tokens_total", "counter", "Tokens of prompts and of all samples.")
            for kind, count in sorted(self._tokens.items()):
                lines.append(f"metricwise_tokens_total{_labels([('kind', kind)])} {count}")
            header("metricwise_errors_total", "counter", "Error answers by OpenAI error type.")
            for error_type, count in sorted(self._errors.items()):
                lines.append(f"metricwise_errors_total{_labels([('type', error_type)])} {count}")
        for name, (text, value) in sorted((gauges or {}).items()):
            header(name, "gauge", text)
            lines.append(f"{name} {_number(value)}")
        return "\n".join(lines) + "\n"
