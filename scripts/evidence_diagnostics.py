"""Diagnostics behind docs/results: what the model's answers follow, and what a constant scores.

Reads the ``samples_<task>.jsonl`` files that ``metricwise eval --log_samples`` writes and prints,
per task, a markdown list:

* numeric tasks: the label mean/variance of the evaluated items; the constant predictions that
  need no model (the few-shot split's label mean for squared error, its median for absolute
  error); how the greedy answer and the per-item sample mean correlate with the gold label and
  with the label of the *last* few-shot example in the prompt (a model that copies that label
  has learned the format, not the task); the mean within-item standard deviation of the samples
  (the variance the mean rule removes);
* text tasks: how many distinct answers the N samples of an item hold, and how often the most
  frequent one occurs (the mode needs repeats to say anything).

Usage::

    metricwise eval ... --log_samples --output_path DIR
    python scripts/evidence_diagnostics.py DIR --data_dir ../shared/data
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from metricwise.evaluate.decoders import extract_answer
from metricwise.tasks import get_task


def correlation(a: list[float], b: list[float]) -> float:
    return float(np.corrcoef(np.asarray(a, dtype=float), np.asarray(b, dtype=float))[0, 1])


def last_shot_label(prompt: str, answer_prefix: str, task: Any) -> float | None:
    """The answer of the example right before the evaluated item (None without shots)."""
    parts = prompt.split(answer_prefix)
    if len(parts) < 3:  # no shot: only the evaluated item's prefix
        return None
    answer = parts[-2].split("\n", 1)[0]
    value = extract_answer(answer, task)
    return None if value is None else float(value)


def numeric(task: Any, rows: list[dict[str, Any]], data_dir: Path | None) -> list[str]:
    refs = [float(r["references"][0]) for r in rows]
    greedy = [extract_answer(r["greedy"], task) for r in rows]
    means, spreads = [], []
    for r in rows:
        values = [
            v for v in (extract_answer(c["text"], task) for c in r["candidates"]) if v is not None
        ]
        means.append(statistics.fmean(values) if values else float("nan"))
        spreads.append(statistics.pstdev(values) if len(values) > 1 else 0.0)
    lines = [
        f"- {len(rows)} items; gold label mean {statistics.fmean(refs):.3f}, variance {statistics.pvariance(refs):.3f}"
    ]
    try:
        train = [float(item.references[0]) for item in task.load(data_dir, split="fewshot")]
    except Exception as exc:  # a task without a separate few-shot split
        lines.append(f"- no few-shot split for a constant baseline ({exc})")
    else:
        mean, median = statistics.fmean(train), statistics.median(train)
        lines.append(
            f"- constant {mean:.3f} (few-shot split mean): squared error {statistics.fmean((mean - y) ** 2 for y in refs):.3f}; "
            f"constant {median:g} (median): absolute error {statistics.fmean(abs(median - y) for y in refs):.3f}"
        )
    ok = [i for i, g in enumerate(greedy) if g is not None]
    lines.append(
        f"- correlation with the gold label: greedy {correlation([greedy[i] for i in ok], [refs[i] for i in ok]):+.3f}, "
        f"sample mean {correlation(means, refs):+.3f}"
    )
    shots = [last_shot_label(r["prompt"], task.answer_prefix, task) for r in rows]
    with_shot = [i for i in ok if shots[i] is not None]
    if with_shot:
        copied = sum(1 for i in with_shot if greedy[i] == shots[i])
        lines.append(
            f"- correlation with the last few-shot example's label: greedy "
            f"{correlation([greedy[i] for i in with_shot], [shots[i] for i in with_shot]):+.3f}, sample mean "
            f"{correlation([means[i] for i in with_shot], [shots[i] for i in with_shot]):+.3f}; greedy repeats that label "
            f"on {copied}/{len(with_shot)} items"
        )
    lines.append(
        f"- mean within-item standard deviation of the samples: {statistics.fmean(spreads):.3f}"
    )
    return lines


def text(task: Any, rows: list[dict[str, Any]]) -> list[str]:
    distinct, top = [], []
    for r in rows:
        answers = Counter(" ".join(c["text"].lower().split()) for c in r["candidates"])
        distinct.append(len(answers))
        top.append(answers.most_common(1)[0][1])
    n = len(rows[0]["candidates"])
    return [
        f"- {len(rows)} items, {n} samples each; distinct answers per item: median {statistics.median(distinct):g}, "
        f"all {n} distinct on {sum(d == n for d in distinct)} items",
        f"- the most frequent answer occurs once (no repeat at all) on {sum(t == 1 for t in top)} items, "
        f"4 or more times on {sum(t >= 4 for t in top)}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "results_dir", type=Path, help="an eval --output_path run with --log_samples"
    )
    parser.add_argument(
        "--data_dir",
        type=Path,
        default=None,
        help="benchmark data (for the few-shot split's labels)",
    )
    args = parser.parse_args()
    files = sorted(args.results_dir.glob("samples_*.jsonl"))
    if not files:
        raise SystemExit(
            f"no samples_<task>.jsonl in {args.results_dir}: run metricwise eval with --log_samples"
        )
    for path in files:
        # samples_<task>.jsonl, or samples_<task>_t<T>.jsonl in a temperature sweep
        run = path.stem[len("samples_") :]
        task = get_task(re.sub(r"_t[0-9.]+$", "", run))
        rows = [json.loads(line) for line in path.open(encoding="utf-8")]
        print(f"### {run}\n")
        body = (
            numeric(task, rows, args.data_dir) if task.answer_type == "number" else text(task, rows)
        )
        print("\n".join(body) + "\n")


if __name__ == "__main__":
    main()
