"""Corpus scores: the metrics averaged over texts, with bootstrap intervals and the Gaussian baseline.

A corpus score is the mean over scored texts of the per-text metric (texts that are empty or
shorter than ``min_tokens`` are skipped and counted, as the authors skip texts with no tokens).
Beside each raw mean, every text's metric is also computed on an isotropic Gaussian matrix of
the same ``(L_i, d)`` (see :func:`metricwise.representation.mnn.gaussian_baseline`); the
corpus reports the mean baseline and the mean of the per-text ratios ``raw / baseline``, which
removes the part of the score that only reflects text length and model width.

Texts come from a JSONL, JSON or plain-text file, or from a task's inputs read from a data
directory (``--data_dir`` or ``$METRICWISE_DATA_DIR``): ``squad`` (the distinct contexts of
``squad/dev-v1.1.json``) and ``gsm8k`` (the questions of ``gsm8k/test.jsonl``). The response
evaluation of the paper reads a JSONL of ``{"prompt", "response"}`` records (optionally with a
``"model"`` field naming the system that wrote each response) and scores only the response
tokens, so that systems can be compared by it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from metricwise.errors import InvalidParameterError
from metricwise.representation.hidden import (
    ExtractionStats,
    TextHiddenStates,
    encode_responses,
    encode_texts,
    iter_encoded_hidden_states,
    pad_token_id_of,
)
from metricwise.representation.mnn import (
    METRIC_NAMES,
    METRIC_TITLES,
    gaussian_baseline,
    metric_function,
    resolve_metric_names,
)

SKIP_DEGENERATE = "degenerate"


def _metricwise_version() -> str:
    from metricwise import __version__

    return __version__


# -- results --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MetricSummary:
    """One metric over a corpus.

    Attributes
    ----------
    name, title:
        ``"mnn"`` and ``"Matrix Nuclear-Norm"``, etc.
    value:
        Mean over scored texts.
    ci_low, ci_high:
        Percentile bootstrap interval of the mean (``confidence`` in the settings).
    stderr:
        Standard error of the mean (sample standard deviation / sqrt(n)).
    n:
        Texts scored.
    seconds:
        Time spent computing this metric on the hidden states (normalisation included),
        excluding extraction and the baseline.
    baseline, ratio, ratio_ci_low, ratio_ci_high:
        Mean Gaussian baseline, mean per-text ratio raw / baseline and its bootstrap interval;
        ``None`` when the baseline was not asked for.
    baseline_seconds:
        Time spent on the baseline (cached per distinct ``(L, d)``).
    lower_is_better:
        Direction: more compression gives lower values for all three metrics.
    """

    name: str
    title: str
    value: float
    ci_low: float
    ci_high: float
    stderr: float
    n: int
    seconds: float
    baseline: float | None = None
    ratio: float | None = None
    ratio_ci_low: float | None = None
    ratio_ci_high: float | None = None
    baseline_seconds: float = 0.0
    lower_is_better: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "value": self.value,
            "ci": [self.ci_low, self.ci_high],
            "stderr": self.stderr,
            "n": self.n,
            "seconds": self.seconds,
            "baseline": self.baseline,
            "ratio": self.ratio,
            "ratio_ci": None
            if self.ratio_ci_low is None
            else [self.ratio_ci_low, self.ratio_ci_high],
            "baseline_seconds": self.baseline_seconds,
            "lower_is_better": self.lower_is_better,
        }


@dataclass(frozen=True)
class CorpusScore:
    """The metrics of one model on one corpus (or one group of responses).

    Attributes
    ----------
    model, data:
        Names for reports.
    group:
        For response evaluation: the value of the group field (the system that wrote the responses).
    hidden_size:
        ``d``.
    n_texts, n_scored:
        Texts given, texts scored.
    skipped:
        ``{"empty": k, "too_short": k, "degenerate": k}`` for the texts not scored.
    n_truncated:
        Texts cut to ``max_length``.
    tokens:
        Rows that entered the matrices (over scored texts).
    input_tokens:
        Tokens fed to the model (BOS and prompts included).
    extraction_seconds:
        Time in the model's forward passes.
    metrics:
        ``{name: MetricSummary}``.
    per_text:
        One dict per text, in input order: ``index``, ``n_tokens``, ``truncated``, then either
        ``skipped`` or each metric's value and baseline.
    settings:
        Every choice that changes a value (BOS, max_length, min_tokens, layer, precision, seed, ...).
    signature:
        One string with the settings, for reproducible reports.
    """

    model: str
    data: str
    hidden_size: int | None
    n_texts: int
    n_scored: int
    skipped: dict[str, int]
    n_truncated: int
    tokens: int
    input_tokens: int
    extraction_seconds: float
    metrics: dict[str, MetricSummary]
    per_text: tuple[dict[str, Any], ...]
    settings: dict[str, Any]
    signature: str
    group: str | None = None

    def to_dict(self, *, per_text: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "model": self.model,
            "data": self.data,
            "group": self.group,
            "hidden_size": self.hidden_size,
            "n_texts": self.n_texts,
            "n_scored": self.n_scored,
            "skipped": dict(self.skipped),
            "n_truncated": self.n_truncated,
            "tokens": self.tokens,
            "input_tokens": self.input_tokens,
            "extraction_seconds": self.extraction_seconds,
            "metrics": {k: v.to_dict() for k, v in self.metrics.items()},
            "settings": dict(self.settings),
            "signature": self.signature,
        }
        if per_text:
            out["per_text"] = [dict(r) for r in self.per_text]
        return out


# -- statistics -----------------------------------------------------------------------------------
def bootstrap_mean_ci(
    values: Sequence[float] | np.ndarray,
    *,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (resampling texts with replacement).

    The harness's :func:`metricwise.evaluate.stats.bootstrap`, with the corpus edge cases: no
    values give NaN, one value (or ``n_bootstrap=0``) a zero-width interval.
    """
    from metricwise.evaluate.stats import bootstrap, resample_indices

    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return (math.nan, math.nan)
    if x.size == 1 or n_bootstrap == 0:
        return (float(x.mean()), float(x.mean()))
    estimate = bootstrap(
        x, indices=resample_indices(x.size, n_bootstrap, seed=seed), confidence=confidence
    )
    return (estimate.low, estimate.high)


def _stderr(x: np.ndarray) -> float:
    return float(x.std(ddof=1) / math.sqrt(x.size)) if x.size > 1 else math.nan


# -- the accumulator shared by texts, responses and precomputed matrices ----------------------------
class _Scorer:
    """Compute metrics and baselines text by text, then summarise."""

    def __init__(
        self,
        metrics: tuple[str, ...],
        *,
        baseline: bool,
        dtype: str,
        seed: int,
        baseline_draws: int,
    ) -> None:
        self.metrics = metrics
        self.baseline = baseline
        self.dtype = dtype
        self.seed = seed
        self.baseline_draws = baseline_draws
        self.functions = {m: metric_function(m) for m in metrics}
        self.seconds = dict.fromkeys(metrics, 0.0)
        self.baseline_seconds = dict.fromkeys(metrics, 0.0)
        self.cache: dict[tuple[str, int, int], float] = {}
        self.rows: dict[int, dict[str, Any]] = {}
        self.hidden_size: int | None = None
        self.skipped: dict[str, int] = {}

    def skip(
        self, index: int, n_tokens: int, truncated: bool, reason: str, detail: str | None = None
    ) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        row: dict[str, Any] = {
            "index": index,
            "n_tokens": n_tokens,
            "truncated": truncated,
            "skipped": reason,
        }
        if detail:
            row["detail"] = detail
        self.rows[index] = row

    def add(self, index: int, matrix: Any, truncated: bool = False) -> None:
        shape = tuple(matrix.shape)
        if len(shape) != 2:
            raise InvalidParameterError(
                f"Every hidden-state matrix must be 2-D (L, d). Got shape {shape} at index {index} instead."
            )
        L, d = shape
        if self.hidden_size is None:
            self.hidden_size = d
        elif d != self.hidden_size:
            raise InvalidParameterError(
                f"Every hidden-state matrix of a corpus must have the same width d = {self.hidden_size}. "
                f"Got shape {shape} at index {index} instead (mismatched shapes)."
            )
        row: dict[str, Any] = {"index": index, "n_tokens": L, "truncated": truncated}
        try:
            for m, f in self.functions.items():
                start = time.perf_counter()
                row[m] = f(matrix, dtype=self.dtype)
                self.seconds[m] += time.perf_counter() - start
        except InvalidParameterError as exc:
            self.skip(index, L, truncated, SKIP_DEGENERATE, str(exc))
            return
        if self.baseline:
            for m in self.metrics:
                start = time.perf_counter()
                key = (m, L, d)
                if key not in self.cache:
                    self.cache[key] = gaussian_baseline(
                        m, L, d, seed=self.seed, draws=self.baseline_draws, dtype=self.dtype
                    )
                base = self.cache[key]
                self.baseline_seconds[m] += time.perf_counter() - start
                row[f"{m}_baseline"] = base
                row[f"{m}_ratio"] = row[m] / base if base > 0 else math.nan
        self.rows[index] = row

    def summarise(
        self,
        *,
        n_texts: int,
        model: str,
        data: str,
        group: str | None,
        settings: dict[str, Any],
        stats: ExtractionStats | None,
        n_bootstrap: int,
        confidence: float,
    ) -> CorpusScore:
        rows = tuple(self.rows[i] for i in sorted(self.rows))
        scored = [r for r in rows if "skipped" not in r]
        summaries: dict[str, MetricSummary] = {}
        for k, m in enumerate(self.metrics):
            x = np.asarray([r[m] for r in scored], dtype=np.float64)
            boot_seed = self.seed * 1000 + k
            lo, hi = bootstrap_mean_ci(
                x, n_bootstrap=n_bootstrap, confidence=confidence, seed=boot_seed
            )
            baseline = ratio = rlo = rhi = None
            if self.baseline and scored:
                b = np.asarray([r[f"{m}_baseline"] for r in scored])
                q = np.asarray([r[f"{m}_ratio"] for r in scored])
                baseline, ratio = float(b.mean()), float(q.mean())
                rlo, rhi = bootstrap_mean_ci(
                    q, n_bootstrap=n_bootstrap, confidence=confidence, seed=boot_seed
                )
            summaries[m] = MetricSummary(
                name=m,
                title=METRIC_TITLES[m],
                value=float(x.mean()) if x.size else math.nan,
                ci_low=lo,
                ci_high=hi,
                stderr=_stderr(x),
                n=int(x.size),
                seconds=self.seconds[m],
                baseline=baseline,
                ratio=ratio,
                ratio_ci_low=rlo,
                ratio_ci_high=rhi,
                baseline_seconds=self.baseline_seconds[m],
            )
        skipped = dict(self.skipped)
        signature = "|".join(
            [f"model:{model}", f"data:{data}"]
            + ([f"group:{group}"] if group is not None else [])
            + [f"{k}:{v}" for k, v in settings.items() if v is not None]
            + [f"metricwise:{_metricwise_version()}"]
        )
        return CorpusScore(
            model=model,
            data=data,
            group=group,
            hidden_size=self.hidden_size,
            n_texts=n_texts,
            n_scored=len(scored),
            skipped=skipped,
            n_truncated=sum(1 for r in rows if r.get("truncated")),
            tokens=sum(int(r["n_tokens"]) for r in scored),
            input_tokens=stats.input_tokens
            if stats is not None
            else sum(int(r["n_tokens"]) for r in scored),
            extraction_seconds=stats.forward_seconds if stats is not None else 0.0,
            metrics=summaries,
            per_text=rows,
            settings=settings,
            signature=signature,
        )


def _check_common(
    fn: str, n_bootstrap: int, confidence: float, seed: int, dtype: str, baseline_draws: int
) -> None:
    if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, int) or n_bootstrap < 0:
        raise InvalidParameterError(
            f"The 'n_bootstrap' parameter of {fn} must be an int >= 0. Got {n_bootstrap!r} instead."
        )
    if not (isinstance(confidence, (int, float)) and 0 < confidence < 1):
        raise InvalidParameterError(
            f"The 'confidence' parameter of {fn} must be in (0, 1). Got {confidence!r} instead."
        )
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InvalidParameterError(
            f"The 'seed' parameter of {fn} must be an int >= 0. Got {seed!r} instead."
        )
    if dtype not in ("float64", "float32"):
        raise InvalidParameterError(
            f"The 'dtype' parameter of {fn} must be 'float64' or 'float32'. Got {dtype!r} instead."
        )
    if (
        isinstance(baseline_draws, bool)
        or not isinstance(baseline_draws, int)
        or baseline_draws < 1
    ):
        raise InvalidParameterError(
            f"The 'baseline_draws' parameter of {fn} must be an int >= 1. Got {baseline_draws!r} instead."
        )


def score_matrices(
    matrices: Sequence[Any],
    *,
    metrics: str | Iterable[str] = METRIC_NAMES,
    min_tokens: int = 2,
    baseline: bool = True,
    baseline_draws: int = 1,
    dtype: str = "float64",
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    model: str = "matrices",
    data: str = "matrices",
) -> CorpusScore:
    """Corpus scores of precomputed hidden-state matrices (no model needed).

    Parameters
    ----------
    matrices : sequence of arrays or torch tensors, each (L_i, d) with the same d
        One per text; matrices with fewer than ``min_tokens`` rows are skipped and counted.
    metrics : names among "mnn", "entropy", "nuclear"
    min_tokens : int, default 2
    baseline : bool, default True
        Also compute the Gaussian baseline and the per-text ratios.
    baseline_draws : int, default 1
        Gaussian matrices averaged per distinct ``(L, d)``.
    dtype : {"float64", "float32"}
        Precision of the metrics.
    n_bootstrap, confidence, seed
        Bootstrap resamples, interval level, and the seed of the bootstrap and of the baseline.

    Returns
    -------
    CorpusScore

    Raises
    ------
    InvalidParameterError
        No matrices, a matrix that is not 2-D, or matrices of different widths.
    """
    fn = "score_matrices"
    names = resolve_metric_names(metrics, fn)
    _check_common(fn, n_bootstrap, confidence, seed, dtype, baseline_draws)
    if isinstance(min_tokens, bool) or not isinstance(min_tokens, int) or min_tokens < 2:
        raise InvalidParameterError(
            f"The 'min_tokens' parameter of {fn} must be an int >= 2. Got {min_tokens!r} instead."
        )
    if (
        isinstance(matrices, (str, bytes))
        or not isinstance(matrices, Sequence)
        or len(matrices) == 0
    ):
        raise InvalidParameterError(
            f"The 'matrices' parameter of {fn} must be a non-empty list of (L, d) matrices. Got {matrices!r:.60} instead."
        )
    scorer = _Scorer(
        names, baseline=baseline, dtype=dtype, seed=seed, baseline_draws=baseline_draws
    )
    for i, R in enumerate(matrices):
        shape = tuple(getattr(R, "shape", np.shape(R)))
        if len(shape) == 2 and shape[0] == 0:
            scorer.skip(i, 0, False, "empty")
        elif len(shape) == 2 and shape[0] < min_tokens:
            scorer.skip(i, shape[0], False, "too_short")
        else:
            scorer.add(i, R if hasattr(R, "shape") else np.asarray(R))
    settings = {
        "min_tokens": min_tokens,
        "dtype": dtype,
        "baseline": _baseline_label(baseline, seed, baseline_draws),
        "bootstrap": n_bootstrap,
        "confidence": confidence,
        "seed": seed,
    }
    return scorer.summarise(
        n_texts=len(matrices),
        model=model,
        data=data,
        group=None,
        settings=settings,
        stats=None,
        n_bootstrap=n_bootstrap,
        confidence=confidence,
    )


def _baseline_label(baseline: bool, seed: int, draws: int) -> str:
    return f"gaussian(seed={seed},draws={draws})" if baseline else "none"


def _model_width(model: Any) -> int | None:
    config = getattr(model, "config", None)
    getter = getattr(config, "get_text_config", None)
    text_config = getter() if callable(getter) else config
    value = getattr(text_config, "hidden_size", None)
    return int(value) if isinstance(value, int) else None


def _score_encoded(
    model: Any,
    tokenizer: Any,
    encoded: list[Any],
    *,
    fn: str,
    names: tuple[str, ...],
    model_name: str,
    data_name: str,
    group: str | None,
    settings: dict[str, Any],
    batch_size: int,
    min_tokens: int,
    layer: int,
    baseline: bool,
    baseline_draws: int,
    dtype: str,
    n_bootstrap: int,
    confidence: float,
    seed: int,
    progress: bool,
) -> CorpusScore:
    stats = ExtractionStats()
    scorer = _Scorer(
        names, baseline=baseline, dtype=dtype, seed=seed, baseline_draws=baseline_draws
    )
    rec: TextHiddenStates
    for rec in iter_encoded_hidden_states(
        model,
        encoded,
        pad_token_id=pad_token_id_of(tokenizer),
        batch_size=batch_size,
        min_tokens=min_tokens,
        layer=layer,
        stats=stats,
        progress=progress,
    ):
        if rec.skipped is not None:
            scorer.skip(rec.index, rec.n_tokens, rec.truncated, rec.skipped)
        else:
            scorer.add(rec.index, rec.hidden, rec.truncated)
    if scorer.hidden_size is None:
        scorer.hidden_size = _model_width(model)
    return scorer.summarise(
        n_texts=len(encoded),
        model=model_name,
        data=data_name,
        group=group,
        settings=settings,
        stats=stats,
        n_bootstrap=n_bootstrap,
        confidence=confidence,
    )


def score_texts(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    metrics: str | Iterable[str] = METRIC_NAMES,
    batch_size: int = 8,
    max_length: int = 512,
    keep_bos: bool = False,
    min_tokens: int = 2,
    layer: int = -1,
    baseline: bool = True,
    baseline_draws: int = 1,
    dtype: str = "float64",
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    model_name: str = "model",
    data_name: str = "texts",
    progress: bool = False,
) -> CorpusScore:
    """Score a model on a corpus: extract each text's hidden states, then the metrics.

    Parameters
    ----------
    model, tokenizer
        A transformers causal LM (any device, any dtype) and its tokenizer, for example from
        :func:`metricwise.models.load_hf_causal_lm`.
    texts : list of str
    metrics : names among "mnn", "entropy", "nuclear" (or a comma-separated string)
    batch_size, max_length, keep_bos, min_tokens, layer
        Extraction settings; see :func:`metricwise.representation.hidden.iter_hidden_states`.
    baseline, baseline_draws, dtype, n_bootstrap, confidence, seed
        See :func:`score_matrices`.
    model_name, data_name : str
        Names recorded in the result.
    progress : bool
        Progress bar on stderr.

    Returns
    -------
    CorpusScore
    """
    fn = "score_texts"
    names = resolve_metric_names(metrics, fn)
    _check_common(fn, n_bootstrap, confidence, seed, dtype, baseline_draws)
    if isinstance(texts, str) or not isinstance(texts, Sequence) or len(texts) == 0:
        raise InvalidParameterError(
            f"The 'texts' parameter of {fn} must be a non-empty list of strings. Got {texts!r:.60} instead."
        )
    encoded = encode_texts(tokenizer, texts, max_length=max_length, keep_bos=keep_bos)
    settings = {
        "bos": "keep" if keep_bos else "drop",
        "max_length": max_length,
        "min_tokens": min_tokens,
        "layer": layer,
        "batch_size": batch_size,
        "padding": "right",
        "dtype": dtype,
        "model_dtype": str(getattr(model, "dtype", "")).replace("torch.", "") or None,
        "device": str(getattr(model, "device", "")) or None,
        "baseline": _baseline_label(baseline, seed, baseline_draws),
        "bootstrap": n_bootstrap,
        "confidence": confidence,
        "seed": seed,
    }
    return _score_encoded(
        model,
        tokenizer,
        encoded,
        fn=fn,
        names=names,
        model_name=model_name,
        data_name=data_name,
        group=None,
        settings=settings,
        batch_size=batch_size,
        min_tokens=min_tokens,
        layer=layer,
        baseline=baseline,
        baseline_draws=baseline_draws,
        dtype=dtype,
        n_bootstrap=n_bootstrap,
        confidence=confidence,
        seed=seed,
        progress=progress,
    )


def score_responses(
    model: Any,
    tokenizer: Any,
    records: Sequence[dict[str, Any]],
    *,
    group_field: str | None = "model",
    context: str = "prompt",
    metrics: str | Iterable[str] = METRIC_NAMES,
    batch_size: int = 8,
    max_length: int = 512,
    keep_bos: bool = False,
    min_tokens: int = 2,
    layer: int = -1,
    baseline: bool = True,
    baseline_draws: int = 1,
    dtype: str = "float64",
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    model_name: str = "model",
    data_name: str = "responses",
    progress: bool = False,
) -> list[CorpusScore]:
    """Score responses (the paper's response evaluation): one :class:`CorpusScore` per responding system.

    Each record is ``{"prompt": str, "response": str}``, optionally with ``group_field``
    (default ``"model"``) naming the system that wrote the response. ``model`` reads the prompt
    and the response (``context="prompt"``) or the response alone (``"none"``); only the
    response tokens' hidden states form the matrix. Records without the group field form one
    group named ``None``.

    Returns
    -------
    list of CorpusScore
        One per group, in order of first appearance; ``per_text[i]["index"]`` is the record's
        position in ``records`` and ``per_text[i]["pair_key"]`` identifies its prompt, so that
        :func:`paired_difference` pairs the systems' answers to the same prompt.
    """
    fn = "score_responses"
    names = resolve_metric_names(metrics, fn)
    _check_common(fn, n_bootstrap, confidence, seed, dtype, baseline_draws)
    records = _check_records(records, fn)
    groups: dict[str | None, list[int]] = {}
    for i, r in enumerate(records):
        g = r.get(group_field) if group_field else None
        groups.setdefault(None if g is None else str(g), []).append(i)
    settings = {
        "context": context,
        "bos": "keep" if keep_bos else "drop",
        "max_length": max_length,
        "min_tokens": min_tokens,
        "layer": layer,
        "batch_size": batch_size,
        "padding": "right",
        "dtype": dtype,
        "model_dtype": str(getattr(model, "dtype", "")).replace("torch.", "") or None,
        "baseline": _baseline_label(baseline, seed, baseline_draws),
        "bootstrap": n_bootstrap,
        "confidence": confidence,
        "seed": seed,
    }
    out = []
    for g, idx in groups.items():
        encoded = encode_responses(
            tokenizer,
            [records[i]["prompt"] for i in idx],
            [records[i]["response"] for i in idx],
            max_length=max_length,
            keep_bos=keep_bos,
            context=context,
        )
        score = _score_encoded(
            model,
            tokenizer,
            encoded,
            fn=fn,
            names=names,
            model_name=model_name,
            data_name=data_name,
            group=g,
            settings=settings,
            batch_size=batch_size,
            min_tokens=min_tokens,
            layer=layer,
            baseline=baseline,
            baseline_draws=baseline_draws,
            dtype=dtype,
            n_bootstrap=n_bootstrap,
            confidence=confidence,
            seed=seed,
            progress=progress,
        )
        seen: dict[str, int] = {}
        keys = []
        for i in idx:  # pair systems by prompt text (and occurrence), not by record position
            prompt = records[i]["prompt"]
            seen[prompt] = seen.get(prompt, 0) + 1
            keys.append(hashlib.sha1(f"{seen[prompt]}:{prompt}".encode()).hexdigest()[:12])
        rows = tuple(
            {**row, "index": idx[row["index"]], "pair_key": keys[row["index"]]}
            for row in score.per_text
        )
        out.append(_replace_rows(score, rows))
    return out


def _replace_rows(score: CorpusScore, rows: tuple[dict[str, Any], ...]) -> CorpusScore:
    from dataclasses import replace

    return replace(score, per_text=rows)


def _check_records(records: Any, fn: str) -> list[dict[str, Any]]:
    if isinstance(records, (str, bytes)) or not isinstance(records, Sequence) or len(records) == 0:
        raise InvalidParameterError(
            f"The 'records' parameter of {fn} must be a non-empty list of dicts. Got {records!r:.60} instead."
        )
    for i, r in enumerate(records):
        if (
            not isinstance(r, dict)
            or not isinstance(r.get("prompt"), str)
            or not isinstance(r.get("response"), str)
        ):
            got = sorted(r) if isinstance(r, dict) else type(r).__name__
            raise InvalidParameterError(
                f"The 'records' parameter of {fn} must hold dicts with string 'prompt' and 'response' fields. Got {got} at index {i} instead."
            )
    return list(records)


def paired_difference(
    a: CorpusScore,
    b: CorpusScore,
    metric: str,
    *,
    ratio: bool = True,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Mean of ``a - b`` over texts both scored, with a bootstrap interval.

    Compares two models on the same texts (matched by index), or two systems' responses to the
    same prompts (matched by prompt text, see :func:`score_responses`). ``ratio=True`` compares
    the baseline-corrected ratios, which is what is comparable across models of different widths.
    """
    key = f"{metric}_ratio" if ratio else metric
    va = {r.get("pair_key", r["index"]): r[key] for r in a.per_text if key in r}
    vb = {r.get("pair_key", r["index"]): r[key] for r in b.per_text if key in r}
    common = sorted(set(va) & set(vb))
    diffs = np.asarray([va[i] - vb[i] for i in common], dtype=np.float64)
    lo, hi = bootstrap_mean_ci(diffs, n_bootstrap=n_bootstrap, confidence=confidence, seed=seed)
    return {
        "metric": metric,
        "ratio": ratio,
        "n": len(common),
        "mean": float(diffs.mean()) if diffs.size else math.nan,
        "ci": [lo, hi],
    }


# -- data -----------------------------------------------------------------------------------------
def _task_texts(
    name: str, field_name: str | None, data_dir: str | os.PathLike[str] | None, fn: str
) -> list[str]:
    """Distinct values of one field of a task's evaluated items, in order (SQuAD: its contexts).

    The default field is ``context`` when the task has one, else ``question``.
    """
    from metricwise.tasks import get_task
    from metricwise.tasks.base import resolve_data_dir

    task = get_task(name)
    items = task.load(resolve_data_dir(data_dir), split="eval")
    fields = list(items[0].fields) if items else []
    chosen = field_name or next(
        (f for f in ("context", "question") if f in fields), fields[0] if fields else "text"
    )
    if chosen not in fields:
        raise InvalidParameterError(
            f"The 'field' parameter of {fn} must be one of {fields} for task {name!r}. Got {chosen!r} instead."
        )
    return list(dict.fromkeys(str(item.fields[chosen]) for item in items))


def _iter_jsonl(path: Path) -> Iterable[tuple[int, Any]]:
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield lineno, json.loads(line)
                except json.JSONDecodeError as exc:
                    raise InvalidParameterError(
                        f"Line {lineno} of {path} must be JSON. Got a parse error instead: {exc}."
                    ) from None


def _field_of(record: Any, field_name: str, where: str) -> str:
    if isinstance(record, str):
        return record
    if not isinstance(record, dict):
        raise InvalidParameterError(
            f"{where} must be a JSON object or string. Got {type(record).__name__} instead."
        )
    if field_name not in record:
        raise InvalidParameterError(
            f"{where} must have the field {field_name!r} (choose one with --field). Got fields {sorted(record)} instead."
        )
    value = record[field_name]
    if not isinstance(value, str):
        raise InvalidParameterError(
            f"The field {field_name!r} of {where} must be a string. Got {type(value).__name__} instead."
        )
    return value


def load_texts(
    data: str | os.PathLike[str],
    *,
    field: str | None = None,
    limit: int | None = None,
    data_dir: str | os.PathLike[str] | None = None,
) -> list[str]:
    """Texts from a file or a task's inputs.

    Parameters
    ----------
    data : str or path
        A file (``.jsonl``: one JSON object or string per line; ``.json``: a list of objects or
        strings; anything else: one text per non-blank line) or the name of a task (see
        ``metricwise tasks``): the distinct values of a field of its evaluated items, in order
        (``squad``: its contexts, ``field="question"`` for the questions; ``gsm8k``: its test
        questions). An existing file wins over a task of the same name.
    field : str, optional
        Field of JSON records holding the text (default ``"text"``; tasks have their own default).
    limit : int, optional
        Keep the first ``limit`` texts.
    data_dir : str or path, optional
        Data directory for tasks; default ``$METRICWISE_DATA_DIR``.

    Raises
    ------
    InvalidParameterError
        Missing file or data directory (the message says where it looked), missing field.
    UnknownNameError
        ``data`` is neither a file nor a task.
    """
    fn = "load_texts"
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise InvalidParameterError(
            f"The 'limit' parameter of {fn} must be an int >= 1 or None. Got {limit!r} instead."
        )
    path = Path(data).expanduser()
    texts: list[str]
    if path.is_file():
        texts = _texts_from_file(path, field or "text", has_field=field is not None)
    else:
        texts = _task_texts(str(data).strip().lower(), field, data_dir, fn)
    if not texts:
        raise InvalidParameterError(
            f"The 'data' parameter of {fn} must give at least one text. Got none from {str(data)!r} instead."
        )
    return texts[:limit] if limit is not None else texts


def _texts_from_file(path: Path, field_name: str, *, has_field: bool) -> list[str]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return [_field_of(rec, field_name, f"line {n} of {path}") for n, rec in _iter_jsonl(path)]
    if suffix == ".json":
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise InvalidParameterError(
                f"The file {path} must be JSON. Got a parse error instead: {exc}."
            ) from None
        if (
            isinstance(payload, dict)
            and isinstance(payload.get("data"), list)
            and payload["data"]
            and "paragraphs" in payload["data"][0]
        ):
            return _squad_texts(path, field_name if has_field else "context")
        if not isinstance(payload, list):
            raise InvalidParameterError(
                f"The file {path} must hold a JSON list of texts or objects. Got {type(payload).__name__} instead."
            )
        return [_field_of(rec, field_name, f"item {i} of {path}") for i, rec in enumerate(payload)]
    if has_field:
        raise InvalidParameterError(
            f"The 'field' parameter applies to .jsonl and .json files. Got --field {field_name!r} with {path} instead."
        )
    with path.open(encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f if line.strip()]


def _squad_texts(path: Path, field_name: str) -> list[str]:
    payload = json.loads(path.read_text(encoding="utf-8"))
    seen: set[str] = set()
    out: list[str] = []
    for article in payload.get("data", []):
        for paragraph in article.get("paragraphs", []):
            if field_name == "context":
                items = [paragraph.get("context", "")]
            elif field_name == "question":
                items = [qa.get("question", "") for qa in paragraph.get("qas", [])]
            else:
                raise InvalidParameterError(
                    f"The 'field' parameter for SQuAD must be 'context' or 'question'. Got {field_name!r} instead."
                )
            for text in items:
                if text not in seen:
                    seen.add(text)
                    out.append(text)
    return out


def load_responses(
    path: str | os.PathLike[str], *, limit: int | None = None
) -> list[dict[str, Any]]:
    """Records ``{"prompt", "response", ...}`` from a JSONL file, validated."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise InvalidParameterError(
            f"The 'path' parameter of load_responses must be an existing JSONL file. Got {str(file)!r}, which does not exist, instead."
        )
    records = [rec for _, rec in _iter_jsonl(file)]
    records = _check_records(records, "load_responses")
    return records[:limit] if limit is not None else records


# -- report -----------------------------------------------------------------------------------------
def _fmt(x: float | None, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.{digits}f}"


def format_table(scores: Sequence[CorpusScore]) -> str:
    """A markdown table: one row per (model or group) x metric."""
    lines = [
        "| Model | Data | d | N | skipped | tokens | Metric | dir | Value | 95% CI | Gaussian | Ratio | Ratio 95% CI | metric s | extract s |",
        "|---|---|---:|---:|---:|---:|---|:-:|---:|---|---:|---:|---|---:|---:|",
    ]
    for s in scores:
        name = s.model if s.group is None else f"{s.model} / {s.group}"
        skipped = sum(s.skipped.values())
        for m in s.metrics.values():
            ci = f"[{_fmt(m.ci_low)}, {_fmt(m.ci_high)}]"
            rci = (
                "-"
                if m.ratio_ci_low is None
                else f"[{_fmt(m.ratio_ci_low, 3)}, {_fmt(m.ratio_ci_high, 3)}]"
            )
            lines.append(
                f"| {name} | {s.data} | {s.hidden_size or '-'} | {s.n_scored} | {skipped} | {s.tokens} | {m.title} | "
                f"{'↓' if m.lower_is_better else '↑'} | {_fmt(m.value)} | {ci} | {_fmt(m.baseline)} | {_fmt(m.ratio, 3)} | {rci} | "
                f"{m.seconds:.2f} | {s.extraction_seconds:.1f} |"
            )
    return "\n".join(lines)
