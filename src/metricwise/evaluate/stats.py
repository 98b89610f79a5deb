"""Confidence intervals and paired comparisons by the bootstrap over items.

Resampling is vectorised: one (B, n) matrix of item indices serves every statistic of a run, so
a paired comparison resamples both decoders with the same items (Koehn 2004, "Statistical
significance tests for machine translation evaluation").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from metricwise.errors import InvalidParameterError

#: Bootstrap resamples when none are asked for (``--bootstrap_iters``).
DEFAULT_BOOTSTRAP_ITERS = 1000


@dataclass(frozen=True)
class Estimate:
    """A statistic with its percentile bootstrap interval and standard error."""

    value: float
    low: float
    high: float
    stderr: float


@dataclass(frozen=True)
class PairedComparison:
    """``statistic(a) - statistic(b)`` on the same items, with its interval and a two-sided p-value.

    ``p_value`` is twice the smaller share of resamples on either side of 0 (floored at
    ``1 / bootstrap_iters``): how often the sign of the difference would flip.
    """

    difference: float
    low: float
    high: float
    p_value: float

    def to_dict(self) -> dict[str, Any]:
        """The form results files keep: ``{"difference", "ci": [low, high], "p_value"}``."""
        return {"difference": self.difference, "ci": [self.low, self.high], "p_value": self.p_value}


def resample_indices(
    n_items: int, bootstrap_iters: int = DEFAULT_BOOTSTRAP_ITERS, seed: int = 0
) -> np.ndarray:
    """(bootstrap_iters, n_items) item indices drawn with replacement."""
    if n_items < 1:
        raise InvalidParameterError(
            f"The bootstrap needs at least one item. Got {n_items} instead."
        )
    if bootstrap_iters < 1:
        raise InvalidParameterError(
            f"The 'bootstrap_iters' parameter must be an int >= 1. Got {bootstrap_iters} instead."
        )
    return np.random.default_rng(seed).integers(0, n_items, size=(bootstrap_iters, n_items))


def _mean_rows(values: np.ndarray, idx: np.ndarray) -> np.ndarray:
    return np.asarray(values, dtype=np.float64)[idx].mean(axis=1)


def bootstrap(
    values: np.ndarray,
    *,
    statistic: Callable[[np.ndarray, np.ndarray], np.ndarray] = _mean_rows,
    indices: np.ndarray | None = None,
    confidence: float = 0.95,
    seed: int = 0,
) -> Estimate:
    """Percentile bootstrap of ``statistic`` over items.

    Parameters
    ----------
    values:
        Per-item values, shape (n,) (or (n, m) for a statistic of several columns, such as
        Pearson's r of predictions and references).
    statistic:
        ``statistic(values, idx) -> (B,)``: the statistic for each row of ``idx``. The point
        estimate uses all items once. Default: the mean.
    indices:
        Shared (B, n) resampling indices (see :func:`resample_indices`); drawn when ``None``.
    confidence:
        Interval coverage, in (0, 1).
    """
    values = np.asarray(values, dtype=np.float64)
    n = values.shape[0]
    idx = resample_indices(n, seed=seed) if indices is None else indices
    point = float(statistic(values, np.arange(n)[None, :])[0])
    replicates = statistic(values, idx)
    lo, hi = _percentiles(replicates, confidence)
    return Estimate(
        value=point,
        low=lo,
        high=hi,
        stderr=float(np.nanstd(replicates, ddof=1)) if len(replicates) > 1 else 0.0,
    )


def paired_bootstrap(
    a: np.ndarray,
    b: np.ndarray,
    *,
    statistic: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
    indices: np.ndarray | None = None,
    confidence: float = 0.95,
    seed: int = 0,
) -> PairedComparison:
    """``statistic(a) - statistic(b)`` over the same items, with interval and p-value.

    Parameters
    ----------
    a, b:
        Per-item values of two decoders on the same items: shape (n,) for the mean, or (n, m)
        for a corpus statistic (Pearson's r of [prediction, reference] columns).
    statistic:
        ``statistic(values, idx) -> (B,)`` as in :func:`bootstrap`; ``None`` is the mean, whose
        difference is the mean of ``a - b``. Each resample draws the same items for both, so
        what varies between the two is the decoder, not the items.
    indices, confidence, seed:
        As in :func:`bootstrap`. Resamples where the statistic is undefined (a correlation of a
        resample with one distinct prediction) are left out of the interval and the p-value.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise InvalidParameterError(
            f"A paired comparison needs scores of the same items. Got shapes {a.shape} and {b.shape} instead."
        )
    idx = resample_indices(len(a), seed=seed) if indices is None else indices
    if statistic is None:
        diff = a - b
        difference = float(diff.mean())
        replicates = diff[idx].mean(axis=1)
        identical = bool(np.all(diff == 0))
    else:
        everything = np.arange(len(a))[None, :]
        difference = float(statistic(a, everything)[0] - statistic(b, everything)[0])
        replicates = statistic(a, idx) - statistic(b, idx)
        identical = bool(np.array_equal(a, b))
    lo, hi = _percentiles(replicates, confidence)
    if statistic is not None:  # the mean of finite scores is finite: nothing to leave out
        replicates = replicates[np.isfinite(replicates)]
    n_res = max(len(replicates), 1)
    tail = min(np.mean(replicates <= 0), np.mean(replicates >= 0)) if len(replicates) else 0.5
    p_value = float(min(1.0, max(2 * tail, 1.0 / n_res)))
    if identical:
        p_value = 1.0
    return PairedComparison(difference=difference, low=lo, high=hi, p_value=p_value)


def _percentiles(replicates: np.ndarray, confidence: float) -> tuple[float, float]:
    if not 0 < confidence < 1:
        raise InvalidParameterError(
            f"The 'confidence' parameter must be in (0, 1). Got {confidence!r} instead."
        )
    alpha = (1 - confidence) / 2
    finite = replicates[np.isfinite(replicates)]
    if finite.size == 0:
        return float("nan"), float("nan")
    return float(np.quantile(finite, alpha)), float(np.quantile(finite, 1 - alpha))


# -- corpus-level statistics: each maps (values (n, 2) = [prediction, reference], idx (B, n)) -> (B,)


def pearson_rows(values: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Pearson's r of columns 0 (predictions) and 1 (references) for each resample."""
    return pearson_of_rows(values[idx, 0], values[idx, 1])


def pearson_of_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Shape (B,): Pearson's r of each row of ``x`` (B, n) with the same row of ``y``; NaN
    where a row has no variance."""
    x = x - x.mean(axis=1, keepdims=True)
    y = y - y.mean(axis=1, keepdims=True)
    denom = np.sqrt((x * x).sum(axis=1) * (y * y).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (x * y).sum(axis=1) / denom, np.nan)


def _average_ranks(matrix: np.ndarray) -> np.ndarray:
    """Row-wise ranks with ties averaged (as scipy.stats.rankdata), shape preserved."""
    order = np.argsort(matrix, axis=1, kind="stable")
    ranks = np.empty_like(matrix, dtype=np.float64)
    rows = np.arange(matrix.shape[0])[:, None]
    ranks[rows, order] = np.arange(matrix.shape[1], dtype=np.float64)[None, :]
    sorted_vals = np.take_along_axis(matrix, order, axis=1)
    # Average the ranks of tied runs.
    for r in range(matrix.shape[0]):
        vals = sorted_vals[r]
        boundaries = np.flatnonzero(np.diff(vals) != 0) + 1
        starts = np.concatenate([[0], boundaries])
        ends = np.concatenate([boundaries, [len(vals)]])
        tied = ends - starts > 1
        for s, e in zip(starts[tied], ends[tied], strict=True):
            ranks[r, order[r, s:e]] = (s + e - 1) / 2
    return ranks + 1


def spearman_rows(values: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Spearman's rho (Pearson's r of average ranks) for each resample."""
    x = _average_ranks(values[idx, 0])
    y = _average_ranks(values[idx, 1])
    stacked = np.stack([x, y], axis=-1)  # (B, n, 2)
    flat_idx = np.arange(stacked.shape[1])[None, :]
    return np.array([pearson_rows(stacked[b], flat_idx)[0] for b in range(stacked.shape[0])])


def kendall_tau_b(x: np.ndarray, y: np.ndarray) -> float:
    """Kendall's tau-b of two paired samples, shape (n,) each (as ``scipy.stats.kendalltau``).

    ``tau_b = (C - D) / sqrt((n0 - n1) (n0 - n2))`` over the ``n0 = n (n - 1) / 2`` pairs, with
    ``C``/``D`` the concordant/discordant pairs and ``n1``/``n2`` the pairs tied in ``x``/``y``
    (a pair tied in both counts in both). NaN when either sample is constant or n < 2.
    Cost O(n^2) time and memory: meant for the hundreds of labels of a judge's calibration.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise InvalidParameterError(
            f"The samples of kendall_tau_b must be two 1-D arrays of one length. Got shapes {x.shape} and {y.shape} instead."
        )
    upper = np.triu_indices(x.size, k=1)
    dx = np.sign(x[:, None] - x[None, :])[upper]
    dy = np.sign(y[:, None] - y[None, :])[upper]
    n0 = dx.size
    n1 = int(np.count_nonzero(dx == 0))
    n2 = int(np.count_nonzero(dy == 0))
    denom = np.sqrt(float(n0 - n1) * float(n0 - n2))
    if n0 == 0 or denom == 0:
        return float("nan")
    return float((dx * dy).sum() / denom)
