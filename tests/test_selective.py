"""Selective prediction: risk-coverage curves and how well a ranking orders items by loss."""

from __future__ import annotations

import numpy as np
import pytest

from metricwise.evaluate.selective import (
    COVERAGES,
    _average_ranks_rows,
    dense_ranks,
    selective_prediction,
    spread_uncertainty,
)
from metricwise.evaluate.stats import _average_ranks, resample_indices


def test_vectorised_ranks_equal_the_row_by_row_ones_with_ties():
    rng = np.random.default_rng(0)
    keys = rng.integers(0, 5, size=(40, 17))  # many ties
    np.testing.assert_array_equal(_average_ranks_rows(keys), _average_ranks(keys))


def test_a_ranking_that_knows_the_loss_is_perfect_and_its_reverse_is_worst():
    loss = np.arange(20, dtype=float)  # squared errors 0..19
    indices = resample_indices(20, 200)
    out = selective_prediction(
        loss, False, {"oracle": loss, "reversed": -loss, "absent": None}, indices
    )
    assert set(out["rankings"]) == {"oracle", "reversed"}  # a missing baseline is left out
    oracle, reversed_ = out["rankings"]["oracle"], out["rankings"]["reversed"]
    assert oracle["spearman"]["value"] == pytest.approx(1.0)
    assert oracle["auroc"]["value"] == pytest.approx(1.0)
    assert reversed_["spearman"]["value"] == pytest.approx(-1.0)
    assert reversed_["auroc"]["value"] == pytest.approx(0.0)
    # The most confident 10% (2 items) have losses 0 and 1; everything averages 9.5.
    assert oracle["curve"][0][:2] == [0.1, 0.5] and oracle["curve"][-1][1] == pytest.approx(9.5)
    assert out["full"] == pytest.approx(9.5)
    assert oracle["area"]["value"] < out["full"] < reversed_["area"]["value"]
    low, high = oracle["spearman"]["ci"]
    assert low <= 1.0 <= high + 1e-12
    assert [c for c, *_ in oracle["curve"]] == list(COVERAGES)


def test_a_utility_is_ranked_against_its_negative_and_failed_items_come_last():
    utility = np.array([1.0, 1.0, 0.0, 0.0, 1.0, 0.0])  # exact match
    risk = np.array([-0.9, -0.8, -0.2, np.inf, -0.7, -0.1])  # minus expected utility
    out = selective_prediction(utility, True, {"risk": risk}, resample_indices(6, 50))
    ranking = out["rankings"]["risk"]
    assert ranking["auroc"]["value"] == pytest.approx(1.0)  # every wrong item is less sure
    assert ranking["curve"][4][1] == pytest.approx(1.0)  # the most confident half: all right


def test_ties_are_broken_by_a_fixed_random_order_not_the_items_order():
    """A constant ranking must not favour items listed first."""
    loss = np.concatenate([np.zeros(50), np.ones(50)])  # the good ones first
    out = selective_prediction(loss, False, {"constant": np.zeros(100)}, resample_indices(100, 20))
    first_tenth = out["rankings"]["constant"]["curve"][0][1]
    assert 0.0 < first_tenth < 1.0
    assert out["rankings"]["constant"]["spearman"]["value"] is None  # no variance: undefined


def test_spread_is_the_variance_of_numbers_and_the_disagreement_of_texts():
    numbers = spread_uncertainty([[1.0, 3.0, None], [None, None]], numeric=True)
    assert numbers[0] == pytest.approx(1.0) and numbers[1] == np.inf
    texts = spread_uncertainty([["paris", "paris", "lyon", None]], numeric=False)
    assert texts[0] == pytest.approx(0.5)  # the mode's share of all 4 samples
    np.testing.assert_array_equal(dense_ranks(np.array([3.0, np.inf, 1.0, 3.0])), [1, 2, 0, 1])
