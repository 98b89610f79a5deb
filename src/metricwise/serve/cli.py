"""The ``metricwise serve`` subcommand: an OpenAI-compatible server in front of any backend.

Building the parser imports nothing heavy; FastAPI and uvicorn are imported when the server
starts. Errors are raised as :class:`metricwise.errors.MetricwiseError` subclasses, which the
main CLI maps to exit codes (2 usage, 1 runtime, 3 backend).
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import signal
import sys
from typing import Any

from metricwise.errors import MetricwiseError, MissingDependencyError

#: The environment variable read when --api_key is not given.
API_KEY_ENV = "METRICWISE_API_KEY"

_EPILOG = """\
A request is a normal OpenAI request plus metricwise fields (the official client sends them with
extra_body): metric, samples, rule, weights, weight_temperature, extractor, valid_range, grid,
metric_args, include_incomplete, adaptive, return_samples. A client that cannot add fields names
the metric in the model instead: "gemma-3-270m@chrf" (GET /v1/models lists every such name).
Without metric the request is sampled as asked (temperature 0 is greedy). logprobs (completions)
and logprobs/top_logprobs (chat) return per-token log-probabilities. A prompt whose samples give
no decision (all cut by max_tokens, all unparsable) is answered 422 no_valid_samples.

examples:
  metricwise serve --model gemma-3-270m
  metricwise serve --model smollm2-135m-instruct --port 8001 --api_key "$KEY"
  metricwise serve --backend openai --model_args 'base_url=http://a:8080;http://b:8080' --max_concurrent 16

  curl http://127.0.0.1:8000/v1/completions -H 'Content-Type: application/json' -d '{
    "model": "gemma-3-270m", "prompt": "Q: 2 + 3 =\\nA:", "max_tokens": 8, "stop": ["\\n"],
    "metric": "squared_error", "samples": 16}'

The server binds to 127.0.0.1 unless --host says otherwise; put it behind a reverse proxy for TLS.
SIGTERM (or Ctrl-C) stops accepting connections, finishes the requests in flight (at most
--drain_seconds), then exits with code 0.
"""


def add_serve_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``serve`` subcommand to an argparse subparsers object; returns its parser."""
    from metricwise.cli import HelpFormatter, _add_limit_arguments
    from metricwise.serve.settings import ServeSettings

    defaults = ServeSettings()
    p = subparsers.add_parser(
        "serve",
        help="serve metric-aware answers behind an OpenAI-compatible API",
        description="An OpenAI-compatible server (POST /v1/completions, POST /v1/chat/completions, "
        "GET /v1/models, GET /health, GET /version, GET /metrics) that samples from any metricwise backend and "
        "answers with the Bayes-optimal answer for the metric a request names.",
        epilog=_EPILOG,
        formatter_class=HelpFormatter,
    )
    g = p.add_argument_group("model")
    g.add_argument(
        "--model",
        default=None,
        help="a named model (see `metricwise models`), a local directory or .gguf file, or a hub id "
        "(default: gemma-3-270m; with --backend openai: the model the server serves)",
    )
    g.add_argument(
        "--backend",
        default="hf",
        help="hf (transformers), llamacpp, or openai (one or more upstream servers)",
    )
    g.add_argument(
        "--model_args",
        action="append",
        default=[],
        metavar="K=V[,K=V]",
        help="backend options, e.g. device=cuda or 'base_url=http://a:8080;http://b:8080'",
    )
    g.add_argument(
        "--served_model_name",
        action="append",
        default=[],
        metavar="NAME",
        help="the name requests give as 'model' (repeatable; default: --model, or the upstream's model)",
    )
    n = p.add_argument_group("network")
    n.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind; anything but loopback exposes the server to the network",
    )
    n.add_argument("--port", type=int, default=8000, help="port to listen on")
    n.add_argument(
        "--api_key",
        default=None,
        help=f"require 'Authorization: Bearer <key>' on every request but /health (default: ${API_KEY_ENV} if set)",
    )
    n.add_argument(
        "--log_level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug"],
        help="uvicorn's log level",
    )
    n.add_argument(
        "--no_access_log",
        action="store_true",
        help="do not log one line per request (each line ends with its request id)",
    )
    n.add_argument(
        "--allowed_origins",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="let browsers on ORIGIN call the server (CORS; repeatable, '*' for any; default: CORS off)",
    )
    n.add_argument(
        "--docs",
        action="store_true",
        help="serve the OpenAPI schema at /openapi.json and its pages at /docs (without the API key)",
    )
    n.add_argument(
        "--open_metrics",
        action="store_true",
        help="GET /metrics answers without the API key (for a scraper that has none)",
    )
    s = p.add_argument_group(
        "server limits",
        "What one request may ask for, and how much work may wait. A request beyond a limit is "
        "answered 400 (413 for the body) naming the field; a full queue is answered 429.",
    )

    def limit(flag: str, help_text: str, default: Any) -> None:
        s.add_argument(
            f"--{flag}",
            f"--{flag.replace('_', '-')}",
            dest=flag,
            type=int,
            default=default,
            help=help_text,
        )

    limit("max_n", "most samples per prompt ('samples', 'n', adaptive 'max_n')", defaults.max_n)
    limit("max_tokens", "most new tokens per sample a request may ask for", defaults.max_tokens)
    limit(
        "default_max_tokens",
        "new tokens per sample when a request gives no max_tokens",
        defaults.default_max_tokens,
    )
    limit(
        "default_samples",
        "samples per prompt when a request names a metric but not 'samples'",
        defaults.default_samples,
    )
    limit(
        "max_prompt_chars",
        "longest prompt or chat conversation, in characters",
        defaults.max_prompt_chars,
    )
    limit("max_prompts", "most prompts in one completions request", defaults.max_prompts)
    limit(
        "max_logprobs",
        "most alternatives per token a request may ask for ('logprobs', 'top_logprobs')",
        defaults.max_logprobs,
    )
    limit("max_body_bytes", "largest request body (413 beyond it)", defaults.max_body_bytes)
    limit(
        "max_concurrent",
        "backend calls in flight at once for --backend openai (a local model runs one batch at a time)",
        defaults.max_concurrent,
    )
    limit("max_queue", "requests that may wait for a worker (429 beyond it)", defaults.max_queue)
    limit(
        "max_batch_prompts",
        "most prompts a local model samples in one call when queued requests are batched",
        defaults.max_batch_prompts,
    )
    limit(
        "drain_seconds",
        "on SIGTERM, how long requests in flight may still take before they are cut off",
        30,
    )
    _add_limit_arguments(p)
    p.set_defaults(handler=run_serve)
    return p


def _settings(args: argparse.Namespace) -> Any:
    from metricwise.models import DEFAULT_MODEL
    from metricwise.serve.settings import ServeSettings

    names = list(args.served_model_name)
    if not names and args.model:
        names = [args.model]
    elif not names and args.backend != "openai":
        names = [DEFAULT_MODEL]
    api_key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV) or None
    return ServeSettings(
        model_names=tuple(names),
        api_key=api_key,
        max_n=args.max_n,
        max_tokens=args.max_tokens,
        default_max_tokens=args.default_max_tokens,
        default_samples=args.default_samples,
        max_prompt_chars=args.max_prompt_chars,
        max_prompts=args.max_prompts,
        max_body_bytes=args.max_body_bytes,
        max_concurrent=args.max_concurrent,
        max_queue=args.max_queue,
        max_batch_prompts=args.max_batch_prompts,
        max_logprobs=args.max_logprobs,
        allowed_origins=tuple(args.allowed_origins),
        docs=args.docs,
        open_metrics=args.open_metrics,
        access_log=not args.no_access_log,
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run_serve(args: argparse.Namespace) -> int:
    """Run the server until SIGTERM or Ctrl-C; 0 after a clean drain."""
    from metricwise.backends import backend_names, load_backend
    from metricwise.cli import _backend_options
    from metricwise.errors import InvalidParameterError, UnknownNameError, did_you_mean

    # Everything the command line says is checked before FastAPI is imported or a model loads.
    settings = _settings(args)
    names = backend_names()
    if args.backend not in names:
        raise UnknownNameError(
            f"The '--backend' option must be one of {', '.join(names)}. Got {args.backend!r} instead."
            f"{did_you_mean(args.backend, names)}"
        )
    options = _backend_options(args)
    if args.backend == "hf":
        # A server's consecutive batches hardly ever share their prompts: keeping the last
        # prefill would only hold its KV cache in memory.
        options.setdefault("reuse_prefill", False)
    if not 0 <= args.port <= 65535:
        raise InvalidParameterError(
            f"The '--port' option must be in 0..65535. Got {args.port} instead."
        )
    if args.drain_seconds < 1:
        raise InvalidParameterError(
            f"The '--drain_seconds' option must be >= 1. Got {args.drain_seconds} instead."
        )
    try:
        import uvicorn

        from metricwise.serve.app import create_app
    except ModuleNotFoundError as exc:
        raise MissingDependencyError(
            f"metricwise serve needs FastAPI, uvicorn and prometheus_client ({exc.name} is missing): "
            "pip install 'metricwise[serve]'"
        ) from None
    if not _is_loopback(args.host) and settings.api_key is None:
        print(
            f"metricwise serve: warning: listening on {args.host} without an API key: anyone who "
            f"can reach it can use the model (set --api_key or ${API_KEY_ENV}).",
            file=sys.stderr,
        )

    def factory(**overrides: Any) -> Any:
        return load_backend(args.backend, args.model, **{**options, **overrides})

    failures: list[BaseException] = []
    server: Any = None

    def on_load_error(exc: BaseException) -> None:
        failures.append(exc)
        if server is not None:
            server.should_exit = True

    app = create_app(factory, settings, on_load_error=on_load_error)
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        # The application logs each request itself, with its request id.
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=args.drain_seconds,
        server_header=False,
    )
    server = uvicorn.Server(config)
    # uvicorn drains on SIGTERM and SIGINT, then raises the signal again once its own handlers are
    # gone; these handlers make that a clean exit (code 0) rather than death by signal.
    stopped: list[int] = []
    previous = {
        sig: signal.signal(sig, lambda signum, frame: stopped.append(signum))
        for sig in (signal.SIGTERM, signal.SIGINT)
    }
    try:
        server.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if failures:
        failure = failures[0]
        if isinstance(failure, MetricwiseError):
            raise failure
        raise MetricwiseError(
            f"The model failed to load: {type(failure).__name__}: {failure}"
        ) from failure
    print("metricwise serve: stopped", file=sys.stderr)
    return 0
