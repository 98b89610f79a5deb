"""Metrics: a registry of utilities and losses, each with a vectorised ``pairwise`` matrix.

>>> from metricwise import metrics
>>> metrics.get("token_f1").score("the Eiffel tower", "Eiffel Tower")
1.0
>>> "chrf" in metrics.names()
True
"""

from metricwise.metrics.base import CallableMetric, Metric, get, names, register, resolve

__all__ = ["CallableMetric", "Metric", "get", "names", "register", "resolve"]
