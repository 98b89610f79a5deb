"""The results table, verdicts and plots, from fresh results and from results.json files written
by earlier versions."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from metricwise.evaluate.report import render_markdown, write_plots
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
        (figure,) = figures
        lines = {line.get_label(): line for line in figure.axes[0].get_lines()}
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
