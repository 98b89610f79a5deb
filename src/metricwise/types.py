"""Plain data types shared by every layer: candidates, sample sets, decisions, sampling configs.

All are frozen dataclasses so that they can be hashed, cached and passed between threads
without defensive copies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from metricwise.errors import InvalidParameterError

#: How a sampled candidate can end: a stop string, EOS (or a control token), ``max_tokens``, or
#: the repetition guard. A failure to sample (a timeout, an error, a malformed answer) has no
#: finish reason because it is never a candidate: the backend raises instead.
FINISH_REASONS: tuple[str, ...] = ("stop", "eos", "length", "guard")
#: Finish reasons whose text is complete; the others are left out of decisions by default.
COMPLETE_FINISH_REASONS: frozenset[str] = frozenset({"stop", "eos"})


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token as a server reports it: its text, its raw log-probability, and the
    most probable alternatives at its position.

    Attributes
    ----------
    token:
        The token's text on its own (empty for an end-of-generation token).
    logprob:
        ``log p`` of the token in nats under the raw model (temperature 1, no truncation): the
        per-token terms of :attr:`Candidate.logp`, in order.
    id:
        The token id, when the backend knows it.
    top:
        ``(text, logprob, id)`` of the most probable tokens at this position, most probable
        first (empty unless asked for).
    """

    token: str
    logprob: float
    id: int | None = None
    top: tuple[tuple[str, float, int | None], ...] = ()


@dataclass(frozen=True)
class Candidate:
    """One sampled answer.

    Attributes
    ----------
    text:
        The generated text (without the prompt).
    logp:
        Sequence log-probability in nats under the raw model (temperature 1, no truncation).
    logq:
        Sequence log-probability in nats under the distribution the sample was actually drawn
        from (after temperature, top-k, top-p, min-p). Equals ``logp`` for ancestral sampling.
    n_tokens:
        Number of generated tokens.
    finish_reason:
        ``"stop"`` (a stop string), ``"eos"``, ``"length"`` (max_tokens reached) or ``"guard"``
        (the repetition guard fired); ``None`` when unknown (answers given as plain text).
    token_ids:
        The generated token ids when the backend exposes them (for rescoring); not exported.
    tokens:
        Per-token log-probabilities (:class:`TokenLogprob`) when the caller asked the backend
        for them (``token_logprobs``); not exported and not stored: the sample store keeps the
        sequence totals only.
    """

    text: str
    logp: float | None = None
    logq: float | None = None
    n_tokens: int | None = None
    finish_reason: str | None = None
    token_ids: tuple[int, ...] | None = field(default=None, compare=False, repr=False)
    tokens: tuple[TokenLogprob, ...] | None = field(default=None, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "logp": self.logp,
            "logq": self.logq,
            "n_tokens": self.n_tokens,
            "finish_reason": self.finish_reason,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Candidate:
        if "text" not in data:
            raise InvalidParameterError(
                f"A candidate must have a 'text' field. Got keys {sorted(data)} instead."
            )
        return cls(
            text=str(data["text"]),
            logp=_optional_float(data.get("logp"), "logp"),
            logq=_optional_float(data.get("logq"), "logq"),
            n_tokens=None if data.get("n_tokens") is None else int(data["n_tokens"]),
            finish_reason=data.get("finish_reason"),
        )


def sample_problem(candidate: Any) -> str | None:
    """Why ``candidate`` is not a sample a backend may return or the store may keep, or None.

    The one definition of a failed sample: every backend's ``sample`` (through
    :func:`metricwise.backends.base.sample_sets`) and :meth:`metricwise.store.SampleStore.add`
    call it, so that a failure is raised as an error and never stored as a result.
    """
    if not isinstance(candidate, Candidate):
        return f"expected a Candidate, got {type(candidate).__name__}"
    if not isinstance(candidate.text, str):
        return f"its text is {type(candidate.text).__name__}, not str"
    if candidate.finish_reason not in FINISH_REASONS:
        return f"its finish reason {candidate.finish_reason!r} is not one of {', '.join(FINISH_REASONS)}"
    for name in ("logp", "logq"):
        value = getattr(candidate, name)
        if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value)):
            return f"its {name} {value!r} is not a finite log-probability or None"
    if candidate.n_tokens is not None and not (
        isinstance(candidate.n_tokens, int) and candidate.n_tokens >= 0
    ):
        return f"its n_tokens {candidate.n_tokens!r} is not a count"
    return None


def _optional_float(value: Any, name: str) -> float | None:
    if value is None:
        return None
    try:
        result = float(value)
    except (TypeError, ValueError):
        raise InvalidParameterError(
            f"The '{name}' field must be a number or null. Got {value!r} instead."
        ) from None
    if math.isnan(result):
        raise InvalidParameterError(f"The '{name}' field must not be NaN.")
    return result


@dataclass(frozen=True)
class SampleSet:
    """The N candidates sampled for one prompt, in sampling order."""

    candidates: tuple[Candidate, ...]
    prompt: str | None = None
    id: Any = None

    @property
    def texts(self) -> list[str]:
        return [c.text for c in self.candidates]

    def __len__(self) -> int:
        return len(self.candidates)


@dataclass(frozen=True)
class SupportItem:
    """One distinct candidate value with its normalised weight (probability) in the decision."""

    value: Any
    weight: float
    count: int


@dataclass(frozen=True)
class MBRStats:
    """What a minimum Bayes risk decision computed (``Decision.mbr``).

    Attributes
    ----------
    method:
        ``"exact"`` (every hypothesis against every pseudo-reference), ``"prune"``
        (confidence-based pruning, Cheng and Vlachos 2023), ``"aggregate"`` (one aggregated
        reference, DeNero et al. 2009; Vamvas and Sennrich 2024), ``"aggregate_to_fine"`` (the
        aggregate's best 32, then exact among them), or ``"pointwise"`` (a metric
        that scores one answer, such as a reward model: best-of-N, one evaluation per
        hypothesis). See :func:`metricwise.decide`.
    n_hypotheses, n_references:
        Distinct hypotheses (what may be returned) and distinct pseudo-references (samples).
    evaluations:
        Utility evaluations ``u(h, y)`` of distinct (hypothesis, reference) pairs: H x R for
        exact MBR, fewer for the approximations (counting the row that gives the output's
        exact expected utility).
    rounds:
        Rounds of growing subsets of the samples (``"prune"``: 32 samples, duplicates counted,
        then twice as many each round; 0 when one hypothesis needs no search), 2 for
        ``"aggregate_to_fine"`` (its two stages); 1 otherwise.
    remaining:
        Hypotheses still in contention when the search stopped: those that went on to the
        exact stage for ``"aggregate_to_fine"``; all of them for ``"exact"`` and
        ``"aggregate"``.
    """

    method: str
    n_hypotheses: int
    n_references: int
    evaluations: int
    rounds: int = 1
    remaining: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "n_hypotheses": self.n_hypotheses,
            "n_references": self.n_references,
            "evaluations": self.evaluations,
            "rounds": self.rounds,
            "remaining": self.remaining,
        }


@dataclass(frozen=True)
class Decision:
    """The Bayes-optimal answer for one set of samples.

    Exactly one of ``expected_utility`` (metrics where higher is better) and ``expected_loss``
    (errors and losses) is set, so that the direction can never be misread.

    Attributes
    ----------
    output:
        The decision: a string, a float, or ``None`` when no sample was usable (see ``failure``).
    rule:
        The rule that produced it: ``"mode"``, ``"mean"``, ``"median"``, ``"quantile"``,
        ``"grid"`` or ``"mbr"``.
    metric:
        Name of the metric the decision optimises.
    expected_utility, expected_loss:
        The metric's expectation for ``output`` under the weighted sample distribution.
    n_valid, n_total:
        Samples that entered the decision, and samples given; ``n_valid / n_total`` is the
        parse rate.
    support:
        Distinct candidate values with their normalised weights, heaviest first.
    weighting:
        ``"uniform"``, ``"model"``, ``"importance"`` or ``"explicit"``.
    effective_sample_size:
        Kish's effective sample size of the weights, ``(sum w)^2 / sum w^2``.
    excluded:
        Why samples were left out, as ``{reason: count}`` (``"unparsable"``, ``"length"``, ...).
    failure:
        Set (and ``output`` is ``None``) when no sample could be used; says why.
    n_used, stopped, settled_probability:
        Set by adaptive sampling (:mod:`metricwise.adaptive`): the samples drawn, why sampling
        stopped (``"settled"``, ``"max_n"`` or ``"no_valid_samples"``), and the estimated
        probability that more samples would not change the decision.
    mbr:
        Set by MBR decisions (rule ``"mbr"``): the method (exact or an approximation) and how
        much it computed, as :class:`MBRStats`; ``None`` for the other rules.
    abstained:
        True when ``decide`` was given a risk threshold (``max_expected_loss`` or
        ``min_expected_utility``) that the best answer misses: ``output`` is then ``None``,
        ``failure`` says why, and ``expected_loss`` / ``expected_utility`` keep the risk of the
        answer that was withheld (``withheld``).
    withheld:
        The answer an abstention held back (``None`` otherwise).
    """

    output: Any
    rule: str
    metric: str
    expected_utility: float | None
    expected_loss: float | None
    n_valid: int
    n_total: int
    support: tuple[SupportItem, ...]
    weighting: str = "uniform"
    effective_sample_size: float | None = None
    excluded: dict[str, int] = field(default_factory=dict)
    failure: str | None = None
    n_used: int | None = None
    stopped: str | None = None
    settled_probability: float | None = None
    mbr: MBRStats | None = None
    abstained: bool = False
    withheld: Any = None

    @property
    def ok(self) -> bool:
        return self.failure is None

    @property
    def decided(self) -> bool:
        """Whether there is a best answer: given (``ok``) or withheld by an abstention."""
        return self.ok or self.abstained

    @property
    def best(self) -> Any:
        """The best answer under the samples, given or withheld."""
        return self.withheld if self.abstained else self.output

    @property
    def parse_rate(self) -> float:
        return self.n_valid / self.n_total if self.n_total else 0.0

    def to_dict(self, max_support: int | None = None) -> dict[str, Any]:
        support = self.support if max_support is None else self.support[:max_support]
        out: dict[str, Any] = {
            "output": self.output,
            "rule": self.rule,
            "metric": self.metric,
        }
        if self.expected_utility is not None or self.expected_loss is None:
            out["expected_utility"] = self.expected_utility
        if self.expected_loss is not None:
            out["expected_loss"] = self.expected_loss
        out.update(
            {
                "n_valid": self.n_valid,
                "n_total": self.n_total,
                "weighting": self.weighting,
                "effective_sample_size": self.effective_sample_size,
                "support": [[s.value, s.weight, s.count] for s in support],
            }
        )
        if self.excluded:
            out["excluded"] = dict(self.excluded)
        if self.failure is not None:
            out["failure"] = self.failure
        if self.n_used is not None:
            out.update(
                {
                    "n_used": self.n_used,
                    "stopped": self.stopped,
                    "settled_probability": self.settled_probability,
                }
            )
        if self.mbr is not None:
            out["mbr"] = self.mbr.to_dict()
        if self.abstained:
            out["abstained"] = True
            out["withheld"] = self.withheld
        return out


@dataclass(frozen=True)
class SamplingConfig:
    """How to draw candidates from a model. Immutable so that it can key the sample store.

    ``max_tokens`` is required to be finite: a runaway generation is multiplied by ``n``.
    ``temperature=0`` means greedy decoding.
    """

    n: int = 16
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    max_tokens: int = 64
    stop: tuple[str, ...] = ()
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.n, int) or self.n < 1:
            raise InvalidParameterError(
                f"The 'n' parameter of SamplingConfig must be an int >= 1. Got {self.n!r} instead."
            )
        if not isinstance(self.max_tokens, int) or self.max_tokens <= 0:
            raise InvalidParameterError(
                f"The 'max_tokens' parameter of SamplingConfig must be an int > 0. Got {self.max_tokens!r} instead."
            )
        if not (self.temperature >= 0 and math.isfinite(self.temperature)):
            raise InvalidParameterError(
                f"The 'temperature' parameter of SamplingConfig must be a finite float >= 0. Got {self.temperature!r} instead."
            )
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise InvalidParameterError(
                f"The 'top_k' parameter of SamplingConfig must be an int >= 0 (0 = off). Got {self.top_k!r} instead."
            )
        if not 0 < self.top_p <= 1:
            raise InvalidParameterError(
                f"The 'top_p' parameter of SamplingConfig must be in (0, 1]. Got {self.top_p!r} instead."
            )
        if not 0 <= self.min_p < 1:
            raise InvalidParameterError(
                f"The 'min_p' parameter of SamplingConfig must be in [0, 1). Got {self.min_p!r} instead."
            )
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        else:
            object.__setattr__(self, "stop", tuple(self.stop))
