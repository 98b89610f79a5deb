"""``metricwise eval``'s results in lm-eval's layout, beside metricwise's own files.

lm-eval writes ``<output_path>/<model>/results_<time>.json`` (``<model>`` the model's name with
``/`` and other path characters replaced by ``__``, ``<time>`` an ISO time with ``-`` for
``:``) and, with ``--log_samples``, ``samples_<task>_<time>.jsonl`` beside it. The same files
are written here, with the same keys, so that what reads lm-eval's results (``lm_eval.utils.
make_table``, a script that reads ``results[task]["exact_match,none"]``, ``metricwise decide``
on the samples log) reads metricwise's:

- ``results[task]["<metric>,<decoder>"]`` and ``"<metric>_stderr,<decoder>"``: each metricwise
  decoder is written where lm-eval writes a filter (``exact_match,greedy``, ``exact_match,mode``,
  ``exact_match,mbr[lm_eval]``...). For an lm-eval task ``<metric>`` is lm-eval's metric name;
  greedy's row is the number lm-eval reports as ``<metric>,none`` for a greedy task.
- ``configs``, ``versions``, ``n-shot``, ``higher_is_better``, ``n-samples``, ``config``,
  ``date`` as lm-eval writes them (an lm-eval task's ``configs`` entry is its own dump).
- a samples line per (doc, decoder): ``doc_id``, ``doc``, ``target``, ``arguments`` (the prompt
  and generation settings), ``resps`` (the N samples of the doc, the same on every line, as
  lm-eval's repeats are), ``filtered_resps`` (the decoder's answer), ``filter`` (the decoder),
  ``metrics`` and each metric's value, and lm-eval's hashes.

The standard errors are metricwise's bootstrap standard errors (lm-eval's are also bootstrap
or the normal approximation for a mean).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from metricwise.io import json_safe


@dataclass
class TaskRun:
    """One scored run of a task (one temperature, local decoding) and its per-item records."""

    key: str
    task: Any
    items: Sequence[Any]
    run: dict[str, Any]
    records: Sequence[Any]


def sanitize_model_name(name: str) -> str:
    """The model's directory name as lm-eval writes it (lm_eval.utils.sanitize_model_name)."""
    return re.sub(r"[\"<>:/|\\?*\[\]]+", "__", name)


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()  # lm_eval.utils.hash_string


def _metric_name(task: Any, spec: str) -> str:
    adapted = getattr(task, "lm_eval", None)
    return adapted.metric_names.get(spec, spec) if adapted is not None else spec


def _answer(value: Any, numeric: bool) -> Any:
    from metricwise.integrations.lm_eval.samples import answer_text

    text = answer_text(value, numeric=numeric)
    return "" if text is None else text


def write_lm_eval_layout(
    runs: Sequence[TaskRun],
    out: Path,
    *,
    model_name: str,
    config: dict[str, Any],
    log_samples: bool,
) -> list[Path]:
    """Write ``results_<time>.json`` (and ``samples_<task>_<time>.jsonl``) under
    ``out/<sanitized model_name>``; returns the paths written."""
    directory = out / sanitize_model_name(model_name)
    directory.mkdir(parents=True, exist_ok=True)
    date_id = datetime.now().isoformat().replace(":", "-")
    results: dict[str, Any] = {}
    configs: dict[str, Any] = {}
    versions: dict[str, Any] = {}
    n_shot: dict[str, int] = {}
    higher: dict[str, dict[str, bool]] = {}
    n_samples: dict[str, dict[str, int]] = {}
    written: list[Path] = []
    for tr in runs:
        task, run = tr.task, tr.run
        adapted = getattr(task, "lm_eval", None)
        entry: dict[str, Any] = {"alias": tr.key}
        for row in run["scores"]:
            metric = _metric_name(task, row["metric"])
            entry[f"{metric},{row['decoder']}"] = row["value"]
            entry[f"{metric}_stderr,{row['decoder']}"] = row.get("stderr", "N/A")
            higher.setdefault(tr.key, {})[metric] = row["direction"] == "higher"
        results[tr.key] = entry
        versions[tr.key] = _version(task.version)
        n_shot[tr.key] = int(run.get("num_fewshot") or 0)
        n_samples[tr.key] = {
            "original": adapted.n_original if adapted is not None else len(tr.items),
            "effective": len(tr.items),
        }
        configs[tr.key] = (
            adapted.config()
            if adapted is not None
            else {
                "task": task.name,
                "output_type": "generate_until",
                "num_fewshot": n_shot[tr.key],
                "metric_list": [
                    {"metric": m, "aggregation": "mean", "higher_is_better": higher[tr.key].get(m)}
                    for m in task.metrics
                ],
                "generation_kwargs": {
                    "until": list(task.stop),
                    "max_gen_toks": task.max_tokens,
                },
                "metadata": {"version": task.version, "metricwise_task": True},
            }
        )
        if log_samples:
            written.append(_write_samples(directory, tr, date_id))
    document = {
        "results": results,
        "group_subtasks": {key: [] for key in results},
        "configs": configs,
        "versions": versions,
        "n-shot": n_shot,
        "higher_is_better": higher,
        "n-samples": n_samples,
        "config": config,
        "date": time.time(),
        "model_name": model_name,
        "model_name_sanitized": sanitize_model_name(model_name),
        "metricwise": {
            "note": "each '<metric>,<filter>' filter is a metricwise decoder on one pool of "
            "samples; greedy is lm-eval's single greedy answer",
            "results": "../results.json",
        },
    }
    path = directory / f"results_{date_id}.json"
    path.write_text(json.dumps(json_safe(document), indent=2) + "\n", encoding="utf-8")
    return [path, *written]


def _version(version: Any) -> Any:
    try:
        return float(version)
    except (TypeError, ValueError):
        return version


def _write_samples(directory: Path, tr: TaskRun, date_id: str) -> Path:
    task = tr.task
    adapted = getattr(task, "lm_eval", None)
    numeric = task.answer_type == "number"
    metrics = [(spec, _metric_name(task, spec)) for spec in task.metrics]
    path = directory / f"samples_{tr.key}_{date_id}.jsonl"
    with path.open("w", encoding="utf-8") as fh:
        for index, (item, record) in enumerate(zip(tr.items, tr.records, strict=True)):
            doc = adapted.docs[index] if adapted is not None else dict(item.fields)
            doc_id = adapted.doc_ids[index] if adapted is not None else index
            target = item.references[0] if adapted is not None else item.target
            gen = (
                adapted.gen_kwargs
                if adapted is not None
                else {"until": list(task.stop), "max_gen_toks": task.max_tokens}
            )
            resps = [c["text"] for c in record.candidates]
            common = {
                "doc_id": doc_id,
                "doc": doc,
                "target": target,
                "arguments": {"gen_args_0": {"arg_0": record.prompt, "arg_1": gen}},
                "resps": [resps],
                "doc_hash": _hash(json.dumps(doc, indent=2, default=str, ensure_ascii=False)),
                "prompt_hash": _hash(record.prompt),
                "target_hash": _hash(str(target)),
            }
            for label, scores in record.scores.items():
                line = {
                    **common,
                    "filtered_resps": [_answer(record.predictions.get(label), numeric)],
                    "filter": label,
                    "metrics": [name for _, name in metrics],
                    **{name: scores.get(spec) for spec, name in metrics},
                }
                fh.write(json.dumps(json_safe(line), ensure_ascii=False) + "\n")
    return path
