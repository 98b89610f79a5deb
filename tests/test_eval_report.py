"""The results table, verdicts and plots, from fresh results and from results.json files written
by earlier versions."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest

from metricwise.evaluate.report import (
    load_results,
    render_markdown,
    render_summary,
    render_verdicts,
    write_plots,
)
from metricwise.evaluate.scoring import score_task
from test_scoring import RATING, rating_fixture

TRAIN = [0.0, 1.0, 1.0, 2.0, 7.0]


@pytest.fixture(scope="module")
def rating_results():
    items, prompts, greedy, pools = rating_fixture()
    run, _ = score_task(
        RATING, items, prompts, greedy, pools, bootstrap_iters=200, prior_references=TRAIN
    )
    run.update({"temperature": 0.7, "n": 8, "num_fewshot": 0})
    return {"config": {}, "runs": [run]}


def table_row(table, decoder, metric):
    return next(
        line
        for line in table.splitlines()
        if line.startswith(f"| rating | 1 | {decoder} |") and f"| {metric} |" in line
    )


def cells(line):
    return [c.strip() for c in line.split("|")[1:-1]]


def test_decoders_that_read_no_samples_have_no_temperature(rating_results):
    table = render_markdown(rating_results)
    assert table_row(table, "greedy", "squared_error").startswith("| rating | 1 | greedy | 1 | - |")
    assert table_row(table, "prior", "squared_error").startswith("| rating | 1 | prior | 0 | - |")
    assert table_row(table, "mean", "squared_error").startswith("| rating | 1 | mean | 8 | 0.7 |")
    corpus = [line for line in table.splitlines() if line.startswith("| rating | greedy |")]
    assert corpus and all(line.startswith("| rating | greedy | - |") for line in corpus)
    assert np.isfinite(rating_results["runs"][0]["scores"][0]["value"])


def test_the_table_has_a_vs_prior_column(rating_results):
    table = render_markdown(rating_results)
    header = next(line for line in table.splitlines() if line.startswith("| Task | Version"))
    assert "| vs greedy | vs prior | parsed |" in header
    columns = cells(header)
    vs_prior = cells(table_row(table, "mean", "squared_error"))[columns.index("vs prior")]
    row = next(
        r
        for r in rating_results["runs"][0]["scores"]
        if r["decoder"] == "mean" and r["metric"] == "squared_error"
    )
    assert vs_prior.startswith(f"{row['vs_prior']['difference']:+.4f} [")
    assert cells(table_row(table, "prior", "squared_error"))[columns.index("vs prior")] == ""


def test_the_parsed_column_splits_strict_from_fallback_answers(rating_results):
    results = copy.deepcopy(rating_results)
    row = next(r for r in results["runs"][0]["scores"] if r["decoder"] == "greedy")
    row.update({"parse_rate": 0.9, "strict_rate": 0.6})
    line = table_row(render_markdown(results), "greedy", row["metric"])
    assert line.endswith("| 90% (60% strict, 30% fallback) |")
    # Rows without a strict rate (no answer cue, or results from earlier versions) as before.
    assert table_row(render_markdown(results), "mean", "squared_error").endswith("| 100% |")


def test_plot_colours_follow_the_decoder_family_and_line_styles_the_weighting(
    rating_results, tmp_path, monkeypatch
):
    plt = pytest.importorskip("matplotlib.pyplot")
    from matplotlib.colors import to_hex

    close, figures = plt.close, []
    monkeypatch.setattr(plt, "close", figures.append)
    try:
        write_plots(rating_results, tmp_path)
        figure = figures[0]  # the primary metric's; one plot per metric
        lines = labelled_lines(figure.axes[0])
    finally:
        for figure in figures:
            close(figure)
    looks = {
        label: (to_hex(line.get_color()), line.get_linestyle()) for label, line in lines.items()
    }
    assert len(lines) >= 12 and len(set(looks.values())) == len(lines)  # no two lines alike
    for family in ("mode", "mean", "median", "mbr[squared_error]", "mbr[absolute_error]"):
        assert looks[family][0] == looks[f"{family}+model"][0]
        assert (looks[family][1], looks[f"{family}+model"][1]) == ("-", "--")
    colours = {label: colour for label, (colour, _) in looks.items() if "+" not in label}
    assert len(set(colours.values())) == len(colours)  # oracle and first were both blue


def labelled_lines(ax):
    """The decoders' lines of a plot (matplotlib names the parts of an error bar ``_...``)."""
    return {
        line.get_label(): line for line in ax.get_lines() if not line.get_label().startswith("_")
    }


def test_one_k_plot_per_metric_with_the_rule_and_baselines_strong_and_banded(
    rating_results, tmp_path, monkeypatch
):
    plt = pytest.importorskip("matplotlib.pyplot")

    close, figures = plt.close, []
    monkeypatch.setattr(plt, "close", figures.append)
    try:
        written = write_plots(rating_results, tmp_path)
        assert [p.name for p in written] == [
            "plot_rating_k.png",
            "plot_rating_k_absolute_error.png",
            "plot_rating_risk.png",  # selective prediction: see the test below
        ]
        run = rating_results["runs"][0]
        for figure, curves, rule in zip(
            figures[:2], [run["curves"], *run["other_curves"]], ["mean", "median"], strict=True
        ):
            ax, diff_ax = figure.axes
            assert curves["metric"] in ax.get_ylabel()
            lines = labelled_lines(ax)
            strong = {label for label, line in lines.items() if line.get_linewidth() > 2}
            assert strong == {rule, "greedy", "prior"}
            assert all(lines[label].get_alpha() < 0.5 for label in lines if label not in strong)
            # A band for the rule's interval at each k, a bar for each flat baseline's.
            from matplotlib.collections import PolyCollection

            (band,) = [c for c in ax.collections if isinstance(c, PolyCollection)]
            lows = band.get_paths()[0].vertices[:, 1]
            assert min(lows) == pytest.approx(min(curves["low"][rule]))
            assert len(ax.containers) == 2  # greedy's and the prior's error bars
            # Below: the rule minus greedy, paired, with its interval, against 0.
            (difference, zero) = diff_ax.get_lines()
            assert list(difference.get_ydata()) == pytest.approx(
                curves["vs_greedy"][rule]["difference"]
            )
            assert rule in diff_ax.get_ylabel() and list(zero.get_ydata()) == [0.0, 0.0]
            # The legend sits outside the axes, the strong decoders first.
            legend = ax.get_legend()
            assert legend.get_bbox_to_anchor().x0 > ax.get_window_extent().x1 - 1
            assert {t.get_text() for t in legend.get_texts()[:3]} == strong
    finally:
        for figure in figures:
            close(figure)
    for path in written:
        assert path.stat().st_size > 10_000


def score(decoder, metric, value, vs_greedy=None, direction="lower"):
    row = {
        "decoder": decoder,
        "metric": metric,
        "direction": direction,
        "value": value,
        "ci": [value - 1, value + 1],
        "stderr": 0.5,
        "parse_rate": 1.0,
    }
    if vs_greedy is not None:
        row["vs_greedy"] = {"difference": vs_greedy[0], "ci": list(vs_greedy[1:]), "p_value": 0.3}
    return row


# As results.json files written before the verdicts: no answer_type, rule_decoders, vs_prior.
OLD_ARITH = {
    "task": "arith",
    "version": "1",
    "n_items": 40,
    "temperature": 1.0,
    "n": 8,
    "scores": [
        score("greedy", "absolute_error", 101.0),
        score("greedy", "squared_error", 30000.0),
        score("prior", "absolute_error", 153.3, (52.3, 10.0, 90.0)),
        score("mean", "absolute_error", 85.0, (-16.0, -50.0, 18.0)),
        score("median", "absolute_error", 81.9, (-19.1, -53.3, 14.7)),
        score("median", "squared_error", 20000.0, (-10000.0, -20000.0, -10.0)),
        score("mbr[absolute_error]", "absolute_error", 90.0, (-11.0, -40.0, 20.0)),
    ],
    "corpus": [],
}


def test_a_verdict_per_metric_comes_first(rating_results):
    table = render_markdown({"runs": [OLD_ARITH]})
    lines = table.splitlines()
    assert lines[0] == (
        "- arith, absolute error ↓ (40 items): best median 81.9; "
        "vs greedy 101.0: -19.1 [-53.3, +14.7] n.s.; vs prior 153.3"
    )
    # Every metric of the task has its line, not only the primary one.
    assert lines[1] == (
        "- arith, squared error ↓ (40 items): best median 20000; "
        "vs greedy 30000: -10000 [-20000, -10] better"
    )
    assert lines[2] == "" and lines[3].startswith("| Task |")
    # The best decoder, with its paired difference against greedy and the prior; the metric's
    # own rule (the mean for squared error) follows when it is not the best.
    verdicts = render_verdicts(rating_results)
    run = rating_results["runs"][0]
    assert run["rule_decoders"] == {"squared_error": "mean", "absolute_error": "median"}
    metrics = ["squared_error", "absolute_error", *(r["metric"] for r in run["corpus"])]
    assert len(verdicts) == len(dict.fromkeys(metrics)) >= 3  # pearson and spearman too
    rows = {r["decoder"]: r for r in run["scores"] if r["metric"] == "squared_error"}
    best = min(
        (label for label in rows if label != "oracle"), key=lambda label: rows[label]["value"]
    )
    line = verdicts[0]
    assert line.startswith(f"rating, squared error ↓ (4 items): best {best} ")
    assert best not in ("greedy", "mean")  # the fixture's median is best
    mean = rows["mean"]  # about three significant figures of the largest value (2.30)
    assert (
        f"; rule mean {mean['value']:.2f} vs greedy: {mean['vs_greedy']['difference']:+.2f} ["
        in line
    )


def test_a_verdict_says_when_greedy_is_best_and_what_came_next():
    accuracy = [
        score("greedy", "accuracy", 0.05, direction="higher"),
        score("prior", "accuracy", 0.0, (-0.05, -0.125, 0.0), direction="higher"),
        score("mode", "accuracy", 0.025, (-0.025, -0.075, 0.0), direction="higher"),
        score("median", "accuracy", 0.05, (0.0, -0.075, 0.075), direction="higher"),
        score("mean", "accuracy", 0.0, (-0.05, -0.125, 0.0), direction="higher"),
        score("oracle", "accuracy", 0.5, (0.45, 0.3, 0.6), direction="higher"),
    ]
    accuracy[0]["vs_prior"] = {"difference": 0.05, "ci": [0.0, 0.125], "p_value": 0.2}
    run = dict(OLD_ARITH, scores=OLD_ARITH["scores"][:2], corpus=accuracy)
    verdicts = render_verdicts({"runs": [run]})
    assert verdicts[-1] == (
        "arith, accuracy ↑ (40 items): best greedy 0.050, no decoder beats it "
        "(next median 0.050: +0.000 [-0.075, +0.075] n.s., samplers 0.000-0.050); "
        "vs prior 0.000: +0.050 [+0.000, +0.125] n.s.; rule mode 0.025 vs greedy: "
        "-0.025 [-0.075, +0.000] n.s."
    )
    # When the prior is best, it is named as a constant.
    for row in accuracy:
        row["value"] = {"prior": 0.9}.get(row["decoder"], row["value"])
    assert "best prior 0.900 (a constant); vs greedy 0.050" in render_verdicts({"runs": [run]})[-1]


def test_verdicts_name_the_rule_of_each_kind_of_metric():
    exact = copy.deepcopy(OLD_ARITH)
    exact["task"] = "qa"
    exact["scores"] = [
        score("greedy", "exact_match", 0.10, direction="higher"),
        score("mode", "exact_match", 0.30, (0.2, 0.1, 0.3), direction="higher"),
        score("mbr[token_f1]", "exact_match", 0.25, (0.15, 0.05, 0.25), direction="higher"),
    ]
    (line,) = render_verdicts({"runs": [exact]})
    assert line == (
        "qa, exact match ↑ (40 items): best mode 0.300; vs greedy 0.100: +0.200 [+0.100, +0.300] better"
    )
    f1 = copy.deepcopy(exact)
    for row in f1["scores"]:
        row["metric"] = "token_f1"
    f1["scores"][2]["vs_greedy"].update({"difference": -0.05, "ci": [-0.09, -0.01]})
    f1["scores"][2]["value"] = 0.05
    (line,) = render_verdicts({"runs": [f1]})
    assert line.endswith("; rule mbr[token_f1] 0.050 vs greedy: -0.050 [-0.090, -0.010] worse")
    sweep = [dict(OLD_ARITH, temperature=t) for t in (0.5, 1.0)]
    assert [v.split(",")[0] for v in render_verdicts({"runs": sweep})] == [
        "arith (T=0.5)",
        "arith (T=0.5)",
        "arith (T=1.0)",
        "arith (T=1.0)",
    ]


RESULTS_IN_DOCS = sorted((Path(__file__).parent.parent / "docs" / "results").glob("*/results.json"))


@pytest.mark.parametrize("path", RESULTS_IN_DOCS, ids=lambda p: p.parent.name)
def test_results_written_by_earlier_versions_still_render(path, tmp_path):
    results = load_results(path)
    table = render_markdown(results)
    assert table.startswith("- ") and "| Task | Version | Decoder |" in table
    for run in results["runs"]:
        assert f"- {run['task']}" in table
    pytest.importorskip("matplotlib")
    assert write_plots(results, tmp_path)


@pytest.mark.parametrize("path", RESULTS_IN_DOCS, ids=lambda p: p.parent.name)
def test_the_first_screen_fits_120_columns(path):
    results = load_results(path)
    screen = render_summary(results)
    assert max(len(line) for line in screen.splitlines()) <= 120
    full = render_markdown(results)
    assert max(len(line) for line in full.splitlines()) > 120  # what the first screen replaces
    # The verdicts first, then one table per task and metric, every score in one of them.
    lines = screen.splitlines()
    assert lines[0].startswith("- ")
    rows = [line for line in lines if line.startswith("| ") and not line.startswith("| Decoder")]
    scores = [r for run in results["runs"] for r in (*run["scores"], *run.get("corpus", []))]
    assert len(rows) >= len(scores)  # global decoding adds its global - local table


def test_the_first_screen_gives_each_metric_a_table_of_its_own(rating_results):
    screen = render_summary(rating_results, width=120)
    run = rating_results["runs"][0]
    assert "\nrating, squared error ↓ (T=0.7, 4 items)\n| Decoder " in screen
    assert "\nrating, absolute error ↓ (T=0.7, 4 items)\n| Decoder " in screen
    mean = next(
        r for r in run["scores"] if r["decoder"] == "mean" and r["metric"] == "squared_error"
    )
    block = screen.split("rating, squared error ↓ (T=0.7")[1].split("\n\n")[0]
    row = next(line for line in block.splitlines() if line.startswith("| mean "))
    assert cells(row)[:3] == ["mean", "8", f"{mean['value']:.2f}"]
    # A narrower screen drops columns rather than overflow: the value's interval goes first.
    widest = max(len(line) for line in screen.splitlines() if line.startswith("|"))
    narrow = render_summary(rating_results, width=widest - 1)
    assert narrow.count("95% CI") < screen.count("95% CI")  # the widest table dropped it
    assert max(len(line) for line in narrow.splitlines()) < widest


def test_unknown_decoders_and_missing_fields_render():
    # A user's own decoder (not registered here), no temperature, n, curves or corpus.
    run = {
        "task": "mine",
        "version": "2",
        "n_items": 3,
        "scores": [
            score("greedy", "absolute_error", 2.0),
            score("trimmed_mean+model", "absolute_error", 1.5, (-0.5, -1.0, 0.1)),
        ],
    }
    table = render_markdown({"runs": [run]})
    assert table.splitlines()[0] == (
        "- mine, absolute error ↓ (3 items): best trimmed_mean+model 1.50; "
        "vs greedy 2.00: -0.50 [-1.00, +0.10] n.s."
    )
    assert "| mine | 2 | trimmed_mean+model |  |  | absolute_error |" in table
    assert render_markdown({"runs": []}).startswith("| Task |")


def test_a_verdict_says_when_answers_did_not_parse():
    run = copy.deepcopy(OLD_ARITH)
    rows = {(r["decoder"], r["metric"]): r for r in run["scores"]}
    rows["greedy", "absolute_error"].update({"parse_rate": 0.9, "strict_rate": 0.6})
    rows["median", "absolute_error"]["parse_rate"] = 0.5
    line, squared = render_verdicts({"runs": [run]})
    assert line.endswith(
        "vs prior 153.3; parsed: greedy 90% (60% strict, 30% fallback), median 50%"
    )
    assert "parsed" not in squared  # once per task, on its first line


@pytest.fixture(scope="module")
def adaptive_results():
    from metricwise.adaptive import Adaptive
    from metricwise.evaluate.decoders import default_decoders

    items, prompts, greedy, pools = rating_fixture()
    decoders = default_decoders(RATING, adaptive=Adaptive(min_n=2, max_n=8, round=2))
    run, _ = score_task(
        RATING, items, prompts, greedy, pools, decoders=decoders, bootstrap_iters=50
    )
    run.update({"temperature": 0.7, "n": 8, "num_fewshot": 0})
    return {"config": {}, "runs": [run]}


def test_an_adaptive_row_shows_its_mean_samples_used_out_of_n(adaptive_results):
    run = adaptive_results["runs"][0]
    used = run["samples_used"]["mean@adaptive"]["mean"]
    table = render_markdown(adaptive_results)
    row = cells(table_row(table, "mean@adaptive", "squared_error"))
    assert row[3:5] == [f"{used:.1f}/8", "0.7"]
    assert cells(table_row(table, "mean", "squared_error"))[3] == "8"
    assert cells(table_row(table, "mbr[squared_error]+greedy", "squared_error"))[3] == "8"
    value = next(
        r["value"]
        for r in run["scores"]
        if r["decoder"] == "mean@adaptive" and r["metric"] == "squared_error"
    )
    # The verdict gives the rule's twin beside the rule, with the samples it needed.
    verdict = render_verdicts(adaptive_results)[0]
    assert f"mean@adaptive {value:.3f} with {used:.1f} of 8 samples" in verdict


def test_an_adaptive_decoder_is_one_marker_beside_its_fixed_k_curve(
    adaptive_results, tmp_path, monkeypatch
):
    plt = pytest.importorskip("matplotlib.pyplot")
    from matplotlib.colors import to_hex

    close, figures = plt.close, []
    monkeypatch.setattr(plt, "close", figures.append)
    try:
        write_plots(adaptive_results, tmp_path)
        figure = figures[0]
        lines = labelled_lines(figure.axes[0])
    finally:
        for figure in figures:
            close(figure)
    run = adaptive_results["runs"][0]
    for label, entry in run["samples_used"].items():
        marker, curve = lines[label], lines[label.removesuffix("@adaptive")]
        value = next(
            r["value"]
            for r in run["scores"]
            if r["decoder"] == label and r["metric"] == run["curves"]["metric"]
        )
        assert list(marker.get_xdata()) == [entry["mean"]]
        assert list(marker.get_ydata()) == pytest.approx([value])
        assert marker.get_linestyle() == "None" and marker.get_marker() == "*"
        assert to_hex(marker.get_color()) == to_hex(curve.get_color())  # same colour family
        hollow = marker.get_markerfacecolor() == "none"
        assert hollow == label.endswith("+model@adaptive")
    looks = {
        (
            to_hex(line.get_color()),
            line.get_linestyle(),
            line.get_marker(),
            line.get_mfc() == "none",
        )
        for line in lines.values()
    }
    assert len(looks) == len(lines)  # still no two alike


def test_the_risk_plot_draws_the_rules_own_ranking_strong_against_the_baselines(
    rating_results, tmp_path, monkeypatch
):
    plt = pytest.importorskip("matplotlib.pyplot")
    figures: list = []
    monkeypatch.setattr(plt, "close", figures.append)
    written = write_plots(rating_results, tmp_path)
    assert written[-1].name == "plot_rating_risk.png" and written[-1].stat().st_size > 0
    (ax,) = figures[-1].axes
    lines = labelled_lines(ax)
    strong = [label for label, line in lines.items() if line.get_linewidth() > 2]
    assert len(strong) == 1 and strong[0].startswith("ranked by its expected loss (risk)")
    assert any(label.startswith("ranked by samples' spread") for label in lines)
    assert "answering every item" in lines and "squared_error" in ax.get_ylabel()
    markdown = render_markdown(rating_results)
    assert "| rating | mean | squared_error | risk |" in markdown
