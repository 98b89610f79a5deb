"""lm-evaluation-harness both ways: its sample logs as decide's input, a metricwise filter in its
task YAMLs. The slow tests run the real ``lm_eval`` (its CLI and ``simple_evaluate``) on local
files and the tiny model, with no hub."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from metricwise.cli import main

pytest.importorskip("lm_eval")

REPO = Path(__file__).resolve().parent.parent
OFFLINE = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "OMP_NUM_THREADS": "1",
}


def run(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def log_line(doc_id, target, resps, flt, answer, value, metric="exact_match"):
    """One line as lm_eval/evaluator.py writes it with --log_samples (generate_until)."""
    return {
        "doc_id": doc_id,
        "doc": {"q": f"doc {doc_id}"},
        "target": target,
        "arguments": {"gen_args_0": {"arg_0": "prompt", "arg_1": {"until": ["\n"]}}},
        "resps": [resps],
        "filtered_resps": [answer],
        "filter": flt,
        "metrics": [metric],
        "doc_hash": "x",
        "prompt_hash": "y",
        "target_hash": "z",
        metric: value,
    }


def write_log(directory: Path, lines, config=None, task="arith", time="2026-01-01T00-00-00.0"):
    path = directory / f"samples_{task}_{time}.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    if config is not None:
        results = {"results": {task: {}}, "configs": {task: config}}
        (directory / f"results_{time}.json").write_text(json.dumps(results))
    return path


def arith_log(tmp_path):
    # doc 0: the mode " 5" is right, the first answer " 6" wrong; doc 1: both right;
    # doc 2: the first answer is right and the mode wrong.
    docs = [
        (0, " 5", [" 6", " 5", " 5", " 7"]),
        (1, " 2", [" 2", " 2", " 3", " 2"]),
        (2, " 9", [" 9", " 8", " 8", " 1"]),
    ]
    lines = []
    for flt in ("take_first", "maj"):
        for doc_id, target, resps in docs:
            answer = resps[0] if flt == "take_first" else max(set(resps), key=resps.count)
            lines.append(log_line(doc_id, target, resps, flt, answer, float(answer == target)))
    return write_log(tmp_path, lines)


def test_decide_recognises_an_lm_eval_samples_log_and_scores_with_its_metric(tmp_path, capsys):
    path = arith_log(tmp_path)
    code, out, err = run(["decide", "--metric", "exact_match", str(path)], capsys)
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["doc_id"] for r in rows] == [0, 1, 2]
    assert [r["output"] for r in rows] == [" 5", " 2", " 8"]
    assert [r["lm_eval"]["metricwise"]["exact_match"] for r in rows] == [1.0, 1.0, 0.0]
    assert rows[0]["lm_eval"]["take_first"] == {"answer": " 6", "exact_match": 0.0}
    # The summary: metricwise 2/3, take_first 2/3, maj 2/3 (the same answers as the mode).
    assert "exact_match      metricwise(exact_match)   0.667" in err
    assert "exact_match      lm-eval take_first        0.667" in err
    assert "differs from its log" not in err


def test_decide_lm_eval_numeric_metric_beats_take_first(tmp_path, capsys):
    """A squared-error decision (the mean) scored by exact_match after lm-eval's own string
    casting: the mean 5 of 4 and 6 is an answer that no sample gave."""
    lines = [
        log_line(0, "5", ["4", "6", "4", "6"], "take_first", "4", 0.0),
        log_line(1, "3", ["3", "3", "3"], "take_first", "3", 1.0),
    ]
    path = write_log(tmp_path, lines)
    out_path = tmp_path / "decisions.jsonl"
    argv = ["decide", "--input", str(path), "--format", "lm_eval", "--metric", "squared_error"]
    argv += ["--output", str(out_path)]
    code, _, err = run(argv, capsys)
    assert code == 0
    rows = [json.loads(line) for line in out_path.read_text().splitlines()]
    assert [r["output"] for r in rows] == [5.0, 3.0]
    assert [r["lm_eval"]["metricwise"]["exact_match"] for r in rows] == [1.0, 1.0]
    assert "+0.500" in err


def test_decide_lm_eval_uses_the_metric_arguments_of_the_results_file(tmp_path, capsys):
    """ignore_case from the task's metric_list (in results_<time>.json) reaches lm-eval's metric;
    without the results file the same answers score 0, and rescoring lm-eval's answer then
    disagrees with the value it logged, which the summary says."""
    lines = [log_line(0, "Paris", ["paris", "paris", "Lyon"], "take_first", "paris", 1.0)]
    config = {
        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "ignore_case": True}]
    }
    path = write_log(tmp_path, lines, config=config)
    code, out, err = run(["decide", str(path), "--metric", "exact_match"], capsys)
    assert code == 0
    assert json.loads(out)["lm_eval"]["metricwise"]["exact_match"] == 1.0
    assert "differs from its log" not in err

    other = tmp_path / "alone"
    other.mkdir()
    path = write_log(other, lines)
    code, out, err = run(["decide", str(path), "--metric", "exact_match"], capsys)
    assert code == 0
    assert json.loads(out)["lm_eval"]["metricwise"]["exact_match"] == 0.0
    assert "differs from its log on 1 docs" in err
    assert "no results_<time>.json beside it" in err


def test_decide_lm_eval_multiple_targets_count_any(tmp_path, capsys):
    lines = [log_line(0, ["NYC", "New York"], ["New York", "New York", "LA"], "none", "LA", 0.0)]
    code, out, _ = run(
        ["decide", str(write_log(tmp_path, lines)), "--metric", "exact_match"], capsys
    )
    assert code == 0
    assert json.loads(out)["lm_eval"]["metricwise"]["exact_match"] == 1.0


def test_decide_lm_eval_refuses_loglikelihood_logs_saying_why(tmp_path, capsys):
    line = log_line(0, 1, [], "none", [-1.0, False], 1.0, metric="acc")
    line["resps"] = [[[-1.5, False]], [[-0.5, True]]]
    code, _, err = run(
        ["decide", str(write_log(tmp_path, [line])), "--metric", "exact_match"], capsys
    )
    assert code == 2
    assert "loglikelihood and multiple-choice tasks" in err
    assert "line 1" in err


def test_decide_lm_eval_refuses_corpus_level_metrics_saying_why(tmp_path, capsys):
    lines = [log_line(0, "a b c", ["a b c", "a b"], "take_first", "a b c", 0.5, metric="chrf")]
    code, _, err = run(["decide", str(write_log(tmp_path, lines)), "--metric", "chrf"], capsys)
    assert code == 2
    assert "'chrf' is a corpus-level metric" in err


def test_decide_format_lm_eval_refuses_metricwise_lines(tmp_path, capsys):
    path = tmp_path / "s.jsonl"
    path.write_text(json.dumps({"id": 1, "samples": ["a"]}) + "\n")
    argv = ["decide", str(path), "--format", "lm_eval", "--metric", "exact_match"]
    code, _, err = run(argv, capsys)
    assert code == 2
    assert "expected a line of an lm-eval samples log" in err


def test_decide_input_is_given_once(tmp_path, capsys):
    path = arith_log(tmp_path)
    code, _, err = run(
        ["decide", str(path), "--input", str(path), "--metric", "exact_match"], capsys
    )
    assert code == 2
    assert "Got both" in err
    code, _, err = run(["decide", "--metric", "exact_match"], capsys)
    assert code == 2
    assert "decide needs an input" in err


# ---------------------------------------------------------------------------------------------
# The real lm_eval, the tiny model and a local data file


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from tiny_lm import tiny_model_and_tokenizer

    model, tokenizer = tiny_model_and_tokenizer()
    path = tmp_path_factory.mktemp("tiny")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


ARITH = [(2, 3), (1, 1), (4, 5), (3, 3), (0, 7), (6, 2)]


def write_task(directory: Path, body: str) -> Path:
    data = directory / "arith.jsonl"
    data.write_text(
        "".join(
            json.dumps({"question": f"{a} plus {b}", "answer": str(a + b)}) + "\n" for a, b in ARITH
        )
    )
    (directory / "tinyarith.yaml").write_text(body.replace("DATA", str(data)))
    return directory / "tinyarith.yaml"


REPEATS_TASK = """\
task: tinyarith
dataset_path: json
dataset_kwargs:
  data_files:
    test: DATA
test_split: test
fewshot_split: test
output_type: generate_until
doc_to_text: "what is {{question}} ? the answer is"
doc_to_target: " {{answer}}"
generation_kwargs:
  until: ["\\n", "."]
  do_sample: true
  temperature: 1.0
  max_gen_toks: 4
repeats: 4
filter_list:
  - name: take_first
    filter:
      - function: take_first
  - name: maj
    filter:
      - function: majority_vote
      - function: take_first
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
    ignore_case: true
metadata:
  version: 1.0
"""


def lm_eval_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, **OFFLINE}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "lm_eval", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_decide_reads_the_samples_log_the_real_lm_eval_writes(tmp_path, tiny_dir, capsys):
    write_task(tmp_path, REPEATS_TASK)
    out_dir = tmp_path / "out"
    done = lm_eval_cli(
        "--model", "hf", "--model_args", f"pretrained={tiny_dir}", "--tasks", "tinyarith",
        "--include_path", str(tmp_path), "--num_fewshot", "2", "--device", "cpu",
        "--output_path", str(out_dir), "--log_samples", "--seed", "0",
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    (samples,) = out_dir.glob("*/samples_tinyarith_*.jsonl")
    code, out, err = run(["decide", str(samples), "--metric", "exact_match"], capsys)
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["doc_id"] for r in rows] == list(range(len(ARITH)))
    assert all(r["n_total"] == 4 for r in rows)
    assert "task tinyarith, 6 docs, 4 responses each" in err
    # lm-eval's answers rescored with its own metric (and ignore_case from the results file)
    # reproduce the values it logged.
    assert "differs from its log" not in err
    assert "no results_<time>.json" not in err


# ---------------------------------------------------------------------------------------------
# The metricwise filter in lm-eval's filter_list


def test_filter_picks_the_bayes_optimal_answer_for_its_metric():
    from metricwise.integrations.lm_eval.filters import MetricAwareFilter

    resps = [["4", "6", "4", "6"], ["1", "2", "9"], ["x", "y"]]
    assert MetricAwareFilter(metric="squared_error").apply(resps, [{}] * 3) == [["5"], ["4"], [""]]
    assert MetricAwareFilter(metric="absolute_error").apply(resps[1:2], [{}]) == [["2"]]
    # YAML lists become the tuples decide() takes; metric_args reach the metric.
    clipped = MetricAwareFilter(metric="squared_error", valid_range=[0, 3])
    assert clipped.apply([["1", "9"]], [{}]) == [["2"]]
    high = MetricAwareFilter(metric="pinball", metric_args={"tau": 0.9})
    assert high.apply([["1", "2", "3", "4", "5", "6", "7", "8", "9", "10"]], [{}]) == [["9.5"]]
    modes = MetricAwareFilter(metric="exact_match", extractor="number")
    assert modes.apply([["It is 12.", "12", "13"]], [{}]) == [["12"]]


def test_filter_checks_its_arguments_when_the_task_is_built():
    from metricwise.errors import MetricwiseError
    from metricwise.integrations.lm_eval.filters import MetricAwareFilter

    with pytest.raises(MetricwiseError, match="exact_mtch"):
        MetricAwareFilter(metric="exact_mtch")


def test_filter_is_in_lm_evals_filter_registry():
    from lm_eval.api.registry import get_filter

    from metricwise.integrations.lm_eval.filters import MetricAwareFilter

    assert get_filter("metricwise") is MetricAwareFilter


@pytest.mark.slow
def test_example_yaml_runs_under_lm_eval_with_the_metricwise_filter(tmp_path, tiny_dir):
    """examples/lm_eval/arith_metricwise.yaml under the real lm_eval CLI: each metricwise filter
    is a row of its results, and what it logged is what the filter decides from the responses."""
    from metricwise.integrations.lm_eval.filters import MetricAwareFilter

    done = lm_eval_cli(
        "--model", "hf", "--model_args", f"pretrained={tiny_dir}",
        "--tasks", "arith_metricwise", "--include_path", "examples/lm_eval",
        "--num_fewshot", "3", "--limit", "4", "--device", "cpu",
        "--output_path", str(tmp_path), "--log_samples",
        cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    (results,) = tmp_path.glob("*/results_*.json")
    scores = json.loads(results.read_text())["results"]["arith_metricwise"]
    for name in ("take_first", "majority_vote", "metricwise-mode", "metricwise-median"):
        assert f"exact_match,{name}" in scores
    (samples,) = tmp_path.glob("*/samples_arith_metricwise_*.jsonl")
    rows = [json.loads(line) for line in samples.read_text().splitlines()]
    filters = {
        "metricwise-mode": MetricAwareFilter(metric="exact_match", extractor="number"),
        "metricwise-median": MetricAwareFilter(metric="absolute_error", extractor="number"),
    }
    checked = 0
    for row in rows:
        if row["filter"] in filters:
            (responses,) = row["resps"]
            assert len(responses) == 8
            assert row["filtered_resps"] == [filters[row["filter"]].decide(responses)]
            checked += 1
    assert checked == 8


def test_decide_lm_eval_writes_extracted_numbers_as_lm_eval_compares_them(tmp_path, capsys):
    """The number extractor's canonical "12.0" is scored as "12", the text lm-eval compares."""
    lines = [log_line(0, "12", ["It is 12.", "12", "13"], "take_first", "It is 12.", 0.0)]
    argv = ["decide", str(write_log(tmp_path, lines)), "--metric", "exact_match"]
    code, out, _ = run([*argv, "--extractor", "number"], capsys)
    assert code == 0
    assert json.loads(out)["lm_eval"]["metricwise"]["exact_match"] == 1.0


# ---------------------------------------------------------------------------------------------
# lm-eval tasks in metricwise eval, with lm-eval's flags

GREEDY_TASK = """\
task: tinyarith
dataset_path: json
dataset_kwargs:
  data_files:
    test: DATA
test_split: test
fewshot_split: test
output_type: generate_until
doc_to_text: "what is {{question}} ? the answer is"
doc_to_target: " {{answer}}"
generation_kwargs:
  until: ["\\n", "."]
  do_sample: false
  max_gen_toks: 6
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
metadata:
  version: 2.0
"""

CHOICE_TASK = GREEDY_TASK.replace("output_type: generate_until", "output_type: multiple_choice")
CHOICE_TASK = CHOICE_TASK.replace(
    'doc_to_target: " {{answer}}"', 'doc_to_target: 0\ndoc_to_choice: ["a", "b"]'
)


def test_an_lm_eval_task_file_is_told_from_a_metricwise_task_file(tmp_path):
    from metricwise.integrations.lm_eval.tasks import is_lm_eval_task_file

    assert is_lm_eval_task_file(write_task(tmp_path, GREEDY_TASK))
    assert is_lm_eval_task_file(REPO / "examples" / "lm_eval" / "arith_metricwise.yaml")
    assert not is_lm_eval_task_file(REPO / "examples" / "my_task.yaml")


def test_an_lm_eval_task_is_built_by_lm_eval_with_its_prompts_targets_and_metric(tmp_path):
    """Prompts with lm-eval's few-shot context, until, max_gen_toks, the gold as its
    process_results computes it, and lm-eval's exact_match (raw strings: " 5" is not "5")."""
    from metricwise import metrics
    from metricwise.integrations.lm_eval.tasks import LmEvalOptions, load_lm_eval_tasks

    path = write_task(tmp_path, GREEDY_TASK)
    (adapted,) = load_lm_eval_tasks([str(path)], LmEvalOptions(num_fewshot=2, limit=0.5))
    task = adapted.task
    assert len(adapted.items) == 3 and adapted.n_original == len(ARITH)  # ceil(6 * 0.5)
    assert task.stop == ("\n", ".") and task.max_tokens == 6 and task.answer_type == "text"
    prompt = adapted.prompts[0]
    assert (
        prompt.endswith("what is 2 plus 3 ? the answer is") and prompt.count("the answer is") == 3
    )
    assert adapted.items[0].references == (" 5",)
    (spec,) = task.metrics
    metric = metrics.get(spec)
    assert metric.score(" 5", [" 5"]) == 1.0 and metric.score("5", [" 5"]) == 0.0
    assert metrics.get("exact_match").score("5", [" 5"]) == 1.0  # metricwise's is not lm-eval's
    # The same prompts lm-eval builds for the same seed; another seed draws other shots.
    (again,) = load_lm_eval_tasks([str(path)], LmEvalOptions(num_fewshot=2, limit=0.5))
    (other,) = load_lm_eval_tasks(
        [str(path)], LmEvalOptions(num_fewshot=2, limit=0.5, fewshot_seed=7)
    )
    assert again.prompts == adapted.prompts and other.prompts != adapted.prompts


def test_loglikelihood_tasks_are_refused_saying_why(tmp_path):
    from metricwise.errors import InvalidParameterError
    from metricwise.integrations.lm_eval.tasks import LmEvalOptions, load_lm_eval_tasks

    path = write_task(tmp_path, CHOICE_TASK)
    with pytest.raises(
        InvalidParameterError, match="multiple_choice task: lm-eval scores it by the log-likelihood"
    ):
        load_lm_eval_tasks([str(path)], LmEvalOptions())


def test_eval_takes_lm_evals_flags_and_refuses_a_mix_of_spellings(tmp_path, capsys):
    base = ["eval", "--tasks", "arith", "--store", str(tmp_path / "s.sqlite")]
    code, _, err = run([*base, "--log_samples"], capsys)
    assert code == 2 and "needs --output_path" in err
    code, _, err = run([*base, "--model", "hf", "--backend", "hf"], capsys)
    assert code == 2 and "--model hf --model_args pretrained=MODEL" in err
    assert "--backend hf --model MODEL" in err
    code, _, err = run([*base, "--model", "x", "--model_args", "pretrained=y"], capsys)
    assert code == 2 and "named twice" in err
    code, _, err = run([*base, "--seed", "1,2"], capsys)
    assert code == 2 and "random,numpy,torch,fewshot" in err
    code, _, err = run([*base, "--limit", "2.5"], capsys)
    assert code == 2 and "fraction" in err
    code, _, err = run([*base, "--batch_size", "big"], capsys)
    assert code == 2 and "or auto" in err


def test_lm_eval_spelling_maps_to_metricwise_backends():
    import argparse

    from metricwise.cli import _lm_eval_spelling, _seeds

    args = argparse.Namespace(
        model="local-chat-completions",
        backend=None,
        model_args=["base_url=http://127.0.0.1:8000/v1/chat/completions,model=m,num_concurrent=4"],
        device=None,
    )
    options = _lm_eval_spelling(args)
    assert (args.backend, args.model) == ("openai", "m")
    assert options == {
        "base_url": "http://127.0.0.1:8000/v1/chat/completions",
        "endpoint": "chat",
        "concurrency": 4,
    }
    args = argparse.Namespace(model="hf", backend=None, model_args=["pretrained=D"], device="cpu")
    assert _lm_eval_spelling(args) == {"device": "cpu"} and (args.backend, args.model) == (
        "hf",
        "D",
    )
    assert _seeds(None) == (0, 1234, [])
    assert _seeds("42")[:2] == (42, 42)
    seed, fewshot, notes = _seeds("0,1,2,3")
    assert (seed, fewshot) == (0, 3) and "numpy (1) and torch (2) seeds are not used" in notes[0]


@pytest.mark.slow
def test_greedy_in_metricwise_eval_is_what_lm_eval_reports(tmp_path, tiny_dir, capsys):
    """The same task, model, few-shot seed and limit through lm_eval and through metricwise
    eval with lm-eval's flags: greedy's answer to every doc is lm-eval's, its exact_match is
    lm-eval's exact_match,none, and metricwise's lm-eval-layout results read as lm-eval's do
    (make_table, the samples log through decide)."""
    from lm_eval.utils import make_table

    write_task(tmp_path, GREEDY_TASK)
    flags = [
        "--model", "hf", "--model_args", f"pretrained={tiny_dir}", "--tasks", "tinyarith",
        "--include_path", str(tmp_path), "--num_fewshot", "2", "--limit", "5", "--device", "cpu",
        "--seed", "0,1234,1234,1234", "--log_samples",
    ]  # fmt: skip
    done = lm_eval_cli(*flags, "--output_path", str(tmp_path / "lm"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    (theirs,) = (tmp_path / "lm").glob("*/results_*.json")
    (their_samples,) = (tmp_path / "lm").glob("*/samples_tinyarith_*.jsonl")
    code, _, err = run(
        ["eval", *flags, "--output_path", str(tmp_path / "mw"), "-n", "4", "-q",
         "--store", str(tmp_path / "s.sqlite"), "--bootstrap_iters", "50", "--no_plots"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    (ours,) = (tmp_path / "mw").glob("*/results_*.json")
    assert ours.parent.name == theirs.parent.name  # the model's directory, named alike
    their_results = json.loads(theirs.read_text())
    our_results = json.loads(ours.read_text())
    assert (
        our_results["results"]["tinyarith"]["exact_match,greedy"]
        == their_results["results"]["tinyarith"]["exact_match,none"]
    )
    their_answers = {
        r["doc_id"]: r["resps"][0][0]
        for r in map(json.loads, their_samples.read_text().splitlines())
    }
    (our_samples,) = (tmp_path / "mw").glob("*/samples_tinyarith_*.jsonl")
    rows = [json.loads(line) for line in our_samples.read_text().splitlines()]
    our_answers = {r["doc_id"]: r["filtered_resps"][0] for r in rows if r["filter"] == "greedy"}
    assert our_answers == their_answers and len(our_answers) == 5
    prompts = {r["doc_id"]: r["arguments"]["gen_args_0"]["arg_0"] for r in rows}
    assert prompts == {
        r["doc_id"]: r["arguments"]["gen_args_0"]["arg_0"]
        for r in map(json.loads, their_samples.read_text().splitlines())
    }
    table = make_table(our_results)
    assert "|tinyarith|" in table.replace(" ", "") and "greedy" in table
    code, _, err = run(["decide", str(our_samples), "--metric", "exact_match"], capsys)
    assert code == 0, err
