"""The ``metricwise`` command line.

Exit codes: 0 success, 2 bad usage or malformed input, 1 runtime failure, 3 backend failure.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterator, Sequence
from typing import IO, Any

from metricwise.errors import InvalidParameterError, MetricwiseError

EXIT_OK, EXIT_RUNTIME, EXIT_USAGE, EXIT_BACKEND = 0, 1, 2, 3

_DECIDE_EXAMPLE = """\
input: one JSON object per line,
  {"id": "q1", "samples": ["3.5", "4", "4", "I think 3"], "logprobs": [-2.1, -1.3, -1.3, -4.0]}
or the output of `metricwise sample` (a "candidates" list with text, logp, logq, finish_reason).

examples:
  metricwise decide --metric squared_error samples.jsonl
  metricwise decide --metric pinball --metric-args tau=0.9 samples.jsonl
  metricwise decide --metric chrf --weights model --output decisions.jsonl samples.jsonl
  echo '{"id": 1, "samples": ["Paris", "paris", "Lyon"]}' | metricwise decide --metric exact_match -

output: one JSON decision per input line, with its id, output, rule, expected_loss or
expected_utility, n_valid / n_total (the parse rate) and the support (value, weight, count).
"""


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="metricwise",
        description="Metric-aware LLM inference and evaluation: return the answer that is "
        "Bayes-optimal for your metric from N sampled answers.",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    d = sub.add_parser(
        "decide",
        help="pick the Bayes-optimal answer for each line of sampled answers",
        description="Read sampled answers (JSONL) and write one Bayes-optimal decision per line.",
        epilog=_DECIDE_EXAMPLE,
        formatter_class=_HelpFormatter,
    )
    d.add_argument("input", metavar="FILE|-", help="JSONL file of samples, or - for standard input")
    d.add_argument("--metric", required=True, help="metric name (see `metricwise metrics`)")
    d.add_argument("--rule", default=None, help="override the rule: mode, mean, median, quantile, grid, mbr (default: the metric's closed form, else mbr)")
    d.add_argument("--weights", default="uniform", help="uniform, model (softmax of logprobs), or importance (exp(logp - logq))")
    d.add_argument("--weight-temperature", "--weight_temperature", dest="weight_temperature", type=float, default=1.0, help="temperature of the 'model' weighting")
    d.add_argument("--metric-args", "--metric_args", dest="metric_args", action="append", default=[], metavar="K=V[,K=V]", help="metric arguments, e.g. tau=0.9 for pinball (repeatable)")
    d.add_argument("--valid-range", "--valid_range", dest="valid_range", default=None, metavar="LO,HI", help="clip parsed numbers into [LO, HI], e.g. 0,5")
    d.add_argument("--grid", default=None, metavar="V1,V2,...", help="allowed values for the grid rule (default: the integers of --valid-range)")
    d.add_argument("--extractor", default=None, help="extract the answer from each text first: number, number:last, answer, first_line, regex:PATTERN")
    d.add_argument("--include-incomplete", "--include_incomplete", dest="include_incomplete", action="store_true", help="keep candidates cut off by max_tokens or a guard")
    d.add_argument("--max-support", "--max_support", dest="max_support", type=int, default=20, help="support entries written per decision (0 for none, -1 for all)")
    d.add_argument("--skip-invalid", "--skip_invalid", dest="skip_invalid", action="store_true", help="report malformed lines on stderr and go on, instead of stopping with exit code 2")
    d.add_argument("--output", "-o", default="-", help="where to write decisions (- for standard output)")
    d.set_defaults(handler=_run_decide)

    m = sub.add_parser("metrics", help="list the registered metrics", formatter_class=_HelpFormatter)
    m.set_defaults(handler=_run_metrics)

    _add_optional_subcommands(sub)
    return parser


def _add_optional_subcommands(sub: Any) -> None:
    """Subcommands whose modules may pull optional extras; their parsers import nothing heavy."""
    try:
        from metricwise.representation.cli import add_mnn_parser
    except ModuleNotFoundError as exc:
        if exc.name is None or not exc.name.startswith("metricwise"):
            raise
    else:
        add_mnn_parser(sub)


def _version() -> str:
    from metricwise import __version__

    return __version__


# ---------------------------------------------------------------------------------------------
# decide


def _parse_metric_args(items: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in (part.strip() for group in items for part in group.split(",") if part.strip()):
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise InvalidParameterError(f"The '--metric-args' option takes K=V pairs. Got {item!r} instead.")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def _parse_floats(text: str | None, option: str, count: int | None = None) -> list[float] | None:
    if text is None:
        return None
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InvalidParameterError(f"The '{option}' option takes comma-separated numbers. Got {text!r} instead.") from None
    if count is not None and len(values) != count:
        raise InvalidParameterError(f"The '{option}' option takes {count} comma-separated numbers. Got {text!r} instead.")
    return values


def _read_jsonl(stream: IO[str]) -> Iterator[tuple[int, str]]:
    for number, line in enumerate(stream, start=1):
        if line.strip():
            yield number, line


def _decide_record(record: Any, options: dict[str, Any], max_support: int | None) -> dict[str, Any]:
    """Decide one input record; raises InvalidParameterError saying what is wrong with it."""
    from metricwise.decide import decide
    from metricwise.types import Candidate, SampleSet

    if not isinstance(record, dict):
        raise InvalidParameterError(f"expected a JSON object, got {type(record).__name__}")
    if "samples" in record:
        samples = record["samples"]
        if not isinstance(samples, list) or not all(
            isinstance(s, (str, int, float)) and not isinstance(s, bool) for s in samples
        ):
            raise InvalidParameterError("'samples' must be a list of strings or numbers")
        inputs: Any = samples
        logprobs = record.get("logprobs")
        proposal = record.get("proposal_logprobs")
    elif "candidates" in record:
        cands = record["candidates"]
        if not isinstance(cands, list) or not all(isinstance(c, dict) for c in cands):
            raise InvalidParameterError("'candidates' must be a list of objects with a 'text' field")
        inputs = SampleSet(candidates=tuple(Candidate.from_dict(c) for c in cands), prompt=record.get("prompt"))
        logprobs = proposal = None
    else:
        raise InvalidParameterError(f"expected a 'samples' or 'candidates' field; got keys {sorted(record)}")
    decision = decide(inputs, logprobs=logprobs, proposal_logprobs=proposal, **options)
    result = {"id": record.get("id")}
    result.update(decision.to_dict(max_support=max_support))
    return result


def _run_decide(args: argparse.Namespace) -> int:
    valid_range = _parse_floats(args.valid_range, "--valid-range", count=2)
    options: dict[str, Any] = {
        "metric": args.metric,
        "rule": args.rule,
        "weights": args.weights,
        "weight_temperature": args.weight_temperature,
        "valid_range": tuple(valid_range) if valid_range else None,
        "grid": _parse_floats(args.grid, "--grid"),
        "extractor": args.extractor,
        "include_incomplete": args.include_incomplete,
        **_parse_metric_args(args.metric_args),
    }
    max_support = None if args.max_support < 0 else args.max_support
    # A decision on no samples checks the metric, its arguments, the rule and the extractor
    # before any input is read (weights need log-probabilities, so they are checked per line).
    from metricwise.decide import check_weighting, decide

    check_weighting(args.weights)
    decide([], **{**options, "weights": None})

    source = sys.stdin if args.input == "-" else _open_input(args.input)
    sink = sys.stdout if args.output == "-" else open(args.output, "w", encoding="utf-8")  # noqa: SIM115
    n_ok = n_bad = 0
    try:
        for number, line in _read_jsonl(source):
            try:
                record = json.loads(line)
                result = _decide_record(record, options, max_support)
            except json.JSONDecodeError as exc:
                message = f"{_name(args.input)}: line {number}: not valid JSON ({exc.msg} at column {exc.colno})"
            except InvalidParameterError as exc:
                message = f"{_name(args.input)}: line {number}: {exc}"
            else:
                sink.write(json.dumps(_json_safe(result), ensure_ascii=False) + "\n")
                n_ok += 1
                continue
            n_bad += 1
            if not args.skip_invalid:
                raise InvalidParameterError(message)
            print(f"metricwise decide: skipped {message}", file=sys.stderr)
    finally:
        if source is not sys.stdin:
            source.close()
        if sink is not sys.stdout:
            sink.close()
    if n_bad:
        print(f"metricwise decide: {n_ok} decisions written, {n_bad} malformed lines skipped", file=sys.stderr)
    return EXIT_OK


def _name(path: str) -> str:
    return "<stdin>" if path == "-" else path


def _open_input(path: str) -> IO[str]:
    try:
        return open(path, encoding="utf-8")
    except FileNotFoundError:
        raise InvalidParameterError(f"The input file {path!r} does not exist.") from None
    except IsADirectoryError:
        raise InvalidParameterError(f"The input {path!r} is a directory; expected a JSONL file.") from None


def _json_safe(value: Any) -> Any:
    """Replace NaN/inf (not valid JSON) by null, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


# ---------------------------------------------------------------------------------------------
# metrics


def _run_metrics(args: argparse.Namespace) -> int:
    from metricwise import metrics

    rows = []
    for name in metrics.names():
        try:
            metric = metrics.get(name)
        except MetricwiseError as exc:  # an optional extra is missing
            rows.append((name, "?", "?", f"unavailable: {exc}"))
            continue
        rows.append(
            (
                name,
                "higher" if metric.higher_is_better else "lower",
                metric.bayes_rule or "mbr",
                (type(metric).__doc__ or "").strip().splitlines()[0],
            )
        )
    width = max(len(r[0]) for r in rows)
    print(f"{'metric':<{width}}  better  rule      description")
    for name, direction, rule, doc in rows:
        print(f"{name:<{width}}  {direction:<6}  {rule:<8}  {doc}")
    return EXIT_OK


# ---------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except MetricwiseError as exc:
        print(f"metricwise {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"metricwise {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
