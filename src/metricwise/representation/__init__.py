"""Model evaluation from hidden representations: Matrix Nuclear-Norm, Matrix Entropy, nuclear norm.

- :mod:`~metricwise.representation.mnn`: the metrics of one ``(L, d)`` matrix (numpy or
  torch), and the isotropic Gaussian baseline of the same shape.
- :mod:`~metricwise.representation.hidden`: batched, exact hidden-state extraction from any
  transformers causal LM (right padding, attention masks, BOS and minimum-length choices).
- :mod:`~metricwise.representation.corpus`: corpus scores with bootstrap intervals, texts from
  files or tasks, and the response evaluation.
- :mod:`~metricwise.representation.cli`: the ``metricwise mnn`` subcommand.

Nothing here imports torch until a model or a torch tensor is used.

>>> import numpy as np
>>> from metricwise.representation import matrix_nuclear_norm, matrix_entropy
>>> R = np.random.default_rng(0).standard_normal((64, 16))
>>> 0 < matrix_nuclear_norm(R) < 1 and 0 < matrix_entropy(R) <= 1
True
"""

from metricwise.representation.corpus import (
    CorpusScore,
    MetricSummary,
    bootstrap_mean_ci,
    format_table,
    load_responses,
    load_texts,
    paired_difference,
    score_matrices,
    score_responses,
    score_texts,
)
from metricwise.representation.hidden import (
    EncodedText,
    ExtractionStats,
    TextHiddenStates,
    encode_responses,
    encode_texts,
    extract_hidden_states,
    iter_hidden_states,
)
from metricwise.representation.mnn import (
    METRIC_NAMES,
    gaussian_baseline,
    matrix_entropy,
    matrix_nuclear_norm,
    normalize_representation,
    nuclear_norm,
    representation_metrics,
)

__all__ = [
    "METRIC_NAMES",
    "CorpusScore",
    "EncodedText",
    "ExtractionStats",
    "MetricSummary",
    "TextHiddenStates",
    "bootstrap_mean_ci",
    "encode_responses",
    "encode_texts",
    "extract_hidden_states",
    "format_table",
    "gaussian_baseline",
    "iter_hidden_states",
    "load_responses",
    "load_texts",
    "matrix_entropy",
    "matrix_nuclear_norm",
    "normalize_representation",
    "nuclear_norm",
    "paired_difference",
    "representation_metrics",
    "score_matrices",
    "score_responses",
    "score_texts",
]
