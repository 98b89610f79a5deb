"""Adaptive sampling against fixed N, on stored sample pools of real tasks.

For every item of every pool, each decision rule of the task is applied twice to the same
samples: once to all N (the fixed-N decision) and once adaptively, in rounds over the first
``min_n``, ``min_n + round``, ... samples until :func:`metricwise.adaptive.settled_probability`
reaches ``--confidence`` (the samples of an adaptive run are a prefix of the fixed run's, so one
pool serves both). It prints, per task and rule: the mean samples used and its ratio to N, the
score of both with the paired difference (adaptive - fixed) and its 95% bootstrap interval, and
whether that difference is significant.

The pools are the ``samples_<task>.jsonl`` files of an eval run with ``--log_samples``::

    metricwise eval --model gemma-3-270m --tasks arith,stsb,triviaqa --limit 60 -n 32 \\
        --data_dir ../shared/data --log_samples --output_path out/pools --curve_subsets 0 --no_plots
    python bench/adaptive.py out/pools                     # every samples_*.jsonl there
    python bench/adaptive.py out/pools --confidence 0.9 --min_n 4 --round 4

Floors the issue sets: the mode on the arithmetic task and the mean on STS-B each need at most
half the samples of fixed N with no significant loss.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from metricwise import Candidate, SampleSet, decide
from metricwise.adaptive import Adaptive, settled_probability
from metricwise.evaluate.decoders import extractor_for, fallback_prediction
from metricwise.evaluate.stats import paired_bootstrap
from metricwise.metrics import get as get_metric
from metricwise.tasks import get_task

#: The rules each kind of task is decided with: (rule, the metric the rule optimises).
NUMBER_RULES = [("mode", "absolute_error"), ("mean", "squared_error"), ("median", "absolute_error")]
TEXT_RULES = [("mode", "exact_match"), ("mbr", "token_f1")]


def load_pool(path: Path) -> list[dict[str, Any]]:
    return [
        json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
    ]


def tolerance_for(task: Any, rule: str, override: float | None) -> float:
    """The answer's unit of 'moved': 2% of a bounded scale, half a unit for open numbers."""
    if override is not None:
        return override
    if rule in ("mode", "mbr"):
        return 0.0
    if task.valid_range is not None:
        return 0.02 * (task.valid_range[1] - task.valid_range[0])
    return 0.5


def run_task(path: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    task = get_task(path.stem.removeprefix("samples_"))
    records = load_pool(path)
    extractor = extractor_for(task)
    primary = get_metric(task.metrics[0])
    rules = NUMBER_RULES if task.answer_type == "number" else TEXT_RULES
    rows = []
    for rule, rule_metric in rules:
        adaptive = Adaptive(
            min_n=args.min_n,
            max_n=min(len(r["candidates"]) for r in records),
            round=args.round,
            confidence=args.confidence,
            tolerance=tolerance_for(task, rule, args.tolerance),
        )
        options = {"rule": rule, "extractor": extractor, "valid_range": task.valid_range}
        fixed_scores, adaptive_scores, used = [], [], []
        for record in records:
            candidates = tuple(Candidate.from_dict(c) for c in record["candidates"])
            fixed = decide(SampleSet(candidates[: adaptive.max_n]), rule_metric, **options)
            for n in adaptive.schedule():
                early = decide(SampleSet(candidates[:n]), rule_metric, **options)
                probability = settled_probability(
                    early, rule_metric, adaptive, valid_range=task.valid_range
                )
                if early.ok and probability >= adaptive.confidence:
                    break
            used.append(n)
            refs = record["references"]
            for decision, scores in ((fixed, fixed_scores), (early, adaptive_scores)):
                prediction = decision.output if decision.ok else fallback_prediction(task)
                scores.append(primary.score(prediction, refs))
        comparison = paired_bootstrap(np.array(adaptive_scores), np.array(fixed_scores), seed=0)
        rows.append(
            {
                "task": task.name,
                "rule": rule,
                "metric": primary.name,
                "items": len(records),
                "N": adaptive.max_n,
                "mean_used": float(np.mean(used)),
                "fixed": float(np.mean(fixed_scores)),
                "adaptive": float(np.mean(adaptive_scores)),
                "difference": comparison.difference,
                "low": comparison.low,
                "high": comparison.high,
                "significant": not (comparison.low <= 0.0 <= comparison.high),
                "used_distribution": np.bincount(used).tolist(),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "pools", type=Path, help="an eval --output_path with samples_<task>.jsonl files"
    )
    parser.add_argument("--min_n", type=int, default=4)
    parser.add_argument("--round", type=int, default=4)
    parser.add_argument("--confidence", type=float, default=0.95)
    parser.add_argument(
        "--tolerance", type=float, default=None, help="default: per task (see tolerance_for)"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args()
    paths = sorted(args.pools.glob("samples_*.jsonl"))
    if not paths:
        sys.exit(
            f"bench/adaptive.py: no samples_<task>.jsonl in {args.pools} (run eval with --log_samples)"
        )
    rows = [row for path in paths for row in run_task(path, args)]
    print(
        f"adaptive sampling: min_n={args.min_n}, round={args.round}, confidence={args.confidence}; "
        "difference = adaptive - fixed, paired 95% bootstrap interval\n"
    )
    print(
        "| task | rule | metric | items | N | mean used | used / N | fixed | adaptive | difference | 95% CI | significant |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['task']} | {r['rule']} | {r['metric']} | {r['items']} | {r['N']} | {r['mean_used']:.1f} | "
            f"{r['mean_used'] / r['N']:.2f} ({r['N'] / r['mean_used']:.1f}x fewer) | {r['fixed']:.3f} | "
            f"{r['adaptive']:.3f} | {r['difference']:+.3f} | [{r['low']:+.3f}, {r['high']:+.3f}] | "
            f"{'yes' if r['significant'] else 'no'} |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
