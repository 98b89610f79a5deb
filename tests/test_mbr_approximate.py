"""Approximate MBR: decide(..., mbr="prune" | "aggregate" | "aggregate_to_fine") against exact
MBR, and its report."""

from __future__ import annotations

import importlib
import random
from collections import Counter

import numpy as np
import pytest

import metricwise.mbr.ranking as mbr_ranking
from metricwise import decide, metrics
from metricwise.errors import InvalidParameterError, UnknownNameError
from metricwise.types import MBRStats

decide_module = importlib.import_module("metricwise.decide")

MODES = [
    "The committee approved the new budget on Tuesday.",
    "On Tuesday the committee passed the new budget.",
    "A dog is running through the snowy park.",
]


def easy_samples(n: int = 120, seed: int = 0) -> list[str]:
    """Perturbed copies of three modes, the first far more likely: a clear MBR answer."""
    rng = random.Random(seed)
    words = sorted({w for m in MODES for w in m.split()})
    out = []
    for _ in range(n):
        text = MODES[rng.choices(range(3), weights=[0.7, 0.2, 0.1])[0]].split()
        for _ in range(rng.randint(0, 2)):
            i = rng.randrange(len(text))
            op = rng.random()
            if op < 0.4 and len(text) > 1:
                del text[i]
            elif op < 0.7:
                text[i] = rng.choice(words)
            else:
                text.insert(i, text[i])
        out.append(" ".join(text))
    return out


class CountingUtility:
    """A plain callable utility (token overlap) that counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, a: str, b: str) -> float:
        self.calls += 1
        x, y = Counter(a.lower().split()), Counter(b.lower().split())
        return sum((x & y).values()) / max(1, len(a.split()) + len(b.split()))


# -- same answer as exact MBR on easy sets ----------------------------------------------------
@pytest.mark.parametrize("metric", ["chrf", "bleu", "token_f1", "rouge_l"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pruning_picks_what_exact_mbr_picks_on_an_easy_set(metric, seed):
    samples = easy_samples(seed=seed)
    exact = decide(samples, metric)
    pruned = decide(samples, metric, mbr="prune")
    assert pruned.output == exact.output
    assert pruned.expected_utility == pytest.approx(exact.expected_utility, rel=1e-12)
    assert pruned.rule == "mbr"
    assert pruned.support == exact.support


@pytest.mark.parametrize("method", ["aggregate", "aggregate_to_fine"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_aggregation_picks_what_exact_mbr_picks_on_an_easy_set(seed, method):
    samples = easy_samples(seed=seed)
    exact = decide(samples, "chrf")
    aggregated = decide(samples, "chrf", mbr=method)
    assert aggregated.output == exact.output
    # The reported expected utility is the exact one of the answer, not the aggregate score.
    assert aggregated.expected_utility == pytest.approx(exact.expected_utility, rel=1e-12)


def random_sentences(n: int, seed: int) -> list[str]:
    """n unrelated sentences of a small vocabulary: no clear consensus, so the aggregated
    reference's favourite often differs from exact MBR's."""
    rng = random.Random(seed)
    vocabulary = [
        "the",
        "a",
        "cat",
        "dog",
        "sat",
        "ran",
        "on",
        "under",
        "mat",
        "park",
        "red",
        "quick",
        "old",
        "blue",
        "tree",
    ]
    return [" ".join(rng.choices(vocabulary, k=rng.randint(3, 9))) for _ in range(n)]


def test_aggregate_to_fine_recovers_exact_mbr_where_aggregation_alone_does_not():
    # Seeds of sets where mbr="aggregate" picks another answer than exact MBR (checked below,
    # so the test means something): the exact second stage over the aggregate's 32 best
    # finds exact MBR's answer.
    differing = 0
    for seed in range(12):
        samples = random_sentences(200, seed)
        exact = decide(samples, "chrf")
        differing += decide(samples, "chrf", mbr="aggregate").output != exact.output
        fine = decide(samples, "chrf", mbr="aggregate_to_fine")
        assert fine.output == exact.output
        assert fine.expected_utility == pytest.approx(exact.expected_utility, rel=1e-12)
    assert differing >= 3


def test_aggregate_to_fine_is_exact_mbr_with_few_hypotheses():
    samples = random_sentences(40, seed=3)
    hypotheses = samples[:10]  # fewer than the 32 that go on to the exact stage
    exact = decide(samples, "chrf", candidates=hypotheses)
    fine = decide(samples, "chrf", candidates=hypotheses, mbr="aggregate_to_fine")
    assert fine.output == exact.output
    assert fine.expected_utility == exact.expected_utility


def test_approximations_work_for_chrf_plus_plus_and_weighted_samples():
    samples = easy_samples(90, seed=4)
    weights = np.linspace(1.0, 2.0, len(samples))
    for kwargs in ({"word_order": 2}, {"weights": weights}):
        exact = decide(samples, "chrf", **kwargs)
        for method in ("prune", "aggregate", "aggregate_to_fine"):
            assert decide(samples, "chrf", mbr=method, **kwargs).output == exact.output


def test_pruning_with_a_loss_and_a_plain_callable():
    samples = easy_samples(80, seed=5)

    def length_gap(a: str, b: str) -> float:
        return abs(len(a) - len(b))

    exact = decide(samples, length_gap, higher_is_better=False)
    pruned = decide(samples, length_gap, higher_is_better=False, mbr="prune")
    assert pruned.output == exact.output
    assert pruned.expected_loss == pytest.approx(exact.expected_loss)
    assert pruned.expected_utility is None


def test_approximations_with_separate_hypotheses():
    samples = easy_samples(100, seed=6)
    hypotheses = [MODES[0], MODES[2], "Something else entirely."]
    exact = decide(samples, "chrf", candidates=hypotheses)
    for method in ("prune", "aggregate", "aggregate_to_fine"):
        got = decide(samples, "chrf", candidates=hypotheses, mbr=method)
        assert got.output == exact.output == MODES[0]
        assert got.mbr is not None and got.mbr.n_hypotheses == 3


def test_pruning_is_reproducible_and_independent_of_sample_order():
    samples = easy_samples(150, seed=7)
    shuffled = samples[:]
    random.Random(1).shuffle(shuffled)
    first = decide(samples, "chrf", mbr="prune")
    assert decide(samples, "chrf", mbr="prune") == first
    assert decide(shuffled, "chrf", mbr="prune").mbr == first.mbr


def test_pruning_finishes_exactly_when_its_matrix_would_pass_the_memory_budget(monkeypatch):
    samples = easy_samples(120, seed=8)
    exact = decide(samples, "chrf")
    monkeypatch.setattr(mbr_ranking, "PAIRWISE_BUDGET_BYTES", 8 * 16 * 50)
    pruned = decide(samples, "chrf", mbr="prune")
    assert pruned.output == exact.output


# -- what they report ---------------------------------------------------------------------------
def test_exact_mbr_reports_every_pair():
    samples = easy_samples(60, seed=9)
    decision = decide(samples, "chrf")
    n = len(set(samples))
    assert decision.mbr == MBRStats("exact", n, n, evaluations=n * n, rounds=1, remaining=n)
    assert decision.to_dict()["mbr"] == {
        "method": "exact",
        "n_hypotheses": n,
        "n_references": n,
        "evaluations": n * n,
        "rounds": 1,
        "remaining": n,
    }
    assert decide(["1", "2"], "squared_error").mbr is None


def test_pruning_reports_the_evaluations_it_made():
    samples = [s + f" #{i}" for i, s in enumerate(easy_samples(300, seed=10))]  # all distinct
    utility = CountingUtility()
    decision = decide(samples, utility, higher_is_better=True, mbr="prune")
    stats = decision.mbr
    assert stats is not None and stats.method == "prune"
    assert stats.n_hypotheses == stats.n_references == 300
    # A plain callable is called once per evaluated pair: the report counts exactly those.
    assert stats.evaluations == utility.calls
    assert 300 <= stats.evaluations < 300 * 300 // 2
    assert stats.rounds >= 2
    assert stats.remaining >= 1
    exact = decide(samples, CountingUtility(), higher_is_better=True)
    assert decision.output == exact.output


def test_aggregation_reports_one_row_of_evaluations():
    samples = easy_samples(100, seed=11)
    decision = decide(samples, "chrf", mbr="aggregate")
    n = len(set(samples))
    assert decision.mbr == MBRStats("aggregate", n, n, evaluations=n, rounds=1, remaining=n)


def test_aggregate_to_fine_reports_its_exact_stage():
    samples = random_sentences(100, seed=12)
    decision = decide(samples, "chrf", mbr="aggregate_to_fine")
    n = len(set(samples))
    # 32 hypotheses against every reference; the answer's exact expected utility is among them.
    assert decision.mbr == MBRStats(
        "aggregate_to_fine", n, n, evaluations=32 * n, rounds=2, remaining=32
    )


def test_a_single_distinct_answer_needs_no_rounds():
    decision = decide(["same answer"] * 5, "chrf", mbr="prune")
    assert decision.output == "same answer"
    assert decision.mbr == MBRStats("prune", 1, 1, evaluations=1, rounds=0, remaining=1)


# -- errors ------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["aggregate", "aggregate_to_fine"])
@pytest.mark.parametrize("metric", ["bleu", "token_f1", "rouge_l"])
def test_aggregation_refuses_metrics_whose_statistics_do_not_average(metric, method):
    with pytest.raises(InvalidParameterError, match=rf"'{method}'.*averaged.*chrf"):
        decide(["a b", "a c"], metric, mbr=method)
    # Checked before any sample is read, as the CLI's option check relies on.
    with pytest.raises(InvalidParameterError, match=f"'{method}'"):
        decide([], metric, mbr=method)


def test_aggregation_refuses_a_plain_callable():
    with pytest.raises(InvalidParameterError, match="'aggregate'"):
        decide(["a", "b"], lambda a, b: float(a == b), higher_is_better=True, mbr="aggregate")


def test_unknown_mbr_method_is_named():
    with pytest.raises(UnknownNameError, match=r"'mbr' parameter.*Did you mean 'prune'"):
        decide(["a", "b"], "chrf", mbr="prun")
    with pytest.raises(UnknownNameError, match="'mbr' parameter"):
        decide(["a", "b"], "chrf", mbr=None)  # type: ignore[arg-type]


def test_approximations_need_the_mbr_rule():
    with pytest.raises(InvalidParameterError, match=r"'mbr' rule.*'mode'"):
        decide(["a", "b"], "exact_match", mbr="prune")
    with pytest.raises(InvalidParameterError, match=r"'mbr' rule.*'mean'"):
        decide(["1", "2"], "squared_error", mbr="aggregate")
    # ... which any metric can be given explicitly, and exact stays the default everywhere.
    assert decide(["a", "a", "b"], "exact_match", rule="mbr", mbr="prune").output == "a"
    assert decide(["1", "2"], "squared_error", mbr="exact").output == 1.5


# -- the aggregated reference ------------------------------------------------------------------
def direct_aggregate_chrf(hypothesis: str, refs: list[str], weights: np.ndarray) -> float:
    """chrF against the weighted-average n-gram counts, written out with Counters."""
    w = np.asarray(weights, dtype=float) / np.sum(weights)
    hyp = "".join(hypothesis.split())
    texts = ["".join(r.split()) for r in refs]
    prec_sum = rec_sum = 0.0
    effective = 0
    for n in range(1, 7):
        h = Counter(hyp[i : i + n] for i in range(len(hyp) - n + 1))
        mean: Counter = Counter()
        for t, wj in zip(texts, w, strict=True):
            for g, c in Counter(t[i : i + n] for i in range(len(t) - n + 1)).items():
                mean[g] += wj * c
        n_hyp, n_ref = sum(h.values()), sum(mean.values())
        if n_hyp > 0 and n_ref > 0:
            match = sum(min(c, mean[g]) for g, c in h.items())
            prec_sum += match / n_hyp
            rec_sum += match / n_ref
            effective += 1
    if not effective:
        return 0.0
    p, r = prec_sum / effective, rec_sum / effective
    return 0.0 if p + r == 0 else 100 * 5 * p * r / (4 * p + r)


def test_aggregate_statistics_score_against_the_average_reference():
    chrf = metrics.get("chrf")
    hyps = ["The cat sat.", "a cat", "dogs bark loudly", "x"]
    refs = ["The cat sat on the mat.", "A cat sat.", "The dog barked.", "cat"]
    weights = np.array([0.5, 0.2, 0.2, 0.1])
    stats = chrf.statistics(hyps + refs)
    got = chrf.aggregate_statistics(stats.take(range(4)), stats.take(range(4, 8)), weights)
    expected = [direct_aggregate_chrf(h, refs, weights) for h in hyps]
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_aggregate_statistics_equal_fastchrf():
    fastchrf = pytest.importorskip("fastchrf", reason="fastchrf (the [reference] extra) is missing")
    chrf = metrics.get("chrf")
    samples = easy_samples(50, seed=12)
    stats = chrf.statistics(samples)
    got = chrf.aggregate_statistics(stats, stats, np.ones(len(samples)))
    np.testing.assert_allclose(got, fastchrf.aggregate_chrf([samples], [samples])[0], atol=1e-4)


@pytest.mark.parametrize("name", ["chrf", "bleu", "token_f1"])
def test_blocked_exact_mbr_computes_statistics_once_and_decides_the_same(name, monkeypatch):
    samples = easy_samples(150, seed=13)
    whole = decide(samples, name)
    calls = []
    metric = metrics.get(name)
    original = metric.statistics

    def counted(texts):
        calls.append(len(texts))
        return original(texts)

    monkeypatch.setattr(metric, "statistics", counted)
    monkeypatch.setattr(mbr_ranking, "PAIRWISE_BUDGET_BYTES", 8 * 16 * 150 * 9)
    blocked = decide(samples, metric)
    assert calls == [len(set(samples))]  # once, for every distinct sample
    assert blocked.output == whole.output
    assert blocked.expected_utility == pytest.approx(whole.expected_utility, rel=1e-13, abs=0)


def test_pruning_ignores_samples_of_weight_zero():
    samples = easy_samples(120, seed=14)
    weights = np.ones(len(samples))
    weights[::3] = 0.0  # a third of the samples carry no evidence
    exact = decide(samples, "chrf", weights=weights)
    pruned = decide(samples, "chrf", weights=weights, mbr="prune")
    assert pruned.output == exact.output
    assert np.isfinite(pruned.expected_utility)


def test_a_method_object_carries_its_settings():
    """Each MBR method is a settings dataclass in a module of its own (metricwise.mbr)."""
    from metricwise.mbr import METHODS, AggregateToFine, Prune

    assert list(METHODS) == ["exact", "prune", "aggregate", "aggregate_to_fine"]
    rng = np.random.default_rng(3)
    words = ["the cat sat", "a cat sat down", "dogs run", "the dog sat", "cats sit", "a mat"]
    samples = [" ".join(rng.choice(words, 3)) for _ in range(120)]
    named = decide(samples, "chrf", mbr="aggregate_to_fine")
    assert decide(samples, "chrf", mbr=AggregateToFine()) == named
    few = decide(samples, "chrf", mbr=AggregateToFine(top=2))
    assert few.mbr.method == "aggregate_to_fine" and few.mbr.remaining == 2
    assert named.mbr.remaining == 32
    one_round = decide(samples, "chrf", mbr=Prune(first_round=1000))  # every sample at once
    assert one_round.mbr.rounds == 1 and one_round.output == decide(samples, "chrf").output
    with pytest.raises(UnknownNameError, match="or an MBR method object"):
        decide(samples, "chrf", mbr="prunne")
