"""Selective prediction: is a decision's expected loss worth anything as its uncertainty?

Every Bayes-rule decision carries its risk, the expected loss of its answer under the samples
(or minus the expected utility). Tomov, Fuchsgruber and Günnemann ("Task-Awareness Improves LLM
Generations and Uncertainty", PMLR v306, 2026) use exactly this Bayes risk as the uncertainty
of a task-aware answer. Here it is measured on the pool a run already has, with no model call:
items are answered from the most confident down, and the metric over the answered share
(*coverage*) is the risk-coverage curve; how well the risk ranks items by their true loss is
Spearman's rho of risk against loss and the AUROC of the risk for "this item's loss is above
the median" (for a 0/1 loss, "this item is wrong").

Every decoder with a risk is ranked by it, beside baselines on the same items and the same
answers: ``logprob`` (the greedy answer's mean negative log-probability per token, the usual
language-space confidence), ``spread`` (the samples' variance for numbers, one minus the
mode's share for texts) and, where the run decides with a utility the task does not score
(``eval --mbr_metrics``: a reward model, a judge), that decoder's expected score of its answer,
named by its label (``mbr[reward]``). An item whose decision failed (no usable sample) is the least
confident under every ranking. Ties in a ranking are broken by one fixed random order, the
same for every ranking, so that a ranking with many ties (a 0/1 utility) is not favoured by
the items' order.

Intervals are percentile bootstraps over items with the run's shared resamples.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from metricwise.evaluate.stats import pearson_of_rows

#: The coverages of a risk-coverage curve: the most confident 10%, 20%, ..., 100% of items.
COVERAGES = tuple(round(0.1 * k, 1) for k in range(1, 11))
#: The baselines every risk is compared with, in the order reported.
BASELINES = ("logprob", "spread")


def dense_ranks(values: np.ndarray) -> np.ndarray:
    """Integer ranks of ``values`` (n,), equal values equal ranks, +inf last."""
    _, inverse = np.unique(values, return_inverse=True)
    return inverse.astype(np.int64).reshape(-1)


def _average_ranks_rows(keys: np.ndarray) -> np.ndarray:
    """Row-wise average ranks (1-based, ties averaged) of an int matrix (B, n), vectorised:
    rank = #smaller + (#equal + 1) / 2, counted with one search over all rows at once."""
    b, n = keys.shape
    span = int(keys.max()) + 1 if keys.size else 1
    shifted = keys + np.arange(b, dtype=np.int64)[:, None] * span
    flat = np.sort(shifted, axis=None)
    base = np.arange(b, dtype=np.int64)[:, None] * n
    less = np.searchsorted(flat, shifted, side="left") - base
    less_or_equal = np.searchsorted(flat, shifted, side="right") - base
    return (less + less_or_equal + 1) / 2.0


def _bad_items(loss: np.ndarray) -> np.ndarray:
    """The items whose loss is above the median; when that splits nothing (a 0/1 loss with most
    items wrong), those above the smallest loss."""
    bad = loss > np.median(loss)
    if bad.all() or not bad.any():
        bad = loss > loss.min()
    return bad


def _statistics(
    uncertainty: np.ndarray,
    loss: np.ndarray,
    value: np.ndarray,
    tiebreak: np.ndarray,
    idx: np.ndarray,
) -> dict[str, np.ndarray]:
    """For each row of ``idx`` (B, n): the curve (B, len(COVERAGES)), its area (B,), Spearman's
    rho of uncertainty against loss (B,) and the AUROC (B,)."""
    n = idx.shape[1]
    u_rank = dense_ranks(uncertainty)[idx]  # (B, n) ints
    # Sort by uncertainty, ties by the fixed random order.
    order = np.argsort(u_rank * n + tiebreak[idx], axis=1, kind="stable")
    sorted_values = np.take_along_axis(value[idx], order, axis=1)
    sums = np.cumsum(sorted_values, axis=1)
    ks = np.array([max(1, math.ceil(c * n)) for c in COVERAGES])
    curve = sums[:, ks - 1] / ks
    u_avg = _average_ranks_rows(u_rank)
    l_avg = _average_ranks_rows(dense_ranks(loss)[idx])
    spearman = pearson_of_rows(u_avg, l_avg)
    bad = _bad_items(loss)[idx]
    n_bad = bad.sum(axis=1)
    n_good = n - n_bad
    with np.errstate(invalid="ignore", divide="ignore"):
        auroc = np.where(
            (n_bad > 0) & (n_good > 0),
            ((u_avg * bad).sum(axis=1) - n_bad * (n_bad + 1) / 2) / (n_bad * n_good),
            np.nan,
        )
    return {"curve": curve, "area": curve.mean(axis=1), "spearman": spearman, "auroc": auroc}


def _interval(point: float, replicates: np.ndarray) -> dict[str, Any]:
    finite = replicates[np.isfinite(replicates)]
    if not math.isfinite(point) or not len(finite):
        return {"value": None if not math.isfinite(point) else point, "ci": [None, None]}
    low, high = np.percentile(finite, [2.5, 97.5])
    return {"value": point, "ci": [float(low), float(high)]}


def selective_prediction(
    values: np.ndarray,
    higher_is_better: bool,
    rankings: dict[str, np.ndarray | None],
    indices: np.ndarray,
    *,
    seed: int = 0,
) -> dict[str, Any]:
    """Risk-coverage curves and ranking quality of each ranking of the items.

    Parameters
    ----------
    values:
        Shape (n,): the decoder's metric per item (its answers are the same under every ranking).
    higher_is_better:
        The metric's direction: the loss an item's ranking is judged against is ``-values`` for
        a utility, ``values`` for a loss.
    rankings:
        Name -> shape (n,) uncertainty (higher: less confident; ``inf`` for an item with no
        decision), or None where a baseline is not available (no log-probabilities).
    indices:
        The run's (B, n) bootstrap resamples.

    Returns
    -------
    ``{"coverages": [...], "full": metric at 100%, "rankings": {name: {"curve": [[coverage,
    value, low, high], ...], "area": {"value", "ci"}, "spearman": {...}, "auroc": {...}}}}``;
    the area is the mean of the curve's points (lower is better for a loss).
    """
    values = np.asarray(values, dtype=np.float64)
    n = len(values)
    loss = -values if higher_is_better else values
    tiebreak = np.random.default_rng(seed).permutation(n)
    everything = np.arange(n)[None, :]
    out: dict[str, Any] = {
        "coverages": list(COVERAGES),
        "full": float(values.mean()),
        "rankings": {},
    }
    for name, uncertainty in rankings.items():
        if uncertainty is None:
            continue
        u = np.asarray(uncertainty, dtype=np.float64)
        u = np.where(np.isnan(u), np.inf, u)
        point = _statistics(u, loss, values, tiebreak, everything)
        boot = _statistics(u, loss, values, tiebreak, indices)
        curve_low, curve_high = np.percentile(boot["curve"], [2.5, 97.5], axis=0)
        out["rankings"][name] = {
            "curve": [
                [c, float(v), float(lo), float(hi)]
                for c, v, lo, hi in zip(
                    COVERAGES, point["curve"][0], curve_low, curve_high, strict=True
                )
            ],
            **{
                key: _interval(float(point[key][0]), boot[key])
                for key in ("area", "spearman", "auroc")
            },
        }
    return out


def greedy_logprob_uncertainty(greedy: Sequence[Any]) -> np.ndarray | None:
    """The greedy answers' mean negative log-probability per token (nats); None when the backend
    gave no log-probabilities."""
    out = []
    for candidate in greedy:
        if candidate.logp is None or not math.isfinite(candidate.logp):
            return None
        out.append(-candidate.logp / max(1, candidate.n_tokens or 1))
    return np.array(out)


def spread_uncertainty(answers: Sequence[Sequence[Any]], numeric: bool) -> np.ndarray:
    """Per item: the variance of the parsed sample answers (numbers), or one minus the most
    common answer's share (texts); inf for an item with no parsed answer."""
    out = np.full(len(answers), np.inf)
    for i, parsed in enumerate(answers):
        kept = [a for a in parsed if a is not None]
        if not kept:
            continue
        if numeric:
            out[i] = float(np.var(np.asarray(kept, dtype=np.float64)))
        else:
            counts: dict[Any, int] = {}
            for a in kept:
                counts[a] = counts.get(a, 0) + 1
            out[i] = 1.0 - max(counts.values()) / len(parsed)
    return out
