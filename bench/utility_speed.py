"""MBR with ``bertscore``: metricwise against a per-pair loop over the bert-score package.

N real sentences (STS-B dev, both sides of the first pairs, distinct) are one sample set; MBR
picks the sentence with the highest mean BERTScore F1 against all N (uniform weights, the
sentence itself included, as ``decide`` does). Two ways, same model (the packaged
all-MiniLM-L6-v2) and layer (6, its last):

* metricwise: ``decide(samples, "bertscore")``: each distinct sentence encoded once (the cache
  cleared first, so nothing is reused from an earlier run), then one vectorised N x N matrix;
* the per-pair loop: ``bert_score.BERTScorer(...).score([c], [r])`` for each of the N x N
  (candidate, sample) pairs, the model loaded once beforehand (its load is not timed), then the
  argmax of each row's mean. This is how a utility that calls the package per pair runs MBR.

Prints both times, the ratio, the largest difference between the two matrices and whether the
pick is the same. torch and BLAS are pinned to ``--threads`` threads (1 by default) for both.

Usage::

    python bench/utility_speed.py               # N = 64 (4,096 pairs; a few minutes on a CPU)
    python bench/utility_speed.py --quick       # N = 16, a smoke run
    python bench/utility_speed.py -n 64 --device cuda
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def pinned(threads: int) -> Iterator[str]:
    import torch

    torch.set_num_threads(threads)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield f"torch {threads} thread(s); threadpoolctl not installed: BLAS as the environment sets it"
        return
    with threadpool_limits(threads):
        yield f"torch and BLAS pinned to {threads} thread(s)"


def stsb_sentences(n: int) -> list[str]:
    data = Path(os.environ.get("METRICWISE_DATA_DIR", REPO.parent / "shared" / "data"))
    path = data / "stsb" / "sts-dev.csv"
    if not path.is_file():
        sys.exit(f"utility_speed: {path} not found; set METRICWISE_DATA_DIR")
    with open(path, encoding="utf-8") as fh:
        rows = [r for r in csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE) if len(r) >= 7]
    out: list[str] = []
    for row in rows:
        for s in (row[5], row[6]):
            if s not in out:
                out.append(s)
        if len(out) >= n:
            return out[:n]
    sys.exit(f"utility_speed: only {len(out)} distinct sentences in {path}")


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("-n", type=int, default=64, help="samples per set (default 64)")
    p.add_argument("--quick", action="store_true", help="N = 16: a smoke run")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    n = 16 if args.quick else args.n
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

    import bert_score

    from metricwise import decide, metrics
    from metricwise.metrics import model_based
    from metricwise.models import packaged_model_dir

    samples = stsb_sentences(n)
    layer = 6
    with pinned(args.threads) as how:
        # Both models load before any timing; metricwise's weights load on first use.
        metric = metrics.get("bertscore", num_layers=layer, device=args.device)
        metric.pairwise(["warm up"], ["warm up"])
        scorer = bert_score.BERTScorer(
            model_type=str(packaged_model_dir("all-MiniLM-L6-v2")),
            num_layers=layer,
            device=args.device,
            nthreads=0,
        )
        scorer.score(["warm up"], ["warm up"])

        model_based.CACHE.clear()
        start = time.perf_counter()
        decision = decide(samples, metric)
        ours = time.perf_counter() - start
        model_based.CACHE.clear()
        matrix = metric.pairwise(samples, samples)

        start = time.perf_counter()
        loop = np.zeros((n, n))
        for i, c in enumerate(samples):
            for j, r in enumerate(samples):
                loop[i, j] = scorer.score([c], [r])[2].item()
        theirs = time.perf_counter() - start

    pick_loop = samples[int(np.argmax(loop.mean(axis=1)))]
    print(f"MBR with bertscore (all-MiniLM-L6-v2, layer {layer}, F1) over N = {n} STS-B sentences")
    print(f"{how}; device {args.device}")
    print()
    print("| method | seconds per decision | speed-up |")
    print("|---|---:|---:|")
    print(f"| bert-score per pair ({n * n} calls of BERTScorer.score) | {theirs:.3f} | 1.0x |")
    print(f"| metricwise decide(samples, 'bertscore') | {ours:.3f} | {theirs / ours:.1f}x |")
    print()
    print(f"largest |difference| between the two F1 matrices: {np.abs(matrix - loop).max():.2e}")
    same = decision.output == pick_loop
    print(f"same pick: {same} ({decision.output!r}; expected F1 {decision.expected_utility:.6f})")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
