"""The judge's agreement with STS-B's human similarity scores: greedy vs regression-aware, and
the fixed-criteria prompt vs the Active-Critic calibrated one (docs/results/judge.md).

Framing: each STS-B pair becomes a labelled example with sentence 1 as the reference,
sentence 2 as the candidate, the question "Write a sentence that means the same as the
reference sentence." and the human score (0-5) as the label. The judge rates 1..5.

Steps: ``--items`` pairs of the dev split drawn with ``--seed``; ``judge_calibrate.calibrate``
splits them in half (the same seed), infers the task and criteria, chooses the prompt on the
calibration half, and the held-back half is rated by the fixed-criteria prompt and by the
chosen one. Greedy ratings are the argmax of the same forward pass's score-token
probabilities (``regression_aware=False`` computes exactly that), so each prompt is run once.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 METRICWISE_DATA_DIR=../shared/data \\
        .venv/bin/python scripts/judge_evidence.py --model smollm2-135m-instruct --items 60
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import time
from pathlib import Path

import numpy as np

from metricwise.judge_calibrate import (
    Example,
    agreement,
    calibrate,
    format_table,
    split_examples,
)
from metricwise.metrics.judge import GENERIC_CRITERIA_REFERENCE, Judge, JudgeSpec

QUESTION = "Write a sentence that means the same as the reference sentence."


def load_pairs(data_dir: Path, items: int, seed: int) -> list[Example]:
    rows = []
    with (data_dir / "stsb" / "sts-dev.csv").open(encoding="utf-8") as handle:
        for row in csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE):
            if len(row) >= 7:
                rows.append(Example(QUESTION, row[6], row[5], float(row[4])))
    chosen = np.random.default_rng(seed).choice(len(rows), size=items, replace=False)
    return [rows[i] for i in sorted(chosen)]


def ratings(judge: Judge, examples: list[Example]) -> tuple[np.ndarray, np.ndarray]:
    """(regression-aware, greedy) ratings, shape (n,) each, from one pass per example."""
    judged = judge.judge_items([(e.question, e.candidate, e.reference) for e in examples])
    expected = np.array([np.nan if j.score is None else j.score for j in judged])
    greedy = np.array(
        [np.nan if j.probabilities is None else np.argmax(j.probabilities) + 1.0 for j in judged]
    )
    return expected, greedy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--backend", default="hf")
    parser.add_argument("--items", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shots", type=int, default=2)
    parser.add_argument("--chat", default="auto", help="auto, true or false")
    parser.add_argument(
        "--data_dir", default=os.environ.get("METRICWISE_DATA_DIR", "../shared/data")
    )
    parser.add_argument("--spec_out", default=None, help="where to write the calibrated spec")
    args = parser.parse_args()
    chat: bool | str = {"true": True, "false": False}.get(args.chat, args.chat)

    started = time.monotonic()
    examples = load_pairs(Path(args.data_dir), args.items, args.seed)
    _, held = split_examples(examples, 0.5, args.seed, args.shots)
    spec, rows = calibrate(
        examples,
        backend=args.backend,
        model=args.model,
        scale=5,
        label_range=(0.0, 5.0),
        held_back=0.5,
        seed=args.seed,
        shots=args.shots,
        explanations=2,
        chat=chat,
    )
    print(f"inferred task: {spec.provenance['inferred_task']!r}")
    print(f"inferred criteria: {spec.provenance['inferred_criteria']!r}")
    print(format_table(rows))
    if args.spec_out:
        spec.to_yaml(args.spec_out)

    labels = np.array([e.score for e in held])
    base = Judge(backend=args.backend, model=args.model, chat=chat, progress=False)
    # The same prompts as calibrate's (so their held-back ratings come from the cache).
    fixed_spec = JudgeSpec(criteria=GENERIC_CRITERIA_REFERENCE)
    fixed = Judge(backend=base.backend(), spec=fixed_spec, chat=chat, progress=False)
    calibrated = Judge(
        backend=base.backend(), spec=JudgeSpec(**_plain(spec)), chat=chat, progress=False
    )
    results = {}
    for prompt_name, judge in (
        ("fixed criteria", fixed),
        (f"calibrated ({spec.agreement['chosen']})", calibrated),
    ):
        expected, greedy = ratings(judge, held)
        results[(prompt_name, "greedy")] = agreement(greedy, labels)
        results[(prompt_name, "regression-aware")] = agreement(expected, labels)
    print(
        f"\nheld-back STS-B pairs: {len(held)} (of {len(examples)}), model {args.model}, backend {args.backend}"
    )
    print("| prompt | judge score | n | unparsable | Pearson | Spearman | Kendall |")
    print("|---|---|---|---|---|---|---|")
    for (prompt_name, mode), a in results.items():
        print(
            f"| {prompt_name} | {mode} | {a['n']} | {a['unparsable']} | {a['pearson']:.3f} | "
            f"{a['spearman']:.3f} | {a['kendall']:.3f} |"
        )
    for note in spec.provenance["explanations"]:
        print(f"\nlabel {note['label']:g}, judge {note['score']}: {json.dumps(note['candidate'])}")
        print(f"  explanation: {note['explanation']!r}")
    print(f"\n{time.monotonic() - started:.0f} s")


def _plain(spec: JudgeSpec) -> dict:
    """The spec's prompt fields (its agreement and provenance do not change a rating)."""
    keep = ("header", "item", "reference_line", "criteria", "task", "shots", "scale", "wording")
    return {k: getattr(spec, k) for k in keep}


if __name__ == "__main__":
    main()
