"""The results table, verdicts and plots, from fresh results and from results.json files written
by earlier versions."""

from __future__ import annotations

import numpy as np
import pytest

from metricwise.evaluate.report import render_markdown
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


def test_decoders_that_read_no_samples_have_no_temperature(rating_results):
    table = render_markdown(rating_results)
    assert table_row(table, "greedy", "squared_error").startswith("| rating | 1 | greedy | 1 | - |")
    assert table_row(table, "prior", "squared_error").startswith("| rating | 1 | prior | 0 | - |")
    assert table_row(table, "mean", "squared_error").startswith("| rating | 1 | mean | 8 | 0.7 |")
    corpus = [line for line in table.splitlines() if line.startswith("| rating | greedy |")]
    assert corpus and all(line.startswith("| rating | greedy | - |") for line in corpus)
    assert np.isfinite(rating_results["runs"][0]["scores"][0]["value"])
