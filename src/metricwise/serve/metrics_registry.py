"""The server's counters, kept and written by ``prometheus_client`` on ``GET /metrics``.

Each server has its own :class:`~prometheus_client.CollectorRegistry` (not the process-wide
default, so that several servers in one process, as in the tests, keep apart). The exposition
format follows the scraper's ``Accept`` header as the client library negotiates it: the text
format (version 0.0.4) by default, OpenMetrics when asked for.

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

Counters also carry the ``_created`` series (the time each one started) that the client library
writes for every counter.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder

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


class ServeMetrics:
    """One server's counters in their own registry; :meth:`exposition` writes them."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._requests = Counter(
            "metricwise_requests",
            "Requests answered, by endpoint and status.",
            ["endpoint", "status"],
            registry=r,
        )
        self._latency = Histogram(
            "metricwise_request_duration_seconds",
            "Seconds from a request's arrival to its answer being ready.",
            ["endpoint"],
            buckets=BUCKETS,
            registry=r,
        )
        self._samples = Counter("metricwise_samples", "Samples drawn from the backend.", registry=r)
        self._tokens = Counter(
            "metricwise_tokens", "Tokens of prompts and of all samples.", ["kind"], registry=r
        )
        for kind in ("prompt", "completion"):
            self._tokens.labels(kind=kind)  # both series exist from the start, at 0
        self._errors = Counter(
            "metricwise_errors", "Error answers by OpenAI error type.", ["type"], registry=r
        )
        self._gauges: dict[str, Gauge] = {}
        # Gauges are set from the scrape's values and written in one step.
        self._scrape = threading.Lock()

    def observe_request(self, endpoint: str, status: int, seconds: float) -> None:
        """Count one answered request and its latency."""
        self._requests.labels(endpoint=endpoint, status=str(status)).inc()
        self._latency.labels(endpoint=endpoint).observe(seconds)

    def observe_error(self, error_type: str) -> None:
        self._errors.labels(type=error_type).inc()

    def observe_sampling(self, samples: int, prompt_tokens: int, completion_tokens: int) -> None:
        self._samples.inc(samples)
        self._tokens.labels(kind="prompt").inc(prompt_tokens)
        self._tokens.labels(kind="completion").inc(completion_tokens)

    def exposition(
        self, gauges: Mapping[str, tuple[str, float]] | None = None, accept: str | None = None
    ) -> tuple[bytes, str]:
        """(body, content type) for a scrape whose ``Accept`` header is ``accept``;
        ``gauges`` maps a name to (help, value) for values read at scrape time."""
        encoder, content_type = choose_encoder(accept or "")
        with self._scrape:
            for name, (text, value) in (gauges or {}).items():
                gauge = self._gauges.get(name)
                if gauge is None:
                    gauge = self._gauges[name] = Gauge(name, text, registry=self.registry)
                gauge.set(value)
            return encoder(self.registry), content_type

    def render(self, gauges: Mapping[str, tuple[str, float]] | None = None) -> str:
        """The text format (version 0.0.4)."""
        return self.exposition(gauges)[0].decode("utf-8")
