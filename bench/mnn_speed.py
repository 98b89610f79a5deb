"""Matrix Nuclear-Norm against Matrix Entropy: metric time alone, and end to end on a real model.

Part 1, metric time alone, on hidden-state-shaped matrices (L = 512 tokens, d = 640, 2048, 4096:
gemma-3-270m's width and two common larger widths; anisotropic Gaussian values with an offset,
since the run time of these algorithms does not depend on the values):

* MNN: ``matrix_nuclear_norm`` (column norms, top min(L, d), O(L d));
* entropy d x d: ``matrix_entropy(side="covariance")``, the authors' route through the d x d
  matrix ``Z^T Z / L`` (here with ``eigvalsh``, eigenvalues only: the cheapest d x d variant, so
  the ratio is a lower bound for code that also computes eigenvectors or an SVD);
* entropy Gram: ``matrix_entropy()``, our default, from the L x L Gram matrix when L < d (same value);
* nuclear: ``nuclear_norm`` (exact, an SVD of Z without vectors).

Part 2, end to end on ``--texts`` texts (default 200 GSM8K test questions) with the default model:
batched extraction (right padding, ``--batch_size``) against one text at a time (the authors'
loop), then each metric over all texts; checks that batched and one-at-a-time give the same
values, and prints the ratios the paper's 8-24x should be compared with.

Usage::

    python bench/mnn_speed.py                         # both parts
    python bench/mnn_speed.py --part metric --repeats 5
    python bench/mnn_speed.py --part e2e --texts 200 --data squad --max_length 256

Data: the data directory is ``$METRICWISE_DATA_DIR`` or ``../shared/data`` beside the repository.
Timings are medians of repeated runs; compare ratios within one run only. On a machine shared
with other jobs, set ``OPENBLAS_NUM_THREADS=1``: OpenBLAS threads that spin while their cores
are busy elsewhere made LAPACK calls here 10-50x slower and erratic.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from metricwise.representation import matrix_entropy, matrix_nuclear_norm, nuclear_norm

DATA_DIR = Path(
    os.environ.get(
        "METRICWISE_DATA_DIR", Path(__file__).resolve().parents[1].parent / "shared" / "data"
    )
)
PAPER = "8-24x (Li et al. 2024, Cerebras-GPT 111M-6.7B, d = 768-4096; 'Matrix Entropy time / Matrix Nuclear-Norm time')"

METHODS: dict[str, Callable[[Any], float]] = {
    "mnn": matrix_nuclear_norm,
    "entropy_dxd": lambda R: matrix_entropy(R, side="covariance"),
    "entropy_gram": matrix_entropy,
    "nuclear": nuclear_norm,
}


def timed(fn: Callable[[], Any], repeats: int, budget: float) -> float:
    """Median seconds of ``fn()``: ``repeats`` runs (fewer once ``budget`` seconds are spent), and
    more, up to 200, while the total stays under one second (fast functions get a stable median)."""
    times: list[float] = []
    while len(times) < 200:
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
        total = sum(times)
        if total > budget or (len(times) >= repeats and total > 1.0):
            break
    return statistics.median(times)


def hidden_like(L: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (
        rng.standard_normal((L, d)) * rng.uniform(0.1, 3.0, size=d) + rng.standard_normal(d)
    ).astype(np.float32)


def part_metric(args: argparse.Namespace) -> dict[str, Any]:
    print(
        f"## Metric time alone (L = {args.length}, float64 computation, median of >= {args.repeats} runs, fewer for runs over 20 s)\n"
    )
    print(
        "| d | MNN ms | entropy d x d (authors) ms | entropy Gram (ours) ms | nuclear (exact) ms | "
        "entropy d x d / MNN | entropy Gram / MNN | d x d / Gram | same entropy |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|:-:|")
    rows = []
    for d in args.widths:
        R = hidden_like(args.length, d, seed=d)
        t = {
            name: timed(lambda fn=fn, R=R: fn(R), args.repeats, budget=20.0)
            for name, fn in METHODS.items()
        }
        same = abs(METHODS["entropy_dxd"](R) - METHODS["entropy_gram"](R)) <= 1e-9 * abs(
            METHODS["entropy_dxd"](R)
        )
        row = {
            "d": d,
            "L": args.length,
            **{f"{k}_s": v for k, v in t.items()},
            "entropy_dxd_over_mnn": t["entropy_dxd"] / t["mnn"],
            "entropy_gram_over_mnn": t["entropy_gram"] / t["mnn"],
            "dxd_over_gram": t["entropy_dxd"] / t["entropy_gram"],
            "same_value": same,
        }
        rows.append(row)
        print(
            f"| {d} | {t['mnn'] * 1e3:.2f} | {t['entropy_dxd'] * 1e3:.1f} | {t['entropy_gram'] * 1e3:.1f} | {t['nuclear'] * 1e3:.1f} | "
            f"{row['entropy_dxd_over_mnn']:.0f}x | {row['entropy_gram_over_mnn']:.0f}x | {row['dxd_over_gram']:.1f}x | {'yes' if same else 'NO'} |",
            flush=True,
        )
    print()
    return {"metric_alone": rows}


def part_e2e(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from metricwise.models import load_hf_causal_lm
    from metricwise.representation import ExtractionStats, iter_hidden_states, load_texts

    texts = load_texts(args.data, limit=args.texts, data_dir=DATA_DIR)
    start = time.perf_counter()
    model, tokenizer = load_hf_causal_lm(args.model)
    load_s = time.perf_counter() - start
    d = model.config.get_text_config().hidden_size

    def extract(batch_size: int, items: list[str]) -> tuple[dict[int, Any], ExtractionStats]:
        stats = ExtractionStats()
        out = {}
        for rec in iter_hidden_states(
            model, tokenizer, items, batch_size=batch_size, max_length=args.max_length, stats=stats
        ):
            if rec.skipped is None:
                out[rec.index] = rec.hidden.clone()
        return out, stats

    extract(
        args.batch_size, texts[: 2 * args.batch_size]
    )  # warm-up (allocator, kernels), not timed
    batched, sb = extract(args.batch_size, texts)
    single, s1 = extract(1, texts)
    mats = [batched[i] for i in sorted(batched)]
    metric_s = {}
    values = {}
    for name, fn in METHODS.items():
        t0 = time.perf_counter()
        values[name] = [fn(R) for R in mats]
        metric_s[name] = time.perf_counter() - t0
    worst = max(
        abs(matrix_nuclear_norm(batched[i]) - matrix_nuclear_norm(single[i]))
        / matrix_nuclear_norm(single[i])
        for i in batched
    )
    worst_e = max(
        abs(matrix_entropy(batched[i]) - matrix_entropy(single[i])) / matrix_entropy(single[i])
        for i in batched
    )
    tokens = sum(R.shape[0] for R in mats)
    lengths = [R.shape[0] for R in mats]
    print(
        f"## End to end: {len(texts)} texts ({args.data}), {args.model} (d = {d}), CPU, {torch.get_num_threads()} torch threads\n"
    )
    print(
        f"model load {load_s:.1f} s; {len(mats)} texts scored, {tokens} tokens in matrices (L median {int(np.median(lengths))}, "
        f"max {max(lengths)}); {sb.padded_tokens - sb.input_tokens} padding positions in batches of {args.batch_size}\n"
    )
    print("| step | seconds | per text ms |")
    print("|---|---:|---:|")
    n = len(mats)
    for label, sec in [
        (f"extraction, batched (batch {args.batch_size}, right padding)", sb.forward_seconds),
        ("extraction, one text at a time (authors)", s1.forward_seconds),
        ("MNN, all texts", metric_s["mnn"]),
        ("entropy d x d (authors), all texts", metric_s["entropy_dxd"]),
        ("entropy Gram (ours), all texts", metric_s["entropy_gram"]),
        ("nuclear norm (exact), all texts", metric_s["nuclear"]),
    ]:
        print(f"| {label} | {sec:.2f} | {sec / n * 1e3:.2f} |")
    ratios = {
        "extraction_one_at_a_time_over_batched": s1.forward_seconds / sb.forward_seconds,
        "metric_alone_entropy_dxd_over_mnn": metric_s["entropy_dxd"] / metric_s["mnn"],
        "metric_alone_entropy_gram_over_mnn": metric_s["entropy_gram"] / metric_s["mnn"],
        "authors_pipeline_entropy_over_mnn": (s1.forward_seconds + metric_s["entropy_dxd"])
        / (s1.forward_seconds + metric_s["mnn"]),
        "our_pipeline_entropy_over_mnn": (sb.forward_seconds + metric_s["entropy_gram"])
        / (sb.forward_seconds + metric_s["mnn"]),
        "authors_entropy_pipeline_over_our_entropy_pipeline": (
            s1.forward_seconds + metric_s["entropy_dxd"]
        )
        / (sb.forward_seconds + metric_s["entropy_gram"]),
    }
    print("\n| ratio | value |")
    print("|---|---:|")
    labels = {
        "extraction_one_at_a_time_over_batched": "extraction: one at a time / batched",
        "metric_alone_entropy_dxd_over_mnn": "metric alone: entropy d x d / MNN",
        "metric_alone_entropy_gram_over_mnn": "metric alone: entropy Gram / MNN",
        "authors_pipeline_entropy_over_mnn": "authors' pipeline (one at a time + d x d): entropy / MNN",
        "our_pipeline_entropy_over_mnn": "our pipeline (batched + Gram): entropy / MNN",
        "authors_entropy_pipeline_over_our_entropy_pipeline": "entropy: authors' pipeline / ours",
    }
    for k, v in ratios.items():
        print(f"| {labels[k]} | {v:.2f}x |")
    print(
        f"\nbatched vs one at a time: max relative difference MNN {worst:.1e}, entropy {worst_e:.1e}"
    )
    print(f"paper: {PAPER}\n")
    return {
        "end_to_end": {
            "model": args.model,
            "data": args.data,
            "texts": len(texts),
            "scored": n,
            "tokens": tokens,
            "d": d,
            "batch_size": args.batch_size,
            "max_length": args.max_length,
            "load_s": load_s,
            "extract_batched_s": sb.forward_seconds,
            "extract_single_s": s1.forward_seconds,
            "metric_s": metric_s,
            "ratios": ratios,
            "max_rel_diff_mnn": worst,
            "max_rel_diff_entropy": worst_e,
        }
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--part", choices=("all", "metric", "e2e"), default="all")
    p.add_argument("--length", type=int, default=512, help="L for the metric-alone part")
    p.add_argument(
        "--widths", type=lambda s: [int(x) for x in s.split(",")], default=[640, 2048, 4096]
    )
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--model", default="gemma-3-270m")
    p.add_argument("--data", default="gsm8k")
    p.add_argument("--texts", type=int, default=200)
    p.add_argument("--max_length", type=int, default=512)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--output", default=None, help="also write the numbers as JSON")
    args = p.parse_args(argv)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    threads = {k: os.environ.get(k, "unset") for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
    print(
        f"# bench/mnn_speed.py  ({os.cpu_count()} CPUs, load average {load:.1f}, numpy {np.__version__}, "
        f"{', '.join(f'{k}={v}' for k, v in threads.items())})\n"
    )
    results: dict[str, Any] = {}
    if args.part in ("all", "metric"):
        results.update(part_metric(args))
    if args.part in ("all", "e2e"):
        results.update(part_e2e(args))
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=2, default=float) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
