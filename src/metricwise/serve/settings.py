"""The server's settings: what a request may ask for, and how much work may wait.

Plain data with no dependencies, so that the command line can check its options before FastAPI
is imported or a model loads.
"""

from __future__ import annotations

from dataclasses import dataclass

from metricwise.errors import InvalidParameterError


@dataclass(frozen=True)
class ServeSettings:
    """Limits and defaults of ``metricwise serve`` (see :func:`metricwise.serve.app.create_app`).

    Attributes
    ----------
    model_names:
        Names a request may give as ``model``; the first is the one ``GET /v1/models`` lists.
        Empty: the backend's own name (an upstream's served model, else its signature).
    api_key:
        When set, every request but ``GET /health`` needs ``Authorization: Bearer <api_key>``.
    max_n:
        The most samples one prompt may ask for: ``samples``, ``n`` and the adaptive ``max_n``.
    max_tokens:
        The most new tokens per sample a request may ask for.
    default_max_tokens:
        New tokens per sample when a request gives no ``max_tokens`` (a runaway generation is
        multiplied by the number of samples, so there is always a finite limit).
    default_samples:
        Samples per prompt when a request names a ``metric`` but not ``samples``.
    max_prompt_chars:
        The longest prompt (or rendered chat conversation), in characters.
    max_prompts:
        The most prompts in one completions request (``prompt`` may be a list).
    max_body_bytes:
        The largest request body; a larger one is answered 413 before it is parsed.
    max_concurrent:
        Backend calls in flight at once for an upstream (``openai``) backend. A local model
        always runs one batch at a time.
    max_queue:
        Requests that may wait for a worker; one more is answered 429 with ``Retry-After``.
    max_batch_prompts:
        The most prompts a local model samples in one call when queued requests with the same
        sampling settings are batched together.
    max_support:
        Support entries (distinct answers with their weights) returned per decision.
    retry_after:
        Seconds a 429 or 503 answer asks the client to wait (``Retry-After``).
    max_logprobs:
        The most alternatives per token a request may ask for (``logprobs`` of completions,
        ``top_logprobs`` of chat).
    allowed_origins:
        Origins a browser may call the server from (CORS); empty: CORS is off. ``"*"`` is any.
    docs:
        Serve the OpenAPI schema (``/openapi.json``) and its pages (``/docs``), without the key.
    open_metrics:
        ``GET /metrics`` answers without the API key (for a scraper that has none).
    access_log:
        Log one line per request, with its request id.
    keepalive_seconds:
        While a streamed request with a metric is being sampled, an SSE comment is sent this
        often (the first at once), so that the client and any proxy see the request is alive.
    """

    model_names: tuple[str, ...] = ()
    api_key: str | None = None
    max_n: int = 64
    max_tokens: int = 512
    default_max_tokens: int = 64
    default_samples: int = 16
    max_prompt_chars: int = 32_000
    max_prompts: int = 16
    max_body_bytes: int = 1 << 20
    max_concurrent: int = 8
    max_queue: int = 64
    max_batch_prompts: int = 16
    max_support: int = 10
    retry_after: int = 1
    max_logprobs: int = 20
    allowed_origins: tuple[str, ...] = ()
    docs: bool = False
    open_metrics: bool = False
    access_log: bool = True
    keepalive_seconds: float = 5.0

    def __post_init__(self) -> None:
        for name in (
            "max_n",
            "max_tokens",
            "default_max_tokens",
            "default_samples",
            "max_prompt_chars",
            "max_prompts",
            "max_body_bytes",
            "max_concurrent",
            "max_batch_prompts",
            "retry_after",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidParameterError(
                    f"The '{name}' setting of the server must be an int >= 1. Got {value!r} instead."
                )
        for name in ("max_queue", "max_support", "max_logprobs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InvalidParameterError(
                    f"The '{name}' setting of the server must be an int >= 0. Got {value!r} instead."
                )
        if self.default_max_tokens > self.max_tokens:
            raise InvalidParameterError(
                f"The 'default_max_tokens' setting of the server must be <= max_tokens ({self.max_tokens}). "
                f"Got {self.default_max_tokens} instead."
            )
        if self.default_samples > self.max_n:
            raise InvalidParameterError(
                f"The 'default_samples' setting of the server must be <= max_n ({self.max_n}). "
                f"Got {self.default_samples} instead."
            )
        if self.api_key is not None and not self.api_key.strip():
            raise InvalidParameterError(
                "The 'api_key' setting of the server must be a non-empty string or None. Got an empty string instead."
            )
        names = tuple(self.model_names)
        if not all(isinstance(n, str) and n for n in names):
            raise InvalidParameterError(
                f"The 'model_names' setting of the server must be non-empty strings. Got {names!r} instead."
            )
        object.__setattr__(self, "model_names", names)
        origins = tuple(self.allowed_origins)
        if not all(isinstance(o, str) and o for o in origins):
            raise InvalidParameterError(
                f"The 'allowed_origins' setting of the server must be non-empty strings. Got {origins!r} instead."
            )
        object.__setattr__(self, "allowed_origins", origins)
        if not self.keepalive_seconds > 0:
            raise InvalidParameterError(
                f"The 'keepalive_seconds' setting of the server must be > 0. Got {self.keepalive_seconds!r} instead."
            )
