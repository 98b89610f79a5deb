"""Ratings on a bounded scale: STS-B sentence-pair similarity (0-5) and SST-5 sentiment (1-5).

========== ========================================== ==== ==================================================
task       evaluated items (file)                     rows few-shot pool
========== ========================================== ==== ==================================================
stsb       stsb/sts-dev.csv                           1500 stsb/sts-train.csv (5749 rows, 5743 kept)
sst5       sst5/stsa.fine.test                        2210 sst5/stsa.fine.train (8544 rows, 8541 kept)
========== ========================================== ==== ==================================================

Both answer with a number clipped into the scale (``valid_range``), read from a file per split
(see :func:`~metricwise.tasks.splits.split_loader`).
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from metricwise.errors import InvalidParameterError
from metricwise.tasks.base import Item, Task
from metricwise.tasks.readers import HubSource, Record, line_of, read_text, to_float
from metricwise.tasks.registry import builtin_task
from metricwise.tasks.splits import split_loader


# -- STS-B --------------------------------------------------------------------------------------
def _parse_stsb(path: Path) -> list[Record]:
    records = []
    with path.open(encoding="utf-8", newline="") as f:
        # Sentences contain quotes, so no quoting; some rows carry extra fields after s2.
        for line_no, row in enumerate(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE), 1):
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if len(row) < 7:
                raise InvalidParameterError(
                    f"{line_of(path, line_no)} has {len(row)} tab-separated fields; expected at least 7 "
                    "(genre, file, year, id, score, sentence1, sentence2)."
                )
            score = to_float(row[4], f"{line_of(path, line_no)}, field 5 (the score)")
            if not 0.0 <= score <= 5.0:
                raise InvalidParameterError(
                    f"{line_of(path, line_no)}: the score must be in [0, 5]. Got {row[4]!r} instead."
                )
            records.append(
                {"sentence1": row[5].strip(), "sentence2": row[6].strip(), "score": score}
            )
    return records


def _stsb_hub(row: Mapping[str, Any]) -> Record:
    return {
        "sentence1": str(row["sentence1"]),
        "sentence2": str(row["sentence2"]),
        "score": float(row["score"]),
    }


def _stsb_item(r: Record, item_id: str) -> Item:
    score = float(r["score"])
    return Item(
        item_id,
        {"sentence1": r["sentence1"], "sentence2": r["sentence2"]},
        (score,),
        f"{score:.1f}",
    )


builtin_task(
    Task(
        name="stsb",
        description="STS Benchmark: sentence-pair similarity 0-5 (eval stsb/sts-dev.csv, shots stsb/sts-train.csv).",
        answer_type="number",
        metrics=("squared_error", "absolute_error"),
        corpus_metrics=("pearson", "spearman"),
        extractor="number",
        valid_range=(0.0, 5.0),
        instruction="Rate how similar the two sentences are in meaning, from 0 (unrelated) to 5 (equivalent).",
        template="Sentence 1: {sentence1}\nSentence 2: {sentence2}",
        answer_prefix="\nSimilarity (0-5):",
        max_tokens=8,
        loader=split_loader(
            "stsb",
            {
                "eval": (
                    "stsb/sts-dev.csv",
                    "dev",
                    HubSource("mteb/stsbenchmark-sts", ((None, "validation"),)),
                ),
                "fewshot": (
                    "stsb/sts-train.csv",
                    "train",
                    HubSource("mteb/stsbenchmark-sts", ((None, "train"),)),
                ),
            },
            _parse_stsb,
            _stsb_hub,
            _stsb_item,
        ),
    )
)


# -- SST-5 --------------------------------------------------------------------------------------
def _parse_sst5(path: Path) -> list[Record]:
    records = []
    for line_no, line in enumerate(read_text(path).split("\n"), 1):
        if not line.strip():
            continue
        label, _, text = line.strip().partition(" ")
        if label not in ("0", "1", "2", "3", "4") or not text.strip():
            raise InvalidParameterError(
                f"{line_of(path, line_no)} must be a label 0-4, a space and the text. Got {line[:60]!r} instead."
            )
        records.append({"text": text.strip(), "label": int(label)})
    return records


def _sst5_hub(row: Mapping[str, Any]) -> Record:
    label = int(row["label"])
    if not 0 <= label <= 4:
        raise ValueError(f"label {label} is not in 0-4")
    return {"text": str(row["text"]).strip(), "label": label}


def _sst5_item(r: Record, item_id: str) -> Item:
    rating = int(r["label"]) + 1
    return Item(item_id, {"text": r["text"]}, (float(rating),), str(rating))


builtin_task(
    Task(
        name="sst5",
        description="SST-5 movie-review sentiment as a 1-5 rating (eval sst5/stsa.fine.test, shots sst5/stsa.fine.train).",
        answer_type="number",
        metrics=("absolute_error", "squared_error"),
        corpus_metrics=("accuracy",),
        extractor="number",
        valid_range=(1.0, 5.0),
        instruction="Rate the sentiment of each movie review from 1 (very negative) to 5 (very positive).",
        template="Review: {text}",
        answer_prefix="\nRating (1-5):",
        max_tokens=8,
        loader=split_loader(
            "sst5",
            {
                "eval": (
                    "sst5/stsa.fine.test",
                    "test",
                    HubSource("SetFit/sst5", ((None, "test"),)),
                ),
                "fewshot": (
                    "sst5/stsa.fine.train",
                    "train",
                    HubSource("SetFit/sst5", ((None, "train"),)),
                ),
            },
            _parse_sst5,
            _sst5_hub,
            _sst5_item,
        ),
    )
)
