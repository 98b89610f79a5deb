"""Score every decoder on one pool of samples per item: no model needed, seconds to re-run.

:func:`score_task` takes the greedy candidate and the sampled pool of every item and returns, for
each decoder and metric, the mean score with a bootstrap interval, paired bootstraps against
greedy and (when it is scored) the prior, the parse rate (and, for extractors with an answer
cue such as ``number:answer``, the strict rate: answers found after the cue, not by the
fallback), corpus statistics (Pearson, Spearman, accuracy) with the same paired comparisons, and
decoder@k curves (the score when only k of the N samples are drawn, averaged over random size-k
subsets). A decoder that chooses how many samples to read (an adaptive one) has no curve; the
results give its mean samples used and their histogram instead (``samples_used``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from metricwise.errors import InvalidParameterError
from metricwise.evaluate.corpus import (
    ACCURACY_RTOL,
    CorpusStatistic,
    get_corpus_statistic,
    is_ordinal,
    numeric_accuracy,
)
from metricwise.evaluate.decoders import (
    BayesRule,
    Decoder,
    DecoderInput,
    Greedy,
    anchored,
    default_decoders,
    extract_answer,
    fallback_prediction,
    has_anchor,
    prior_prediction,
    rule_decoder,
)
from metricwise.evaluate.selective import (
    greedy_logprob_uncertainty,
    selective_prediction,
    spread_uncertainty,
)
from metricwise.evaluate.stats import (
    DEFAULT_BOOTSTRAP_ITERS,
    bootstrap,
    paired_bootstrap,
    resample_indices,
)
from metricwise.metrics import get as get_metric
from metricwise.tasks.base import Item, Task
from metricwise.types import Candidate, SampleSet

# Accuracy and the ordinal-scale test live with the corpus statistics; re-exported here, where
# they were first defined.
__all__ = [
    "ACCURACY_RTOL",
    "ItemRecord",
    "is_ordinal",
    "numeric_accuracy",
    "powers_of_two_up_to",
    "score_task",
]


#: The support entries (value, weight, count) an item's record keeps per decision, heaviest first.
SUPPORT_KEPT = 5


@dataclass
class ItemRecord:
    """One item's predictions and scores, for ``samples_<task>.jsonl``."""

    id: str
    prompt: str
    references: list[Any]
    greedy: str
    candidates: list[dict[str, Any]]
    predictions: dict[str, Any] = field(default_factory=dict)
    scores: dict[str, dict[str, float]] = field(default_factory=dict)
    #: Samples read by each decoder that chooses how many (an adaptive one), by label.
    samples_used: dict[str, int] = field(default_factory=dict)
    #: Each Bayes-rule decoder's decision, by label: rule, expected loss or utility, n_valid of
    #: n_total, why samples were left out (``excluded``) and the top of the support.
    decisions: dict[str, dict[str, Any]] = field(default_factory=dict)


def powers_of_two_up_to(n: int) -> list[int]:
    """1, 2, 4, ... up to n, with n itself last."""
    ks = [1]
    while ks[-1] * 2 < n:
        ks.append(ks[-1] * 2)
    if ks[-1] != n:
        ks.append(n)
    return ks


def score_task(
    task: Task,
    items: Sequence[Item],
    prompts: Sequence[str],
    greedy: Sequence[Candidate],
    pools: Sequence[SampleSet],
    *,
    decoders: Sequence[Decoder] | None = None,
    bootstrap_iters: int = DEFAULT_BOOTSTRAP_ITERS,
    seed: int = 0,
    curve_subsets: int = 8,
    signature: Callable[[Decoder, str], str] | None = None,
    progress: Callable[[int, int], None] | None = None,
    prior_references: Sequence[Any] | None = None,
) -> tuple[dict[str, Any], list[ItemRecord]]:
    """Scores of every decoder x metric on ``task``; returns (results, per-item records).

    Parameters
    ----------
    items, prompts, greedy, pools:
        Aligned per item: the item, its prompt, its greedy candidate and its N samples.
    decoders:
        Default: :func:`~metricwise.evaluate.decoders.default_decoders`, with the ``prior``
        decoder when ``prior_references`` is given.
    bootstrap_iters:
        Bootstrap resamples (shared by every score, so comparisons are paired).
    curve_subsets:
        Random size-k subsets averaged per item for the decoder@k curves (0 disables them).
    signature:
        ``signature(decoder, metric) -> str`` recorded beside every score.
    prior_references:
        One reference per few-shot (train) item, never an evaluated one: the ``prior``
        decoder's constant is the primary metric's Bayes rule over them.
    """
    if not (len(items) == len(prompts) == len(greedy) == len(pools)):
        raise InvalidParameterError(
            "The 'items', 'prompts', 'greedy' and 'pools' parameters of score_task must be aligned "
            f"(one per item). Got {len(items)}, {len(prompts)}, {len(greedy)} and {len(pools)} instead."
        )
    if not items:
        raise InvalidParameterError(f"Task {task.name!r} has no items to score.")
    decoders = list(decoders or default_decoders(task, prior=prior_references is not None))
    prior = None
    if any(d.uses_prior for d in decoders):
        if prior_references is None:
            raise InvalidParameterError(
                "The prior decoder needs the 'prior_references' parameter of score_task "
                "(the few-shot split's references). Got None instead."
            )
        prior = prior_prediction(task, prior_references)
    metric_objs = {m: get_metric(m) for m in task.metrics}
    # Resolved before any decoder runs, so that a misspelt statistic fails in a second.
    corpus_statistics = (
        [get_corpus_statistic(name) for name in task.corpus_metrics]
        if task.answer_type == "number"
        else []
    )
    n_items = len(items)
    indices = resample_indices(n_items, bootstrap_iters, seed=seed)

    records = [
        ItemRecord(
            id=item.id,
            prompt=prompt,
            references=list(item.references),
            greedy=g.text,
            candidates=[c.to_dict() for c in pool.candidates],
        )
        for item, prompt, g, pool in zip(items, prompts, greedy, pools, strict=True)
    ]
    # scores[decoder label][metric] -> (n_items,) ; parsed[decoder label] -> (n_items,) bool
    scores: dict[str, dict[str, np.ndarray]] = {}
    parsed: dict[str, np.ndarray] = {}
    # strict[decoder label] -> (n_items,): how much of a parsed answer came from an answer cue
    # rather than the extractor's fallback (only for extractors with a cue, number:answer).
    strict: dict[str, np.ndarray] = {}
    # Per distinct text: None without an answer, else whether it was found after a cue.
    answer_source = functools.lru_cache(maxsize=None)(
        lambda text: None if extract_answer(text, task) is None else anchored(text, task)
    )
    predictions: dict[str, list[Any]] = {}
    # used[decoder label] -> (n_items,): samples read, for decoders that choose how many.
    used: dict[str, np.ndarray] = {}
    for d_index, decoder in enumerate(decoders):
        scores[decoder.label] = {m: np.empty(n_items) for m in task.metrics}
        parsed[decoder.label] = np.zeros(n_items, dtype=bool)
        predictions[decoder.label] = []
        reads_answers = has_anchor(task) and not decoder.is_constant
        if reads_answers:
            strict[decoder.label] = np.zeros(n_items)
        for i, (item, g, pool) in enumerate(zip(items, greedy, pools, strict=True)):
            refs = list(item.references)
            x = DecoderInput(
                task=task, greedy=g, pool=pool, prior=prior if decoder.uses_prior else None
            )
            # A decoder that reads the references (the oracle) is the best candidate for each
            # metric in turn; every other decoder predicts once for all metrics.
            shared = None
            if isinstance(decoder, BayesRule):
                decision = decoder.decision(x)
                records[i].decisions[decoder.label] = decision.to_dict(max_support=SUPPORT_KEPT)
                shared = decision.output
            elif not decoder.uses_references:
                shared = decoder.predict(x)
            if decoder.chooses_n:
                n_used = decoder.samples_used(x)
                if n_used is None:
                    raise InvalidParameterError(
                        f"The {decoder.label} decoder chooses how many samples it reads (chooses_n), "
                        "but its samples_used gave None."
                    )
                used.setdefault(decoder.label, np.zeros(n_items, dtype=np.int64))[i] = n_used
                records[i].samples_used[decoder.label] = n_used
            if reads_answers:
                strict[decoder.label][i] = _strict_share(decoder, x, answer_source)
            for metric_name, metric in metric_objs.items():
                pred = (
                    decoder.predict(
                        DecoderInput(task=task, greedy=g, pool=pool, references=refs, metric=metric)
                    )
                    if decoder.uses_references
                    else shared
                )
                if metric_name == task.metrics[0]:
                    parsed[decoder.label][i] = pred is not None
                    if pred is None and reads_answers:
                        strict[decoder.label][i] = 0.0
                    predictions[decoder.label].append(pred)
                    records[i].predictions[decoder.label] = pred
                score = metric.score(pred if pred is not None else fallback_prediction(task), refs)
                scores[decoder.label][metric_name][i] = score
                records[i].scores.setdefault(decoder.label, {})[metric_name] = score
        if progress:
            progress(d_index + 1, len(decoders))

    labels = {d.label for d in decoders}
    rules = {m: rule_decoder(m, task.answer_type).label for m in task.metrics}
    results: dict[str, Any] = {
        "task": task.name,
        "version": task.version,
        "n_items": n_items,
        "answer_type": task.answer_type,
        # Each metric's own Bayes rule among the scored decoders: the report's verdict line.
        "rule_decoders": {m: label for m, label in rules.items() if label in labels},
        "scores": [],
        "corpus": [],
    }
    if used:
        results["samples_used"] = {
            d.label: _usage(used[d.label], d.settings(task)) for d in decoders if d.label in used
        }
    # Two baselines for paired comparisons: greedy, the usual single-answer inference, and the
    # prior, which reads nothing of the item (a decoder that does not beat it learnt nothing).
    greedy_label = Greedy().label
    prior_label = next((d.label for d in decoders if d.uses_prior), None)
    for decoder in decoders:
        for metric_name, metric in metric_objs.items():
            values = scores[decoder.label][metric_name]
            estimate = bootstrap(values, indices=indices)
            row: dict[str, Any] = {
                "decoder": decoder.label,
                "metric": metric_name,
                "direction": "higher" if metric.higher_is_better else "lower",
                "value": estimate.value,
                "ci": [estimate.low, estimate.high],
                "stderr": estimate.stderr,
                "parse_rate": float(parsed[decoder.label].mean()),
            }
            if decoder.label in strict:
                row["strict_rate"] = float(strict[decoder.label].mean())
            for key, baseline in (("vs_greedy", greedy_label), ("vs_prior", prior_label)):
                if baseline is not None and decoder.label != baseline and baseline in scores:
                    cmp = paired_bootstrap(values, scores[baseline][metric_name], indices=indices)
                    row[key] = cmp.to_dict()
            if signature is not None:
                row["signature"] = signature(decoder, metric_name)
            results["scores"].append(row)
    results["corpus"] = _corpus_rows(
        task,
        decoders,
        predictions,
        items,
        indices,
        corpus_statistics,
        baselines={"vs_greedy": greedy_label, "vs_prior": prior_label},
    )

    results["selective"] = _selective_rows(
        task, decoders, scores, records, greedy, pools, metric_objs, indices, seed
    )

    if curve_subsets > 0 and len(pools[0]) > 1:
        # The primary metric's curves under "curves" (as results.json has always had them),
        # the other metrics' in "other_curves".
        primary, *others = _curves(
            task,
            decoders,
            items,
            greedy,
            pools,
            curve_subsets,
            seed,
            indices,
            greedy_scores=scores.get(greedy_label),
        )
        results["curves"] = primary
        results["other_curves"] = others
    return results, records


def _selective_rows(
    task: Task,
    decoders: Sequence[Decoder],
    scores: dict[str, dict[str, np.ndarray]],
    records: Sequence[ItemRecord],
    greedy: Sequence[Candidate],
    pools: Sequence[SampleSet],
    metric_objs: dict[str, Any],
    indices: np.ndarray,
    seed: int,
) -> list[dict[str, Any]]:
    """Selective prediction (:mod:`metricwise.evaluate.selective`) for every Bayes-rule decoder
    whose metric the task scores: its items ranked by its own risk, and by the baselines."""
    numeric = task.answer_type == "number"
    normalize = metric_objs[task.metrics[0]].normalize
    parsed = [
        [
            a if a is None or numeric else normalize(a)
            for a in (extract_answer(c.text, task) for c in pool.candidates)
        ]
        for pool in pools
    ]

    def risk_of(decoder: Decoder) -> np.ndarray:
        return np.array(
            [_risk(record.decisions.get(decoder.label)) for record in records], dtype=np.float64
        )

    baselines = {
        "logprob": greedy_logprob_uncertainty(greedy),
        "spread": spread_uncertainty(parsed, numeric),
        # A utility the task does not score but the run decides with (eval --mbr_metrics: a
        # reward model, a judge, chrF): its answer's expected score is a judgement of the item.
        **{
            decoder.label: risk_of(decoder)
            for decoder in decoders
            if isinstance(decoder, BayesRule) and decoder.metric not in metric_objs
        },
    }
    rows = []
    for decoder in decoders:
        if not isinstance(decoder, BayesRule) or decoder.metric not in metric_objs:
            continue
        metric = metric_objs[decoder.metric]
        risk = risk_of(decoder)
        analysis = selective_prediction(
            scores[decoder.label][decoder.metric],
            metric.higher_is_better,
            {"risk": risk, **baselines},
            indices,
            seed=seed,
        )
        rows.append(
            {
                "decoder": decoder.label,
                "metric": decoder.metric,
                "direction": "higher" if metric.higher_is_better else "lower",
                **analysis,
            }
        )
    return rows


def _risk(decision: dict[str, Any] | None) -> float:
    """A decision's uncertainty: its expected loss, or minus its expected utility; inf when it
    failed (no usable sample)."""
    if decision is None or decision.get("failure"):
        return math.inf
    loss = decision.get("expected_loss")
    if loss is not None:
        return float(loss)
    utility = decision.get("expected_utility")
    return math.inf if utility is None else -float(utility)


def _usage(n_used: np.ndarray, settings: dict[str, Any]) -> dict[str, Any]:
    """The mean samples used over the items and their histogram (``{"4": 30, "8": 10}``)."""
    counts = np.bincount(n_used)
    return {
        "mean": float(n_used.mean()),
        "histogram": {str(n): int(c) for n, c in enumerate(counts) if c},
        "settings": settings,
    }


def _strict_share(
    decoder: Decoder, x: DecoderInput, answer_source: Callable[[str], bool | None]
) -> float:
    """The share of the answers a decoder read that were found after an answer cue.

    1 or 0 for a decoder that reads one candidate (greedy, first, max_logprob); for one that
    reads the pool (a Bayes rule, the oracle), the share among the samples that had an answer.
    ``answer_source(text)`` is None for a text without an answer, else whether it was anchored.
    The caller sets 0 where the decoder produced no answer at all.
    """
    sources = [answer_source(c.text) for c in decoder.reads(x)]
    answered = [s for s in sources if s is not None]
    return sum(answered) / len(answered) if answered else 0.0


def _corpus_rows(
    task: Task,
    decoders: Sequence[Decoder],
    predictions: dict[str, list[Any]],
    items: Sequence[Item],
    indices: np.ndarray,
    statistics: Sequence[CorpusStatistic],
    *,
    baselines: dict[str, str | None],
) -> list[dict[str, Any]]:
    """Each corpus statistic of each decoder, with paired differences against the baselines.

    A difference resamples the same items for both decoders (the ``indices`` every score
    shares), so a corpus statistic gets the same paired test as a per-item mean.
    """
    if not statistics:
        return []
    fallback = fallback_prediction(task)
    references = [float(item.references[0]) for item in items]
    # A decoder that reads the references has one prediction per metric, none for the corpus.
    pairs = {
        d.label: np.array(
            [
                [p if p is not None else fallback, r]
                for p, r in zip(predictions[d.label], references, strict=True)
            ],
            dtype=np.float64,
        )
        for d in decoders
        if not d.uses_references
    }
    constant = {d.label: d.is_constant for d in decoders}
    ordinal = is_ordinal(task, items)
    # A baseline's statistic enters every comparison with it: compute each (decoder,
    # statistic, all items or resamples) once (Spearman's ranks cost a Python loop per resample).
    memo: dict[tuple[int, str, bool], np.ndarray] = {}

    def memoised(stat: CorpusStatistic) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
        def statistic(values: np.ndarray, idx: np.ndarray) -> np.ndarray:
            key = (id(values), stat.name, idx is indices)
            if key not in memo:
                memo[key] = stat(values, idx, ordinal=ordinal)
            return memo[key]

        return statistic

    rows = []
    for label in pairs:
        for stat in statistics:
            # A constant has no correlation with anything; its accuracy is still informative.
            if constant[label] and not stat.defined_for_constant:
                continue
            statistic = memoised(stat)
            estimate = bootstrap(pairs[label], statistic=statistic, indices=indices)
            row: dict[str, Any] = {
                "decoder": label,
                "metric": stat.name,
                "direction": "higher" if stat.higher_is_better else "lower",
                "value": estimate.value,
                "ci": [estimate.low, estimate.high],
            }
            for key, baseline in baselines.items():
                if (
                    baseline is None
                    or baseline == label
                    or baseline not in pairs
                    or (constant[baseline] and not stat.defined_for_constant)
                ):
                    continue
                cmp = paired_bootstrap(
                    pairs[label], pairs[baseline], statistic=statistic, indices=indices
                )
                row[key] = cmp.to_dict()
            rows.append(row)
    return rows


def _curves(
    task: Task,
    decoders: Sequence[Decoder],
    items: Sequence[Item],
    greedy: Sequence[Candidate],
    pools: Sequence[SampleSet],
    subsets: int,
    seed: int,
    indices: np.ndarray,
    greedy_scores: dict[str, np.ndarray] | None = None,
) -> list[dict[str, Any]]:
    """Each metric's score of each sampling decoder with k of the N samples, k = 1, 2, 4, ..., N,
    with a 95% percentile bootstrap interval at each k (over items, on ``indices``, the
    resamples every score of the run shares).

    One entry per metric of the task, the primary one first:
    ``{"metric", "k", "values": {label: [...]}, "low": {label: [...]}, "high": {label: [...]}}``.
    With ``greedy_scores`` (greedy's per-item score of each metric) each entry also has
    ``vs_greedy``: ``{label: {"difference": [...], "low": [...], "high": [...]}}``, the paired
    difference from greedy at each k with its 95% interval (the same resampled items for both).
    A decoder predicts once per subset for every metric (the oracle once per metric).
    """
    metric_objs = {name: get_metric(name) for name in task.metrics}
    n = min(len(p) for p in pools)
    ks = powers_of_two_up_to(n)
    rng = np.random.default_rng(seed)
    fallback = fallback_prediction(task)
    # A decoder that chooses its own number of samples is one point (its mean), not a curve.
    sampling = [d for d in decoders if d.uses_samples and not d.chooses_n]
    # per_item[metric][label] -> (n_items, len(ks)): each item's mean score over its subsets.
    per_item = {
        m: {d.label: np.zeros((len(items), len(ks))) for d in sampling} for m in metric_objs
    }
    for i, (item, g, pool) in enumerate(zip(items, greedy, pools, strict=True)):
        refs = list(item.references)
        for k_index, k in enumerate(ks):
            draws = 1 if k == n else min(subsets, math.comb(n, k))
            for _ in range(draws):
                chosen = np.sort(rng.choice(n, size=k, replace=False)) if k < n else np.arange(n)
                subset = SampleSet(
                    candidates=tuple(pool.candidates[j] for j in chosen), prompt=pool.prompt
                )
                x = DecoderInput(task=task, greedy=g, pool=subset)
                for decoder in sampling:
                    shared = None if decoder.uses_references else decoder.predict(x)
                    for name, metric in metric_objs.items():
                        pred = (
                            decoder.predict(
                                DecoderInput(
                                    task=task, greedy=g, pool=subset, references=refs, metric=metric
                                )
                            )
                            if decoder.uses_references
                            else shared
                        )
                        value = pred if pred is not None else fallback
                        per_item[name][decoder.label][i, k_index] += (
                            metric.score(value, refs) / draws
                        )
    curves = []
    for name, by_label in per_item.items():
        entry: dict[str, Any] = {"metric": name, "k": ks, "values": {}, "low": {}, "high": {}}
        for label, matrix in by_label.items():
            resampled = matrix[indices].mean(axis=1)  # (B, len(ks))
            entry["values"][label] = matrix.mean(axis=0).tolist()
            entry["low"][label] = np.percentile(resampled, 2.5, axis=0).tolist()
            entry["high"][label] = np.percentile(resampled, 97.5, axis=0).tolist()
            if greedy_scores is not None:
                paired = matrix - greedy_scores[name][:, None]
                differences = paired[indices].mean(axis=1)
                entry.setdefault("vs_greedy", {})[label] = {
                    "difference": paired.mean(axis=0).tolist(),
                    "low": np.percentile(differences, 2.5, axis=0).tolist(),
                    "high": np.percentile(differences, 97.5, axis=0).tolist(),
                }
        curves.append(entry)
    return curves
