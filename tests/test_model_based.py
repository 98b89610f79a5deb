"""The shared machinery of model-based utilities: the bounded cache, and MBR with a pointwise
utility (best-of-N without a pairwise matrix). No model is needed here."""

from __future__ import annotations

import numpy as np
import pytest

from metricwise import SampleSet, decide
from metricwise.errors import InvalidParameterError
from metricwise.metrics import Metric
from metricwise.metrics.model_based import LRUCache, text_key
from metricwise.types import Candidate


class LengthReward(Metric):
    """A pointwise utility (the length of the answer, plus the question's when given) whose
    pairwise matrix must never be asked for."""

    name = "length_reward_test"
    pointwise = True

    def __init__(self):
        self.calls = []

    def pointwise_scores(self, cands, *, context=None):
        self.calls.append((list(cands), context))
        return np.array([len(c) + (len(context) if context else 0) for c in cands], dtype=float)

    def pairwise(self, cands, refs):
        raise AssertionError("a pointwise utility was asked for a pairwise matrix")


SAMPLES = ["a", "bbb", "cc", "bbb", "dddd", "a", "a"]


def test_mbr_with_a_pointwise_utility_is_best_of_n_without_a_matrix():
    metric = LengthReward()
    decision = decide(SAMPLES, metric)  # the default rule of a metric without a closed form
    assert decision.rule == "mbr" and decision.output == "dddd"
    assert decision.expected_utility == 4.0
    assert decision.mbr.method == "pointwise"
    assert (decision.mbr.n_hypotheses, decision.mbr.evaluations) == (4, 4)
    # Each distinct hypothesis is scored once.
    assert sorted(metric.calls[0][0]) == ["a", "bbb", "cc", "dddd"]


def test_weights_do_not_choose_but_break_ties():
    metric = LengthReward()
    heavy = [100.0, 1, 1, 1, 0.01, 100, 100]
    assert decide(SAMPLES, metric, rule="mbr", weights=heavy).output == "dddd"
    # "bb" and "cc" tie: the heavier one wins, as in exact MBR.
    tied = decide(["bb", "cc", "cc"], metric)
    assert tied.output == "cc"


@pytest.mark.parametrize("mbr", ["exact", "prune", "aggregate"])
def test_every_mbr_method_takes_the_pointwise_shortcut(mbr):
    decision = decide(SAMPLES, LengthReward(), rule="mbr", mbr=mbr)
    assert decision.output == "dddd" and decision.mbr.method == "pointwise"


def test_candidates_are_scored_pointwise_too():
    metric = LengthReward()
    decision = decide(SAMPLES, metric, candidates=["zzzzzz", "a"])
    assert decision.output == "zzzzzz" and decision.expected_utility == 6.0


def test_the_question_reaches_the_utility():
    metric = LengthReward()
    samples = SampleSet(tuple(Candidate(t) for t in SAMPLES), prompt="why?")
    assert decide(samples, metric).expected_utility == 8.0
    assert metric.calls[-1][1] == "why?"
    decide(samples, metric, context="other")  # an explicit context wins over the prompt
    assert metric.calls[-1][1] == "other"
    decide(SAMPLES, metric)
    assert metric.calls[-1][1] is None
    with pytest.raises(InvalidParameterError, match="'context' parameter of decide"):
        decide(SAMPLES, metric, context=3)


def test_a_pointwise_metric_with_a_loss_direction_takes_the_minimum():
    class LengthLoss(LengthReward):
        higher_is_better = False

    decision = decide(SAMPLES, LengthLoss())
    assert decision.output == "a" and decision.expected_loss == 1.0


def test_the_cache_is_bounded_in_bytes_and_drops_the_least_recently_used():
    cache = LRUCache(max_bytes=100)
    for name in "abc":
        cache.put(name.encode(), name, 40)
    # 120 bytes do not fit: "a", the oldest, went.
    assert cache.get(b"a") is None and len(cache) == 2 and cache.nbytes == 80
    assert cache.get(b"b") == "b"  # "b" is now the most recently used
    cache.put(b"d", "d", 40)
    assert cache.get(b"c") is None and cache.get(b"b") == "b" and cache.get(b"d") == "d"
    cache.put(b"huge", "x", 101)  # larger than the bound: not cached, nothing dropped
    assert cache.get(b"huge") is None and len(cache) == 2
    cache.put(b"b", "b2", 10)  # replacing an entry frees its old size
    assert cache.nbytes == 50 and cache.get(b"b") == "b2"
    with pytest.raises(InvalidParameterError, match="max_bytes"):
        LRUCache(max_bytes=-1)


def test_text_keys_separate_their_parts():
    assert text_key("ns", "ab", "c") != text_key("ns", "a", "bc")
    assert text_key("ns", "a") != text_key("other", "a")
    assert len(text_key("ns", "x")) == 32
