"""Properties every registered metric must have, checked across the whole registry."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metricwise import metrics
from metricwise.errors import InvalidParameterError, MetricwiseError

WORDS = [
    "the",
    "cat",
    "sat",
    "on",
    "a",
    "mat",
    "dog",
    "Paris",
    "paris",
    "é",
    "42",
    ",",
    "runs",
    "The",
]
texts = st.lists(st.sampled_from(WORDS), min_size=0, max_size=8).map(" ".join)
free_texts = st.text(max_size=30)
numbers = st.floats(min_value=-1e4, max_value=1e4, allow_nan=False, allow_infinity=False)


def available_metrics() -> list[str]:
    out = []
    for name in metrics.names():
        try:
            metrics.get(name)
        except MetricwiseError:  # an optional extra (e.g. embeddings) is not installed
            continue
        out.append(name)
    return out


ALL = available_metrics()
TEXT = [n for n in ALL if metrics.get(n).kind == "text"]
NUMERIC = [n for n in ALL if metrics.get(n).kind == "numeric"]
FAST_TEXT = [n for n in TEXT if n != "embedding_cosine"]


def strategy_for(name: str):
    return numbers if metrics.get(name).kind == "numeric" else texts


def test_the_registry_has_the_documented_metrics():
    expected = {
        "exact_match",
        "token_f1",
        "squared_error",
        "absolute_error",
        "pinball",
        "bleu",
        "chrf",
        "rouge_l",
    }
    assert expected <= set(metrics.names())


@pytest.mark.parametrize("name", ALL)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_pairwise_equals_elementwise_score(name, data):
    metric = metrics.get(name)
    strategy = strategy_for(name)
    cands = data.draw(st.lists(strategy, min_size=1, max_size=5))
    refs = data.draw(st.lists(strategy, min_size=1, max_size=5))
    matrix = metric.pairwise(cands, refs)
    assert matrix.shape == (len(cands), len(refs))
    expected = np.array([[metric.score(c, r) for r in refs] for c in cands])
    np.testing.assert_allclose(matrix, expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", ALL)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_self_score_is_the_best_score(name, data):
    metric = metrics.get(name)
    strategy = strategy_for(name)
    x, y = data.draw(strategy), data.draw(strategy)
    if metric.higher_is_better:
        assert metric.score(x, x) >= metric.score(x, y) - 1e-9
    else:
        assert metric.score(x, x) <= metric.score(x, y) + 1e-9


@pytest.mark.parametrize("name", [n for n in ALL if metrics.get(n).symmetric])
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_symmetric_metrics_are_symmetric(name, data):
    metric = metrics.get(name)
    strategy = strategy_for(name)
    x, y = data.draw(strategy), data.draw(strategy)
    assert metric.score(x, y) == pytest.approx(metric.score(y, x), rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("name", ALL)
@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_pairwise_rows_follow_the_candidate_order(name, data):
    metric = metrics.get(name)
    strategy = strategy_for(name)
    cands = data.draw(st.lists(strategy, min_size=1, max_size=6))
    refs = data.draw(st.lists(strategy, min_size=1, max_size=6))
    perm = data.draw(st.permutations(range(len(cands))))
    np.testing.assert_allclose(
        metric.pairwise([cands[i] for i in perm], refs),
        metric.pairwise(cands, refs)[list(perm)],
        rtol=1e-12,
        atol=1e-12,
    )


@pytest.mark.parametrize("name", FAST_TEXT)
@settings(max_examples=40, deadline=None)
@given(x=free_texts, y=free_texts)
def test_text_metrics_never_fail_on_arbitrary_unicode(name, x, y):
    value = metrics.get(name).score(x, y)
    assert np.isfinite(value)


@pytest.mark.parametrize("name", [n for n in TEXT if n != "bleu"])
def test_multiple_references_take_the_best(name):
    """BLEU is the exception: it pools references as sacrebleu does (tested against sacrebleu)."""
    metric = metrics.get(name)
    refs = ["the cat sat on the mat", "a dog runs", "Paris"]
    best = max(metric.score("the cat sat", r) for r in refs)
    assert metric.score("the cat sat", refs) == pytest.approx(best)
    with pytest.raises(InvalidParameterError, match="empty list"):
        metric.score("x", [])


def test_registry_refuses_duplicates_and_unknown_arguments():
    with pytest.raises(InvalidParameterError, match="already registered"):
        metrics.register("token_f1")(lambda: None)
    with pytest.raises(InvalidParameterError, match="pinball"):
        metrics.get("pinball", tau=1.5)
    with pytest.raises(InvalidParameterError, match="Bad arguments"):
        metrics.get("squared_error", tau=0.2)
