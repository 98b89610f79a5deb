"""Request bodies, validated with pydantic: OpenAI's fields plus metricwise's.

Unknown fields are refused (400 naming the field, with a "did you mean"): a misspelt
``sample`` for ``samples`` must not silently give a greedy answer. Types are strict: ``"8"``
is not a number and ``true`` is not an integer. OpenAI fields that ask for something the
server does not do (penalties, ``logit_bias``, tools, ``best_of``, ``suffix``) are
accepted only with values that ask for nothing, so a client that sends its defaults keeps
working and one that relies on them hears that they are not done.

Every field of a request is data: metric and extractor names are looked up in metricwise's
registries, ``metric_args`` take numbers and booleans (and two named string options), and
nothing can name a file, a module or code to run.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator, model_validator

#: String-valued metric arguments a request may set, each checked by its metric against a fixed
#: list of choices. Any other string-valued argument could name a file or a model to load (the
#: ``model`` of ``embedding_cosine``), so it is refused.
STRING_METRIC_ARGS: frozenset[str] = frozenset({"tokenize", "smooth_method"})

_MAX_STOP = 16
_MAX_GRID = 1000
_MAX_SEED = 2**63 - 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)


class AdaptiveSettings(_Strict):
    """Sample in rounds and stop once the decision is settled (see :mod:`metricwise.adaptive`)."""

    min_n: int | None = Field(None, ge=1)
    max_n: int | None = Field(None, ge=1)
    round: int | None = Field(None, ge=1)
    confidence: float | None = Field(None, gt=0, lt=1)
    tolerance: float | None = Field(None, ge=0)


class StreamOptions(_Strict):
    include_usage: StrictBool = False


class DecisionFields(_Strict):
    """The metricwise fields, sent by the official client through ``extra_body``."""

    metric: str | None = Field(None, min_length=1, max_length=100)
    samples: int | None = Field(None, ge=1)
    rule: str | None = Field(None, min_length=1, max_length=100)
    weights: str | None = Field(None, min_length=1, max_length=100)
    weight_temperature: float | None = Field(None, gt=0)
    extractor: str | None = Field(None, min_length=1, max_length=100)
    # JSON has no tuples: a two-element list is what this takes (strict mode would refuse it).
    valid_range: tuple[float, float] | None = Field(None, strict=False)
    grid: list[float] | None = Field(None, min_length=1, max_length=_MAX_GRID)
    metric_args: dict[str, StrictBool | int | float | str] | None = Field(None, max_length=20)
    include_incomplete: StrictBool = False
    # Abstain (a 422 "abstained" carrying the risk) when the best answer's risk misses this.
    max_expected_loss: float | None = None
    min_expected_utility: float | None = None
    adaptive: StrictBool | AdaptiveSettings | None = None
    return_samples: StrictBool = False


class _Sampling(DecisionFields):
    """OpenAI's sampling fields shared by both endpoints."""

    model: str = Field(min_length=1, max_length=1000)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    # Not OpenAI's, but vLLM's and llama-server's (the official client sends them in extra_body).
    top_k: int | None = Field(None, ge=-1)
    min_p: float | None = Field(None, ge=0, lt=1)
    n: int | None = Field(None, ge=1)
    # metricwise's: globally normalised truncated sampling (metricwise.global_decoding).
    decoding: Literal["local", "global"] | None = None
    burn_in: int | None = Field(None, ge=0)
    thin: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, le=_MAX_SEED)
    # metricwise's: choice i is sample first_sample + i of the seed's stream (samples 16..31 of
    # a set without drawing 0..15 again); the openai backend sends it to a metricwise server.
    first_sample: int | None = Field(None, ge=0, le=_MAX_SEED)
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    # Accepted only when they ask for nothing (see the module docstring).
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, stop: str | list[str] | None) -> str | list[str] | None:
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        if len(stops) > _MAX_STOP or not all(stops):
            raise ValueError(
                f"it takes at most {_MAX_STOP} non-empty strings; got {len(stops)} "
                f"({sum(not s for s in stops)} empty)"
            )
        return stop

    def stops(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())

    def unsupported(self) -> list[tuple[str, str]]:
        """(field, why) for the fields that ask for something the server does not do."""
        out = []
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name) not in (None, 0):
                out.append(
                    (name, "penalties are not applied (the samples must come from the model)")
                )
        if self.logit_bias:
            out.append(("logit_bias", "logit biases are not applied"))
        return out


class CompletionRequest(_Sampling):
    """``POST /v1/completions``.

    ``prompt`` is a text, a list of texts, or (as OpenAI's API allows) token ids: one list of
    ids or a list of them. Token ids and ``max_tokens: 0`` are served with ``echo`` only, which
    scores the prompt (its tokens' log-probabilities, what lm-eval's loglikelihood requests ask
    for) rather than sampling from it.
    """

    prompt: str | list[str] | list[int] | list[list[int]]
    # 0 is allowed here for echo (the prompt's log-probabilities and no new token).
    max_tokens: int | None = Field(None, ge=0)
    #: Per-token log-probabilities with this many alternatives each (0: the chosen token's only).
    logprobs: int | None = Field(None, ge=0)
    echo: StrictBool = False
    best_of: int | None = Field(None, ge=1)
    suffix: str | None = None

    def token_logprobs(self) -> int | None:
        """Alternatives per token asked for; None: no log-probabilities."""
        return self.logprobs

    def prompts(self) -> list[str | list[int]]:
        """One entry per prompt: a text, or a list of token ids."""
        prompt = self.prompt
        if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)):
            return [prompt]
        return list(prompt)  # type: ignore[arg-type]

    def unsupported(self) -> list[tuple[str, str]]:
        out = super().unsupported()
        if self.best_of not in (None, 1):
            out.append(("best_of", "use metric and samples for a decision over several samples"))
        if self.suffix:
            out.append(("suffix", "insertion with a suffix is not supported"))
        return out


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    """One message; text content only.

    Fields the OpenAI client writes back into a conversation with null values (``refusal``,
    ``tool_calls``, ``audio``, ...) are accepted when they are null or empty.
    """

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    @model_validator(mode="after")
    def _no_other_content(self) -> ChatMessage:
        for key, value in (self.model_extra or {}).items():
            if value not in (None, [], {}, ""):
                raise ValueError(f"the message field {key!r} is not supported (text messages only)")
        return self

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class ChatCompletionRequest(_Sampling):
    """``POST /v1/chat/completions``."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: StrictBool | None = None
    top_logprobs: int | None = Field(None, ge=0)
    response_format: dict[str, Any] | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    parallel_tool_calls: StrictBool | None = None

    def token_logprobs(self) -> int | None:
        """Alternatives per token asked for; None: no log-probabilities."""
        return (self.top_logprobs or 0) if self.logprobs else None

    def unsupported(self) -> list[tuple[str, str]]:
        out = super().unsupported()
        if self.top_logprobs is not None and not self.logprobs:
            out.append(("top_logprobs", "it needs 'logprobs': true"))
        if self.response_format not in (None, {"type": "text"}):
            out.append(("response_format", "only {'type': 'text'} is supported"))
        if self.tools:
            out.append(("tools", "tool calls are not supported"))
        if self.tool_choice not in (None, "none"):
            out.append(("tool_choice", "tool calls are not supported"))
        return out


class TokenizeRequest(_Strict):
    """``POST /tokenize`` (vLLM's; lm-eval's ``tokenizer_backend=remote`` calls it)."""

    model: str | None = Field(None, min_length=1, max_length=1000)
    prompt: str
    add_special_tokens: StrictBool = True


class DetokenizeRequest(_Strict):
    """``POST /detokenize`` (vLLM's; lm-eval's ``tokenizer_backend=remote`` calls it)."""

    model: str | None = Field(None, min_length=1, max_length=1000)
    tokens: list[int]


#: The metricwise fields, which need ``metric`` (all but ``return_samples`` change a decision).
DECISION_FIELDS: tuple[str, ...] = tuple(DecisionFields.model_fields)
