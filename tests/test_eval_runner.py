"""The evaluation runner end to end on a tiny random model, and its resume after interruption."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import pytest

pytest.importorskip("torch")

from metricwise.cli import main
from metricwise.evaluate.runner import EvalConfig, run_eval
from tiny_lm import tiny_backend, tiny_eval_config


@pytest.fixture(scope="module")
def backend():
    return tiny_backend()


def config(tmp_path, **overrides):
    return tiny_eval_config(tmp_path, **overrides)


def test_runner_writes_results_table_plots_and_sample_logs(backend, tmp_path):
    results = run_eval(config(tmp_path), backend=backend)
    out = tmp_path / "out"
    assert {p.name for p in out.iterdir()} >= {
        "results.json",
        "results.md",
        "samples_arith.jsonl",
        "plot_arith_k.png",
    }
    saved = json.loads((out / "results.json").read_text())
    assert saved["config"]["model_signature"] == "hf:tiny-test"
    run = saved["runs"][0]
    assert run["task"] == "arith" and run["n_items"] == 4 and run["n"] == 4
    decoders = {r["decoder"] for r in run["scores"]}
    assert {
        "greedy",
        "prior",
        "first",
        "max_logprob",
        "mode",
        "mean",
        "median",
        "oracle",
        "mean+model",
    } <= decoders
    assert "| arith | 1 | prior | 0 |" in (out / "results.md").read_text()
    row = next(
        r for r in run["scores"] if r["decoder"] == "mean" and r["metric"] == "absolute_error"
    )
    assert "signature" in row and "task:arith@" in row["signature"] and "n:4" in row["signature"]
    # How answers were read is part of what makes a number reproducible (as in sacrebleu).
    assert "|extract:number|" in row["signature"]
    assert len(results["runs"]) == 1
    records = [json.loads(line) for line in (out / "samples_arith.jsonl").read_text().splitlines()]
    assert len(records) == 4 and all(len(r["candidates"]) == 4 for r in records)


def test_the_prior_constant_comes_from_the_fewshot_split_even_with_zero_shots(backend, tmp_path):
    from metricwise.evaluate.decoders import prior_prediction
    from metricwise.tasks import get_task

    arith = get_task("arith")
    expected = prior_prediction(
        arith, [item.references[0] for item in arith.load(None, split="fewshot")]
    )
    results = run_eval(config(tmp_path, num_fewshot=0, log_samples=True), backend=backend)
    records = [
        json.loads(line)
        for line in (tmp_path / "out" / "samples_arith.jsonl").read_text().splitlines()
    ]
    assert {r["predictions"]["prior"] for r in records} == {expected}
    assert "prior" not in results["runs"][0]["curves"]["values"]  # it reads no samples


def test_greedy_and_samples_of_a_batch_share_one_prefill(backend, tmp_path):
    before = backend.prefill_calls
    run_eval(config(tmp_path, batch_size=2, output_path=None, curve_subsets=0), backend=backend)
    assert backend.prefill_calls - before == 2  # 4 items in 2 batches, each prefilled once


def test_a_temperature_sweep_plots_against_temperature(backend, tmp_path):
    results = run_eval(
        config(tmp_path, temperatures=[0.5, 1.0], curve_subsets=0, log_samples=False),
        backend=backend,
    )
    assert [r["temperature"] for r in results["runs"]] == [0.5, 1.0]
    assert (tmp_path / "out" / "plot_arith_temperature.png").exists()


class FailingAfter:
    """Wraps a backend; raises on the call after `calls` successful sample() calls."""

    def __init__(self, inner, calls):
        self.inner, self.calls, self.signature, self.sampled = inner, calls, inner.signature, []

    def sample(self, prompts, config, *, start=0):
        if self.calls == 0:
            raise KeyboardInterrupt
        self.calls -= 1
        self.sampled.extend(prompts)
        return self.inner.sample(prompts, config, start=start)

    def greedy(self, prompts, config):
        return self.inner.greedy(prompts, config)

    def close(self):
        pass


def test_an_interrupted_eval_resumes_without_resampling(backend, tmp_path):
    first = FailingAfter(backend, calls=1)
    with pytest.raises(KeyboardInterrupt):
        run_eval(config(tmp_path, batch_size=2, output_path=None), backend=first)
    assert len(first.sampled) == 2
    second = FailingAfter(backend, calls=10)
    run_eval(config(tmp_path, batch_size=2, output_path=None), backend=second)
    assert len(second.sampled) == 2 and not set(second.sampled) & set(first.sampled)
    third = FailingAfter(backend, calls=0)  # everything is stored: no sampling at all
    run_eval(config(tmp_path, batch_size=2, output_path=None), backend=third)


def test_eval_cli_fails_early_on_unknown_tasks_and_bad_settings(tmp_path, capsys):
    assert main(["eval", "--tasks", "stsbb", "--limit", "2"]) == 2
    assert "Did you mean 'stsb'" in capsys.readouterr().err
    assert main(["eval", "--tasks", "arith", "--gen_kwargs", "temprature=0.5"]) == 2
    assert "temprature" in capsys.readouterr().err
    assert main(["eval", "--tasks", "arith", "--temperatures", "0,1"]) == 2
    assert "temperatures" in capsys.readouterr().err


def test_missing_data_dir_says_where_it_looked(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("METRICWISE_DATA_DIR", raising=False)
    assert (
        main(["eval", "--tasks", "stsb", "--data_dir", str(tmp_path / "nowhere"), "--limit", "2"])
        == 2
    )
    err = capsys.readouterr().err
    assert str(tmp_path / "nowhere") in err and "METRICWISE_DATA_DIR" in err


def test_report_rerenders_a_results_directory(backend, tmp_path, capsys):
    run_eval(config(tmp_path, curve_subsets=0), backend=backend)
    (tmp_path / "out" / "results.md").unlink()
    assert main(["report", str(tmp_path / "out")]) == 0
    screen = capsys.readouterr().out  # the first screen: verdicts, then a table per metric
    assert screen.startswith("- arith, absolute error ↓ (4 items): best ")
    assert "\narith, squared error ↓ (T=1.0, 4 items)\n| Decoder " in screen
    assert "| arith | 1 | greedy |" in (tmp_path / "out" / "results.md").read_text()


def test_signatures_name_the_extractor_and_escape_its_separators():
    from metricwise.evaluate.decoders import Greedy
    from metricwise.evaluate.runner import signature_string
    from metricwise.tasks.base import Task

    def task(extractor, **kw):
        return Task(
            name="t",
            description="",
            answer_type=kw.pop("answer_type", "text"),
            metrics=("exact_match",),
            extractor=extractor,
            template="{q}",
            **kw,
        )

    settings = EvalConfig(model="m", tasks=["t"])
    anchored = task("number:answer", answer_type="number", valid_range=(0.0, 5.0))
    signature = signature_string(settings, "hf:m", anchored, 1.0, Greedy(), "absolute_error")
    assert "|extract:number:answer[range=0..5]|" in signature
    regex = signature_string(settings, "hf:m", task("regex:(yes|no)"), 1.0, Greedy(), "exact_match")
    assert "|extract:regex:(yes\\|no)|" in regex
    fields = [f.replace("\\|", "|") for f in re.split(r"(?<!\\)\|", regex)]
    assert "extract:regex:(yes|no)" in fields and fields[-1].startswith("version:")


WORDS = [
    ("the cat sat on the", "mat"),
    ("paris is the capital of", "france"),
    ("what is two plus three ? the answer is", "5"),
    ("the dog ran in the", "park"),  # the few-shot split
]


def words_task(tmp_path):
    """A short-answer text task in YAML: the tiny model's texts are answers (with letters),
    where no number parses for arith and every decision would fail."""
    (tmp_path / "words.jsonl").write_text(
        "".join(json.dumps({"q": q, "a": a}) + "\n" for q, a in WORDS)
    )
    path = tmp_path / "words.yaml"
    path.write_text(
        "name: words\ndescription: next words\ndata: words.jsonl\ntemplate: '{q}'\nreference: a\n"
        "answer_type: text\nextractor: first_line\nmetrics: [token_f1, exact_match]\n"
        "fewshot:\n  holdout: 1\nmax_tokens: 3\n"
    )
    return str(path)


def test_an_adaptive_eval_scores_twins_on_prefixes_of_the_max_n_pool(backend, tmp_path):
    from metricwise.adaptive import Adaptive, sample_and_decide
    from metricwise.evaluate.decoders import Decoder, extractor_for
    from metricwise.store import SampleStore
    from metricwise.tasks import get_task
    from metricwise.types import SamplingConfig

    path = words_task(tmp_path)
    adaptive = Adaptive(min_n=2, max_n=6, round=2)
    settings = config(tmp_path, tasks=[path], limit=None, num_fewshot=0, max_tokens=None)
    results = run_eval(replace(settings, adaptive=adaptive), backend=backend)
    run = results["runs"][0]
    assert run["n"] == results["config"]["n"] == 6  # the pool is sampled to max_n
    used = run["samples_used"]
    assert set(used) == {
        "mode@adaptive",
        "mode+model@adaptive",
        "mbr[token_f1]@adaptive",
        "mbr[token_f1]+model@adaptive",
    }
    for entry in used.values():
        assert entry["mean"] <= 6 and sum(entry["histogram"].values()) == run["n_items"] == 3
    labels = {r["decoder"] for r in run["scores"]}
    assert {"mbr[token_f1]+greedy", *used} <= labels
    row = next(r for r in run["scores"] if r["decoder"] == "mbr[token_f1]@adaptive")
    assert "|settings:min_n=2,max_n=6,round=2,confidence=0.95,tolerance=0|" in row["signature"]
    table = (tmp_path / "out" / "results.md").read_text()
    assert f"| mbr[token_f1]@adaptive | {used['mbr[token_f1]@adaptive']['mean']:.1f}/6 |" in table

    # The definition, end to end: adaptive sampling through the store stops where the twin
    # stopped and decides the same, and samples nothing (its rounds are prefixes of the pool).
    records = [json.loads(line) for line in (tmp_path / "out" / "samples_words.jsonl").open()]
    task = get_task(path)
    sampling = SamplingConfig(n=6, max_tokens=task.max_tokens, stop=task.stop, seed=0)
    prompts = [r["prompt"] for r in records]
    with SampleStore(settings.store) as store:
        for label in used:
            inner = Decoder.from_label(label).inner
            stopping = replace(adaptive, tolerance=used[label]["settings"]["tolerance"])
            options = dict(
                metric=inner.metric,
                rule=inner.rule,
                weights=inner.weights,
                extractor=extractor_for(task),
                valid_range=task.valid_range,
            )
            decisions = sample_and_decide(
                store, FailingAfter(backend, calls=0), prompts, sampling, stopping, **options
            )
            assert [d.n_used for d in decisions] == [r["samples_used"][label] for r in records]
            assert [d.output for d in decisions] == [r["predictions"][label] for r in records]


def test_a_bad_bootstrap_count_fails_before_any_sampling(tmp_path):
    from metricwise.errors import InvalidParameterError

    with pytest.raises(InvalidParameterError, match="'bootstrap_iters' parameter of eval"):
        config(tmp_path, bootstrap_iters=0)


def test_eval_through_a_server_says_how_much_of_the_prompts_it_cached(tmp_path, capsys):
    from fake_openai_server import FakeServer, with_usage
    from metricwise.backends.openai import OpenAIBackend

    server = FakeServer(behaviour=with_usage(50, lambda body: 49), lifetime=60.0)
    try:
        backend = OpenAIBackend(server.url, "fake-model", server="generic", max_retries=0)
        settings = dict(limit=2, n=2, output_path=None, curve_subsets=0, quiet=False)
        run_eval(config(tmp_path, **settings), backend=backend)
    finally:
        server.close()
    # Greedy and 2 samples of 2 prompts: 4 requests of 50 prompt tokens, 49 cached each.
    assert (
        "metricwise eval: the server read 200 prompt tokens, 196 of them from its prefix cache"
        in (capsys.readouterr().err)
    )
