"""metricwise inside Inspect AI tasks: a solver that decides, and a scorer for any metric.

>>> from inspect_ai import Task
>>> from inspect_ai.dataset import Sample
>>> import metricwise.inspect as mw
>>> task = Task(  # doctest: +SKIP
...     dataset=[Sample(input="What is 2 + 2? Answer with a number.", target="4")],
...     solver=mw.decide(metric="squared_error", n=8),
...     scorer=mw.metric_scorer("squared_error"),
... )

:func:`decide` asks the task's model for N answers and returns the Bayes-optimal one for the
metric (the mean for squared error, the mode for exact match, MBR for token F1, ...), with the
decision's support and expected loss in ``state.metadata["metricwise"]``.
:func:`metric_scorer` scores ``state.output.completion`` against the target with a metricwise
metric. Both are registered with Inspect as ``metricwise/decide`` and ``metricwise/<metric>``.

Needs ``pip install 'metricwise[inspect]'`` (inspect-ai, pinned); importing this module without
it raises :class:`~metricwise.errors.MissingDependencyError`.
"""

from __future__ import annotations

import math
from typing import Any

from metricwise.errors import InvalidParameterError, MissingDependencyError

try:
    from inspect_ai.model import (
        ChatCompletionChoice,
        ChatMessageAssistant,
        GenerateConfigArgs,
        ModelOutput,
        ModelUsage,
    )
    from inspect_ai.scorer import Score, Scorer, Target, mean, scorer, stderr
    from inspect_ai.solver import Generate, Solver, TaskState, solver
except ImportError as exc:  # pragma: no cover - exercised in an environment without inspect-ai
    raise MissingDependencyError(
        f"metricwise.inspect needs inspect-ai ({exc.name} is not installed): "
        "pip install 'metricwise[inspect]'."
    ) from None

from metricwise.decide import decide as _decide
from metricwise.extract import parse_number
from metricwise.io import answer_text, json_safe
from metricwise.metrics.base import Metric, resolve
from metricwise.types import Candidate, SampleSet

__all__ = ["FINISH_REASONS", "decide", "metric_scorer"]

#: metricwise's finish reasons for Inspect's stop reasons. "length" (and "guard") samples are
#: left out of a decision unless ``include_incomplete=True``; an unknown reason counts as complete.
FINISH_REASONS = {
    "stop": "stop",
    "max_tokens": "length",
    "model_length": "length",
    "content_filter": "content_filter",
    "tool_calls": "tool_calls",
}


def _sequence_logprob(choice: ChatCompletionChoice) -> float | None:
    """The choice's log-probability in nats (the sum over its tokens), or None when not given."""
    if choice.logprobs is None or not choice.logprobs.content:
        return None
    total = math.fsum(token.logprob for token in choice.logprobs.content)
    return total if total <= 0 else None


@solver(name="decide")
def decide(
    metric: str = "exact_match",
    n: int = 8,
    logprobs: bool = True,
    **decide_options: Any,
) -> Solver:
    """Sample ``n`` answers from the task's model and answer with the Bayes-optimal one.

    Parameters
    ----------
    metric:
        A registered metricwise metric (``metricwise.metrics.names()``); it picks the rule:
        the mode for ``exact_match``, the mean for ``squared_error``, the median for
        ``absolute_error``, MBR for ``token_f1``, ``chrf``, ...
    n:
        Samples per item, an int >= 1. The model is asked once with ``num_choices=n``;
        providers that honour it (OpenAI-compatible servers, vLLM, mockllm) answer with n
        choices. When fewer come back, the missing ones are asked for again, the same
        conversation each time, until n are in or a call returns no choice (at most n calls):
        a provider without ``num_choices`` gives n separate generations. With Inspect's
        ``cache`` on, separate generations return the same cached answer; leave it off.
    logprobs:
        Ask for token log-probabilities (``logprobs=True``); where the provider returns them
        for every choice, each sample's log p (their sum) goes to :func:`metricwise.decide`,
        so ``weights="model"`` can use them. Providers that ignore the option give none, and
        the decision uses the samples alone (``metricwise serve`` gives them). A server that
        refuses the option needs ``logprobs=False``.
    **decide_options:
        Passed to :func:`metricwise.decide` (``rule``, ``weights``, ``extractor``,
        ``valid_range``, ``include_incomplete``, ``mbr``, metric arguments, ...).

    The decision becomes ``state.output`` (one choice: the decision as text, numbers with at
    most 15 significant digits and no ".0") and the last assistant message. The samples stay in
    the transcript (the model events) and in ``state.metadata["metricwise"]``: ``output`` (the
    exact value), ``rule``, ``metric``, ``expected_loss`` or ``expected_utility``,
    ``n_valid``, ``n_total``, ``support`` ([value, weight, count], heaviest first),
    ``excluded`` ({reason: count}), ``weighting``, ``n_requested``, ``calls`` (model calls
    made) and ``samples`` (text, finish reason, log p).

    When no sample is usable (none parses as a number for squared error, all are empty, all
    ran into max_tokens) there is no decision: the metadata has ``failure`` (why) and
    ``output`` None, and ``state.output`` is an empty completion with ``error`` set, never one
    of the samples, so a scorer sees the failure instead of an undecided sample; no assistant
    message is added.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InvalidParameterError(
            f"The 'n' parameter of metricwise.inspect.decide must be an int >= 1. Got {n!r} instead."
        )
    metric_args = {
        k: v for k, v in decide_options.items() if k not in _DECIDE_KEYWORDS
    }  # checked now, so that a bad metric name fails when the task is built, not per sample
    resolve(metric, higher_is_better=decide_options.get("higher_is_better"), **metric_args)

    async def solve(state: TaskState, generate: Generate) -> TaskState:
        conversation = list(state.messages)
        choices: list[ChatCompletionChoice] = []
        usage: ModelUsage | None = None
        model_name = state.output.model or str(state.model)
        calls = 0
        while len(choices) < n and calls < n:
            state.messages = list(conversation)
            config: GenerateConfigArgs = {"num_choices": n - len(choices)}
            if logprobs:
                config["logprobs"] = True
            state = await generate(state, tool_calls="none", **config)
            calls += 1
            output = state.output
            model_name = output.model or model_name
            if output.usage is not None:
                usage = output.usage if usage is None else usage + output.usage
            if not output.choices:
                break
            choices.extend(output.choices[: n - len(choices)])
        state.messages = list(conversation)

        texts = [c.message.text for c in choices]
        logps = [_sequence_logprob(c) for c in choices]
        have_logprobs = bool(choices) and all(lp is not None for lp in logps)
        samples = SampleSet(
            tuple(
                Candidate(
                    text=text,
                    logp=lp if have_logprobs else None,
                    finish_reason=FINISH_REASONS.get(c.stop_reason),
                )
                for text, lp, c in zip(texts, logps, choices, strict=True)
            )
        )
        decision = _decide(samples, metric, **decide_options)
        info = decision.to_dict()
        info.update(
            {
                "n_requested": n,
                "calls": calls,
                "logprobs": have_logprobs,
                "samples": [
                    {"text": t, "finish_reason": c.stop_reason, "logp": lp}
                    for t, c, lp in zip(texts, choices, logps, strict=True)
                ],
            }
        )
        state.metadata["metricwise"] = json_safe(info)
        if decision.ok:
            message = ChatMessageAssistant(
                content=answer_text(decision.output),
                model=model_name,
                source="generate",
                metadata={"metricwise": {"rule": decision.rule, "metric": decision.metric}},
            )
            state.messages.append(message)
            state.output = ModelOutput(
                model=model_name,
                choices=[ChatCompletionChoice(message=message, stop_reason="stop")],
                usage=usage,
            )
        else:
            state.output = ModelOutput(
                model=model_name,
                choices=[
                    ChatCompletionChoice(
                        message=ChatMessageAssistant(content="", model=model_name),
                        stop_reason="unknown",
                    )
                ],
                usage=usage,
                error=f"metricwise: no decision: {decision.failure}",
            )
        return state

    return solve


#: decide's own keywords; the other options are the metric's arguments.
_DECIDE_KEYWORDS = frozenset(
    {
        "rule",
        "weights",
        "logprobs",
        "proposal_logprobs",
        "higher_is_better",
        "weight_temperature",
        "valid_range",
        "grid",
        "extractor",
        "include_incomplete",
        "candidates",
        "mbr",
        "context",
    }
)


def _number(text: Any) -> float | None:
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return float(text)
    return parse_number(str(text))


def metric_scorer(metric: str | Metric = "exact_match", **metric_args: Any) -> Scorer:
    """An Inspect scorer that scores ``state.output.completion`` against the target with ``metric``.

    The scorer is named after the metric (``token_f1``, ``squared_error``) and reports
    Inspect's ``mean`` and ``stderr`` over the samples. Its direction is declared: the scorer's
    registry metadata and every score's metadata carry ``higher_is_better`` (False for
    errors and losses, whose mean is to be minimised) and the score's ``answer`` is what was
    scored. Several targets give the best of them (the maximum of a utility, the minimum of
    a loss), as :meth:`metricwise.metrics.Metric.score` does.

    For a numeric metric the completion and the targets are read with
    :func:`metricwise.extract.parse_number`; a completion with no number (or an empty one,
    a failed decision) is scored as ``0`` and the score's metadata says ``parsed: False``, as
    ``metricwise eval`` scores a missing answer on an unbounded scale; an unparsable target
    raises :class:`~metricwise.errors.InvalidParameterError`.
    """
    metric_obj = resolve(metric, **metric_args)
    name = metric_obj.name
    higher = metric_obj.higher_is_better

    @scorer(metrics=[mean(), stderr()], name=name, higher_is_better=higher)
    def make() -> Scorer:
        async def score(state: TaskState, target: Target) -> Score:
            completion = state.output.completion
            references: list[Any] = list(target.target) or [""]
            parsed = True
            prediction: Any = completion
            if metric_obj.kind == "number":
                prediction = _number(completion)
                parsed = prediction is not None
                if prediction is None:
                    prediction = 0.0
                numbers = [_number(r) for r in references]
                if any(r is None for r in numbers):
                    raise InvalidParameterError(
                        f"The target of a {name} score must be numbers. Got {references!r} instead."
                    )
                references = numbers
            value = float(metric_obj.score(prediction, references))
            return Score(
                value=value,
                answer=completion,
                metadata={
                    "metric": metric_obj.signature(),
                    "higher_is_better": higher,
                    "parsed": parsed,
                },
            )

        return score

    return make()
