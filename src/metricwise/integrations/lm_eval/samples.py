"""lm-eval's sample logs (``lm_eval --log_samples``) as input to ``metricwise decide``.

lm-eval writes one line per (doc, filter) to ``samples_<task>_<time>.jsonl``: the doc, its
``target``, the model's raw responses (``resps``: one list per request, holding the ``repeats``
answers of a ``generate_until`` task), the filtered answer (``filtered_resps``), the filter's
name and the per-doc value of each of the task's metrics. The task's configuration (its
``metric_list`` with the metrics' arguments) is in ``results_<time>.json`` beside it.

:func:`read_samples_log` groups the lines by doc; :func:`lm_eval_scorer` scores an answer with
lm-eval's own metric function from its registry, called as lm-eval's ``generate_until``
``process_results`` calls it, so that lm-eval's filtered answer rescored here reproduces the
value lm-eval logged (``SamplesLog`` callers check this and say when it does not).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metricwise.errors import InvalidParameterError
from metricwise.io import JsonLine

#: The fields every line of an lm-eval samples log has (lm_eval/evaluator.py, ``log_samples``).
SAMPLES_LOG_KEYS = frozenset({"doc_id", "resps", "filtered_resps", "filter", "target"})

# Keys of a metric_list entry that are not the metric function's arguments
# (lm_eval/api/task.py, ConfigurableTask.__init__).
_NOT_METRIC_ARGS = ("metric", "aggregation", "higher_is_better", "hf_evaluate")


def is_samples_record(value: Any) -> bool:
    """Whether a parsed JSON line is a line of an lm-eval samples log."""
    return isinstance(value, dict) and value.keys() >= SAMPLES_LOG_KEYS


@dataclass
class LoggedDoc:
    """One doc of a samples log: its responses and what each of lm-eval's filters made of them."""

    doc_id: Any
    target: Any
    responses: list[str]
    #: filter name -> lm-eval's filtered answer (``filtered_resps[0]``, what its metric scored)
    answers: dict[str, Any] = field(default_factory=dict)
    #: filter name -> metric -> the per-doc value lm-eval logged
    scores: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass
class SamplesLog:
    """The docs of one samples log, in file order, and the task's configuration when found."""

    task: str | None
    docs: list[LoggedDoc]
    filters: list[str]
    metrics: list[str]
    config: dict[str, Any] | None
    results_path: Path | None


def _responses(doc_id: Any, resps: Any, where: str) -> list[str]:
    if (
        isinstance(resps, list)
        and len(resps) == 1
        and isinstance(resps[0], list)
        and all(isinstance(r, str) for r in resps[0])
    ):
        return list(resps[0])
    raise InvalidParameterError(
        f"{where}: doc {doc_id!r}: its 'resps' are not the generated texts of one "
        "generate_until request (got "
        f"{json.dumps(resps)[:80]}). lm-eval's loglikelihood and multiple-choice tasks score "
        "fixed choices by their log-likelihood: there are no sampled answers to decide among. "
        "Decide a generate_until task run with 'repeats: N' (or --gen_kwargs with sampling)."
    )


def _results_file(samples_path: Path) -> tuple[str | None, Path | None]:
    """The task name and the ``results_<time>.json`` written with ``samples_<task>_<time>.jsonl``."""
    stem = samples_path.stem
    if not stem.startswith("samples_") or "_" not in stem[len("samples_") :]:
        return None, None
    task, _, time = stem[len("samples_") :].rpartition("_")
    results = samples_path.with_name(f"results_{time}.json")
    return task, (results if results.is_file() else None)


def read_samples_log(path: str | Path, lines: Iterable[JsonLine]) -> SamplesLog:
    """Group the lines of an lm-eval samples log by doc.

    Raises :class:`~metricwise.errors.InvalidParameterError` naming the line when a line is not
    JSON, is not a samples-log line, holds something other than generated texts (a
    loglikelihood task), or disagrees with another filter's line about the same doc's responses.
    """
    name = "<stdin>" if str(path) == "-" else str(path)
    docs: dict[Any, LoggedDoc] = {}
    filters: list[str] = []
    metrics: list[str] = []
    for line in lines:
        where = f"{name}: line {line.number}"
        if line.error is not None:
            raise InvalidParameterError(f"{where}: {line.error}")
        record = line.value
        if not is_samples_record(record):
            got = sorted(record) if isinstance(record, dict) else type(record).__name__
            raise InvalidParameterError(
                f"{where}: expected a line of an lm-eval samples log with the fields "
                f"{sorted(SAMPLES_LOG_KEYS)}; got {got}"
            )
        doc_id = record["doc_id"]
        key = json.dumps(doc_id, sort_keys=True)
        responses = _responses(doc_id, record["resps"], where)
        doc = docs.get(key)
        if doc is None:
            doc = docs[key] = LoggedDoc(doc_id, record["target"], responses)
        elif doc.responses != responses:
            raise InvalidParameterError(
                f"{where}: doc {doc_id!r} has other responses than on an earlier line; "
                "expected one samples log of one run"
            )
        flt = str(record["filter"])
        if flt not in filters:
            filters.append(flt)
        filtered = record["filtered_resps"]
        doc.answers[flt] = filtered[0] if isinstance(filtered, list) and filtered else filtered
        names = record.get("metrics") or []
        for metric in names:
            if metric not in metrics:
                metrics.append(metric)
        doc.scores[flt] = {
            m: float(record[m]) for m in names if isinstance(record.get(m), (int, float))
        }
    if not docs:
        raise InvalidParameterError(f"{name}: the samples log has no lines")
    task, results_path = (None, None) if name == "<stdin>" else _results_file(Path(path))
    config = None
    if results_path is not None:
        try:
            config = json.loads(results_path.read_text(encoding="utf-8"))["configs"][task]
        except (OSError, ValueError, KeyError, TypeError):
            config = None
    return SamplesLog(task, list(docs.values()), filters, metrics, config, results_path)


def _metric_entry(metric: str, config: dict[str, Any] | None) -> dict[str, Any]:
    for entry in (config or {}).get("metric_list") or []:
        if isinstance(entry, dict) and entry.get("metric") == metric:
            return entry
    return {"metric": metric}


def lm_eval_scorer(
    metric: str, config: dict[str, Any] | None = None
) -> Callable[[Any, Any], float]:
    """``score(target, answer)`` with lm-eval's registered metric ``metric``.

    The metric's arguments come from the task's ``metric_list`` in ``config`` (``ignore_case``,
    ``regexes_to_ignore``, ...). The call follows lm-eval's ``generate_until`` scoring
    (``ConfigurableTask.process_results``): the target cast to the answer's type, a list of
    targets scored as "any of them" (exact_match through one call over all of them, as lm-eval
    does). Only metrics in lm-eval's own registry are used: an HF Evaluate metric would be
    fetched from the hub.
    """
    from lm_eval.api import metrics as _registered  # noqa: F401  (fills the metric registry)
    from lm_eval.api.registry import metric_registry

    entry = _metric_entry(metric, config)
    if (config or {}).get("process_results"):
        raise InvalidParameterError(
            f"The task scores its docs with its own process_results function; metricwise cannot "
            f"score a new answer with lm-eval's {metric!r} without running it."
        )
    if entry.get("hf_evaluate") is True or metric not in metric_registry:
        raise InvalidParameterError(
            f"lm-eval's metric {metric!r} is not in its own metric registry (an HF Evaluate "
            "metric, loaded from the hub, or a task's own function); metricwise scores with "
            "registered metrics only."
        )
    fn = metric_registry.get(metric)
    kwargs = {k: v for k, v in entry.items() if k not in _NOT_METRIC_ARGS}

    def one(gold: Any, answer: Any) -> float:
        try:
            value = fn(references=[gold], predictions=[answer], **kwargs)
        except TypeError:  # lm-eval's passthrough metrics take one (gold, answer) item
            value = fn([gold, answer])
        if isinstance(value, dict):
            value = value[metric]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InvalidParameterError(
                f"lm-eval's {metric!r} is a corpus-level metric (per doc it passes "
                f"{type(value).__name__} items to its aggregation); metricwise compares "
                "per-doc metrics of an lm-eval samples log (exact_match, acc)."
            )
        return float(value)

    def score(target: Any, answer: Any) -> float:
        if answer is None:
            answer = ""  # no decision: scored as an empty answer
        if isinstance(target, list):
            if metric == "exact_match":
                value = fn(references=target, predictions=[answer] * len(target), **kwargs)
                value = value[metric] if isinstance(value, dict) else value
                return 1.0 if float(value) > 0.0 else 0.0
            return 1.0 if any(one(g, answer) for g in target) else 0.0
        if type(target) is not type(answer) and not isinstance(answer, list):
            target = type(answer)(target)
        return one(target, answer)

    return score


def _number(value: float) -> str:
    if value.is_integer() and abs(value) < 1e16:
        return str(int(value))
    return repr(value)


def answer_text(output: Any, *, numeric: bool = False) -> Any:
    """A decision's output as lm-eval would have produced it: text, a number written as a person
    writes it ("5", not "5.0"). ``numeric``: the answers were extracted as numbers, whose
    canonical text ("12.0") is written the same way."""
    if isinstance(output, bool) or output is None:
        return output
    if isinstance(output, (int, float)):
        return _number(float(output))
    if isinstance(output, str):
        if numeric:
            try:
                return _number(float(output))
            except ValueError:
                return output
        return output
    return str(output)


def is_numeric_extractor(extractor: Any) -> bool:
    """Whether an extractor spec gives numbers ("number", "number:last", ...)."""
    return isinstance(extractor, str) and extractor.split(":", 1)[0].strip() == "number"


@dataclass
class Comparison:
    """Per lm-eval metric: metricwise's decision against each of lm-eval's filtered answers.

    ``scores[metric]["metricwise"]`` and ``scores[metric][filter]`` are per-doc values (doc
    order); ``rescored_mismatches[metric][filter]`` counts the docs where lm-eval's filtered
    answer, rescored here, differs from the value lm-eval logged (0 when this module scores as
    lm-eval does).
    """

    metrics: list[str]
    filters: list[str]
    scores: dict[str, dict[str, list[float]]]
    rescored_mismatches: dict[str, dict[str, int]]

    def summary(self, *, bootstrap_iters: int = 1000, seed: int = 0) -> dict[str, Any]:
        """Means with percentile intervals, and paired differences metricwise - filter."""
        import numpy as np

        from metricwise.evaluate.stats import bootstrap, paired_bootstrap, resample_indices

        out: dict[str, Any] = {}
        for metric in self.metrics:
            rows = self.scores[metric]
            n = len(rows["metricwise"])
            idx = resample_indices(n, bootstrap_iters, seed)
            ours = np.asarray(rows["metricwise"])
            entry: dict[str, Any] = {}
            for name, values in rows.items():
                est = bootstrap(np.asarray(values), indices=idx)
                item: dict[str, Any] = {"value": est.value, "ci": [est.low, est.high], "n": n}
                if name != "metricwise":
                    item["metricwise_minus_this"] = paired_bootstrap(
                        ours, np.asarray(values), indices=idx
                    ).to_dict()
                    item["rescored_mismatches"] = self.rescored_mismatches[metric][name]
                entry[name] = item
            out[metric] = entry
        return out


def compare(
    log: SamplesLog,
    decisions: list[Any],
    scorers: dict[str, Callable[[Any, Any], float]] | None = None,
    *,
    numeric: bool = False,
) -> Comparison:
    """Score each doc's decided answer (``decisions[i]`` for ``log.docs[i]``) and lm-eval's
    filtered answers with lm-eval's metrics, and count where rescoring disagrees with the log."""
    if scorers is None:
        scorers = {m: lm_eval_scorer(m, log.config) for m in log.metrics}
    scores: dict[str, dict[str, list[float]]] = {}
    mismatches: dict[str, dict[str, int]] = {}
    for metric in log.metrics:
        score = scorers[metric]
        rows: dict[str, list[float]] = {"metricwise": []}
        bad = dict.fromkeys(log.filters, 0)
        for doc, decided in zip(log.docs, decisions, strict=True):
            rows["metricwise"].append(score(doc.target, answer_text(decided, numeric=numeric)))
            for flt in log.filters:
                if flt not in doc.answers:
                    raise InvalidParameterError(
                        f"doc {doc.doc_id!r} has no line for filter {flt!r}; expected every "
                        "filter on every doc"
                    )
                logged = doc.scores[flt].get(metric)
                mine = score(doc.target, doc.answers[flt])
                if logged is not None and abs(logged - mine) > 1e-9:
                    bad[flt] += 1
                rows.setdefault(flt, []).append(mine if logged is None else logged)
        scores[metric] = rows
        mismatches[metric] = bad
    return Comparison(list(log.metrics), list(log.filters), scores, mismatches)
