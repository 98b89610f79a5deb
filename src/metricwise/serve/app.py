"""The FastAPI application of ``metricwise serve``: :func:`create_app`.

Endpoints
---------
``POST /v1/completions``       a prompt (or a list of them) -> the decided answer per prompt
``POST /v1/chat/completions``  messages -> the decided answer, through the model's chat template
                               (``hf``) or the upstream's chat endpoint (``openai``)
``GET /v1/models``             the served model
``GET /health``                200 once the model has loaded, 503 before (or if it failed)
``GET /version``               ``{"version", "server": "metricwise"}`` (no key needed)
``GET /tokenizer_info``,       the local model's tokenizer, as vLLM serves it: lm-eval's
``POST /tokenize``,            ``local-completions`` finds them and counts the context of its
``POST /detokenize``           loglikelihood requests with the server's own tokenizer
``GET /metrics``               Prometheus text format (see :mod:`.metrics_registry`)
``GET /docs``, ``/openapi.json``  with ``docs`` only

A request that names a ``metric`` is sampled ``samples`` times (or adaptively), decided with
:func:`metricwise.decide`, and answered with the decision as the first choice and a
``metricwise`` object describing it; a model name ``<served>@<metric>`` names the metric too.
A prompt whose samples give no decision is answered 422 ``no_valid_samples``. Without
``metric`` the request is sampled as asked (``temperature: 0`` is greedy) and its ``n``
samples are the choices. ``logprobs`` give each choice's per-token log-probabilities (those of
the sample a decision chose; none for a decision no sample wrote, such as a mean). With
``echo`` (``max_tokens`` 0, or 1 at temperature 0) a prompt, as text or token ids, is scored
rather than sampled: its tokens come back with their log-probabilities, which is what
lm-eval's ``local-completions`` asks for on loglikelihood and multiple-choice tasks.

Every answer carries ``X-Request-Id`` (the client's, or a new one), also in the access log.

Life cycle: the model loads in a background thread once the server listens, so ``/health`` and
requests answer 503 (with ``Retry-After``) until it is ready. On shutdown (SIGTERM) uvicorn stops
accepting connections and waits for the requests in flight, which this application keeps
serving; then the backend is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import hmac
import inspect
import json
import logging
import math
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar, cast

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from metricwise.backends.base import Backend
from metricwise.errors import InvalidParameterError, MetricwiseError, did_you_mean
from metricwise.io import answer_text, json_safe
from metricwise.serve.errors import APIError, from_exception
from metricwise.serve.metrics_registry import ServeMetrics
from metricwise.serve.scheduler import Job, QueueFull, Scheduler
from metricwise.serve.schemas import (
    DECISION_FIELDS,
    STRING_METRIC_ARGS,
    AdaptiveSettings,
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    TokenizeRequest,
)
from metricwise.serve.settings import ServeSettings
from metricwise.types import Candidate, Decision, SampleSet, SamplingConfig

_Request = TypeVar("_Request", CompletionRequest, ChatCompletionRequest)
logger = logging.getLogger("uvicorn.error")
#: One line per request with its id (uvicorn's own access log, which has no id, is off).
access_logger = logging.getLogger("uvicorn.error.access")


@functools.cache
def _decide_keywords() -> frozenset[str]:
    """decide()'s own keyword arguments, read from its signature (a hand-kept copy drifted):
    a ``metric_args`` key may not override one of them."""
    from metricwise.decide import decide

    return frozenset(inspect.signature(decide).parameters) - {"metric_args"}


#: A body this much larger than the limit is not read to its end before the 413: the connection
#: is closed instead (reading it first lets the client see the 413 rather than a reset).
_DRAIN_FACTOR = 8


class ClientGone(Exception):
    """The client disconnected before its answer was ready."""


@dataclass(frozen=True)
class Plan:
    """What one request asks for, checked: how to sample, and how to decide (or not)."""

    config: SamplingConfig
    decision: dict[str, Any] | None  # decide() options; None for a pass-through
    adaptive: Any  # metricwise.adaptive.Adaptive or None
    return_samples: bool
    #: Global decoding's chain settings (None: local); ``config.n`` is then the proposals.
    chain: Any = None
    states: int = 0
    #: Per-token log-probabilities asked for, with this many alternatives (None: none).
    token_logprobs: int | None = None
    #: The index of the first sample (``first_sample``); ``config.n`` counts up to the last.
    first_sample: int = 0
    #: Prompts of the request (set for streaming, which numbers the choices).
    prompts: int = 1
    #: ``on_text(prompt, sample, text)`` for token streaming (see HFBackend.sample), or None.
    on_text: Any = None

    def options(self) -> dict[str, Any]:
        """Extra keyword arguments of the backend's ``sample`` this request needs."""
        options: dict[str, Any] = {}
        if self.token_logprobs is not None:
            options["token_logprobs"] = self.token_logprobs
        if self.on_text is not None:
            options["on_text"] = self.on_text
        return options


@dataclass
class Outcome:
    """Samples per prompt and, with a metric, one decision per prompt."""

    sets: list[SampleSet]
    decisions: list[Decision] | None
    prompt_tokens: int
    chains: list[Any] | None = None
    #: Tokens generated, proposals included (None: those of ``sets``).
    completion_tokens: int | None = None


# -- the application -----------------------------------------------------------------------------
def create_app(
    backend_factory: Callable[..., Backend],
    settings: ServeSettings | None = None,
    *,
    on_load_error: Callable[[BaseException], None] | None = None,
) -> FastAPI:
    """The FastAPI application serving the backend that ``backend_factory()`` builds.

    Parameters
    ----------
    backend_factory:
        Builds the backend; called once, in a background thread, when the server starts (so
        the server answers 503 while a model loads). For an upstream (``openai``) backend it is
        called a second time as ``backend_factory(endpoint="chat", messages="json")`` for the
        chat endpoint.
    settings:
        Limits and defaults; :class:`ServeSettings` by default.
    on_load_error:
        Called (from the loading thread) with the exception when the backend fails to load;
        ``metricwise serve`` stops the server then. Without it, the server stays up and
        answers 503 saying why.
    """
    state = ServerState(backend_factory, settings or ServeSettings(), on_load_error)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.start_loading(asyncio.get_running_loop())
        try:
            yield
        finally:
            await state.shutdown()

    settings = state.settings
    app = FastAPI(
        title="metricwise",
        summary="Metric-aware LLM inference behind the OpenAI API",
        version=_version(),
        lifespan=lifespan,
        docs_url="/docs" if settings.docs else None,
        redoc_url=None,
        openapi_url="/openapi.json" if settings.docs else None,
    )
    app.state.metricwise = state
    if settings.allowed_origins:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.allowed_origins),
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["*"],
            expose_headers=["x-request-id", "retry-after", "x-should-retry"],
            max_age=600,
        )
    if settings.docs:
        generate = app.openapi

        def openapi() -> dict[str, Any]:
            if app.openapi_schema is None:
                schema = generate()
                schema.setdefault("components", {}).setdefault("schemas", {}).update(_OPENAPI_DEFS)
                app.openapi_schema = schema
            return app.openapi_schema

        app.openapi = openapi  # type: ignore[method-assign]
    # Outermost, so that every answer (CORS refusals and unhandled errors included) has its id.
    app.add_middleware(RequestIdMiddleware, access_log=settings.access_log)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        message = (
            f"No endpoint {request.method} {request.url.path}; this server has POST /v1/completions, "
            "POST /v1/chat/completions, GET /v1/models, GET /health, GET /version, GET /metrics, "
            "GET /tokenizer_info, POST /tokenize and POST /detokenize."
            if exc.status_code in (404, 405)
            else str(exc.detail)
        )
        error = APIError(exc.status_code, message)
        state.metrics.observe_error(error.type)
        return _error_response(error)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        return _error_response(APIError(400, f"Invalid request: {exc.errors()[:1]}"))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> Response:
        logger.exception("metricwise serve: unhandled error", exc_info=exc)
        return _error_response(from_exception(exc))

    @app.post("/v1/completions", openapi_extra=_openapi_body(CompletionRequest))
    async def completions(request: Request) -> Response:
        return await state.handle(request, "completions", state.completions)

    @app.post("/v1/chat/completions", openapi_extra=_openapi_body(ChatCompletionRequest))
    async def chat_completions(request: Request) -> Response:
        return await state.handle(request, "chat_completions", state.chat_completions)

    @app.get("/v1/models")
    async def models(request: Request) -> Response:
        return await state.handle(request, "models", state.models)

    @app.get("/v1/models/{model:path}")
    async def model(request: Request, model: str) -> Response:
        return await state.handle(request, "models", lambda r: state.model(r, model))

    @app.get("/health")
    async def health(request: Request) -> Response:
        return await state.handle(request, "health", state.health, authorize=False)

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        return await state.handle(
            request, "metrics", state.prometheus, authorize=not settings.open_metrics
        )

    @app.get("/tokenizer_info")
    async def tokenizer_info(request: Request) -> Response:
        return await state.handle(request, "tokenizer", state.tokenizer_info)

    @app.post("/tokenize", openapi_extra=_openapi_body(TokenizeRequest))
    async def tokenize(request: Request) -> Response:
        return await state.handle(request, "tokenizer", state.tokenize)

    @app.post("/detokenize", openapi_extra=_openapi_body(DetokenizeRequest))
    async def detokenize(request: Request) -> Response:
        return await state.handle(request, "tokenizer", state.detokenize)

    @app.get("/version")
    async def version(request: Request) -> Response:
        # Says what this server is, so that metricwise's openai backend in front of it sends
        # the seed and the first sample's index as metricwise's own backends use them.
        return await state.handle(
            request,
            "version",
            lambda r: _json_coroutine({"version": _version(), "server": "metricwise"}),
            authorize=False,
        )

    return app


class ServerState:
    """Everything one server holds: the backend, the queue, the counters."""

    def __init__(
        self,
        factory: Callable[..., Backend],
        settings: ServeSettings,
        on_load_error: Callable[[BaseException], None] | None,
    ) -> None:
        self.factory = factory
        self.settings = settings
        self.on_load_error = on_load_error
        self.metrics = ServeMetrics()
        self.backend: Any = None
        self.chat_backend: Any = None
        self.tokenizer: Any = None
        self.upstream = False
        self.names: tuple[str, ...] = settings.model_names
        self.scheduler: Scheduler | None = None
        self.load_error: BaseException | None = None
        self.created = int(time.time())
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False
        # The tokenizer endpoints' own copy, used by one thread at a time: a fast tokenizer
        # that the sampling thread reconfigures (padding) must not be called concurrently.
        self._endpoint_tokenizer: Any = None
        self._tokenizer_lock = threading.Lock()

    # -- loading -----------------------------------------------------------------------------------
    def start_loading(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        threading.Thread(target=self._load, name="metricwise-load", daemon=True).start()

    def _load(self) -> None:
        backends: list[Any] = []
        try:
            from metricwise import metrics

            metrics.names()  # load the registry now rather than in the first request
            backend = self.factory()
            backends.append(backend)
            chat = None
            if _is_upstream(backend):
                chat = self.factory(endpoint="chat", messages="json")
                backends.append(chat)
        except BaseException as exc:
            for b in backends:
                with contextlib.suppress(Exception):
                    b.close()
            self._call_on_loop(self._failed, exc)
            if self.on_load_error is not None:
                self.on_load_error(exc)
            return
        if not self._call_on_loop(self._loaded, backend, chat):
            for b in backends:  # the server stopped while the model loaded
                with contextlib.suppress(Exception):
                    b.close()

    def _call_on_loop(self, fn: Callable[..., None], *args: Any) -> bool:
        loop = self._loop
        if loop is None or loop.is_closed() or self._closing:
            return False
        try:
            loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop closed in between
            return False
        return True

    def _loaded(self, backend: Any, chat: Any) -> None:
        if self._closing:
            backend.close()
            if chat is not None:
                chat.close()
            return
        self.upstream = chat is not None
        self.backend, self.chat_backend = backend, chat
        self.tokenizer = getattr(backend, "tokenizer", None)
        if not self.names:
            model = getattr(backend, "model", None)
            self.names = (model if isinstance(model, str) else backend.signature,)
        s = self.settings
        self.scheduler = Scheduler(
            _sample_call,
            workers=s.max_concurrent if self.upstream else 1,
            batching=not self.upstream,
            max_queue=s.max_queue,
            max_batch_prompts=s.max_batch_prompts,
        )
        self.scheduler.start()
        mode = (
            f"upstream: up to {s.max_concurrent} calls at once"
            if self.upstream
            else "local: one batch at a time"
        )
        logger.info(
            "metricwise serve: %s loaded (%s), serving it as %s",
            backend.signature,
            mode,
            ", ".join(repr(n) for n in self.names),
        )

    def _failed(self, exc: BaseException) -> None:
        self.load_error = exc
        logger.error("metricwise serve: the model failed to load: %s", exc)

    async def shutdown(self) -> None:
        self._closing = True
        if self.scheduler is not None:
            await self.scheduler.close()
        for backend in (self.backend, self.chat_backend):
            if backend is not None:
                with contextlib.suppress(Exception):
                    backend.close()

    # -- the request wrapper -----------------------------------------------------------------------
    async def handle(
        self,
        request: Request,
        endpoint: str,
        fn: Callable[[Request], Awaitable[Response]],
        *,
        authorize: bool = True,
    ) -> Response:
        """Authorise, run ``fn``, turn every failure into an OpenAI error, and count it."""
        started = time.monotonic()
        try:
            if authorize:
                self._authorize(request)
            response = await fn(request)
        except ClientGone:
            self.metrics.observe_error("client_disconnected")
            # Nobody reads this; 499 (nginx's "client closed request") labels it in /metrics.
            response = Response(status_code=499)
        except Exception as exc:
            error = from_exception(exc)
            if error.status == 500:
                logger.exception(
                    "metricwise serve: unhandled error in %s (request id %s)",
                    endpoint,
                    request_id(request),
                )
            elif error.status in (502, 504):
                logger.warning(
                    "metricwise serve: %d %s (request id %s): %s",
                    error.status,
                    error.code,
                    request_id(request),
                    error.message,
                )
            self.metrics.observe_error(error.type)
            response = _error_response(error)
        self.metrics.observe_request(endpoint, response.status_code, time.monotonic() - started)
        return response

    def _authorize(self, request: Request) -> None:
        key = self.settings.api_key
        if key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        challenge = {"WWW-Authenticate": "Bearer"}
        if not header:
            raise APIError(
                401,
                "No API key: send it as the header 'Authorization: Bearer <key>' (the server was "
                "started with --api_key or $METRICWISE_API_KEY).",
                headers=challenge,
            )
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode("utf-8"), key.encode("utf-8")
        ):
            raise APIError(401, "Incorrect API key.", headers=challenge)

    def _check_ready(self) -> Scheduler:
        if self.load_error is not None:
            raise APIError(
                503,
                f"The model failed to load: {self.load_error}",
                code="model_failed",
            )
        if self.scheduler is None:
            raise APIError(
                503,
                "The model is loading; try again in a moment (GET /health answers 200 once it is ready).",
                headers={"Retry-After": str(self.settings.retry_after)},
            )
        return self.scheduler

    def _resolve_model(self, req: _Request) -> _Request:
        """The request with the metric its model name carries (``tiny@chrf``) set as ``metric``."""
        from metricwise import metrics

        base, at, metric = req.model.rpartition("@")
        if not at or base not in self.names:
            self._check_model(req.model)
            return req
        names = metrics.names()
        if metric not in names:
            raise APIError(
                404,
                f"The model {req.model!r} names the metric {metric!r}, which is not registered."
                f"{did_you_mean(metric, names)} Known metrics: {', '.join(names)}.",
                param="model",
                code="model_not_found",
            )
        if req.metric is not None and req.metric != metric:
            raise APIError(
                400,
                f"The 'metric' field must agree with the metric of the model {req.model!r}. "
                f"Got {req.metric!r} instead.",
                param="metric",
            )
        return req.model_copy(update={"metric": metric})

    def _listed_names(self) -> list[str]:
        """The served names, then each with every metric (``name@metric``)."""
        from metricwise import metrics

        return [*self.names, *(f"{n}@{m}" for n in self.names for m in metrics.names())]

    def _check_model(self, name: str) -> None:
        if name not in self.names:
            raise APIError(
                404,
                f"The model {name!r} is not served here. This server serves "
                f"{', '.join(repr(n) for n in self.names)} (GET /v1/models).{did_you_mean(name, list(self.names))}",
                param="model",
                code="model_not_found",
            )

    # -- endpoints ---------------------------------------------------------------------------------
    async def health(self, request: Request) -> Response:
        scheduler = self._check_ready()
        return JSONResponse(
            {
                "status": "ok",
                "model": self.names[0],
                "backend": self.backend.signature,
                "queued": scheduler.queued,
                "running": scheduler.running,
            }
        )

    async def models(self, request: Request) -> Response:
        self._check_ready()
        return JSONResponse(
            {"object": "list", "data": [self._model_card(n) for n in self._listed_names()]}
        )

    async def model(self, request: Request, name: str) -> Response:
        self._check_ready()
        if name not in self._listed_names():
            self._check_model(name)
        return JSONResponse(self._model_card(name))

    def _model_card(self, name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": self.created, "owned_by": "metricwise"}

    async def prometheus(self, request: Request) -> Response:
        scheduler = self.scheduler
        gauges = {
            "metricwise_queue_depth": (
                "Requests waiting for a worker.",
                float(scheduler.queued if scheduler else 0),
            ),
            "metricwise_in_flight": (
                "Backend calls running.",
                float(scheduler.running if scheduler else 0),
            ),
            "metricwise_model_ready": (
                "1 once the model has loaded.",
                float(scheduler is not None),
            ),
        }
        body, content_type = self.metrics.exposition(gauges, request.headers.get("accept"))
        return Response(body, headers={"Content-Type": content_type})

    # -- the tokenizer (vLLM's endpoints, which lm-eval's remote tokenizer reads) ---------------
    def _tokenizer_call(self, fn: Callable[[Any], Any]) -> Any:
        tokenizer = self.tokenizer
        if tokenizer is None or not callable(tokenizer) or not hasattr(tokenizer, "decode"):
            raise APIError(
                400,
                f"This server has no tokenizer to offer: its backend {self.backend.signature} "
                "tokenizes elsewhere. Give lm-eval the model's tokenizer itself "
                "(tokenizer_backend=huggingface,tokenizer=...).",
                code="tokenizer_unavailable",
            )
        with self._tokenizer_lock:
            if self._endpoint_tokenizer is None:
                self._endpoint_tokenizer = copy.deepcopy(tokenizer)
            return fn(self._endpoint_tokenizer)

    def _context_length(self) -> int | None:
        model = getattr(self.backend, "model", None)
        config = getattr(model, "config", None)
        config = getattr(config, "text_config", None) or config
        length = getattr(config, "max_position_embeddings", None)
        return int(length) if isinstance(length, int) else None

    async def tokenizer_info(self, request: Request) -> Response:
        self._check_ready()

        def info(tokenizer: Any) -> dict[str, Any]:
            out: dict[str, Any] = {
                "tokenizer_class": type(tokenizer).__name__,
                "eos_token": tokenizer.eos_token,
                "bos_token": tokenizer.bos_token,
                "pad_token": tokenizer.pad_token,
                "model_max_length": self._context_length(),
            }
            template = getattr(tokenizer, "chat_template", None)
            if isinstance(template, str):
                out["chat_template"] = template
            return out

        return JSONResponse(await asyncio.to_thread(self._tokenizer_call, info))

    async def tokenize(self, request: Request) -> Response:
        req = _validate(TokenizeRequest, await self._read_json(request))
        self._check_ready()
        if req.model is not None:
            self._check_model(req.model.rpartition("@")[0] or req.model)
        if len(req.prompt) > self.settings.max_prompt_chars:
            self._check_prompt(req.prompt, "prompt")
        ids = await asyncio.to_thread(
            self._tokenizer_call,
            lambda t: list(t(req.prompt, add_special_tokens=req.add_special_tokens)["input_ids"]),
        )
        return JSONResponse(
            {"tokens": ids, "count": len(ids), "max_model_len": self._context_length()}
        )

    async def detokenize(self, request: Request) -> Response:
        req = _validate(DetokenizeRequest, await self._read_json(request))
        self._check_ready()
        if req.model is not None:
            self._check_model(req.model.rpartition("@")[0] or req.model)
        if len(req.tokens) > self.settings.max_prompt_chars:
            self._check_prompt(req.tokens, "tokens")

        def decode(tokenizer: Any) -> str:
            size = len(tokenizer)
            bad = [i for i in req.tokens if not 0 <= i < size]
            if bad:
                raise APIError(
                    400,
                    f"The 'tokens' field must hold ids of the tokenizer's vocabulary (0 .. "
                    f"{size - 1}). Got {bad[:5]} instead.",
                    param="tokens",
                )
            return str(tokenizer.decode(req.tokens))

        return JSONResponse({"prompt": await asyncio.to_thread(self._tokenizer_call, decode)})

    async def completions(self, request: Request) -> Response:
        req = _validate(CompletionRequest, await self._read_json(request))
        scheduler = self._check_ready()
        req = self._resolve_model(req)
        prompts = req.prompts()
        if not 1 <= len(prompts) <= self.settings.max_prompts:
            raise APIError(
                400,
                f"The 'prompt' field must hold 1 to {self.settings.max_prompts} prompts (--max_prompts). "
                f"Got {len(prompts)} instead.",
                param="prompt",
            )
        single = isinstance(req.prompt, str) or isinstance(req.prompt[0], int)
        for i, prompt in enumerate(prompts):
            self._check_prompt(prompt, "prompt" if single else f"prompt.{i}")
        if req.echo:
            return await self._echo(request, scheduler, req, prompts)
        if not all(isinstance(p, str) for p in prompts):
            raise APIError(
                400,
                "The 'prompt' field may be token ids only with 'echo' (scoring the prompt, with "
                "max_tokens 0 or 1); to sample, send the prompt as text. Got token ids instead.",
                param="prompt",
            )
        if req.max_tokens == 0:
            raise APIError(
                400,
                "The 'max_tokens' field may be 0 only with 'echo' (the prompt's own "
                "log-probabilities). Got 0 without 'echo' instead.",
                param="max_tokens",
            )
        texts = [p for p in prompts if isinstance(p, str)]
        plan = await self._plan(req, req.max_tokens)
        if req.stream:
            return self._stream(
                req,
                replace(plan, prompts=len(prompts)),
                lambda p: self._run(request, scheduler, self.backend, texts, p),
                self.backend,
                chat=False,
            )
        outcome = await self._run(request, scheduler, self.backend, texts, plan)
        return self._respond(req, plan, outcome, chat=False)

    async def _echo(
        self,
        request: Request,
        scheduler: Scheduler,
        req: CompletionRequest,
        prompts: list[str | list[int]],
    ) -> Response:
        """``echo``: each prompt's own tokens with their log-probabilities, as OpenAI's
        completions return them, and with ``max_tokens: 1`` the greedy next token after them.

        This is what lm-eval's ``local-completions`` sends for loglikelihood and
        multiple-choice tasks (``echo``, ``logprobs: 1``, ``max_tokens: 1``, ``temperature:
        0``): it sums ``token_logprobs[ctxlen:-1]`` (the continuation's tokens, leaving out the
        generated one) and reads ``is_greedy`` from ``top_logprobs``. It is served where the
        backend scores a prompt's tokens (``prompt_logprobs``: hf); elsewhere it is a 400
        naming why. Echo with a decision, with sampling or with a longer generation is not
        served (each is a 400 naming the field).
        """

        def refuse(param: str, why: str) -> APIError:
            return APIError(
                400,
                f"The 'echo' field is served for scoring a prompt (max_tokens 0, or 1 at "
                f"temperature 0): {why}",
                param=param,
            )

        if req.metric is not None:
            raise refuse(
                "metric",
                "a decision has no prompt tokens to score. Send 'echo' without 'metric'.",
            )
        if req.stream:
            raise refuse("stream", "its answer is not streamed. Send 'stream': false.")
        if req.n not in (None, 1):
            raise refuse("n", f"there is one answer per prompt. Got n={req.n} instead.")
        max_tokens = req.max_tokens
        if max_tokens not in (0, 1):
            raise refuse(
                "max_tokens",
                "'max_tokens' must be 0 (the prompt's log-probabilities only) or 1 (and the "
                f"greedy next token). Got {max_tokens} instead.",
            )
        if max_tokens == 1 and req.temperature != 0:
            raise refuse(
                "temperature",
                "with max_tokens 1 the next token is the most probable one, so 'temperature' "
                f"must be 0. Got {req.temperature} instead.",
            )
        if not callable(getattr(self.backend, "prompt_logprobs", None)):
            raise APIError(
                400,
                f"The 'echo' field cannot be served: the backend {self.backend.signature} does "
                "not score a prompt's tokens (the hf backend does).",
                param="echo",
                code="logprobs_unavailable",
            )
        # The checks every completions request gets (unsupported fields, the logprobs limit,
        # metricwise fields without a metric).
        await self._plan(req, 1)
        top = req.logprobs or 0
        config = SamplingConfig(n=1, temperature=0.0, max_tokens=1)
        # The scheduler carries token-id prompts and echo rows as it carries texts and samples.
        rows: list[Any] = await self._sample(
            request,
            scheduler,
            self.backend,
            cast(list[str], prompts),
            config,
            0,
            {"echo": (top, max_tokens)},
        )
        choices = []
        prompt_tokens = 0
        for i, (prompt, tokens) in enumerate(zip(prompts, rows, strict=True)):
            scored = len(tokens) - max_tokens
            prompt_tokens += scored
            if isinstance(prompt, str):
                text = prompt
            else:
                text = await asyncio.to_thread(self._decode_ids, prompt, tokens[:scored])
            new = tokens[scored:]
            text += "".join(t.token for t in new)
            ended = bool(new) and new[0].id in getattr(self.backend, "end_ids", ())
            choices.append(
                {
                    "index": i,
                    "text": text,
                    "finish_reason": "stop" if ended else "length",
                    "logprobs": None if req.logprobs is None else _echo_logprobs(tokens, top),
                }
            )
        completion_tokens = max_tokens * len(prompts)
        self.metrics.observe_sampling(0, prompt_tokens, completion_tokens)
        body = {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": req.model,
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
        return JSONResponse(json_safe(body))

    def _decode_ids(self, ids: list[int], tokens: Any) -> str:
        """The text of a token-id prompt (its tokens' texts joined without a tokenizer)."""
        tokenizer = self.tokenizer
        if tokenizer is not None and callable(getattr(tokenizer, "decode", None)):
            return str(tokenizer.decode(ids, skip_special_tokens=True))
        return "".join(t.token for t in tokens)

    async def chat_completions(self, request: Request) -> Response:
        req = _validate(ChatCompletionRequest, await self._read_json(request))
        scheduler = self._check_ready()
        req = self._resolve_model(req)
        if req.max_tokens is not None and req.max_completion_tokens is not None:
            raise APIError(
                400,
                "Give one of 'max_tokens' and 'max_completion_tokens'. Got both instead.",
                param="max_completion_tokens",
            )
        backend, prompt = await self._chat_prompt(req)
        self._check_prompt(prompt, "messages")
        plan = await self._plan(req, req.max_completion_tokens or req.max_tokens)
        if req.stream:
            return self._stream(
                req,
                replace(plan, prompts=1),
                lambda p: self._run(request, scheduler, backend, [prompt], p),
                backend,
                chat=True,
            )
        outcome = await self._run(request, scheduler, backend, [prompt], plan)
        return self._respond(req, plan, outcome, chat=True)

    # -- reading and checking a request ----------------------------------------------------------
    async def _read_json(self, request: Request) -> Any:
        limit = self.settings.max_body_bytes
        too_large = APIError(
            413,
            f"The request body is larger than the server's limit of {limit} bytes (--max_body_bytes).",
        )
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > _DRAIN_FACTOR * max(limit, 1 << 20):
            raise too_large
        chunks: list[bytes] = []
        size = 0
        try:
            async for chunk in request.stream():
                size += len(chunk)
                if size <= limit:
                    chunks.append(chunk)
                elif size > _DRAIN_FACTOR * max(limit, 1 << 20):
                    break
        except ClientDisconnect:
            raise ClientGone from None
        if size > limit:
            raise too_large
        try:
            return json.loads(b"".join(chunks), parse_constant=_refuse_constant)
        except (ValueError, UnicodeDecodeError) as exc:
            raise APIError(400, f"The request body is not valid JSON: {exc}.") from None

    def _check_prompt(self, prompt: str | list[int], param: str) -> None:
        if not prompt:
            raise APIError(400, f"The '{param}' field is empty.", param=param)
        if len(prompt) > self.settings.max_prompt_chars:
            raise APIError(
                400,
                f"The '{param}' field must be at most {self.settings.max_prompt_chars} "
                f"{'characters' if isinstance(prompt, str) else 'tokens'} long "
                f"(--max_prompt_chars). Got {len(prompt)} instead.",
                param=param,
                code="prompt_too_long",
            )

    async def _chat_prompt(self, req: ChatCompletionRequest) -> tuple[Any, str]:
        """The backend to ask and the prompt: a rendered chat template, or the messages as JSON."""
        messages = []
        for m in req.messages:
            # "developer" is OpenAI's newer name for "system"; chat templates know the old one.
            message = {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
            if m.name:
                message["name"] = m.name
            messages.append(message)
        if self.chat_backend is not None:
            return self.chat_backend, json.dumps(messages, ensure_ascii=False)
        tokenizer = self.tokenizer
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise APIError(
                400,
                f"The model {self.names[0]!r} has no chat template, so its chat messages cannot be "
                "turned into a prompt. Use POST /v1/completions with a prompt, or serve a model with "
                "a chat template (such as smollm2-135m-instruct).",
                param="messages",
                code="no_chat_template",
            )

        def render() -> str:
            text = tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
            bos = getattr(tokenizer, "bos_token", None)
            # The template writes BOS and the backend's tokenizer adds it again: keep one.
            if bos and isinstance(text, str) and text.startswith(bos) and _adds_bos(tokenizer):
                text = text[len(bos) :]
            return str(text)

        try:
            return self.backend, await asyncio.to_thread(render)
        except Exception as exc:
            raise APIError(
                400,
                f"The model's chat template refused the messages: {exc}",
                param="messages",
            ) from None

    async def _plan(
        self, req: CompletionRequest | ChatCompletionRequest, max_tokens: int | None
    ) -> Plan:
        s = self.settings
        for name, why in req.unsupported():
            raise APIError(
                400, f"The '{name}' field is not supported by metricwise serve: {why}.", param=name
            )
        if max_tokens is None:
            max_tokens = s.default_max_tokens
        elif max_tokens > s.max_tokens:
            param = "max_tokens" if req.max_tokens is not None else "max_completion_tokens"
            raise APIError(
                400,
                f"The '{param}' field must be <= {s.max_tokens} (--max_tokens). Got {max_tokens} instead.",
                param=param,
            )
        token_logprobs = req.token_logprobs()
        if token_logprobs is not None:
            param = "logprobs" if isinstance(req, CompletionRequest) else "top_logprobs"
            if token_logprobs > s.max_logprobs:
                raise APIError(
                    400,
                    f"The '{param}' field must be <= {s.max_logprobs} (--max_logprobs). "
                    f"Got {token_logprobs} instead.",
                    param=param,
                )
            if not _takes(self.backend, "token_logprobs"):
                raise APIError(
                    400,
                    f"The '{param.removeprefix('top_')}' field cannot be served: the backend "
                    f"{self.backend.signature} gives no per-token log-probabilities.",
                    param=param.removeprefix("top_"),
                    code="logprobs_unavailable",
                )
        first_sample = req.first_sample or 0
        if first_sample and (req.metric is not None or req.decoding == "global"):
            raise APIError(
                400,
                "The 'first_sample' field is for samples without a decision (no 'metric', local "
                f"decoding). Got first_sample={first_sample} with "
                f"{'metric' if req.metric is not None else 'decoding global'} instead.",
                param="first_sample",
            )
        decision: dict[str, Any] | None = None
        adaptive = None
        if req.metric is None:
            for name in DECISION_FIELDS:
                if name in req.model_fields_set and getattr(req, name) not in (None, False):
                    raise APIError(
                        400,
                        f"The '{name}' field needs 'metric' (the metric the answer is decided for). "
                        f"Got '{name}' without 'metric' instead.",
                        param=name,
                    )
            n = req.n or 1
            self._check_n(n, "n")
        else:
            if req.n not in (None, 1):
                raise APIError(
                    400,
                    "The 'n' field must be 1 with 'metric': the answer is one decision over all "
                    f"samples (ask for more samples with 'samples'). Got {req.n} instead.",
                    param="n",
                )
            n = req.samples or s.default_samples
            self._check_n(n, "samples")
            decision = await asyncio.to_thread(_decision_options, req)
            if req.adaptive:
                adaptive = _adaptive(req.adaptive, req.samples, s.max_n)
        chain = self._chain(req, adaptive)
        proposals = n if chain is None else chain.proposals(n)
        if chain is not None:
            self._check_n(proposals, "samples" if req.metric else "n", proposals=True)
        top_k = req.top_k if req.top_k is not None and req.top_k > 0 else 0
        try:
            config = SamplingConfig(
                n=first_sample + proposals,
                temperature=1.0 if req.temperature is None else req.temperature,
                top_k=top_k,
                top_p=1.0 if req.top_p is None else req.top_p,
                min_p=0.0 if req.min_p is None else req.min_p,
                max_tokens=max_tokens,
                stop=req.stops(),
                seed=0 if req.seed is None else req.seed,
            )
        except InvalidParameterError as exc:
            raise APIError(400, str(exc)) from None
        return Plan(
            config,
            decision,
            adaptive,
            req.return_samples,
            chain,
            n,
            token_logprobs=token_logprobs,
            first_sample=first_sample,
        )

    def _check_n(self, n: int, param: str, *, proposals: bool = False) -> None:
        if n > self.settings.max_n:
            raise APIError(
                400,
                f"The '{param}' field must be <= {self.settings.max_n} (--max_n)"
                + (
                    f", counting the proposals of 'decoding' global (burn_in + {param} x thin)"
                    if proposals
                    else ""
                )
                + f". Got {n} instead.",
                param=param,
            )

    @staticmethod
    def _chain(req: CompletionRequest | ChatCompletionRequest, adaptive: Any) -> Any:
        """The ChainSettings of ``decoding: "global"``, or None; its misuses are 400s."""
        from metricwise.global_decoding import ChainMisuse, ChainSettings, check_chain_use

        given = {name: getattr(req, name) for name in ("burn_in", "thin")}
        try:
            check_chain_use(
                req.decoding or "local",
                chain_given={name: value for name, value in given.items() if value is not None},
                temperature=req.temperature,
                weights=req.weights,
                adaptive=adaptive is not None,
            )
        except ChainMisuse as exc:
            raise APIError(400, str(exc), param=exc.param) from None
        if req.decoding != "global":
            return None
        return ChainSettings(burn_in=req.burn_in or 0, thin=req.thin or 1)

    # -- sampling and deciding ---------------------------------------------------------------------
    async def _run(
        self, request: Request, scheduler: Scheduler, backend: Any, prompts: list[str], plan: Plan
    ) -> Outcome:
        prompt_tokens = (
            await asyncio.to_thread(self._count_prompt_tokens, prompts) if self.tokenizer else 0
        )
        decisions: list[Decision] | None = None
        if plan.adaptive is not None and plan.decision is not None:
            sets, decisions = await self._run_adaptive(
                request, scheduler, backend, prompts, plan, plan.decision, plan.adaptive
            )
        else:
            sets = await self._sample(
                request, scheduler, backend, prompts, plan.config, plan.first_sample, plan.options()
            )
        # Usage counts what was generated: every proposal of a global-decoding chain.
        drawn = sum(len(s) for s in sets)
        completion_tokens = sum(c.n_tokens or 0 for s in sets for c in s.candidates)
        self.metrics.observe_sampling(drawn, prompt_tokens, completion_tokens)
        chains = None
        if plan.chain is not None:
            from metricwise.global_decoding import global_chains

            chains = global_chains(
                sets,
                plan.states,
                temperature=plan.config.temperature,
                settings=plan.chain,
                seed=plan.config.seed,
            )
            sets = [chain.states for chain in chains]
        options = plan.decision
        if decisions is None and options is not None:
            decisions = await asyncio.to_thread(lambda: [_decide(s, options) for s in sets])
        return Outcome(sets, decisions, prompt_tokens, chains, completion_tokens)

    async def _run_adaptive(
        self,
        request: Request,
        scheduler: Scheduler,
        backend: Any,
        prompts: list[str],
        plan: Plan,
        options: dict[str, Any],
        adaptive: Any,
    ) -> tuple[list[SampleSet], list[Decision]]:
        """Rounds of samples until each prompt's decision is settled (as metricwise.adaptive does).

        Sample ``i`` of a prompt has its own seed, so round ``r`` asks the backend for samples
        ``drawn .. n - 1`` only, and the result is a prefix of a fixed-N request's samples.
        """
        from metricwise.adaptive import settled_probability

        config = plan.config
        candidates: list[list[Candidate]] = [[] for _ in prompts]
        final: dict[int, Decision] = {}
        active = list(range(len(prompts)))
        probability_options = {
            k: options[k] for k in ("valid_range", "grid") if options.get(k) is not None
        }
        metric_args = {k: v for k, v in options.items() if k not in _decide_keywords()}
        drawn = 0
        for n in adaptive.schedule():
            if not active:
                break
            new = await self._sample(
                request,
                scheduler,
                backend,
                [prompts[i] for i in active],
                replace(config, n=n),
                drawn,
                plan.options(),
            )
            for i, sample_set in zip(active, new, strict=True):
                candidates[i].extend(sample_set.candidates)

            def decide_round(at: int = n, which: tuple[int, ...] = tuple(active)) -> list[int]:
                still = []
                for i in which:
                    sample_set = SampleSet(tuple(candidates[i]), prompt=prompts[i])
                    decision = _decide(sample_set, options)
                    p = settled_probability(
                        decision,
                        options["metric"],
                        adaptive,
                        **probability_options,
                        **metric_args,
                    )
                    if decision.decided and p >= adaptive.confidence:
                        stopped = "settled"
                    elif at >= adaptive.max_n:
                        stopped = "max_n" if decision.decided else "no_valid_samples"
                    else:
                        still.append(i)
                        continue
                    final[i] = replace(decision, n_used=at, stopped=stopped, settled_probability=p)
                return still

            active = await asyncio.to_thread(decide_round)
            drawn = n
        sets = [SampleSet(tuple(c), prompt=p) for c, p in zip(candidates, prompts, strict=True)]
        return sets, [final[i] for i in range(len(prompts))]

    async def _sample(
        self,
        request: Request,
        scheduler: Scheduler,
        backend: Any,
        prompts: list[str],
        config: SamplingConfig,
        start: int,
        options: dict[str, Any] | None = None,
    ) -> list[SampleSet]:
        """Queue one backend call and wait for it, or for the client to leave (then cancel it)."""
        try:
            job: Job = scheduler.submit(
                backend, prompts, config, start=start, cancellable=self.upstream, options=options
            )
        except QueueFull:
            raise APIError(
                429,
                f"The server is busy: {scheduler.max_queue} requests are waiting already "
                f"(--max_queue). Retry after {self.settings.retry_after} s.",
                headers={"Retry-After": str(self.settings.retry_after)},
            ) from None
        watcher = asyncio.ensure_future(_wait_for_disconnect(request))
        waiting: set[asyncio.Future[Any]] = {job.future, watcher}
        try:
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if job.future.done():
                return job.future.result()
            scheduler.cancel(job)
            raise ClientGone
        except asyncio.CancelledError:
            # A streamed answer whose client left: the stream's task is cancelled.
            scheduler.cancel(job)
            raise
        finally:
            watcher.cancel()

    def _count_prompt_tokens(self, prompts: list[str]) -> int:
        """Prompt tokens by the local model's tokenizer; 0 when there is none (an upstream)."""
        tokenizer = self.tokenizer
        if tokenizer is None or not callable(tokenizer):
            return 0
        try:
            return sum(len(tokenizer(p)["input_ids"]) for p in prompts)
        except Exception:  # a tokenizer of another shape: the count is informative only
            return 0

    # -- answering ---------------------------------------------------------------------------------
    def _respond(
        self,
        req: CompletionRequest | ChatCompletionRequest,
        plan: Plan,
        outcome: Outcome,
        *,
        chat: bool,
    ) -> Response:
        head, choices, usage, top = self._answer(req, plan, outcome, chat=chat)
        body: dict[str, Any] = {
            **head,
            "object": "chat.completion" if chat else "text_completion",
            "choices": [
                _choice(i, c, c.info if len(choices) > 1 else None, chat=chat)
                for i, c in enumerate(choices)
            ],
            "usage": usage,
        }
        if top is not None:
            body["metricwise"] = top
        return JSONResponse(json_safe(body))

    def _stream(
        self,
        req: CompletionRequest | ChatCompletionRequest,
        plan: Plan,
        run: Callable[[Plan], Awaitable[Outcome]],
        backend: Any,
        *,
        chat: bool,
    ) -> Response:
        """A streamed answer. An SSE comment goes out at once and every ``keepalive_seconds``
        while nothing else does. Without a metric, from a backend that reports its texts as
        they grow (``on_text``: hf), each choice's text is streamed in pieces as it is decoded,
        interleaved by index; otherwise (a decision needs every sample; llamacpp and openai
        report nothing before the end) each choice comes whole at the end. A choice's
        ``logprobs`` ride on its last chunk. A failure after the stream has begun is an
        ``error`` event, which the official client raises."""
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        kind = "chat.completion.chunk" if chat else "text_completion"
        head = {
            "id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
            "created": int(time.time()),
            "model": req.model,
        }
        updates: asyncio.Queue[tuple[int, int, str]] = asyncio.Queue()
        per_prompt = plan.states
        token_stream = plan.decision is None and _takes(backend, "on_text")
        if token_stream:
            loop = asyncio.get_running_loop()

            def on_text(prompt: int, sample: int, text: str) -> None:
                loop.call_soon_threadsafe(updates.put_nowait, (prompt, sample, text))

            plan = replace(plan, on_text=on_text)
        greedy = plan.config.temperature == 0

        def chunk(index: int, text: str | None, finish: str | None, logprobs: Any) -> str:
            if chat:
                delta: dict[str, Any] = {} if text is None else {"content": text}
                body = {"index": index, "delta": delta, "finish_reason": finish}
            else:
                body = {"index": index, "text": text or "", "finish_reason": finish}
            body["logprobs"] = logprobs
            event = {**head, "object": kind, "choices": [body]}
            return f"data: {json.dumps(json_safe(event), ensure_ascii=False)}\n\n"

        async def events() -> AsyncIterator[str]:
            task = asyncio.ensure_future(run(plan))
            sent: dict[int, str] = {}
            try:
                yield ": metricwise: sampling\n\n"
                if token_stream and chat:
                    for i in range(per_prompt * plan.prompts):
                        event = {
                            **head,
                            "object": kind,
                            "choices": [
                                {
                                    "index": i,
                                    "delta": {"role": "assistant", "content": ""},
                                    "finish_reason": None,
                                    "logprobs": None,
                                }
                            ],
                        }
                        yield f"data: {json.dumps(event)}\n\n"
                getter: asyncio.Future[Any] | None = None
                while not task.done():
                    if getter is None:
                        getter = asyncio.ensure_future(updates.get())
                    done, _ = await asyncio.wait(
                        {task, getter},
                        timeout=self.settings.keepalive_seconds,
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                    if not done:
                        yield ": metricwise: sampling\n\n"
                    if getter.done():
                        prompt, sample, text = getter.result()
                        getter = None
                        samples = range(per_prompt) if greedy else (sample,)
                        for k in samples:
                            index = prompt * per_prompt + k
                            old = sent.get(index, "")
                            if text.startswith(old) and len(text) > len(old):
                                sent[index] = text
                                yield chunk(index, text[len(old) :], None, None)
                if getter is not None:
                    getter.cancel()
                try:
                    _, choices, usage, top = self._answer(req, plan, task.result(), chat=chat)
                except ClientGone:
                    return
                except Exception as exc:
                    error = from_exception(exc)
                    self.metrics.observe_error(error.type)
                    yield f"data: {json.dumps(error.body(), ensure_ascii=False)}\n\n"
                    return
                if not token_stream:
                    for event in _stream_events(
                        head, choices, usage, top, chat=chat, include_usage=include_usage
                    ):
                        yield f"data: {json.dumps(json_safe(event), ensure_ascii=False)}\n\n"
                    yield "data: [DONE]\n\n"
                    return
                for index, c in enumerate(choices):
                    old = sent.get(index, "")
                    # The rest of the text (a tokenizer may rewrite what it decoded earlier:
                    # then what was sent stands, and nothing more is).
                    rest = c.text[len(old) :] if c.text.startswith(old) else ""
                    if chat:
                        if rest:
                            yield chunk(index, rest, None, None)
                        yield chunk(index, None, c.finish, c.logprobs)
                    else:
                        yield chunk(index, rest, c.finish, c.logprobs)
                if include_usage:
                    event = {**head, "object": kind, "choices": [], "usage": usage}
                    yield f"data: {json.dumps(json_safe(event))}\n\n"
                yield "data: [DONE]\n\n"
            finally:
                if not task.done():
                    task.cancel()

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    def _answer(
        self,
        req: CompletionRequest | ChatCompletionRequest,
        plan: Plan,
        outcome: Outcome,
        *,
        chat: bool,
    ) -> tuple[dict[str, Any], list[_Choice], dict[str, Any], dict[str, Any] | None]:
        """(head, choices, usage, the first decision's metricwise object) of an answer; raises
        the 422 ``no_valid_samples`` error when a prompt has no decision."""
        k = plan.token_logprobs
        choices: list[_Choice] = []
        if outcome.decisions is None:
            for sample_set in outcome.sets:
                for c in sample_set.candidates:
                    finish = "length" if c.finish_reason in ("length", "guard") else "stop"
                    choices.append(_Choice(c.text, finish, None, _logprobs(c, k, chat=chat)))
        else:
            for i, (sample_set, decision) in enumerate(
                zip(outcome.sets, outcome.decisions, strict=True)
            ):
                if not decision.ok:
                    raise _no_decision(i, len(outcome.sets), decision, plan)
                info = self._metricwise(decision, sample_set, plan)
                if outcome.chains is not None:
                    info["chain"] = {
                        k: v
                        for k, v in outcome.chains[i].to_dict().items()
                        if k != "state_proposals"
                    }
                text = answer_text(decision.output)
                logprobs = None
                if k is not None:
                    # The answer's log-probabilities are those of a sample with its very text;
                    # a mean (or a normalised answer) no sample wrote has none.
                    index = next(
                        (j for j, c in enumerate(sample_set.candidates) if c.text == text), None
                    )
                    if index is None:
                        info["logprobs_of_sample"] = None
                        info["logprobs_note"] = (
                            "the answer is not the text of any sample (a mean, a median or a "
                            "normalised answer), so it has no token log-probabilities"
                        )
                    else:
                        info["logprobs_of_sample"] = index
                        logprobs = _logprobs(sample_set.candidates[index], k, chat=chat)
                choices.append(_Choice(text, "stop", info, logprobs))
        completion_tokens = (
            outcome.completion_tokens
            if outcome.completion_tokens is not None
            else sum(c.n_tokens or 0 for s in outcome.sets for c in s.candidates)
        )
        usage = {
            "prompt_tokens": outcome.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": outcome.prompt_tokens + completion_tokens,
        }
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        head = {"id": rid, "created": int(time.time()), "model": req.model}
        top = choices[0].info if choices and choices[0].info is not None else None
        return head, choices, usage, top

    def _metricwise(self, decision: Decision, sample_set: SampleSet, plan: Plan) -> dict[str, Any]:
        info = decision.to_dict(max_support=self.settings.max_support)
        info.setdefault("n_used", len(sample_set))
        info["seed"] = plan.config.seed
        if plan.return_samples:
            info["samples"] = [c.to_dict() for c in sample_set.candidates]
            if plan.token_logprobs is not None:
                for sample, c in zip(info["samples"], sample_set.candidates, strict=True):
                    sample["logprobs"] = _logprobs(c, plan.token_logprobs, chat=False)
        return info


# -- helpers -------------------------------------------------------------------------------------
def _is_upstream(backend: Any) -> bool:
    from metricwise.backends.openai import OpenAIBackend

    return isinstance(backend, OpenAIBackend)


def _sample_call(
    backend: Any,
    prompts: list[str],
    config: SamplingConfig,
    start: int,
    cancel: Any,
    options: dict[str, Any],
) -> list[SampleSet]:
    if "echo" in options:
        # Scoring the prompts (echo) rather than sampling: one row of TokenLogprob per prompt.
        top, extra = options["echo"]
        rows: list[Any] = backend.prompt_logprobs(prompts, top=top, extra=extra)
        return rows
    if cancel is not None:
        options = {**options, "cancel": cancel}
    sets: list[SampleSet] = backend.sample(prompts, config, start=start, **options)
    return sets


def _takes(backend: Any, keyword: str) -> bool:
    """Whether ``backend.sample`` takes the keyword argument ``keyword``."""
    import inspect

    try:
        parameters = inspect.signature(backend.sample).parameters
    except (TypeError, ValueError, AttributeError):
        return False
    return keyword in parameters or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()
    )


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("metricwise")
    except PackageNotFoundError:
        return "unknown"


async def _json_coroutine(body: dict[str, Any]) -> Response:
    return JSONResponse(body)


def _openapi_body(model: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI ``requestBody`` of an endpoint that reads its body itself (for /docs)."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    defs = schema.pop("$defs", {})
    _OPENAPI_DEFS.update(defs)
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


#: The nested schemas of the request bodies, added to the OpenAPI components.
_OPENAPI_DEFS: dict[str, Any] = {}


# -- request ids and the access log ---------------------------------------------------------------
#: An incoming X-Request-Id is echoed when it is this long at most and printable ASCII.
_MAX_REQUEST_ID = 128


def request_id(request: Request) -> str | None:
    """The id :class:`RequestIdMiddleware` gave this request."""
    state = request.scope.get("state") or {}
    value = state.get("request_id")
    return value if isinstance(value, str) else None


class RequestIdMiddleware:
    """Gives every HTTP request an id: the client's ``X-Request-Id`` when it sends a sane one
    (printable ASCII, at most 128 characters), else a new ``req-<hex>``. The id is echoed as
    ``X-Request-Id`` on the answer (the official client reads it as ``request_id``, errors
    included), and ends the access-log line of the request."""

    def __init__(self, app: Any, access_log: bool = True) -> None:
        self.app = app
        self.access_log = access_log

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next(
            (v for k, v in scope.get("headers", ()) if k.lower() == b"x-request-id"), b""
        ).decode("latin-1")
        rid = (
            given
            if 0 < len(given) <= _MAX_REQUEST_ID and given.isascii() and given.isprintable()
            else f"req-{uuid.uuid4().hex}"
        )
        scope.setdefault("state", {})["request_id"] = rid
        status = [0]
        started = time.monotonic()

        async def send_with_id(message: Any) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                headers = [(k, v) for k, v in message.get("headers", ()) if k != b"x-request-id"]
                message = {**message, "headers": [*headers, (b"x-request-id", rid.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if self.access_log:
                client = scope.get("client")
                access_logger.info(
                    '%s - "%s %s HTTP/%s" %d %.0f ms request_id=%s',
                    f"{client[0]}:{client[1]}" if client else "-",
                    scope.get("method", ""),
                    scope.get("path", ""),
                    scope.get("http_version", "1.1"),
                    status[0],
                    1000 * (time.monotonic() - started),
                    rid,
                )


def _adds_bos(tokenizer: Any) -> bool:
    try:
        ids = tokenizer("a")["input_ids"]
    except Exception:
        return False
    return bool(ids) and ids[0] == getattr(tokenizer, "bos_token_id", None)


async def _wait_for_disconnect(request: Request) -> None:
    # The body has been read, so the ASGI server's next message is the disconnect (uvicorn
    # blocks until then); the pause guards against a server that answers otherwise at once.
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
        await asyncio.sleep(0.05)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _validate(model: type[Any], body: Any) -> Any:
    if not isinstance(body, dict):
        raise APIError(
            400, f"The request body must be a JSON object. Got {type(body).__name__} instead."
        )
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise _validation_error(exc, model) from None


def _validation_error(exc: ValidationError, model: type[BaseModel]) -> APIError:
    # A value that fits no member of a union gets one error per member; the deepest location
    # (prompt.1 rather than prompt) says best what is wrong.
    error = max(exc.errors(include_url=False), key=lambda e: len(e["loc"]))
    location = [str(part) for part in error["loc"]]
    # Union members appear in the location as their type names ("str", "list[str]"): drop them.
    path = [p for p in location if p.isdigit() or (p.isidentifier() and p not in _TYPE_TAGS)]
    param = ".".join(path) or None
    if error["type"] == "extra_forbidden":
        name = path[-1] if path else "?"
        known = list(model.model_fields) if len(path) == 1 else []
        return APIError(
            400,
            f"Unknown field {param!r} in the request.{did_you_mean(name, known)}",
            param=param,
        )
    if error["type"] == "missing":
        return APIError(400, f"The '{param}' field is required.", param=param)
    got = error.get("input")
    got_text = repr(got) if not isinstance(got, (dict, list)) else type(got).__name__
    message = str(error["msg"]).removeprefix("Value error, ")
    return APIError(
        400,
        f"The '{param}' field is invalid: {message}. Got {got_text[:200]} instead.",
        param=param,
    )


_TYPE_TAGS = frozenset(
    {"str", "int", "float", "bool", "list", "dict", "tuple", "function-after", "AdaptiveSettings"}
)


def _decision_options(req: CompletionRequest | ChatCompletionRequest) -> dict[str, Any]:
    """decide() options for the request's metricwise fields, each checked by name (400 naming it)."""
    from metricwise import metrics
    from metricwise.decide import RULES, check_weighting, decide
    from metricwise.extract import Extractor, check_range

    names = metrics.names()
    if req.metric is None or req.metric not in names:
        raise APIError(
            400,
            f"The 'metric' field must be a registered metric. Got {req.metric!r} instead."
            f"{did_you_mean(str(req.metric), names)} Known metrics: {', '.join(names)}.",
            param="metric",
            code="unknown_metric",
        )
    metric_args = dict(req.metric_args or {})
    for key, value in metric_args.items():
        if key in _decide_keywords():
            raise APIError(
                400,
                f"The 'metric_args' field may not set {key!r}: it is a field of its own.",
                param="metric_args",
            )
        if isinstance(value, str) and key not in STRING_METRIC_ARGS:
            raise APIError(
                400,
                f"The 'metric_args' field takes numbers and booleans (and the strings "
                f"{', '.join(sorted(STRING_METRIC_ARGS))}). Got the string {key}={value!r} instead.",
                param="metric_args",
            )
    try:
        metrics.get(req.metric, **metric_args)
    except MetricwiseError as exc:
        raise from_exception(exc, param="metric_args" if metric_args else "metric") from None
    if req.rule is not None and req.rule not in RULES:
        raise APIError(
            400,
            f"The 'rule' field must be one of {', '.join(RULES)}. Got {req.rule!r} instead."
            f"{did_you_mean(req.rule, list(RULES))}",
            param="rule",
        )
    weights = req.weights or "uniform"
    try:
        check_weighting(weights)
    except MetricwiseError as exc:
        raise from_exception(exc, param="weights") from None
    if req.extractor is not None:
        if req.extractor.strip().startswith("regex"):
            raise APIError(
                400,
                "The 'extractor' field may not be a regular expression on this server (a pattern can "
                "take exponential time); use number, number:first, number:last, number:answer, "
                f"first_line, answer or text. Got {req.extractor!r} instead.",
                param="extractor",
            )
        try:
            Extractor.from_spec(req.extractor)
        except MetricwiseError as exc:
            raise from_exception(exc, param="extractor") from None
    valid_range = None
    if req.valid_range is not None:
        try:
            valid_range = check_range(req.valid_range, "the request")
        except MetricwiseError as exc:
            raise from_exception(exc, param="valid_range") from None
    options: dict[str, Any] = {
        "metric": req.metric,
        "rule": req.rule,
        "weights": weights,
        "weight_temperature": 1.0 if req.weight_temperature is None else req.weight_temperature,
        "valid_range": valid_range,
        "grid": list(req.grid) if req.grid is not None else None,
        "extractor": req.extractor,
        "include_incomplete": req.include_incomplete,
        **metric_args,
    }
    for name in ("max_expected_loss", "min_expected_utility"):
        if getattr(req, name) is not None:
            options[name] = getattr(req, name)
    # A decision on no samples checks the combination (a grid rule without a grid, say);
    # weights need log-probabilities, so they were checked on their own above.
    try:
        decide([], **{**options, "weights": None})
    except MetricwiseError as exc:
        raise from_exception(exc) from None
    return options


def _adaptive(value: bool | AdaptiveSettings, samples: int | None, limit: int) -> Any:
    from metricwise.adaptive import Adaptive

    given = value.model_dump(exclude_none=True) if isinstance(value, AdaptiveSettings) else {}
    if "max_n" not in given:
        given["max_n"] = samples or min(Adaptive().max_n, limit)
    if "min_n" not in given:
        given["min_n"] = min(Adaptive().min_n, given["max_n"])
    if given["max_n"] > limit:
        raise APIError(
            400,
            f"The 'adaptive.max_n' field must be <= {limit} (--max_n). Got {given['max_n']} instead.",
            param="adaptive.max_n",
        )
    try:
        return Adaptive(**given)
    except MetricwiseError as exc:
        raise from_exception(exc, param="adaptive") from None


def _decide(sample_set: SampleSet, options: dict[str, Any]) -> Decision:
    from metricwise.decide import decide

    return decide(sample_set, **options)


@dataclass
class _Choice:
    """One choice of an answer: its text, finish reason, metricwise object and logprobs."""

    text: str
    finish: str
    info: dict[str, Any] | None
    logprobs: dict[str, Any] | None = None


def _logprobs(c: Candidate, k: int | None, *, chat: bool) -> dict[str, Any] | None:
    """A candidate's per-token log-probabilities as OpenAI writes them, ``k`` alternatives per
    token: chat's ``{"content": [...]}`` (with the token ids as ``id``, as llama-server adds),
    or completions' ``tokens`` / ``token_logprobs`` / ``top_logprobs`` / ``text_offset``. All
    generated tokens are listed, the end-of-generation token (as "") and the tokens of a stop
    string included, so that the log-probabilities sum to the sample's ``logp``. Completions'
    object carries chat's ``content`` list too: two tokens can share a text, and a dict keyed
    by text keeps one of them, while ``content`` names each by its id (metricwise's openai
    backend reads it, and rebuilds q exactly)."""
    if k is None or c.tokens is None:
        return None
    content = []
    for t in c.tokens:
        entry: dict[str, Any] = {
            "token": t.token,
            "logprob": t.logprob,
            "bytes": list(t.token.encode("utf-8")),
            "top_logprobs": [
                {"token": a, "logprob": v, "bytes": list(a.encode("utf-8")), "id": i}
                for a, v, i in t.top[:k]
            ],
        }
        if t.id is not None:
            entry["id"] = t.id
        content.append(entry)
    if chat:
        return {"content": content, "refusal": None}
    offsets, at = [], 0
    for t in c.tokens:
        offsets.append(at)
        at += len(t.token)
    tops: list[dict[str, float]] = []
    for t in c.tokens:
        alternatives: dict[str, float] = {}
        for a, v, _ in t.top[:k]:
            alternatives.setdefault(a, v)  # two ids with one text: the more probable
        tops.append(alternatives)
    return {
        "tokens": [t.token for t in c.tokens],
        "token_logprobs": [t.logprob for t in c.tokens],
        "top_logprobs": tops if k > 0 else None,
        "text_offset": offsets,
        "content": content,
    }


def _echo_logprobs(tokens: Any, k: int) -> dict[str, Any]:
    """A scored prompt's tokens (:meth:`HFBackend.prompt_logprobs`) as OpenAI's completions
    write ``logprobs`` with ``echo``: the first token has no log-probability and no
    alternatives (null), then ``k`` alternatives per token keyed by text (``top_logprobs``
    is null when ``k`` is 0), and ``content`` names each token by id as :func:`_logprobs` does."""
    offsets, at = [], 0
    for t in tokens:
        offsets.append(at)
        at += len(t.token)
    first = True
    tops: list[dict[str, float] | None] = []
    content = []
    for t in tokens:
        logprob = None if first or math.isnan(t.logprob) else t.logprob
        alternatives: dict[str, float] = {}
        for a, v, _ in t.top[:k]:
            alternatives.setdefault(a, v)
        tops.append(None if first else alternatives)
        entry: dict[str, Any] = {
            "token": t.token,
            "logprob": logprob,
            "bytes": list(t.token.encode("utf-8")),
            "top_logprobs": [
                {"token": a, "logprob": v, "bytes": list(a.encode("utf-8")), "id": i}
                for a, v, i in t.top[:k]
            ],
        }
        if t.id is not None:
            entry["id"] = t.id
        content.append(entry)
        first = False
    return {
        "tokens": [t.token for t in tokens],
        "token_logprobs": [c["logprob"] for c in content],
        "top_logprobs": tops if k > 0 else None,
        "text_offset": offsets,
        "content": content,
    }


def _no_decision(index: int, prompts: int, decision: Decision, plan: Plan) -> APIError:
    """The 422 answer for a prompt whose samples gave no decision, naming why: an abstention
    (``abstained``, the answer withheld and its risk in the message) or no usable sample."""
    where = f"prompt {index}" if prompts > 1 else "the prompt"
    if decision.abstained:
        risk = (
            decision.expected_loss
            if decision.expected_loss is not None
            else decision.expected_utility
        )
        return APIError(
            422,
            f"No answer for {where}: metricwise {decision.failure} (the withheld answer was "
            f"{answer_text(decision.withheld)!r}, risk {risk:.6g}). Raise the threshold to answer "
            "more, or treat this as 'not sure'.",
            param="max_expected_loss"
            if decision.expected_loss is not None
            else "min_expected_utility",
            code="abstained",
        )
    excluded = dict(decision.excluded)
    n = decision.n_total
    why = {
        "length": "cut by max_tokens",
        "guard": "cut by the repetition guard",
        "unparsable": "unparsable by the extractor",
        "empty": "empty",
        "too_long": "over 100,000 characters",
    }
    parts = [f"{count} {why.get(reason, reason)}" for reason, count in sorted(excluded.items())]
    hints = []
    if excluded.get("length") or excluded.get("guard"):
        hints.append(
            f"raise max_tokens (it was {plan.config.max_tokens}) or send include_incomplete: "
            "true to decide over the cut samples"
        )
    if excluded.get("unparsable"):
        hints.append("choose another extractor, or prompt for the answer's format")
    return APIError(
        422,
        f"No decision for {where}: none of its {n} samples could be used as an answer"
        f"{' (' + ', '.join(parts) + ')' if parts else f' ({decision.failure})'}."
        f"{' Hint: ' + '; '.join(hints) + '.' if hints else ''}",
        param="max_tokens" if excluded.get("length") else None,
        code="no_valid_samples",
    )


def _choice(index: int, c: _Choice, info: dict[str, Any] | None, *, chat: bool) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": index, "finish_reason": c.finish, "logprobs": c.logprobs}
    if chat:
        choice["message"] = {"role": "assistant", "content": c.text}
    else:
        choice["text"] = c.text
    if info is not None:
        choice["metricwise"] = info
    return choice


def _stream_events(
    head: dict[str, Any],
    choices: list[_Choice],
    usage: dict[str, Any],
    top: dict[str, Any] | None,
    *,
    chat: bool,
    include_usage: bool,
) -> list[dict[str, Any]]:
    """The chunks of a streamed answer given whole: each choice's text (and logprobs) at once;
    then its finish reason (chat); the ``metricwise`` object rides on the last chunk, and usage
    on a final chunk without choices when ``include_usage`` asks for it."""
    kind = "chat.completion.chunk" if chat else "text_completion"
    events: list[dict[str, Any]] = []
    for i, c in enumerate(choices):
        extra = {"metricwise": c.info} if c.info is not None and len(choices) > 1 else {}
        if chat:
            events.append(
                {
                    **head,
                    "object": kind,
                    "choices": [
                        {
                            "index": i,
                            "delta": {"role": "assistant", "content": c.text},
                            "finish_reason": None,
                            "logprobs": c.logprobs,
                        }
                    ],
                }
            )
            events.append(
                {
                    **head,
                    "object": kind,
                    "choices": [
                        {
                            "index": i,
                            "delta": {},
                            "finish_reason": c.finish,
                            "logprobs": None,
                            **extra,
                        }
                    ],
                }
            )
        else:
            events.append(
                {
                    **head,
                    "object": kind,
                    "choices": [
                        {
                            "index": i,
                            "text": c.text,
                            "finish_reason": c.finish,
                            "logprobs": c.logprobs,
                            **extra,
                        }
                    ],
                }
            )
    if top is not None and events:
        events[-1]["metricwise"] = top
    if include_usage:
        events.append({**head, "object": kind, "choices": [], "usage": usage})
    return events


def _error_response(error: APIError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)
