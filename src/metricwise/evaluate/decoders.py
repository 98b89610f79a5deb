"""Decoders compared on one pool of samples: baselines, Bayes rules, and the oracle.

Every decoder maps (greedy candidate, sampled candidates) to a prediction, so that all of them
are scored on exactly the same samples:

- ``greedy``: the greedy continuation (a separate, real argmax decode);
- ``prior``: one constant answer for every item, the Bayes rule for the task's primary metric
  over the few-shot split's references (the train mean for squared error, the median for
  absolute error, the most frequent answer for exact match). It uses no model: a decoder that
  does not beat it draws no information from the item;
- ``first``: the first sample, as a single sampled answer;
- ``max_logprob``: the complete sample with the highest sequence log-probability;
- ``mode``, ``mean``, ``median``: the closed-form Bayes rules (numeric tasks; ``mode`` also for
  text, by SQuAD-normalised exact match);
- ``mbr[m]``: minimum Bayes risk for metric ``m`` over the candidates;
- each of the Bayes rules also with ``+model`` weights (softmax of sequence log-probabilities);
- ``oracle``: the best candidate in hindsight for each metric, an upper bound of any selector.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from metricwise.decide import decide
from metricwise.extract import Extractor
from metricwise.metrics import get as get_metric
from metricwise.metrics.base import Metric
from metricwise.tasks.base import Task
from metricwise.types import COMPLETE_FINISH_REASONS, Candidate, SampleSet


@dataclass(frozen=True)
class Decoder:
    """One way of turning a pool of samples into a prediction.

    ``kind`` is ``greedy``, ``prior``, ``first``, ``max_logprob``, ``oracle``, or a rule of
    :func:`metricwise.decide` (``mode``, ``mean``, ``median``, ``mbr``); ``metric`` names the
    metric a rule optimises; ``weights`` is ``uniform`` or ``model``.
    """

    kind: str
    metric: str | None = None
    weights: str = "uniform"

    @property
    def label(self) -> str:
        name = f"mbr[{self.metric}]" if self.kind == "mbr" else self.kind
        return name if self.weights == "uniform" else f"{name}+{self.weights}"

    @property
    def uses_samples(self) -> bool:
        return self.kind not in ("greedy", "prior")


def default_decoders(task: Task, *, prior: bool = False) -> list[Decoder]:
    """The decoders the harness compares for ``task``; ``prior`` adds the no-model constant."""
    primary = task.metrics[0]
    decoders = [Decoder("greedy")]
    if prior:
        decoders.append(Decoder("prior", primary))
    decoders += [Decoder("first"), Decoder("max_logprob")]
    if task.answer_type == "number":
        rules = [
            Decoder("mode", "absolute_error"),
            Decoder("mean", "squared_error"),
            Decoder("median", "absolute_error"),
        ]
        rules.append(Decoder("mbr", primary))
    else:
        rules = [Decoder("mode", "exact_match")]
        rules += [
            Decoder("mbr", m) for m in dict.fromkeys([primary, "token_f1"]) if m != "exact_match"
        ]
    decoders += rules
    decoders += [Decoder(d.kind, d.metric, "model") for d in rules]
    decoders.append(Decoder("oracle"))
    return decoders


@lru_cache(maxsize=64)
def extractor_for(task: Task) -> Extractor:
    """The task's extractor; numeric ones know the valid range ("3.5/5" reads as 3.5 out of 5)."""
    if task.answer_type == "number":
        return Extractor.from_spec(task.extractor, valid_range=task.valid_range)
    return Extractor.from_spec(task.extractor)


def extract_answer(text: str, task: Task) -> Any:
    """The answer in a generation as the task's metrics read it, or None when there is none."""
    return extractor_for(task)(text)


def fallback_prediction(task: Task) -> Any:
    """What is scored when a decoder has no answer: the middle of the valid range, 0, or ''.

    The parse rate is reported beside every score, so the fallback never hides failures.
    """
    if task.answer_type == "text":
        return ""
    if task.valid_range is not None:
        return (task.valid_range[0] + task.valid_range[1]) / 2
    return 0.0


def prior_prediction(task: Task, references: Sequence[Any]) -> Any:
    """The best constant answer for ``task``'s primary metric given reference answers.

    ``references`` holds one reference per item of the few-shot split (never the evaluated
    items). The rule is the primary metric's closed form (mean for squared error, median for
    absolute error, mode for exact match); a metric without one (token F1, BLEU) gets the mode,
    since MBR over thousands of references would cost O(N^2) for a baseline. None when no
    reference is usable.
    """
    metric = get_metric(task.metrics[0])
    rule = metric.bayes_rule or "mode"
    if task.answer_type == "number":
        values: list[Any] = [float(r) for r in references]
        valid_range = task.valid_range
    else:
        values, valid_range = [str(r) for r in references], None
    if not values:
        return None
    return decide(values, metric, rule=rule, valid_range=valid_range).output


def predict(
    decoder: Decoder,
    task: Task,
    greedy: Candidate,
    pool: SampleSet,
    *,
    references: Sequence[Any] = (),
    oracle_metric: Metric | None = None,
    prior: Any = None,
) -> Any:
    """The decoder's prediction for one item, or None when it has no usable answer.

    ``prior`` is the constant the ``prior`` decoder predicts (:func:`prior_prediction`).
    """
    if decoder.kind == "greedy":
        return extract_answer(greedy.text, task)
    if decoder.kind == "prior":
        if prior is None:
            raise ValueError(
                "the prior decoder needs its constant: pass prior=prior_prediction(task, references)"
            )
        return prior
    if decoder.kind == "first":
        return extract_answer(pool.candidates[0].text, task) if len(pool) else None
    if decoder.kind == "max_logprob":
        complete = [
            c
            for c in pool.candidates
            if c.finish_reason in COMPLETE_FINISH_REASONS or c.finish_reason is None
        ]
        if not complete:
            return None
        top = max(
            complete,
            key=lambda c: (c.logp if c.logp is not None else -np.inf, -len(c.text), c.text),
        )
        return extract_answer(top.text, task)
    if decoder.kind == "oracle":
        if oracle_metric is None:
            raise ValueError("the oracle decoder needs the metric it is the best for")
        values = [
            v for v in (extract_answer(c.text, task) for c in pool.candidates) if v is not None
        ]
        if not values:
            return None
        scores = np.array([oracle_metric.score(v, list(references)) for v in values])
        best_index = int(np.argmax(scores) if oracle_metric.higher_is_better else np.argmin(scores))
        return values[best_index]
    weights = decoder.weights if decoder.weights != "model" or _has_logprobs(pool) else "uniform"
    if decoder.metric is None:
        raise ValueError(f"the {decoder.kind} decoder needs the metric it optimises")
    decision = decide(
        pool,
        decoder.metric,
        rule=decoder.kind,
        weights=weights,
        extractor=extractor_for(task),
        valid_range=task.valid_range,
    )
    return decision.output


def _has_logprobs(pool: SampleSet) -> bool:
    return all(c.logp is not None for c in pool.candidates)
