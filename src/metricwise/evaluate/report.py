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
    answer_type = run.get("answer_type")
    if answer_type is None:  # older results: only number tasks have the mean and median rules
        answer_type = "number" if {"mean", "median"} & labels else "text"
    try:
        label = rule_decoder(metric, answer_type).label
    except InvalidParameterError:  # a metric not registered here
        label = f"mbr[{metric}]"
    return label if label in labels else None


def _decimals(*values: float | None) -> int:
    """About three significant figures of the largest value: 101.0, 81.9, 4.85, 0.065."""
    finite = [abs(v) for v in values if v is not None and math.isfinite(v) and v != 0]
    if not finite:
        return 2
    return max(1, 2 - math.floor(math.log10(max(finite))))


def _num(value: float | None, decimals: int, *, sign: bool = False) -> str:
    if value is None or not math.isfinite(value):
        return "nan"
    return f"{value:{'+' if sign else ''}.{decimals}f}"


def render_verdicts(results: dict[str, Any]) -> list[str]:
    """One line per task (and temperature) that says whether the metric's own rule helped.

    The primary metric (the task's first), greedy's score, the score of the metric's Bayes
    rule decoder (median for absolute error, mean for squared error, mode for exact match,
    mbr[m] for a metric without a closed form) with its paired difference against greedy and
    the 95% interval, whether that interval excludes 0 at this many items, and the no-model
    prior::

        arith, absolute error: greedy 101.0, median 81.9 (-19.1 [-53.3, +14.7], not significant at 40 items), prior 153.3

    With adaptive decoders (``eval --adaptive``) the rule's adaptive twin follows the rule:
    ``mean@adaptive 3.52 with 9.5 of 32 samples``.

    When greedy or the rule did not parse every answer (or parsed some only by the extractor's
    fallback), their parse rates follow: ``; parsed: greedy 90% (60% strict, 30% fallback)``.
    """
    runs = results.get("runs", [])
    temperatures: dict[str, set[Any]] = {}
    for run in runs:
        temperatures.setdefault(_run_title(run), set()).add(run.get("temperature"))
    verdicts = []
    for run in runs:
        rows = run.get("scores") or []
        if not rows:
            continue
        metric = rows[0]["metric"]  # rows follow the task's metrics, the primary one first
        by_label = {r["decoder"]: r for r in rows if r["metric"] == metric}
        greedy = by_label.get(Greedy().label)
        prior = next(
            (r for label, r in by_label.items() if (d := _decoder(label)) and d.uses_prior), None
        )
        rule_label = _rule_label(run, metric, set(by_label))
        rule = by_label.get(rule_label) if rule_label else None
        values = [r["value"] for r in (greedy, rule, prior) if r is not None]
        decimals = _decimals(*values)
        task = _run_title(run)
        if len(temperatures.get(task, ())) > 1:
            task += f" (T={run.get('temperature')})"
        parts = []
        if greedy is not None:
            parts.append(f"greedy {_num(greedy['value'], decimals)}")
        if rule is not None:
            text = f"{rule_label} {_num(rule['value'], decimals)}"
            vs = rule.get("vs_greedy")
            if vs:
                low, high = vs["ci"]
                if low is not None and high is not None and (low > 0 or high < 0):
                    better = (low > 0) == (rule.get("direction") == "higher")
                    judged = f"{'better' if better else 'worse'} than greedy"
                else:
                    judged = "not significant"
                text += (
                    f" ({_num(vs['difference'], decimals, sign=True)} "
                    f"[{_num(low, decimals, sign=True)}, {_num(high, decimals, sign=True)}], "
                    f"{judged} at {run.get('n_items', '?')} items)"
                )
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
        if prior is not None:
            parts.append(f"prior {_num(prior['value'], decimals)}")
        # Unparsed answers are scored as the task's fallback: say so beside the numbers.
        unparsed = [
            f"{label} {_parsed_text(row)}"
            for label, row in ((Greedy().label, greedy), (rule_label, rule))
            if row is not None
            and row.get("parse_rate") is not None
            and (
                row["parse_rate"] < 1.0
                or row.get("strict_rate", row["parse_rate"]) < row["parse_rate"]
            )
        ]
        verdict = f"{task}, {metric.replace('_', ' ')}: {', '.join(parts)}"
        verdicts.append(verdict + (f"; parsed: {', '.join(unparsed)}" if unparsed else ""))
    return verdicts


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


def write_plots(results: dict[str, Any], out: Path) -> list[Path]:
    """PNG plots: the primary metric against k for every decoder (per task and temperature),
    and against temperature when several temperatures were run.

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
        curves = run.get("curves")
        if not curves:
            continue
        several = len(temperatures_by_task[_run_title(run)]) > 1
        fig, ax = plt.subplots(figsize=(7.5, 4.8))
        # Decoders that read no samples have no curve: flat lines at their score.
        flat = [
            r
            for r in run["scores"]
            if r["metric"] == curves["metric"]
            and r["decoder"] not in curves["values"]
            and (d := _decoder(r["decoder"])) is not None
            and not d.uses_samples
        ]
        used = run.get("samples_used") or {}
        points = [
            r
            for r in run["scores"]
            if r["metric"] == curves["metric"]
            and r["decoder"] in used
            and r["decoder"] not in curves["values"]
            and used[r["decoder"]]["mean"] > 0  # none on a log axis: every pool was empty
        ]
        styles = line_styles(
            [*curves["values"], *(r["decoder"] for r in flat), *(r["decoder"] for r in points)]
        )
        for label, values in curves["values"].items():
            ax.plot(curves["k"], values, markersize=3, label=label, **styles[label])
        for r in flat:
            style = {k: v for k, v in styles[r["decoder"]].items() if k != "marker"}
            ax.axhline(r["value"], linewidth=1, label=r["decoder"], **style)
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
        ax.set_xticks(curves["k"], [str(k) for k in curves["k"]])
        direction = next(
            (r["direction"] for r in run["scores"] if r["metric"] == curves["metric"]), ""
        )
        ax.set_xlabel(
            "k (samples used out of N)" + ("; stars: adaptive, at their mean k" if points else "")
        )
        ax.set_ylabel(
            f"{curves['metric']} ({'higher' if direction == 'higher' else 'lower'} is better)"
        )
        ax.set_title(
            f"{_run_title(run)}: decoder@k, T={run['temperature']:g}, {run['n_items']} items"
        )
        ax.legend(fontsize=7, ncol=2)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        name = f"plot_{_run_slug(run)}_k{'_t' + format(run['temperature'], 'g') if several else ''}.png"
        fig.savefig(out / name, dpi=120)
        plt.close(fig)
        written.append(out / name)

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
