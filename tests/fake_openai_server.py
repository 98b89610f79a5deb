"""A fake OpenAI-compatible completions server on 127.0.0.1, with faults to inject.

The fake model draws every token from one fixed distribution over a 6-token vocabulary, seeded
by the request's ``seed`` (choice ``j`` with ``seed + j``, as vLLM and llama-server do), so a
sample is reproducible across requests, chunks and servers.

Fault modes (:data:`MODES`), applied to the completions requests whose prompt contains
``fault_marker`` (every request when it is empty), switchable while the server runs:

==================  ===========================================================================
``healthy``         answers normally
``error500``        HTTP 500 with a JSON error body (``error500:K``: the first K such requests
                    only, then healthy)
``hang``            never answers (holds the connection ``hang_seconds``, then closes it)
``trickle``         announces the body, then sends one byte every 0.2 s
``drop``            announces the body, sends half of it, closes the connection
``broken_json``     200 with a body that is not JSON
``html``            502 with an HTML error page (a proxy in front of a dead server)
``html200``         200 with an HTML page
``wrong_shape``     valid JSON of the wrong shape: choices that are a number and null
``empty_choices``   ``{"choices": []}``
``fewer_choices``   one choice whatever ``n`` asks (a server that ignores ``n``)
``null_logprobs``   a token log-probability that is null
``string_logprobs`` a token log-probability that is a string
``nan_logprobs``    a token log-probability that is NaN
``abort``           a choice with ``finish_reason: "abort"``
==================  ===========================================================================

``delay`` (seconds, default 0) is slept before answering each completions request, in every
mode, so that a client's run lasts long enough to be killed in the middle (bench/soak_store.py).

Every server stops by itself after ``lifetime`` seconds. Run as a script
(``python tests/fake_openai_server.py --port 0 --mode healthy --delay 0.02``) it prints its URL
on one line and serves until killed or its lifetime ends.
"""

from __future__ import annotations

import argparse
import json
import math
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

#: The fake model: the same next-token distribution at every step over a 6-token vocabulary.
VOCAB = ["a", "b", "c", " d", "e", "<eos>"]
PROBS = np.array([0.4, 0.25, 0.15, 0.1, 0.07, 0.03])

MODES = (
    "healthy",
    "error500",
    "hang",
    "trickle",
    "drop",
    "broken_json",
    "html",
    "html200",
    "wrong_shape",
    "empty_choices",
    "fewer_choices",
    "null_logprobs",
    "string_logprobs",
    "nan_logprobs",
    "abort",
)


def fake_choice(seed: int, body: dict[str, Any], index: int) -> dict[str, Any]:
    """A deterministic completion drawn (raw distribution) with ``seed``."""
    rng = np.random.default_rng(seed)
    n_top = (
        body.get("logprobs")
        if isinstance(body.get("logprobs"), int)
        else body.get("top_logprobs", 1)
    )
    if isinstance(n_top, bool):
        n_top = body.get("top_logprobs", 1)
    order = np.argsort(-PROBS)
    content, text = [], ""
    reason = "length"
    for _ in range(body["max_tokens"]):
        token = int(rng.choice(len(VOCAB), p=PROBS))
        piece = "" if VOCAB[token] == "<eos>" else VOCAB[token]
        content.append(
            {
                "id": token,
                "token": piece,
                "bytes": list(piece.encode()),
                "logprob": float(np.log(PROBS[token])),
                "top_logprobs": [
                    {
                        "id": int(t),
                        "token": VOCAB[t],
                        "bytes": list(VOCAB[t].encode()),
                        "logprob": float(np.log(PROBS[t])),
                    }
                    for t in order[: int(n_top)]
                ],
            }
        )
        if VOCAB[token] == "<eos>":
            reason = "stop"
            break
        text += piece
    return {"index": index, "text": text, "logprobs": {"content": content}, "finish_reason": reason}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def with_usage(prompt_tokens: int, cached: Callable[[dict[str, Any]], int]) -> Callable[..., Any]:
    """A ``behaviour`` that answers as usual and adds ``usage``: ``prompt_tokens`` per request,
    ``cached(body)`` of them taken from a prefix cache (as llama-server and vLLM report it)."""

    def behaviour(handler: Any, path: str, body: dict[str, Any]) -> Any:
        if not path.endswith("completions"):
            return None
        choices = [fake_choice(body["seed"] + j, body, j) for j in range(body["n"])]
        details = {"cached_tokens": cached(body)}
        usage = {"prompt_tokens": prompt_tokens, "prompt_tokens_details": details}
        return 200, {"choices": choices, "usage": usage}, {}

    return behaviour


class FakeServer:
    """``http.server`` in a thread on 127.0.0.1.

    ``behaviour(handler, path, body)`` may override answers with ``(status, payload, headers)``;
    ``mode`` injects a fault (see the module docstring); ``delay`` seconds are slept before each
    completions request is answered. ``requests`` records every request.
    """

    def __init__(
        self,
        behaviour: Callable[..., Any] | None = None,
        honour_n: bool = True,
        *,
        mode: str = "healthy",
        fault_marker: str = "",
        hang_seconds: float = 30.0,
        lifetime: float = 600.0,
        port: int = 0,
        delay: float = 0.0,
    ) -> None:
        if not (delay >= 0 and math.isfinite(delay)):
            raise ValueError(f"delay must be a finite number of seconds >= 0, got {delay!r}")
        self.requests: list[tuple[str, dict[str, Any] | None]] = []
        self.behaviour = behaviour
        self.honour_n = honour_n
        self.mode = mode
        self.fault_marker = fault_marker
        self.hang_seconds = hang_seconds
        self.delay = delay
        self.lock = threading.Lock()
        self._faults_served = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _send_bytes(
                self,
                status: int,
                data: bytes,
                content_type: str,
                headers: dict[str, str] | None = None,
            ) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                try:
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout tests)

            def _send(
                self, status: int, payload: Any, headers: dict[str, str] | None = None
            ) -> None:
                self._send_bytes(status, json.dumps(payload).encode(), "application/json", headers)

            def do_GET(self) -> None:
                with server.lock:
                    server.requests.append((self.path, None))
                if self.path.endswith("/models"):
                    self._send(200, {"object": "list", "data": [{"id": "fake-model"}]})
                else:
                    self._send(404, {"error": {"message": "not found"}})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length))
                with server.lock:
                    server.requests.append((self.path, body))
                if server.delay and self.path.endswith("completions"):
                    time.sleep(server.delay)  # a slow server, so a client can be killed mid-run
                if server.behaviour is not None:
                    answer = server.behaviour(self, self.path, body)
                    if answer is not None:
                        status, payload, headers = answer
                        self._send(status, payload, headers)
                        return
                n = body["n"] if server.honour_n else 1
                choices = [fake_choice(body["seed"] + j, body, j) for j in range(n)]
                if self.path.endswith("/chat/completions"):
                    for c in choices:
                        c["message"] = {"role": "assistant", "content": c.pop("text")}
                payload = {"object": "text_completion", "choices": choices}
                prompt = str(body.get("prompt", body.get("messages", "")))
                mode = server.mode if server.fault_marker in prompt else "healthy"
                if not server._fault(self, mode, payload):
                    self._send(200, payload)

        class Quiet(ThreadingHTTPServer):
            # socketserver's backlog of 5 drops the SYNs of a burst of new connections (a client
            # then waits 1 s to retry); real servers listen with a long queue.
            request_queue_size = 128

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client that hung up mid-answer is expected here

        self.httpd = Quiet(("127.0.0.1", port), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()
        # A bounded lifetime: a test that forgets to stop its server does not leave it running.
        self._reaper = threading.Timer(lifetime, self.close)
        self._reaper.daemon = True
        self._reaper.start()
        self._closed = False

    def _fault(self, handler: BaseHTTPRequestHandler, mode: str, payload: dict[str, Any]) -> bool:
        """Answer with the fault of ``mode``; False when the request is to be answered normally."""
        send_bytes = handler._send_bytes  # type: ignore[attr-defined]
        name, _, count = mode.partition(":")
        if name == "healthy":
            return False
        if name == "error500":
            with self.lock:
                self._faults_served += 1
                if count and self._faults_served > int(count):
                    return False
            send_bytes(
                500,
                json.dumps({"error": {"message": "internal error (injected)"}}).encode(),
                "application/json",
            )
        elif name == "hang":
            time.sleep(self.hang_seconds)
            handler.close_connection = True
        elif name in ("trickle", "drop"):
            data = json.dumps(payload).encode()
            handler.send_response(200)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            try:
                if name == "drop":
                    handler.wfile.write(data[: len(data) // 2])
                    handler.wfile.flush()
                else:
                    for k in range(min(len(data), int(self.hang_seconds / 0.2))):
                        handler.wfile.write(data[k : k + 1])
                        handler.wfile.flush()
                        time.sleep(0.2)
            except (BrokenPipeError, ConnectionResetError):
                pass
            handler.close_connection = True
        elif name == "broken_json":
            send_bytes(200, b'{"choices": [{"text": "a", "index": 0', "application/json")
        elif name in ("html", "html200"):
            page = b"<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1></body></html>"
            send_bytes(502 if name == "html" else 200, page, "text/html")
        elif name == "wrong_shape":
            send_bytes(200, json.dumps({"choices": [1, None]}).encode(), "application/json")
        elif name == "empty_choices":
            send_bytes(200, json.dumps({"choices": []}).encode(), "application/json")
        elif name == "fewer_choices":
            payload["choices"] = payload["choices"][:1]
            return False
        elif name in ("null_logprobs", "string_logprobs", "nan_logprobs"):
            bad = {"null_logprobs": None, "string_logprobs": "-0.5", "nan_logprobs": math.nan}[name]
            for choice in payload["choices"]:
                choice["logprobs"]["content"][0]["logprob"] = bad
            send_bytes(
                200, json.dumps(payload).encode(), "application/json"
            )  # json writes NaN as NaN
        elif name == "abort":
            for choice in payload["choices"]:
                choice["finish_reason"] = "abort"
            return False
        else:
            raise ValueError(f"unknown fault mode {mode!r}; expected one of {MODES}")
        return True

    def posts(self) -> list[dict[str, Any]]:
        return [b for p, b in self.requests if b is not None]

    def close(self) -> None:
        if getattr(self, "_closed", False):
            return
        self._closed = True
        self._reaper.cancel()
        self.httpd.shutdown()
        self.httpd.server_close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description="A fake OpenAI-compatible server on 127.0.0.1 (for tests and the soak run)."
    )
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--mode", default="healthy", help=", ".join(MODES))
    parser.add_argument(
        "--lifetime", type=float, default=600.0, help="seconds before the server stops by itself"
    )
    parser.add_argument(
        "--delay",
        type=float,
        default=0.0,
        help="seconds slept before answering each completions request",
    )
    args = parser.parse_args()
    if not (args.delay >= 0 and math.isfinite(args.delay)):
        parser.error(f"--delay must be a finite number of seconds >= 0, got {args.delay}")
    server = FakeServer(mode=args.mode, lifetime=args.lifetime, port=args.port, delay=args.delay)
    print(server.url, flush=True)
    deadline = time.monotonic() + args.lifetime
    while time.monotonic() < deadline and not server._closed:
        time.sleep(0.2)
    server.close()


if __name__ == "__main__":
    main()
