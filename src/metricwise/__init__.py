"""metricwise: metric-aware LLM inference and evaluation.

Sample N answers from a language model, then return the answer that is Bayes-optimal for your
metric: the mode for exact match, the mean for squared error, the median for absolute error, a
quantile for pinball loss, and minimum Bayes risk over the candidates for any other utility.

>>> import metricwise
>>> metricwise.decide(["2.5", "3", "4", "abc"], "squared_error").output
3.1666666666666665
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from metricwise.decide import decide, weighted_quantile
from metricwise.errors import (
    BackendError,
    InvalidParameterError,
    MetricwiseError,
    MissingDependencyError,
    UnknownNameError,
)
from metricwise.types import Candidate, Decision, SampleSet, SamplingConfig, SupportItem

if TYPE_CHECKING:
    from metricwise import extract, metrics

__version__ = "0.1.0"

__all__ = [
    "BackendError",
    "Candidate",
    "Decision",
    "InvalidParameterError",
    "MetricwiseError",
    "MissingDependencyError",
    "SampleSet",
    "SamplingConfig",
    "SupportItem",
    "UnknownNameError",
    "__version__",
    "decide",
    "extract",
    "metrics",
    "weighted_quantile",
]


def __getattr__(name: str) -> Any:
    # Submodules load on first attribute access so that `import metricwise` stays light.
    if name in ("extract", "metrics"):
        import importlib

        return importlib.import_module(f"metricwise.{name}")
    raise AttributeError(f"module 'metricwise' has no attribute {name!r}")
