"""Metrics: a registry of utilities and losses, each with a vectorised ``pairwise`` matrix.

Adding a metric is adding one module to this package: a :class:`Metric` subclass decorated
with ``@register("name")`` (which also sets its ``name``). The registry imports every module
here on first use; nothing lists them. Shared text pieces are in :mod:`metricwise.text`.

>>> from metricwise import metrics
>>> metrics.get("token_f1").score("the Eiffel tower", "Eiffel Tower")
1.0
>>> "chrf" in metrics.names()
True
"""

from metricwise.metrics.base import (
    METRICS,
    CallableMetric,
    Metric,
    MetricInfo,
    describe,
    get,
    names,
    register,
    resolve,
)

__all__ = [
    "METRICS",
    "CallableMetric",
    "Metric",
    "MetricInfo",
    "describe",
    "get",
    "names",
    "register",
    "resolve",
]
