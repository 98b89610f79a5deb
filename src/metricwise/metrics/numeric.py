"""Losses between numbers: squared error, absolute error, pinball (quantile) loss.

Each has a closed-form Bayes decision (mean, median, tau-quantile), so decisions never need
their pairwise matrix; it is vectorised anyway for MBR overrides and the oracle.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from metricwise.errors import InvalidParameterError
from metricwise.metrics.base import Metric, register


def _as_float(value: Any, role: str) -> float:
    try:
        result = float(value)
    except (TypeError, ValueError):
        raise InvalidParameterError(
            f"The {role!r} of a numeric metric must be a number. Got {value!r} instead."
        ) from None
    return result


class _NumericLoss(Metric):
    higher_is_better = False
    kind = "number"

    def _loss(self, pred: np.ndarray, ref: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _score_one(self, pred: Any, ref: Any) -> float:
        return float(
            self._loss(
                np.float64(_as_float(pred, "prediction")), np.float64(_as_float(ref, "reference"))
            )
        )

    def pairwise(self, cands: Sequence[Any], refs: Sequence[Any]) -> np.ndarray:
        """(C, R) losses by broadcasting; O(C x R) array work, no Python loop."""
        c = np.asarray([_as_float(x, "prediction") for x in cands], dtype=np.float64)
        r = np.asarray([_as_float(x, "reference") for x in refs], dtype=np.float64)
        return self._loss(c[:, None], r[None, :])


@register("squared_error")
class SquaredError(_NumericLoss):
    """``(pred - ref)^2``; the Bayes decision is the weighted mean."""

    bayes_rule = "mean"

    def _loss(self, pred: np.ndarray, ref: np.ndarray) -> np.ndarray:
        return (pred - ref) ** 2


@register("absolute_error")
class AbsoluteError(_NumericLoss):
    """``|pred - ref|``; the Bayes decision is the weighted median."""

    bayes_rule = "median"

    def _loss(self, pred: np.ndarray, ref: np.ndarray) -> np.ndarray:
        return np.abs(pred - ref)


@register("pinball")
class Pinball(_NumericLoss):
    """Pinball (quantile) loss at level ``tau`` for a prediction ``q`` of a value ``y``.

    ``tau * (y - q)`` when ``y >= q``, else ``(1 - tau) * (q - y)``. The Bayes decision is the
    weighted tau-quantile. ``tau = 0.5`` is half the absolute error.
    """

    bayes_rule = "quantile"
    symmetric = False

    def __init__(self, tau: float = 0.5) -> None:
        tau = _as_float(tau, "tau")
        if not (0.0 < tau < 1.0) or math.isnan(tau):
            raise InvalidParameterError(
                f"The 'tau' parameter of pinball must be in (0, 1). Got {tau!r} instead."
            )
        self.tau = tau

    def _loss(self, pred: np.ndarray, ref: np.ndarray) -> np.ndarray:
        diff = ref - pred
        return np.where(diff >= 0, self.tau * diff, (self.tau - 1.0) * diff)

    def signature(self) -> str:
        return f"pinball(tau={self.tau:g})"
