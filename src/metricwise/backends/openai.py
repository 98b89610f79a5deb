"""OpenAI-compatible servers (vLLM, llama.cpp's ``llama-server``, SGLang, TGI): N candidates per prompt.

Requests
--------
One request per prompt asks for ``n`` choices with log-probabilities. Every sampling parameter is
sent explicitly (``temperature``, ``top_p``, ``top_k``, ``min_p``, ``max_tokens``, ``stop``,
``seed``, ``n``, ``logprobs``, and the penalties set to "off"), because servers fill unset ones
from the model's ``generation_config`` or from their own truncating defaults (``llama-server``
samples with top-k 40, top-p 0.95, min-p 0.05 and temperature 0.8 unless told otherwise).

Sample ``i`` of a prompt is drawn with the integer seed ``prompt_seed + i``, where
``prompt_seed`` is derived from :func:`~metricwise.backends.base.sample_seed` (the run's seed and
the prompt). A request for choices ``i .. i + k - 1`` sends ``seed = prompt_seed + i`` and
``n = k``: vLLM (``ParentRequest``: child ``j`` gets ``seed + j``) and ``llama-server``
(``server_task::add_child``: the same) then draw choice ``j`` with ``prompt_seed + i + j``, so a
set sampled in one request, in chunks, or one choice per request is the same set. When a server
returns fewer choices than asked (llama-cpp-python's bundled server ignores ``n``), the missing
ones are requested one by one, in parallel, each with its own seed, and that URL gets
single-choice requests from then on. ``llama-server`` accepts at most ``--parallel`` choices per
request; its ``/props`` says how many, and larger ``n`` is split.

Requests run on a thread pool (``concurrency``), spread over one or several base URLs (the least
busy first), with exponential backoff on connection errors, timeouts, 429 and 5xx.

What the log-probabilities mean
-------------------------------
``logp`` is the sum over the generated tokens of the server's per-token ``logprob``, and
``logq`` is rebuilt token by token from the same response:

- ``llama-server`` (``post_sampling_probs`` false, the default sent here) returns
  ``log softmax(raw logits)`` of the sampled token and of the ``n_probs`` most probable ones,
  computed before the sampler chain (``get_token_probabilities``): the raw model, exactly ``p``.
  With ``post_sampling_probs`` true it would return probabilities after the chain instead (``q``),
  never both in one response. The chain order is sent as ``samplers = [top_k, temperature,
  top_p, min_p]``, which is the order of :func:`metricwise.backends.hf.process_logits` (top-k
  and temperature commute), and every other sampler is switched off.
- vLLM returns raw log-probabilities by default (``--logprobs-mode raw_logprobs``: "before
  applying any logit processors"); ``processed_logprobs`` is a server-wide flag. Its sampler
  applies temperature, then min-p, then top-k and top-p (``vllm/v1/sample/sampler.py``), and q is
  rebuilt in that order. It caps the alternatives per token at ``--max-logprobs`` (20).
- Any other server: assumed raw, hf order.

``q`` of a token is rebuilt from the raw log-probabilities of the top-N alternatives the server
returned (``top_logprobs``; N is raised to ``top_k`` when top-k is on): temperature divides the
log-probabilities, and top-k, top-p and min-p are applied to that list. The result is **exact**
when the tokens the sampler kept all lie in that list (always with ``top_k <= N``; with top-p
when the nucleus closes inside the list and either temperature is 1 or the list holds all the
mass; with min-p when the last listed token falls below the threshold), and for plain ancestral
sampling at temperature 1 (``logq == logp``). Otherwise it is an **approximation**: the
unlisted tail (whose raw mass ``1 - sum(listed)`` is known exactly) is treated as if every tail
token were as probable as the last listed one, which overestimates the tail's tempered weight for
temperature < 1 (so ``logq`` is a slight underestimate there) and underestimates it above 1.
:attr:`OpenAIBackend.logq_exact` counts exact and approximated candidates of the last call,
and a warning says when any was approximated; raise ``top_logprobs`` (``llama-server`` has no
cap; vLLM's is ``--max-logprobs``) to make more of them exact.

Server quirks that reach the numbers:

- ``llama-server`` leaves out of ``logprobs`` the tokens of a stop string (it drops as many
  trailing entries as the stop string has tokens on its own) and tokens that end inside a UTF-8
  character; ``logp``, ``logq`` and ``n_tokens`` are over the tokens it reports. The hf and
  llamacpp backends include the token that completes the stop string.
- Finish reasons: ``length`` -> ``"length"``; ``stop`` -> ``"stop"`` when vLLM's ``stop_reason``
  names a stop string or, on other servers, when stop strings were asked for and the last
  reported token is not an empty (end-of-generation) token; otherwise ``"eos"``.
- Reproducibility: the seeds fix every random number, but a server's logits move slightly
  (``llama-server`` on CPU: about 1e-2) with whatever else shares its batch and KV cache, so a
  repeated run can flip a token whose random number falls that close to a CDF boundary, and a
  flipped token changes the rest of the sample (against a four-slot server, 7 of 12
  twelve-token samples of a repeated run differed once). A one-slot server (``-np 1``) decodes
  each request alone and repeats bitwise. ``cache_prompt`` is sent false to ``llama-server``
  unless asked for (``cache_prompt=True``): logits computed from a cached prompt round
  differently again.
- Guards: the wall-clock budget (:attr:`Guards.max_seconds`) bounds one :meth:`sample` call,
  retries included; when it runs out the call raises :class:`~metricwise.errors.SamplingTimeout`
  and returns nothing (a timeout is a failure to sample, not a sample). The repetition detector
  runs over the returned token ids (or token strings) and cuts a candidate at the first token
  where it fires (``finish_reason="guard"``).

Failures
--------
Every request goes through one :class:`~metricwise.backends.http.RetryPolicy` (``timeout``
seconds per attempt, body included; ``max_retries``; exponential ``backoff``). Retried: refused
or dropped connections, timeouts, 429, 5xx, and answers that are not JSON or not of the expected
shape (no ``choices``, a choice that is not an object, a log-probability that is null, a string or
NaN, an unknown finish reason). A server that answers a request for one choice with none is
malformed too, so missing choices are never asked for without bound. When a request gives up, the
whole call raises :class:`~metricwise.errors.BackendError` naming the server and what it did, and
the requests still running are cancelled at once (their sockets are shut down).
"""

from __future__ import annotations

import concurrent.futures as cf
import inspect
import itertools
import json
import math
import threading
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from metricwise.backends.base import register_backend, sample_seed, sample_sets
from metricwise.backends.http import (
    Cancellation,
    HTTPStatusError,
    RetriesExhausted,
    RetryableError,
    RetryPolicy,
    request_json,
)
from metricwise.backends.sampling import SAMPLER_ORDER, is_ancestral
from metricwise.errors import BackendError, InvalidParameterError, SamplingTimeout
from metricwise.guards import Guards, is_repeating
from metricwise.types import Candidate, SampleSet, SamplingConfig, TokenLogprob

#: Sampler orders used to rebuild q: hf's (llama-server is told to use it) and vLLM's.
HF_ORDER: tuple[str, ...] = SAMPLER_ORDER
VLLM_ORDER: tuple[str, ...] = ("temperature", "min_p", "top_k", "top_p")
#: Seeds stay below 2**31 - 1 (llama-server parses them as int32; -1 means "random").
_SEED_RANGE = 2**31 - 2**24
#: Raw tail mass below which the unlisted tokens are taken to be absent.
_TAIL_EPS = 1e-6
_SERVER_KINDS = ("auto", "llama.cpp", "vllm", "metricwise", "generic")
_ENDPOINTS = ("completions", "chat")
_MESSAGES = ("user", "json")


def request_seed(seed: int, prompt: str) -> int:
    """Integer seed of sample 0 of ``prompt``; sample ``i`` uses ``request_seed(seed, prompt) + i``.

    Derived from :func:`~metricwise.backends.base.sample_seed` (the run's seed and a hash of the
    prompt) so that different prompts get unrelated random streams on the server.
    """
    entropy = list(sample_seed(seed, 0, prompt))
    entropy[0] &= 0xFFFFFFFF
    state = np.random.SeedSequence(entropy)
    return int(state.generate_state(1, np.uint64)[0] % _SEED_RANGE)


# -- rebuilding q from the raw top-N log-probabilities ------------------------------------------------
def _logsumexp(values: np.ndarray, extra: float = -math.inf) -> float:
    top = max(float(values.max()) if values.size else -math.inf, extra)
    if top == -math.inf:
        return -math.inf
    total = float(np.exp(values - top).sum()) + (
        math.exp(extra - top) if extra > -math.inf else 0.0
    )
    return top + math.log(total)


def step_logq(
    top_logprobs: Sequence[float],
    chosen_logprob: float,
    chosen_in_top: bool,
    config: SamplingConfig,
    order: Sequence[str] = HF_ORDER,
) -> tuple[float, bool]:
    """Log-probability (nats) of the sampled token under the sampling distribution q.

    Parameters
    ----------
    top_logprobs : sequence of float, shape (N,)
        Raw log-probabilities (nats, temperature 1) of the N most probable tokens, any order.
    chosen_logprob : float
        Raw log-probability of the sampled token.
    chosen_in_top : bool
        Whether the sampled token is one of the N.
    config : SamplingConfig
        Temperature (> 0), top-k, top-p and min-p of the sampler.
    order : sequence of str
        The order the sampler applies ``"temperature"``, ``"top_k"``, ``"top_p"``, ``"min_p"``.

    Returns
    -------
    (logq, exact)
        ``exact`` is False when tokens outside the list could have been kept (see the module
        docstring for the tail approximation). Cost O(N log N).
    """
    temperature = config.temperature
    top = np.sort(np.asarray(top_logprobs, dtype=np.float64))[::-1]
    chosen_logprob = float(chosen_logprob)
    if chosen_in_top and bool(np.any(top == chosen_logprob)):
        known = top
    else:  # listed apart from the top-N (or its value differs in rounding): add it
        known = np.sort(np.append(top, chosen_logprob))[::-1]
    chosen_pos = int(np.flatnonzero(known == chosen_logprob)[0])
    if is_ancestral(config):
        return float(chosen_logprob), True
    scaled = known / temperature
    # The unlisted tail: its raw mass is exact; its tempered weight is not unless T == 1.
    tail_mass = max(0.0, 1.0 - float(np.exp(known).sum()))
    floor = float(top[-1]) if top.size else float(chosen_logprob)
    if tail_mass <= _TAIL_EPS:
        log_tail, tail_exact = -math.inf, True
    else:
        log_tail = math.log(tail_mass) + floor * (1.0 / temperature - 1.0)
        tail_exact = temperature == 1.0
    exact = True
    keep = np.ones(known.size, dtype=bool)
    for step in order:
        if step == "top_k" and config.top_k > 0:
            if config.top_k <= top.size:
                keep &= known >= top[config.top_k - 1]
                log_tail = -math.inf  # every kept token is listed
            elif log_tail > -math.inf:
                exact = False  # some unlisted tokens survive top-k; keep the whole tail
        elif step == "top_p" and config.top_p < 1.0:
            log_z = _logsumexp(scaled[keep], log_tail)
            probs = np.where(keep, np.exp(scaled - log_z), 0.0)
            before = np.cumsum(probs) - probs
            listed_mass = float(probs.sum())
            if log_tail > -math.inf and not tail_exact:
                exact = False  # the nucleus was cut with an estimated normaliser
            if listed_mass >= config.top_p or log_tail == -math.inf:
                keep &= before < config.top_p  # the most probable kept token has 0 before it
                log_tail = -math.inf
            else:
                # The nucleus reaches into the tail: keep just enough of it.
                exact = False
                log_tail = math.log(config.top_p - listed_mass) + log_z
        elif step == "min_p" and config.min_p > 0.0:
            best = float(scaled[keep].max()) if keep.any() else float(scaled.max())
            threshold = best + math.log(config.min_p)
            keep &= scaled >= threshold
            if log_tail > -math.inf and floor / temperature >= threshold:
                exact = False  # unlisted tokens may pass the threshold; keep the tail
            else:
                log_tail = -math.inf
    if log_tail > -math.inf and not tail_exact:
        exact = False  # unlisted tokens are kept with an estimated weight
    if not keep[chosen_pos]:
        # The server kept a token this rebuild removed (ties, or a different sampler).
        keep[chosen_pos] = True
        exact = False
    log_z = _logsumexp(scaled[keep], log_tail)
    return float(scaled[chosen_pos] - log_z), exact


# -- response parsing -------------------------------------------------------------------------------
# A server's answer is checked field by field: anything of the wrong shape is a malformed answer
# (retried, then reported with what was wrong), never a candidate.
@dataclass
class _Step:
    key: Any  # token id when the server gives it, else the token string
    text: bytes
    logprob: float
    top: list[tuple[Any, float]]
    top_text: list[str] = field(default_factory=list)  # the alternatives' texts


def _malformed(what: str) -> RetryableError:
    return RetryableError(f"answered with malformed JSON: {what}")


def _logprob(value: Any, where: str, *, chosen: bool) -> float:
    """A log-probability from a response: a finite number (``-inf`` allowed for alternatives)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _malformed(f"{where} has log-probability {value!r} (expected a number)")
    value = float(value)
    if math.isnan(value) or value == math.inf or (chosen and value == -math.inf):
        raise _malformed(f"{where} has log-probability {value!r} (expected a finite number)")
    return value


def _entry_bytes(entry: dict[str, Any]) -> bytes:
    raw = entry.get("bytes")
    if isinstance(raw, list):
        try:
            return bytes(int(b) & 0xFF for b in raw)
        except (TypeError, ValueError):
            pass
    return str(entry.get("token", "")).encode("utf-8")


def _parse_steps(logprobs: Any, where: str) -> list[_Step] | None:
    """Per-token log-probabilities in either format: ``{"content": [...]}`` or the legacy lists.

    None when the server sent none; raises :class:`RetryableError` when they are malformed.
    """
    if logprobs is None:
        return None
    if not isinstance(logprobs, dict):
        raise _malformed(f"the logprobs of {where} are {type(logprobs).__name__}, not an object")
    content = logprobs.get("content")
    if isinstance(content, list):
        steps = []
        for t, entry in enumerate(content):
            at = f"token {t} of {where}"
            if not isinstance(entry, dict):
                raise _malformed(f"{at} is {type(entry).__name__}, not an object")
            top_entries = entry.get("top_logprobs") or []
            if not isinstance(top_entries, list) or not all(
                isinstance(e, dict) for e in top_entries
            ):
                raise _malformed(f"the top_logprobs of {at} are not a list of objects")
            top = [
                (
                    e.get("id", e.get("token")),
                    _logprob(e.get("logprob"), f"an alternative of {at}", chosen=False),
                )
                for e in top_entries
            ]
            key = entry.get("id", entry.get("token"))
            steps.append(
                _Step(
                    key,
                    _entry_bytes(entry),
                    _logprob(entry.get("logprob"), at, chosen=True),
                    top,
                    [str(e.get("token", "")) for e in top_entries],
                )
            )
        return steps
    tokens = logprobs.get("tokens")
    values = logprobs.get("token_logprobs")
    if isinstance(tokens, list) and isinstance(values, list):
        tops = logprobs.get("top_logprobs") or [None] * len(tokens)
        if len(values) != len(tokens) or not isinstance(tops, list):
            raise _malformed(
                f"the logprobs of {where} have {len(tokens)} tokens but {len(values)} log-probabilities"
            )
        steps = []
        for t, (token, value, top) in enumerate(zip(tokens, values, tops, strict=False)):
            at = f"token {t} of {where}"
            if top is not None and not isinstance(top, dict):
                raise _malformed(f"the top_logprobs of {at} are not an object")
            alternatives = [
                (k, _logprob(v, f"an alternative of {at}", chosen=False))
                for k, v in (top or {}).items()
            ]
            steps.append(
                _Step(
                    token,
                    str(token).encode("utf-8"),
                    _logprob(value, at, chosen=True),
                    alternatives,
                    [str(k) for k, _ in alternatives],
                )
            )
        return steps
    if content is None and tokens is None:
        return None  # an empty logprobs object: none were given
    raise _malformed(
        f"the logprobs of {where} are neither {{'content': [...]}} nor the legacy token lists"
    )


@dataclass
class _Server:
    """One base URL and what was learnt about it."""

    url: str  # ends with /v1
    kind: str | None = None  # llama.cpp, vllm, generic
    max_n: int | None = None  # most choices per request; None = no known limit
    in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def root(self) -> str:
        return self.url[: -len("/v1")] if self.url.endswith("/v1") else self.url


def _normalise_url(url: Any) -> str:
    if not isinstance(url, str) or not url.strip().lower().startswith(("http://", "https://")):
        raise InvalidParameterError(
            f"The 'base_url' parameter of OpenAIBackend must be an http(s) URL such as "
            f"'http://127.0.0.1:8080/v1'. Got {url!r} instead."
        )
    url = url.strip().rstrip("/")
    for suffix in ("/chat/completions", "/completions"):
        if url.endswith(suffix):
            url = url[: -len(suffix)]
    return url if url.endswith("/v1") else url + "/v1"


def _split_urls(base_url: str | Sequence[str]) -> list[str]:
    if isinstance(base_url, str):
        parts = [p for p in base_url.replace(";", " ").split() if p]
    elif isinstance(base_url, Sequence):
        parts = list(base_url)
    else:
        parts = [base_url]
    if not parts:
        raise InvalidParameterError(
            f"The 'base_url' parameter of OpenAIBackend must name at least one URL. Got {base_url!r} instead."
        )
    return [_normalise_url(p) for p in parts]


#: Seconds without any answer after which a call warns that it is still waiting.
QUIET_WARNING_SECONDS = 30.0


@dataclass
class _Job:
    prompt_index: int
    first: int  # sample index of the first choice asked for
    count: int
    token_logprobs: int | None = None  # per-token alternatives asked for by the caller


class OpenAIBackend:
    """Sample from one or several OpenAI-compatible servers (see the module docstring).

    Parameters
    ----------
    base_url : str or list of str
        ``http://host:port`` or ``http://host:port/v1``; several URLs (a list, or one string
        separated by spaces or ``;``) share the load, the least busy first, and a request that
        fails on one is retried on another.
    model : str, optional
        The served model's name; asked from ``GET /v1/models`` (the first one) when omitted.
    endpoint : {"completions", "chat"}
        ``/v1/completions`` with the prompt as text, or ``/v1/chat/completions`` with the prompt
        as one user message (the server applies the chat template).
    messages : {"user", "json"}
        With ``endpoint="chat"``: how a prompt becomes the request's ``messages``. ``"user"``:
        the prompt is one user message. ``"json"``: the prompt is a JSON array of chat messages
        (``[{"role": "system", "content": ...}, ...]``) sent as it is, so that a conversation
        reaches the server whole (``metricwise serve`` forwards chat requests this way).
    api_key : str, optional
        Sent as ``Authorization: Bearer``.
    timeout : float
        Seconds one HTTP request may take, from connecting to the last byte of the answer (a
        generation of ``n`` x ``max_tokens`` tokens included).
    max_retries : int
        Retries of a request after a connection error, a timeout, 429, 5xx or a malformed answer,
        with exponential backoff from ``backoff`` seconds (doubling, capped at 30 s, honouring
        ``Retry-After``). See :class:`~metricwise.backends.http.RetryPolicy`.
    concurrency : int
        Requests in flight at once, over all URLs.
    guards : Guards, optional
        ``max_seconds`` bounds one :meth:`sample` call, retries included (past it the call raises
        :class:`~metricwise.errors.SamplingTimeout`); the repetition detector cuts candidates.
    top_logprobs : int
        Alternatives asked per token to rebuild q (raised to ``top_k`` when top-k is on).
    server : {"auto", "llama.cpp", "vllm", "metricwise", "generic"}
        What kind of server it is; ``"auto"`` asks ``/props`` (llama-server) and ``/version``
        (vLLM, or ``metricwise serve``, whose answer says ``"server": "metricwise"``). It chooses
        the extra parameters sent and the sampler order q is rebuilt in. A ``metricwise serve``
        gets the run's seed and the first sample's index (``first_sample``), so its samples
        are the ones its backend would draw directly.
    cache_prompt : bool
        Let ``llama-server`` keep a prompt's KV cache in its slot between requests, so that the
        requests of one prompt (its N samples, the rounds of adaptive sampling) evaluate the
        prompt once: later ones only its last token. Off by default because logits computed
        from a cached prompt round differently from a fresh prefill (as a shared batch does,
        see Reproducibility above), so a sample depends on what the server had cached (on a
        one-slot server, 28 of 48 sixteen-token samples differed from uncached ones; each
        setting repeated itself exactly). vLLM and hosted APIs cache
        prefixes on their own side (their ``usage`` says how much, see
        :attr:`cached_prompt_tokens`); this option sends nothing to them.
    extra_body : dict, optional
        Added to every request body last (overrides).
    signature : str, optional
        Identifies the model in the sample store; ``openai:<model>`` by default.
    """

    def __init__(
        self,
        base_url: str | Sequence[str],
        model: str | None = None,
        *,
        endpoint: str = "completions",
        messages: str = "user",
        api_key: str | None = None,
        timeout: float = 300.0,
        max_retries: int = 4,
        backoff: float = 0.5,
        concurrency: int = 8,
        guards: Guards | None = None,
        top_logprobs: int = 20,
        server: str = "auto",
        cache_prompt: bool = False,
        extra_body: dict[str, Any] | None = None,
        signature: str | None = None,
    ) -> None:
        if endpoint not in _ENDPOINTS:
            raise InvalidParameterError(
                f"The 'endpoint' parameter of OpenAIBackend must be one of {_ENDPOINTS}. Got {endpoint!r} instead."
            )
        if messages not in _MESSAGES:
            raise InvalidParameterError(
                f"The 'messages' parameter of OpenAIBackend must be one of {_MESSAGES}. Got {messages!r} instead."
            )
        if server not in _SERVER_KINDS:
            raise InvalidParameterError(
                f"The 'server' parameter of OpenAIBackend must be one of {_SERVER_KINDS}. Got {server!r} instead."
            )
        self.retry = RetryPolicy(timeout=timeout, max_retries=max_retries, backoff=backoff)
        for name, value, low in (
            ("concurrency", concurrency, 1),
            ("top_logprobs", top_logprobs, 1),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise InvalidParameterError(
                    f"The '{name}' parameter of OpenAIBackend must be an int >= {low}. Got {value!r} instead."
                )
        if not isinstance(cache_prompt, bool):
            raise InvalidParameterError(
                f"The 'cache_prompt' parameter of OpenAIBackend must be True or False. Got {cache_prompt!r} instead."
            )
        if extra_body is not None and not isinstance(extra_body, dict):
            raise InvalidParameterError(
                f"The 'extra_body' parameter of OpenAIBackend must be a dict. Got {extra_body!r} instead."
            )
        self.servers = [_Server(url) for url in _split_urls(base_url)]
        self.endpoint = endpoint
        self.messages = messages
        self.concurrency = concurrency
        self.guards = guards or Guards()
        self.top_logprobs = top_logprobs
        self.server_kind = server
        self.cache_prompt = cache_prompt
        self.extra_body = dict(extra_body or {})
        self.headers = {"Accept": "application/json"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self._rotation = itertools.count()
        self._pool_lock = threading.Lock()
        self._executor: cf.ThreadPoolExecutor | None = None
        #: HTTP requests sent by the last :meth:`sample` or :meth:`greedy` call (retries included).
        self.requests_sent = 0
        #: ``{"exact": k, "approximate": m}``: how the last call's ``logq`` values were obtained.
        self.logq_exact: dict[str, int] = {"exact": 0, "approximate": 0}
        #: Prompt tokens of all answers since the backend was made, and how many of them the
        #: server took from its prefix cache (``usage.prompt_tokens`` and
        #: ``usage.prompt_tokens_details.cached_tokens``; 0 where a server does not report them).
        self.prompt_tokens = 0
        self.cached_prompt_tokens = 0
        self.model = model if model else self._served_model()
        self.signature = signature or f"openai:{self.model}"

    # -- protocol --------------------------------------------------------------------------------
    def sample(
        self,
        prompts: Sequence[str],
        config: SamplingConfig,
        *,
        start: int = 0,
        cancel: Cancellation | None = None,
        token_logprobs: int | None = None,
    ) -> list[SampleSet]:
        """The protocol's ``sample``; ``cancel``, when given, ends the call's requests from outside.

        ``token_logprobs=k`` also gives every candidate the server's per-token log-probabilities
        with ``k`` alternatives each (:attr:`~metricwise.types.Candidate.tokens`), as returned.

        Cancelling it (from any thread) closes the call's open connections and makes the call
        raise :class:`~metricwise.backends.http.Cancelled` within a moment: ``metricwise serve``
        does this when the client that asked for the samples disconnects.
        """
        return sample_sets(
            prompts,
            config,
            start,
            lambda batch, c: self.greedy(batch, c, cancel=cancel, token_logprobs=token_logprobs),
            lambda batch, m: self._run(
                batch, config, start, m, greedy=False, cancel=cancel, token_logprobs=token_logprobs
            ),
        )

    def greedy(
        self,
        prompts: Sequence[str],
        config: SamplingConfig,
        *,
        cancel: Cancellation | None = None,
        token_logprobs: int | None = None,
    ) -> list[Candidate]:
        results = self._run(
            list(prompts), config, 0, 1, greedy=True, cancel=cancel, token_logprobs=token_logprobs
        )
        return [row[0] for row in results]

    def _retries_left(self, deadline: float) -> str:
        """How a request abandoned now would be retried: as often as --max_retries says, or as
        the whole attempts that fit before the batch's ``deadline`` (--max_seconds) allow."""
        if self.retry.max_retries == 0:
            return "not retried (--max_retries 0)"
        left = deadline - time.monotonic()
        # The attempt in flight may take up to one more --timeout; whole attempts after it.
        fit = (
            math.floor((left - self.retry.timeout) / self.retry.timeout)
            if left < math.inf
            else None
        )
        if fit is not None and fit < 1:
            return (
                f"not retried: the batch's wall-clock budget (--max_seconds) ends in {left:.0f} s, "
                "too soon for another attempt"
            )
        if fit is not None and fit < self.retry.max_retries:
            return (
                f"retried up to {fit} times, all that fit in the {left:.0f} s left of the batch's "
                f"wall-clock budget (--max_seconds; --max_retries is {self.retry.max_retries})"
            )
        return f"retried up to {self.retry.max_retries} times (--max_retries)"

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    def __enter__(self) -> OpenAIBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- teacher-forced scoring ----------------------------------------------------------------
    def continuation_logprobs(
        self, prompts: Sequence[str], continuations: Sequence[str]
    ) -> np.ndarray:
        """Shape (P, K) float64: the server's log-probability (nats) of each continuation as the
        first token after each prompt.

        One request per prompt for a one-token greedy completion with the top
        ``top_logprobs`` alternatives of that token (``logprobs`` / ``top_logprobs``, and
        ``n_probs`` for ``llama-server``, raw probabilities before any sampler). Each
        continuation is looked up by its exact text (" 3" and "3" differ) among the
        alternatives and the chosen token:

        - a continuation that is not listed gets ``-inf``: its true log-probability is at most
          the smallest listed one, and the server does not say more. It also stands for a
          continuation of several tokens, which cannot be teacher-forced through this API;
        - a row where none is listed is all ``-inf`` (the ``judge`` counts it unparsable);
          raise ``top_logprobs`` (``llama-server`` has no cap, vLLM's is ``--max-logprobs``).

        Raises :class:`~metricwise.backends.base.LogprobsUnavailable` when the server answers
        without log-probabilities, and :class:`~metricwise.errors.BackendError` when it fails.
        """
        from metricwise.backends.base import LogprobsUnavailable

        config = SamplingConfig(n=1, temperature=0.0, max_tokens=1)
        deadline = self.guards.deadline()
        cancel = Cancellation()
        for server in self.servers:
            self._detect(server, cancel)

        def one(prompt: str) -> dict[str, float] | None:
            def send(attempt: int, timeout: float) -> dict[str, float] | None:
                server = self._acquire(set())
                body = self._payload(server, prompt, _Job(0, 0, 1), config, True)
                if self.endpoint == "chat":
                    body["top_logprobs"] = self.top_logprobs
                else:
                    body["logprobs"] = self.top_logprobs
                if server.kind == "llama.cpp":
                    body["n_probs"] = self.top_logprobs
                url = f"{server.url}/{'chat/completions' if self.endpoint == 'chat' else 'completions'}"
                try:
                    answer = request_json(url, body, self.headers, timeout, cancel)
                    choices = answer.get("choices") if isinstance(answer, dict) else None
                    if not isinstance(choices, list) or not choices:
                        raise _malformed(f"no choices in {str(answer)[:200]}")
                    if not isinstance(choices[0], dict):
                        raise _malformed(f"choice 0 is {choices[0]!r}, not an object")
                    return _first_token_alternatives(choices[0].get("logprobs"), "choice 0")
                except RetryableError as exc:
                    raise RetryableError(
                        f"{server.url}: {exc}", exc.retry_after, timed_out=exc.timed_out
                    ) from None
                finally:
                    self._release(server)

            try:
                return self.retry.run(send, deadline=deadline, cancel=cancel, budget=self._budget())
            except HTTPStatusError as exc:
                raise BackendError(
                    f"The OpenAI-compatible server at {self._urls()} refused the request: {exc}"
                ) from None
            except RetriesExhausted as exc:
                raise BackendError(
                    f"The OpenAI-compatible server at {self._urls()} is failing after "
                    f"{len(exc.errors)} attempts: {exc.errors[-1]}"
                ) from None

        out = np.full((len(prompts), len(continuations)), -math.inf)
        for p, prompt in enumerate(prompts):
            listed = one(prompt)
            if listed is None:
                raise LogprobsUnavailable(
                    f"The OpenAI-compatible server at {self._urls()} answered without "
                    "log-probabilities."
                )
            for k, text in enumerate(continuations):
                if text in listed:
                    out[p, k] = listed[text]
        return out

    # -- scheduling ------------------------------------------------------------------------------
    def _run(
        self,
        prompts: list[str],
        config: SamplingConfig,
        start: int,
        m: int,
        *,
        greedy: bool,
        cancel: Cancellation | None = None,
        token_logprobs: int | None = None,
    ) -> list[list[Candidate]]:
        self.requests_sent = 0
        self.logq_exact = {"exact": 0, "approximate": 0}
        if not prompts:
            return []
        deadline = self.guards.deadline()
        cancel = cancel if cancel is not None else Cancellation()
        pending: dict[cf.Future[list[Candidate]], _Job] = {}
        results: list[list[Candidate | None]] = [[None] * m for _ in prompts]
        try:
            for server in self.servers:
                self._detect(server, cancel)
            limit = min((s.max_n or m) for s in self.servers) if not greedy else 1
            if self._executor is None:
                self._executor = cf.ThreadPoolExecutor(
                    max_workers=self.concurrency, thread_name_prefix="metricwise-openai"
                )
            executor = self._executor

            def submit(job: _Job) -> None:
                future = executor.submit(
                    self._request, prompts[job.prompt_index], job, config, greedy, deadline, cancel
                )
                pending[future] = job

            for p in range(len(prompts)):
                for first in range(start, start + m, limit):
                    submit(_Job(p, first, min(limit, start + m - first), token_logprobs))
            quiet_since = time.monotonic()
            while pending:
                done, _ = cf.wait(
                    list(pending), timeout=QUIET_WARNING_SECONDS, return_when=cf.FIRST_COMPLETED
                )
                if not done:
                    # Nothing answered for a while: say so rather than wait in silence for
                    # --timeout (a stopped llama-server keeps its connections open).
                    warnings.warn(
                        f"No answer from {self._urls()} for {time.monotonic() - quiet_since:.0f} s "
                        f"({len(pending)} requests in flight); a request is abandoned after "
                        f"{self.retry.timeout:g} s (--timeout) and {self._retries_left(deadline)}.",
                        stacklevel=3,
                    )
                    continue
                quiet_since = time.monotonic()
                for future in done:
                    job = pending.pop(future)
                    got = future.result()  # a failed request fails the call (and cancels the rest)
                    for k, candidate in enumerate(got[: job.count]):
                        results[job.prompt_index][job.first - start + k] = candidate
                    # Fewer choices than asked: ask for each missing one with its own seed. A
                    # single-choice request never comes back empty (that is a malformed answer),
                    # so this ends.
                    for k in range(len(got), job.count):
                        submit(_Job(job.prompt_index, job.first + k, 1, job.token_logprobs))
        except BaseException:
            cancel.cancel()
            for future in pending:
                future.cancel()
            raise
        approximate = self.logq_exact["approximate"]
        if approximate and not greedy:
            warnings.warn(
                f"logq of {approximate} of {approximate + self.logq_exact['exact']} candidates is approximated: "
                f"the sampler kept tokens beyond the top {self._top_n(config)} log-probabilities the server "
                "returned (raise top_logprobs for exact values).",
                stacklevel=3,
            )
        missing = sum(c is None for row in results for c in row)
        if missing:  # unreachable: every job either filled its rows or raised
            raise BackendError(f"{missing} samples were neither received nor reported as failed.")
        return [[c for c in row if c is not None] for row in results]

    def _acquire(self, avoid: set[str]) -> _Server:
        with self._pool_lock:
            turn = next(self._rotation)
            order = (
                self.servers[turn % len(self.servers) :] + self.servers[: turn % len(self.servers)]
            )
            choices = [s for s in order if s.url not in avoid] or order
            server = min(choices, key=lambda s: s.in_flight)
            server.in_flight += 1
            return server

    def _release(self, server: _Server) -> None:
        with self._pool_lock:
            server.in_flight -= 1

    def _urls(self) -> str:
        return ", ".join(s.url for s in self.servers)

    # -- one request -----------------------------------------------------------------------------
    def _request(
        self,
        prompt: str,
        job: _Job,
        config: SamplingConfig,
        greedy: bool,
        deadline: float,
        cancel: Cancellation,
    ) -> list[Candidate]:
        """The choices of one job; fewer than asked only when the server does not honour ``n``."""
        avoid: set[str] = set()

        def send(attempt: int, timeout: float) -> list[Candidate]:
            server = self._acquire(avoid)
            payload = self._payload(server, prompt, job, config, greedy)
            url = f"{server.url}/{'chat/completions' if self.endpoint == 'chat' else 'completions'}"
            try:
                with self._pool_lock:
                    self.requests_sent += 1
                answer = request_json(url, payload, self.headers, timeout, cancel)
                return self._parse(answer, server, job, config, greedy)
            except RetryableError as exc:
                if len(self.servers) > 1:
                    avoid.add(server.url)  # fail over to another URL
                raise RetryableError(
                    f"{server.url}: {exc}", exc.retry_after, timed_out=exc.timed_out
                ) from None
            except HTTPStatusError as exc:
                if job.count > 1 and exc.status in (400, 422):
                    # Some servers refuse n > 1 (or more than their slots): one choice per request.
                    server.max_n = 1
                raise HTTPStatusError(exc.status, f"{server.url}: {exc}") from None
            finally:
                self._release(server)

        try:
            return self.retry.run(send, deadline=deadline, cancel=cancel, budget=self._budget())
        except HTTPStatusError as exc:
            if job.count > 1 and exc.status in (400, 422):
                return []  # the missing choices are asked for one by one
            url, _, detail = str(exc).partition(": ")
            raise BackendError(
                f"The OpenAI-compatible server at {url} refused the request: {detail}"
            ) from None
        except SamplingTimeout as exc:
            raise SamplingTimeout(
                f"The OpenAI-compatible server at {self._urls()} gave {exc}."
            ) from None
        except RetriesExhausted as exc:
            failed = sorted({e.split(": ")[0] for e in exc.errors})
            if exc.timed_out:
                state = "not answering in time"
            elif all("connection failed" in e for e in exc.errors):
                state = "unreachable"
            else:
                state = "failing"
            message = (
                f"The OpenAI-compatible server at {', '.join(failed)} is {state} after {len(exc.errors)} attempt{'s' if len(exc.errors) != 1 else ''}: "
                f"{exc.errors[-1].partition(': ')[2]}"
            )
            # A server that hangs is a timeout (a gateway answers 504 for it), not an error answer.
            raise (SamplingTimeout if exc.timed_out else BackendError)(message) from None

    def _budget(self) -> str:
        seconds = self.guards.max_seconds
        return (
            "the wall-clock budget"
            if seconds is None
            else f"the wall-clock budget of {seconds:g} s for one batch (--max_seconds)"
        )

    def _top_n(self, config: SamplingConfig) -> int:
        n = self.top_logprobs
        if config.top_k > 0:
            n = max(n, config.top_k)
        return n

    def _payload(
        self, server: _Server, prompt: str, job: _Job, config: SamplingConfig, greedy: bool
    ) -> dict[str, Any]:
        kind = server.kind or "generic"
        top_n = max(self._top_n(config) if not greedy else 1, job.token_logprobs or 0)
        body: dict[str, Any] = {
            "model": self.model,
            "n": job.count,
            "max_tokens": config.max_tokens,
            "temperature": 0.0 if greedy else config.temperature,
            "top_p": 1.0 if greedy else config.top_p,
            "top_k": (0 if kind == "llama.cpp" else -1)
            if greedy or config.top_k == 0
            else config.top_k,
            "min_p": 0.0 if greedy else config.min_p,
            "seed": request_seed(config.seed, prompt) + job.first,
            "stop": list(config.stop) if config.stop or kind != "generic" else None,
            "presence_penalty": 0.0,
            "frequency_penalty": 0.0,
            "stream": False,
        }
        if self.endpoint == "chat":
            body["messages"] = (
                _json_messages(prompt)
                if self.messages == "json"
                else [{"role": "user", "content": prompt}]
            )
            body["logprobs"] = True
            body["top_logprobs"] = top_n
        else:
            body["prompt"] = prompt
            body["logprobs"] = top_n
        if kind == "llama.cpp":
            body.update(
                {
                    "n_probs": top_n,
                    "post_sampling_probs": False,
                    "samplers": ["top_k", "temperature", "top_p", "min_p"],
                    "repeat_penalty": 1.0,
                    "repeat_last_n": 0,
                    "dry_multiplier": 0.0,
                    "typical_p": 1.0,
                    "xtc_probability": 0.0,
                    "top_n_sigma": -1.0,
                    "mirostat": 0,
                    "dynatemp_range": 0.0,
                    "min_keep": 0,
                    "ignore_eos": False,
                    # Off unless asked: logits from a cached prompt (its last token alone) round
                    # differently from a fresh prefill, and runs would not repeat.
                    "cache_prompt": self.cache_prompt,
                }
            )
        elif kind == "vllm":
            body.update({"repetition_penalty": 1.0, "min_tokens": 0, "ignore_eos": False})
        elif kind == "metricwise":
            # metricwise serve draws sample i of a prompt from the stream of (seed, i, prompt),
            # as the local backends do: send the run's seed and the first sample's index, so
            # that samples drawn through it are the ones its backend draws directly.
            body["seed"] = int(config.seed)
            body["first_sample"] = job.first
        body.update(self.extra_body)
        return body

    def _count_prompt_tokens(self, usage: Any) -> None:
        """Add an answer's prompt tokens, and those its server had cached, to the counts."""
        if not isinstance(usage, dict):
            return
        details = usage.get("prompt_tokens_details")
        cached = details.get("cached_tokens") if isinstance(details, dict) else None
        with self._pool_lock:
            for attribute, value in (
                ("prompt_tokens", usage.get("prompt_tokens")),
                ("cached_prompt_tokens", cached),
            ):
                if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                    setattr(self, attribute, getattr(self, attribute) + value)

    def _parse(
        self, answer: Any, server: _Server, job: _Job, config: SamplingConfig, greedy: bool
    ) -> list[Candidate]:
        choices = answer.get("choices") if isinstance(answer, dict) else None
        if not isinstance(choices, list):
            raise _malformed(f"no 'choices' list in {str(answer)[:200]}")
        if not choices:
            raise _malformed(f"an empty 'choices' list (asked for {job.count})")
        self._count_prompt_tokens(answer.get("usage"))
        for k, choice in enumerate(choices):
            if not isinstance(choice, dict):
                raise _malformed(f"choice {k} is {choice!r}, not an object")
            index = choice.get("index", 0)
            if isinstance(index, bool) or not isinstance(index, int):
                raise _malformed(f"choice {k} has index {index!r}, not an integer")
        if len(choices) < job.count:
            server.max_n = len(choices)  # it does not honour n: ask for the rest one by one
        choices = sorted(choices, key=lambda c: int(c.get("index", 0)))
        order = VLLM_ORDER if server.kind == "vllm" else HF_ORDER
        return [
            self._candidate(choice, k, config, greedy, order, job.token_logprobs)
            for k, choice in enumerate(choices[: job.count])
        ]

    def _candidate(
        self,
        choice: dict[str, Any],
        k: int,
        config: SamplingConfig,
        greedy: bool,
        order: Sequence[str],
        token_logprobs: int | None = None,
    ) -> Candidate:
        where = f"choice {k}"
        if self.endpoint == "chat":
            message = choice.get("message")
            content = message.get("content") if isinstance(message, dict) else None
            if not isinstance(message, dict) or not isinstance(content, (str, type(None))):
                raise _malformed(f"{where} has no message with text content: {str(message)[:100]}")
            text = content or ""
        else:
            raw_text = choice.get("text")
            if not isinstance(raw_text, str):
                raise _malformed(f"{where} has text {str(raw_text)[:100]!r} (expected a string)")
            text = raw_text
        steps = _parse_steps(choice.get("logprobs"), where)
        reason = self._finish_reason(choice, steps, config, where)
        if steps is None:
            return Candidate(text=text, n_tokens=None, finish_reason=reason)
        # Repetition guard over the returned tokens: cut at the first token where it fires.
        keys = [s.key for s in steps]
        if len(keys) >= self.guards.min_repeated_tokens:
            for length in range(self.guards.min_repeated_tokens, len(keys) + 1):
                if is_repeating(keys[:length], self.guards):
                    steps = steps[:length]
                    text = b"".join(s.text for s in steps).decode("utf-8", "replace")
                    reason = "guard"
                    break
        logp = float(sum(s.logprob for s in steps))
        if greedy:
            logq, exact = 0.0, True
        elif is_ancestral(config):
            # Plain sampling from the raw model: q is p, token by token (what step_logq returns
            # for each token, without its per-token work: a third of parsing an answer).
            logq, exact = logp, True
        else:
            logq, exact = 0.0, True
            for s in steps:
                keys_top = {k for k, _ in s.top}
                value, ok = step_logq(
                    [v for _, v in s.top], s.logprob, s.key in keys_top, config, order
                )
                logq += value
                exact = exact and ok
        with self._pool_lock:
            self.logq_exact["exact" if exact else "approximate"] += 1
        return Candidate(
            text=text,
            logp=logp,
            logq=logq,
            n_tokens=len(steps),
            finish_reason=reason,
            token_ids=_ids(steps),
            tokens=None if token_logprobs is None else _token_logprobs(steps, token_logprobs),
        )

    @staticmethod
    def _finish_reason(
        choice: dict[str, Any], steps: list[_Step] | None, config: SamplingConfig, where: str
    ) -> str:
        reason = choice.get("finish_reason")
        if reason == "length":
            return "length"
        if reason not in ("stop", "eos", None):
            # "abort", "error", "content_filter", ...: the server did not finish the sample.
            raise _malformed(f"{where} ended with finish_reason {reason!r}")
        if "stop_reason" in choice:  # vLLM: None for EOS, the stop string (or token id) otherwise
            return "eos" if choice["stop_reason"] is None else "stop"
        if not config.stop:
            return "eos"
        return "eos" if steps and steps[-1].text == b"" else "stop"

    # -- discovery -------------------------------------------------------------------------------
    def _served_model(self) -> str:
        errors = []
        for server in self.servers:
            try:
                answer = self._get(f"{server.url}/models")
            except (RetriesExhausted, HTTPStatusError, SamplingTimeout) as exc:
                errors.append(f"{server.url}: {exc}")
                continue
            data = answer.get("data") if isinstance(answer, dict) else None
            if isinstance(data, list) and data and isinstance(data[0], dict) and data[0].get("id"):
                return str(data[0]["id"])
            errors.append(f"{server.url}: /models listed no model")
        state = (
            "is unreachable"
            if all("connection failed" in e for e in errors)
            else "did not say which model it serves"
        )
        raise BackendError(
            f"The OpenAI-compatible server at {self._urls()} {state} "
            f"(asked GET /v1/models; name the model with --model (model= in Python) to skip the question): {'; '.join(errors)}"
        )

    def _get(
        self,
        url: str,
        cancel: Cancellation | None = None,
        *,
        timeout: float = 30.0,
        retries: bool = True,
    ) -> Any:
        """GET through the retry policy, each attempt bounded by ``timeout`` seconds as well."""
        policy = self.retry if retries else RetryPolicy(self.retry.timeout, 0, 0.0)
        return policy.run(
            lambda attempt, t: request_json(url, None, self.headers, min(t, timeout), cancel),
            cancel=cancel,
        )

    def _detect(self, server: _Server, cancel: Cancellation | None = None) -> None:
        """Learn the server's kind (and llama-server's slot count) once per URL."""
        with server.lock:
            if server.kind is not None:
                return
            props: Any = None  # llama-server's /props, once fetched
            if self.server_kind != "auto":
                kind = self.server_kind
            else:
                kind = "generic"
                for path, candidate in (("/props", "llama.cpp"), ("/version", "vllm")):
                    # A probe: a server without the endpoint answers 404 at once; no retries.
                    try:
                        answer = self._get(server.root + path, cancel, timeout=10.0, retries=False)
                    except (RetriesExhausted, HTTPStatusError, SamplingTimeout):
                        continue
                    if (
                        candidate == "llama.cpp"
                        and isinstance(answer, dict)
                        and ("default_generation_settings" in answer or "total_slots" in answer)
                    ):
                        kind, props = candidate, answer
                        break
                    if (
                        candidate == "vllm"
                        and isinstance(answer, dict)
                        and answer.get("server") == "metricwise"
                    ):
                        kind = "metricwise"
                        break
                    if (
                        candidate == "vllm"
                        and isinstance(answer, dict)
                        and set(answer) == {"version"}
                    ):
                        kind = candidate
                        break
            if kind == "llama.cpp" and server.max_n is None:
                try:
                    if props is None:  # told it is llama.cpp rather than found by the probe
                        props = self._get(
                            server.root + "/props", cancel, timeout=10.0, retries=False
                        )
                    slots = props.get("total_slots", 0) if isinstance(props, dict) else 0
                    slots = slots if isinstance(slots, int) and not isinstance(slots, bool) else 0
                except (RetriesExhausted, HTTPStatusError, SamplingTimeout):
                    slots = 0
                if slots > 0:
                    server.max_n = slots
            server.kind = kind


def _token_logprobs(steps: list[_Step], k: int) -> tuple[TokenLogprob, ...]:
    """The per-token log-probabilities of a choice as :class:`TokenLogprob`, ``k`` alternatives each."""

    def as_id(key: Any) -> int | None:
        return key if isinstance(key, int) and not isinstance(key, bool) else None

    return tuple(
        TokenLogprob(
            s.text.decode("utf-8", "replace"),
            s.logprob,
            as_id(s.key),
            tuple(
                (text, value, as_id(key))
                for (key, value), text in list(zip(s.top, s.top_text, strict=False))[:k]
            ),
        )
        for s in steps
    )


def _first_token_alternatives(logprobs: Any, where: str) -> dict[str, float] | None:
    """Token text -> log-probability of the first generated token and its listed alternatives.

    Reads both formats (``{"content": [...]}`` and the legacy lists); None when the server sent
    no log-probabilities. Texts come from ``bytes`` when given (a token that is part of a UTF-8
    character has no text of its own) and otherwise from ``token``.
    """
    if logprobs is None:
        return None
    if not isinstance(logprobs, dict):
        raise _malformed(f"the logprobs of {where} are {type(logprobs).__name__}, not an object")
    listed: dict[str, float] = {}

    def add(text: str, value: Any, at: str) -> None:
        value = _logprob(value, at, chosen=False)
        listed[text] = max(value, listed.get(text, -math.inf))

    content = logprobs.get("content")
    if isinstance(content, list):
        if not content:
            return None
        first = content[0]
        if not isinstance(first, dict):
            raise _malformed(f"token 0 of {where} is {type(first).__name__}, not an object")
        alternatives = first.get("top_logprobs") or []
        if not isinstance(alternatives, list) or not all(isinstance(e, dict) for e in alternatives):
            raise _malformed(f"the top_logprobs of token 0 of {where} are not a list of objects")
        for entry in [first, *alternatives]:
            text = _entry_bytes(entry).decode("utf-8", "replace")
            add(text, entry.get("logprob"), f"an alternative of token 0 of {where}")
        return listed
    tokens, values = logprobs.get("tokens"), logprobs.get("token_logprobs")
    if isinstance(tokens, list) and isinstance(values, list):
        if not tokens or not values:
            return None
        add(str(tokens[0]), values[0], f"token 0 of {where}")
        tops = logprobs.get("top_logprobs") or [None]
        top = tops[0] if isinstance(tops, list) and tops else None
        if top is not None and not isinstance(top, dict):
            raise _malformed(f"the top_logprobs of token 0 of {where} are not an object")
        for text, value in (top or {}).items():
            add(str(text), value, f"an alternative of token 0 of {where}")
        return listed
    return None


def _json_messages(prompt: str) -> list[Any]:
    """The chat messages a ``messages="json"`` prompt holds; refuses anything but a list of objects."""
    try:
        messages = json.loads(prompt)
    except ValueError:
        messages = None
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise InvalidParameterError(
            "With messages='json', each prompt of the openai backend must be a JSON array of chat "
            f"message objects. Got {prompt[:100]!r} instead."
        )
    return messages


def _ids(steps: list[_Step]) -> tuple[int, ...] | None:
    if steps and all(isinstance(s.key, int) for s in steps):
        return tuple(int(s.key) for s in steps)
    return None


@register_backend("openai")
def create_backend(model: str | None = None, **options: Any) -> OpenAIBackend:
    """Factory for :func:`metricwise.backends.load_backend`: ``load_backend("openai", model, base_url=...)``.

    ``model`` may itself be the URL when ``base_url`` is not given (then the served model is asked
    from the server). Options are those of :class:`OpenAIBackend`.
    """
    base_url = options.pop("base_url", None)
    if base_url is None:
        if isinstance(model, str) and model.strip().lower().startswith(("http://", "https://")):
            base_url, model = model, None
        else:
            raise InvalidParameterError(
                "The 'base_url' option of the openai backend is required (e.g. --model_args "
                f"base_url=http://127.0.0.1:8080/v1) unless the model is a URL. Got model {model!r} instead."
            )
    guards = options.pop("guards", None)
    return OpenAIBackend(base_url, model, guards=guards, **options)


# The factory forwards its options to OpenAIBackend: its signature says so, so that a misspelt
# --model_args key is refused by name before any request (load_backend reads it).
create_backend.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
    [
        inspect.Parameter("model", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None),
        *(
            p.replace(  # base_url too is an option here (the model may be the URL instead)
                kind=inspect.Parameter.KEYWORD_ONLY,
                default=None if p.default is inspect.Parameter.empty else p.default,
            )
            for n, p in inspect.signature(OpenAIBackend).parameters.items()
            if n != "model"
        ),
    ]
)
