"""Decoders compared on one pool of samples: baselines, Bayes rules, and the oracle.

Every decoder maps what it may read of one item (the greedy candidate, the sampled candidates,
and for some the references or a constant from the few-shot split) to a prediction, so that all
of them are scored on exactly the same samples:

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
- ``mbr[m]+greedy``: MBR with the greedy answer among the hypotheses (the samples stay the
  only evidence);
- ``rule@adaptive`` (``eval --adaptive``): a Bayes rule on the shortest prefix of the pool at
  which its decision is settled, as adaptive sampling would have drawn it (:class:`AdaptiveRule`);
- ``oracle``: the best candidate in hindsight for each metric, an upper bound of any selector.

A decoder is a registered class (:func:`register_decoder`) that declares what it reads
(:attr:`Decoder.uses_samples`, ``uses_greedy``, ``uses_references``, ``uses_logprobs``,
``uses_prior``) and implements :meth:`Decoder.predict`. Scoring, the report and the plots ask
the decoder, never its name, so a new decoder is one class here (and one line in
:func:`default_decoders` to run it by default)::

    @register_decoder("middle_sample")
    class MiddleSample(Decoder):
        # The middle of the sorted parsed samples. Reading samples gives it a decoder@k
        # curve and the sampling temperature in the table.
        uses_samples = True

        def predict(self, x: DecoderInput) -> Any:
            answers = sorted(a for a in map(x.answer, x.pool.candidates) if a is not None)
            return answers[len(answers) // 2] if answers else None

A decoder with parameters is a frozen dataclass whose ``label`` names them (see
:class:`BayesRule`), so that a label in ``results.json`` maps back to the decoder. A label reads
``name[metric]+variant+weights@wrapper``: a variant is registered as ``"mbr+greedy"``, and a
wrapper (``adaptive``) builds itself around the decoder before the ``@``
(:meth:`Decoder.wrapping`).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any, ClassVar, TypeVar

import numpy as np

from metricwise.adaptive import Adaptive, settled_probability
from metricwise.decide import NUMBER_RULES, WEIGHTINGS, decide
from metricwise.errors import InvalidParameterError, UnknownNameError, did_you_mean
from metricwise.extract import Extractor, answer_after, extract_number
from metricwise.metrics import get as get_metric
from metricwise.metrics.base import Metric
from metricwise.registry import Registry
from metricwise.tasks.base import Task
from metricwise.types import COMPLETE_FINISH_REASONS, Candidate, Decision, SampleSet

__all__ = [
    "AdaptiveRule",
    "BayesRule",
    "Decoder",
    "DecoderInput",
    "anchored",
    "decoder_names",
    "default_decoders",
    "default_tolerance",
    "extract_answer",
    "extractor_for",
    "fallback_prediction",
    "get_decoder_class",
    "has_anchor",
    "make_decoder",
    "predict",
    "prior_prediction",
    "register_decoder",
    "rule_decoder",
]


@dataclass(frozen=True)
class DecoderInput:
    """What a decoder may read for one item.

    Attributes
    ----------
    task:
        The task (its extractor, answer type and valid range).
    greedy:
        The greedy candidate (``None`` where none was decoded, as in a decoder@k curve).
    pool:
        The N sampled candidates.
    references:
        The item's references: given only to decoders with ``uses_references`` (the oracle).
    metric:
        The metric being scored: the oracle is the best candidate for each metric in turn.
    prior:
        The constant of decoders with ``uses_prior`` (:func:`prior_prediction`).
    """

    task: Task
    greedy: Candidate | None
    pool: SampleSet
    references: Sequence[Any] = ()
    metric: Metric | None = None
    prior: Any = None

    def answer(self, candidate: Candidate) -> Any:
        """The answer in ``candidate`` as the task's metrics read it, or None."""
        return extract_answer(candidate.text, self.task)


class Decoder:
    """One way of turning what the model produced for an item into a prediction.

    Subclasses are registered with :func:`register_decoder` and set the class attributes below
    to say what they read; scoring, the report and the plots act on those attributes.

    Attributes
    ----------
    name:
        The registered name (set by :func:`register_decoder`); the label's stem.
    uses_samples:
        Reads the N samples: it gets a decoder@k curve and the sampling temperature.
    uses_greedy:
        Reads the greedy decode.
    uses_references:
        Reads the item's references, so it is not a decoder one could deploy (the oracle): it
        is predicted once per metric and left out of corpus statistics.
    uses_logprobs:
        Reads the model's sequence log-probabilities (``+model`` weights, ``max_logprob``).
    uses_prior:
        Reads the constant fitted on the few-shot split's references (``prior``).
    chooses_n:
        Reads a prefix of the pool whose length it chooses per item (adaptive stopping):
        :meth:`samples_used` says how long, the results record its distribution, and the plot
        draws the decoder as one point at its mean samples used instead of a decoder@k curve.
    """

    name: ClassVar[str] = ""
    uses_samples: bool = False
    uses_greedy: bool = False
    uses_references: bool = False
    uses_logprobs: bool = False
    uses_prior: bool = False
    chooses_n: bool = False

    @property
    def label(self) -> str:
        """The decoder's name in results and tables (``mbr[token_f1]+model``)."""
        return self.name

    @property
    def is_constant(self) -> bool:
        """Predicts the same answer for every item: it reads nothing of the item."""
        return not (self.uses_samples or self.uses_greedy or self.uses_references)

    @property
    def weighting(self) -> str | None:
        """How samples are weighted (``uniform``, ``model``), or None for a decoder that does
        not weigh samples."""
        return None

    @property
    def curve_label(self) -> str:
        """The label of the decoder@k curve this decoder is drawn with (one colour family): its
        own, or for an adaptive twin the fixed-N decoder it stops early."""
        return self.label

    def predict(self, x: DecoderInput) -> Any:
        """The prediction for one item, or None when the decoder has no usable answer."""
        raise NotImplementedError

    def samples_used(self, x: DecoderInput) -> int | None:
        """How many of the pool's samples the prediction read, for a decoder that chooses
        (:attr:`chooses_n`); None for one that reads a fixed number."""
        return None

    def settings(self, task: Task) -> dict[str, Any]:
        """Settings beyond the label that shape the predictions on ``task`` (an adaptive
        decoder's stopping rule), for the results and the signature; empty for most."""
        return {}

    def reads(self, x: DecoderInput) -> Sequence[Candidate]:
        """The candidates whose answers the prediction is drawn from (for parse statistics)."""
        if self.uses_samples:
            return x.pool.candidates
        if self.uses_greedy and x.greedy is not None:
            return (x.greedy,)
        return ()

    @classmethod
    def from_parts(cls, metric: str | None = None, weights: str = "uniform") -> Decoder:
        """Build the decoder from a metric and a weighting, as parsed from a label.

        Decoders without parameters refuse both, so that a typo is not silently dropped.
        """
        if metric is not None or weights != "uniform":
            raise InvalidParameterError(
                f"The {cls.name!r} decoder takes no metric and no weighting. Got metric={metric!r}, weights={weights!r} instead."
            )
        return cls()

    @classmethod
    def from_label(cls, label: str) -> Decoder:
        """The decoder a label names: ``greedy``, ``mean+model``, ``mbr[token_f1]``, ...

        Raises
        ------
        UnknownNameError
            When the label's name is not a registered decoder.
        """
        match = _LABEL.fullmatch(label) if isinstance(label, str) else None
        if match is None:
            raise InvalidParameterError(
                "A decoder label must read name, name[metric], name[metric]+variant, name+weights "
                f"or any of these @wrapper (mean@adaptive). Got {label!r} instead."
            )
        weights = match["weights"] or "uniform"
        name = match["name"] + (f"+{match['variant']}" if match["variant"] else "")
        decoder = get_decoder_class(name).from_parts(match["metric"], weights)
        if match["wrapper"]:
            decoder = get_decoder_class(match["wrapper"]).wrapping(decoder)
        return decoder

    @classmethod
    def wrapping(cls, inner: Decoder) -> Decoder:
        """The decoder ``cls`` around ``inner``, as a label ``inner@name`` names it (with
        default settings). Only wrappers (:class:`AdaptiveRule`) take one.
        """
        raise InvalidParameterError(
            f"The {cls.name!r} decoder does not wrap another decoder. Got {inner.label}@{cls.name} instead."
        )

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.label == getattr(other, "label", None)

    def __hash__(self) -> int:
        return hash((type(self), self.label))

    def __repr__(self) -> str:
        return f"<decoder {self.label}>"


_WEIGHTS = "|".join(WEIGHTINGS)
# name[metric]+variant+weights@wrapper: ``mbr[chrf]+greedy`` is the variant registered as
# ``mbr+greedy``; ``mean+model@adaptive`` is ``mean+model`` wrapped by the decoder ``adaptive``.
_LABEL = re.compile(
    r"(?P<name>[^\[\]+@]+)(?:\[(?P<metric>[^\]]+)\])?"
    rf"(?:\+(?!(?:{_WEIGHTS})(?:[+@]|$))(?P<variant>[A-Za-z_]\w*))?"
    rf"(?:\+(?P<weights>{_WEIGHTS}))?"
    r"(?:@(?P<wrapper>[A-Za-z_]\w*))?"
)
_NAME = re.compile(rf"[A-Za-z_]\w*(?:\+(?!(?:{_WEIGHTS})$)[A-Za-z_]\w*)?")
D = TypeVar("D", bound=type[Decoder])


def _check_decoder(name: str, cls: type[Decoder]) -> type[Decoder]:
    """A registered decoder is a plain name (or a variant such as ``mbr+greedy``) on a
    :class:`Decoder` subclass, which takes the name."""
    if not _NAME.fullmatch(name):
        raise InvalidParameterError(
            "The 'name' parameter of register_decoder must be an identifier such as 'median', or "
            f"a variant of one such as 'mbr+greedy' (not a weighting). Got {name!r} instead."
        )
    if not (isinstance(cls, type) and issubclass(cls, Decoder)):
        raise InvalidParameterError(
            f"register_decoder registers Decoder subclasses. Got {cls!r} instead."
        )
    cls.name = name
    return cls


#: The decoders, in registration order (the built-in ones below first): this package's modules,
#: then the ``metricwise.decoders`` entry points of installed plugins (see
#: :mod:`metricwise.registry`). A decoder in a module of its own here is found too, and runs in
#: every evaluation (:func:`default_decoders`).
DECODERS: Registry[type[Decoder]] = Registry(
    "decoder", __name__, keep_order=True, prepare=_check_decoder
)


def register_decoder(name: str) -> Callable[[D], D]:
    """Class decorator: register a :class:`Decoder` subclass under ``name``.

    Raises
    ------
    InvalidParameterError
        When ``name`` is not a plain name or is already registered.
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidParameterError(
            "The 'name' parameter of register_decoder must be an identifier such as 'median', or "
            f"a variant of one such as 'mbr+greedy' (not a weighting). Got {name!r} instead."
        )

    def wrap(cls: D) -> D:
        if name in DECODERS._entries:
            raise InvalidParameterError(
                f"The decoder {name!r} is already registered (by {DECODERS._entries[name].__qualname__})."
            )
        DECODERS.add(name, cls)
        return cls

    return wrap


def get_decoder_class(name: str) -> type[Decoder]:
    """The decoder class registered as ``name``.

    Raises
    ------
    UnknownNameError
        For an unregistered name, with the closest registered one.
    """
    if isinstance(name, str) and name in DECODERS:
        return DECODERS[name]
    names = decoder_names()
    raise UnknownNameError(
        f"The decoder must be one of {', '.join(map(repr, names))}. Got {name!r} instead."
        f"{did_you_mean(str(name), names)}"
    )


def decoder_names() -> list[str]:
    """The registered decoder names, in registration order."""
    return DECODERS.names()


def make_decoder(kind: str, metric: str | None = None, weights: str = "uniform") -> Decoder:
    """The registered decoder ``kind`` for ``metric`` and ``weights`` (``make_decoder("mean",
    "squared_error", "model")``)."""
    return get_decoder_class(kind).from_parts(metric, weights)


# -- the registered decoders ------------------------------------------------------------------


@register_decoder("greedy")
class Greedy(Decoder):
    """The greedy continuation: the usual single-answer inference, and the baseline."""

    uses_greedy = True

    def predict(self, x: DecoderInput) -> Any:
        if x.greedy is None:
            raise InvalidParameterError("The greedy decoder needs the greedy candidate.")
        return x.answer(x.greedy)


@register_decoder("prior")
class Prior(Decoder):
    """One constant for every item: the primary metric's Bayes rule over the few-shot split's
    references (:func:`prior_prediction`). No model: what beats it learnt from the item."""

    uses_prior = True

    @classmethod
    def from_parts(cls, metric: str | None = None, weights: str = "uniform") -> Decoder:
        # The constant is the task's primary metric's rule: a label may still name the metric.
        return super().from_parts(None, weights)

    def predict(self, x: DecoderInput) -> Any:
        if x.prior is None:
            raise InvalidParameterError(
                "The prior decoder needs its constant: pass prior=prior_prediction(task, references)."
            )
        return x.prior


@register_decoder("first")
class First(Decoder):
    """The first sample: what a single sampled answer scores."""

    uses_samples = True

    def reads(self, x: DecoderInput) -> Sequence[Candidate]:
        return x.pool.candidates[:1]

    def predict(self, x: DecoderInput) -> Any:
        return x.answer(x.pool.candidates[0]) if len(x.pool) else None


@register_decoder("max_logprob")
class MaxLogprob(Decoder):
    """The complete sample with the highest sequence log-probability (ties: shorter, then
    lexicographically smaller text)."""

    uses_samples = True
    uses_logprobs = True

    def _top(self, pool: SampleSet) -> Candidate | None:
        complete = [
            c
            for c in pool.candidates
            if c.finish_reason in COMPLETE_FINISH_REASONS or c.finish_reason is None
        ]
        if not complete:
            return None
        return max(
            complete,
            key=lambda c: (c.logp if c.logp is not None else -np.inf, -len(c.text), c.text),
        )

    def reads(self, x: DecoderInput) -> Sequence[Candidate]:
        top = self._top(x.pool)
        return () if top is None else (top,)

    def predict(self, x: DecoderInput) -> Any:
        top = self._top(x.pool)
        return None if top is None else x.answer(top)


@register_decoder("oracle")
class Oracle(Decoder):
    """The best candidate in hindsight for the metric being scored: an upper bound of any
    selector over the samples, not a decoder one can deploy."""

    uses_samples = True
    uses_references = True

    def predict(self, x: DecoderInput) -> Any:
        if x.metric is None:
            raise InvalidParameterError(
                "The oracle decoder needs the metric it is the best for (DecoderInput.metric)."
            )
        values = [v for v in (x.answer(c) for c in x.pool.candidates) if v is not None]
        if not values:
            return None
        scores = np.array([x.metric.score(v, list(x.references)) for v in values])
        best = int(np.argmax(scores) if x.metric.higher_is_better else np.argmin(scores))
        return values[best]


@dataclass(frozen=True, eq=False, repr=False)
class BayesRule(Decoder):
    """A decision rule of :func:`metricwise.decide` over the samples, for ``metric``.

    Subclasses set ``rule`` (the name :func:`~metricwise.decide` knows) and ``default_metric``
    (what a bare label such as ``mean`` means); they need no ``@dataclass`` of their own. ``weights`` is ``uniform`` or ``model``
    (softmax of the samples' sequence log-probabilities; uniform when a pool has none).
    """

    metric: str
    weights: str = "uniform"

    rule: ClassVar[str] = ""
    default_metric: ClassVar[str] = ""
    #: Whether the label names the metric (``mbr[token_f1]``); closed forms name only the rule.
    label_names_metric: ClassVar[bool] = False
    uses_samples = True

    def __post_init__(self) -> None:
        if self.weights not in WEIGHTINGS:
            raise InvalidParameterError(
                f"The 'weights' parameter of the {self.name} decoder must be one of {', '.join(map(repr, WEIGHTINGS))}. "
                f"Got {self.weights!r} instead.{did_you_mean(str(self.weights), list(WEIGHTINGS))}"
            )
        # Declared per instance: only the non-uniform weightings read log-probabilities.
        object.__setattr__(self, "uses_logprobs", self.weights != "uniform")

    @classmethod
    def from_parts(cls, metric: str | None = None, weights: str = "uniform") -> Decoder:
        metric = metric or cls.default_metric
        if not metric:
            raise InvalidParameterError(
                f"The {cls.name} decoder needs the metric it optimises. Got None instead."
            )
        return cls(metric, weights)

    @property
    def label(self) -> str:
        # A variant registered as "mbr+greedy" reads mbr[chrf]+greedy.
        stem, plus, variant = self.name.partition("+")
        name = f"{stem}[{self.metric}]{plus}{variant}" if self.label_names_metric else self.name
        return name if self.weights == "uniform" else f"{name}+{self.weights}"

    @property
    def weighting(self) -> str | None:
        return self.weights

    def decision(self, x: DecoderInput) -> Decision:
        """The full :class:`~metricwise.types.Decision` on ``x.pool`` (its support is what
        :func:`metricwise.adaptive.settled_probability` reads)."""
        return decide(x.pool, self.metric, **self.decide_options(x))

    def decide_options(self, x: DecoderInput) -> dict[str, Any]:
        """The options of :func:`~metricwise.decide` this decoder decides ``x`` with."""
        weights = (
            self.weights
            if self.weights == "uniform" or _has_logprobs(x.pool)
            else "uniform"  # a pool without log-probabilities (a server that gives none)
        )
        return {
            "rule": self.rule,
            "weights": weights,
            "extractor": _cached_extractor(x.task),
            "valid_range": x.task.valid_range,
        }

    def predict(self, x: DecoderInput) -> Any:
        return self.decision(x).output


@register_decoder("mode")
class Mode(BayesRule):
    """The weighted majority answer: the Bayes rule for exact match."""

    rule: ClassVar[str] = "mode"
    default_metric: ClassVar[str] = "exact_match"


@register_decoder("mean")
class Mean(BayesRule):
    """The weighted mean of the parsed numbers: the Bayes rule for squared error."""

    rule: ClassVar[str] = "mean"
    default_metric: ClassVar[str] = "squared_error"


@register_decoder("median")
class Median(BayesRule):
    """The weighted median of the parsed numbers: the Bayes rule for absolute error."""

    rule: ClassVar[str] = "median"
    default_metric: ClassVar[str] = "absolute_error"


@register_decoder("mbr")
class MBR(BayesRule):
    """Minimum Bayes risk: the candidate with the best expected ``metric`` against the samples."""

    rule: ClassVar[str] = "mbr"
    label_names_metric: ClassVar[bool] = True


@register_decoder("mbr+greedy")
class MBRGreedy(MBR):
    """MBR whose hypotheses are the samples and the greedy answer; the evidence is the samples
    alone (``decide(..., candidates=...)``): greedy is returned when it agrees best with what
    the model samples, though it is no sample itself.

    Only complete texts are hypotheses (a truncated sample or greedy decode is no answer, as in
    :func:`~metricwise.decide`). There is no ``mode+greedy``: exact match's Bayes rule picks the
    heaviest class of the evidence, and greedy adds a hypothesis but no evidence, so greedy
    would win only where it is that class already.
    """

    uses_greedy = True

    def decide_options(self, x: DecoderInput) -> dict[str, Any]:
        if x.greedy is None:
            raise InvalidParameterError(f"The {self.label} decoder needs the greedy candidate.")
        hypotheses = [c.text for c in (*x.pool.candidates, x.greedy) if _complete(c)]
        return {**super().decide_options(x), "candidates": hypotheses}

    def reads(self, x: DecoderInput) -> Sequence[Candidate]:
        greedy = () if x.greedy is None else (x.greedy,)
        return (*x.pool.candidates, *greedy)


def default_tolerance(task: Task, rule: str) -> float:
    """The tolerance of an adaptive decoder when none is given, in the answer's unit.

    For the numeric rules (mean, median, quantile, grid): 2% of the valid range of a bounded
    task (0.1 on STS-B's 0-5 scale), else 0.5 (about the rounding of an integer answer). For
    ``mode`` (which has none) and ``mbr`` (expected utility the choice may still lose): 0, so
    that they stop only when the choice itself is settled.
    """
    if rule not in NUMBER_RULES:
        return 0.0
    if task.valid_range is not None:
        low, high = task.valid_range
        return 0.02 * (high - low)
    return 0.5


@lru_cache(maxsize=1024)
def _settle(
    decoder: AdaptiveRule,
    task: Task,
    greedy: Candidate | None,
    candidates: tuple[Candidate, ...],
) -> tuple[Decision, int]:
    # predict, samples_used and reads ask for the same item in a row: decide its rounds once.
    # Keyed by the candidates, not the SampleSet, whose id may be anything (a list).
    adaptive = decoder.stopping(task)
    lengths = [n for n in adaptive.schedule() if n < len(candidates)]
    lengths.append(min(adaptive.max_n, len(candidates)))
    for n in dict.fromkeys(lengths):
        prefix = DecoderInput(task=task, greedy=greedy, pool=SampleSet(candidates[:n]))
        decision = decoder.inner.decision(prefix)
        if decision.ok and (
            settled_probability(
                decision, decoder.inner.metric, adaptive, valid_range=task.valid_range
            )
            >= adaptive.confidence
        ):
            break
    return decision, n


@register_decoder("adaptive")
@dataclass(frozen=True, eq=False, repr=False)
class AdaptiveRule(Decoder):
    """A Bayes rule that stops early: ``inner`` on the shortest prefix of the pool at which its
    decision is settled (:func:`metricwise.adaptive.settled_probability` >= confidence).

    The prefixes are those of :func:`metricwise.adaptive.sample_and_decide`: ``min_n``,
    ``min_n + round``, ..., ``max_n`` (capped at the pool's size). Sample ``i`` of a prompt is
    the same whatever the round, so the first ``n`` samples of the pool are exactly what an
    adaptive run would have drawn: scoring this decoder on a fixed-N pool measures adaptive
    sampling without sampling again. Its label is the inner one's with ``@adaptive``
    (``mean+model@adaptive``).

    Attributes
    ----------
    inner:
        The rule that decides each prefix.
    adaptive:
        The stopping rule; its ``tolerance`` is replaced by ``tolerance``.
    tolerance:
        How far the answer may still move (see :class:`~metricwise.adaptive.Adaptive`);
        None: :func:`default_tolerance` of the task and rule.
    """

    inner: BayesRule
    adaptive: Adaptive = field(default_factory=Adaptive)
    tolerance: float | None = None

    uses_samples = True
    chooses_n = True

    def __post_init__(self) -> None:
        if not isinstance(self.inner, BayesRule):
            raise InvalidParameterError(
                f"The 'inner' parameter of the adaptive decoder must be a Bayes rule decoder (mode, mean, median, mbr). Got {self.inner!r} instead."
            )
        if self.tolerance is not None:
            replace(self.adaptive, tolerance=self.tolerance)  # a bad tolerance fails here
        object.__setattr__(self, "uses_logprobs", self.inner.uses_logprobs)
        object.__setattr__(self, "uses_greedy", self.inner.uses_greedy)

    @classmethod
    def from_parts(cls, metric: str | None = None, weights: str = "uniform") -> Decoder:
        raise InvalidParameterError(
            "The adaptive decoder wraps a Bayes rule: name it as rule@adaptive (mean@adaptive, "
            f"mbr[chrf]+model@adaptive). Got metric={metric!r}, weights={weights!r} instead."
        )

    @classmethod
    def wrapping(cls, inner: Decoder) -> Decoder:
        if not isinstance(inner, BayesRule):
            raise InvalidParameterError(
                f"The adaptive decoder wraps a Bayes rule (mode, mean, median, mbr). Got {inner.label}@{cls.name} instead."
            )
        return cls(inner)

    @property
    def label(self) -> str:
        return f"{self.inner.label}@{self.name}"

    @property
    def curve_label(self) -> str:
        return self.inner.label

    @property
    def weighting(self) -> str | None:
        return self.inner.weighting

    def stopping(self, task: Task) -> Adaptive:
        """The stopping rule on ``task``, with the tolerance resolved."""
        tolerance = self.tolerance
        if tolerance is None:
            tolerance = default_tolerance(task, self.inner.rule)
        return replace(self.adaptive, tolerance=tolerance)

    def settings(self, task: Task) -> dict[str, Any]:
        adaptive = self.stopping(task)
        names = ("min_n", "max_n", "round", "confidence", "tolerance")
        return {name: getattr(adaptive, name) for name in names}

    def predict(self, x: DecoderInput) -> Any:
        return _settle(self, x.task, x.greedy, x.pool.candidates)[0].output

    def samples_used(self, x: DecoderInput) -> int:
        return _settle(self, x.task, x.greedy, x.pool.candidates)[1]

    def reads(self, x: DecoderInput) -> Sequence[Candidate]:
        prefix = replace(x.pool, candidates=x.pool.candidates[: self.samples_used(x)])
        return self.inner.reads(replace(x, pool=prefix))

    def __eq__(self, other: object) -> bool:
        # The label does not name the stopping rule: twins with other settings differ.
        return (
            isinstance(other, AdaptiveRule)
            and type(self) is type(other)
            and (self.label, self.adaptive, self.tolerance)
            == (other.label, other.adaptive, other.tolerance)
        )

    def __hash__(self) -> int:
        return hash((type(self), self.label, self.adaptive, self.tolerance))


def _complete(candidate: Candidate) -> bool:
    return candidate.finish_reason in COMPLETE_FINISH_REASONS or candidate.finish_reason is None


def _has_logprobs(pool: SampleSet) -> bool:
    return all(c.logp is not None for c in pool.candidates)


def default_decoders(
    task: Task,
    *,
    prior: bool = False,
    adaptive: Adaptive | None = None,
    tolerance: float | None = None,
    extra_mbr_metrics: Sequence[str] = (),
) -> list[Decoder]:
    """The decoders the harness compares for ``task``; ``prior`` adds the no-model constant.

    Every metric of the task gets the decoder of its own Bayes rule (:func:`rule_decoder`):
    the closed forms (mode, mean, median) and ``mbr[m]`` for each metric ``m`` other than
    exact match, whose rule is the mode (MBR with a 0-1 utility is a majority vote). Text
    tasks also get ``mbr[token_f1]``, the usual partial-credit rule for short answers. Each
    ``mbr[m]`` also runs as ``mbr[m]+greedy``, with greedy among the hypotheses.

    With ``adaptive``, every Bayes rule (each weighting) gets an adaptive twin
    (:class:`AdaptiveRule`, ``mean@adaptive``) with that stopping rule and ``tolerance``
    (None: :func:`default_tolerance`).

    ``extra_mbr_metrics`` (``eval --mbr_metrics``) adds ``mbr[m]`` (uniform weights) for
    utilities that are not the task's metrics (``chrf``, ``bertscore``, ``embedding_cosine``): answers
    chosen by one utility, scored by the task's metrics.
    """
    decoders: list[Decoder] = [Greedy()]
    if prior:
        decoders.append(Prior())
    decoders += [First(), MaxLogprob()]
    rules: list[BayesRule]
    if task.answer_type == "number":
        rules = [Mode("absolute_error"), Mean("squared_error"), Median("absolute_error")]
        mbr_metrics = list(task.metrics)
    else:
        rules = [Mode("exact_match")]
        mbr_metrics = [*task.metrics, "token_f1"]
    mbr_metrics = [m for m in dict.fromkeys(mbr_metrics) if m != "exact_match"]
    rules += [MBR(m) for m in mbr_metrics]
    rules += [type(d)(d.metric, "model") for d in rules]
    decoders += rules
    decoders += [MBRGreedy(m) for m in mbr_metrics]
    decoders += [MBR(m) for m in dict.fromkeys(extra_mbr_metrics) if m not in mbr_metrics]
    if adaptive is not None:
        decoders += [AdaptiveRule(d, adaptive, tolerance) for d in rules]
    decoders += _added_decoders()
    decoders.append(Oracle())
    return decoders


def _added_decoders() -> list[Decoder]:
    """One of each decoder registered outside this module (a module of its own in this
    package, a plugin's entry point) that is built without a metric or weighting; one that
    needs them is named in a warning and left to ``Decoder.from_label``."""
    added = []
    for name, cls in DECODERS.items():
        if cls.__module__ == __name__:
            continue
        try:
            added.append(cls.from_parts())
        except InvalidParameterError as exc:
            warnings.warn(
                f"The decoder {name!r} ({cls.__module__}) needs parameters, so evaluations do not "
                f"run it by default: {exc}",
                stacklevel=3,
            )
    return added


def rule_decoder(metric: str, answer_type: str) -> BayesRule:
    """The decoder (uniform weights) that implements ``metric``'s Bayes rule in
    :func:`default_decoders`: ``mean`` for squared error, ``median`` for absolute error,
    ``mode`` for exact match, ``mbr[metric]`` for any other metric (token F1, BLEU).

    ``answer_type`` is the task's (``number`` or ``text``): the mean and the median are rules
    over numbers only.
    """
    if metric == Mode.default_metric:
        return Mode(metric)
    rule = get_metric(metric).bayes_rule
    for closed_form in (Mean, Median):
        # Only the metric a closed form's label stands for: "mean" is the mean for squared error.
        if (
            answer_type == "number"
            and rule == closed_form.rule
            and metric == closed_form.default_metric
        ):
            return closed_form(metric)
    return MBR(metric)


@lru_cache(maxsize=64)
def extractor_for(task: Task) -> Extractor:
    """The task's extractor; numeric ones know the valid range ("3.5/5" reads as 3.5 out of 5)."""
    if task.answer_type == "number":
        return Extractor.from_spec(task.extractor, valid_range=task.valid_range)
    return Extractor.from_spec(task.extractor)


def has_anchor(task: Task) -> bool:
    """Whether the task's extractor looks for an answer cue first (``number:answer``,
    ``answer``) and falls back to something else (the last number, the whole text) without one.
    """
    extractor = extractor_for(task)
    return extractor.kind == "answer" or (
        extractor.kind == "number" and extractor.which == "answer"
    )


def anchored(text: str, task: Task) -> bool:
    """Whether the answer in ``text`` was found after an answer cue (a strict match) rather
    than by the extractor's fallback (a flexible match, as lm-evaluation-harness separates
    strict-match from flexible-extract).

    Built from :func:`metricwise.extract.answer_after` and
    :func:`~metricwise.extract.extract_number`: the answer after the last cue that has one must
    hold a number (for numbers). When the last cue's answer has no number but an earlier cue's
    has, the extractor reads the earlier one and this says False; an ``Extractor`` method that
    reports which branch it took would remove that rare disagreement.
    """
    extractor = extractor_for(task)
    segment = answer_after(text, extractor.cues)
    # Without a cue answer_after returns the whole text; a cue's answer never contains the cue.
    if not segment or segment == text.strip():
        return False
    if extractor.kind != "number":
        return True
    value = extract_number(
        segment,
        valid_range=extractor.valid_range,
        clip_to_range=extractor.clip_to_range,
        which="first",
        percent=extractor.percent,
    )
    return value is not None


@lru_cache(maxsize=64)
def _cached_extractor(task: Task) -> Callable[[str], Any]:
    # Every decoder, every metric and every decoder@k subset reads the same sample texts:
    # extracting each distinct text once per task is most of the scoring time saved.
    return lru_cache(maxsize=1 << 16)(extractor_for(task).__call__)


def extract_answer(text: str, task: Task) -> Any:
    """The answer in a generation as the task's metrics read it, or None when there is none."""
    return _cached_extractor(task)(text)


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
    greedy: Candidate | None,
    pool: SampleSet,
    *,
    references: Sequence[Any] = (),
    oracle_metric: Metric | None = None,
    prior: Any = None,
) -> Any:
    """The decoder's prediction for one item, or None when it has no usable answer.

    A shorthand for ``decoder.predict(DecoderInput(...))``. ``prior`` is the constant the
    ``prior`` decoder predicts (:func:`prior_prediction`).
    """
    return decoder.predict(
        DecoderInput(
            task=task,
            greedy=greedy,
            pool=pool,
            references=references,
            metric=oracle_metric,
            prior=prior,
        )
    )
