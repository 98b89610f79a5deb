"""Corpus statistics: numbers computed over all items at once (accuracy, Pearson, Spearman).

A per-item metric is averaged over items; a corpus statistic is not (a correlation of 200 items
is not a mean of 200 correlations). Each statistic is registered once under the name tasks use in
their ``corpus_metrics`` and maps the items' (prediction, reference) pairs and a matrix of
bootstrap resamples to one value per resample, so that one (B, n) matrix of item indices serves
every statistic and every decoder of a run, and comparisons between decoders are paired.

Adding one is one function::

    @register_corpus_statistic("kendall")
    def kendall_rows(pairs, idx, *, ordinal):
        ...  # (B,) values, one per row of idx

Only numeric tasks have corpus statistics: ``pairs`` is a float array of shape (n, 2), column 0
the predictions (the task's fallback answer where a decoder had none) and column 1 the first
reference of each item.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from metricwise.errors import InvalidParameterError, UnknownNameError, did_you_mean
from metricwise.evaluate.stats import pearson_rows, spearman_rows

if TYPE_CHECKING:  # only for annotations: tasks import this module to check their statistics
    from metricwise.tasks.base import Item, Task

__all__ = [
    "ACCURACY_RTOL",
    "CorpusStatistic",
    "corpus_statistic_names",
    "get_corpus_statistic",
    "is_ordinal",
    "numeric_accuracy",
    "register_corpus_statistic",
]

#: Numbers within this relative tolerance count as the same answer for "accuracy".
ACCURACY_RTOL = 1e-6

#: ``function(pairs (n, 2), idx (B, n), *, ordinal) -> (B,)``: the statistic of each resample.
StatisticFunction = Callable[..., np.ndarray]


@dataclass(frozen=True)
class CorpusStatistic:
    """A registered corpus statistic.

    Attributes
    ----------
    name:
        The name tasks list in ``corpus_metrics``.
    function:
        ``function(pairs, idx, *, ordinal) -> (B,)``: ``pairs`` is (n, 2) [prediction,
        reference], ``idx`` is (B, n) item indices (one resample per row), ``ordinal`` says
        that the references are an integer scale (SST-5's 1..5).
    defined_for_constant:
        Whether the statistic means anything for a decoder that predicts one constant for every
        item (the ``prior``): accuracy does; a correlation with a constant is undefined.
    higher_is_better:
        The statistic's direction, as on every metric.
    """

    name: str
    function: StatisticFunction
    defined_for_constant: bool = False
    higher_is_better: bool = True

    def __call__(self, pairs: np.ndarray, idx: np.ndarray, *, ordinal: bool = False) -> np.ndarray:
        return np.asarray(self.function(pairs, idx, ordinal=ordinal), dtype=np.float64)


_REGISTRY: dict[str, CorpusStatistic] = {}


def register_corpus_statistic(
    name: str, *, defined_for_constant: bool = False, higher_is_better: bool = True
) -> Callable[[StatisticFunction], StatisticFunction]:
    """Register ``function(pairs, idx, *, ordinal) -> (B,)`` as the corpus statistic ``name``.

    Raises
    ------
    InvalidParameterError
        When ``name`` is empty or already registered (a second registration would silently
        change what every task reporting ``name`` computes).
    """
    if not isinstance(name, str) or not name:
        raise InvalidParameterError(
            f"The 'name' parameter of register_corpus_statistic must be a non-empty string. Got {name!r} instead."
        )

    def wrap(function: StatisticFunction) -> StatisticFunction:
        if name in _REGISTRY:
            raise InvalidParameterError(
                f"The corpus statistic {name!r} is already registered (by {_REGISTRY[name].function.__qualname__})."
            )
        _REGISTRY[name] = CorpusStatistic(name, function, defined_for_constant, higher_is_better)
        return function

    return wrap


def get_corpus_statistic(name: str) -> CorpusStatistic:
    """The corpus statistic registered as ``name``.

    Raises
    ------
    UnknownNameError
        For a name that is not registered, with the closest registered name.
    """
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        names = corpus_statistic_names()
        raise UnknownNameError(
            f"The corpus statistic must be one of {', '.join(map(repr, names))}. Got {name!r} instead."
            f"{did_you_mean(str(name), names)}"
        ) from None


def corpus_statistic_names() -> list[str]:
    """The registered corpus statistics, in registration order."""
    return list(_REGISTRY)


def numeric_accuracy(prediction: float, reference: float, *, ordinal: bool = False) -> float:
    """1.0 when the prediction is the reference: after rounding half up on an ordinal scale
    (a mean rating of 3.4 on 1..5 reads as 3), else within ``ACCURACY_RTOL``."""
    if ordinal:
        prediction = float(np.floor(prediction + 0.5))
    return float(abs(prediction - reference) <= ACCURACY_RTOL * max(1.0, abs(reference)))


def is_ordinal(task: Task, items: Sequence[Item]) -> bool:
    """An integer scale: an integer valid range and integer references (SST-5's 1..5)."""
    valid_range = task.valid_range
    if valid_range is None or not all(float(b).is_integer() for b in valid_range):
        return False
    return all(float(item.references[0]).is_integer() for item in items)


@register_corpus_statistic("accuracy", defined_for_constant=True)
def accuracy_rows(pairs: np.ndarray, idx: np.ndarray, *, ordinal: bool = False) -> np.ndarray:
    """Share of exact numeric answers (see :func:`numeric_accuracy`) in each resample."""
    hits = np.array(
        [numeric_accuracy(p, r, ordinal=ordinal) for p, r in pairs], dtype=np.float64
    ).reshape(len(pairs))
    return hits[idx].mean(axis=1)


@register_corpus_statistic("pearson")
def _pearson(pairs: np.ndarray, idx: np.ndarray, *, ordinal: bool = False) -> np.ndarray:
    return pearson_rows(pairs, idx)


@register_corpus_statistic("spearman")
def _spearman(pairs: np.ndarray, idx: np.ndarray, *, ordinal: bool = False) -> np.ndarray:
    return spearman_rows(pairs, idx)
