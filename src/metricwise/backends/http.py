"""HTTP for backends that talk to servers: one bounded retry policy, and requests that can be cut off.

Every request a server backend sends goes through :meth:`RetryPolicy.run`, which bounds it three
ways: ``timeout`` seconds per attempt (connecting, waiting and reading the whole body: a server
that trickles one byte a second is cut off like one that hangs), ``max_retries`` further attempts
after a retryable failure (connection refused or dropped, timeout, 429, 5xx, an answer that is not
JSON or not of the expected shape), and the caller's wall-clock ``deadline`` over all attempts.

A :class:`Cancellation` shared by the requests of one call ends them at once when the call fails
or is interrupted: waits between attempts return, and sockets still reading are shut down, so a
process exits within a second of an error or Ctrl-C instead of after the retries still running
in worker threads.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import math
import random
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from metricwise.errors import BackendError, InvalidParameterError, SamplingTimeout

T = TypeVar("T")

#: Longest wait between two attempts, in seconds (a ``Retry-After`` header included).
MAX_BACKOFF_SECONDS = 30.0
_READ_CHUNK = 1 << 16


class RetryableError(Exception):
    """A failure worth another attempt: connection error, timeout, 429, 5xx, a malformed answer.

    ``timed_out`` says the attempt ran out of time (the server hung or trickled its answer), which
    a caller may report differently from a server that answered with an error.
    """

    def __init__(
        self, message: str, retry_after: float | None = None, *, timed_out: bool = False
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.timed_out = timed_out


class HTTPStatusError(Exception):
    """A 4xx answer other than 429: the request itself is wrong, so another attempt will not help."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Cancelled(BackendError):
    """The call these requests belong to was cancelled (another request failed, or Ctrl-C)."""


class RetriesExhausted(BackendError):
    """Every attempt failed; ``errors`` holds one message per attempt, oldest first.

    ``timed_out`` is True when the last attempt ran out of time.
    """

    def __init__(self, errors: list[str], *, timed_out: bool = False) -> None:
        super().__init__(errors[-1] if errors else "no attempt was made")
        self.errors = errors
        self.timed_out = timed_out


class Cancellation:
    """Cancels the requests of one call: pending waits return and open sockets are shut down."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._open: set[http.client.HTTPConnection] = set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def cancel(self) -> None:
        self._event.set()
        with self._lock:
            connections = list(self._open)
        for connection in connections:
            sock = connection.sock
            if sock is not None:
                with contextlib.suppress(OSError):  # already closed
                    sock.shutdown(socket.SHUT_RDWR)

    def wait(self, seconds: float) -> None:
        """Sleep ``seconds``; raise :class:`Cancelled` at once when the call is cancelled."""
        if self._event.wait(max(0.0, seconds)) or self.cancelled:
            raise Cancelled("cancelled")

    def check(self) -> None:
        if self.cancelled:
            raise Cancelled("cancelled")

    def _register(self, connection: http.client.HTTPConnection) -> None:
        with self._lock:
            self._open.add(connection)
        if self.cancelled:  # cancelled between the check and the registration
            self.cancel()

    def _unregister(self, connection: http.client.HTTPConnection) -> None:
        with self._lock:
            self._open.discard(connection)


@dataclass(frozen=True)
class RetryPolicy:
    """How long one request may take and how often it is tried.

    Attributes
    ----------
    timeout:
        Seconds one attempt may take, from connecting to the last byte of the answer.
    max_retries:
        Further attempts after a retryable failure (so at most ``max_retries + 1`` in all).
    backoff:
        Seconds before the first retry; doubling each time, capped at
        :data:`MAX_BACKOFF_SECONDS`, with up to 10% jitter; a ``Retry-After`` header wins.

    The longest a request can take is therefore bounded by
    ``(max_retries + 1) * timeout + sum of the waits``, and never beyond the caller's deadline.
    """

    timeout: float = 300.0
    max_retries: int = 4
    backoff: float = 0.5

    def __post_init__(self) -> None:
        if (
            isinstance(self.timeout, bool)
            or not isinstance(self.timeout, (int, float))
            or not self.timeout > 0
        ):
            raise InvalidParameterError(
                f"The 'timeout' parameter must be a number > 0 (seconds). Got {self.timeout!r} instead."
            )
        if (
            isinstance(self.backoff, bool)
            or not isinstance(self.backoff, (int, float))
            or not self.backoff >= 0
        ):
            raise InvalidParameterError(
                f"The 'backoff' parameter must be a number >= 0 (seconds). Got {self.backoff!r} instead."
            )
        if (
            not isinstance(self.max_retries, int)
            or isinstance(self.max_retries, bool)
            or self.max_retries < 0
        ):
            raise InvalidParameterError(
                f"The 'max_retries' parameter must be an int >= 0. Got {self.max_retries!r} instead."
            )

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after failed attempt ``attempt`` (0-based)."""
        wait = retry_after if retry_after is not None else self.backoff * 2**attempt
        return min(MAX_BACKOFF_SECONDS, wait) * (1.0 + 0.1 * random.random())

    def run(
        self,
        send: Callable[[int, float], T],
        *,
        deadline: float = math.inf,
        cancel: Cancellation | None = None,
        budget: str = "",
    ) -> T:
        """Call ``send(attempt, timeout)`` until it returns, a non-retryable error, or the bounds.

        ``send`` raises :class:`RetryableError` for a failure worth another attempt; anything
        else propagates at once. Raises :class:`RetriesExhausted` after the last attempt,
        :class:`~metricwise.errors.SamplingTimeout` (with ``budget`` in its message) when the
        monotonic ``deadline`` passes, and :class:`Cancelled` when ``cancel`` is set.
        """
        errors: list[str] = []
        timed_out = False
        for attempt in range(self.max_retries + 1):
            if cancel is not None:
                cancel.check()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise SamplingTimeout(_deadline_message(budget, errors))
            try:
                return send(attempt, min(self.timeout, remaining))
            except RetryableError as exc:
                if cancel is not None:
                    cancel.check()  # a socket shut down by the cancellation is no server fault
                errors.append(str(exc))
                timed_out = exc.timed_out
                if deadline - time.monotonic() <= 0:
                    raise SamplingTimeout(_deadline_message(budget, errors)) from None
                if attempt < self.max_retries:
                    wait = min(
                        self.delay(attempt, exc.retry_after), max(0.0, deadline - time.monotonic())
                    )
                    if cancel is not None:
                        cancel.wait(wait)
                    else:
                        time.sleep(wait)
        raise RetriesExhausted(errors, timed_out=timed_out)


def _deadline_message(budget: str, errors: list[str]) -> str:
    last = f" (last failure: {errors[-1]})" if errors else ""
    return f"no complete answer within {budget or 'the wall-clock budget'}{last}"


def request_json(
    url: str,
    payload: dict[str, Any] | None,
    headers: dict[str, str],
    timeout: float,
    cancel: Cancellation | None = None,
) -> Any:
    """POST ``payload`` as JSON (GET when None) and decode the JSON answer within ``timeout`` seconds.

    Raises :class:`RetryableError` (connection failure, timeout, 429, 5xx, a body that is not
    JSON), :class:`HTTPStatusError` (other 4xx) or :class:`Cancelled`.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidParameterError(f"Expected an http(s) URL. Got {url!r} instead.")
    deadline = time.monotonic() + timeout
    factory = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    connection = factory(parts.hostname, parts.port, timeout=timeout)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    data = None if payload is None else json.dumps(payload).encode("utf-8")
    all_headers = dict(headers)
    if data is not None:
        all_headers["Content-Type"] = "application/json"
    if cancel is not None:
        cancel._register(connection)
    try:
        connection.connect()
        if cancel is not None:
            # After connecting: a cancellation from now on finds the socket and shuts it down.
            cancel.check()
        connection.request("GET" if data is None else "POST", path, body=data, headers=all_headers)
        response = connection.getresponse()
        body = _read_body(connection, response, deadline, timeout)
        status = response.status
        retry_after = response.getheader("Retry-After")
    except TimeoutError:
        if cancel is not None:
            cancel.check()
        raise RetryableError(f"no complete answer within {timeout:.3g} s", timed_out=True) from None
    except (OSError, http.client.HTTPException) as exc:
        if cancel is not None:
            cancel.check()
        reason = getattr(exc, "reason", None) or exc
        what = (
            "dropped the connection"
            if isinstance(
                exc,
                (http.client.IncompleteRead, http.client.RemoteDisconnected, ConnectionResetError),
            )
            else "connection failed"
        )
        raise RetryableError(f"{what} ({type(exc).__name__}: {reason})") from None
    finally:
        if cancel is not None:
            cancel._unregister(connection)
        connection.close()
    if status == 429 or status >= 500:
        raise RetryableError(f"HTTP {status}: {_error_detail(body)}", _seconds(retry_after))
    if status >= 400:
        raise HTTPStatusError(status, f"HTTP {status}: {_error_detail(body)}")
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        kind = "an HTML page" if body.lstrip()[:1] == b"<" else "not JSON"
        raise RetryableError(f"answered HTTP {status} with {kind}: {body[:200]!r}") from None


def _read_body(
    connection: http.client.HTTPConnection,
    response: http.client.HTTPResponse,
    deadline: float,
    timeout: float,
) -> bytes:
    """The whole body, or a timeout when it has not all arrived by ``deadline`` (slow trickles too)."""
    chunks = []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        if connection.sock is not None:
            connection.sock.settimeout(remaining)
        chunk = response.read1(_READ_CHUNK)
        if not chunk:
            break
        chunks.append(chunk)
    length = response.getheader("Content-Length")
    body = b"".join(chunks)
    if length is not None and length.isdigit() and len(body) < int(length):
        raise http.client.IncompleteRead(body, int(length) - len(body))
    return body


def _seconds(value: str | None) -> float | None:
    try:
        return None if value is None else max(0.0, float(value))
    except ValueError:
        return None


def _error_detail(body: bytes) -> str:
    """The message of an OpenAI-style error body, or the start of whatever the body is."""
    text = body.decode("utf-8", "replace")
    try:
        parsed = json.loads(text)
    except ValueError:
        return text[:300].strip() or "(empty body)"
    error = parsed.get("error", parsed) if isinstance(parsed, dict) else parsed
    message = error.get("message") if isinstance(error, dict) else None
    return str(message or error)[:500]
