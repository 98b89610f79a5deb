"""The backend protocol: N candidates per prompt, each with its log-probabilities.

A backend draws ``config.n`` candidates for every prompt and records, while sampling (never by a
second scoring pass), each candidate's ``logp`` (sequence log-probability under the raw model)
and ``logq`` (under the distribution it was drawn from, after temperature and truncation).

Sample ``i`` of a prompt is drawn with seed ``config.seed + i`` wherever the backend allows it,
so a stored set can be extended from n to 2n without changing its first n samples.
"""

from __future__ import annotations

import inspect
import re
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from metricwise.errors import (
    BackendError,
    InvalidParameterError,
    SamplingTimeout,
    UnknownNameError,
    did_you_mean,
)
from metricwise.guards import Guards, is_repeating, truncate_at_stop
from metricwise.registry import Registry
from metricwise.types import Candidate, SampleSet, SamplingConfig, TokenLogprob, sample_problem


@runtime_checkable
class Backend(Protocol):
    """What every sampling backend provides."""

    #: Identifies the model and backend for the sample store and result signatures.
    signature: str

    def sample(
        self, prompts: Sequence[str], config: SamplingConfig, *, start: int = 0
    ) -> list[SampleSet]:
        """Draw samples ``start .. config.n - 1`` for every prompt (seeds ``config.seed + i``).

        Returns one :class:`SampleSet` per prompt holding ``config.n - start`` candidates.
        """
        ...

    def greedy(self, prompts: Sequence[str], config: SamplingConfig) -> list[Candidate]:
        """One greedy (argmax) continuation per prompt; ``logq`` is 0 (a point mass)."""
        ...

    def close(self) -> None:
        """Release the model or connections."""
        ...


class LogprobsUnavailable(BackendError, NotImplementedError):
    """A backend cannot give the log-probabilities :func:`continuation_logprobs` asks for.

    Raised by a backend's optional ``continuation_logprobs`` method (a server that returns no
    log-probabilities, a continuation of several tokens that a server cannot teacher-force).
    Callers that have another way (the ``judge`` utility samples judgements instead) catch it.
    """


def continuation_logprobs(
    backend: Any, prompts: Sequence[str], continuations: Sequence[str]
) -> np.ndarray:
    """Teacher-forced log-probabilities (nats) of each continuation string after each prompt.

    The one optional backend method beyond sampling, used by the ``judge`` utility to read the
    probability of each score string ("1" .. "K") after a judge prompt. A backend that has it
    defines ``continuation_logprobs(prompts, continuations) -> ndarray`` of shape
    ``(len(prompts), len(continuations))``, where entry ``(i, k)`` is
    ``log p(continuation_k | prompt_i) = sum_t log p(c_t | prompt_i, c_<t)`` over the tokens
    ``c`` of the continuation tokenised on its own (no special tokens) and appended to the
    prompt's tokens (as the backend tokenises prompts for sampling). ``hf`` and ``llamacpp``
    compute it exactly (one pass over each prompt when every continuation is one token);
    ``openai`` reads it from the top log-probabilities of a one-token completion (see
    :meth:`metricwise.backends.openai.OpenAIBackend.continuation_logprobs`).

    Raises :class:`LogprobsUnavailable` when ``backend`` has no such method or cannot answer.
    """
    method = getattr(backend, "continuation_logprobs", None)
    if not callable(method):
        raise LogprobsUnavailable(
            f"The backend {getattr(backend, 'signature', type(backend).__name__)} gives no "
            "log-probabilities of given continuations."
        )
    values = np.asarray(method(list(prompts), list(continuations)), dtype=np.float64)
    if values.shape != (len(prompts), len(continuations)):
        raise BackendError(
            f"The backend's continuation_logprobs returned shape {values.shape}; "
            f"({len(prompts)}, {len(continuations)}) was asked for."
        )
    return values


def sample_seed(seed: int, index: int, prompt: str) -> tuple[int, int, int]:
    """Entropy of sample ``index``'s random stream: the run's seed, the index, and the prompt.

    The prompt enters through a stable hash so that different prompts do not share random
    numbers (sample i of every item would otherwise be correlated across items).
    """
    import zlib

    return (int(seed), int(index), zlib.crc32(prompt.encode("utf-8")))


def sample_sets(
    prompts: Sequence[str],
    config: SamplingConfig,
    start: int,
    greedy: Callable[[Sequence[str], SamplingConfig], list[Candidate]],
    draw: Callable[[list[str], int], Sequence[Sequence[Candidate]]],
) -> list[SampleSet]:
    """The shared body of every backend's ``sample``: samples ``start .. n - 1`` per prompt.

    ``draw(prompts, m)`` returns ``m`` candidates per prompt. Temperature 0 is greedy decoding,
    so every sample is the greedy sequence. What comes back is checked with
    :func:`check_samples`: a backend fails loudly rather than return a failure as a sample.
    """
    m = config.n - start
    if m < 1:
        return [SampleSet(candidates=(), prompt=p) for p in prompts]
    if config.temperature == 0:
        rows: Sequence[Sequence[Candidate]] = [(c,) * m for c in greedy(prompts, config)]
    else:
        rows = draw(list(prompts), m)
    check_samples(rows, len(prompts), m)
    return [
        SampleSet(candidates=tuple(row), prompt=p) for p, row in zip(prompts, rows, strict=True)
    ]


def check_samples(rows: Sequence[Sequence[Candidate]], n_prompts: int, per_prompt: int) -> None:
    """Raise :class:`BackendError` unless ``rows`` holds ``per_prompt`` valid candidates per prompt.

    Validity is :func:`metricwise.types.sample_problem`, the one definition of a failed sample.
    """
    if len(rows) != n_prompts:
        raise BackendError(
            f"The backend returned samples for {len(rows)} prompts; {n_prompts} were asked for."
        )
    for p, row in enumerate(rows):
        if len(row) != per_prompt:
            raise BackendError(
                f"The backend returned {len(row)} samples for prompt {p}; {per_prompt} were asked for."
            )
        for i, candidate in enumerate(row):
            problem = sample_problem(candidate)
            if problem is not None:
                raise BackendError(
                    f"The backend returned a failed sample {i} for prompt {p}: {problem}."
                )


_CONTROL_TOKEN = re.compile(r"<[^<>\s]+>|\[[^\[\]\s]+\]")


def looks_like_control_token(text: str) -> bool:
    """True for a vocabulary entry written like markup: ``<start_of_image>``, ``[multimodal]``.

    Tokenizers converted from GGUF keep the control tokens (GGUF type CONTROL) special but lose
    the flag on user-defined ones such as Gemma 3's ``<start_of_image>``, which then reach answers
    as text (13 of 6,400 STS-B and SICK samples). A user-defined token that looks like markup
    ends a sample like EOS; user-defined whitespace runs ("\\n\\n") do not.
    """
    return _CONTROL_TOKEN.fullmatch(text) is not None


class DecodeState:
    """The per-sequence bookkeeping of a batched token-by-token decode (the hf and llamacpp backends).

    Sequences are numbered 0 .. total-1. Each step, :meth:`advance` records one token per active
    sequence with its log-probabilities under p and q, and decides whether the sequence ends:
    ``"eos"`` (an end-of-generation or control token), ``"stop"`` (a stop string appeared; the
    text is cut before it), ``"guard"`` (the repetition detector) or ``"length"``
    (``max_tokens`` reached). Passing the wall-clock ``deadline`` raises
    :class:`~metricwise.errors.SamplingTimeout`: the whole batch is a failure, never stored.

    Parameters
    ----------
    total:
        Number of sequences.
    config, guards:
        Stop strings and ``max_tokens``; the repetition policy.
    is_eos:
        Whether a token id ends generation (EOS, end-of-turn, and control tokens such as
        ``<start_of_image>``, which are not text).
    detokenize:
        Token ids -> text (special tokens left out).
    sampled:
        False for greedy decoding, whose candidates get ``logq = 0`` (a point mass).
    token_logprobs:
        None: record sequence totals only. ``k >= 0``: also record each token's log-probability
        and, per step, the ``k`` alternatives :meth:`advance` is given, so that every candidate
        carries :attr:`~metricwise.types.Candidate.tokens`.
    token_text:
        Token id -> its text on its own (needed with ``token_logprobs``).
    """

    def __init__(
        self,
        total: int,
        config: SamplingConfig,
        guards: Guards,
        is_eos: Callable[[int], bool],
        detokenize: Callable[[list[int]], str],
        *,
        sampled: bool,
        token_logprobs: int | None = None,
        token_text: Callable[[int], str] | None = None,
    ) -> None:
        self.config, self.guards = config, guards
        self.token_logprobs, self.token_text = token_logprobs, token_text
        #: Per sequence, per token: (raw log-probability, alternatives as (ids, logprobs)).
        self.steps: list[list[tuple[float, Any]]] = [[] for _ in range(total)]
        self.is_eos, self.detokenize, self.sampled = is_eos, detokenize, sampled
        self.tokens: list[list[int]] = [[] for _ in range(total)]
        self.logp = np.zeros(total)
        self.logq = np.zeros(total)
        self.finish: list[str | None] = [None] * total
        self.stop_texts: list[str] = [""] * total

    def advance(
        self,
        active: Sequence[int],
        chosen: Sequence[int],
        logp: Sequence[float],
        logq: Sequence[float],
        step: int,
        deadline: float,
        top: Sequence[Any] | None = None,
    ) -> list[int]:
        """Record step ``step``'s token for each sequence in ``active`` (row r is ``active[r]``).

        ``top[row]``, when given, is that row's ``(ids, logprobs)`` of the most probable
        tokens at this step (kept per token when ``token_logprobs`` asks for them).

        Returns the rows (indices into ``active``) whose sequences go on. Raises
        :class:`~metricwise.errors.SamplingTimeout` when sequences would go on past the monotonic
        ``deadline``.
        """
        still: list[int] = []
        for row, seq in enumerate(active):
            token = int(chosen[row])
            self.tokens[seq].append(token)
            self.logp[seq] += logp[row]
            self.logq[seq] += logq[row]
            if self.token_logprobs is not None:
                self.steps[seq].append((float(logp[row]), None if top is None else top[row]))
            reason = self._finish_reason(seq, token)
            if reason is None and step == self.config.max_tokens - 1:
                reason = "length"
            if reason is None:
                still.append(row)
            else:
                self.finish[seq] = reason
        if still and time.monotonic() > deadline:
            raise SamplingTimeout(
                f"Decoding a batch of {len(self.tokens)} sequences ran past the wall-clock budget of "
                f"{self.guards.max_seconds:g} s (--max_seconds) at token {step + 1} of {self.config.max_tokens}; "
                "nothing from this batch was kept. Raise --max_seconds or lower --batch_size."
            )
        return still

    def _finish_reason(self, seq: int, token: int) -> str | None:
        tokens = self.tokens[seq]
        if self.is_eos(token):
            return "eos"
        if self.config.stop:
            text, found = truncate_at_stop(self.detokenize(tokens), self.config.stop)
            if found:
                self.stop_texts[seq] = text
                return "stop"
        if is_repeating(tokens, self.guards):
            return "guard"
        return None

    def text_so_far(self, seq: int) -> str:
        """Sequence ``seq``'s text as far as it is settled, for streaming: its final text once
        it has finished; before, its text without an unfinished UTF-8 character and without an
        end that could begin a stop string (which would be cut)."""
        if self.finish[seq] is not None:
            return self.candidate(seq).text
        text = self.detokenize(self.tokens[seq]).rstrip("\ufffd")
        for stop in self.config.stop:
            for length in range(min(len(stop) - 1, len(text)), 0, -1):
                if text.endswith(stop[:length]):
                    text = text[:-length]
                    break
        return text

    def candidate(self, seq: int) -> Candidate:
        """Sequence ``seq`` as a candidate; its text leaves out EOS and everything from a stop string on."""
        tokens, finish = self.tokens[seq], self.finish[seq]
        if finish == "stop":
            text = self.stop_texts[seq]
        else:
            text = self.detokenize(tokens[:-1] if finish == "eos" else tokens)
        return Candidate(
            text=text,
            logp=float(self.logp[seq]),
            logq=float(self.logq[seq]) if self.sampled else 0.0,
            n_tokens=len(tokens),
            finish_reason=finish,
            token_ids=tuple(tokens),
            tokens=None if self.token_logprobs is None else self._token_logprobs(seq),
        )

    def _token_logprobs(self, seq: int) -> tuple[TokenLogprob, ...]:
        text = self.token_text or (lambda i: self.detokenize([i]))
        end = len(self.tokens[seq]) - 1
        out = []
        for t, (token, (logprob, top)) in enumerate(
            zip(self.tokens[seq], self.steps[seq], strict=True)
        ):
            alternatives: tuple[tuple[str, float, int | None], ...] = ()
            if top is not None and self.token_logprobs:
                ids, values = top
                alternatives = tuple(
                    (text(int(i)), float(v), int(i))
                    for i, v in list(zip(ids, values, strict=True))[: self.token_logprobs]
                )
            # An end-of-generation token is no text ("" as servers report it).
            is_end = t == end and self.finish[seq] == "eos"
            out.append(TokenLogprob("" if is_end else text(token), logprob, token, alternatives))
        return tuple(out)


#: A backend's constructor: ``factory(model, **options)``; ``model=None`` is its default model.
BackendFactory = Callable[..., Backend]
#: The backends: every module of :mod:`metricwise.backends`, then the ``metricwise.backends``
#: entry points of installed plugins (see :mod:`metricwise.registry`).
BACKENDS: Registry[BackendFactory] = Registry("backend", "metricwise.backends")


def register_backend(name: str) -> Callable[[BackendFactory], BackendFactory]:
    """Register a backend class or factory under ``name`` (``--backend name``); refuses duplicates.

    A backend is one module in ``metricwise/backends/`` (or a plugin's entry point) whose class
    carries this decorator: modules are found on first use, so adding a module is all it
    takes. Modules import their heavy dependencies (torch, llama.cpp) inside functions, so
    discovery is cheap.
    """
    return BACKENDS.register(name)


def backend_names() -> list[str]:
    """Sorted names of the registered backends."""
    return BACKENDS.names()


#: A prompt of more characters is refused before it is tokenized (no model's context holds it:
#: even a million-token context is about 4 million characters, and tokenizing a 50 MB prompt
#: took 150 s and 6.3 GB before the context check could refuse it).
MAX_PROMPT_CHARS = 4_000_000


def prompt_excerpt(prompt: str, width: int = 40) -> str:
    """The start of a prompt, quoted, for messages: ``'Q: What is 47 + 38?\\nA:'``."""
    return repr(prompt if len(prompt) <= width else prompt[:width] + "...")


def check_prompt_lengths(
    lengths: Sequence[int], labels: Sequence[str], max_tokens: int, context: int | None
) -> None:
    """Raise :class:`InvalidParameterError` for the first prompt with no tokens, or whose
    ``lengths`` (tokens) plus ``max_tokens`` exceed ``context`` (None: no limit known).
    ``labels`` name the prompts in the message."""
    for label, n_tokens in zip(labels, lengths, strict=True):
        if n_tokens == 0:
            raise InvalidParameterError(
                f"{label} is empty: the tokenizer produced no tokens for it."
            )
    if context is None or context <= 0:
        return
    for label, n_tokens in zip(labels, lengths, strict=True):
        if n_tokens + max_tokens > context:
            raise InvalidParameterError(
                f"{label} has {n_tokens} tokens; with max_tokens={max_tokens} it exceeds the "
                f"model's context of {context} tokens. Shorten the prompt or lower max_tokens."
            )


def check_prompts_before_loading(
    name: str, model: Any, prompts: Sequence[tuple[str, str]], max_tokens: int, **options: Any
) -> None:
    """What can be known about ``prompts`` ((label, text) pairs) before backend ``name`` loads
    ``model`` with ``options``: none longer than :data:`MAX_PROMPT_CHARS` characters, and, for a
    backend that can tokenize without its weights (its factory's ``check_prompts(model,
    prompts, max_tokens, **options)``), none empty or too long for the model's context. A bad prompt is then refused in seconds, named by its label,
    instead of after a load of minutes by its place in a batch."""
    for label, text in prompts:
        if len(text) > MAX_PROMPT_CHARS:
            raise InvalidParameterError(
                f"{label}: the prompt has {len(text):,} characters, more than the "
                f"{MAX_PROMPT_CHARS:,} any model's context holds."
            )
    check = getattr(BACKENDS[name], "check_prompts", None) if name in BACKENDS else None
    if check is not None:
        check(model, prompts, max_tokens, **options)


def load_backend(name: str, model: str | None, **options: Any) -> Backend:
    """Instantiate backend ``name`` for ``model`` (a named model, a path, a hub id or a URL).

    ``model=None`` is the backend's default: the default model for a local backend, and for
    ``openai`` the model the server says it serves (``GET /v1/models``), never a local model's name.
    """
    names = backend_names()
    if name not in BACKENDS:
        raise UnknownNameError(
            f"The 'backend' parameter must be one of {', '.join(names)}. Got {name!r} instead."
            f"{did_you_mean(name, names)}"
        )
    _check_options(name, BACKENDS[name], options)
    backend: Backend = BACKENDS[name](model, **options)
    return backend


def prompt_cache_summary(backend: Any) -> str | None:
    """How many prompt tokens a server backend's server read and how many it took from its
    prefix cache (``prompt_tokens``, ``cached_prompt_tokens``), with the ``cache_prompt``
    hint for a llama-server that cached nothing; None for a backend that counts none."""
    prompt_tokens = getattr(backend, "prompt_tokens", 0)
    if not prompt_tokens:
        return None
    cached = getattr(backend, "cached_prompt_tokens", 0)
    llama = any(getattr(s, "kind", "") == "llama.cpp" for s in getattr(backend, "servers", ()))
    hint = " (--model_args cache_prompt=true lets llama-server keep a prompt)"
    return (
        f"the server read {prompt_tokens} prompt tokens, {cached} of them from its prefix cache"
        f"{hint if llama and not cached else ''}"
    )


def backend_options(name: str) -> list[str] | None:
    """The keyword options backend ``name``'s factory takes (``--model_args`` keys and the
    limits such as ``timeout``), or None when it takes any (``**options``) or has no signature."""
    factory = BACKENDS.get(name)
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # a factory without a signature: it checks for itself
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return None
    return [
        n
        for n, p in list(parameters.items())[1:]  # the first is the model
        if p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]


def _check_options(name: str, factory: BackendFactory, options: dict[str, Any]) -> None:
    """Refuse an option the backend does not take (a misspelt ``--model_args`` key), naming
    the ones it does, before anything loads."""
    accepted = backend_options(name)
    if accepted is None:
        return
    for option in options:
        if option not in accepted:
            raise UnknownNameError(
                f"The {name} backend takes no option {option!r} (--model_args); it takes "
                f"{', '.join(accepted)}.{did_you_mean(option, accepted)}"
            )
