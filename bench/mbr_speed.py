"""MBR decision speed: metricwise's vectorised pairwise matrices against per-pair reference loops.

For each metric and each number of samples N, builds candidate sets from real text (STS-B
sentence pairs for chrF, BLEU and ROUGE-L; SQuAD v1.1 answers for token F1) with random
perturbations (word drops, swaps, duplications, substitutions, and unchanged copies, so that the
sets overlap realistically and contain duplicates), then times

* metricwise: ``metricwise.decide(samples, metric, rule="mbr")`` (dedupe, one pairwise matrix
  over the distinct samples, weights = counts);
* the per-pair loop: every distinct candidate against every one of the N samples with the
  reference implementation (a reused ``sacrebleu.metrics.BLEU(effective_order=True)`` /
  ``CHRF()`` object's ``sentence_score``, rouge-score's ``RougeScorer(["rougeL"]).score``, and
  the SQuAD v1.1 script's F1 written out below), then the argmax of the mean utility;

checks that both pick a candidate of the same expected utility (to 1e-9; ties may pick different
strings) and prints decisions per second and the ratio as a markdown table. When the per-pair
loop would exceed ``--max-pairs`` pairs it is timed on a random subset of candidate rows and
extrapolated (marked); those rows are checked against metricwise's matrix instead.

A second part, "MBR at large N", decides over N = 1024 real sentences per sample set (three
families: windows of 1024 distinct STS-B training sentences, windows of 1024 distinct SQuAD
context sentences, and paraphrase sets of N perturbed copies of 2-4 modes as above) and prints

* exact MBR (``decide(samples, metric)``) for chrF, BLEU and token F1, and for chrF the fastest
  chrF MBR kernel on PyPI, ``fastchrf.pairwise_chrf`` (Rust; single-threaded here), as the
  baseline: seconds per decision, the speed-up, and a check that both pick a candidate of the
  same expected utility (fastchrf's argmax scored with metricwise's exact matrix, to 1e-6);
* the approximations ``decide(..., mbr="prune")`` (Cheng and Vlachos 2023; any metric) and
  ``mbr="aggregate"`` (DeNero et al. 2009, Vamvas and Sennrich 2024; chrF) and
  ``mbr="aggregate_to_fine"`` (the 32 best against the aggregate, then exact; chrF) against exact MBR
  timed side by side on the same sets: speed ratio, share of sets with the same pick, mean
  loss of expected utility, and evaluations as a share of exact MBR's H x R.

All timings pin BLAS (and fastchrf's thread pool) to one thread. Timings on a shared machine
are noisy: compare the ratios of one run, not numbers across runs.

Usage::

    python bench/mbr_speed.py                      # both parts: N = 16..1024, then N = 1024
    python bench/mbr_speed.py --quick              # a smoke run in seconds (large part at N=256)
    python bench/mbr_speed.py --sizes 256 --metrics chrf,bleu --repeats 3
    python bench/mbr_speed.py --only large --large-sets 10 --fastchrf-sets 2
"""

from __future__ import annotations

import os

# fastchrf parallelises with rayon: one thread, like everything else here (set before import).
os.environ.setdefault("RAYON_NUM_THREADS", "1")

import argparse
import csv
import json
import random
import re
import string
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

import metricwise
from metricwise import metrics

DATA_DIR = Path(
    os.environ.get(
        "METRICWISE_DATA_DIR", Path(__file__).resolve().parents[1].parent / "shared" / "data"
    )
)
METRICS = ("chrf", "bleu", "token_f1", "rouge_l")


# -- data -------------------------------------------------------------------------------------
def load_stsb_pairs(path: Path) -> list[tuple[str, str]]:
    """(s1, s2) of STS-B dev pairs scored >= 3 (paraphrase-like: two modes of one answer)."""
    pairs = []
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
            if len(row) >= 7 and float(row[4]) >= 3.0:
                pairs.append((row[5], row[6]))
    return pairs


def load_squad_modes(path: Path) -> list[list[str]]:
    """Per question: its distinct gold answers, then the context sentence holding the first one."""
    data = json.loads(path.read_text(encoding="utf-8"))["data"]
    out = []
    for article in data:
        for para in article["paragraphs"]:
            sentences = re.split(r"(?<=[.!?])\s+", para["context"])
            for qa in para["qas"]:
                answers = list(dict.fromkeys(a["text"] for a in qa["answers"]))
                verbose = next((s for s in sentences if answers[0] in s), None)
                out.append([*answers, verbose] if verbose else answers)
    return out


def perturb(text: str, rng: random.Random, vocabulary: list[str]) -> str:
    """One sample: unchanged (a duplicate) a quarter of the time, else 1-3 word-level edits."""
    words = text.split()
    if not words or rng.random() < 0.25:
        return text
    for _ in range(rng.randint(1, 3)):
        op = rng.random()
        i = rng.randrange(len(words))
        if op < 0.3 and len(words) > 1:
            del words[i]
        elif op < 0.55 and len(words) > 1:
            j = min(i + 1, len(words) - 1)
            words[i], words[j] = words[j], words[i]
        elif op < 0.8:
            words.insert(i, words[i])
        else:
            words[i] = rng.choice(vocabulary)
    return " ".join(words)


def make_sample_sets(metric: str, n: int, count: int, seed: int) -> list[list[str]]:
    """``count`` sample sets of size ``n``: perturbed copies of 2-4 modes, the first most likely."""
    rng = random.Random(f"{seed}-{metric}-{n}")
    if metric == "token_f1":
        groups = load_squad_modes(DATA_DIR / "squad" / "dev-v1.1.json")
    else:
        groups = [list(p) for p in load_stsb_pairs(DATA_DIR / "stsb" / "sts-dev.csv")]
    vocabulary = sorted({w for g in groups[:2000] for s in g for w in s.split()})
    sets = []
    for modes in rng.sample(groups, count):
        probs = np.array([2.0**-k for k in range(len(modes))])
        probs /= probs.sum()
        picks = rng.choices(range(len(modes)), weights=probs.tolist(), k=n)
        sets.append([perturb(modes[k], rng, vocabulary) for k in picks])
    return sets


# -- reference per-pair utilities -------------------------------------------------------------
def squad_normalize(s: str) -> str:
    """``normalize_answer`` of the official SQuAD v1.1 evaluation script."""

    def remove_articles(text: str) -> str:
        return re.sub(r"\b(a|an|the)\b", " ", text)

    def white_space_fix(text: str) -> str:
        return " ".join(text.split())

    def remove_punc(text: str) -> str:
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    return white_space_fix(remove_articles(remove_punc(s.lower())))


def squad_f1(prediction: str, ground_truth: str) -> float:
    """``f1_score`` of the official SQuAD v1.1 evaluation script (Counter intersection)."""
    prediction_tokens = squad_normalize(prediction).split()
    ground_truth_tokens = squad_normalize(ground_truth).split()
    common = Counter(prediction_tokens) & Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(prediction_tokens)
    recall = 1.0 * num_same / len(ground_truth_tokens)
    return (2 * precision * recall) / (precision + recall)


def reference_utility(metric: str) -> tuple[str, Callable[[str, str], float]]:
    """(label, u(candidate, reference)) of the reference implementation."""
    if metric == "bleu":
        from sacrebleu.metrics import BLEU

        bleu = BLEU(effective_order=True)
        return "sacrebleu BLEU.sentence_score", lambda c, r: bleu.sentence_score(c, [r]).score
    if metric == "chrf":
        from sacrebleu.metrics import CHRF

        chrf = CHRF()
        return "sacrebleu CHRF.sentence_score", lambda c, r: chrf.sentence_score(c, [r]).score
    if metric == "rouge_l":
        from rouge_score import rouge_scorer

        scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
        return "rouge-score RougeScorer", lambda c, r: scorer.score(r, c)["rougeL"].fmeasure
    if metric == "token_f1":
        return "SQuAD v1.1 f1_score", squad_f1
    raise SystemExit(f"unknown metric {metric!r}; choose from {', '.join(METRICS)}")


# -- timing -----------------------------------------------------------------------------------
def metricwise_decision(samples: list[str], metric: metrics.Metric) -> tuple[str, float]:
    """(choice, expected utility) from ``metricwise.decide``, or the plain argmax without it."""
    decide = getattr(metricwise, "decide", None)
    if decide is not None:
        decision = decide(samples, metric, rule="mbr")
        return decision.output, float(decision.expected_utility)
    distinct = list(dict.fromkeys(samples))
    expected = metric.pairwise(distinct, samples).mean(axis=1)
    best = int(np.argmax(expected))
    return distinct[best], float(expected[best])


def run_case(metric_name: str, n: int, args: argparse.Namespace) -> dict[str, Any]:
    metric = metrics.get(metric_name)
    label, utility = reference_utility(metric_name)
    sets = make_sample_sets(metric_name, n, args.repeats, args.seed)
    rng = random.Random(args.seed)

    start = time.perf_counter()
    ours = [metricwise_decision(s, metric) for s in sets]
    ours_time = time.perf_counter() - start

    base_time = 0.0
    extrapolated = False
    distinct_total = 0
    for samples, (choice, expected) in zip(sets, ours, strict=True):
        distinct = list(dict.fromkeys(samples))
        distinct_total += len(distinct)
        rows = list(range(len(distinct)))
        if len(distinct) * n > args.max_pairs:
            extrapolated = True
            rows = sorted(rng.sample(rows, max(1, args.max_pairs // n)))
        t0 = time.perf_counter()
        table = np.array(
            [[utility(distinct[i], y) for y in samples] for i in rows], dtype=np.float64
        )
        expected_ref = table.mean(axis=1)
        best = int(np.argmax(expected_ref))
        elapsed = time.perf_counter() - t0
        base_time += elapsed * len(distinct) / len(rows)
        if len(rows) == len(distinct):
            # Both choices must be optimal under the reference utilities (ties may differ).
            ours_ref = float(expected_ref[distinct.index(choice)])
            if abs(ours_ref - expected_ref[best]) > 1e-9 or abs(ours_ref - expected) > 1e-9:
                raise SystemExit(
                    f"{metric_name} N={n}: metricwise chose {choice!r} (expected utility {expected!r}, "
                    f"reference {ours_ref!r}) but the best reference expected utility is "
                    f"{expected_ref[best]!r} for {distinct[best]!r}"
                )
        else:
            ours_rows = metric.pairwise([distinct[i] for i in rows], samples)
            if not np.allclose(ours_rows, table, rtol=0, atol=1e-9):
                raise SystemExit(f"{metric_name} N={n}: pairwise rows differ from {label}")
    ours_dps = len(sets) / ours_time
    base_dps = len(sets) / base_time
    return {
        "metric": metric_name,
        "n": n,
        "distinct": distinct_total / len(sets),
        "ours_dps": ours_dps,
        "base_dps": base_dps,
        "ratio": ours_dps / base_dps,
        "extrapolated": extrapolated,
        "baseline": label,
    }


# -- MBR at large N ------------------------------------------------------------------------------
LARGE_METRICS = ("chrf", "bleu", "token_f1")
LARGE_FAMILIES = ("stsb", "squad", "paraphrase")


@contextmanager
def one_blas_thread() -> Iterator[str]:
    """Pin BLAS to one thread (threadpoolctl) for the timed code; yields how it was pinned."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield "threadpoolctl not installed: BLAS threads as set by the environment"
        return
    with threadpool_limits(1):
        yield "BLAS pinned to 1 thread (threadpoolctl)"


def distinct_windows(sentences: list[str], n: int, count: int) -> list[list[str]]:
    """Up to ``count`` consecutive windows of ``n`` distinct sentences.

    Sentences without a letter or digit ("...") are left out: decide would exclude them, and
    the baselines must see the same samples.
    """
    unique = list(dict.fromkeys(s.strip() for s in sentences if any(c.isalnum() for c in s)))
    return [unique[i * n : (i + 1) * n] for i in range(min(count, len(unique) // n))]


def large_sample_sets(family: str, metric: str, n: int, count: int, seed: int) -> list[list[str]]:
    """``count`` real sample sets of size ``n`` of one family (see the module docstring)."""
    if family == "stsb":
        sentences = []
        with open(DATA_DIR / "stsb" / "sts-train.csv", newline="", encoding="utf-8") as f:
            for row in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
                if len(row) >= 7:
                    sentences += [row[5], row[6]]
        return distinct_windows(sentences, n, count)
    if family == "squad":
        data = json.loads((DATA_DIR / "squad" / "dev-v1.1.json").read_text(encoding="utf-8"))
        sentences = [
            s
            for article in data["data"]
            for para in article["paragraphs"]
            for s in re.split(r"(?<=[.!?])\s+", para["context"])
        ]
        return distinct_windows(sentences, n, count)
    # Without the few samples decide would leave out (no letter or digit), so that every
    # method and baseline sees the same samples.
    sets = make_sample_sets(metric, n, count, seed)
    return [[x for x in samples if any(c.isalnum() for c in x)] for samples in sets]


def exact_expected(metric: metrics.Metric, samples: list[str]) -> tuple[list[str], np.ndarray]:
    """Distinct candidates and their exact expected utility against all samples (uniform)."""
    distinct = list(dict.fromkeys(samples))
    return distinct, metric.pairwise(distinct, samples).mean(axis=1)


def fastchrf_choice(samples: list[str]) -> tuple[str, float] | None:
    """(choice, seconds) of fastchrf's pairwise chrF MBR, or None when it is not installed."""
    try:
        import fastchrf
    except ImportError:
        return None
    distinct = list(dict.fromkeys(samples))
    start = time.perf_counter()
    table = np.asarray(fastchrf.pairwise_chrf([distinct], [samples])[0])
    best = int(np.argmax(table.mean(axis=1)))
    return distinct[best], time.perf_counter() - start


def run_large(args: argparse.Namespace) -> None:
    """The "MBR at large N" part: exact MBR against fastchrf, and the approximations."""
    have_fastchrf = fastchrf_choice(["a", "b"]) is not None
    print(f"\n## MBR at large N (N = {args.large_n}; {args.large_sets} sample sets per family)\n")
    exact_rows: list[str] = []
    approx_rows: list[str] = []
    for name in [m for m in args.metrics if m in LARGE_METRICS]:
        metric = metrics.get(name)
        for family in LARGE_FAMILIES:
            sets = large_sample_sets(family, name, args.large_n, args.large_sets, args.seed)
            if not sets:
                continue
            exact_rows.append(large_exact_row(name, metric, family, sets, args, have_fastchrf))
            methods = ["prune", "aggregate", "aggregate_to_fine"] if name == "chrf" else ["prune"]
            for method in methods:
                approx_rows.append(large_approx_row(name, metric, family, sets, method))
    print(
        "| metric | sample sets | sets | distinct | exact s/decision | fastchrf pairwise_chrf "
        "s/decision | speed-up vs fastchrf | same expected utility |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---|")
    print("\n".join(exact_rows))
    if not have_fastchrf:
        print("\nfastchrf: not installed, its rows are skipped (pip install fastchrf).")
    print(
        "\n| metric | sample sets | method | sets | s/decision | speed-up vs exact | same pick "
        "| mean loss of expected utility (relative) | evaluations / exact |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    print("\n".join(approx_rows))
    print(
        "\nExact: decide(samples, metric). fastchrf: pairwise_chrf over the distinct samples "
        "against all samples, then the argmax of the mean; its choice is scored with "
        "metricwise's exact expected utility. Approximations: decide(samples, metric, mbr=...), "
        "timed alternately with exact on each set; speed-up = total exact time / total "
        "approximate time; loss = exact best expected utility - expected utility of the "
        "approximate pick (0 when the pick is the same or tied)."
    )


def large_exact_row(
    name: str,
    metric: metrics.Metric,
    family: str,
    sets: list[list[str]],
    args: argparse.Namespace,
    have_fastchrf: bool,
) -> str:
    """One row of the exact table: metricwise's exact MBR, and fastchrf's for chrF."""
    ours = ours_compared = theirs = 0.0
    compared = 0
    same = True
    for k, samples in enumerate(sets):
        start = time.perf_counter()
        decision = metricwise.decide(samples, metric)
        seconds = time.perf_counter() - start
        ours += seconds
        if decision.n_valid != len(samples):
            raise SystemExit(f"{name} {family}: decide left out samples ({decision.excluded})")
        if name == "chrf" and have_fastchrf and k < args.fastchrf_sets:
            ours_compared += seconds
            result = fastchrf_choice(samples)
            assert result is not None
            choice, seconds = result
            theirs += seconds
            compared += 1
            distinct, expected = exact_expected(metric, samples)
            theirs_eu = float(expected[distinct.index(choice)])
            ours_eu = float(decision.expected_utility)
            same &= abs(theirs_eu - ours_eu) <= 1e-6 * max(1.0, abs(ours_eu))
    distinct_mean = np.mean([len(set(s)) for s in sets])
    ours_per = ours / len(sets)
    if compared:
        # The speed-up compares the same sets: metricwise's time on the compared sets only.
        fast = (
            f"{theirs / compared:.3g} ({compared} sets) | {theirs / ours_compared:.1f}x | "
            f"{'yes' if same else 'NO'}"
        )
    else:
        fast = "n/a | n/a | n/a"
    return f"| {name} | {family} | {len(sets)} | {distinct_mean:.0f} | {ours_per:.3g} | {fast} |"


def large_approx_row(
    name: str, metric: metrics.Metric, family: str, sets: list[list[str]], method: str
) -> str:
    """One row of the approximation table: ``method`` against exact MBR on the same sets."""
    exact_time = approx_time = 0.0
    same = 0
    losses: list[float] = []
    relative: list[float] = []
    evaluations: list[float] = []
    for samples in sets:
        start = time.perf_counter()
        exact = metricwise.decide(samples, metric)
        exact_time += time.perf_counter() - start
        start = time.perf_counter()
        approx = metricwise.decide(samples, metric, mbr=method)
        approx_time += time.perf_counter() - start
        same += approx.output == exact.output
        best, got = float(exact.expected_utility), float(approx.expected_utility)
        losses.append(max(0.0, best - got))
        relative.append(max(0.0, best - got) / abs(best) if best else 0.0)
        stats = approx.mbr
        evaluations.append(stats.evaluations / (stats.n_hypotheses * stats.n_references))
    return (
        f"| {name} | {family} | {method} | {len(sets)} | {approx_time / len(sets):.3g} | "
        f"{exact_time / approx_time:.1f}x | {same}/{len(sets)} ({100 * same / len(sets):.0f}%) | "
        f"{np.mean(losses):.3g} ({100 * np.mean(relative):.2f}%) | {100 * np.mean(evaluations):.1f}% |"
    )


def mbrs_note() -> str:
    try:
        import mbrs  # noqa: F401
    except ImportError:
        return "mbrs: not installed, not compared (install `mbrs` to add it)."
    return "mbrs: importable, but no comparison is implemented in this benchmark yet."


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default=None, help="comma-separated N (default 16,64,256,1024)")
    parser.add_argument(
        "--metrics", default=",".join(METRICS), help=f"comma-separated, from {','.join(METRICS)}"
    )
    parser.add_argument(
        "--repeats", type=int, default=None, help="sample sets (decisions) per cell (default 3)"
    )
    parser.add_argument(
        "--max-pairs",
        type=int,
        default=None,
        help="per-pair loop size before extrapolating (default 70000)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="N = 16, 64, 256; 2 decisions; extrapolate beyond 8000 pairs; large part at N = 256",
    )
    parser.add_argument(
        "--only", choices=("small", "large"), default=None, help="run one part only"
    )
    parser.add_argument(
        "--large-n", type=int, default=None, help="N of the large part (default 1024)"
    )
    parser.add_argument(
        "--large-sets",
        type=int,
        default=None,
        help="sample sets per family in the large part (default 8)",
    )
    parser.add_argument(
        "--fastchrf-sets",
        type=int,
        default=None,
        help="sets per family also decided by fastchrf (default 2; about 8 s each at N=1024)",
    )
    args = parser.parse_args(argv)
    sizes_default, repeats_default, pairs_default = (
        ("16,64,256", 2, 8000) if args.quick else ("16,64,256,1024", 3, 70000)
    )
    args.large_n = args.large_n or (256 if args.quick else 1024)
    args.large_sets = args.large_sets or (2 if args.quick else 8)
    args.fastchrf_sets = (
        args.fastchrf_sets if args.fastchrf_sets is not None else (1 if args.quick else 2)
    )
    args.sizes = [int(x) for x in (args.sizes or sizes_default).split(",")]
    args.repeats = args.repeats or repeats_default
    args.max_pairs = args.max_pairs or pairs_default
    names = [m.strip() for m in args.metrics.split(",") if m.strip()]
    for name in names:
        if name not in METRICS:
            parser.error(f"unknown metric {name!r}; choose from {', '.join(METRICS)}")
    args.metrics = names
    if not DATA_DIR.is_dir():
        print(f"data directory {DATA_DIR} not found; set METRICWISE_DATA_DIR", file=sys.stderr)
        return 2

    print(f"# MBR decision speed (metricwise {metricwise.__version__}, numpy {np.__version__})\n")
    print(f"{args.repeats} decisions per cell; seed {args.seed}; data {DATA_DIR}")
    threads = {k: os.environ.get(k, "unset") for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    print(f"{os.cpu_count()} CPUs, load average {load}; BLAS threads: {threads}")
    with one_blas_thread() as blas:
        rayon = os.environ.get("RAYON_NUM_THREADS", "unset")
        print(f"{blas}; fastchrf: RAYON_NUM_THREADS={rayon}\n")
        if args.only != "large":
            run_small(args, names)
        if args.only != "small":
            run_large(args)
    return 0


def run_small(args: argparse.Namespace, names: list[str]) -> None:
    """The first part: metricwise's MBR against per-pair loops of the reference metrics."""
    print(
        "| metric | N | distinct | metricwise dec/s | per-pair loop dec/s | speed-up | per-pair baseline |"
    )
    print("|---|---:|---:|---:|---:|---:|---|")
    for name in names:
        for n in args.sizes:
            r = run_case(name, n, args)
            mark = " (extrapolated)" if r["extrapolated"] else ""
            print(
                f"| {name} | {n} | {r['distinct']:.0f} | {r['ours_dps']:.3g} | {r['base_dps']:.3g}{mark} | "
                f"{r['ratio']:.1f}x | {r['baseline']} |",
                flush=True,
            )
    print()
    print(
        "Per-pair loop: every distinct candidate against all N samples with the reference "
        "implementation, then the argmax of the mean. metricwise: metricwise.decide(samples, "
        "metric, rule='mbr'). Extrapolated: timed on a random subset of candidate rows (whose "
        "values were checked against metricwise's matrix) and scaled to all rows."
    )
    print(mbrs_note())


if __name__ == "__main__":
    raise SystemExit(main())
