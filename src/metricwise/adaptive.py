"""Adaptive sampling: draw samples in rounds and stop once more would not change the decision.

Most questions are settled long before N samples. After each round, the decision made so far
is asked how sure it is; sampling stops for a prompt when it is settled (or ``max_n`` is
reached). Sample ``i`` of a prompt has its own random stream, so the samples of an adaptive run
are a prefix of a fixed-N run's: the store reuses them, and an interrupted run resumes.

Stopping criteria
-----------------
Each criterion estimates ``P(settled)`` from the decision's support (its distinct values with
their weights) and the effective sample size ``m`` (the number of usable samples for uniform
weights, Kish's ESS otherwise). Sampling stops when ``P(settled) >= confidence`` and at least
``min_n`` samples were drawn. All estimates are Monte Carlo with a fixed seed, so a run repeats.

``mode``
    The posterior probability that the leader is the true mode: a Dirichlet posterior over the
    answer classes seen (counts ``m * w_k``) plus one class for every answer not seen yet, each
    with a uniform prior (pseudo-count 1). With k of k samples agreeing this is the Beta(k+1, 1)
    criterion of Adaptive-Consistency (Aggarwal et al. 2023): 0.97 at k = 4 against one
    unseen rival. Assumption: answers are exchangeable draws. It can stop too early when the
    true mode has small mass and was not drawn yet; ``min_n`` is the floor for that.
``mean``, ``median``, ``quantile``, ``grid``
    The probability that the final answer, the one ``max_n`` samples would give, lies within
    ``tolerance`` (in the answer's unit) of the current one. A predictive bootstrap: the
    ``f`` usable samples still to come (``max_n`` minus the samples drawn, times the share
    usable so far) are drawn from the current weighted samples and pooled with the ``m`` seen,
    weights ``(m * w + counts) / (m + f)``; the rule is re-applied to each such final
    distribution. With nothing left to draw the decision is final (probability 1). Assumption:
    the samples to come look like those seen, which is optimistic for very small ``m`` (two
    equal samples look certain): ``min_n`` again. The criterion asks whether fixed N would
    decide the same, not whether infinitely many samples would.
``mbr``
    The probability that the current best candidate stays best at ``max_n``, or loses less
    than ``tolerance`` expected utility, when the pseudo-references still to come are drawn
    the same way (the candidates' expected utilities recomputed from one pairwise matrix).
    This is the resampling idea of confidence-based pruning (Cheng and Vlachos 2023) applied
    to the stopping decision.
``mbr`` with a pointwise utility (a reward model, a judge: best-of-N)
    The answer is the best-scoring sample, and resampling the samples seen can never beat it,
    so the bootstrap would stop at once. Instead: the probability that the best of the
    ``max_n`` samples is among the ``m`` seen, ``m / (m + f)`` with ``f`` usable samples still
    to come, which holds for any score distribution when samples are exchangeable draws (a
    lower bound when scores tie). ``tolerance`` is not used; no score is computed.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from metricwise.errors import InvalidParameterError
from metricwise.metrics.base import Metric, resolve
from metricwise.types import Decision, SamplingConfig

if TYPE_CHECKING:
    from metricwise.backends.base import Backend
    from metricwise.store import ProgressCallback, SampleStore

STOP_REASONS: tuple[str, ...] = ("settled", "max_n", "no_valid_samples")


@dataclass(frozen=True)
class Adaptive:
    """When to stop sampling.

    Attributes
    ----------
    min_n:
        Samples drawn before any stop (the floor against early stops on tiny evidence).
    max_n:
        Samples drawn at most.
    round:
        Samples added per round.
    confidence:
        Stop when the estimated probability that the decision is settled reaches this, in (0, 1).
    tolerance:
        How far the answer may still move (numeric rules, in the answer's unit) or how much
        expected utility the MBR choice may still lose; >= 0. Not used by ``mode``.
    resamples:
        Monte Carlo draws per estimate.
    seed:
        Seed of those draws.
    """

    min_n: int = 4
    max_n: int = 32
    round: int = 4
    confidence: float = 0.95
    tolerance: float = 0.0
    resamples: int = 500
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("min_n", "max_n", "round", "resamples"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidParameterError(
                    f"The '{name}' parameter of adaptive sampling must be an int >= 1. Got {value!r} instead."
                )
        if self.min_n > self.max_n:
            raise InvalidParameterError(
                f"The 'min_n' parameter of adaptive sampling must be <= max_n ({self.max_n}). Got {self.min_n} instead."
            )
        if not 0.0 < self.confidence < 1.0:
            raise InvalidParameterError(
                f"The 'confidence' parameter of adaptive sampling must be in (0, 1). Got {self.confidence!r} instead."
            )
        if not (self.tolerance >= 0 and math.isfinite(self.tolerance)):
            raise InvalidParameterError(
                f"The 'tolerance' parameter of adaptive sampling must be a finite number >= 0. Got {self.tolerance!r} instead."
            )

    def schedule(self) -> list[int]:
        """The sample counts after each round: min_n, min_n + round, ..., max_n."""
        counts = list(range(self.min_n, self.max_n, self.round))
        return [*counts, self.max_n] if not counts or counts[-1] != self.max_n else counts


def settled_probability(
    decision: Decision,
    metric: str | Metric,
    adaptive: Adaptive,
    *,
    valid_range: tuple[float, float] | None = None,
    grid: Sequence[float] | None = None,
    **metric_args: Any,
) -> float:
    """The estimated probability that more samples would not change ``decision`` (see the module).

    ``metric``, ``valid_range``, ``grid`` and ``metric_args`` are those the decision was made
    with. 0 for a failed decision; an abstention is judged by the answer it withheld (whether
    more samples would change that answer, and so its risk).
    """
    if not decision.decided or not decision.support:
        return 0.0
    metric_obj = resolve(metric, **metric_args)
    values = [item.value for item in decision.support]
    weights = np.array([item.weight for item in decision.support], dtype=np.float64)
    effective = max(1, round(decision.effective_sample_size or decision.n_valid))
    rng = np.random.default_rng(adaptive.seed)
    if decision.rule == "mode":
        return _mode_settled(decision.best, values, weights, effective, metric_obj, adaptive, rng)
    # The samples still to come up to max_n, of which the same share is usable as so far, are
    # drawn from the current distribution and pooled with the samples seen: each row is one
    # possible final distribution at max_n (a predictive bootstrap).
    to_come = max(0, adaptive.max_n - decision.n_total)
    future = round(to_come * decision.n_valid / max(1, decision.n_total))
    if future == 0:
        return 1.0  # nothing more will be drawn: the decision is final
    if decision.rule == "mbr" and metric_obj.pointwise:
        return decision.n_valid / (decision.n_valid + future)
    drawn = rng.multinomial(future, weights, size=adaptive.resamples)
    resampled = (effective * weights[None, :] + drawn) / (effective + future)
    if decision.rule == "mbr":
        return _mbr_settled(decision.best, values, resampled, metric_obj, adaptive)
    return _numeric_settled(
        decision, values, resampled, metric_obj, adaptive, valid_range=valid_range, grid=grid
    )


def _mode_settled(
    output: Any,
    values: list[Any],
    weights: np.ndarray,
    effective: int,
    metric: Metric,
    adaptive: Adaptive,
    rng: np.random.Generator,
) -> float:
    classes: dict[Any, float] = {}
    for value, weight in zip(values, weights, strict=True):
        key = metric.normalize(value)
        classes[key] = classes.get(key, 0.0) + float(weight)
    keys = list(classes)
    leader = keys.index(metric.normalize(output))
    # Seen classes with their counts, one more for every answer not seen yet; prior 1 each.
    alpha = np.array([classes[k] * effective for k in keys] + [0.0]) + 1.0
    draws = rng.dirichlet(alpha, size=adaptive.resamples)
    return float(np.mean(draws.argmax(axis=1) == leader))


def _mbr_settled(
    output: Any, values: list[Any], resampled: np.ndarray, metric: Metric, adaptive: Adaptive
) -> float:
    if output not in values:  # a hypothesis from outside the samples: score it too
        values = [*values, output]
        resampled = np.hstack([resampled, np.zeros((len(resampled), 1))])
    sign = 1.0 if metric.higher_is_better else -1.0
    utility = sign * np.asarray(
        metric.pairwise(values, values[: resampled.shape[1]]), dtype=np.float64
    )
    expected = utility @ resampled.T  # (C, B): each candidate's expected utility per resample
    leader = values.index(output)
    return float(np.mean(expected[leader] >= expected.max(axis=0) - adaptive.tolerance - 1e-12))


def _numeric_settled(
    decision: Decision,
    values: list[Any],
    resampled: np.ndarray,
    metric: Metric,
    adaptive: Adaptive,
    *,
    valid_range: tuple[float, float] | None,
    grid: Sequence[float] | None,
) -> float:
    """Share of the resampled supports (rows of ``resampled``, shape (B, K)) whose answer lies
    within the tolerance of the current one. Mean, median and quantile are computed for all B
    rows at once (eval decides thousands of items this way); the grid rule row by row."""
    current = float(decision.best)
    if decision.rule in ("mean", "median", "quantile"):
        answers = _rowwise_answers(
            decision.rule, np.asarray(values, dtype=np.float64), resampled, metric
        )
    else:
        from metricwise.decide import _RULE_FUNCTIONS

        rule = _RULE_FUNCTIONS[decision.rule]
        answers = np.empty(len(resampled))
        for b, row in enumerate(resampled):
            keep = row > 0
            kept = [v for v, k in zip(values, keep, strict=True) if k]
            ones = np.ones(int(keep.sum()), dtype=np.int64)
            answer = rule(kept, row[keep], ones, metric, valid_range, grid)
            answers[b] = float(getattr(answer, "value", answer))
    return float(np.mean(np.abs(answers - current) <= adaptive.tolerance + 1e-12))


def _rowwise_answers(
    rule: str, values: np.ndarray, weights: np.ndarray, metric: Metric
) -> np.ndarray:
    """The rule's answer for every row of ``weights`` (shape (B, K), rows summing to 1) over the
    same ``values`` (shape (K,))."""
    from metricwise.decide import weighted_quantiles

    if rule == "mean":
        return weights @ values
    tau = 0.5 if rule == "median" else float(getattr(metric, "tau", 0.5))
    return weighted_quantiles(values, weights, tau)


def sample_and_decide(
    store: SampleStore,
    backend: Backend,
    prompts: Sequence[str],
    config: SamplingConfig,
    adaptive: Adaptive,
    *,
    batch_size: int = 8,
    progress: ProgressCallback | None = None,
    decide_fn: Callable[..., Decision] | None = None,
    **decide_options: Any,
) -> list[Decision]:
    """Sample ``prompts`` in rounds through ``store`` until each decision is settled.

    Prompts go in batches of ``batch_size``, each batch through all its rounds before the next
    (so that a backend keeps one batch's prefill for all of its rounds). Round ``r`` asks the
    store for ``adaptive.schedule()[r]`` samples of every prompt of the batch not yet settled
    (the store draws only the new indices), decides with ``decide_options`` (those of
    :func:`metricwise.decide`, ``metric`` included) and keeps the prompts whose decision is not
    settled for the next round. ``config.n`` is ignored. Returns one decision per prompt with
    ``n_used``, ``stopped`` and ``settled_probability`` set. ``progress(done, total)`` counts
    settled prompts.
    """
    from metricwise.decide import decide

    decide_fn = decide_fn or decide
    if "metric" not in decide_options:
        raise InvalidParameterError("sample_and_decide needs the 'metric' option of decide.")
    probability_options = {
        k: decide_options[k] for k in ("valid_range", "grid") if decide_options.get(k) is not None
    }
    # What decide does not take by name goes to the metric (tau=0.9 for pinball), as in decide;
    # higher_is_better is both a decide option and what resolve needs for a callable metric.
    decide_parameters = set(inspect.signature(decide).parameters) - {"higher_is_better"}
    metric_args = {k: v for k, v in decide_options.items() if k not in decide_parameters}
    distinct = list(dict.fromkeys(prompts))
    final: dict[str, Decision] = {}
    schedule = adaptive.schedule()
    # Batch by batch, every round of a batch before the next batch: each round asks for the
    # unsettled prompts of one batch, whose prefill a backend can keep (hf does) for all rounds.
    for start in range(0, len(distinct), batch_size):
        active = distinct[start : start + batch_size]
        for n in schedule:
            if not active:
                break
            sets = store.sample(backend, active, replace(config, n=n), batch_size=batch_size)
            still = []
            for prompt, sample_set in zip(active, sets, strict=True):
                decision = decide_fn(sample_set, **decide_options)
                probability = settled_probability(
                    decision,
                    decide_options["metric"],
                    adaptive,
                    **probability_options,
                    **metric_args,
                )
                if n >= adaptive.max_n:
                    stopped = "max_n" if decision.decided else "no_valid_samples"
                elif decision.decided and probability >= adaptive.confidence:
                    stopped = "settled"
                else:
                    still.append(prompt)
                    continue
                final[prompt] = replace(
                    decision, n_used=n, stopped=stopped, settled_probability=probability
                )
            active = still
            if progress:
                progress(len(final), len(distinct))
    return [final[p] for p in prompts]
