"""The ``metricwise mnn`` subcommand: Matrix Nuclear-Norm and Matrix Entropy of models on a corpus.

Building the parser imports nothing heavy; torch and transformers are imported when a model is
loaded. Errors are raised as :class:`metricwise.errors.MetricwiseError` subclasses, which the main
CLI maps to exit codes (2 usage, 1 runtime, 3 backend).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path
from typing import Any

from metricwise.errors import InvalidParameterError

_EPILOG = """\
data: a .jsonl file (one object per line, the text in --field, default "text"), a .json list,
a plain text file (one text per line), or any task of `metricwise tasks`, read from the data
directory (--data_dir or $METRICWISE_DATA_DIR): the distinct values of one field of its evaluated
items (default: context, else question; squad gives its contexts, gsm8k its test questions).

With --responses, FILE is a JSONL of {"prompt", "response"[, "model"]} records: only the response
tokens are scored (read after the prompt), and responses are grouped by --group_field so that the
systems that wrote them can be compared.

Every value is reported beside the same metric on an isotropic Gaussian matrix of the same
(L, d) and the ratio of the two (lower = more compression for all three metrics); compare
models of different widths by the ratio, not the raw value.

examples:
  metricwise mnn --model gemma-3-270m --data gsm8k --limit 200 --output mnn.json
  metricwise mnn --model gemma-3-270m,smollm2-135m-instruct --data squad --limit 200 --max_length 256
  metricwise mnn --model ./my-model.gguf --data corpus.jsonl --field body --metrics mnn
  metricwise mnn --model smollm2-135m-instruct --data answers.jsonl --responses --group_field model
"""


def add_mnn_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``mnn`` subcommand to an argparse subparsers object; returns its parser."""
    from metricwise.cli import HelpFormatter

    p = subparsers.add_parser(
        "mnn",
        help="evaluate models by Matrix Nuclear-Norm / Matrix Entropy of their hidden states",
        description="Score how much a model compresses a corpus in its last hidden states: Matrix "
        "Nuclear-Norm (Li et al. 2024), Matrix Entropy (Wei et al. 2024) and the exact nuclear norm, "
        "with bootstrap intervals and an isotropic Gaussian baseline.",
        epilog=_EPILOG,
        formatter_class=HelpFormatter,
    )
    p.add_argument(
        "--model",
        default="gemma-3-270m",
        help="named model (gemma-3-270m, smollm2-135m-instruct), local transformers dir, .gguf file or hub id; "
        "several comma-separated models are scored one after another on the same texts",
    )
    p.add_argument(
        "--data",
        default=None,
        metavar="FILE|TASK",
        help="texts: a file, or a task (see `metricwise tasks`: squad contexts, gsm8k questions, ...)",
    )
    p.add_argument(
        "--field",
        default=None,
        help="field of JSON records holding the text (default: text; tasks have their own)",
    )
    p.add_argument("--limit", type=int, default=None, help="use the first N texts")
    p.add_argument(
        "--data_dir",
        default=None,
        help="data directory for tasks (default: $METRICWISE_DATA_DIR)",
    )
    p.add_argument(
        "--max_length",
        type=int,
        default=512,
        help="tokens per text fed to the model (BOS included)",
    )
    p.add_argument(
        "--metrics", default="mnn,entropy,nuclear", help="comma-separated: mnn, entropy, nuclear"
    )
    p.add_argument(
        "--batch_size",
        type=int,
        default=8,
        help="texts per forward pass (1 = one at a time, as the authors)",
    )
    bos = p.add_mutually_exclusive_group()
    bos.add_argument(
        "--keep_bos",
        action="store_true",
        default=False,
        help="keep the BOS token's row in the matrix (the authors' code does)",
    )
    bos.add_argument(
        "--drop_bos",
        dest="keep_bos",
        action="store_false",
        help="drop the BOS row (the model still reads BOS); the default",
    )
    p.add_argument(
        "--min_tokens",
        type=int,
        default=2,
        help="skip (and count) texts with fewer matrix rows",
    )
    p.add_argument(
        "--layer",
        type=int,
        default=-1,
        help="hidden states to use: -1 the last (after the final norm), else an index of hidden_states",
    )
    p.add_argument(
        "--precision",
        choices=("float64", "float32"),
        default="float64",
        help="precision of the metric computation",
    )
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1)")
    p.add_argument(
        "--dtype", default=None, help="model weights dtype: float32 (default), bfloat16, float16"
    )
    p.add_argument(
        "--bootstrap",
        type=int,
        default=1000,
        help="bootstrap resamples for the intervals (0 = none)",
    )
    p.add_argument(
        "--no_baseline",
        dest="baseline",
        action="store_false",
        help="skip the Gaussian baseline",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the bootstrap and of the Gaussian baseline"
    )
    p.add_argument(
        "--responses",
        action="store_true",
        help="FILE is a JSONL of {prompt, response} records; score the responses",
    )
    p.add_argument(
        "--group_field",
        default="model",
        help="with --responses: field naming the system that wrote each response",
    )
    p.add_argument(
        "--response_context",
        choices=("prompt", "none"),
        default="prompt",
        help="with --responses: read the prompt before the response, or the response alone",
    )
    p.add_argument(
        "--output",
        "-o",
        default=None,
        help="write the results (with per-text values) as JSON to this path",
    )
    p.add_argument(
        "--list_models",
        action="store_true",
        help="list the named models and exit",
    )
    p.add_argument("--quiet", "-q", action="store_true", help="no progress messages on stderr")
    p.set_defaults(handler=run_mnn)
    return p


def _log(args: argparse.Namespace, message: str) -> None:
    if not getattr(args, "quiet", False):
        print(f"metricwise mnn: {message}", file=sys.stderr, flush=True)


def _check_args(args: argparse.Namespace) -> None:
    for name, lo in (
        ("max_length", 2),
        ("batch_size", 1),
        ("min_tokens", 2),
        ("bootstrap", 0),
        ("seed", 0),
    ):
        value = getattr(args, name)
        if value < lo:
            raise InvalidParameterError(
                f"The '--{name}' option must be an int >= {lo}. Got {value} instead."
            )
    if args.limit is not None and args.limit < 1:
        raise InvalidParameterError(
            f"The '--limit' option must be an int >= 1. Got {args.limit} instead."
        )
    if not args.data:
        raise InvalidParameterError(
            "The '--data' option is required: a file (.jsonl, .json, .txt) or a task (see `metricwise tasks`). Got nothing instead."
        )


def run_mnn(args: argparse.Namespace) -> int:
    """Run ``metricwise mnn`` with parsed arguments; prints a markdown table, optionally writes JSON.

    Returns 0; raises :class:`metricwise.errors.MetricwiseError` subclasses on failure.
    """
    from metricwise.models import describe_models, load_hf_causal_lm, resolve_model
    from metricwise.representation.corpus import (
        format_table,
        load_responses,
        load_texts,
        paired_difference,
        score_responses,
        score_texts,
    )
    from metricwise.representation.mnn import resolve_metric_names

    if args.list_models:
        print(describe_models())
        return 0
    _check_args(args)
    metrics = resolve_metric_names(args.metrics, "metricwise mnn")
    models = [m.strip() for m in str(args.model).split(",") if m.strip()]
    if not models:
        raise InvalidParameterError(
            f"The '--model' option must name at least one model. Got {args.model!r} instead."
        )
    resolved = [resolve_model(m) for m in models]  # fail on a bad name before loading anything

    records: list[dict[str, Any]] = []
    texts: list[str] = []
    if args.responses:
        records = load_responses(args.data, limit=args.limit)
        data_name = Path(args.data).name
        _log(args, f"{len(records)} responses from {args.data}")
    else:
        texts = load_texts(args.data, field=args.field, limit=args.limit, data_dir=args.data_dir)
        data_name = str(args.data) if not Path(args.data).is_file() else Path(args.data).name
        if args.field:
            data_name += f":{args.field}"
        _log(args, f"{len(texts)} texts from {args.data}")

    common = {
        "metrics": metrics,
        "batch_size": args.batch_size,
        "max_length": args.max_length,
        "keep_bos": args.keep_bos,
        "min_tokens": args.min_tokens,
        "layer": args.layer,
        "baseline": args.baseline,
        "dtype": args.precision,
        "n_bootstrap": args.bootstrap,
        "seed": args.seed,
        "data_name": data_name,
        "progress": not args.quiet and sys.stderr.isatty(),
    }
    scores = []
    started = time.perf_counter()
    for spec in resolved:
        name = spec.display_name
        _log(args, f"loading {name} on {args.device} ...")
        t0 = time.perf_counter()
        model, tokenizer = load_hf_causal_lm(spec, device=args.device, dtype=args.dtype)
        _log(
            args, f"loaded {name} in {time.perf_counter() - t0:.1f} s; extracting hidden states ..."
        )
        if args.responses:
            scores.extend(
                score_responses(
                    model,
                    tokenizer,
                    records,
                    group_field=args.group_field or None,
                    context=args.response_context,
                    model_name=name,
                    **common,
                )
            )
        else:
            scores.append(score_texts(model, tokenizer, texts, model_name=name, **common))
        _log(args, f"{name} done ({scores[-1].extraction_seconds:.1f} s in forward passes)")
        del model, tokenizer
        gc.collect()

    table = format_table(scores)
    print(table)
    comparisons = []
    if len(scores) > 1 and args.baseline:
        for other in scores[1:]:
            for m in metrics:
                d = paired_difference(
                    other, scores[0], m, ratio=True, n_bootstrap=args.bootstrap, seed=args.seed
                )
                d.update({"a": _label(other), "b": _label(scores[0])})
                comparisons.append(d)
        print()
        print("Paired difference of per-text ratios (row minus first), over texts both scored:")
        print()
        print("| A | B | Metric | N | mean(A - B) | 95% CI |")
        print("|---|---|---|---:|---:|---|")
        for d in comparisons:
            print(
                f"| {d['a']} | {d['b']} | {d['metric']} | {d['n']} | {d['mean']:+.4f} | [{d['ci'][0]:+.4f}, {d['ci'][1]:+.4f}] |"
            )
    skipped = {k: v for s in scores for k, v in s.skipped.items() if v}
    if skipped:
        print()
        print(
            "Skipped texts: "
            + "; ".join(f"{_label(s)}: {dict(s.skipped)}" for s in scores if s.skipped)
        )
    if args.output:
        payload = {
            "argv": list(sys.argv),
            "options": {k: v for k, v in sorted(vars(args).items()) if k != "handler"},
            "seconds": round(time.perf_counter() - started, 2),
            "results": [s.to_dict() for s in scores],
            "comparisons": comparisons,
            "table": table,
        }
        out = Path(args.output)
        if out.parent and not out.parent.exists():
            out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(payload, indent=2, default=float) + "\n", encoding="utf-8")
        _log(args, f"wrote {out}")
    return 0


def _label(score: Any) -> str:
    return score.model if score.group is None else f"{score.model} / {score.group}"
