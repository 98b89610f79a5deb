"""The bootstrap against closed-form cases."""

from __future__ import annotations

import numpy as np
import pytest

from metricwise.evaluate.stats import (
    bootstrap,
    paired_bootstrap,
    pearson_rows,
    resample_indices,
    spearman_rows,
)


def test_bootstrap_of_the_mean_matches_the_normal_theory():
    rng = np.random.default_rng(0)
    values = rng.normal(3.0, 2.0, size=400)
    estimate = bootstrap(values, indices=resample_indices(len(values), 4000, seed=1))
    # The bootstrap standard error of a mean is the plug-in sigma / sqrt(n).
    plug_in = values.std(ddof=0) / np.sqrt(len(values))
    assert estimate.value == pytest.approx(values.mean())
    assert estimate.stderr == pytest.approx(plug_in, rel=0.06)
    assert estimate.low == pytest.approx(values.mean() - 1.96 * plug_in, abs=0.25 * plug_in)
    assert estimate.high == pytest.approx(values.mean() + 1.96 * plug_in, abs=0.25 * plug_in)


def test_bernoulli_interval_matches_the_binomial_standard_error():
    values = np.array([1.0] * 30 + [0.0] * 70)
    estimate = bootstrap(values, indices=resample_indices(100, 4000, seed=2))
    assert estimate.stderr == pytest.approx(np.sqrt(0.3 * 0.7 / 100), rel=0.08)


def test_constant_values_have_a_zero_width_interval():
    estimate = bootstrap(np.full(10, 0.5))
    assert (estimate.low, estimate.value, estimate.high, estimate.stderr) == (0.5, 0.5, 0.5, 0.0)


def test_paired_bootstrap_detects_a_consistent_gain_and_not_noise():
    rng = np.random.default_rng(3)
    base = rng.normal(size=300)
    better = base + 0.2 + rng.normal(scale=0.05, size=300)
    cmp = paired_bootstrap(better, base)
    assert cmp.difference == pytest.approx(np.mean(better - base))
    assert cmp.low > 0 and cmp.p_value < 0.01
    same = paired_bootstrap(base, base)
    assert same.difference == 0 and same.p_value == 1.0
    noisy = paired_bootstrap(base + rng.normal(scale=1.0, size=300), base)
    assert noisy.low < 0 < noisy.high


def test_paired_bootstrap_needs_the_same_items():
    with pytest.raises(ValueError, match="same items"):
        paired_bootstrap(np.zeros(3), np.zeros(4))


def test_correlation_statistics_equal_their_definitions():
    rng = np.random.default_rng(4)
    x = rng.normal(size=50)
    y = 0.5 * x + rng.normal(size=50)
    y[:5] = y[5]  # ties for Spearman
    pairs = np.stack([x, y], axis=1)
    all_items = np.arange(50)[None, :]
    assert pearson_rows(pairs, all_items)[0] == pytest.approx(np.corrcoef(x, y)[0, 1])

    def ranks(v):
        order = np.argsort(v, kind="stable")
        r = np.empty(len(v))
        r[order] = np.arange(1, len(v) + 1)
        for value in np.unique(v):
            mask = v == value
            r[mask] = r[mask].mean()
        return r

    assert spearman_rows(pairs, all_items)[0] == pytest.approx(
        np.corrcoef(ranks(x), ranks(y))[0, 1]
    )
    estimate = bootstrap(pairs, statistic=pearson_rows, indices=resample_indices(50, 500))
    assert estimate.low < estimate.value < estimate.high


def test_paired_bootstrap_of_a_corpus_statistic_resamples_both_sides_alike():
    rng = np.random.default_rng(5)
    reference = rng.normal(size=80)
    good = np.stack([reference + rng.normal(scale=0.3, size=80), reference], axis=1)
    poor = np.stack([reference + rng.normal(scale=2.0, size=80), reference], axis=1)
    idx = resample_indices(80, 500, seed=6)
    cmp = paired_bootstrap(good, poor, statistic=pearson_rows, indices=idx)
    everything = np.arange(80)[None, :]
    expected = pearson_rows(good, everything)[0] - pearson_rows(poor, everything)[0]
    assert cmp.difference == pytest.approx(expected)
    replicates = pearson_rows(good, idx) - pearson_rows(poor, idx)
    assert (cmp.low, cmp.high) == pytest.approx(
        (np.quantile(replicates, 0.025), np.quantile(replicates, 0.975))
    )
    assert cmp.low > 0 and cmp.p_value < 0.01
    assert paired_bootstrap(good, good, statistic=pearson_rows, indices=idx).p_value == 1.0
