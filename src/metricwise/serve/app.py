"""The FastAPI application of ``metricwise serve``: :func:`create_app`.

Endpoints
---------
``POST /v1/completions``       a prompt (or a list of them) -> the decided answer per prompt
``POST /v1/chat/completions``  messages -> the decided answer, through the model's chat template
                               (``hf``) or the upstream's chat endpoint (``openai``)
``GET /v1/models``             the served model
``GET /health``                200 once the model has loaded, 503 before (or if it failed)
``GET /metrics``               Prometheus text format (see :mod:`.metrics_registry`)

A request that names a ``metric`` is sampled ``samples`` times (or adaptively), decided with
:func:`metricwise.decide`, and answered with the decision as the first choice and a
``metricwise`` object describing it. Without ``metric`` the request is sampled as asked
(``temperature: 0`` is greedy) and its ``n`` samples are the choices.

Life cycle: the model loads in a background thread once the server listens, so ``/health`` and
requests answer 503 (with ``Retry-After``) until it is ready. On shutdown (SIGTERM) uvicorn stops
accepting connections and waits for the requests in flight, which this application keeps
serving; then the backend is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import math
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from metricwise.backends.base import Backend
from metricwise.errors import InvalidParameterError, MetricwiseError, did_you_mean
from metricwise.serve.errors import APIError, from_exception
from metricwise.serve.metrics_registry import ServeMetrics
from metricwise.serve.scheduler import Job, QueueFull, Scheduler
from metricwise.serve.schemas import (
    DECISION_FIELDS,
    STRING_METRIC_ARGS,
    AdaptiveSettings,
    ChatCompletionRequest,
    CompletionRequest,
)
from metricwise.serve.settings import ServeSettings
from metricwise.types import Candidate, Decision, SampleSet, SamplingConfig

logger = logging.getLogger("uvicorn.error")

#: decide()'s own keyword arguments: a ``metric_args`` key may not override one of them.
_DECIDE_KEYWORDS = frozenset(
    {
        "samples", "metric", "rule", "weights", "logprobs", "proposal_logprobs",
        "higher_is_better", "weight_temperature", "valid_range", "grid", "extractor",
        "include_incomplete", "candidates",
    }
)  # fmt: skip
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

    app = FastAPI(
        title="metricwise",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.metricwise = state

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        message = (
            f"No endpoint {request.method} {request.url.path}; this server has POST /v1/completions, "
            "POST /v1/chat/completions, GET /v1/models, GET /health and GET /metrics."
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

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await state.handle(request, "completions", state.completions)

    @app.post("/v1/chat/completions")
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
        return await state.handle(request, "metrics", state.prometheus)

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
                logger.exception("metricwise serve: unhandled error in %s", endpoint)
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
        return JSONResponse({"object": "list", "data": [self._model_card(n) for n in self.names]})

    async def model(self, request: Request, name: str) -> Response:
        self._check_ready()
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
        return PlainTextResponse(
            self.metrics.render(gauges), media_type="text/plain; version=0.0.4; charset=utf-8"
        )

    async def completions(self, request: Request) -> Response:
        req = _validate(CompletionRequest, await self._read_json(request))
        scheduler = self._check_ready()
        self._check_model(req.model)
        prompts = req.prompts()
        if not 1 <= len(prompts) <= self.settings.max_prompts:
            raise APIError(
                400,
                f"The 'prompt' field must hold 1 to {self.settings.max_prompts} prompts (--max_prompts). "
                f"Got {len(prompts)} instead.",
                param="prompt",
            )
        for i, prompt in enumerate(prompts):
            self._check_prompt(prompt, "prompt" if isinstance(req.prompt, str) else f"prompt.{i}")
        plan = await self._plan(req, req.max_tokens)
        outcome = await self._run(request, scheduler, self.backend, prompts, plan)
        return self._respond(req, plan, outcome, chat=False)

    async def chat_completions(self, request: Request) -> Response:
        req = _validate(ChatCompletionRequest, await self._read_json(request))
        scheduler = self._check_ready()
        self._check_model(req.model)
        if req.max_tokens is not None and req.max_completion_tokens is not None:
            raise APIError(
                400,
                "Give one of 'max_tokens' and 'max_completion_tokens'. Got both instead.",
                param="max_completion_tokens",
            )
        backend, prompt = await self._chat_prompt(req)
        self._check_prompt(prompt, "messages")
        plan = await self._plan(req, req.max_completion_tokens or req.max_tokens)
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

    def _check_prompt(self, prompt: str, param: str) -> None:
        if not prompt:
            raise APIError(400, f"The '{param}' field is empty.", param=param)
        if len(prompt) > self.settings.max_prompt_chars:
            raise APIError(
                400,
                f"The '{param}' field must be at most {self.settings.max_prompt_chars} characters long "
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
                n=proposals,
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
        return Plan(config, decision, adaptive, req.return_samples, chain, n)

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
                request, scheduler, backend, prompts, plan.config, plan.decision, plan.adaptive
            )
        else:
            sets = await self._sample(request, scheduler, backend, prompts, plan.config, 0)
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
        config: SamplingConfig,
        options: dict[str, Any],
        adaptive: Any,
    ) -> tuple[list[SampleSet], list[Decision]]:
        """Rounds of samples until each prompt's decision is settled (as metricwise.adaptive does).

        Sample ``i`` of a prompt has its own seed, so round ``r`` asks the backend for samples
        ``drawn .. n - 1`` only, and the result is a prefix of a fixed-N request's samples.
        """
        from metricwise.adaptive import settled_probability

        candidates: list[list[Candidate]] = [[] for _ in prompts]
        final: dict[int, Decision] = {}
        active = list(range(len(prompts)))
        probability_options = {
            k: options[k] for k in ("valid_range", "grid") if options.get(k) is not None
        }
        metric_args = {k: v for k, v in options.items() if k not in _DECIDE_KEYWORDS}
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
                    if decision.ok and p >= adaptive.confidence:
                        stopped = "settled"
                    elif at >= adaptive.max_n:
                        stopped = "max_n" if decision.ok else "no_valid_samples"
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
    ) -> list[SampleSet]:
        """Queue one backend call and wait for it, or for the client to leave (then cancel it)."""
        try:
            job: Job = scheduler.submit(
                backend, prompts, config, start=start, cancellable=self.upstream
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
        choices: list[tuple[str, str, dict[str, Any] | None]] = []  # text, finish, metricwise
        if outcome.decisions is None:
            for sample_set in outcome.sets:
                for c in sample_set.candidates:
                    finish = "length" if c.finish_reason in ("length", "guard") else "stop"
                    choices.append((c.text, finish, None))
        else:
            for i, (sample_set, decision) in enumerate(
                zip(outcome.sets, outcome.decisions, strict=True)
            ):
                info = self._metricwise(decision, sample_set, plan)
                if outcome.chains is not None:
                    info["chain"] = {
                        k: v
                        for k, v in outcome.chains[i].to_dict().items()
                        if k != "state_proposals"
                    }
                choices.append((answer_text(decision.output), "stop", info))
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
        created = int(time.time())
        head = {"id": rid, "created": created, "model": req.model}
        top = choices[0][2] if choices and choices[0][2] is not None else None
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            events = _stream_events(
                head, choices, usage, top, chat=chat, include_usage=include_usage
            )
            return StreamingResponse(
                _sse(events),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        body: dict[str, Any] = {
            **head,
            "object": "chat.completion" if chat else "text_completion",
            "choices": [
                _choice(i, text, finish, info if len(choices) > 1 else None, chat=chat)
                for i, (text, finish, info) in enumerate(choices)
            ],
            "usage": usage,
        }
        if top is not None:
            body["metricwise"] = top
        return JSONResponse(_json_safe(body))

    def _metricwise(self, decision: Decision, sample_set: SampleSet, plan: Plan) -> dict[str, Any]:
        info = decision.to_dict(max_support=self.settings.max_support)
        info.setdefault("n_used", len(sample_set))
        info["seed"] = plan.config.seed
        if plan.return_samples:
            info["samples"] = [c.to_dict() for c in sample_set.candidates]
        return info


# -- helpers -------------------------------------------------------------------------------------
def _is_upstream(backend: Any) -> bool:
    from metricwise.backends.openai import OpenAIBackend

    return isinstance(backend, OpenAIBackend)


def _sample_call(
    backend: Any, prompts: list[str], config: SamplingConfig, start: int, cancel: Any
) -> list[SampleSet]:
    if cancel is not None:
        sets: list[SampleSet] = backend.sample(prompts, config, start=start, cancel=cancel)
    else:
        sets = backend.sample(prompts, config, start=start)
    return sets


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
        if key in _DECIDE_KEYWORDS:
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


def answer_text(value: Any) -> str:
    """A decision's output as the text of a choice.

    Numbers get at most 15 significant digits, which every float holds exactly, so that a mean
    reads 4.175 rather than 4.175000000000001; the exact value is the ``metricwise`` object's
    ``output``. Whole numbers are written without ".0".
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


def _json_safe(value: Any) -> Any:
    """JSON with no NaN or infinity (a failed decision's expected loss is NaN) and no numpy types."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float) or hasattr(value, "item"):
        try:
            number = value.item() if hasattr(value, "item") else value
        except (TypeError, ValueError):
            return str(value)
        if isinstance(number, float) and not math.isfinite(number):
            return None
        return number
    return value


def _choice(
    index: int, text: str, finish: str, info: dict[str, Any] | None, *, chat: bool
) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": index, "finish_reason": finish, "logprobs": None}
    if chat:
        choice["message"] = {"role": "assistant", "content": text}
    else:
        choice["text"] = text
    if info is not None:
        choice["metricwise"] = info
    return choice


def _stream_events(
    head: dict[str, Any],
    choices: list[tuple[str, str, dict[str, Any] | None]],
    usage: dict[str, Any],
    top: dict[str, Any] | None,
    *,
    chat: bool,
    include_usage: bool,
) -> list[dict[str, Any]]:
    """The chunks of a streamed answer: each choice's whole text at once, as the decision needs
    every sample first; then its finish reason (chat); the ``metricwise`` object rides on the
    last chunk, and usage on a final chunk without choices when ``include_usage`` asks for it."""
    kind = "chat.completion.chunk" if chat else "text_completion"
    events: list[dict[str, Any]] = []
    for i, (text, finish, info) in enumerate(choices):
        extra = {"metricwise": info} if info is not None and len(choices) > 1 else {}
        if chat:
            events.append(
                {
                    **head,
                    "object": kind,
                    "choices": [
                        {
                            "index": i,
                            "delta": {"role": "assistant", "content": text},
                            "finish_reason": None,
                            "logprobs": None,
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
                            "finish_reason": finish,
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
                            "text": text,
                            "finish_reason": finish,
                            "logprobs": None,
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


async def _sse(events: list[dict[str, Any]]) -> AsyncIterator[str]:
    for event in events:
        yield f"data: {json.dumps(_json_safe(event), ensure_ascii=False)}\n\n"
    yield "data: [DONE]\n\n"


def _error_response(error: APIError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)
