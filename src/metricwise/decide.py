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
closeness) that would not fit in ``PAIRWISE_BUDGET_BYTES`` (256 MiB) is filled and reduced in
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
from typing import Any

import numpy as np

from metricwise.errors import InvalidParameterError, UnknownNameError, did_you_mean
from metricwise.extract import Extractor, check_range, clip, extract_number
from metricwise.mbr import Exact, MBRMethod, Scored, resolve_method
from metricwise.mbr import search as mbr_search
from metricwise.mbr.ranking import (
    best_index,
    can_aggregate,
    expected_scores,
    support_order,
    tied_with_max,
    value_key,
)
from metricwise.metrics.base import Metric, resolve
from metricwise.types import COMPLETE_FINISH_REASONS, Decision, SampleSet, SupportItem

RULES: tuple[str, ...] = ("mode", "mean", "median", "quantile", "grid", "mbr")
#: A sample or hypothesis text longer than this (about 25,000 tokens of English) is left out of
#: a decision as ``"too_long"``: it bounds the memory of any metric's statistics per sample
#: (chrF's n-grams of 100,000 characters take about 11 MB).
MAX_ANSWER_CHARS = 100_000
NUMBER_RULES: frozenset[str] = frozenset({"mean", "median", "quantile", "grid"})
WEIGHTINGS: tuple[str, ...] = ("uniform", "model", "importance")


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
    mbr: str | MBRMethod = "exact",
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
        R evaluations) and what they computed in ``Decision.mbr``. A name takes the method's
        default settings; a method object of :mod:`metricwise.mbr` sets them
        (``mbr=metricwise.mbr.Prune(bootstrap=1000)``, ``AggregateToFine(top=64)``). Any value other than
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
    mbr_method = _check_mbr(mbr, metric_obj, "mbr" if candidates is not None else rule_name)
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
            mbr_method,
            context,
        )
    elif rule_name == "mbr":
        output = _rule_mbr(
            support_values,
            support_weights,
            support_counts,
            metric_obj,
            method=mbr_method,
            context=context,
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
    if isinstance(output, Scored):
        output, expected, mbr_stats = output.value, output.expected, output.mbr
    else:
        expected = float(metric_obj.pairwise([output], support_values)[0] @ support_weights)

    order = support_order(support_values, support_weights)
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
    method: MBRMethod = Exact(),  # noqa: B008 (frozen: one shared default is safe)
    context: str | None = None,
) -> Scored | None:
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
    hypotheses = sorted(set(hypotheses), key=value_key)
    mass = dict(zip(values, weights, strict=True))
    evidence = np.array([mass.get(h, 0.0) for h in hypotheses])
    return mbr_search(metric, hypotheses, evidence, values, weights, counts, method, context)


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
    distinct = sorted(totals, key=value_key)
    return (
        distinct,
        np.array([totals[v] for v in distinct]),
        np.array([counts[v] for v in distinct], dtype=np.int64),
    )


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
        k = best_index(
            weights[group], weights[group], [values[g] for g in group], higher_is_better=True
        )
        return values[group[k]]

    tied = [keys[k] for k in tied_with_max(key_weights)]
    if len(tied) == 1:
        return surface_form(tied[0])
    # Equally frequent answers are all Bayes-optimal; the one closest to the rest of the sample
    # is chosen (with 16 distinct answers, the smallest string would be an arbitrary pick).
    forms = [surface_form(key) for key in tied]
    closeness = _closeness(forms, values, weights)
    tied_weights = np.array([class_weight[key] for key in tied])
    return forms[best_index(closeness, tied_weights, forms, higher_is_better=True)]


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
    return sign * expected_scores(similarity, cands, refs, weights)


def _rule_mean(values: list[Any], weights: np.ndarray, *_: Any) -> float:
    return float(np.dot(np.asarray(values, dtype=np.float64), weights))


def _rule_median(values: list[Any], weights: np.ndarray, *_: Any) -> float:
    return weighted_quantile(values, weights, 0.5)


def _rule_quantile(
    values: list[Any], weights: np.ndarray, counts: np.ndarray, metric: Metric, *_: Any
) -> float:
    return weighted_quantile(values, weights, float(getattr(metric, "tau", 0.5)))


def _rule_mbr(
    values: list[Any],
    weights: np.ndarray,
    counts: np.ndarray,
    metric: Metric,
    *_: Any,
    method: MBRMethod = Exact(),  # noqa: B008 (frozen: one shared default is safe)
    context: str | None = None,
) -> Scored:
    """argmax over distinct candidates c of sum_j w_j u(c, y_j), from the (C, C) pairwise matrix.

    The matrix is filled in blocks of rows when it does not fit in the memory budget (see
    :func:`~metricwise.mbr.ranking.expected_scores`). Another ``method`` (pruning, aggregation)
    approximates the argmax instead, and a pointwise metric needs no matrix at all (see
    :func:`metricwise.mbr.search`).
    """
    return mbr_search(metric, values, weights, values, weights, counts, method, context)


# ---------------------------------------------------------------------------------------------
# MBR: the search itself is metricwise.mbr's


def _check_mbr(method: object, metric: Metric, rule: str) -> MBRMethod:
    """The MBR method ``method`` names; raise for an unknown one, or one that the metric or the
    rule cannot use."""
    chosen = resolve_method(method)
    if isinstance(chosen, Exact):
        return chosen
    if rule != "mbr":
        raise InvalidParameterError(
            f"The 'mbr' parameter of decide applies to the 'mbr' rule, but metric {metric.name!r} is "
            f"decided by the {rule!r} rule. Got mbr={chosen.name!r} instead; pass rule='mbr' or leave mbr='exact'."
        )
    if chosen.needs_aggregation and not metric.pointwise and not can_aggregate(metric):
        raise InvalidParameterError(
            f"The 'mbr' parameter of decide is {chosen.name!r}, which needs a metric whose n-gram "
            "statistics can be averaged over the samples (chrf, also with word_order). Got metric "
            f"{metric.signature()!r} instead; use mbr='prune' or mbr='exact'."
        )
    return chosen


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
        expected = expected_scores(metric, all_values, g_values, g_weights)
        return all_values[best_index(expected, grid_weights, all_values, metric.higher_is_better)]
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
