"""Errors as the OpenAI API writes them: ``{"error": {"message", "type", "param", "code"}}``.

Every failure a client can see goes through :class:`APIError`, so that a client library that
understands OpenAI's errors understands these (the official client raises ``BadRequestError``
for 400, ``AuthenticationError`` for 401, ``NotFoundError`` for 404, ``RateLimitError`` for
429 and ``InternalServerError`` for 5xx). Messages follow metricwise's template (what was
wrong, which field, what was expected, what was got) and never carry a traceback.
"""

from __future__ import annotations

from typing import Any

from metricwise.errors import (
    BackendError,
    InvalidParameterError,
    MissingDependencyError,
    SamplingTimeout,
)

#: status -> (type, code) used when an error does not say otherwise.
_DEFAULTS: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("authentication_error", "invalid_api_key"),
    404: ("invalid_request_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    413: ("invalid_request_error", "request_too_large"),
    422: ("invalid_request_error", "no_valid_samples"),
    429: ("rate_limit_error", "queue_full"),
    500: ("server_error", "internal_error"),
    502: ("upstream_error", "backend_failed"),
    503: ("unavailable_error", "model_loading"),
    504: ("timeout_error", "backend_timeout"),
}


#: Statuses a retry of the same request cannot help: the decision fails again (422), the
#: server erred (500), the backend already retried (502) or used its whole time budget (504).
_NO_RETRY = frozenset({422, 500, 502, 504})


class APIError(Exception):
    """An error answer: HTTP ``status`` and the OpenAI-style body.

    Parameters
    ----------
    status:
        The HTTP status.
    message:
        What went wrong, for a person.
    param:
        The request field at fault, when one is.
    type, code:
        OpenAI's error ``type`` and a machine-readable ``code``; defaults by status.
    headers:
        Extra response headers (``Retry-After`` for 429 and 503, ``WWW-Authenticate`` for 401);
        ``x-should-retry: false`` is added where a retry cannot help (see :data:`_NO_RETRY`).
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        type: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        default_type, default_code = _DEFAULTS.get(status, ("server_error", None))
        self.status = status
        self.message = message
        self.param = param
        self.type = type or default_type
        self.code = code if code is not None else default_code
        self.headers = dict(headers or {})
        if status in _NO_RETRY or self.code == "model_failed":
            # The official client retries 5xx by itself; these would fail the same way again.
            self.headers.setdefault("x-should-retry", "false")

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def from_exception(exc: BaseException, *, param: str | None = None) -> APIError:
    """The answer for an exception raised while serving a request.

    ``InvalidParameterError`` (an unknown name included, whose message carries the "did you
    mean") is the request's fault: 400. ``SamplingTimeout``: the backend ran out of time, 504.
    ``BackendError``: the upstream or the model failed, 502. ``MissingDependencyError``: the
    request asks for something this installation lacks (a metric's optional extra), 400.
    Anything else is a bug: 500 with no detail (the server's log has the traceback).
    """
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, InvalidParameterError):
        return APIError(400, str(exc), param=param)
    if isinstance(exc, SamplingTimeout):
        return APIError(504, str(exc))
    if isinstance(exc, BackendError):
        return APIError(502, str(exc))
    if isinstance(exc, MissingDependencyError):
        return APIError(400, str(exc), param=param, code="unavailable")
    return APIError(500, "The server failed while answering this request; its log has the details.")
