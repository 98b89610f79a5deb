"""The ``metricwise`` command line.

Exit codes: 0 success, 2 bad usage or malformed input, 1 runtime failure, 3 backend failure.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import itertools
import os
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import IO, Any

from metricwise.errors import BackendError, InvalidParameterError, MetricwiseError
from metricwise.io import iter_jsonl, json_or_text, read_jsonl, write_json_line

EXIT_OK = 0

_DECIDE_EXAMPLE = """\
input: one JSON object per line,
  {"id": "q1", "samples": ["3.5", "4", "4", "I think 3"], "logprobs": [-2.1, -1.3, -1.3, -4.0]}
or the output of `metricwise sample` (a "candidates" list with text, logp, logq, finish_reason).

examples:
  metricwise decide --metric squared_error samples.jsonl
  metricwise decide --metric pinball --metric_args tau=0.9 samples.jsonl
  metricwise decide --metric chrf --weights model --output decisions.jsonl samples.jsonl
  echo '{"id": 1, "samples": ["Paris", "paris", "Lyon"]}' | metricwise decide --metric exact_match -

output: one JSON decision per input line, with its id, output, rule, expected_loss or
expected_utility, n_valid / n_total (the parse rate) and the support (value, weight, count).
"""

_SAMPLE_EXAMPLE = """\
input: one JSON object per line, {"id": "q1", "prompt": "Q: 2 + 3 =\\nA:"}
output: {"id", "prompt", "candidates": [{"text", "logp", "logq", "n_tokens", "finish_reason"}, ...]}

Samples go through a resumable store (--store): an interrupted run picks up where it stopped,
and a finished prompt is never sampled again with the same model and settings.

examples:
  metricwise sample --model gemma-3-270m -n 16 --input prompts.jsonl --output samples.jsonl
  metricwise sample --model smollm2-135m-instruct -n 8 --temperature 0.7 --stop '\\n' --input prompts.jsonl
  metricwise sample --backend openai --model_args base_url=http://127.0.0.1:8080 --model served -n 16 --input p.jsonl
"""

_PREDICT_EXAMPLE = """\
input: one JSON object per line, {"id": "q1", "prompt": "..."}
output: one JSON decision per line: {"id", "prompt", "output", "rule", "expected_loss", ...}

examples:
  metricwise predict --model gemma-3-270m --metric squared_error --valid_range 0,5 -n 16 --input prompts.jsonl
  metricwise predict --model gemma-3-270m --metric exact_match --stop '\\n' -n 8 --input questions.jsonl
"""


_RECOVER_EXAMPLE = """\
examples:
  metricwise recover samples.sqlite samples.recovered.sqlite
  metricwise sample --input prompts.jsonl -n 8 --store samples.recovered.sqlite   # draws what was lost
"""

_EVAL_EXAMPLE = """\
examples:
  metricwise eval --model gemma-3-270m --tasks stars,arith --limit 40 -n 8 --output_path out/demo
  metricwise eval --model gemma-3-270m --tasks stsb,triviaqa --limit 200 -n 16 --num_fewshot 5 \\
      --data_dir ../shared/data --output_path out/real --log_samples
  metricwise eval --tasks stsb --temperatures 0.5,0.8,1.0 --limit 100 --data_dir data --output_path out/sweep
  metricwise eval --tasks examples/my_task.yaml --limit 20 -n 8
  metricwise eval --tasks stsb --adaptive --max_n 32 --limit 100 --data_dir data --output_path out/adaptive

Sampling goes through a resumable store: an interrupted run continues where it stopped, and a
second run (other decoders, more bootstrap resamples) samples nothing new.
"""


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Examples kept as written, defaults shown, and one flag style: underscores, as in
    lm-evaluation-harness. The hyphenated spelling of a flag (``--max-tokens``) is still
    accepted, and left out of the help."""

    def _format_action_invocation(self, action: argparse.Action) -> str:
        shown = [s for s in action.option_strings if not _is_hyphen_alias(s, action.option_strings)]
        if len(shown) == len(action.option_strings):
            return super()._format_action_invocation(action)
        hidden = argparse.Action(shown, action.dest, nargs=action.nargs, metavar=action.metavar)
        hidden.option_strings, hidden.choices = shown, action.choices
        return super()._format_action_invocation(hidden)

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None:  # "(default: None)" says nothing; the help says what None means
            return action.help
        return super()._get_help_string(action)


def _is_hyphen_alias(flag: str, flags: Sequence[str]) -> bool:
    return flag.startswith("--") and "-" in flag[2:] and "--" + flag[2:].replace("-", "_") in flags


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="metricwise",
        description="Metric-aware LLM inference and evaluation: return the answer that is "
        "Bayes-optimal for your metric from N sampled answers.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    d = sub.add_parser(
        "decide",
        help="pick the Bayes-optimal answer for each line of sampled answers",
        description="Read sampled answers (JSONL) and write one Bayes-optimal decision per line.",
        epilog=_DECIDE_EXAMPLE,
        formatter_class=HelpFormatter,
    )
    d.add_argument(
        "input", metavar="FILE|-", nargs="?", help="JSONL file of samples, or - for standard input"
    )
    d.add_argument(
        "--input", dest="input_option", metavar="FILE|-", help="the same as the FILE argument"
    )
    d.add_argument(
        "--format",
        choices=("auto", "metricwise", "lm_eval"),
        default="auto",
        help="input format: metricwise's samples, or lm-eval's --log_samples output "
        "(samples_<task>_<time>.jsonl); auto recognises it from the first line",
    )
    d.add_argument(
        "--bootstrap_iters",
        type=int,
        default=1000,
        help="bootstrap resamples of the intervals printed for an lm-eval samples log",
    )
    _add_decision_arguments(d)
    d.add_argument(
        "--max_support",
        type=int,
        default=20,
        help="support entries written per decision (0 for none, -1 for all)",
    )
    d.add_argument(
        "--skip_invalid",
        action="store_true",
        help="report malformed lines on stderr and go on, instead of stopping with exit code 2",
    )
    d.add_argument(
        "--output", "-o", default="-", help="where to write decisions (- for standard output)"
    )
    d.set_defaults(handler=_run_decide)

    s = sub.add_parser(
        "sample",
        help="draw N candidates per prompt with their log-probabilities",
        description="Sample N candidates per prompt from a model, with logp, logq and finish reasons.",
        epilog=_SAMPLE_EXAMPLE,
        formatter_class=HelpFormatter,
    )
    _add_sampling_arguments(s)
    s.add_argument(
        "--output", "-o", default="-", help="where to write the samples (- for standard output)"
    )
    s.set_defaults(handler=_run_sample)

    p = sub.add_parser(
        "predict",
        help="sample N candidates per prompt and return the Bayes-optimal answer for a metric",
        description="Sample N candidates per prompt, then decide: the Bayes-optimal answer for the metric.",
        epilog=_PREDICT_EXAMPLE,
        formatter_class=HelpFormatter,
    )
    _add_sampling_arguments(p)
    _add_decision_arguments(p)
    _add_adaptive_arguments(p)
    p.add_argument(
        "--max_support",
        type=int,
        default=5,
        help="support entries written per decision (-1 for all)",
    )
    p.add_argument(
        "--output", "-o", default="-", help="where to write decisions (- for standard output)"
    )
    p.set_defaults(handler=_run_predict)

    m = sub.add_parser("metrics", help="list the registered metrics", formatter_class=HelpFormatter)
    m.set_defaults(handler=_run_metrics)

    models = sub.add_parser(
        "models", help="list the named models that work offline", formatter_class=HelpFormatter
    )
    models.set_defaults(handler=_run_models)

    e = sub.add_parser(
        "eval",
        help="compare greedy decoding with every metric-aware decoder on benchmark tasks",
        description="Sample N answers per item once, then score greedy, first-sample, max-logprob, mode, mean, "
        "median, MBR (uniform and model weights; and with greedy among its hypotheses), with --adaptive their "
        "adaptive twins, and the oracle on the same samples, beside the best constant "
        "answer from the few-shot split (prior, no model), with bootstrap "
        "intervals, paired comparisons against greedy, decoder@k curves, a table and plots.",
        epilog=_EVAL_EXAMPLE,
        formatter_class=HelpFormatter,
    )
    e.add_argument(
        "--model",
        default=None,
        help="a named model (see `metricwise models`), a local directory or .gguf file, or a hub id (default: gemma-3-270m; with --backend openai: the model the server serves); "
        "or, as lm-eval spells it, the backend kind (hf, local-completions, local-chat-completions) with --model_args pretrained=... or base_url=...",
    )
    e.add_argument("--backend", default=None, help=_backend_help() + " (default: hf)")
    e.add_argument(
        "--model_args",
        action="append",
        default=[],
        metavar="K=V[,K=V]",
        help="backend options, e.g. device=cuda or base_url=http://127.0.0.1:8080 (a wrong key "
        "is refused with the backend's list; see the README's backend table)",
    )
    _add_limit_arguments(e)
    e.add_argument(
        "--tasks",
        required=True,
        help="comma-separated task names (see `metricwise tasks`), YAML task files (metricwise's "
        "or lm-eval's), or lm-eval tasks (built by lm-eval's TaskManager; see --include_path)",
    )
    e.add_argument(
        "--include_path",
        default=None,
        help="a directory of lm-eval task YAMLs, as lm_eval reads it: --tasks names its tasks",
    )
    e.add_argument(
        "--limit",
        type=float,
        default=None,
        help="evaluate the first N items of each task; below 1, that fraction of them (as lm-eval)",
    )
    e.add_argument(
        "--device", default=None, help="the hf backend's device (as --model_args device=...)"
    )
    e.add_argument(
        "--apply_chat_template",
        nargs="?",
        const=True,
        default=False,
        help="lm-eval tasks: build the prompts with the model's chat template (hf backend)",
    )
    e.add_argument("-n", "--n", dest="n", type=int, default=16, help="samples per item")
    e.add_argument(
        "--num_fewshot",
        type=int,
        default=None,
        help="examples in each prompt (default: 5; an lm-eval task's own setting for lm-eval tasks)",
    )
    e.add_argument(
        "--fewshot_strategy",
        default="random",
        help="random, similar or diverse (by all-MiniLM-L6-v2 embeddings)",
    )
    e.add_argument(
        "--gen_kwargs",
        action="append",
        default=[],
        metavar="K=V[,K=V]",
        help="sampling settings: temperature, top_p, top_k, min_p, max_tokens; and lm-eval's "
        "max_gen_toks (= max_tokens), until (stop strings), do_sample (greedy is always scored)",
    )
    e.add_argument(
        "--temperatures",
        default=None,
        metavar="T1,T2,...",
        help="run a temperature sweep (overrides temperature in --gen_kwargs)",
    )
    e.add_argument(
        "--seed",
        default=None,
        help="seed of sampling, few-shot selection and the bootstrap (default 0); or lm-eval's "
        "list 'random,numpy,torch,fewshot' (default 0,1234,1234,1234): the first is this seed, "
        "the fourth lm-eval tasks' few-shot seed, numpy's and torch's are not used",
    )
    e.add_argument(
        "--data_dir",
        default=None,
        help="benchmark data directory (default: $METRICWISE_DATA_DIR)",
    )
    e.add_argument(
        "--output_path",
        default=None,
        help="directory for results.json, results.md, plots and sample logs",
    )
    e.add_argument(
        "--log_samples",
        action="store_true",
        help="write samples_<task>.jsonl with every candidate, prediction and score (and lm-eval's "
        "samples_<task>_<time>.jsonl); needs --output_path, as in lm-eval",
    )
    e.add_argument(
        "--inspect_log",
        action="store_true",
        help="also write an Inspect AI log per task under OUTPUT_PATH/inspect, for `inspect view` "
        "(needs metricwise[inspect])",
    )
    e.add_argument(
        "--store",
        default=None,
        help="sample store (SQLite); default: the cache directory's samples.sqlite",
    )
    e.add_argument(
        "--batch_size",
        default="8",
        help="prompts per batch, or auto (hf: as many as fit, the backend splits batches by memory)",
    )
    e.add_argument(
        "--bootstrap_iters",
        type=int,
        default=1000,
        help="bootstrap resamples for intervals and paired tests",
    )
    e.add_argument(
        "--curve_subsets",
        type=int,
        default=8,
        help="random size-k subsets per item for decoder@k curves (0: no curves)",
    )
    e.add_argument(
        "--mbr_metrics",
        default=None,
        metavar="M1,M2,...",
        help="also decide by MBR with these utilities (e.g. chrf,bertscore,embedding_cosine; "
        "with arguments in parentheses: 'chrf(word_order=2),reward(model=DIR,batch_size=8)'), "
        "scored by the task's metrics",
    )
    e.add_argument("--no_plots", action="store_true", help="skip the PNG plots")
    e.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    _add_adaptive_arguments(e, evaluation=True)
    _add_decoding_arguments(e, evaluation=True)
    e.set_defaults(handler=_run_eval)

    r = sub.add_parser(
        "report",
        help="re-render the table and plots of a results directory",
        formatter_class=HelpFormatter,
    )
    r.add_argument("directory", help="an --output_path of `metricwise eval`")
    r.add_argument(
        "--no_plots",
        action="store_true",
        help="print the table only",
    )
    r.set_defaults(handler=_run_report)

    t = sub.add_parser("tasks", help="list the built-in tasks", formatter_class=HelpFormatter)
    t.set_defaults(handler=_run_tasks)

    rec = sub.add_parser(
        "recover",
        help="copy the intact rows of a damaged sample store to a new store",
        description=(
            "Copy every sample that SQLite can still read from a damaged --store file to a new "
            "store, checked row by row (a sample set must hash to its key, a sample must be a "
            "valid sample of a kept set). Pass the new store as --store: a rerun of the same "
            "command draws only the samples that were lost. The damaged file is only read."
        ),
        formatter_class=HelpFormatter,
    )
    rec.epilog = _RECOVER_EXAMPLE
    rec.add_argument("damaged", help="the damaged store (a .sqlite file)")
    rec.add_argument("recovered", help="the new store to write (must not exist)")
    rec.set_defaults(handler=_run_recover)

    _add_optional_subcommands(sub)
    _accept_hyphenated_flags(parser)
    return parser


def _accept_hyphenated_flags(parser: argparse.ArgumentParser) -> None:
    """Let ``--max-tokens`` work wherever ``--max_tokens`` does, in every subcommand.

    The underscore spelling is the one declared, documented and shown by :class:`HelpFormatter`;
    the hyphenated one is accepted for scripts written against earlier versions.
    """
    parsers = [parser]
    while parsers:
        current = parsers.pop()
        for action in list(current._actions):
            if isinstance(action, argparse._SubParsersAction):
                parsers.extend(action.choices.values())
            for flag in list(action.option_strings):
                alias = "--" + flag[2:].replace("_", "-")
                if (
                    flag.startswith("--")
                    and alias != flag
                    and alias not in current._option_string_actions
                ):
                    action.option_strings = [*action.option_strings, alias]
                    current._option_string_actions[alias] = action


def _add_decision_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("decision")
    g.add_argument("--metric", required=True, help="metric name (see `metricwise metrics`)")
    g.add_argument(
        "--rule",
        default=None,
        help="override the rule: mode, mean, median, quantile, grid, mbr (default: the metric's closed form, else mbr)",
    )
    g.add_argument(
        "--weights",
        default="uniform",
        help="uniform, model (softmax of logprobs), or importance (exp(logp - logq))",
    )
    g.add_argument(
        "--weight_temperature",
        type=float,
        default=1.0,
        help="temperature of the 'model' weighting",
    )
    g.add_argument(
        "--metric_args",
        action="append",
        default=[],
        metavar="K=V[,K=V]",
        help="metric arguments, e.g. tau=0.9 for pinball (repeatable)",
    )
    g.add_argument(
        "--valid_range",
        default=None,
        metavar="LO,HI",
        help="clip parsed numbers into [LO, HI], e.g. 0,5",
    )
    g.add_argument(
        "--grid",
        default=None,
        metavar="V1,V2,...",
        help="allowed values for the grid rule (default: the integers of --valid_range)",
    )
    g.add_argument(
        "--extractor",
        default=None,
        help="extract the answer from each text first: number, number:last, answer, first_line, regex:PATTERN",
    )
    g.add_argument(
        "--include_incomplete",
        action="store_true",
        help="keep candidates cut off by max_tokens or a guard",
    )
    g.add_argument(
        "--mbr",
        choices=_mbr_names(),
        default="exact",
        help="how MBR is computed at large N: exact, prune (confidence-based pruning; any metric), "
        "aggregate (one aggregated reference; chrF only) or aggregate_to_fine (the 32 best "
        "against the aggregated reference, then exact among them; chrF only)",
    )
    g.add_argument(
        "--max_expected_loss",
        type=float,
        default=None,
        help="abstain (output null, abstained true, the answer in withheld) when the best "
        "answer's expected loss is above this; for a loss metric",
    )
    g.add_argument(
        "--min_expected_utility",
        type=float,
        default=None,
        help="abstain when the best answer's expected utility is below this; for a utility",
    )


def _mbr_names() -> tuple[str, ...]:
    from metricwise.mbr import METHODS

    return tuple(METHODS)


def _add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    from metricwise.types import SamplingConfig

    defaults = SamplingConfig()
    g = parser.add_argument_group("model and sampling")
    g.add_argument(
        "--model",
        default=None,
        help="a named model (see `metricwise models`), a local directory or .gguf file, or a hub id (default: gemma-3-270m; with --backend openai: the model the server serves); "
        "or, as lm-eval spells it, the backend kind (hf, local-completions, local-chat-completions) with --model_args pretrained=... or base_url=...",
    )
    g.add_argument(
        "--device", default=None, help="the hf backend's device (as --model_args device=...)"
    )
    g.add_argument(
        "--backend",
        default=None,
        help=_backend_help() + " (default: hf)",
    )
    g.add_argument(
        "--model_args",
        action="append",
        default=[],
        metavar="K=V[,K=V]",
        help="backend options, e.g. device=cuda,dtype=bfloat16,max_batch_rows=256 (hf) or "
        "base_url=http://127.0.0.1:8080,cache_prompt=true (openai); a wrong key is refused with "
        "the backend's list of options",
    )
    g.add_argument(
        "--input",
        "-i",
        required=True,
        help="JSONL file of prompts ({'id', 'prompt'} per line), or - for standard input",
    )
    g.add_argument("-n", "--n", dest="n", type=int, default=defaults.n, help="samples per prompt")
    g.add_argument(
        "--max_tokens",
        type=int,
        default=defaults.max_tokens,
        help="new tokens per sample (a hard limit)",
    )
    g.add_argument(
        "--temperature",
        type=float,
        default=defaults.temperature,
        help="sampling temperature (0 = greedy)",
    )
    g.add_argument(
        "--top_p",
        type=float,
        default=defaults.top_p,
        help="nucleus sampling mass (1 = off)",
    )
    g.add_argument(
        "--top_k",
        type=int,
        default=defaults.top_k,
        help="keep the k most likely tokens (0 = off)",
    )
    g.add_argument(
        "--min_p",
        type=float,
        default=defaults.min_p,
        help="drop tokens below min_p x the top probability (0 = off)",
    )
    g.add_argument(
        "--stop", action="append", default=[], help="stop string (repeatable); '\\n' is a newline"
    )
    g.add_argument(
        "--seed",
        type=int,
        default=defaults.seed,
        help="sample i of a prompt uses its own stream from (seed, i, prompt)",
    )
    g.add_argument(
        "--batch_size",
        type=int,
        default=8,
        help="prompts per batch",
    )
    g.add_argument(
        "--store",
        default=None,
        help="sample store (SQLite) for resuming; default: the cache directory's samples.sqlite",
    )
    g.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    _add_decoding_arguments(parser)
    _add_limit_arguments(parser)


def _add_decoding_arguments(parser: argparse.ArgumentParser, *, evaluation: bool = False) -> None:
    """--decoding, --burn_in and --thin: globally normalised truncated sampling."""
    from metricwise.global_decoding import ChainSettings

    defaults = ChainSettings()
    g = parser.add_argument_group(
        "global decoding",
        "Top-k, top-p and min-p renormalise at every step (local decoding). Global decoding returns "
        "the states of an independent Metropolis-Hastings chain whose proposals are those local "
        "samples, towards p(y)^(1/T) restricted to the sequences inside the truncation sets "
        "(Gareev et al. 2024): -n states from --burn_in + n x --thin proposals, all kept in the "
        "store; no extra model call. See metricwise.global_decoding.",
    )
    g.add_argument(
        "--decoding",
        default="local",
        help="local, global, or local,global to score both on the same proposals with paired "
        "differences"
        if evaluation
        else "local or global",
    )
    g.add_argument(
        "--burn_in",
        type=int,
        default=defaults.burn_in,
        help="proposals the chain reads before its first returned state",
    )
    g.add_argument(
        "--thin", type=int, default=defaults.thin, help="proposals read per returned state"
    )


def _chain_settings(args: argparse.Namespace) -> Any:
    """The ChainSettings of --decoding global (None for local), checked before any model loads."""
    from metricwise.global_decoding import ChainSettings, check_chain_use

    check_chain_use(
        args.decoding,
        chain_given=_chain_flags_given(args),
        temperature=args.temperature,
        weights=getattr(args, "weights", None),
        adaptive=bool(getattr(args, "adaptive", False)),
        spell=_flag,
    )
    if args.decoding == "local":
        return None
    return ChainSettings(burn_in=args.burn_in, thin=args.thin)


def _chain_flags_given(args: argparse.Namespace) -> dict[str, int]:
    """--burn_in and --thin where they differ from their defaults (argparse cannot tell apart a
    default and the same value typed)."""
    from metricwise.global_decoding import ChainSettings

    defaults = ChainSettings()
    return {
        flag: getattr(args, flag)
        for flag in ("burn_in", "thin")
        if getattr(args, flag) != getattr(defaults, flag)
    }


def _flag(name: str) -> str:
    """A parameter as the command line spells it: ``burn_in`` -> ``--burn_in``."""
    return f"--{name}"


def _add_limit_arguments(parser: argparse.ArgumentParser) -> None:
    from metricwise.backends.http import RetryPolicy
    from metricwise.guards import Guards

    policy, guards = RetryPolicy(), Guards()
    g = parser.add_argument_group(
        "limits",
        "A failure is never stored: a batch that fails or runs out of time ends the run with exit code 3, "
        "the batches committed before it stay in the store, and running the same command again resumes.",
    )
    g.add_argument(
        "--max_seconds",
        type=float,
        default=guards.max_seconds,
        help="wall-clock budget of one batch of prompts, retries included, in seconds",
    )
    g.add_argument(
        "--timeout",
        type=float,
        default=policy.timeout,
        help="seconds one HTTP request may take, from connecting to the last byte (--backend openai)",
    )
    g.add_argument(
        "--max_retries",
        type=int,
        default=policy.max_retries,
        help="retries of a failed HTTP request (refused, dropped, timed out, 429, 5xx, malformed answer), with exponential backoff (--backend openai)",
    )


#: What the built-in backends are, for --help; a plugin's backend is listed by its name.
_BACKEND_NOTES = {
    "hf": "transformers",
    "llamacpp": "llama.cpp in-process",
    "openai": "an OpenAI-compatible server",
}


def _backend_help() -> str:
    """--backend's help: every registered backend, plugins' included."""
    from metricwise.backends.base import backend_names

    names = [
        f"{name} ({_BACKEND_NOTES[name]})" if name in _BACKEND_NOTES else name
        for name in backend_names()
    ]
    return f"one of {', '.join(names)}"


#: lm-eval's --model kinds: the metricwise backend each is, and the openai endpoint.
_LM_EVAL_MODELS: dict[str, tuple[str, str | None]] = {
    "hf": ("hf", None),
    "hf-auto": ("hf", None),
    "huggingface": ("hf", None),
    "local-completions": ("openai", "completions"),
    "local-chat-completions": ("openai", "chat"),
}


def _lm_eval_spelling(args: argparse.Namespace) -> dict[str, Any]:
    """--model_args as a dict, with lm-eval's spelling read: ``--model hf --model_args
    pretrained=X`` is ``--backend hf --model X``; ``--model local-completions --model_args
    base_url=U,model=M`` is ``--backend openai --model M --model_args base_url=U`` (chat:
    endpoint=chat); ``num_concurrent`` is ``concurrency``; ``--device D`` is ``device=D``.
    Sets ``args.model`` and ``args.backend``; a mix of both spellings is refused, naming them."""
    options = _parse_key_values(args.model_args, "--model_args")
    kind = _LM_EVAL_MODELS.get(args.model) if isinstance(args.model, str) else None
    if kind is not None:
        backend, endpoint = kind
        if args.backend is not None:
            raise InvalidParameterError(
                f"The '--model' option {args.model!r} is lm-eval's name of a backend kind, and "
                f"'--backend {args.backend}' is metricwise's: give one spelling. lm-eval's: "
                f"--model {args.model} --model_args pretrained=MODEL (or base_url=URL,model=NAME); "
                f"metricwise's: --backend {backend} --model MODEL."
            )
        key = "pretrained" if backend == "hf" else "model"
        other = "model" if backend == "hf" else "pretrained"
        if other in options and key not in options:
            key = other
        name = options.pop(key, None)
        args.backend, args.model = backend, None if name is None else str(name)
        if endpoint == "chat":
            options.setdefault("endpoint", "chat")
        if "num_concurrent" in options:
            options["concurrency"] = options.pop("num_concurrent")
    elif "pretrained" in options:
        if args.model is not None:
            raise InvalidParameterError(
                f"The model is named twice: '--model {args.model}' (metricwise's spelling) and "
                f"'--model_args pretrained={options['pretrained']}' (lm-eval's, with --model hf). "
                "Give one: --model MODEL, or --model hf --model_args pretrained=MODEL."
            )
        args.model = str(options.pop("pretrained"))
    if args.backend is None:
        args.backend = "hf"
    device = getattr(args, "device", None)
    if device is not None:
        if "device" in options and options["device"] != device:
            raise InvalidParameterError(
                f"The '--device' option ({device}) and '--model_args device={options['device']}' "
                "disagree; give one of them."
            )
        options["device"] = device
    return options


def _backend_options(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments of load_backend: --model_args plus the limits, checked before anything loads."""
    from metricwise.backends.base import backend_names, backend_options
    from metricwise.backends.http import RetryPolicy
    from metricwise.guards import Guards

    options = _lm_eval_spelling(args)
    options["guards"] = Guards(max_seconds=args.max_seconds)
    policy = RetryPolicy(timeout=args.timeout, max_retries=args.max_retries)
    if args.backend not in backend_names():
        return options  # load_backend names the backends there are
    # The HTTP limits go to every backend that takes them (openai, or a plugin's server backend).
    accepted = backend_options(args.backend)
    if accepted is not None and {"timeout", "max_retries"} <= set(accepted):
        options.setdefault("timeout", policy.timeout)
        options.setdefault("max_retries", policy.max_retries)
    elif (args.timeout, args.max_retries) != (RetryPolicy.timeout, RetryPolicy.max_retries):
        takers = [
            n
            for n in backend_names()
            if {"timeout", "max_retries"} <= set(backend_options(n) or ())
        ]
        raise InvalidParameterError(
            f"The '--timeout' and '--max_retries' options apply to backends that make HTTP requests "
            f"({', '.join(takers)}). Got --backend {args.backend} instead."
        )
    return options


def _version() -> str:
    from metricwise import __version__

    return __version__


def _add_optional_subcommands(sub: Any) -> None:
    """Subcommands whose modules may pull optional extras; their parsers import nothing heavy."""
    try:
        from metricwise.representation.cli import add_mnn_parser
    except ModuleNotFoundError as exc:
        if exc.name is None or not exc.name.startswith("metricwise"):
            raise
    else:
        add_mnn_parser(sub)
    try:
        from metricwise.serve.cli import add_serve_parser
    except ModuleNotFoundError as exc:
        if exc.name is None or not exc.name.startswith("metricwise"):
            raise
    else:
        add_serve_parser(sub)
    from metricwise.judge_calibrate import add_judge_calibrate_parser

    add_judge_calibrate_parser(sub)


# ---------------------------------------------------------------------------------------------
# Option parsing shared by the subcommands


def _parse_key_values(items: Sequence[str], option: str) -> dict[str, Any]:
    """``["a=1,b=x", "c=true"]`` -> ``{"a": 1, "b": "x", "c": True}`` (values parsed as JSON when they are)."""
    out: dict[str, Any] = {}
    for item in (part.strip() for group in items for part in group.split(",") if part.strip()):
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise InvalidParameterError(
                f"The '{option}' option takes K=V pairs. Got {item!r} instead."
            )
        out[key] = json_or_text(raw)
    return out


def _parse_floats(text: str | None, option: str, count: int | None = None) -> list[float] | None:
    if text is None:
        return None
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InvalidParameterError(
            f"The '{option}' option takes comma-separated numbers. Got {text!r} instead."
        ) from None
    if count is not None and len(values) != count:
        raise InvalidParameterError(
            f"The '{option}' option takes {count} comma-separated numbers. Got {text!r} instead."
        )
    return values


def _int_option(value: Any, option: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidParameterError(f"The '{option}' option must be an int. Got {value!r} instead.")
    return value


def _decision_options(args: argparse.Namespace) -> dict[str, Any]:
    """decide() keyword arguments from the decision options, checked before any input is read."""
    valid_range = _parse_floats(args.valid_range, "--valid_range", count=2)
    options: dict[str, Any] = {
        "metric": args.metric,
        "rule": args.rule,
        "weights": args.weights,
        "weight_temperature": args.weight_temperature,
        "valid_range": tuple(valid_range) if valid_range else None,
        "grid": _parse_floats(args.grid, "--grid"),
        "extractor": args.extractor,
        "include_incomplete": args.include_incomplete,
        "mbr": args.mbr,
    }
    # Only when given: a metric argument may not share their names (see below).
    for name in ("max_expected_loss", "min_expected_utility"):
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    # A decision on no samples checks the metric, its arguments, the rule and the extractor
    # (weights need log-probabilities, so they are checked per record).
    from metricwise.decide import check_weighting, decide

    metric_args = _parse_key_values(args.metric_args, "--metric_args")
    own = set(inspect.signature(decide).parameters) & set(metric_args)
    if own:
        # An argument named like one of decide()'s own (the judge's 'samples') goes to the
        # metric: it is built here, with its arguments, instead of through decide().
        from metricwise import metrics

        options["metric"] = metrics.get(args.metric, **metric_args)
    else:
        options.update(metric_args)
    check_weighting(args.weights)
    decide([], **{**options, "weights": None})
    return options


def _sampling_config(args: argparse.Namespace) -> Any:
    from metricwise.types import SamplingConfig

    stops = tuple(s.encode("utf-8").decode("unicode_escape") for s in args.stop)
    if args.batch_size < 1:
        raise InvalidParameterError(
            f"The '--batch_size' option must be >= 1. Got {args.batch_size} instead."
        )
    return SamplingConfig(
        n=args.n,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        min_p=args.min_p,
        max_tokens=args.max_tokens,
        stop=stops,
        seed=args.seed,
    )


def _name(path: str) -> str:
    return "<stdin>" if path == "-" else path


def _open_output(path: str) -> IO[str]:
    if path == "-":
        return sys.stdout
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return open(path, "w", encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# decide


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
            raise InvalidParameterError(
                "'candidates' must be a list of objects with a 'text' field"
            )
        inputs = SampleSet(
            candidates=tuple(Candidate.from_dict(c) for c in cands), prompt=record.get("prompt")
        )
        logprobs = proposal = None
    else:
        raise InvalidParameterError(
            f"expected a 'samples' or 'candidates' field; got keys {sorted(record)}"
        )
    decision = decide(inputs, logprobs=logprobs, proposal_logprobs=proposal, **options)
    result = {"id": record.get("id")}
    result.update(decision.to_dict(max_support=max_support))
    return result


def _decide_input(args: argparse.Namespace) -> str:
    if args.input is not None and args.input_option is not None:
        raise InvalidParameterError(
            "The input of decide is given once: as the FILE argument or as --input. Got both "
            f"{args.input!r} and {args.input_option!r} instead."
        )
    path = args.input if args.input is not None else args.input_option
    if path is None:
        raise InvalidParameterError(
            "decide needs an input: a JSONL file of samples (FILE, --input FILE, or - for "
            "standard input)."
        )
    return str(path)


def _run_decide(args: argparse.Namespace) -> int:
    args.input = _decide_input(args)
    options = _decision_options(args)
    max_support = None if args.max_support < 0 else args.max_support
    lines = iter_jsonl(args.input)
    first = next(lines, None)  # a missing input file is reported before the output is created
    if args.format == "lm_eval" or (
        args.format == "auto" and first is not None and _is_lm_eval_line(first.value)
    ):
        return _run_decide_lm_eval(
            args, options, max_support, itertools.chain([] if first is None else [first], lines)
        )
    sink = _open_output(args.output)
    n_ok = n_bad = n_abstained = 0
    try:
        for line in itertools.chain([] if first is None else [first], lines):
            message = (
                f"{_name(args.input)}: line {line.number}: {line.error}"
                if line.error is not None
                else None
            )
            if message is None:
                try:
                    result = _decide_record(line.value, options, max_support)
                except InvalidParameterError as exc:
                    message = f"{_name(args.input)}: line {line.number}: {exc}"
                else:
                    write_json_line(sink, result)
                    n_ok += 1
                    n_abstained += bool(result.get("abstained"))
                    continue
            n_bad += 1
            if not args.skip_invalid:
                raise InvalidParameterError(message)
            print(f"metricwise decide: skipped {message}", file=sys.stderr)
    finally:
        if sink is not sys.stdout:
            sink.close()
    if n_bad:
        print(
            f"metricwise decide: {n_ok} decisions written, {n_bad} malformed lines skipped",
            file=sys.stderr,
        )
    summary = _abstention_summary(options, n_abstained, n_ok)
    if summary:
        print(f"metricwise decide: {summary}", file=sys.stderr)
    return EXIT_OK


def _is_lm_eval_line(value: Any) -> bool:
    from metricwise.integrations.lm_eval.samples import is_samples_record

    return is_samples_record(value)


def _run_decide_lm_eval(
    args: argparse.Namespace, options: dict[str, Any], max_support: int | None, lines: Any
) -> int:
    """Re-decide every doc of an lm-eval samples log from its ``resps``; score with lm-eval's
    metrics against ``target``; print intervals paired with lm-eval's own filtered answers."""
    from metricwise.decide import decide
    from metricwise.integrations.lm_eval.samples import (
        compare,
        is_numeric_extractor,
        lm_eval_scorer,
        read_samples_log,
    )

    if args.bootstrap_iters < 1:
        raise InvalidParameterError(
            f"The '--bootstrap_iters' option must be >= 1. Got {args.bootstrap_iters} instead."
        )
    log = read_samples_log(args.input, lines)
    try:
        scorers = {m: lm_eval_scorer(m, log.config) for m in log.metrics}
    except ImportError:
        raise InvalidParameterError(
            "Scoring an lm-eval samples log needs lm-eval: pip install 'metricwise[lm_eval]'."
        ) from None
    decisions = [decide(doc.responses, **options) for doc in log.docs]
    numeric = is_numeric_extractor(args.extractor)
    comparison = compare(log, [d.output for d in decisions], scorers, numeric=numeric)
    sink = _open_output(args.output)
    try:
        for i, (doc, decision) in enumerate(zip(log.docs, decisions, strict=True)):
            record: dict[str, Any] = {"id": doc.doc_id, "doc_id": doc.doc_id}
            record.update(decision.to_dict(max_support=max_support))
            record["target"] = doc.target
            record["lm_eval"] = {
                "metricwise": {m: comparison.scores[m]["metricwise"][i] for m in log.metrics},
                **{flt: {"answer": doc.answers[flt], **doc.scores[flt]} for flt in log.filters},
            }
            write_json_line(sink, record)
    finally:
        if sink is not sys.stdout:
            sink.close()
    summary = comparison.summary(bootstrap_iters=args.bootstrap_iters)
    n_resp = sorted({len(doc.responses) for doc in log.docs})
    print(
        f"lm-eval samples log {_name(args.input)}: task {log.task or '?'}, {len(log.docs)} docs, "
        f"{'/'.join(map(str, n_resp))} responses each; metricwise decided for {args.metric} "
        f"({decisions[0].rule}, {args.weights} weights)"
        + ("" if log.config else "; no results_<time>.json beside it: metrics without arguments"),
        file=sys.stderr,
    )
    labels = {"metricwise": f"metricwise({args.metric})"}
    labels.update({flt: f"lm-eval {flt}" for flt in log.filters})
    width = max(len(label) for label in labels.values())
    print(
        f"{'metric':<16} {'answer':<{width}} {'value':>7}  {'95% CI':<17} "
        "metricwise - this [95% CI], p",
        file=sys.stderr,
    )
    for metric, rows in summary.items():
        for name, row in rows.items():
            ci = f"[{row['ci'][0]:.3f}, {row['ci'][1]:.3f}]"
            line = f"{metric:<16} {labels[name]:<{width}} {row['value']:>7.3f}  {ci:<17}"
            if "metricwise_minus_this" in row:
                diff = row["metricwise_minus_this"]
                line += (
                    f" {diff['difference']:+.3f} [{diff['ci'][0]:+.3f}, {diff['ci'][1]:+.3f}],"
                    f" p={diff['p_value']:.3f}"
                )
                if row["rescored_mismatches"]:
                    line += (
                        f"  (rescoring lm-eval's answer differs from its log on "
                        f"{row['rescored_mismatches']} docs; its logged values are used)"
                    )
            print(line, file=sys.stderr)
    return EXIT_OK


# ---------------------------------------------------------------------------------------------
# sample and predict


def _read_prompts(
    args: argparse.Namespace, config: Any, options: dict[str, Any]
) -> list[tuple[Any, str]]:
    """(id, prompt) pairs from the --input JSONL file. Every line is checked before any model
    is loaded: its shape, and what the backend can tell without its weights (a prompt too long
    for any context, or, with the tokenizer alone, too long for this model's with
    --max_tokens), each named by its line."""
    from metricwise.backends.base import check_prompts_before_loading

    path = args.input
    records: list[tuple[Any, str]] = []
    labels: list[str] = []
    for line in read_jsonl(path):
        record = line.value
        if not isinstance(record.get("prompt"), str):
            raise InvalidParameterError(
                f"{_name(path)}: line {line.number}: expected an object with a string 'prompt' field"
            )
        if not record["prompt"]:
            raise InvalidParameterError(f"{_name(path)}: line {line.number}: the 'prompt' is empty")
        records.append((record.get("id", line.number), record["prompt"]))
        labels.append(
            f"{_name(path)}: line {line.number}"
            + (f" (id {record['id']!r})" if "id" in record else "")
        )
    if not records:
        raise InvalidParameterError(
            f"{_name(path)}: no prompts found (expected one JSON object per line)."
        )
    check_prompts_before_loading(
        args.backend,
        args.model,
        [(label, prompt) for label, (_, prompt) in zip(labels, records, strict=True)],
        config.max_tokens,
        **options,
    )
    return records


@contextlib.contextmanager
def _sampling_session(
    args: argparse.Namespace, prompts: list[str], config: Any, options: dict[str, Any]
) -> Iterator[tuple[Any, Any, int]]:
    """The store and the backend of a sampling command, opened in that order and closed after,
    and how many of the distinct prompts the store already holds all ``config.n`` samples of.

    The store opens first: a bad --store path is reported before a model loads for minutes.
    """
    from metricwise.backends import load_backend
    from metricwise.backends.base import prompt_cache_summary
    from metricwise.models import cache_dir
    from metricwise.store import SampleStore

    store_path = args.store or str(cache_dir() / "samples.sqlite")
    with SampleStore(store_path) as store:
        backend = load_backend(args.backend, args.model, **options)
        try:
            held = store.held(backend.signature, prompts, config)
            done = sum(count >= config.n for count in held.values())
            partly = [count for count in held.values() if 0 < count < config.n]
            if not args.quiet:
                more = (
                    f", and {sum(partly)} of the {len(partly) * config.n} samples of "
                    f"{len(partly)} more (only the rest are drawn)"
                    if partly
                    else ""
                )
                print(
                    f"metricwise {args.command}: {len(held)} prompts x n={config.n} from {backend.signature}; "
                    f"{done} already in the store {store_path}{more}",
                    file=sys.stderr,
                )
            yield store, backend, done
            summary = prompt_cache_summary(backend)
            if summary and not args.quiet:
                print(f"metricwise {args.command}: {summary}", file=sys.stderr)
        finally:
            backend.close()


def _sample_all(
    args: argparse.Namespace, prompts: list[str], config: Any, options: dict[str, Any]
) -> list[Any]:
    """Sample through the store with a progress bar; returns one SampleSet per prompt.

    ``config`` and ``options`` come from :func:`_sampling_config` and :func:`_backend_options`,
    checked before the input is read.
    """
    from metricwise.progress import Progress

    with (
        _sampling_session(args, prompts, config, options) as (store, backend, done),
        Progress(
            len(set(prompts)), "sampling", unit="prompt", enabled=not args.quiet, initial=done
        ) as bar,
    ):
        return list(
            store.sample(
                backend,
                prompts,
                config,
                batch_size=args.batch_size,
                progress=lambda done, total: bar.update(done),
            )
        )


def _sample_decoded(
    args: argparse.Namespace, prompts: list[str], config: Any, options: dict[str, Any]
) -> tuple[list[Any], list[Any] | None]:
    """``config.n`` samples per prompt as --decoding asks: (sample sets, chains or None).

    Global decoding samples ``burn_in + n * thin`` local proposals through the store and
    returns the chains' ``n`` states.
    """
    from metricwise.global_decoding import describe_chains, global_chains

    settings = _chain_settings(args)
    if settings is None:
        return _sample_all(args, prompts, config, options), None
    proposals = _sample_all(args, prompts, replace(config, n=settings.proposals(config.n)), options)
    chains = global_chains(
        proposals, config.n, temperature=config.temperature, settings=settings, seed=config.seed
    )
    if not args.quiet:
        print(f"metricwise {args.command}: {describe_chains(chains)}", file=sys.stderr)
    return [chain.states for chain in chains], chains


def _run_sample(args: argparse.Namespace) -> int:
    config, options = _sampling_config(args), _backend_options(args)
    _chain_settings(args)  # a bad --decoding fails before the input is read
    records = _read_prompts(args, config, options)
    sets, chains = _sample_decoded(args, [prompt for _, prompt in records], config, options)
    sink = _open_output(args.output)
    try:
        for i, ((record_id, prompt), sample_set) in enumerate(zip(records, sets, strict=True)):
            record = {
                "id": record_id,
                "prompt": prompt,
                "candidates": [c.to_dict() for c in sample_set.candidates],
            }
            if chains is not None:
                record["chain"] = chains[i].to_dict()
            write_json_line(sink, record)
    finally:
        if sink is not sys.stdout:
            sink.close()
    return EXIT_OK


def _run_predict(args: argparse.Namespace) -> int:
    from metricwise.decide import decide

    options = _decision_options(args)
    config, backend_options = _sampling_config(args), _backend_options(args)
    adaptive = _adaptive_settings(args)
    _chain_settings(args)  # global decoding with --adaptive and the like fail before any model
    records = _read_prompts(args, config, backend_options)
    prompts = [prompt for _, prompt in records]
    chains = None
    if adaptive is None:
        sets, chains = _sample_decoded(args, prompts, config, backend_options)
        decisions = [decide(s, **options) for s in sets]
    else:
        from metricwise.adaptive import sample_and_decide
        from metricwise.progress import Progress

        with (
            _sampling_session(
                args, prompts, replace(config, n=adaptive.max_n), backend_options
            ) as (store, backend, _),
            Progress(len(set(prompts)), "settled", unit="prompt", enabled=not args.quiet) as bar,
        ):
            decisions = sample_and_decide(
                store, backend, prompts, config, adaptive, batch_size=args.batch_size,
                progress=lambda done, total: bar.update(done), **options,
            )  # fmt: skip
        if not args.quiet:
            used = [d.n_used or 0 for d in decisions]
            print(
                f"metricwise predict: {sum(used) / len(used):.1f} samples per prompt on average "
                f"(at most {adaptive.max_n}); {sum(d.stopped == 'settled' for d in decisions)} of "
                f"{len(decisions)} settled",
                file=sys.stderr,
            )
    max_support = None if args.max_support < 0 else args.max_support
    sink = _open_output(args.output)
    try:
        for i, ((record_id, prompt), decision) in enumerate(zip(records, decisions, strict=True)):
            record = {
                "id": record_id,
                "prompt": prompt,
                **decision.to_dict(max_support=max_support),
            }
            if chains is not None:
                record["chain"] = {
                    k: v for k, v in chains[i].to_dict().items() if k != "state_proposals"
                }
            write_json_line(sink, record)
    finally:
        if sink is not sys.stdout:
            sink.close()
    summary = _abstention_summary(options, sum(d.abstained for d in decisions), len(decisions))
    if summary and not args.quiet:
        print(f"metricwise predict: {summary}", file=sys.stderr)
    return EXIT_OK


def _abstention_summary(options: dict[str, Any], abstained: int, total: int) -> str | None:
    """ "abstained on K of N prompts (...)" when a risk threshold was given, else None."""
    for name, side in (("max_expected_loss", "above"), ("min_expected_utility", "below")):
        if name in options:
            what = name.split("_", 1)[1].replace("_", " ")
            return f"abstained on {abstained} of {total} prompts ({what} {side} {options[name]:g})"
    return None


def _add_adaptive_arguments(parser: argparse.ArgumentParser, *, evaluation: bool = False) -> None:
    """The --adaptive flags; ``evaluation`` words them for eval, whose adaptive decoders decide
    on prefixes of a max_n pool and take a per-task tolerance by default."""
    from metricwise.adaptive import Adaptive

    defaults = Adaptive()
    g = parser.add_argument_group(
        "adaptive sampling",
        (
            "Also score an adaptive twin of every Bayes rule (mean@adaptive): it decides on the "
            "shortest prefix of the pool at which its decision is settled, as an adaptive run "
            "would have sampled it (see metricwise.adaptive for each rule's criterion). The pool "
            "is sampled to --max_n; -n is then ignored."
        )
        if evaluation
        else "Sample in rounds and stop each prompt once more samples would not change its decision "
        "(see metricwise.adaptive for each rule's criterion). -n is then ignored.",
    )
    g.add_argument(
        "--adaptive",
        action="store_true",
        help="add the adaptive decoders"
        if evaluation
        else "sample in rounds until each decision is settled",
    )
    g.add_argument("--min_n", type=int, default=defaults.min_n, help="samples before any stop")
    g.add_argument("--max_n", type=int, default=defaults.max_n, help="samples at most")
    g.add_argument("--round", type=int, default=defaults.round, help="samples added per round")
    g.add_argument(
        "--confidence",
        type=float,
        default=defaults.confidence,
        help="stop when the decision is settled with this probability",
    )
    g.add_argument(
        "--tolerance",
        type=float,
        # None, so that eval can tell an explicit 0 from its per-task default.
        default=None,
        help="how far a numeric answer may still move (its unit), or the expected utility MBR may still lose "
        + (
            "(default: 2%% of a bounded task's range, 0.5 for unbounded numbers, 0 for mode and MBR)"
            if evaluation
            else f"(default: {defaults.tolerance:g})"
        ),
    )


def _adaptive_settings(args: argparse.Namespace) -> Any:
    """The Adaptive settings of --adaptive (None without it), checked before any model loads."""
    from metricwise.adaptive import Adaptive

    if not args.adaptive:
        return None
    return Adaptive(
        min_n=args.min_n,
        max_n=args.max_n,
        round=args.round,
        confidence=args.confidence,
        tolerance=Adaptive().tolerance if args.tolerance is None else args.tolerance,
    )


# ---------------------------------------------------------------------------------------------
# eval and report


#: --gen_kwargs keys: metricwise's sampling settings, and lm-eval's generation settings.
_GEN_KWARGS = (
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "max_tokens",
    "max_gen_toks",
    "until",
    "do_sample",
)


def _seeds(text: str | None) -> tuple[int, int | None, list[str]]:
    """(metricwise's seed, lm-eval tasks' few-shot seed, notes) from --seed: one int (lm-eval:
    all four seeds), or lm-eval's list random,numpy,torch,fewshot ('None' leaves one unset)."""
    if text is None:
        return 0, 1234, []
    parts = [p.strip() for p in str(text).split(",")]
    try:
        values = [None if p.lower() == "none" else int(p) for p in parts]
    except ValueError:
        raise InvalidParameterError(
            f"The '--seed' option takes an int or lm-eval's list of 4 (random,numpy,torch,fewshot; "
            f"'None' for unset). Got {text!r} instead."
        ) from None
    if len(values) == 1:
        return (values[0] or 0), values[0], []
    if not 3 <= len(values) <= 4:
        raise InvalidParameterError(
            f"The '--seed' option takes an int or lm-eval's list of 4 (random,numpy,torch,fewshot). Got {text!r} instead."
        )
    values += [1234] * (4 - len(values))
    notes = [
        f"--seed: {values[0] if values[0] is not None else 0} seeds sampling, few-shot selection "
        f"and the bootstrap; {values[3]} seeds lm-eval tasks' few-shot sampler; the numpy "
        f"({values[1]}) and torch ({values[2]}) seeds are not used (every metricwise sample has "
        "its own seeded stream)"
    ]
    return (values[0] if values[0] is not None else 0), values[3], notes


def _batch_size(value: Any) -> int:
    """--batch_size: a number, or lm-eval's auto (auto:N too), which the hf backend meets by
    splitting every batch to fit memory: 64 prompts per batch."""
    text = str(value).strip().lower()
    if text.startswith("auto"):
        return 64
    try:
        size = int(text)
    except ValueError:
        size = 0
    if size < 1:
        raise InvalidParameterError(
            f"The '--batch_size' option must be an int >= 1 or auto. Got {value!r} instead."
        )
    return size


def _run_eval(args: argparse.Namespace) -> int:
    from metricwise.evaluate.report import render_summary
    from metricwise.evaluate.runner import EvalConfig, run_eval

    if args.log_samples and not args.output_path:
        raise InvalidParameterError(
            "The '--log_samples' option needs --output_path to write the samples under "
            "(lm-eval refuses it alike: 'Specify --output_path if providing --log_samples')."
        )
    say = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr))
    gen = _parse_key_values(args.gen_kwargs, "--gen_kwargs")
    unknown = sorted(set(gen) - set(_GEN_KWARGS))
    if unknown:
        raise InvalidParameterError(
            f"The '--gen_kwargs' option takes {', '.join(_GEN_KWARGS)}. Got {', '.join(unknown)} instead."
        )
    if "max_gen_toks" in gen:
        if "max_tokens" in gen and gen["max_tokens"] != gen["max_gen_toks"]:
            raise InvalidParameterError(
                "The '--gen_kwargs' option got max_tokens and max_gen_toks (lm-eval's name of the "
                "same budget) with different values; give one."
            )
        gen["max_tokens"] = gen["max_gen_toks"]
    lm_eval_gen: dict[str, Any] = {
        k: gen[k] for k in ("until", "max_gen_toks", "do_sample", "temperature") if k in gen
    }
    if "max_tokens" in gen:
        lm_eval_gen["max_gen_toks"] = gen["max_tokens"]
    stop = None
    if "until" in gen:
        until = gen["until"]
        stop = [until] if isinstance(until, str) else [str(u) for u in until]
        stop = [u.encode("utf-8").decode("unicode_escape") for u in stop]
        lm_eval_gen["until"] = stop
    greedy_asked = gen.get("do_sample") is False or gen.get("temperature") in (0, 0.0)
    if greedy_asked:
        say(
            "metricwise eval: do_sample=false / temperature=0 asks for greedy answers: greedy is "
            "always scored (its rows are lm-eval's number); the pool is still sampled, at "
            "temperature 1 unless --temperatures says otherwise"
        )
        gen.pop("temperature", None)
    temperatures = _parse_floats(args.temperatures, "--temperatures") or [
        float(gen.get("temperature", 1.0))
    ]
    seed, fewshot_seed, notes = _seeds(args.seed)
    for note in notes:
        say(f"metricwise eval: {note}")
    model_args = _backend_options(args)  # reads lm-eval's --model/--model_args spelling first
    lm_eval_model_name = args.model or args.backend
    adaptive = _adaptive_settings(args)  # min_n > max_n and the like fail before any model
    from metricwise.global_decoding import ChainSettings, check_chain_use
    from metricwise.metrics.base import split_specs

    decodings = [d.strip() for d in args.decoding.split(",") if d.strip()]
    for decoding in decodings:
        check_chain_use(
            decoding,
            chain_given=None if "global" in decodings else _chain_flags_given(args),
            adaptive=adaptive is not None,
            spell=_flag,
        )

    config = EvalConfig(
        model=args.model,
        backend=args.backend,
        model_args=model_args,
        tasks=[t.strip() for t in args.tasks.split(",") if t.strip()],
        limit=args.limit,
        n=args.n,
        num_fewshot=args.num_fewshot,
        fewshot_strategy=args.fewshot_strategy,
        temperatures=temperatures,
        top_p=float(gen.get("top_p", 1.0)),
        top_k=int(gen.get("top_k", 0)),
        min_p=float(gen.get("min_p", 0.0)),
        max_tokens=_int_option(gen["max_tokens"], "--gen_kwargs max_tokens")
        if "max_tokens" in gen
        else None,
        seed=seed,
        data_dir=args.data_dir,
        output_path=args.output_path,
        log_samples=args.log_samples,
        store=args.store,
        batch_size=_batch_size(args.batch_size),
        bootstrap_iters=args.bootstrap_iters,
        curve_subsets=args.curve_subsets,
        plots=not args.no_plots,
        quiet=args.quiet,
        adaptive=adaptive,
        tolerance=args.tolerance if adaptive is not None else None,
        decodings=decodings,
        mbr_metrics=split_specs(args.mbr_metrics or ""),
        chain=ChainSettings(burn_in=args.burn_in, thin=args.thin),
        inspect_log=args.inspect_log,
        include_path=args.include_path,
        fewshot_seed=fewshot_seed,
        lm_eval_gen_kwargs=lm_eval_gen,
        apply_chat_template=bool(args.apply_chat_template),
        lm_eval_model_name=lm_eval_model_name,
        stop=stop,
    )
    # Settings are checked (SamplingConfig raises) before any model is loaded.
    from metricwise.types import SamplingConfig

    for t in temperatures:
        SamplingConfig(
            n=config.n,
            temperature=t,
            top_p=config.top_p,
            top_k=config.top_k,
            min_p=config.min_p,
            max_tokens=1 if config.max_tokens is None else config.max_tokens,
        )
    results = run_eval(config)
    # The first screen: a verdict per metric, then tables that fit 120 columns; the full
    # table is in results.md.
    print(render_summary(results))
    if args.output_path:
        written = "results and table" if args.no_plots else "results, table and plots"
        print(
            f"\n{written} written to {args.output_path} (the full table: results.md)",
            file=sys.stderr,
        )
    return EXIT_OK


def _run_report(args: argparse.Namespace) -> int:
    from metricwise.evaluate.report import (
        load_results,
        render_markdown,
        render_summary,
        write_plots,
    )

    directory = Path(args.directory)
    results = load_results(directory)
    print(render_summary(results))
    if directory.is_dir():
        (directory / "results.md").write_text(render_markdown(results) + "\n", encoding="utf-8")
        if not args.no_plots:
            for path in write_plots(results, directory):
                print(f"wrote {path}", file=sys.stderr)
    return EXIT_OK


def _run_recover(args: argparse.Namespace) -> int:
    from metricwise.store import recover_store

    recovery = recover_store(args.damaged, args.recovered)
    print(f"metricwise recover: {recovery.describe()}; wrote {args.recovered}", file=sys.stderr)
    return EXIT_OK


# ---------------------------------------------------------------------------------------------
# listings


def _run_tasks(args: argparse.Namespace) -> int:
    from metricwise.tasks import get_task, task_names

    print("| task | answer | metrics | range | description |")
    print("|---|---|---|---|---|")
    for name in task_names():
        task = get_task(name)
        rng = "" if task.valid_range is None else f"{task.valid_range[0]:g}-{task.valid_range[1]:g}"
        print(
            f"| {name} | {task.answer_type} | {', '.join(task.metrics)} | {rng} | {task.description} |"
        )
    print("\nYour own task: a YAML file (see examples/my_task.yaml) passed to --tasks.")
    return EXIT_OK


def _run_metrics(args: argparse.Namespace) -> int:
    from metricwise import metrics

    rows = []
    for name in metrics.names():
        try:
            info = metrics.describe(name)  # read from the class: no model is loaded
        except MetricwiseError as exc:  # a factory that needs an optional extra
            rows.append((name, "?", "?", f"unavailable: {exc}"))
            continue
        direction = "higher" if info.higher_is_better else "lower"
        rows.append((name, direction, info.bayes_rule or "mbr", info.summary))
    width = max(len(r[0]) for r in rows)
    print(f"{'metric':<{width}}  better  rule      description")
    for name, direction, rule, doc in rows:
        print(f"{name:<{width}}  {direction:<6}  {rule:<8}  {doc}")
    return EXIT_OK


def _run_models(args: argparse.Namespace) -> int:
    from metricwise.models import describe_models

    print(describe_models())
    print(
        "\nAny local transformers directory, .gguf file, or (with network access) hub id works as --model too."
    )
    return EXIT_OK


# ---------------------------------------------------------------------------------------------


def _warnings_as_messages(command: str) -> Callable[..., None]:
    """A ``warnings.showwarning`` that writes metricwise's own warnings as one line,
    ``metricwise <command>: warning: ...``, and leaves other libraries' warnings as they are."""
    default = warnings.showwarning

    def show(message: Any, category: Any, filename: str, lineno: int, *rest: Any) -> None:
        if f"{os.sep}metricwise{os.sep}" in filename:
            print(f"metricwise {command}: warning: {message}", file=sys.stderr)
        else:
            default(message, category, filename, lineno, *rest)

    return show


@contextlib.contextmanager
def _library_progress_bars(enabled: bool) -> Iterator[None]:
    """Turn off the Hugging Face libraries' own progress bars (transformers' "Loading weights",
    the hub's) for the command when ``enabled`` is False, and put them back after it."""
    if enabled:
        yield
        return
    variable = "HF_HUB_DISABLE_PROGRESS_BARS"
    before = os.environ.get(variable)
    os.environ[variable] = "1"  # read when transformers is first imported
    # Whether transformers' bars were on before: as the environment said, unless it is
    # imported already (metricwise used in-process), when its own switch says.
    was_enabled = before is None or before.strip().lower() not in ("1", "true", "yes", "on")
    if "transformers" in sys.modules:
        from transformers.utils import logging as transformers_logging

        was_enabled = transformers_logging.is_progress_bar_enabled()
        transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(variable, None)
        else:
            os.environ[variable] = before
        if "transformers" in sys.modules and was_enabled:
            from transformers.utils import logging as transformers_logging

            # huggingface_hub read the variable when it was imported during the command and
            # keeps its own bars off: it says so with a UserWarning that the user of a -q run
            # should not see.
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Cannot enable progress bars")
                transformers_logging.enable_progress_bar()


@contextlib.contextmanager
def _interrupt_once() -> Iterator[None]:
    """SIGINT ends the command once: the first raises KeyboardInterrupt, and every later one is
    ignored, so that the cleanup the first started (requests cancelled, their sockets shut
    down, the store's transaction rolled back) runs to its end.

    Supervisors and ``timeout`` often send SIGINT to a process and to its group at once; a
    second KeyboardInterrupt landing inside that cleanup used to leave worker threads blocked
    on network reads, which the interpreter then joined at exit (a hang of up to --timeout),
    or to land in the interpreter's own shutdown (a traceback). After a real SIGINT the
    process is on its way out, so SIGINT stays ignored after the command returns; without
    one, the previous handler is put back. Does nothing outside the main thread or where
    SIGINT is ignored already (a job started in the background).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    if previous is signal.SIG_IGN or previous is None:
        yield
        return
    received = False

    def interrupt(signum: int, frame: Any) -> None:
        nonlocal received
        received = True
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupt)
    try:
        yield
    finally:
        if not received:
            signal.signal(signal.SIGINT, previous)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    shown = warnings.showwarning
    warnings.showwarning = _warnings_as_messages(args.command)
    try:
        with _interrupt_once(), _library_progress_bars(not getattr(args, "quiet", False)):
            return int(args.handler(args))
    except MetricwiseError as exc:
        print(f"metricwise {args.command}: error: {exc}", file=sys.stderr)
        if isinstance(exc, BackendError) and args.command in ("sample", "predict", "eval"):
            print(
                f"metricwise {args.command}: nothing from the failed batch was stored; what was sampled before it "
                "is kept in the store, and the same command run again resumes from there",
                file=sys.stderr,
            )
        return exc.exit_code
    except KeyboardInterrupt:
        print(
            f"metricwise {args.command}: interrupted; what was sampled is kept in the store, run again to resume",
            file=sys.stderr,
        )
        return 130
    except BrokenPipeError:
        return EXIT_OK
    finally:
        warnings.showwarning = shown


if __name__ == "__main__":
    sys.exit(main())
