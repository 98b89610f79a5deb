"""Inspect AI logs of an evaluation (``eval --inspect_log``): written by inspect_ai's own
writer, read back by its reader, with the values of results.json."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("inspect_ai")

from inspect_ai.log import read_eval_log

from metricwise.evaluate.inspect_log import explanation
from metricwise.evaluate.runner import run_eval
from tiny_lm import tiny_backend, tiny_eval_config


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("inspect")
    config = tiny_eval_config(tmp_path, curve_subsets=0, plots=False, inspect_log=True)
    run_eval(config, backend=tiny_backend())
    return tmp_path / "out"


def test_the_log_reads_back_with_the_values_of_results_json(evaluated):
    log = read_eval_log(str(evaluated / "inspect" / "arith.eval"))
    results = json.loads((evaluated / "results.json").read_text())
    (run,) = results["runs"]
    assert log.status == "success" and log.eval.task == "arith"
    assert log.eval.model == "hf:tiny-test" and log.eval.metadata["settings"]["n"] == 4
    # Every decoder's score of every metric, with its interval and paired differences.
    by_name = {score.name: score for score in log.results.scores}
    for row in run["scores"]:
        metrics = by_name[row["decoder"]].metrics
        assert metrics[row["metric"]].value == pytest.approx(row["value"])
        assert metrics[f"{row['metric']}_ci_low"].value == pytest.approx(row["ci"][0])
        if row.get("vs_greedy"):
            vs = metrics[f"{row['metric']}_vs_greedy"]
            assert vs.value == pytest.approx(row["vs_greedy"]["difference"])
            assert vs.metadata["ci"] == pytest.approx(row["vs_greedy"]["ci"])
    # One Inspect sample per item: the prompt, the references, the N candidates as choices.
    records = [
        json.loads(line) for line in (evaluated / "samples_arith.jsonl").read_text().splitlines()
    ]
    assert [s.id for s in log.samples] == [r["id"] for r in records]
    for sample, record in zip(log.samples, records, strict=True):
        assert sample.input == record["prompt"]
        assert sample.target == [str(r) for r in record["references"]]
        choices = sample.output.choices
        assert [c.message.text for c in choices] == [c["text"] for c in record["candidates"]]
        assert [c.message.metadata["logp"] for c in choices] == [
            c["logp"] for c in record["candidates"]
        ]
        for label, by_metric in record["scores"].items():
            score = sample.scores[label]
            assert score.value == pytest.approx(by_metric)
            prediction = record["predictions"][label]
            assert score.answer == (None if prediction is None else str(prediction))
        median = sample.scores["median"]
        decision = median.metadata["decision"]
        assert decision == record["decisions"]["median"]
        assert median.explanation == explanation(
            "median", decision, record["predictions"]["median"]
        )
        assert median.explanation.startswith("rule median for absolute_error; ")
        assert ("expected loss" in median.explanation) == (decision.get("failure") is None)
        assert f"{decision['n_valid']} of {decision['n_total']} samples valid" in median.explanation
        assert "task:arith@" in median.metadata["signature"]["absolute_error"]


def test_the_explanation_names_what_was_left_out_and_why():
    decision = {
        "rule": "mode",
        "metric": "exact_match",
        "expected_utility": 0.5,
        "n_valid": 6,
        "n_total": 8,
        "support": [["4", 0.5, 3], ["5", 0.333, 2]],
        "excluded": {"unparsable": 1, "length": 1},
    }
    assert explanation("mode", decision, "4") == (
        "rule mode for exact_match; expected utility 0.5; support: '4' (0.50, 3), '5' (0.33, 2); "
        "6 of 8 samples valid, left out: unparsable 1, length 1"
    )
    assert explanation("greedy", None, 7.0) == "greedy: answer 7.0"
    failed = {
        "rule": "mean",
        "metric": "squared_error",
        "expected_loss": float("nan"),
        "n_valid": 0,
        "n_total": 4,
        "support": [],
        "excluded": {"length": 4},
        "failure": "none of the 4 samples could be used as a number (4 length)",
    }
    assert explanation("mean", failed, None) == (
        "rule mean for squared_error; 0 of 4 samples valid, left out: length 4; "
        "no decision: none of the 4 samples could be used as a number (4 length)"
    )  # no "expected loss nan"
