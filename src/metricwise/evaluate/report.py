"""Tables and plots from a results dictionary (what ``results.json`` holds).

``metricwise report DIR`` re-renders both from a results directory, without a model.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from metricwise.errors import InvalidParameterError, MissingDependencyError, UnknownNameError
from metricwise.evaluate.decoders import Decoder, Greedy, rule_decoder


def _decoder(label: str) -> Decoder | None:
    """The decoder a results row names, or None for one not registered here (a results file
    written with a user's own decoder is still rendered, as a decoder that reads the samples)."""
    try:
        return Decoder.from_label(label)
    except (InvalidParameterError, UnknownNameError):
        return None


def _n_read(label: str, n: Any, used: dict[str, Any] | None = None) -> str:
    """The number of model calls a decoder reads: 1 for the greedy decode alone, 0 for a
    constant, else the N samples; ``mean/N`` ("9.5/32") for one that chooses how many
    (``used`` is its entry in the run's ``samples_used``)."""
    if used is not None:
        return f"{used['mean']:.1f}/{n}"
    decoder = _decoder(label)
    if decoder is None or decoder.uses_samples:
        return str(n)
    return "0" if decoder.is_constant else "1"


def _curve_label(label: str) -> str:
    """The decoder@k curve a decoder belongs to: ``mean`` for ``mean@adaptive``."""
    decoder = _decoder(label)
    return decoder.curve_label if decoder is not None else label.partition("@")[0]


def _temperature(label: str, temperature: Any) -> str:
    """The sampling temperature a decoder's answers come from: "-" for one that reads no
    samples (greedy is an argmax decode, the prior a constant), whatever the run's T."""
    decoder = _decoder(label)
    if decoder is not None and not decoder.uses_samples:
        return "-"
    return str(temperature)


def _run_title(run: dict[str, Any]) -> str:
    """The task a run scored, marked ``(global)`` when its decoders read a global chain's states."""
    task = str(run.get("task", "?"))
    return f"{task} (global)" if run.get("decoding") == "global" else task


def _run_slug(run: dict[str, Any]) -> str:
    """:func:`_run_title` as a file-name part: ``stsb_global``."""
    return str(run["task"]) + ("_global" if run.get("decoding") == "global" else "")


def _fmt(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "nan"
    return f"{value:.{digits}f}"


def _vs_text(vs: dict[str, Any] | None) -> str:
    """A paired difference with its 95% interval, ``*`` when the interval excludes 0."""
    if not vs:
        return ""
    low, high = vs["ci"]
    excludes_zero = low is not None and high is not None and (low > 0 or high < 0)
    return f"{vs['difference']:+.4f} [{_fmt(low)}, {_fmt(high)}]{' *' if excludes_zero else ''}"


def _parsed_text(row: dict[str, Any]) -> str:
    """The parse rate, split into strict and fallback where the extractor has an answer cue."""
    parse_rate = row.get("parse_rate")
    if parse_rate is None:
        return ""
    strict = row.get("strict_rate")
    if strict is None:
        return f"{parse_rate:.0%}"
    return f"{parse_rate:.0%} ({strict:.0%} strict, {max(parse_rate - strict, 0.0):.0%} fallback)"


def _rule_label(run: dict[str, Any], metric: str, labels: set[str]) -> str | None:
    """The decoder of ``metric``'s own Bayes rule in ``run``: recorded by the run, or (results
    written before it was) worked out from the metric's rule and the decoders present."""
    recorded = run.get("rule_decoders", {}).get(metric)
    if recorded in labels:
        return str(recorded)
    if metric == "accuracy":  # the corpus statistic: exact match of numbers, the mode's metric
        return "mode" if "mode" in labels else None
    answer_type = run.get("answer_type")
    if answer_type is None:  # older results: only number tasks have the mean and median rules
        answer_type = "number" if {"mean", "median"} & labels else "text"
    try:
        label = rule_decoder(metric, answer_type).label
    except InvalidParameterError:  # a metric not registered here
        label = f"mbr[{metric}]"
    return label if label in labels else None


def _decimals(*values: float | None) -> int:
    """About three significant figures of the largest value, at most three decimals: 24961,
    101.0, 81.9, 4.85, 0.065, 0.050."""
    finite = [abs(v) for v in values if v is not None and math.isfinite(v) and v != 0]
    if not finite:
        return 2
    largest = max(finite)
    return min(3, max(0 if largest >= 1000 else 1, 2 - math.floor(math.log10(largest))))


def _num(value: float | None, decimals: int, *, sign: bool = False) -> str:
    if value is None or not math.isfinite(value):
        return "nan"
    return f"{value:{'+' if sign else ''}.{decimals}f}"


def _judged(vs: dict[str, Any] | None, direction: str | None) -> str:
    """``better`` or ``worse`` when a paired interval excludes 0, else ``n.s.`` (not
    significant)."""
    low, high = vs["ci"] if vs else (None, None)
    if low is None or high is None or not (low > 0 or high < 0):
        return "n.s."
    return "better" if (low > 0) == (direction == "higher") else "worse"


def _vs_clause(vs: dict[str, Any] | None, direction: str | None, decimals: int) -> str:
    """``-0.78 [-1.33, -0.22] better``: a paired difference, its 95% interval, its verdict."""
    if not vs:
        return ""
    low, high = vs["ci"]
    return (
        f"{_num(vs['difference'], decimals, sign=True)} "
        f"[{_num(low, decimals, sign=True)}, {_num(high, decimals, sign=True)}] "
        f"{_judged(vs, direction)}"
    )


def _best(rows: dict[str, dict[str, Any]], order: list[str]) -> str | None:
    """The decoder with the best value among ``rows`` (the oracle, which reads the references,
    is never a candidate); ties go to the first of ``order`` (greedy, the rule, the prior)."""
    candidates = [
        label
        for label, row in rows.items()
        if not ((d := _decoder(label)) is not None and d.uses_references)
        and row.get("value") is not None
        and math.isfinite(row["value"])
    ]
    if not candidates:
        return None
    sign = 1.0 if next(iter(rows.values())).get("direction") == "higher" else -1.0
    rank = {label: i for i, label in enumerate(order)}
    return min(
        candidates, key=lambda label: (-sign * rows[label]["value"], rank.get(label, len(order)))
    )


def _task_titles(runs: list[dict[str, Any]]) -> list[str]:
    """Each run's title: the task, ``(global)`` for global decoding, ``(T=0.5)`` in a sweep."""
    temperatures: dict[str, set[Any]] = {}
    for run in runs:
        temperatures.setdefault(_run_title(run), set()).add(run.get("temperature"))
    return [
        _run_title(run)
        + (f" (T={run.get('temperature')})" if len(temperatures[_run_title(run)]) > 1 else "")
        for run in runs
    ]


def render_verdicts(results: dict[str, Any]) -> list[str]:
    """One line per metric of each task (and temperature): which decoder is best, and whether
    that is more than noise against greedy and against the no-model prior.

    Each line names the metric, its direction and the number of items, then the best decoder
    (never the oracle, which reads the references) with its value, then its paired difference
    against greedy and against the prior with the 95% interval and ``better``, ``worse`` or
    ``n.s.`` (not significant: whether the interval excludes 0 at this many items)::

        stars, squared error ↓ (40 items): best prior 2.00 (a constant); vs greedy 2.83: -0.82 [-1.83, +0.10] n.s.; rule mean 2.04 vs greedy: -0.78 [-1.33, -0.22] better

    When greedy is best, the line says so and gives the runner-up against it and the range of
    the decoders that read the samples::

        arith, accuracy ↑ (40 items): best greedy 0.050, no decoder beats it (next median+model 0.050: +0.000 [-0.075, +0.075] n.s., samplers 0.000-0.050); vs prior 0.000: +0.050 [+0.000, +0.125] n.s.; rule mode 0.025 vs greedy: -0.025 [-0.075, +0.000] n.s.

    When the metric's own Bayes rule (median for absolute error, mean for squared error, mode
    for exact match, mbr[m] for a metric without a closed form) is not the best, it follows with
    its own difference against greedy, so that the principled choice is never hidden behind
    the luckiest of many decoders; with adaptive decoders (``eval --adaptive``) the rule's
    adaptive twin follows it: ``mean@adaptive 3.52 with 9.5 of 32 samples``. Corpus statistics
    (accuracy, Pearson, Spearman) get a line each, after the per-item metrics.

    On a task's first line, when greedy, the rule or the best decoder did not parse every
    answer (or parsed some only by the extractor's fallback), their parse rates follow:
    ``; parsed: greedy 90% (60% strict, 30% fallback)``.
    """
    runs = results.get("runs", [])
    verdicts = []
    for run, task in zip(runs, _task_titles(runs), strict=True):
        rows = [*(run.get("scores") or []), *(run.get("corpus") or [])]
        metrics = list(dict.fromkeys(r["metric"] for r in rows))
        for index, metric in enumerate(metrics):
            by_label = {r["decoder"]: r for r in rows if r["metric"] == metric}
            verdicts.append(_metric_verdict(run, task, metric, by_label, first=index == 0))
    return verdicts


def _metric_verdict(
    run: dict[str, Any],
    task: str,
    metric: str,
    by_label: dict[str, dict[str, Any]],
    *,
    first: bool,
) -> str:
    """One line of :func:`render_verdicts`: ``metric`` of one run."""
    greedy_label = Greedy().label
    greedy = by_label.get(greedy_label)
    prior_label = next(
        (label for label in by_label if (d := _decoder(label)) and d.uses_prior), None
    )
    prior = by_label.get(prior_label) if prior_label else None
    rule_label = _rule_label(run, metric, set(by_label))
    order = [label for label in (greedy_label, rule_label, prior_label) if label]
    best_label = _best(by_label, order)
    best = by_label.get(best_label) if best_label else None
    direction = next(iter(by_label.values())).get("direction")
    decimals = _decimals(*(r["value"] for r in (greedy, best, prior) if r is not None))
    arrow = {"higher": " ↑", "lower": " ↓"}.get(str(direction), "")
    head = f"{task}, {metric.replace('_', ' ')}{arrow} ({run.get('n_items', '?')} items): "
    parts: list[str] = []
    if best is None:
        parts.append("no decoder scored")
    elif best_label == greedy_label:
        text = f"best greedy {_num(best['value'], decimals)}, no decoder beats it"
        others = [
            label
            for label, row in by_label.items()
            if label not in (greedy_label, prior_label)
            and not ((d := _decoder(label)) is not None and d.uses_references)
            and row.get("vs_greedy")
        ]
        runner_up = _best({label: by_label[label] for label in others}, order)
        if runner_up is not None:
            row = by_label[runner_up]
            text += (
                f" (next {runner_up} {_num(row['value'], decimals)}: "
                f"{_vs_clause(row.get('vs_greedy'), direction, decimals)}"
            )
            samplers = [
                by_label[label]["value"]
                for label in others
                if (d := _decoder(label)) is None or d.uses_samples
            ]
            if len(samplers) > 1:
                text += (
                    f", samplers {_num(min(samplers), decimals)}-{_num(max(samplers), decimals)}"
                )
            text += ")"
        parts.append(text)
    else:
        constant = " (a constant)" if best_label == prior_label else ""
        parts.append(f"best {best_label} {_num(best['value'], decimals)}{constant}")
        if greedy is not None and best.get("vs_greedy"):
            parts.append(
                f"vs greedy {_num(greedy['value'], decimals)}: "
                f"{_vs_clause(best['vs_greedy'], direction, decimals)}"
            )
    if prior is not None and best is not None and best_label != prior_label:
        vs_prior = best.get("vs_prior")
        parts.append(
            f"vs prior {_num(prior['value'], decimals)}"
            + (f": {_vs_clause(vs_prior, direction, decimals)}" if vs_prior else "")
        )
    rule = by_label.get(rule_label) if rule_label else None
    if rule is not None and rule_label not in (best_label, greedy_label):
        text = f"rule {rule_label} {_num(rule['value'], decimals)}"
        if rule.get("vs_greedy"):
            text += f" vs greedy: {_vs_clause(rule['vs_greedy'], direction, decimals)}"
        parts.append(text)
    # The rule's adaptive twin: its score at the samples it needed.
    used = run.get("samples_used") or {}
    twin = next(
        (
            label
            for label in used
            if label in by_label and rule_label and _curve_label(label) == rule_label
        ),
        None,
    )
    if twin is not None:
        parts.append(
            f"{twin} {_num(by_label[twin]['value'], decimals)} "
            f"with {used[twin]['mean']:.1f} of {run.get('n', '?')} samples"
        )
    # Unparsed answers are scored as the task's fallback: say so beside the numbers.
    unparsed = []
    if first:
        shown = dict.fromkeys(label for label in (greedy_label, rule_label, best_label) if label)
        unparsed = [
            f"{label} {_parsed_text(by_label[label])}"
            for label in shown
            if label in by_label
            and by_label[label].get("parse_rate") is not None
            and (
                by_label[label]["parse_rate"] < 1.0
                or by_label[label].get("strict_rate", by_label[label]["parse_rate"])
                < by_label[label]["parse_rate"]
            )
        ]
    return head + "; ".join(parts) + (f"; parsed: {', '.join(unparsed)}" if unparsed else "")


#: The first screen's width: verdicts wrap and tables drop columns to fit it.
SCREEN_WIDTH = 120


def render_summary(results: dict[str, Any], width: int = SCREEN_WIDTH) -> str:
    """The first screen of ``metricwise eval`` and ``metricwise report``: the verdicts
    (:func:`render_verdicts`, one per metric of each task, wrapped to ``width``), then one
    narrow table per task and metric (Decoder | N | value | 95% CI | vs greedy | vs prior |
    parsed, with about three significant figures), each no wider than ``width``: a table
    that would be wider drops the strict/fallback split of ``parsed``, then the value's
    interval. The full table (every column, four decimals) is :func:`render_markdown`'s,
    in ``results.md``.
    """
    import textwrap

    lines = []
    for verdict in render_verdicts(results):
        lines += _wrap_clauses(verdict, width)
    runs = results.get("runs", [])
    for run, title in zip(runs, _task_titles(runs), strict=True):
        rows = [*(run.get("scores") or []), *(run.get("corpus") or [])]
        for metric in dict.fromkeys(r["metric"] for r in rows):
            block = [r for r in rows if r["metric"] == metric]
            direction = block[0].get("direction")
            arrow = {"higher": " ↑", "lower": " ↓"}.get(str(direction), "")
            temperature = run.get("temperature")
            lines += [
                "",
                f"{title}, {metric.replace('_', ' ')}{arrow}"
                + (
                    f" (T={temperature}, {run.get('n_items', '?')} items)"
                    if temperature is not None
                    else ""
                ),
                *_narrow_table(run, block, width),
            ]
    for line in _decoding_lines(results):
        if line.startswith("- "):  # a chain's summary
            lines += textwrap.wrap(line, width, subsequent_indent="    ")
        else:
            lines.append(line)
    return "\n".join(lines)


def _wrap_clauses(verdict: str, width: int) -> list[str]:
    """A verdict as a list item of lines no wider than ``width``, broken after its ``; ``
    (a clause is split only when it alone is too wide)."""
    import textwrap

    lines: list[str] = []
    current = "- "
    clauses = verdict.split("; ")
    for index, clause in enumerate(clauses):
        text = clause + (";" if index < len(clauses) - 1 else "")
        fresh = current in ("- ", "    ")
        candidate = current + text if fresh else f"{current} {text}"
        if len(candidate) <= width:
            current = candidate
            continue
        if not fresh:
            lines.append(current)
            current = "    "
        wrapped = textwrap.wrap(
            current + text, width, subsequent_indent="    ", break_on_hyphens=False
        )
        lines += wrapped[:-1]
        current = wrapped[-1]
    lines.append(current)
    return lines


def _narrow_table(run: dict[str, Any], rows: list[dict[str, Any]], width: int) -> list[str]:
    """One metric's rows of one run as a padded markdown table no wider than ``width`` (where
    dropping columns can make it so)."""
    decimals = _decimals(*(r.get("value") for r in rows))
    used = run.get("samples_used") or {}
    corpus = "stderr" not in rows[0] and "parse_rate" not in rows[0]

    def vs(row: dict[str, Any], key: str) -> str:
        v = row.get(key)
        if not v:
            return ""
        low, high = v["ci"]
        mark = " *" if _judged(v, row.get("direction")) != "n.s." else ""
        return (
            f"{_num(v['difference'], decimals, sign=True)} "
            f"[{_num(low, decimals, sign=True)}, {_num(high, decimals, sign=True)}]{mark}"
        )

    def parsed(row: dict[str, Any], split: bool) -> str:
        if row.get("parse_rate") is None:
            return ""
        if not split or row.get("strict_rate") is None:
            return f"{row['parse_rate']:.0%}"
        return f"{row['parse_rate']:.0%} ({row['strict_rate']:.0%} strict)"

    def table(ci: bool, split: bool) -> list[str]:
        header = [
            "Decoder",
            *([] if corpus else ["N"]),
            "Value",
            *(["95% CI"] if ci else []),
            "vs greedy",
            "vs prior",
        ]
        if not corpus:
            header.append("parsed")
        body = []
        for row in rows:
            low, high = row.get("ci") or (None, None)
            cells = [
                row["decoder"],
                *(
                    []
                    if corpus
                    else [_n_read(row["decoder"], run.get("n", ""), used.get(row["decoder"]))]
                ),
                _num(row.get("value"), decimals),
                *([f"[{_num(low, decimals)}, {_num(high, decimals)}]"] if ci else []),
                vs(row, "vs_greedy"),
                vs(row, "vs_prior"),
            ]
            if not corpus:
                cells.append(parsed(row, split))
            body.append(cells)
        widths = [max(len(c) for c in column) for column in zip(header, *body, strict=True)]

        def line(cells: list[str]) -> str:
            return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

        rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
        return [line(header), rule, *(line(c) for c in body)]

    for ci, split in ((True, True), (True, False), (False, False)):
        lines = table(ci, split)
        if max(len(line) for line in lines) <= width:
            break
    return lines


def render_markdown(results: dict[str, Any]) -> str:
    """The verdicts (:func:`render_verdicts`, one line per task), then the results table:
    Task | Version | Decoder | N | T | Metric | direction | Value | +- | 95% CI | vs greedy |
    vs prior | parsed.

    ``+-`` is the bootstrap standard error; ``vs greedy`` and ``vs prior`` are the paired mean
    differences against greedy and against the no-model constant, with their 95% intervals,
    marked ``*`` when the interval excludes 0 (empty where the run has no such baseline, as in
    results written before ``vs prior`` existed). ``parsed`` is the share of items
    where the decoder produced an answer at all; for an extractor with an answer cue
    (``number:answer``) it is split into strict (found after the cue) and fallback (the last
    number of a text without one), as lm-evaluation-harness reports strict-match and
    flexible-extract. ``N`` is the number of model calls a decoder
    reads: 1 for greedy, 0 for the prior (a constant from the few-shot split). ``T`` is the
    sampling temperature, "-" for decoders that read no samples. A decoder that chooses how
    many samples to read (``mean@adaptive``) shows its mean over the items out of N:
    ``9.5/32``; ``samples_used`` in the results holds the histogram.

    Corpus statistics (accuracy, Pearson, Spearman) follow in a second table, with the same
    paired differences (the statistic of the decoder minus the baseline's, on the same
    resampled items).
    """
    verdicts = render_verdicts(results)
    # The verdicts come first, as a list so that results.md keeps one per line.
    lines = [f"- {v}" for v in verdicts] + ([""] if verdicts else [])
    lines += [
        "| Task | Version | Decoder | N | T | Metric | direction | Value | +- | 95% CI | vs greedy | vs prior | parsed |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in results.get("runs", []):
        n = run.get("n", "")
        temperature = run.get("temperature", "")
        used = run.get("samples_used") or {}
        for row in run["scores"]:
            n_text = _n_read(row["decoder"], n, used.get(row["decoder"]))
            lines.append(
                f"| {_run_title(run)} | {run['version']} | {row['decoder']} | {n_text} | {_temperature(row['decoder'], temperature)} | {row['metric']} | "
                f"{'↑' if row['direction'] == 'higher' else '↓'} | {_fmt(row['value'])} | {_fmt(row['stderr'])} | "
                f"[{_fmt(row['ci'][0])}, {_fmt(row['ci'][1])}] | {_vs_text(row.get('vs_greedy'))} | "
                f"{_vs_text(row.get('vs_prior'))} | {_parsed_text(row)} |"
            )
    corpus = [(run, row) for run in results.get("runs", []) for row in run.get("corpus", [])]
    if corpus:
        lines += [
            "",
            "| Task | Decoder | T | Statistic | Value | 95% CI | vs greedy | vs prior |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for run, row in corpus:
            lines.append(
                f"| {_run_title(run)} | {row['decoder']} | {_temperature(row['decoder'], run.get('temperature', ''))} | {row['metric']} | {_fmt(row['value'])} | "
                f"[{_fmt(row['ci'][0])}, {_fmt(row['ci'][1])}] | {_vs_text(row.get('vs_greedy'))} | {_vs_text(row.get('vs_prior'))} |"
            )
    lines += _decoding_lines(results)
    lines += _selective_lines(results)
    return "\n".join(lines)


def _decoding_lines(results: dict[str, Any]) -> list[str]:
    """Global against local decoding: how each chain moved, then each decoder's paired
    difference (global minus local, on one pool of proposals), ``*`` where its 95% interval
    excludes 0."""
    runs = [r for r in results.get("runs", []) if r.get("decoding") == "global"]
    if not runs:
        return []
    lines = [""]
    for run in runs:
        chain = run.get("chain") or {}
        if chain:
            lines.append(
                f"- {run['task']} (T={run.get('temperature')}): global chains accepted "
                f"{chain['acceptance_rate']:.1%} of proposals on average "
                f"({chain['acceptance_rate_min']:.0%}-{chain['acceptance_rate_max']:.0%} per item), "
                f"{chain['distinct_states']:.1f} distinct states of {chain['states']} from "
                f"{chain['n_proposals']} proposals (burn-in {chain['burn_in']}, thinning {chain['thin']})"
            )
    compared = [(run, row) for run in runs for row in run.get("vs_local", [])]
    if compared:
        lines += [
            "",
            "| Task | T | Decoder | Metric | global - local | p |",
            "|---|---|---|---|---|---|",
        ]
        for run, row in compared:
            lines.append(
                f"| {run['task']} | {run.get('temperature')} | {row['decoder']} | {row['metric']} | "
                f"{_vs_text(row)} | {_fmt(row['p_value'], 3)} |"
            )
    return lines


#: Colours of the built-in decoder families, fixed so that a family looks the same in every
#: plot; other families (mbr[m] for each metric, a user's decoders) take the unused colours of
#: tab20 in order. Greedy and the prior are flat reference lines in black and grey.
FAMILY_COLOURS: dict[str, str] = {
    "greedy": "black",
    "prior": "grey",
    "first": "tab:blue",
    "max_logprob": "tab:orange",
    "mode": "tab:green",
    "mean": "tab:red",
    "median": "tab:purple",
    "oracle": "tab:olive",
}
#: One line style per weighting of the samples; dotted for decoders that read no samples.
WEIGHTING_STYLES: dict[str, str] = {"uniform": "-", "model": "--", "importance": "-."}
NO_SAMPLES_STYLE = ":"
#: Markers: a decoder@k curve's points, and a decoder that chooses how many samples it reads
#: (drawn at its mean samples used in its fixed-k decoder's colour; hollow unless uniform).
CURVE_MARKER = "o"
ADAPTIVE_MARKER = "*"
# tab10's unused colours, then tab20's light ones, then a few named ones: never a fixed one.
_SPARE_COLOURS: tuple[str, ...] = (
    "tab:brown",
    "tab:pink",
    "tab:cyan",
    "#aec7e8",
    "#ffbb78",
    "#98df8a",
    "#ff9896",
    "#c5b0d5",
    "#c49c94",
    "#f7b6d2",
    "#dbdb8d",
    "#9edae5",
    "gold",
    "navy",
    "teal",
    "maroon",
)


def _family(label: str) -> tuple[str, str | None]:
    """(family, weighting) of a label: ``mbr[chrf]+model`` is (``mbr[chrf]``, ``model``), and
    so is its adaptive twin ``mbr[chrf]+model@adaptive``."""
    decoder = _decoder(label)
    if decoder is None:
        stem, plus, suffix = label.partition("@")[0].rpartition("+")
        return (stem, suffix) if plus and suffix in WEIGHTING_STYLES else (label, None)
    weighting = decoder.weighting
    label = decoder.curve_label
    if weighting is None or weighting == "uniform":
        return label, weighting
    return label[: -len(f"+{weighting}")], weighting


def line_styles(labels: list[str]) -> dict[str, dict[str, Any]]:
    """Colour, line style and marker of each decoder of one plot: one colour per decoder
    family (the label without its weighting, an adaptive twin with its fixed-k decoder) and one
    line style per weighting, so that no two decoders look alike (12 or more lines share a
    plot); decoders that choose how many samples they read get :data:`ADAPTIVE_MARKER`."""
    families = {label: _family(label) for label in labels}
    colours: dict[str, str] = {}
    n_spare = 0
    for family, _ in families.values():
        if family not in colours:
            colour = FAMILY_COLOURS.get(family)
            if colour is None:  # past 16 other families colours repeat; line styles still differ
                colour = _SPARE_COLOURS[n_spare % len(_SPARE_COLOURS)]
                n_spare += 1
            colours[family] = colour
    styles = {}
    for label, (family, weighting) in families.items():
        decoder = _decoder(label)
        reads_samples = decoder is None or decoder.uses_samples
        style = WEIGHTING_STYLES.get(weighting or "uniform", "-")
        styles[label] = {
            "color": colours[family],
            "linestyle": style if reads_samples else NO_SAMPLES_STYLE,
            "marker": ADAPTIVE_MARKER
            if decoder is not None and decoder.chooses_n
            else CURVE_MARKER,
        }
    return styles


def _curve_sets(run: dict[str, Any]) -> list[dict[str, Any]]:
    """A run's decoder@k curves, one per metric, the primary first (results written before
    ``other_curves`` and the intervals existed have the primary metric's alone, without
    ``low`` and ``high``)."""
    curves = run.get("curves")
    return [curves, *(run.get("other_curves") or [])] if curves else []


#: Decoders drawn strong on a k plot (with their intervals): the metric's own Bayes rule and
#: the two baselines; every other decoder is drawn faint, for context.
STRONG_WIDTH, FAINT_WIDTH, FAINT_ALPHA, BAND_ALPHA = 2.2, 0.9, 0.35, 0.15


def _plot_k(plt: Any, run: dict[str, Any], curves: dict[str, Any], path: Path) -> None:
    """One metric's decoder@k plot of one run (see :func:`write_plots`)."""
    metric = curves["metric"]
    rows = {r["decoder"]: r for r in run["scores"] if r["metric"] == metric}
    greedy_label = Greedy().label
    prior_label = next(
        (label for label in rows if (d := _decoder(label)) is not None and d.uses_prior), None
    )
    rule_label = _rule_label(run, metric, set(rows))
    strong = {label for label in (greedy_label, rule_label, prior_label) if label}
    # Decoders that read no samples have no curve: flat lines at their score.
    flat = [
        r
        for label, r in rows.items()
        if label not in curves["values"]
        and (d := _decoder(label)) is not None
        and not d.uses_samples
    ]
    used = run.get("samples_used") or {}
    points = [
        r
        for label, r in rows.items()
        if label in used
        and label not in curves["values"]
        and used[label]["mean"] > 0  # none on a log axis: every pool was empty
    ]
    styles = line_styles(
        [*curves["values"], *(r["decoder"] for r in flat), *(r["decoder"] for r in points)]
    )
    vs_greedy = (curves.get("vs_greedy") or {}).get(rule_label or "")
    if vs_greedy is not None:
        fig, (ax, diff_ax) = plt.subplots(
            2, 1, figsize=(9.5, 6.6), sharex=True, gridspec_kw={"height_ratios": [3, 1.3]}
        )
    else:
        fig, ax = plt.subplots(figsize=(9.5, 5.0))
    ks = curves["k"]
    low, high = curves.get("low") or {}, curves.get("high") or {}

    def look(label: str) -> dict[str, Any]:
        if label in strong:
            return {"linewidth": STRONG_WIDTH, "zorder": 3}
        return {"linewidth": FAINT_WIDTH, "alpha": FAINT_ALPHA, "zorder": 2}

    # The strong decoders first, so that they lead the legend.
    for label in sorted(curves["values"], key=lambda label: label not in strong):
        values = curves["values"][label]
        ax.plot(
            ks,
            values,
            markersize=4 if label in strong else 2,
            label=label,
            **styles[label],
            **look(label),
        )
        if label in strong and label in low and label in high:
            ax.fill_between(
                ks,
                low[label],
                high[label],
                color=styles[label]["color"],
                alpha=BAND_ALPHA,
                linewidth=0,
            )
    for r in sorted(flat, key=lambda r: r["decoder"] not in strong):
        label = r["decoder"]
        style = {k: v for k, v in styles[label].items() if k != "marker"}
        ax.axhline(r["value"], label=label, **style, **look(label))
    # A flat baseline's interval is a bar beside the last k (bands of flat lines would overlap).
    bars = [r for r in flat if r["decoder"] in strong and r.get("ci") and None not in r["ci"]]
    for position, r in enumerate(bars, start=1):
        x = ks[-1] * 2 ** (0.12 * position)
        ax.errorbar(
            [x],
            [r["value"]],
            yerr=[[r["value"] - r["ci"][0]], [r["ci"][1] - r["value"]]],
            color=styles[r["decoder"]]["color"],
            capsize=4,
            linewidth=STRONG_WIDTH,
            marker="_",
        )
    for r in points:
        style = styles[r["decoder"]]
        weighting = _family(r["decoder"])[1]
        ax.plot(
            [used[r["decoder"]]["mean"]],
            [r["value"]],
            linestyle="none",
            marker=style["marker"],
            markersize=11,
            color=style["color"],
            markerfacecolor=style["color"] if weighting in (None, "uniform") else "none",
            label=r["decoder"],
        )
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    direction = next(iter(rows.values()))["direction"] if rows else ""
    xlabel = "k (samples used out of N)" + ("; stars: adaptive, at their mean k" if points else "")
    if vs_greedy is not None:
        # The paired difference is what says whether the rule beats greedy: the marginal
        # intervals above overlap even when it does.
        colour = styles[str(rule_label)]["color"]
        diff_ax.plot(
            ks,
            vs_greedy["difference"],
            color=colour,
            linewidth=STRONG_WIDTH,
            marker="o",
            markersize=4,
        )
        diff_ax.fill_between(
            ks, vs_greedy["low"], vs_greedy["high"], color=colour, alpha=0.25, linewidth=0
        )
        diff_ax.axhline(0.0, color="black", linestyle=":", linewidth=1.2)
        diff_ax.set_ylabel(f"{rule_label} − greedy\n(paired, 95%)", fontsize=8)
        diff_ax.grid(alpha=0.3)
        diff_ax.set_xlabel(xlabel)
    else:
        ax.set_xlabel(xlabel)
    ax.set_ylabel(f"{metric} ({'higher' if direction == 'higher' else 'lower'} is better)")
    banded = [label for label in (rule_label, greedy_label, prior_label) if label in strong]
    ax.set_title(
        f"{_run_title(run)}: {metric} against k, T={run['temperature']:g}, {run['n_items']} items\n"
        f"bold: {', '.join(banded)}"
        + (" with 95% intervals" if low or flat else "")
        + "; faint: the other decoders",
        fontsize=10,
    )
    # The strong decoders lead the legend: rule, greedy, prior, then the rest in drawing order.
    handles, labels = ax.get_legend_handles_labels()
    order = sorted(range(len(labels)), key=lambda i: labels[i] not in strong)
    ax.legend(
        [handles[i] for i in order],
        [labels[i] for i in order],
        fontsize=7,
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        borderaxespad=0.0,
        frameon=False,
    )
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_plots(results: dict[str, Any], out: Path) -> list[Path]:
    """PNG plots: each metric against k for every decoder (per task and temperature), and the
    primary metric against temperature when several temperatures were run.

    One k plot per metric (``plot_<task>_k.png`` for the primary one, as before, and
    ``plot_<task>_k_<metric>.png`` for the others). The metric's own Bayes rule, greedy and
    the prior are drawn strong with their 95% intervals (a band around the rule's curve, the
    bootstrap over items at each k; a band around each flat baseline); every other decoder is
    faint, for context. The legend sits outside the axes.

    On the k plot, a decoder that chooses how many samples it reads (``mean@adaptive``) is one
    marker at (mean samples used, score), in its fixed-k decoder's colour, so that it reads
    against that decoder's curve: below the curve at the same mean k is a saving.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise MissingDependencyError(
            "Plots need matplotlib: pip install 'metricwise[plot]' (or pass --no_plots)."
        ) from None

    written: list[Path] = []
    runs = results.get("runs", [])
    temperatures_by_task: dict[str, set[float]] = {}
    for run in runs:
        temperatures_by_task.setdefault(_run_title(run), set()).add(run["temperature"])
    for run in runs:
        several = len(temperatures_by_task[_run_title(run)]) > 1
        suffix = "_t" + format(run["temperature"], "g") if several else ""
        for index, curves in enumerate(_curve_sets(run)):
            metric_part = "" if index == 0 else f"_{curves['metric']}"
            path = out / f"plot_{_run_slug(run)}_k{metric_part}{suffix}.png"
            _plot_k(plt, run, curves, path)
            written.append(path)

    for run in runs:
        several = len(temperatures_by_task[_run_title(run)]) > 1
        suffix = "_t" + format(run["temperature"], "g") if several else ""
        risk_row = _selective_row(run)
        if risk_row is not None:
            path = out / f"plot_{_run_slug(run)}_risk{suffix}.png"
            _plot_risk(plt, run, risk_row, path)
            written.append(path)

    for task, temps in temperatures_by_task.items():
        if len(temps) < 2:
            continue
        task_runs = sorted(
            (r for r in runs if _run_title(r) == task), key=lambda r: r["temperature"]
        )
        metric = (
            task_runs[0]["curves"]["metric"]
            if task_runs[0].get("curves")
            else task_runs[0]["scores"][0]["metric"]
        )
        fig, ax = plt.subplots(figsize=(7, 4.5))
        labels = [r["decoder"] for r in task_runs[0]["scores"] if r["metric"] == metric]
        styles = line_styles(labels)
        for label in labels:
            xs, ys = [], []
            for r in task_runs:
                row = next(
                    (s for s in r["scores"] if s["decoder"] == label and s["metric"] == metric),
                    None,
                )
                if row is not None:
                    xs.append(r["temperature"])
                    ys.append(row["value"])
            ax.plot(xs, ys, markersize=4, label=label, **styles[label])
        ax.set_xlabel("sampling temperature")
        ax.set_ylabel(metric)
        ax.set_title(f"{task}: temperature sweep")
        ax.legend(fontsize=7, ncol=2)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = out / f"plot_{_run_slug(task_runs[0])}_temperature.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written


#: How each ranking of the items is named on the risk plot and in results.md.
_RANKING_NAMES = {
    "risk": "its expected loss (risk)",
    "logprob": "greedy's log-prob per token",
    "spread": "samples' spread",
}


def _selective_row(run: dict[str, Any]) -> dict[str, Any] | None:
    """The selective-prediction row of the primary metric's own Bayes rule, or None (results
    written before selective prediction existed, or no rule decoder)."""
    rows = run.get("selective") or []
    if not rows:
        return None
    metric = run["scores"][0]["metric"]
    rule = (run.get("rule_decoders") or {}).get(metric)
    return next((r for r in rows if r["decoder"] == rule and r["metric"] == metric), None)


def _plot_risk(plt: Any, run: dict[str, Any], row: dict[str, Any], path: Path) -> None:
    """Risk-coverage: the metric over the most confident share of items, as ranked by the
    decision's own risk (strong, with its 95% band) and by the baselines (faint), against
    answering everything (dotted)."""
    fig, ax = plt.subplots(figsize=(8.5, 4.8))
    colours = {"risk": "#d62728", "logprob": "#1f77b4", "spread": "#2ca02c"}
    for name, ranking in row["rankings"].items():
        xs = [100 * point[0] for point in ranking["curve"]]
        ys = [point[1] for point in ranking["curve"]]
        strong = name == "risk"
        area = ranking["area"]
        rho = ranking["spearman"]
        label = (
            f"ranked by {_RANKING_NAMES.get(name, name)}: area {_fmt(area['value'], 3)}, "
            f"Spearman {_fmt(rho['value'], 2)} [{_fmt(rho['ci'][0], 2)}, {_fmt(rho['ci'][1], 2)}]"
        )
        ax.plot(
            xs,
            ys,
            marker="o",
            markersize=4 if strong else 3,
            linewidth=2.4 if strong else 1.2,
            alpha=1.0 if strong else 0.75,
            color=colours.get(name, "grey"),
            label=label,
        )
        if strong:
            ax.fill_between(
                xs,
                [point[2] for point in ranking["curve"]],
                [point[3] for point in ranking["curve"]],
                color=colours["risk"],
                alpha=0.15,
                linewidth=0,
            )
    ax.axhline(
        row["full"], color="black", linestyle=":", linewidth=1.4, label="answering every item"
    )
    direction = "higher" if row["direction"] == "higher" else "lower"
    ax.set_xlabel("coverage: % of items answered, most confident first")
    ax.set_ylabel(f"{row['metric']} ({direction} is better)")
    ax.set_title(
        f"{_run_title(run)}: when to trust {row['decoder']} ({run.get('n_items', '?')} items)\n"
        "bold: ranked by the decision's own expected loss, with its 95% interval"
    )
    ax.set_xlim(5, 105)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _selective_lines(results: dict[str, Any]) -> list[str]:
    """results.md's selective-prediction table: for each decoder with a risk, how well each
    ranking orders the items by their true loss."""
    rows = [(run, row) for run in results.get("runs", []) for row in run.get("selective") or []]
    if not rows:
        return []
    lines = [
        "",
        "Selective prediction: the metric over the most confident share of items (area: its mean "
        "over 10%..100% coverage), and how well a ranking orders items by their true loss "
        "(Spearman's rho of uncertainty against loss; AUROC for a loss above the median).",
        "",
        "| Task | Decoder | Metric | Ranked by | Area | 95% CI | Spearman | 95% CI | AUROC | 95% CI | at 100% |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run, row in rows:
        for name, ranking in row["rankings"].items():
            cells = []
            for key in ("area", "spearman", "auroc"):
                value, (low, high) = ranking[key]["value"], ranking[key]["ci"]
                cells += [_fmt(value), f"[{_fmt(low)}, {_fmt(high)}]"]
            lines.append(
                f"| {_run_title(run)} | {row['decoder']} | {row['metric']} | {name} | "
                + " | ".join(cells)
                + f" | {_fmt(row['full'])} |"
            )
    return lines


def load_results(directory: Path) -> dict[str, Any]:
    path = directory / "results.json" if directory.is_dir() else directory
    if not path.exists():
        raise InvalidParameterError(
            f"No results.json in {directory}: run `metricwise eval --output_path {directory}` first."
        )
    try:
        results: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InvalidParameterError(f"{path} is not valid JSON: {exc}.") from None
    if "runs" not in results:
        raise InvalidParameterError(f"{path} is not a metricwise results file (no 'runs').")
    return results
