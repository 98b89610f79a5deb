"""Decision rules checked against brute force, and the API's contracts."""

from __future__ import annotations

import importlib
import math
import random
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import metricwise.mbr.ranking as mbr_ranking
from metricwise import Candidate, SampleSet, decide, metrics, weighted_quantile
from metricwise.errors import InvalidParameterError, UnknownNameError
from metricwise.metrics.squad import normalize_answer

finite = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False, allow_infinity=False)
numbers = st.lists(finite, min_size=1, max_size=25)
positive_weights = st.floats(min_value=0.01, max_value=10.0)


def expected_loss_at(metric_name: str, point: float, values, weights, **kw) -> float:
    metric = metrics.get(metric_name, **kw)
    w = np.asarray(weights, dtype=float)
    w = w / w.sum()
    return float(sum(wi * metric.score(point, v) for v, wi in zip(values, w, strict=True)))


def grid_minimum(metric_name: str, values, weights, **kw) -> float:
    """Brute force: the smallest expected loss over a fine grid plus the samples themselves."""
    lo, hi = min(values), max(values)
    grid = np.concatenate([np.linspace(lo, hi, 2001), np.asarray(values, dtype=float)])
    metric = metrics.get(metric_name, **kw)
    w = np.asarray(weights, dtype=float)
    losses = metric.pairwise(grid.tolist(), list(values)) @ (w / w.sum())
    return float(losses.min())


@pytest.mark.parametrize(
    ("metric_name", "kw"),
    [
        ("squared_error", {}),
        ("absolute_error", {}),
        ("pinball", {"tau": 0.1}),
        ("pinball", {"tau": 0.5}),
        ("pinball", {"tau": 0.83}),
    ],
)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_numeric_rules_reach_the_brute_force_minimum(metric_name, kw, data):
    values = data.draw(numbers)
    weights = data.draw(st.lists(positive_weights, min_size=len(values), max_size=len(values)))
    decision = decide(values, metric_name, weights=weights, **kw)
    reported = decision.expected_loss
    recomputed = expected_loss_at(metric_name, decision.output, values, weights, **kw)
    assert reported == pytest.approx(recomputed, rel=1e-9, abs=1e-9)
    # The closed form is at least as good as every point of the fine grid.
    assert reported <= grid_minimum(metric_name, values, weights, **kw) + 1e-9 * max(
        1.0, abs(reported)
    )


@settings(max_examples=80, deadline=None)
@given(values=numbers)
def test_uniform_weights_give_the_plain_mean_and_numpy_median(values):
    assert decide(values, "squared_error").output == pytest.approx(
        float(np.mean(values)), rel=1e-12, abs=1e-12
    )
    assert decide(values, "absolute_error").output == pytest.approx(
        float(np.median(values)), rel=1e-12, abs=1e-12
    )


def test_mean_is_often_a_value_no_sample_produced():
    decision = decide(["1", "2", "2", "5"], "squared_error")
    assert decision.output == 2.5
    assert decision.rule == "mean"
    assert decision.expected_loss == pytest.approx(np.var([1, 2, 2, 5]))


text_answers = st.lists(
    st.sampled_from(["Paris", "paris.", "the Paris", "Lyon", "lyon", "Nice", "A Nice", "x"]),
    min_size=1,
    max_size=30,
)


@settings(max_examples=100, deadline=None)
@given(answers=text_answers)
def test_mbr_with_exact_match_equals_the_majority_vote(answers):
    majority = Counter(normalize_answer(a) for a in answers)
    best = max(majority.values())
    winners = {k for k, v in majority.items() if v == best}
    mbr = decide(answers, "exact_match", rule="mbr")
    mode = decide(answers, "exact_match")
    assert mode.rule == "mode"
    assert normalize_answer(mbr.output) in winners
    assert normalize_answer(mode.output) in winners
    assert mbr.expected_utility == pytest.approx(best / len(answers))
    assert mode.expected_utility == pytest.approx(best / len(answers))


def brute_force_mbr(metric, samples, weights=None):
    """Every distinct candidate against every sample with the per-pair score()."""
    w = np.ones(len(samples)) if weights is None else np.asarray(weights, dtype=float)
    w = w / w.sum()
    best = None
    for cand in set(samples):
        eu = sum(wi * metric.score(cand, y) for y, wi in zip(samples, w, strict=True))
        if best is None or (eu > best if metric.higher_is_better else eu < best):
            best = eu
    return best


SENTENCES = [
    "the cat sat on the mat",
    "a cat sat on a mat",
    "the cat is on the mat",
    "dogs run in the park",
    "the cat sat on the mat",
    "cat on mat",
    "there is a cat on the mat",
]


@pytest.mark.parametrize("name", ["token_f1", "exact_match"])
def test_mbr_expected_utility_is_the_maximum_over_all_candidates(name):
    metric = metrics.get(name)
    rng = random.Random(0)
    for _ in range(20):
        samples = [rng.choice(SENTENCES) for _ in range(rng.randint(1, 12))]
        weights = [rng.uniform(0.1, 2) for _ in samples]
        decision = decide(samples, name, rule="mbr", weights=weights)
        assert decision.expected_utility == pytest.approx(
            brute_force_mbr(metric, samples, weights), abs=1e-12
        )


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_decisions_do_not_depend_on_sample_order(data):
    samples = data.draw(
        st.lists(st.sampled_from([*SENTENCES, "3", "4.5", "4.5", "7"]), min_size=1, max_size=15)
    )
    shuffled = data.draw(st.permutations(samples))
    for name in ("token_f1", "exact_match", "squared_error", "absolute_error"):
        a, b = decide(samples, name), decide(shuffled, name)
        assert a.output == b.output
        assert a.support == b.support


def test_ties_break_by_weight_then_smallest_value():
    # Two equally frequent, equally central answers: the lexicographically smaller wins, in either order.
    assert decide(["y", "x"], "exact_match").output == "x"
    assert decide(["x", "y"], "exact_match").output == "x"
    # Equal expected utility under MBR: the heavier candidate wins.
    weights = [0.2, 0.2, 0.6]
    assert decide(["x", "y", "z"], "token_f1", weights=weights).output == "z"
    # Within one normalisation class the heaviest surface form is reported.
    assert decide(["Paris", "paris", "paris"], "exact_match").output == "paris"


def test_equally_frequent_modes_go_to_the_most_central_answer():
    # All singletons: the answer with most token overlap with the others, not the smallest string.
    assert decide(["Lyon", "Paris", "Paris France", "in Paris"], "exact_match").output == "Paris"
    assert decide(["in Paris", "Paris France", "Paris", "Lyon"], "exact_match").output == "Paris"
    # Numbers: the tied mode nearest the rest in absolute difference (here the median).
    assert decide([0, 7, 8, 9, 30], "absolute_error", rule="mode").output == 8
    # Only the tied classes compete: a strict majority still wins however central the others are.
    assert (
        decide(["Lyon", "Lyon", "Paris", "Paris France", "in Paris"], "exact_match").output
        == "Lyon"
    )


def test_weighted_quantile_midpoint_on_exact_ties_and_levels():
    assert weighted_quantile([1, 2, 3, 4], [1, 1, 1, 1], 0.5) == 2.5
    assert weighted_quantile([1, 2, 3], [1, 1, 1], 0.5) == 2.0
    assert weighted_quantile([1, 2, 3, 10], [1, 1, 1, 1], 0.9) == 10.0
    assert weighted_quantile([1, 2, 3, 10], [1, 1, 1, 1], 0.1) == 1.0
    assert weighted_quantile([5, 1], [3, 1], 0.5) == 5.0


def test_model_weights_count_a_repeated_text_once():
    # "a" was sampled twice but is one sequence with probability e^-3; "b" has e^-1.
    decision = decide(["a", "a", "b"], "exact_match", weights="model", logprobs=[-3, -3, -1])
    assert decision.output == "b"
    p_b = math.exp(-1) / (math.exp(-1) + math.exp(-3))
    assert decision.expected_utility == pytest.approx(p_b)
    assert decision.weighting == "model"
    # A temperature flattens the distribution.
    flat = decide(
        ["a", "a", "b"],
        "exact_match",
        weights="model",
        logprobs=[-3, -3, -1],
        weight_temperature=1e6,
    )
    assert flat.support[0].weight == pytest.approx(0.5, abs=1e-5)


def test_importance_weights_undo_the_proposal_and_report_ess():
    values = [1.0, 2.0, 3.0]
    logp = np.log([0.2, 0.3, 0.5])
    logq = np.log([0.5, 0.3, 0.2])
    decision = decide(
        values, "squared_error", weights="importance", logprobs=logp, proposal_logprobs=logq
    )
    w = np.exp(logp - logq)
    w = w / w.sum()
    assert decision.output == pytest.approx(float(np.dot(w, values)))
    assert decision.effective_sample_size == pytest.approx(1 / np.sum(w**2))
    # p == q: importance weighting is uniform.
    same = decide(
        values, "squared_error", weights="importance", logprobs=logp, proposal_logprobs=logp
    )
    assert same.output == pytest.approx(2.0)
    assert same.effective_sample_size == pytest.approx(3.0)


def test_sample_set_carries_logprobs_and_excludes_truncated_candidates():
    sample_set = SampleSet(
        candidates=(
            Candidate("4", logp=-1.0, logq=-1.0, finish_reason="eos"),
            Candidate("4", logp=-1.0, logq=-1.0, finish_reason="stop"),
            Candidate("100 100 100 100", logp=-9.0, logq=-2.0, finish_reason="length"),
            Candidate("2", logp=-2.0, logq=-2.0, finish_reason="guard"),
        )
    )
    decision = decide(sample_set, "squared_error", weights="importance")
    assert decision.output == 4.0
    assert decision.n_valid == 2
    assert decision.n_total == 4
    assert decision.excluded == {"length": 1, "guard": 1}
    kept = decide(sample_set, "squared_error", include_incomplete=True)
    assert kept.n_valid == 4


def test_unparsable_samples_are_counted_and_all_unparsable_fails_explicitly():
    decision = decide(["4", "four", "5", ""], "squared_error")
    assert decision.output == 4.5
    assert (decision.n_valid, decision.n_total) == (2, 4)
    assert decision.excluded == {"unparsable": 2}
    none = decide(["four", "five"], "squared_error")
    assert none.output is None
    assert not none.ok
    assert "none of the 2 samples" in none.failure
    assert math.isnan(none.expected_loss)
    assert decide([], "exact_match").failure == "no samples were given"


def test_valid_range_clips_and_grid_rule_expects_over_the_scale():
    assert decide(["7", "3"], "squared_error", valid_range=(0, 5)).output == 4.0
    # Rating scale 1..5: 4.4 snaps to 4; the expectation over the grid is (1 + 2 + 4 + 5) / 4.
    decision = decide(["1", "2", "4.4", "5"], "squared_error", rule="grid", valid_range=(1, 5))
    assert decision.output == 3.0
    # Absolute error on the grid: the median of the snapped distribution.
    assert decide([1, 2, 2, 5], "absolute_error", rule="grid", grid=[1, 2, 3, 4, 5]).output == 2.0
    with pytest.raises(InvalidParameterError, match="'grid' rule needs"):
        decide([1.0, 2.0], "squared_error", rule="grid")


def test_plain_callable_metric_needs_a_direction():
    def overlap(a, b):
        return len(set(a) & set(b))

    decision = decide(["abc", "abd", "xyz"], overlap, higher_is_better=True)
    assert decision.output in {"abc", "abd"}
    assert decision.rule == "mbr"
    with pytest.raises(InvalidParameterError, match="higher_is_better"):
        decide(["a"], overlap)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rule": "median-ish"}, "'rule' parameter"),
        ({"weights": "modle"}, "Did you mean 'model'"),
        ({"weights": "model"}, "needs 'logprobs'"),
        ({"weights": "importance", "logprobs": [-1.0, -1.0]}, "proposal_logprobs"),
        ({"weights": [1.0, -1.0]}, "non-negative"),
        ({"weights": [1.0]}, "shape \\(2,\\)"),
        ({"logprobs": [-1.0]}, "shape \\(2,\\)"),
        ({"logprobs": [0.5, -1.0], "weights": "model"}, "log-probabilities"),
        ({"logprobs": [math.inf, -1.0], "weights": "model"}, "log-probabilities"),
        ({"logprobs": [math.nan, -1.0], "weights": "model"}, "not NaN"),
        (
            {
                "weights": "importance",
                "logprobs": [-1.0, -1.0],
                "proposal_logprobs": [-1.0, math.nan],
            },
            "not NaN",
        ),
        ({"valid_range": (5, 1)}, "lo < hi"),
    ],
)
def test_bad_arguments_name_what_was_wrong(kwargs, message):
    with pytest.raises(InvalidParameterError, match=message):
        decide(["1", "2"], "squared_error", **kwargs)


def test_unknown_metric_suggests_the_closest_name():
    with pytest.raises(UnknownNameError, match="Did you mean 'token_f1'"):
        decide(["a"], "token_f2")


def test_a_single_string_is_refused():
    with pytest.raises(InvalidParameterError, match="wrap it in a list"):
        decide("Paris", "exact_match")


# ---------------------------------------------------------------------------------------------
# Bounded memory: candidates x support matrices are filled in blocks of rows.

decide_module = importlib.import_module("metricwise.decide")


def distinct_phrases(n: int, seed: int = 0) -> list[str]:
    """``n`` short distinct answers with shared words, so that metrics score many pairs > 0."""
    rng = random.Random(seed)
    words = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran", "in", "park", "red", "Paris"]
    phrases: set[str] = set()
    while len(phrases) < n:
        phrases.add(" ".join(rng.choice(words) for _ in range(rng.randint(1, 5))))
    return sorted(phrases)


class RecordingMetric(metrics.Metric):
    """Delegates to a registered metric and records the (rows, columns) of every pairwise call."""

    def __init__(self, inner: metrics.Metric) -> None:
        self.inner = inner
        self.name = inner.name
        self.higher_is_better = inner.higher_is_better
        self.kind = inner.kind
        self.bayes_rule = inner.bayes_rule
        self.shapes: list[tuple[int, int]] = []

    def _score_one(self, pred, ref):
        return self.inner.score(pred, ref)

    def pairwise(self, cands, refs):
        self.shapes.append((len(cands), len(refs)))
        return self.inner.pairwise(cands, refs)

    def normalize(self, value):
        return self.inner.normalize(value)


def pairwise_cell_limit() -> int:
    """Matrix cells one pairwise call may fill under the (patched) memory budget."""
    return mbr_ranking.PAIRWISE_BUDGET_BYTES // (8 * mbr_ranking.PAIRWISE_WORKING_COPIES)


@pytest.mark.parametrize("name", ["chrf", "bleu", "token_f1"])
def test_blocked_mbr_gives_the_same_decision_as_one_matrix(name, monkeypatch):
    samples = distinct_phrases(200)
    samples += samples[:40]  # repeated answers: weights differ from uniform over the support
    whole = decide(samples, name)
    # A budget of a few rows forces the blocked path (200 distinct candidates, 200 columns).
    budget = 8 * mbr_ranking.PAIRWISE_WORKING_COPIES * 200 * 7
    monkeypatch.setattr(mbr_ranking, "PAIRWISE_BUDGET_BYTES", budget)
    recorder = RecordingMetric(metrics.get(name))
    blocked = decide(samples, recorder)
    # Row blocks of the matrix are exactly the rows of the whole matrix.
    distinct = sorted(set(samples))
    inner = recorder.inner
    rows = [inner.pairwise(distinct[i : i + 7], distinct) for i in range(0, len(distinct), 7)]
    assert np.array_equal(np.vstack(rows), inner.pairwise(distinct, distinct))
    assert max(rows for rows, _ in recorder.shapes) == 7
    assert blocked.output == whole.output
    assert blocked.support == whole.support
    # The same matrix entries; only the matrix-vector product's last bits may differ, because
    # BLAS sums a row in an order that depends on where the row falls in its kernel's groups.
    assert blocked.expected_utility == pytest.approx(whole.expected_utility, rel=1e-13, abs=0)


def test_no_pairwise_call_exceeds_the_memory_budget(monkeypatch):
    budget = 8 * mbr_ranking.PAIRWISE_WORKING_COPIES * 1000
    monkeypatch.setattr(mbr_ranking, "PAIRWISE_BUDGET_BYTES", budget)
    limit = pairwise_cell_limit()
    samples = distinct_phrases(150)
    # MBR: the (C, C) utility matrix.
    recorder = RecordingMetric(metrics.get("chrf"))
    decision = decide(samples, recorder)
    assert decision.rule == "mbr" and decision.ok
    assert len(recorder.shapes) > 1
    assert all(rows * cols <= limit for rows, cols in recorder.shapes), recorder.shapes
    assert sum(rows for rows, _ in recorder.shapes) == len(samples)  # every candidate scored once
    # The mode's tie-break between equally frequent answers: the (tied, C) closeness matrix.
    words = ["cat", "sat", "mat", "dog", "ran", "park", "red", "blue", "Paris", "Lyon", "Nice"]
    singletons = [f"{a} {b}" for a in words for b in words]  # 121 distinct classes, all tied
    token_f1 = RecordingMetric(metrics.get("token_f1"))
    original_get = metrics.get

    def get(name, **kw):
        return token_f1 if name == "token_f1" else original_get(name, **kw)

    monkeypatch.setattr(metrics, "get", get)
    assert decide(singletons, "exact_match").ok
    assert token_f1.shapes
    assert all(rows * cols <= limit for rows, cols in token_f1.shapes), token_f1.shapes
    # A whole matrix that fits is filled in one call (identical lists: features computed once).
    monkeypatch.undo()
    small = RecordingMetric(metrics.get("chrf"))
    decide(samples, small)
    assert small.shapes[0] == (len(samples), len(samples))


# ---------------------------------------------------------------------------------------------
# Log-probabilities of -inf (a server that returns null token log-probabilities).

NEG_INF = float("-inf")


def score_of(decision) -> float | None:
    """The decision's expected utility or expected loss, whichever its metric has."""
    return (
        decision.expected_utility
        if decision.expected_utility is not None
        else decision.expected_loss
    )


@pytest.mark.parametrize(
    "name", ["chrf", "exact_match", "token_f1", "squared_error", "absolute_error"]
)
@pytest.mark.parametrize(
    ("weights", "logp", "logq"),
    [
        ("model", [NEG_INF, NEG_INF], None),
        ("importance", [NEG_INF, NEG_INF], [-1.0, -2.0]),
        ("importance", [-1.0, -2.0], [NEG_INF, NEG_INF]),
        ("importance", [NEG_INF, -2.0], [-1.0, NEG_INF]),
    ],
)
def test_no_finite_log_probability_fails_with_a_reason(name, weights, logp, logq):
    decision = decide(["1", "2"], name, weights=weights, logprobs=logp, proposal_logprobs=logq)
    assert decision.output is None
    assert not decision.ok
    assert decision.failure.startswith(
        "no usable sample has a finite log-probability (2 have -inf)"
    )
    assert f"'{weights}' weighting" in decision.failure
    assert (decision.n_valid, decision.n_total, decision.support) == (0, 2, ())
    assert decision.effective_sample_size == 0.0
    assert math.isnan(score_of(decision))


def test_a_sample_set_with_null_log_probabilities_fails_with_a_reason():
    null_logprobs = (Candidate("Paris", logp=NEG_INF), Candidate("Lyon", logp=NEG_INF))
    decision = decide(SampleSet(candidates=null_logprobs), "chrf", weights="model")
    assert decision.output is None
    assert "(2 have -inf)" in decision.failure
    # Only the kept samples count: an excluded truncated candidate is not among them.
    truncated = Candidate("Nice", logp=-1.0, finish_reason="length")
    decision = decide(SampleSet(candidates=(*null_logprobs, truncated)), "chrf", weights="model")
    assert decision.output is None
    assert "(2 have -inf)" in decision.failure
    assert decision.excluded == {"length": 1}


@pytest.mark.parametrize(
    ("name", "samples"),
    [
        ("exact_match", ["Paris", "Lyon", "Lyon", "Nice", "Paris"]),
        ("token_f1", ["the cat", "a dog", "a dog", "the cat sat", "a cat"]),
        ("chrf", ["the cat", "a dog", "a dog", "the cat sat", "a cat"]),
        ("squared_error", ["1", "9", "9", "3", "4"]),
        ("absolute_error", ["1", "2", "2", "3", "5"]),
    ],
)
@pytest.mark.parametrize(
    ("weights", "logp", "logq"),
    [
        ("model", [-1.0, NEG_INF, NEG_INF, -1.5, -3.0], None),
        # Sample 1 has p = 0; sample 2's log q is missing, so its ratio p/q is unusable.
        ("importance", [-1.0, NEG_INF, -2.0, -1.5, -3.0], [-1.0, -1.0, NEG_INF, -2.0, -1.0]),
    ],
)
def test_minus_inf_log_probabilities_give_weight_zero(name, samples, weights, logp, logq):
    decision = decide(samples, name, weights=weights, logprobs=logp, proposal_logprobs=logq)
    assert decision.ok
    assert decision.n_valid == 5
    weight_of = {item.value: item.weight for item in decision.support}
    zero_weight = float(samples[1]) if decision.rule in ("mean", "median") else samples[1]
    assert weight_of[zero_weight] == 0.0
    # Weight 0 is no influence: the same decision as without samples 1 and 2.
    kept = [0, 3, 4]
    reference = decide(
        [samples[i] for i in kept],
        name,
        weights=weights,
        logprobs=[logp[i] for i in kept],
        proposal_logprobs=None if logq is None else [logq[i] for i in kept],
    )
    assert decision.output == reference.output
    assert decision.effective_sample_size == pytest.approx(reference.effective_sample_size)
    assert score_of(decision) == pytest.approx(score_of(reference), rel=1e-12)


def test_weights_that_overflow_when_summed_still_give_a_decision():
    decision = decide(["1", "2", "4"], "squared_error", weights=[1e308, 1e308, 0.0])
    assert decision.output == 1.5
    assert decision.effective_sample_size == pytest.approx(2.0)


def test_a_copy_without_log_probability_keeps_its_text_s_mass():
    # "a" is one sequence with log p = -1; its second copy came back without one.
    logprobs = [-1.0, NEG_INF, -2.0]
    decision = decide(["a", "a", "b"], "exact_match", weights="model", logprobs=logprobs)
    assert decision.output == "a"
    assert decision.expected_utility == pytest.approx(math.exp(-1) / (math.exp(-1) + math.exp(-2)))


def test_a_zero_weight_sample_does_not_move_the_median():
    # Every point of [1, 3] is a median; the midpoint of the samples with weight is returned.
    logprobs = [-1.0, NEG_INF, -1.0]
    decision = decide([1, 2, 3], "absolute_error", weights="model", logprobs=logprobs)
    assert decision.output == decide([1, 3], "absolute_error").output == 2.0
    assert weighted_quantile([1, 2, 3], [1, 0, 1], 0.5) == 2.0


# ---------------------------------------------------------------------------------------------
# An empty or punctuation-only text is no answer.


@pytest.mark.parametrize(
    ("name", "rule"),
    [("exact_match", "mode"), ("exact_match", "mbr"), ("chrf", "mbr"), ("token_f1", "mbr")],
)
def test_empty_and_punctuation_only_answers_are_left_out(name, rule):
    # Three samples normalise to "" and used to outvote three distinct real answers.
    samples = ["", " /", "Tokyo", "Kyoto", "Osaka.", "..."]
    decision = decide(samples, name, rule=rule)
    assert decision.output in {"Tokyo", "Kyoto", "Osaka."}
    assert decision.excluded == {"empty": 3}
    assert (decision.n_valid, decision.n_total) == (3, 6)
    assert {item.value for item in decision.support} == {"Tokyo", "Kyoto", "Osaka."}
    assert decision.ok


def test_text_in_any_script_is_an_answer_and_its_punctuation_is_not():
    decision = decide(["東京", "東京", "", "。", "Kyoto"], "exact_match")
    assert decision.output == "東京"
    assert decision.excluded == {"empty": 2}
    assert decide(["-1", "?", "x"], "exact_match").n_valid == 2  # a digit or a letter is enough


@pytest.mark.parametrize("metric", ["chrf", "bleu", "token_f1", "exact_match", "absolute_error"])
def test_a_runaway_sample_is_left_out_as_too_long_not_decided_over(metric):
    """chrF over three samples, one of them 50 MB, used to peak at 5 GB and take 53 s; a text
    over MAX_ANSWER_CHARS is left out, as a hypothesis too."""
    from metricwise.decide import MAX_ANSWER_CHARS

    runaway = "7 cats sat " * (MAX_ANSWER_CHARS // 10)
    assert len(runaway) > MAX_ANSWER_CHARS
    decision = decide(["3 cats sat", "3 cats sat down", runaway], metric)
    assert decision.excluded == {"too_long": 1} and decision.n_valid == 2
    assert "7" not in str(decision.output)
    hypotheses = decide(["3 cats sat", "3 cats sat"], metric, candidates=[runaway, "3 cats sat"])
    assert hypotheses.output in ("3 cats sat", 3.0)
    just_under = "3 cats sat " * ((MAX_ANSWER_CHARS - 1) // 11)
    assert decide([just_under], metric).n_valid == 1
    failed = decide([runaway], metric)
    assert failed.output is None and "(1 too_long)" in failed.failure


def test_null_log_probabilities_are_named_as_missing_not_nan():
    with pytest.raises(InvalidParameterError) as refused:
        decide(["a", "b", "a"], "exact_match", weights="model", logprobs=[None, None, None])
    message = str(refused.value)
    assert "no value (null) for 3 of 3 samples (0, 1, 2)" in message and "nan" not in message
    assert "weights='uniform'" in message


def test_only_empty_answers_fail_explicitly():
    decision = decide(["", "...", " \n"], "exact_match")
    assert decision.output is None
    assert decision.failure == "none of the 3 samples could be used as an answer (3 empty)"
    assert decision.excluded == {"empty": 3}
    sample_set = SampleSet(
        candidates=(Candidate(""), Candidate("!"), Candidate("Paris was", finish_reason="length"))
    )
    decision = decide(sample_set, "chrf")
    assert (
        decision.failure == "none of the 3 samples could be used as an answer (2 empty, 1 length)"
    )


def test_the_extracted_answer_is_what_must_not_be_empty():
    def after_colon(text):
        return text.split(":", 1)[1].strip() if ":" in text else None

    samples = ["Answer: Paris", "Answer: ", "Answer: ?", "Paris", "Answer: Lyon", "Answer: Paris."]
    decision = decide(samples, "exact_match", extractor=after_colon)
    assert decision.output == "Paris"
    assert decision.excluded == {"empty": 2, "unparsable": 1}
    assert decision.n_valid == 3


def test_numeric_decisions_still_count_empty_texts_as_unparsable():
    decision = decide(["4", "", "...", "6"], "squared_error")
    assert decision.output == 5.0
    assert decision.excluded == {"unparsable": 2}
    failure = decide(["", "-"], "absolute_error").failure
    assert failure == "none of the 2 samples could be used as a number (2 unparsable)"


def test_the_grid_rule_gives_its_inner_rule_one_count_per_grid_value(monkeypatch):
    """_rule_grid passed the counts of the distinct samples (5 here) with the values and weights
    of the grid (3 here)."""
    import importlib

    decide_module = importlib.import_module("metricwise.decide")

    seen = {}
    median = decide_module._RULE_FUNCTIONS["median"]

    def spy(values, weights, counts, *rest):
        seen.update(values=list(values), counts=list(counts))
        return median(values, weights, counts, *rest)

    monkeypatch.setitem(decide_module._RULE_FUNCTIONS, "median", spy)
    d = decide(["1.1", "1.2", "2.9", "3.1", "5"], "absolute_error", rule="grid", valid_range=(1, 5))
    assert seen == {"values": [1.0, 3.0, 5.0], "counts": [2, 2, 1]}
    assert d.output == 3.0


def test_candidates_are_the_hypotheses_and_the_samples_the_evidence():
    samples = ["red green blue one", "red green blue two", "red green blue three"]
    alone = decide(samples, "token_f1")
    same = decide(samples, "token_f1", candidates=samples)
    assert (same.output, same.expected_utility) == (alone.output, alone.expected_utility)
    # A hypothesis no sample produced wins when it is closer to all of them (F1 6/7 each).
    with_greedy = decide(samples, "token_f1", candidates=[*samples, "red green blue"])
    assert with_greedy.output == "red green blue" and with_greedy.rule == "mbr"
    assert with_greedy.expected_utility == pytest.approx(6 / 7)
    assert with_greedy.n_valid == 3  # the evidence is still the three samples


def test_candidates_for_a_number_metric_and_unusable_candidates():
    d = decide(["4", "5", "6"], "squared_error", candidates=["1", "10", "no number"])
    assert d.output == 1.0 and d.rule == "mbr"
    assert d.expected_loss == pytest.approx((9 + 16 + 25) / 3)
    none = decide(["Paris", "Paris"], "exact_match", candidates=["", "..."])
    assert none.output is None and "none of the 2 candidates is a usable answer" in none.failure
    with pytest.raises(InvalidParameterError, match="'candidates'"):
        decide(["a"], "chrf", candidates="a")


def test_a_metric_that_gives_nan_is_a_clear_error_and_infinities_rank():
    from metricwise.errors import MetricwiseError

    def broken(a, b):
        return float("nan") if "b" in (a, b) else 1.0

    with pytest.raises(
        MetricwiseError, match=r"'broken' gave NaN for 2 of 2 hypotheses.*cannot be ranked"
    ):
        decide(["a", "b", "a"], broken, higher_is_better=True, rule="mbr")

    def infinite(a, b):
        return math.inf if a == "best" else 0.0

    assert decide(["x", "best", "y"], infinite, higher_is_better=True, rule="mbr").output == "best"

    def hopeless(a, b):
        return -math.inf

    # Every hypothesis equally unusable: still a decision, the heaviest one.
    assert decide(["x", "y", "y"], hopeless, higher_is_better=True, rule="mbr").output == "y"


def test_a_risk_threshold_abstains_instead_of_guessing():
    spread = decide(["3", "4", "1", "5"], "squared_error", max_expected_loss=1.0)
    assert spread.output is None and spread.abstained and spread.withheld == 3.25
    assert spread.expected_loss == pytest.approx(2.1875)  # the risk stays
    assert spread.failure == (
        "abstained: the best answer's expected squared_error is 2.1875, above max_expected_loss=1"
    )
    assert spread.to_dict()["abstained"] is True and spread.to_dict()["withheld"] == 3.25
    sure = decide(["3", "3.1", "2.9"], "squared_error", max_expected_loss=1.0)
    assert sure.output == pytest.approx(3.0) and not sure.abstained and sure.ok
    assert "abstained" not in sure.to_dict()
    vote = decide(["Paris", "Paris", "Lyon"], "exact_match", min_expected_utility=0.9)
    assert (
        vote.output is None
        and vote.withheld == "Paris"
        and "below min_expected_utility=0.9" in vote.failure
    )
    assert (
        decide(["Paris", "Paris", "Lyon"], "exact_match", min_expected_utility=0.5).output
        == "Paris"
    )


@pytest.mark.parametrize(
    ("metric", "kwargs", "message"),
    [
        (
            "exact_match",
            {"max_expected_loss": 0.5},
            "is a utility: its abstention threshold is the 'min_expected_utility'",
        ),
        (
            "squared_error",
            {"min_expected_utility": 0.5},
            "is a loss: its abstention threshold is the 'max_expected_loss'",
        ),
        ("squared_error", {"max_expected_loss": float("nan")}, "must be a finite number"),
    ],
)
def test_a_risk_threshold_must_match_the_metrics_direction(metric, kwargs, message):
    with pytest.raises(InvalidParameterError, match=message):
        decide([], metric, **kwargs)  # checked before any sample is read
