"""Evaluation: every decoder scored on one pool of samples per item, with intervals and reports.

Modules
-------
decoders
    :class:`Decoder` and the registered decoders (greedy, prior, first, max_logprob, the Bayes
    rules, mbr+greedy, their adaptive twins, oracle), :func:`register_decoder`,
    :func:`default_decoders`.
corpus
    Corpus statistics (accuracy, Pearson, Spearman) and :func:`register_corpus_statistic`.
stats
    Bootstrap intervals and paired comparisons over items.
scoring
    :func:`score_task`: every decoder x metric on stored samples, no model needed.
runner
    :class:`EvalConfig` and :func:`run_eval`: prompts -> samples through the store -> scores.
report
    The markdown table and PNG plots (``metricwise report``).

Names load on first use, so that ``import metricwise.evaluate.corpus`` (which task loaders may
use to check statistic names) does not import the runner, the store or the tasks.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from metricwise.evaluate.corpus import (
        CorpusStatistic,
        corpus_statistic_names,
        get_corpus_statistic,
        register_corpus_statistic,
    )
    from metricwise.evaluate.decoders import (
        AdaptiveRule,
        BayesRule,
        Decoder,
        DecoderInput,
        decoder_names,
        default_decoders,
        default_tolerance,
        get_decoder_class,
        make_decoder,
        prior_prediction,
        register_decoder,
    )
    from metricwise.evaluate.report import load_results, render_markdown, write_plots
    from metricwise.evaluate.runner import EvalConfig, run_eval, write_outputs
    from metricwise.evaluate.scoring import ItemRecord, score_task
    from metricwise.evaluate.stats import bootstrap, paired_bootstrap, resample_indices

_WHERE: dict[str, str] = {
    "CorpusStatistic": "corpus",
    "corpus_statistic_names": "corpus",
    "get_corpus_statistic": "corpus",
    "register_corpus_statistic": "corpus",
    "AdaptiveRule": "decoders",
    "BayesRule": "decoders",
    "Decoder": "decoders",
    "DecoderInput": "decoders",
    "decoder_names": "decoders",
    "default_decoders": "decoders",
    "default_tolerance": "decoders",
    "get_decoder_class": "decoders",
    "make_decoder": "decoders",
    "prior_prediction": "decoders",
    "register_decoder": "decoders",
    "load_results": "report",
    "render_markdown": "report",
    "write_plots": "report",
    "EvalConfig": "runner",
    "run_eval": "runner",
    "write_outputs": "runner",
    "ItemRecord": "scoring",
    "score_task": "scoring",
    "bootstrap": "stats",
    "paired_bootstrap": "stats",
    "resample_indices": "stats",
}

__all__ = [
    "AdaptiveRule",
    "BayesRule",
    "CorpusStatistic",
    "Decoder",
    "DecoderInput",
    "EvalConfig",
    "ItemRecord",
    "bootstrap",
    "corpus_statistic_names",
    "decoder_names",
    "default_decoders",
    "default_tolerance",
    "get_corpus_statistic",
    "get_decoder_class",
    "load_results",
    "make_decoder",
    "paired_bootstrap",
    "prior_prediction",
    "register_corpus_statistic",
    "register_decoder",
    "render_markdown",
    "resample_indices",
    "run_eval",
    "score_task",
    "write_outputs",
    "write_plots",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'metricwise.evaluate' has no attribute {name!r}")
    return getattr(importlib.import_module(f"metricwise.evaluate.{module}"), name)
