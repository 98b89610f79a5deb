"""Bayes-optimal decisions from samples.

Given samples ``y_1..y_N`` with weights ``w_i`` (an estimate of the model's answer distribution)
and a metric, return the answer ``a`` that optimises the expected metric
``sum_i w_i * metric(a, y_i)`` (MALI: Lukasik et al., "Regression-aware inference with LLMs",
EMNLP Findings 2024). Closed forms come first:

========================  =========================================================
metric                    rule
========================  =========================================================
exact_match               ``mode``: weighted majority of the normalized answers
squared_error             ``mean``: weighted mean (often a value no sample produced)
absolute_error            ``median``: weighted median
pinball(tau)              ``quantile``: weighted tau-quantile
bounded scale             ``grid``: samples snapped to a grid (e.g. 1..5), then the
                          metric's optimum over the grid's distribution
anything else             ``mbr``: argmax over distinct candidates of expected utility
========================  =========================================================

Ties are broken deterministically and independently of sample order. Equally frequent modes go
to the one closest to the whole sample (highest weighted token F1 to the samples for text,
smallest weighted absolute difference for numbers), so that a pool of distinct answers yields
its most central one rather than an arbitrary one. Any remaining tie goes to the larger total
weight, then to the smaller value (the smallest number, or the lexicographically smallest
string). Expected scores that differ by less than 1e-9 (relative) count as tied.

Samples that cannot be an answer are left out before deciding and counted by reason in
``Decision.excluded``: truncated candidates (their finish reason, e.g. ``"length"``), texts
with no number for numeric rules (``"unparsable"``), and texts with no letter or digit for
text rules (``"empty"``: ``""``, ``" /"``, ``"..."``), so that empty answers, which all
normalize to ``""``, cannot outvote real ones, and texts longer than :data:`MAX_ANSWER_CHARS`
(``"too_long"``), a runaway rather than an answer, whose n-gram statistics alone would take
gigabytes (chrF over one 50 MB sample peaked at 5 GB). With none left the decision fails with a
reason.

Memory is bounded whatever N: a candidates x samples matrix (MBR's utilities, the mode's
closeness) that would not fit in ``_PAIRWISE_BUDGET_BYTES`` (256 MiB) is filled and reduced in
blocks of candidate rows.

Exact MBR costs H x R utility evaluations (H distinct hypotheses, R distinct samples). For large
N, ``decide(..., mbr=...)`` offers two approximations, each reporting what it computed in
``Decision.mbr``: ``"prune"``, confidence-based pruning (Cheng and Vlachos, "Faster Minimum
Bayes Risk Decoding with Confidence-based Pruning", EMNLP 2023), for any metric; and
``"aggregate"``, reference aggregation (DeNero, Chiang and Knight, "Fast Consensus Decoding over
Translation Forests", ACL 2009; Vamvas and Sennrich, "Linear-time Minimum Bayes Risk Decoding
with Reference Aggregation", 2024), for metrics whose n-gram statistics can be averaged (chrF);
and ``"aggregate_to_fine"`` (Vamvas and Sennrich 2024): the few hypotheses best against the
aggregated reference, then exact MBR among them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeGuard

import numpy as np

from metricwise.errors import InvalidParameterError, MetricwiseError, UnknownNameError, did_you_mean
from metricwise.extract import Extractor, check_range, clip, extract_number
from metricwise.metrics.base import AggregatableMetric, Metric, StatisticsMetric, resolve
from metricwise.types import COMPLETE_FINISH_REASONS, Decision, MBRStats, SampleSet, SupportItem

RULES: tuple[str, ...] = ("mode", "mean", "median", "quantile", "grid", "mbr")
#: A sample or hypothesis text longer than this (about 25,000 tokens of English) is left out of
#: a decision as ``"too_long"``: it bounds the memory of any metric's statistics per sample
#: (chrF's n-grams of 100,000 characters take about 11 MB).
MAX_ANSWER_CHARS = 100_000
NUMBER_RULES: frozenset[str] = frozenset({"mean", "median", "quantile", "grid"})
WEIGHTINGS: tuple[str, ...] = ("uniform", "model", "importance")
_TIE_RTOL = 1e-9
#: Memory that one ``metric.pairwise`` call of a rule may use, in bytes. A (C, R) matrix that
#: does not fit is filled in blocks of candidate rows, so a decision over tens of thousands of
#: distinct samples stays in bounded memory instead of asking for C x C x 8 bytes at once.
_PAIRWISE_BUDGET_BYTES = 256 * 1024 * 1024
#: How many (rows, R) float64 arrays a metric holds at once while filling one block: chrF keeps
#: one match matrix per order (6 by default) and about as many temporaries for its F-score.
_PAIRWISE_WORKING_COPIES = 16
#: How an MBR decision searches: every pair, confidence-based pruning, one aggregated reference,
#: or the aggregated reference's best few then every pair for those.
MBR_METHODS: tuple[str, ...] = ("exact", "prune", "aggregate", "aggregate_to_fine")
#: Aggregate-to-fine (Vamvas and Sennrich 2024): the hypotheses ranked best against the
#: aggregated reference that go on to exact expected utility. On chrF at N = 1024
#: (bench/mbr_speed.py sets, seed 0) 16 missed exact MBR's answer in 1 of 10 paraphrase sets
#: and 32 in none (nor in any STS-B or SQuAD window), for about 13 ms more per decision.
_AGGREGATE_TOP = 32
#: Pruning (Cheng and Vlachos 2023): the first round compares every hypothesis with this many
#: sampled pseudo-references, and each round multiplies them by _PRUNE_GROWTH until all are used.
_PRUNE_FIRST_ROUND = 32
_PRUNE_GROWTH = 2
#: Bootstrap resamples per round (as in the paper).
_PRUNE_BOOTSTRAP = 500
#: A hypothesis is dropped when it ties or beats the leader in fewer than this many of the
#: resamples: an estimated probability of being at least as good below 1/500. The paper's
#: alpha = 0.99 (fewer than 5 of 500) with 16 first references dropped the exact answer in 1-2
#: of 10 windows of 1024 unrelated sentences (BLEU, chrF; bench/mbr_speed.py); this rule and 32
#: first references kept it in all 108 sets tried, at about the same speed.
_PRUNE_MIN_WINS = 1
#: Seed of the order in which samples enter the rounds and of the bootstrap, so that a decision
#: is reproducible (and, like the others, independent of the samples' order).
_PRUNE_SEED = 0


def decide(
    samples: SampleSet | Sequence[Any],
    metric: str | Metric | Callable[[Any, Any], float],
    *,
    rule: str | None = None,
    weights: str | Sequence[float] | np.ndarray | None = None,
    logprobs: Sequence[float] | None = None,
    proposal_logprobs: Sequence[float] | None = None,
    higher_is_better: bool | None = None,
    weight_temperature: float = 1.0,
    valid_range: tuple[float, float] | None = None,
    grid: Sequence[float] | None = None,
    extractor: Callable[[str], Any] | str | None = None,
    include_incomplete: bool = False,
    candidates: Sequence[Any] | None = None,
    mbr: str = "exact",
    context: str | None = None,
    max_expected_loss: float | None = None,
    min_expected_utility: float | None = None,
    **metric_args: Any,
) -> Decision:
    """Return the answer that is Bayes-optimal for ``metric`` under the samples' distribution.

    Parameters
    ----------
    samples:
        N sampled answers: strings, numbers, or a :class:`~metricwise.types.SampleSet` (whose
        candidates carry ``logp``, ``logq`` and finish reasons).
    metric:
        A registered metric name (see ``metricwise.metrics.names()``), a
        :class:`~metricwise.metrics.Metric`, or a plain callable ``u(candidate, reference)``
        together with ``higher_is_better``.
    rule:
        ``None`` picks the metric's closed form (``metric.bayes_rule``) or MBR; one of
        ``"mode"``, ``"mean"``, ``"median"``, ``"quantile"``, ``"grid"``, ``"mbr"`` overrides.
    weights:
        ``None``/``"uniform"``: the empirical distribution. ``"model"``: softmax of
        ``logprobs / weight_temperature`` over distinct candidate texts (a duplicate is one
        sequence of the model, counted once). ``"importance"``: ``exp(logp - logq)`` per sample,
        undoing the sampler's distortion (temperature, top-k/p); the effective sample size is
        reported. Or an explicit non-negative array of shape (N,). A sample whose ``log p``
        (or, for ``"importance"``, ``log q``) is -inf gets weight 0; when every usable sample
        has weight 0 there is no decision (see Returns).
    logprobs, proposal_logprobs:
        Shape (N,) sequence log-probabilities in nats under the raw model (``log p``) and under
        the sampler (``log q``), each <= 0 or -inf (a missing value, such as a server's null
        token log-probability); NaN and +inf are refused. Taken from a ``SampleSet`` when not
        given.
    higher_is_better:
        Required when ``metric`` is a plain callable.
    weight_temperature:
        Temperature > 0 of the ``"model"`` weighting.
    valid_range:
        ``(lo, hi)``: parsed numbers are clipped into it (and ``"x/hi"`` reads as "x out of hi").
    grid:
        Allowed values for the ``"grid"`` rule; defaults to the integers of ``valid_range``.
    extractor:
        A callable ``str -> value or None``, or an extractor spec such as ``"number:last"``
        (see :class:`metricwise.extract.Extractor`), applied to every text sample first.
    candidates:
        The hypotheses, what may be returned, apart from the evidence: the samples stay the
        pseudo-references that define the expected metric, and the decision is the hypothesis
        with the best expected metric (MBR over ``candidates``; ``rule`` is reported as
        ``"mbr"``). The greedy answer, beam outputs or a user's list can be hypotheses; pass
        the samples too to keep them eligible. Each hypothesis goes through the same extractor
        and checks as a sample; unusable ones are left out (as in mbrs, Cheng and Vlachos 2023).
    include_incomplete:
        Keep candidates whose finish reason is ``"length"`` or ``"guard"``
        (truncated or runaway text); they are left out by default.

        Independently of this, a sample that cannot be an answer is always left out and
        counted in ``Decision.excluded``: for numeric rules one with no number
        (``"unparsable"``), for text rules (``mode``, ``mbr``) one with no letter or digit
        after the extractor (``"empty"``: ``""``, ``" /"``, ``"..."``; text in any script
        counts).
    mbr:
        How the ``"mbr"`` rule searches (H distinct hypotheses, R distinct samples):

        - ``"exact"`` (default): every hypothesis against every sample, H x R evaluations.
        - ``"prune"``: confidence-based pruning (Cheng and Vlachos, EMNLP 2023). Samples enter
          in a fixed pseudo-random order, 32 then twice as many each round; each round scores
          the hypotheses still in contention against the samples so far, bootstraps their
          expected utilities (500 resamples) and drops every hypothesis that ties or beats
          the leader in none of them, until one is left or all samples are used. Any metric;
          usually a few percent of the evaluations, and the same answer as exact MBR unless
          several hypotheses are nearly tied.
        - ``"aggregate"``: reference aggregation (DeNero et al., ACL 2009; Vamvas and Sennrich
          2024, ``fastchrf.aggregate_chrf``): each hypothesis is scored once against a single
          reference whose n-gram counts are the samples' weighted average; O(H + R) instead of
          O(H x R). It optimises a different objective (the metric of the average, not the
          average of the metric), so it can pick differently. Only for metrics whose
          statistics average (``chrf``); others raise :class:`InvalidParameterError`.
        - ``"aggregate_to_fine"`` (Vamvas and Sennrich 2024): the 32 hypotheses best against
          the aggregated reference, then their exact expected utility against every sample;
          O(H + 32 x R). The exact objective among those 32, so it differs from exact MBR only
          when the exact answer ranks below 32nd against the aggregate. ``chrf`` only, as
          ``"aggregate"``.

        The approximations report the exact expected metric of their answer (one more row of
        R evaluations) and what they computed in ``Decision.mbr``. Any value other than
        ``"exact"`` needs the ``"mbr"`` rule (or ``candidates``).

        With a *pointwise* metric (``metric.pointwise``: ``u(c, y)`` does not depend on the
        sample ``y``, as for a reward model), MBR collapses to best-of-N: the expected utility
        ``sum_j w_j u(c, y_j)`` is ``u(c)`` itself, so the decision is the argmax of the
        pointwise scores over the hypotheses, H evaluations and no H x R matrix, whatever
        ``mbr`` says (``Decision.mbr.method`` is ``"pointwise"``). The weights then choose
        nothing but ties (the heavier hypothesis wins), and ``expected_utility`` is the
        chosen hypothesis's score. The default rule of such a metric is ``"mbr"``.
    context:
        The question the samples answer, for a pointwise metric that reads it (``reward``
        scores each candidate as the answer to it). Defaults to the ``SampleSet``'s prompt;
        other metrics ignore it.
    max_expected_loss, min_expected_utility:
        Abstain instead of guessing: when the best answer's expected loss is above
        ``max_expected_loss`` (a loss metric) or its expected utility below
        ``min_expected_utility`` (a utility), the decision has ``output=None``,
        ``abstained=True``, the answer in ``withheld`` and its risk in ``expected_loss`` /
        ``expected_utility``, and ``failure`` says why. The threshold must match the metric's
        direction. The expected loss as uncertainty: Tomov, Fuchsgruber and Günnemann,
        "Task-Awareness Improves LLM Generations and Uncertainty" (2026); ``metricwise eval``
        measures how well it ranks items (risk-coverage curves) before you pick a threshold.
    **metric_args:
        Passed to the registered metric (for example ``tau=0.9`` for ``pinball``).

    Returns
    -------
    Decision
        ``n_valid`` counts the samples that entered the decision and ``excluded`` the others
        by reason. ``output`` is ``None`` and ``failure`` says why when no sample was usable
        (for example "none of the 3 samples could be used as an answer (3 empty)"), or when
        every usable sample has weight 0 (for example all log-probabilities -inf with
        ``weights="model"``).

    Examples
    --------
    >>> from metricwise import decide
    >>> decide(["3", "4", "4", "5"], "squared_error").output
    4.0
    >>> decide(["Paris", "paris.", "Lyon"], "exact_match").output
    'Paris'
    """
    check_weighting(weights)
    metric_obj = resolve(metric, higher_is_better=higher_is_better, **metric_args)
    rule_name = _choose_rule(rule, metric_obj)
    _check_mbr(mbr, metric_obj, "mbr" if candidates is not None else rule_name)
    threshold = _abstention_threshold(metric_obj, max_expected_loss, min_expected_utility)
    numeric = metric_obj.kind == "number" or rule_name in NUMBER_RULES

    raw, logp, logq, finish = _unpack_samples(samples, logprobs, proposal_logprobs)
    if context is None and isinstance(samples, SampleSet):
        context = samples.prompt
    if context is not None and not isinstance(context, str):
        raise InvalidParameterError(
            f"The 'context' parameter of decide must be a string (the question). Got {context!r} instead."
        )
    n_total = len(raw)
    extract_fn = _resolve_extractor(extractor)
    if valid_range is not None:
        valid_range = check_range(valid_range, "decide")

    values: list[Any] = []
    keep: list[int] = []
    excluded: dict[str, int] = {}
    for i, item in enumerate(raw):
        reason = finish[i]
        if not include_incomplete and reason is not None and reason not in COMPLETE_FINISH_REASONS:
            excluded[reason] = excluded.get(reason, 0) + 1
            continue
        if isinstance(item, str) and len(item) > MAX_ANSWER_CHARS:
            excluded["too_long"] = excluded.get("too_long", 0) + 1
            continue
        value = _to_value(item, numeric=numeric, extract_fn=extract_fn, valid_range=valid_range)
        if value is None:
            excluded["unparsable"] = excluded.get("unparsable", 0) + 1
            continue
        if not numeric and not _is_answer_text(value):
            # "", " /" and "..." all normalize to "" for exact match: a few of them would
            # outvote distinct real answers and make "" the decision.
            excluded["empty"] = excluded.get("empty", 0) + 1
            continue
        values.append(value)
        keep.append(i)

    weighting, sample_weights = _sample_weights(
        weights, n_total, keep, raw, logp, logq, weight_temperature
    )
    total = float(sample_weights.sum())
    # `not total > 0` rather than `total <= 0`: a NaN total must fail too, never reach a rule.
    if not values or not (total > 0 and math.isfinite(total)):
        n_inf = _count_infinite_logprobs(weighting, keep, logp, logq)
        why = _failure_message(n_total, excluded, numeric, bool(values), weighting, n_inf, total)
        return _failed(rule_name, metric_obj, n_total, weighting, excluded, why)
    sample_weights = sample_weights / total
    ess = float(1.0 / np.sum(sample_weights**2))

    support_values, support_weights, support_counts = _aggregate(values, sample_weights)
    if candidates is not None:
        rule_name = "mbr"
        output = _best_hypothesis(
            candidates,
            support_values,
            support_weights,
            support_counts,
            metric_obj,
            numeric,
            extract_fn,
            valid_range,
            mbr,
            context,
        )
    elif rule_name == "mbr":
        output = _rule_mbr(
            support_values, support_weights, support_counts, metric_obj, method=mbr, context=context
        )
    else:
        output = _RULE_FUNCTIONS[rule_name](
            support_values, support_weights, support_counts, metric_obj, valid_range, grid
        )
    if output is None:
        return _failed(
            rule_name, metric_obj, n_total, weighting, excluded,
            f"none of the {len(candidates or ())} candidates is a usable answer",
        )  # fmt: skip
    mbr_stats = None
    if isinstance(output, _Scored):
        output, expected, mbr_stats = output.value, output.expected, output.mbr
    else:
        expected = float(metric_obj.pairwise([output], support_values)[0] @ support_weights)

    order = _support_order(support_values, support_weights)
    support = tuple(
        SupportItem(
            value=support_values[k], weight=float(support_weights[k]), count=int(support_counts[k])
        )
        for k in order
    )
    too_risky = _abstention(metric_obj, expected, threshold)
    return Decision(
        output=None if too_risky else output,
        rule=rule_name,
        metric=metric_obj.signature(),
        expected_utility=expected if metric_obj.higher_is_better else None,
        expected_loss=None if metric_obj.higher_is_better else expected,
        n_valid=len(values),
        n_total=n_total,
        support=support,
        weighting=weighting,
        effective_sample_size=ess,
        excluded=excluded,
        mbr=mbr_stats,
        failure=too_risky,
        abstained=too_risky is not None,
        withheld=output if too_risky is not None else None,
    )


def _abstention_threshold(
    metric: Metric, max_expected_loss: float | None, min_expected_utility: float | None
) -> float | None:
    """The risk threshold of an abstaining decision, checked against the metric's direction
    (a loss takes ``max_expected_loss``, a utility ``min_expected_utility``); None without one."""
    if max_expected_loss is None and min_expected_utility is None:
        return None
    name, threshold, wanted = (
        ("min_expected_utility", min_expected_utility, "max_expected_loss")
        if metric.higher_is_better
        else ("max_expected_loss", max_expected_loss, "min_expected_utility")
    )
    if threshold is None:
        kind = "utility" if metric.higher_is_better else "loss"
        raise InvalidParameterError(
            f"The metric {metric.signature()!r} is a {kind}: its abstention threshold is the "
            f"'{name}' parameter of decide. Got '{wanted}' instead."
        )
    if (
        isinstance(threshold, bool)
        or not isinstance(threshold, (int, float))
        or not math.isfinite(threshold)
    ):
        raise InvalidParameterError(
            f"The '{name}' parameter of decide must be a finite number. Got {threshold!r} instead."
        )
    return float(threshold)


def _abstention(metric: Metric, expected: float, threshold: float | None) -> str | None:
    """Why the decision abstains (its risk misses ``threshold``), or None."""
    if threshold is None:
        return None
    if metric.higher_is_better and expected < threshold:
        return (
            f"abstained: the best answer's expected {metric.name} is {expected:.6g}, below "
            f"min_expected_utility={threshold:g}"
        )
    if not metric.higher_is_better and expected > threshold:
        return (
            f"abstained: the best answer's expected {metric.name} is {expected:.6g}, above "
            f"max_expected_loss={threshold:g}"
        )
    return None


def _failed(
    rule: str, metric: Metric, n_total: int, weighting: str, excluded: dict[str, int], why: str
) -> Decision:
    """The Decision that says no answer could be given, and why."""
    return Decision(
        output=None,
        rule=rule,
        metric=metric.signature(),
        expected_utility=math.nan if metric.higher_is_better else None,
        expected_loss=None if metric.higher_is_better else math.nan,
        n_valid=0,
        n_total=n_total,
        support=(),
        weighting=weighting,
        effective_sample_size=0.0,
        excluded=excluded,
        failure=why,
    )


def _best_hypothesis(
    candidates: Sequence[Any],
    values: list[Any],
    weights: np.ndarray,
    counts: np.ndarray,
    metric: Metric,
    numeric: bool,
    extract_fn: Callable[[str], Any] | None,
    valid_range: tuple[float, float] | None,
    method: str = "exact",
    context: str | None = None,
) -> _Scored | None:
    """The hypothesis with the best expected metric against the weighted samples ``values``.

    Ties go to the hypothesis with more weight among the samples, then the smaller value.
    None when no hypothesis is a usable answer.
    """
    if isinstance(candidates, (str, bytes)):
        raise InvalidParameterError(
            f"The 'candidates' parameter of decide must be a sequence of answers. Got {candidates!r} instead."
        )
    hypotheses: list[Any] = []
    for item in candidates:
        if isinstance(item, str) and len(item) > MAX_ANSWER_CHARS:
            continue
        value = _to_value(item, numeric=numeric, extract_fn=extract_fn, valid_range=valid_range)
        if value is not None and (numeric or _is_answer_text(value)):
            hypotheses.append(value)
    if not hypotheses:
        return None
    hypotheses = sorted(set(hypotheses), key=_value_key)
    mass = dict(zip(values, weights, strict=True))
    evidence = np.array([mass.get(h, 0.0) for h in hypotheses])
    return _mbr_search(metric, hypotheses, evidence, values, weights, counts, method, context)


# ---------------------------------------------------------------------------------------------
# Input handling


def check_weighting(weights: object) -> None:
    """Raise for a weighting name that is not one of :data:`WEIGHTINGS`."""
    if isinstance(weights, str) and weights not in WEIGHTINGS:
        raise UnknownNameError(
            f"The 'weights' parameter of decide must be one of {', '.join(WEIGHTINGS)} or an array. "
            f"Got {weights!r} instead.{did_you_mean(weights, list(WEIGHTINGS))}"
        )


def _choose_rule(rule: str | None, metric: Metric) -> str:
    if rule is None:
        return metric.bayes_rule or "mbr"
    if rule not in RULES:
        raise UnknownNameError(
            f"The 'rule' parameter of decide must be one of {', '.join(RULES)}. Got {rule!r} instead."
            f"{did_you_mean(str(rule), list(RULES))}"
        )
    return rule


def _unpack_samples(
    samples: SampleSet | Sequence[Any],
    logprobs: Sequence[float] | None,
    proposal_logprobs: Sequence[float] | None,
) -> tuple[list[Any], np.ndarray | None, np.ndarray | None, list[str | None]]:
    if isinstance(samples, SampleSet):
        raw: list[Any] = [c.text for c in samples.candidates]
        finish = [c.finish_reason for c in samples.candidates]
        if logprobs is None and all(c.logp is not None for c in samples.candidates):
            logprobs = [float(c.logp) for c in samples.candidates]  # type: ignore[arg-type]
        if proposal_logprobs is None and all(c.logq is not None for c in samples.candidates):
            proposal_logprobs = [float(c.logq) for c in samples.candidates]  # type: ignore[arg-type]
    elif isinstance(samples, (str, bytes)):
        raise InvalidParameterError(
            "The 'samples' parameter of decide must be a sequence of answers, not a single string. "
            f"Got {samples!r} instead; wrap it in a list."
        )
    else:
        try:
            raw = list(samples)
        except TypeError:
            raise InvalidParameterError(
                f"The 'samples' parameter of decide must be a sequence or a SampleSet. Got {type(samples).__name__} instead."
            ) from None
        finish = [None] * len(raw)
    logp = _check_logprobs(logprobs, len(raw), "logprobs")
    logq = _check_logprobs(proposal_logprobs, len(raw), "proposal_logprobs")
    return raw, logp, logq, finish


def _check_logprobs(values: Sequence[float] | None, n: int, name: str) -> np.ndarray | None:
    if values is None:
        return None
    if not isinstance(values, np.ndarray):
        missing = [i for i, v in enumerate(values) if v is None]
        if missing:
            which = ", ".join(map(str, missing[:5])) + (", ..." if len(missing) > 5 else "")
            raise InvalidParameterError(
                f"The '{name}' parameter of decide has no value (null) for {len(missing)} of "
                f"{len(values)} samples ({which}): whatever drew them returned no "
                "log-probabilities. The 'model' and 'importance' weights need one for every "
                "sample; use weights='uniform'."
            )
    arr = np.asarray(values, dtype=np.float64)
    if arr.shape != (n,):
        raise InvalidParameterError(
            f"The '{name}' parameter of decide must have shape ({n},), one value per sample. Got shape {arr.shape} instead."
        )
    if np.isnan(arr).any() or (arr > 1e-6).any():
        raise InvalidParameterError(
            f"The '{name}' parameter of decide must hold log-probabilities (<= 0, not NaN). Got {arr[np.isnan(arr) | (arr > 1e-6)][:3].tolist()} instead."
        )
    return arr


def _is_answer_text(text: str) -> bool:
    """Whether ``text`` can be an answer: it holds at least one letter or digit (any script).

    >>> [_is_answer_text(t) for t in ["", " /", "...", "。", "Tokyo", "東京", "-1"]]
    [False, False, False, False, True, True, True]
    """
    return any(ch.isalnum() for ch in text)


def _resolve_extractor(extractor: Callable[[str], Any] | str | None) -> Callable[[str], Any] | None:
    if extractor is None or callable(extractor):
        return extractor
    if isinstance(extractor, str):
        return Extractor.from_spec(extractor)
    raise InvalidParameterError(
        f"The 'extractor' parameter of decide must be a callable or a spec string. Got {extractor!r} instead."
    )


def _to_value(
    item: Any,
    *,
    numeric: bool,
    extract_fn: Callable[[str], Any] | None,
    valid_range: tuple[float, float] | None,
) -> Any:
    """The sample as the decision sees it: a finite float, a string, or None when unusable."""
    if isinstance(item, str) and extract_fn is not None:
        item = extract_fn(item)
        if item is None:
            return None
    if not numeric:
        return item if isinstance(item, str) else str(item)
    if isinstance(item, bool):
        return None
    if isinstance(item, (int, float, np.integer, np.floating)):
        value = float(item)
        if not math.isfinite(value):
            return None
        return value if valid_range is None else clip(value, valid_range)
    return extract_number(str(item), valid_range=valid_range)


def _sample_weights(
    weights: str | Sequence[float] | np.ndarray | None,
    n_total: int,
    keep: list[int],
    raw: list[Any],
    logp: np.ndarray | None,
    logq: np.ndarray | None,
    temperature: float,
) -> tuple[str, np.ndarray]:
    """Unnormalized weights of the kept samples, shape (len(keep),), and the weighting's name."""
    idx = np.asarray(keep, dtype=np.int64)
    if weights is None or (isinstance(weights, str) and weights == "uniform"):
        return "uniform", np.ones(len(keep))
    if isinstance(weights, str):
        if weights == "model":
            if logp is None:
                raise InvalidParameterError(
                    "The 'weights' parameter of decide is 'model', which needs 'logprobs' (or a SampleSet "
                    "whose candidates have logp). Got no log-probabilities."
                )
            if not (temperature > 0 and math.isfinite(temperature)):
                raise InvalidParameterError(
                    f"The 'weight_temperature' parameter of decide must be a finite float > 0. Got {temperature!r} instead."
                )
            return "model", _model_weights(raw, logp, idx, temperature)
        if weights == "importance":
            if logp is None or logq is None:
                raise InvalidParameterError(
                    "The 'weights' parameter of decide is 'importance', which needs both 'logprobs' (log p) "
                    "and 'proposal_logprobs' (log q), or a SampleSet whose candidates have both."
                )
            # log q = -inf (a sampled text the sampler gave probability 0: a missing value) has
            # no usable ratio, and log p = -inf means p = 0: both get weight 0.
            lp, lq = logp[idx], logq[idx]
            finite = np.isfinite(lp) & np.isfinite(lq)
            log_ratio = np.full(len(idx), -np.inf)
            log_ratio[finite] = lp[finite] - lq[finite]
            return "importance", _exp_normalized(log_ratio)
        check_weighting(weights)
    arr = np.asarray(weights, dtype=np.float64)
    if arr.shape != (n_total,):
        raise InvalidParameterError(
            f"The 'weights' parameter of decide must have shape ({n_total},), one weight per sample. Got shape {arr.shape} instead."
        )
    if not np.isfinite(arr).all() or (arr < 0).any():
        raise InvalidParameterError(
            "The 'weights' parameter of decide must be finite and non-negative."
        )
    kept = arr[idx]
    with np.errstate(over="ignore"):
        overflows = not math.isfinite(float(kept.sum()))
    if overflows:
        # Finite weights near the float maximum overflow when summed; only their ratios matter.
        kept = kept / kept.max()
    return "explicit", kept


def _model_weights(
    raw: list[Any], logp: np.ndarray, idx: np.ndarray, temperature: float
) -> np.ndarray:
    """softmax(logp / T) over distinct texts; each text's mass is shared by its copies."""
    groups: dict[str, list[int]] = {}
    for position, i in enumerate(idx):
        groups.setdefault(str(raw[i]), []).append(position)
    keys = list(groups)
    # A text has one sequence probability; averaging guards against tiny numeric drift between
    # copies. A copy without one (-inf: a null from the server) does not erase the others'.
    scaled = np.array([_finite_mean(logp[idx[groups[k]]]) for k in keys]) / temperature
    mass = _exp_normalized(scaled)
    out = np.empty(len(idx))
    for k, m in zip(keys, mass, strict=True):
        members = groups[k]
        out[members] = m / len(members)
    return out


def _finite_mean(values: np.ndarray) -> float:
    """Mean of the finite entries of ``values``; -inf when there are none."""
    finite = values[np.isfinite(values)]
    return float(np.mean(finite)) if len(finite) else -math.inf


def _exp_normalized(log_weights: np.ndarray) -> np.ndarray:
    """``exp(log_weights - max)``, shape kept; all zeros when no entry is finite.

    Subtracting the largest finite entry keeps the exponentials in range; with none finite,
    ``-inf - (-inf)`` would be NaN, so every weight is 0 and the decision fails with a reason.
    """
    finite = np.isfinite(log_weights)
    if not finite.any():
        return np.zeros(len(log_weights))
    return np.where(finite, np.exp(log_weights - np.max(log_weights[finite])), 0.0)


def _count_infinite_logprobs(
    weighting: str, keep: list[int], logp: np.ndarray | None, logq: np.ndarray | None
) -> int:
    """How many kept samples have a log-probability of -inf that their weighting reads."""
    used = {"model": [logp], "importance": [logp, logq]}.get(weighting, [])
    idx = np.asarray(keep, dtype=np.int64)
    infinite = np.zeros(len(idx), dtype=bool)
    for logs in used:
        if logs is not None:
            infinite |= ~np.isfinite(logs[idx])
    return int(infinite.sum())


def _failure_message(
    n_total: int,
    excluded: dict[str, int],
    numeric: bool,
    had_values: bool,
    weighting: str,
    n_inf: int,
    total_weight: float,
) -> str:
    """Why no decision was made: no samples, none usable, or no usable one with weight > 0.

    ``n_inf`` counts the usable samples whose ``logprobs`` (or ``proposal_logprobs``) read by
    the weighting are -inf; ``total_weight`` is the usable samples' unnormalized weight.
    """
    if n_total == 0:
        return "no samples were given"
    if had_values and n_inf > 0:
        needs = "'logprobs'" if weighting == "model" else "'logprobs' and 'proposal_logprobs'"
        return (
            f"no usable sample has a finite log-probability ({n_inf} have -inf); the "
            f"'{weighting}' weighting needs finite {needs} (a backend that returns token "
            "log-probabilities), or use weights='uniform'"
        )
    if had_values:
        if total_weight == 0:
            return "every usable sample has weight 0"
        return f"the usable samples' weights sum to {total_weight!r}, not a finite number > 0"
    parts = ", ".join(f"{count} {reason}" for reason, count in sorted(excluded.items()))
    what = "a number" if numeric else "an answer"
    return f"none of the {n_total} samples could be used as {what} ({parts})"


# ---------------------------------------------------------------------------------------------
# Aggregation and tie-breaking


def _aggregate(values: list[Any], weights: np.ndarray) -> tuple[list[Any], np.ndarray, np.ndarray]:
    """Distinct values with summed weights and counts, in a canonical (sorted) order."""
    totals: dict[Any, float] = {}
    counts: dict[Any, int] = {}
    for v, w in zip(values, weights, strict=True):
        totals[v] = totals.get(v, 0.0) + float(w)
        counts[v] = counts.get(v, 0) + 1
    distinct = sorted(totals, key=_value_key)
    return (
        distinct,
        np.array([totals[v] for v in distinct]),
        np.array([counts[v] for v in distinct], dtype=np.int64),
    )


def _value_key(value: Any) -> tuple[int, Any]:
    if isinstance(value, (int, float)):
        return (0, float(value))
    return (1, str(value))


def _support_order(values: list[Any], weights: np.ndarray) -> list[int]:
    return sorted(range(len(values)), key=lambda k: (-weights[k], _value_key(values[k])))


def _best_index(
    scores: np.ndarray, weights: np.ndarray, values: list[Any], higher_is_better: bool
) -> int:
    """Index of the optimal score; ties go to the heavier candidate, then the smaller value."""
    tied = _tied_with_max(scores if higher_is_better else -scores)
    return min(tied, key=lambda k: (-weights[k], _value_key(values[k])))


def _check_ranked(scores: np.ndarray, metric: Metric, hypotheses: Sequence[Any]) -> None:
    """Raise a clear error when a metric gave NaN, which no rule can rank (a model-based
    utility overflowing in half precision, say); -inf and +inf rank as the worst and best."""
    bad = np.flatnonzero(np.isnan(scores))
    if bad.size:
        raise MetricwiseError(
            f"The metric {metric.name!r} gave NaN for {bad.size} of {len(scores)} hypotheses "
            f"(the first: {str(hypotheses[int(bad[0])])[:60]!r}), which cannot be ranked. "
            "Check the metric (a model in float16 can overflow; try float32)."
        )


def _tied_with_max(scores: np.ndarray) -> list[int]:
    """Indices of the scores within the tie tolerance (``_TIE_RTOL``, relative) of the maximum."""
    best = float(np.max(scores))
    if math.isinf(best):  # all -inf (nothing usable) or some +inf: equal to the maximum
        return [k for k in range(len(scores)) if scores[k] == best]
    tol = _TIE_RTOL * max(1.0, abs(best))
    return [k for k in range(len(scores)) if scores[k] >= best - tol]


def weighted_quantile(
    values: Sequence[float] | np.ndarray, weights: Sequence[float] | np.ndarray, tau: float
) -> float:
    """The tau-quantile minimising expected pinball loss under a weighted sample.

    Parameters
    ----------
    values, weights:
        Shape (K,) each; weights non-negative with a positive sum. Values with weight 0 are
        ignored.
    tau:
        Level in (0, 1); 0.5 gives the median.

    Returns
    -------
    float
        The smallest ``x_k`` whose cumulative weight exceeds ``tau``; when the cumulative weight
        equals ``tau`` exactly at ``x_k`` every point of ``[x_k, x_{k+1}]`` is optimal and the
        midpoint is returned (so uniform weights reproduce ``numpy.median``).
    """
    weights = np.asarray(weights, dtype=np.float64)
    return float(weighted_quantiles(values, weights[None, :], tau)[0])


def weighted_quantiles(
    values: Sequence[float] | np.ndarray, weights: np.ndarray, tau: float
) -> np.ndarray:
    """:func:`weighted_quantile` for every row of ``weights`` at once.

    Parameters
    ----------
    values:
        Shape (K,), shared by all rows.
    weights:
        Shape (B, K), non-negative, each row with a positive sum (adaptive sampling passes
        hundreds of resampled weightings of the same values).

    Returns
    -------
    ndarray, shape (B,)
    """
    v = np.asarray(values, dtype=np.float64)
    order = np.argsort(v, kind="stable")
    v, w = v[order], np.asarray(weights, dtype=np.float64)[:, order]
    cumulative = np.cumsum(w, axis=1) / w.sum(axis=1, keepdims=True)
    k = np.minimum((cumulative < tau - 1e-12).sum(axis=1), len(v) - 1)
    at_k = cumulative[np.arange(len(w)), k]
    # The midpoint's other end is the next value with weight: one with weight 0 carries no
    # evidence (and in a resample was never drawn).
    following = np.minimum((cumulative <= at_k[:, None]).sum(axis=1), len(v) - 1)
    midpoint = (np.abs(at_k - tau) <= 1e-12) & (following > k)
    return np.where(midpoint, (v[k] + v[following]) / 2, v[k])


# ---------------------------------------------------------------------------------------------
# The rules. Each gets the distinct values (canonical order), their weights (sum 1) and counts.


def _rule_mode(
    values: list[Any], weights: np.ndarray, counts: np.ndarray, metric: Metric, *_: Any
) -> Any:
    """Weighted majority over the metric's equivalence classes (``metric.normalize``)."""
    class_weight: dict[Any, float] = {}
    members: dict[Any, list[int]] = {}
    for k, v in enumerate(values):
        key = metric.normalize(v)
        class_weight[key] = class_weight.get(key, 0.0) + float(weights[k])
        members.setdefault(key, []).append(k)
    keys = list(class_weight)
    key_weights = np.array([class_weight[key] for key in keys])

    def surface_form(key: Any) -> Any:
        """A class is reported by its heaviest surface form."""
        group = members[key]
        k = _best_index(
            weights[group], weights[group], [values[g] for g in group], higher_is_better=True
        )
        return values[group[k]]

    tied = [keys[k] for k in _tied_with_max(key_weights)]
    if len(tied) == 1:
        return surface_form(tied[0])
    # Equally frequent answers are all Bayes-optimal; the one closest to the rest of the sample
    # is chosen (with 16 distinct answers, the smallest string would be an arbitrary pick).
    forms = [surface_form(key) for key in tied]
    closeness = _closeness(forms, values, weights)
    tied_weights = np.array([class_weight[key] for key in tied])
    return forms[_best_index(closeness, tied_weights, forms, higher_is_better=True)]


def _closeness(forms: list[Any], values: list[Any], weights: np.ndarray) -> np.ndarray:
    """Shape (len(forms),): expected similarity of each form to the sample ``values``.

    Minus the absolute difference for numbers, SQuAD token F1 for text.
    """
    from metricwise.metrics import get as get_metric

    if all(isinstance(v, (int, float)) for v in [*forms, *values]):
        similarity, cands, refs = get_metric("absolute_error"), forms, values
    else:
        similarity, cands, refs = (
            get_metric("token_f1"),
            [str(f) for f in forms],
            [str(v) for v in values],
        )
    sign = 1.0 if similarity.higher_is_better else -1.0
    return sign * _expected_scores(similarity, cands, refs, weights)


def _expected_scores(
    metric: Metric, cands: list[Any], refs: list[Any], weights: np.ndarray
) -> np.ndarray:
    """Shape (C,): ``sum_j weights[j] * metric(cands[i], refs[j])`` for every candidate.

    Parameters
    ----------
    metric:
        The metric whose ``pairwise`` fills the (C, R) matrix.
    cands, refs:
        C candidates and R references (for MBR the same list object on both sides).
    weights:
        Shape (R,), the references' weights.

    Notes
    -----
    The (C, R) float64 matrix is filled in one call when it fits in ``_PAIRWISE_BUDGET_BYTES``
    (allowing ``_PAIRWISE_WORKING_COPIES`` arrays of its size for the metric's intermediates):
    with identical lists a metric then computes every string's features once. Otherwise it is
    filled in blocks of candidate rows, each reduced to its expected scores before the next, so
    peak memory does not grow with C x R. Time is O(C x R) metric evaluations either way; the
    blocked path repeats the references' per-string features once per block, except for a
    metric with ``statistics`` (chrF, BLEU, token F1), whose statistics are computed once and
    compared block by block (the same values).
    """
    rows = _block_rows(len(refs))
    if len(cands) <= rows:
        return metric.pairwise(cands, refs) @ weights
    if _has_statistics(metric):
        return _PairScorer(metric, cands, refs).expected(np.arange(len(cands)), weights)
    starts = range(0, len(cands), rows)
    return np.concatenate([metric.pairwise(cands[i : i + rows], refs) @ weights for i in starts])


def _block_rows(n_refs: int) -> int:
    """Candidate rows per ``pairwise`` call that keep a call within the memory budget (>= 1)."""
    cells = _PAIRWISE_BUDGET_BYTES // (8 * _PAIRWISE_WORKING_COPIES)
    return max(1, cells // max(1, n_refs))


def _rule_mean(values: list[Any], weights: np.ndarray, *_: Any) -> float:
    return float(np.dot(np.asarray(values, dtype=np.float64), weights))


def _rule_median(values: list[Any], weights: np.ndarray, *_: Any) -> float:
    return weighted_quantile(values, weights, 0.5)


def _rule_quantile(
    values: list[Any], weights: np.ndarray, counts: np.ndarray, metric: Metric, *_: Any
) -> float:
    return weighted_quantile(values, weights, float(getattr(metric, "tau", 0.5)))


@dataclass(frozen=True)
class _Scored:
    """A rule's output together with its expected score, when the rule computed it anyway."""

    value: Any
    expected: float
    mbr: MBRStats | None = None


def _rule_mbr(
    values: list[Any],
    weights: np.ndarray,
    counts: np.ndarray,
    metric: Metric,
    *_: Any,
    method: str = "exact",
    context: str | None = None,
) -> _Scored:
    """argmax over distinct candidates c of sum_j w_j u(c, y_j), from the (C, C) pairwise matrix.

    The matrix is filled in blocks of rows when it does not fit in the memory budget (see
    :func:`_expected_scores`). ``method`` ``"prune"`` or ``"aggregate"`` approximates the argmax
    instead, and a pointwise metric needs no matrix at all (see :func:`_mbr_search`).
    """
    return _mbr_search(metric, values, weights, values, weights, counts, method, context)


# ---------------------------------------------------------------------------------------------
# MBR: exact, pruned, aggregated


def _check_mbr(method: object, metric: Metric, rule: str) -> None:
    """Raise for an unknown MBR method, or one that the metric or the rule cannot use."""
    if not isinstance(method, str) or method not in MBR_METHODS:
        raise UnknownNameError(
            f"The 'mbr' parameter of decide must be one of {', '.join(MBR_METHODS)}. Got {method!r} instead."
            f"{did_you_mean(str(method), list(MBR_METHODS))}"
        )
    if method == "exact":
        return
    if rule != "mbr":
        raise InvalidParameterError(
            f"The 'mbr' parameter of decide applies to the 'mbr' rule, but metric {metric.name!r} is "
            f"decided by the {rule!r} rule. Got mbr={method!r} instead; pass rule='mbr' or leave mbr='exact'."
        )
    if method.startswith("aggregate") and not metric.pointwise and not _can_aggregate(metric):
        raise InvalidParameterError(
            f"The 'mbr' parameter of decide is {method!r}, which needs a metric whose n-gram "
            "statistics can be averaged over the samples (chrf, also with word_order). Got metric "
            f"{metric.signature()!r} instead; use mbr='prune' or mbr='exact'."
        )


def _has_statistics(metric: Metric) -> TypeGuard[StatisticsMetric]:
    """Whether ``metric`` computes per-string statistics once and compares row subsets of them
    (a :class:`~metricwise.metrics.base.StatisticsMetric`: chrF, BLEU, token F1)."""
    return isinstance(metric, StatisticsMetric)


def _can_aggregate(metric: Metric) -> TypeGuard[AggregatableMetric]:
    """Whether ``metric`` scores hypotheses against averaged statistics (chrF)."""
    return isinstance(metric, AggregatableMetric)


def _mbr_search(
    metric: Metric,
    hypotheses: list[Any],
    evidence: np.ndarray,
    refs: list[Any],
    weights: np.ndarray,
    counts: np.ndarray,
    method: str,
    context: str | None = None,
) -> _Scored:
    """The MBR choice among ``hypotheses`` against the weighted distinct samples ``refs``.

    Parameters
    ----------
    metric:
        The utility (or loss).
    hypotheses:
        H distinct candidates (for MBR over the samples, the same list object as ``refs``).
    evidence:
        Shape (H,): each hypothesis's weight among the samples, for tie-breaking.
    refs, weights, counts:
        R distinct samples, shape (R,) weights summing to 1, and shape (R,) how many samples
        each stands for.
    method:
        ``"exact"`` (H x R evaluations, blocked under the memory budget), ``"prune"``
        (:func:`_pruned_choice`) or ``"aggregate"`` (:func:`_aggregate_choice`). Ignored for a
        pointwise metric (``metric.pointwise``), whose expected utility is its score: H
        evaluations of ``metric.pointwise_scores`` decide, reported as method ``"pointwise"``.
    context:
        The question, passed to a pointwise metric's ``pointwise_scores``.

    Returns
    -------
    _Scored
        The chosen hypothesis, its exact expected metric against all of ``refs`` (for the
        approximations one more row of R evaluations), and :class:`MBRStats`.
    """
    n_h, n_r = len(hypotheses), len(refs)
    if metric.pointwise:
        # sum_j w_j u(h, y_j) = u(h) when u ignores y (the weights sum to 1): best-of-N.
        scores = np.asarray(metric.pointwise_scores(hypotheses, context=context), dtype=np.float64)
        if scores.shape != (n_h,):
            raise InvalidParameterError(
                f"The pointwise_scores of metric {metric.name!r} must return shape ({n_h},), one "
                f"score per hypothesis. Got shape {scores.shape} instead."
            )
        _check_ranked(scores, metric, hypotheses)
        best = _best_index(scores, evidence, hypotheses, metric.higher_is_better)
        stats = MBRStats("pointwise", n_h, n_r, evaluations=n_h, rounds=1, remaining=n_h)
        return _Scored(hypotheses[best], float(scores[best]), stats)
    if method == "exact":
        expected = _expected_scores(metric, hypotheses, refs, weights)
        _check_ranked(expected, metric, hypotheses)
        best = _best_index(expected, evidence, hypotheses, metric.higher_is_better)
        stats = MBRStats("exact", n_h, n_r, evaluations=n_h * n_r, rounds=1, remaining=n_h)
        return _Scored(hypotheses[best], float(expected[best]), stats)
    scorer = _PairScorer(metric, hypotheses, refs)
    if method == "aggregate_to_fine":
        best, remaining, expected_best = _aggregate_to_fine_choice(scorer, evidence, weights)
        stats = MBRStats(method, n_h, n_r, scorer.evaluations, rounds=2, remaining=remaining)
        return _Scored(hypotheses[best], expected_best, stats)
    if method == "aggregate":
        best, rounds, remaining = _aggregate_choice(scorer, evidence, weights), 1, n_h
    else:
        best, rounds, remaining = _pruned_choice(scorer, evidence, weights, counts)
    expected_best = float(scorer.pairwise(np.array([best]), np.arange(n_r))[0] @ weights)
    stats = MBRStats(method, n_h, n_r, scorer.evaluations, rounds=rounds, remaining=remaining)
    return _Scored(hypotheses[best], expected_best, stats)


class _PairScorer:
    """Utilities of (hypothesis, reference) index pairs, with the per-string work done once.

    A metric with statistics (see :func:`_has_statistics`) has them computed once for all
    strings, and each call compares row subsets of them; any other metric gets
    ``pairwise`` on the strings. ``evaluations`` counts the pairs scored.
    """

    def __init__(self, metric: Metric, hypotheses: list[Any], refs: list[Any]) -> None:
        self.metric = metric
        self.hypotheses, self.refs = hypotheses, refs
        self.evaluations = 0
        self.stats: Any = None
        self.stats_metric: StatisticsMetric | None = None
        if _has_statistics(metric):
            same = hypotheses is refs
            self.stats_metric = metric
            self.stats = metric.statistics(hypotheses if same else [*hypotheses, *refs])
            self.hyp_rows = np.arange(len(hypotheses))
            self.ref_rows = self.hyp_rows if same else len(hypotheses) + np.arange(len(refs))

    def pairwise(self, hyp_index: np.ndarray, ref_index: np.ndarray) -> np.ndarray:
        """Shape (len(hyp_index), len(ref_index)): ``u(hypotheses[i], refs[j])``."""
        self.evaluations += len(hyp_index) * len(ref_index)
        if self.stats_metric is None:
            return self.metric.pairwise(
                [self.hypotheses[i] for i in hyp_index], [self.refs[j] for j in ref_index]
            )
        take = self.stats.take
        return self.stats_metric.pairwise_statistics(
            take(self.hyp_rows[hyp_index]), take(self.ref_rows[ref_index])
        )

    def expected(self, hyp_index: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """Shape (len(hyp_index),): exact expected metric against all references, in blocks
        of rows under the memory budget (as :func:`_expected_scores`)."""
        rows = _block_rows(len(self.refs))
        everything = np.arange(len(self.refs))
        parts = [
            self.pairwise(hyp_index[i : i + rows], everything) @ weights
            for i in range(0, len(hyp_index), rows)
        ]
        return np.concatenate(parts) if parts else np.zeros(0)

    def aggregate(self, weights: np.ndarray) -> np.ndarray:
        """Shape (H,): each hypothesis against the ``weights``-averaged references."""
        metric = self.metric
        if not _can_aggregate(metric):  # refused before any work (see _check_mbr)
            raise InvalidParameterError(f"The metric {metric.signature()!r} cannot aggregate.")
        take = self.stats.take
        return metric.aggregate_statistics(take(self.hyp_rows), take(self.ref_rows), weights)


def _aggregate_choice(scorer: _PairScorer, evidence: np.ndarray, weights: np.ndarray) -> int:
    """Index of the hypothesis with the best metric against the aggregated reference.

    DeNero et al. (2009); Vamvas and Sennrich (2024): O(total n-grams) for all H scores instead
    of H x R pairwise evaluations. Ties are broken as exact MBR breaks them.
    """
    scores = scorer.aggregate(weights)
    return _best_index(scores, evidence, scorer.hypotheses, scorer.metric.higher_is_better)


def _aggregate_to_fine_choice(
    scorer: _PairScorer, evidence: np.ndarray, weights: np.ndarray
) -> tuple[int, int, float]:
    """(index of the chosen hypothesis, how many went on to the exact stage, its exact
    expected metric).

    Aggregate-to-fine MBR (Vamvas and Sennrich 2024): the ``_AGGREGATE_TOP`` hypotheses best
    against the aggregated reference (ties at the cut kept in the order exact MBR would break
    them) are scored exactly against every reference, and the best of those wins, ties broken
    as exact MBR breaks them. Cost O(entries) + ``_AGGREGATE_TOP`` x R evaluations.
    """
    hypotheses = scorer.hypotheses
    if len(hypotheses) <= _AGGREGATE_TOP:  # all of them go on: the aggregate ranks nothing
        top = np.arange(len(hypotheses))
    else:
        sign = 1.0 if scorer.metric.higher_is_better else -1.0
        coarse = sign * scorer.aggregate(weights)
        # Stable sort from the order exact MBR's tie-break prefers (more weight, then value).
        ranked = sorted(_support_order(hypotheses, evidence), key=lambda i: -coarse[i])
        top = np.array(sorted(ranked[:_AGGREGATE_TOP]))
    fine = scorer.expected(top, weights)
    local = _best_index(
        fine, evidence[top], [hypotheses[i] for i in top], scorer.metric.higher_is_better
    )
    return int(top[local]), len(top), float(fine[local])


def _pruned_choice(
    scorer: _PairScorer, evidence: np.ndarray, weights: np.ndarray, counts: np.ndarray
) -> tuple[int, int, int]:
    """Confidence-based pruning (Cheng and Vlachos, EMNLP 2023). Returns (best, rounds, left).

    The N samples (distinct reference j stands for ``counts[j]`` samples of weight
    ``weights[j] / counts[j]``) enter in a seeded pseudo-random order: ``_PRUNE_FIRST_ROUND``,
    then ``_PRUNE_GROWTH`` times as many each round. A round scores the hypotheses still in
    contention against the distinct references it newly needs and estimates their expected
    utilities on the samples so far (self-normalised weighted means). It then resamples those
    samples ``_PRUNE_BOOTSTRAP`` times with replacement: a hypothesis whose resampled estimate
    ties or beats the leader's in fewer than ``_PRUNE_MIN_WINS`` resamples is dropped (a paired
    bootstrap on the same resamples; the leader always stays; a hypothesis below the leader on
    every sample so far is dropped without resampling, since it cannot win any resample). The
    search stops when one hypothesis is left or every sample has been used; then the best
    estimate among the survivors (their exact expected utility) wins, ties broken as exact MBR
    breaks them.

    Cost: the sum over rounds of (hypotheses left) x (new distinct references) evaluations (the
    first round alone is H x 32), plus O(left x distinct references x resamples) flops for the
    bootstrap. Memory: the survivors' utilities against the references so far; when that
    would pass the memory budget, the survivors are finished exactly in blocks instead.
    """
    n_h = len(scorer.hypotheses)
    if n_h == 1:
        return 0, 0, 1
    rng = np.random.default_rng(_PRUNE_SEED)
    # Every sample as a unit (a distinct reference's copies share its weight), in random order.
    unit_ref = np.repeat(np.arange(len(counts)), counts)
    unit_weight = np.repeat(weights / counts, counts)
    # Samples of weight 0 (importance weights of a sample the model rules out) are no evidence.
    unit_ref, unit_weight = unit_ref[unit_weight > 0], unit_weight[unit_weight > 0]
    order = rng.permutation(len(unit_ref))
    unit_ref, unit_weight = unit_ref[order], unit_weight[order]
    n_units = len(unit_ref)
    sign = 1.0 if scorer.metric.higher_is_better else -1.0  # work with "larger is better"
    cell_budget = _PAIRWISE_BUDGET_BYTES // (8 * _PAIRWISE_WORKING_COPIES)

    alive = np.arange(n_h)
    column = np.full(len(counts), -1, dtype=np.int64)  # reference -> its column in `utility`
    utility = np.zeros((n_h, 0))
    size, rounds = min(_PRUNE_FIRST_ROUND, n_units), 0
    while True:
        rounds += 1
        unit_column_ref = unit_ref[:size]
        new = np.unique(unit_column_ref[column[unit_column_ref] < 0])
        if len(alive) * (utility.shape[1] + len(new)) > cell_budget:
            # Pruning has not narrowed the field enough to keep its matrix in memory.
            expected = sign * scorer.expected(alive, weights)
            break
        if len(new):
            column[new] = utility.shape[1] + np.arange(len(new))
            utility = np.hstack([utility, sign * scorer.pairwise(alive, new)])
        unit_column = column[unit_column_ref]
        w = unit_weight[:size]
        # Weight of each reference column among the samples so far (a reference may repeat).
        column_weight = np.bincount(unit_column, weights=w, minlength=utility.shape[1])
        expected = utility @ column_weight / w.sum()
        if size == n_units:
            break
        leader = int(np.argmax(expected))
        # A hypothesis below the leader on every sample so far is below it in every resample
        # (a resample's mean is a weighted mean of those samples): its win rate is exactly 0,
        # without resampling. Only the others are bootstrapped.
        used = np.unique(unit_column)
        open_ = np.flatnonzero((utility[:, used] >= utility[leader, used]).any(axis=1))
        keep = np.zeros(len(alive), dtype=bool)
        if len(open_) > 1:
            local_leader = int(np.searchsorted(open_, leader))
            wins = _bootstrap_wins(utility[open_], unit_column, w, local_leader, rng)
            keep[open_] = wins >= _PRUNE_MIN_WINS
        keep[leader] = True
        alive, utility, expected = alive[keep], utility[keep], expected[keep]
        if len(alive) == 1:
            break
        size = min(_PRUNE_GROWTH * size, n_units)
    if len(alive) == 1:
        return int(alive[0]), rounds, 1
    hypotheses = [scorer.hypotheses[i] for i in alive]
    local = _best_index(expected, evidence[alive], hypotheses, higher_is_better=True)
    return int(alive[local]), rounds, len(alive)


def _bootstrap_wins(
    utility: np.ndarray,
    unit_column: np.ndarray,
    unit_weight: np.ndarray,
    leader: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Shape (H,): in how many of the ``_PRUNE_BOOTSTRAP`` bootstrap resamples each row's
    weighted mean utility is at least the leader's.

    ``utility`` is (H, D) over distinct references; the n samples map to columns
    ``unit_column`` with weights ``unit_weight``. Each resample draws n samples with
    replacement; the resamples go in chunks so that their (chunk, n) counts stay small.
    """
    n = len(unit_column)
    n_columns = utility.shape[1]
    chunk = max(1, min(_PRUNE_BOOTSTRAP, (1 << 21) // max(n, n_columns)))
    wins = np.zeros(len(utility), dtype=np.int64)
    for start in range(0, _PRUNE_BOOTSTRAP, chunk):
        b = min(chunk, _PRUNE_BOOTSTRAP - start)
        draws = rng.integers(0, n, size=(b, n), dtype=np.int32)
        # Resampled weight of each reference column, per resample: (b, D).
        flat = (np.arange(b)[:, None] * n_columns + unit_column[draws]).ravel()
        column_weight = np.bincount(
            flat, weights=unit_weight[draws].ravel(), minlength=b * n_columns
        ).reshape(b, n_columns)
        means = (utility @ column_weight.T) / column_weight.sum(axis=1)  # (H, b)
        wins += (means >= means[leader]).sum(axis=1)
    return wins


def _rule_grid(
    values: list[Any],
    weights: np.ndarray,
    counts: np.ndarray,
    metric: Metric,
    valid_range: tuple[float, float] | None,
    grid: Sequence[float] | None,
) -> Any:
    """Snap samples to the nearest grid value, then apply the metric's own rule on the grid.

    For squared error this is the expectation over the grid, ``sum_g p(g) * g``, with ``p(g)`` the
    weight of samples nearest to ``g``; for other metrics the optimum over the grid's
    distribution (median, quantile, mode, or MBR with the grid values as candidates).
    """
    grid_values = _grid_values(grid, valid_range)
    v = np.asarray(values, dtype=np.float64)
    nearest = np.abs(v[:, None] - grid_values[None, :]).argmin(axis=1)  # ties: the lower grid value
    grid_weights = np.bincount(nearest, weights=weights, minlength=len(grid_values))
    inner = (
        metric.bayes_rule if metric.bayes_rule in ("mean", "median", "quantile", "mode") else "mbr"
    )
    # Counts move to the grid with their samples, so that the inner rule gets one count per value.
    grid_counts = np.bincount(nearest, weights=counts, minlength=len(grid_values)).astype(np.int64)
    present = grid_weights > 0
    g_values = [float(g) for g in grid_values[present]]
    g_weights = grid_weights[present]
    if inner == "mbr":
        # Any grid value may be the answer, also one no sample is nearest to.
        all_values = [float(g) for g in grid_values]
        expected = _expected_scores(metric, all_values, g_values, g_weights)
        return all_values[_best_index(expected, grid_weights, all_values, metric.higher_is_better)]
    return _RULE_FUNCTIONS[inner](
        g_values, g_weights, grid_counts[present], metric, valid_range, None
    )


def _grid_values(
    grid: Sequence[float] | None, valid_range: tuple[float, float] | None
) -> np.ndarray:
    if grid is not None:
        arr = np.unique(np.asarray(list(grid), dtype=np.float64))
        if arr.size == 0 or not np.isfinite(arr).all():
            raise InvalidParameterError(
                f"The 'grid' parameter of decide must be non-empty finite numbers. Got {grid!r} instead."
            )
        return arr
    if valid_range is not None and all(float(x).is_integer() for x in valid_range):
        return np.arange(valid_range[0], valid_range[1] + 1, dtype=np.float64)
    raise InvalidParameterError(
        "The 'grid' rule needs the 'grid' parameter (the allowed values, e.g. [1, 2, 3, 4, 5]) or an "
        f"integer 'valid_range' such as (1, 5). Got grid={grid!r}, valid_range={valid_range!r} instead."
    )


_RULE_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "mode": _rule_mode,
    "mean": _rule_mean,
    "median": _rule_median,
    "quantile": _rule_quantile,
    "grid": _rule_grid,
    "mbr": _rule_mbr,
}
