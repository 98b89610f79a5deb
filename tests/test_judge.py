"""The judge utility and judge-calibrate: score-token probabilities from every backend, the
regression-aware rating, the sampling fallback, caching, specs, and the calibration command."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest

from metricwise import decide
from metricwise.cli import main
from metricwise.errors import InvalidParameterError
from metricwise.evaluate.stats import kendall_tau_b
from metricwise.metrics.judge import Judge, JudgeSpec, expected_rating, parse_rating
from metricwise.types import Candidate, SampleSet

torch = pytest.importorskip("torch")


def long_tiny_model():
    """The tiny model with room for judge prompts: its 128-token vocabulary spells English
    almost letter by letter, so a judge prompt with shots runs past its 256 positions (RoPE
    has no learnt positions, so the same weights run longer)."""
    import copy

    from tiny_lm import tiny_model_and_tokenizer

    model, tokenizer = tiny_model_and_tokenizer()
    model = copy.deepcopy(model)
    model.config.max_position_embeddings = 4096
    return model, tokenizer


@pytest.fixture(scope="module")
def tiny():
    from metricwise.backends.hf import HFBackend

    model, tokenizer = long_tiny_model()
    return HFBackend(model, tokenizer=tokenizer), model, tokenizer


@pytest.fixture(autouse=True)
def fresh_cache():
    from metricwise.metrics.model_based import CACHE

    CACHE.clear()
    yield
    CACHE.clear()


def direct_logprob(model, tokenizer, prompt: str, continuation: str) -> float:
    """log p(continuation | prompt) from one unpadded forward pass over prompt + continuation."""
    prompt_ids = tokenizer(prompt)["input_ids"]
    cont_ids = tokenizer(continuation, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt_ids + cont_ids])
    with torch.inference_mode():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
    return float(sum(logp[len(prompt_ids) - 1 + t, c] for t, c in enumerate(cont_ids)))


# -- continuation log-probabilities -------------------------------------------------------------------
@pytest.mark.parametrize(
    "continuations",
    [[" 1", " 2", " 3", " 4", " 5"], [" 1 2", " 3", "0 1 2"]],
    ids=["one-token", "several"],
)
def test_hf_continuation_logprobs_equal_teacher_forcing(tiny, continuations):
    backend, model, tokenizer = tiny
    prompts = ["the cat sat on the mat", "what is two plus three ? the answer is", "rate"]
    got = backend.continuation_logprobs(prompts, continuations)
    assert got.shape == (3, len(continuations))
    expected = [[direct_logprob(model, tokenizer, p, c) for c in continuations] for p in prompts]
    # Left padding moves float32 logits by rounding only.
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_an_empty_continuation_is_refused(tiny):
    with pytest.raises(InvalidParameterError, match="at least one token"):
        tiny[0].continuation_logprobs(["the cat"], [""])


# -- the rating ------------------------------------------------------------------------------------------
def test_regression_aware_rating_is_the_normalised_expectation_and_greedy_is_the_argmax(tiny):
    backend, model, tokenizer = tiny
    judge = Judge(backend=backend, chat=False)
    greedy = Judge(backend=backend, chat=False, regression_aware=False)
    prompt = judge.render("what is two plus three ?", "the answer is 5", None)
    assert prompt.endswith("Score (1-5):")
    logp = np.array([direct_logprob(model, tokenizer, prompt, f" {k}") for k in range(1, 6)])
    p = np.exp(logp) / np.exp(logp).sum()  # normalised over the five score strings
    [j] = judge.judgements(["the answer is 5"], "what is two plus three ?")
    assert j.score == pytest.approx(float(p @ np.arange(1, 6)), abs=1e-5)
    np.testing.assert_allclose(j.probabilities, p, atol=1e-5)
    assert j.score_mass == pytest.approx(float(np.exp(logp).sum()), rel=1e-4)
    assert (j.n_parsed, j.n_total, j.method) == (1, 1, "logprobs")
    [g] = greedy.judgements(["the answer is 5"], "what is two plus three ?")
    assert g.score == float(np.argmax(logp) + 1)
    assert judge.signature() != greedy.signature()


def test_expected_rating_of_known_log_probabilities():
    score, _, mass = expected_rating(np.log([0.1, 0.1, 0.2, 0.1]))
    assert score == pytest.approx(1 * 0.2 + 2 * 0.2 + 3 * 0.4 + 4 * 0.2)
    assert mass == pytest.approx(0.5)
    assert math.isnan(expected_rating(np.full(3, -np.inf))[0])


def test_parse_rating():
    assert parse_rating(" 4", 5) == 4.0
    assert parse_rating("I'd say 3.5/5", 5) == 3.5
    assert parse_rating("7", 5) is None
    assert parse_rating("good", 5) is None


# -- the sampling fallback -------------------------------------------------------------------------------
class NoLogprobsBackend:
    """A backend without continuation_logprobs whose samples are fixed texts; counts prompts."""

    signature = "fake:no-logprobs"

    def __init__(self, texts: list[str], greedy_text: str = "2") -> None:
        self.texts, self.greedy_text = texts, greedy_text
        self.prompts: list[str] = []

    def sample(self, prompts, config, *, start=0):
        self.prompts += list(prompts)
        assert config.temperature == 1.0
        return [
            SampleSet(
                candidates=tuple(
                    Candidate(self.texts[i % len(self.texts)], finish_reason="stop")
                    for i in range(config.n)
                ),
                prompt=p,
            )
            for p in prompts
        ]

    def greedy(self, prompts, config):
        self.prompts += list(prompts)
        return [Candidate(self.greedy_text, finish_reason="stop") for _ in prompts]

    def close(self):
        pass


def test_without_log_probabilities_the_judge_averages_sampled_ratings_and_counts_the_unparsable():
    backend = NoLogprobsBackend([" 4", "5 stars", "no idea", "3"])
    judge = Judge(backend=backend, samples=8)
    [j] = judge.judgements(["an answer"], "a question")
    assert j.method == "samples" and (j.n_parsed, j.n_total) == (6, 8)
    assert j.score == pytest.approx(np.mean([4, 5, 3, 4, 5, 3]))
    assert j.probabilities == pytest.approx((0, 0, 1 / 3, 1 / 3, 1 / 3))
    assert "samples=8" in judge.signature()
    [g] = Judge(backend=backend, regression_aware=False).judgements(["an answer"], "a question")
    assert g.score == 2.0 and (g.n_parsed, g.n_total) == (1, 1)


def test_judges_that_sample_differently_do_not_share_judgements():
    backend = NoLogprobsBackend([" 4", "5 stars", "no idea", "3"])
    [eight] = Judge(backend=backend, samples=8).judgements(["an answer"], "a question")
    [two] = Judge(backend=backend, samples=2).judgements(["an answer"], "a question")
    assert (eight.n_total, two.n_total) == (8, 2)
    assert two.score == pytest.approx(4.5)
    Judge(backend=backend, samples=2, seed=1).judgements(["an answer"], "a question")
    assert len(backend.prompts) == 3  # each judge sampled its own judgements


def test_an_unparsable_judgement_ranks_below_every_rated_candidate():
    judge = Judge(backend=NoLogprobsBackend(["?"]), samples=2)
    [j] = judge.judgements(["x"], "q")
    assert j.score is None and (j.n_parsed, j.n_total) == (0, 2)
    assert judge.pointwise_scores(["x"], context="q")[0] == -math.inf


# -- the openai backend -----------------------------------------------------------------------------------
def _score_server_answer(handler: Any, path: str, body: dict[str, Any]):
    """A server whose first token puts 0.1, 0.2, 0.4, 0.2 on " 1".." 4" and does not list " 5"."""
    if body.get("max_tokens") != 1:
        return None
    top = [(" 3", 0.4), (" 2", 0.2), (" 4", 0.2), (" 1", 0.1), ("\n", 0.05)]
    entry = {
        "token": " 3",
        "logprob": math.log(0.4),
        "top_logprobs": [{"token": t, "logprob": math.log(v)} for t, v in top],
    }
    choice = {"index": 0, "text": " 3", "logprobs": {"content": [entry]}, "finish_reason": "length"}
    return 200, {"choices": [choice]}, {}


def test_openai_continuation_logprobs_read_the_listed_alternatives():
    from fake_openai_server import FakeServer
    from metricwise.backends.openai import OpenAIBackend

    server = FakeServer(behaviour=_score_server_answer)
    try:
        backend = OpenAIBackend(server.url, "fake-model", server="generic", max_retries=0)
        got = backend.continuation_logprobs(["judge this"], [" 1", " 2", " 3", " 4", " 5"])
        np.testing.assert_allclose(got[0, :4], np.log([0.1, 0.2, 0.4, 0.2]))
        assert got[0, 4] == -math.inf  # not listed
        body = server.posts()[-1]
        assert body["max_tokens"] == 1 and body["logprobs"] == backend.top_logprobs
        [j] = Judge(backend=backend).judgements(["an answer"], "q")
        assert j.score == pytest.approx((1 * 0.1 + 2 * 0.2 + 3 * 0.4 + 4 * 0.2) / 0.9)
    finally:
        server.close()


def test_openai_without_log_probabilities_falls_back_to_sampling():
    from fake_openai_server import FakeServer
    from metricwise.backends.openai import OpenAIBackend

    def answer(handler, path, body):
        texts = ["4", "5", "none"]
        choices = [
            {"index": i, "text": texts[i % 3], "finish_reason": "stop"} for i in range(body["n"])
        ]
        return 200, {"choices": choices}, {}

    server = FakeServer(behaviour=answer)
    try:
        backend = OpenAIBackend(server.url, "fake-model", server="generic", max_retries=0)
        [j] = Judge(backend=backend, samples=6).judgements(["an answer"], "q")
        assert j.method == "samples" and (j.n_parsed, j.n_total) == (4, 6)
        assert j.score == pytest.approx(4.5)
    finally:
        server.close()


def test_judges_at_two_servers_do_not_share_judgements():
    # Both name no model (each server's own): the server is what tells their ratings apart.
    from fake_openai_server import FakeServer

    def server_answering(token):
        def answer(handler, path, body):
            entry = {
                "token": token,
                "logprob": math.log(0.9),
                "top_logprobs": [{"token": token, "logprob": math.log(0.9)}],
            }
            choice = {"index": 0, "text": token, "logprobs": {"content": [entry]}}
            return 200, {"choices": [{**choice, "finish_reason": "length"}]}, {}

        return answer

    low, high = (
        FakeServer(behaviour=server_answering(" 1")),
        FakeServer(behaviour=server_answering(" 5")),
    )
    try:
        options = {"server": "generic", "max_retries": 0}
        ratings = [
            Judge(backend="openai", base_url=s.url, backend_options=options)
            .judgements(["an answer"], "q")[0]
            .score
            for s in (low, high)
        ]
        assert ratings == [1.0, 5.0]
    finally:
        low.close()
        high.close()


# -- caching, modes, decide ----------------------------------------------------------------------------
class CountingBackend:
    """Wraps a backend and counts the prompts whose score-token log-probabilities are asked."""

    def __init__(self, inner):
        self.inner, self.signature, self.tokenizer = inner, "counting", inner.tokenizer
        self.scored: list[str] = []

    def continuation_logprobs(self, prompts, continuations):
        self.scored += list(prompts)
        return self.inner.continuation_logprobs(prompts, continuations)

    def sample(self, *a, **k):
        return self.inner.sample(*a, **k)

    def greedy(self, *a, **k):
        return self.inner.greedy(*a, **k)

    def close(self):
        pass


def test_each_distinct_input_is_judged_once_across_decisions(tiny):
    backend = CountingBackend(tiny[0])
    judge = Judge(backend=backend, batch_size=2)
    samples = ["the cat", "the dog", "the cat", "paris", "the dog"]
    first = decide(samples, judge, context="what?")
    assert first.mbr.method == "pointwise" and len(backend.scored) == 3
    again = decide(samples, judge, context="what?")
    assert again.output == first.output and len(backend.scored) == 3
    decide(samples, judge, context="another question?")
    assert len(backend.scored) == 6


def test_the_pairwise_judge_rates_each_candidate_against_each_reference(tiny):
    backend = CountingBackend(tiny[0])
    judge = Judge(backend=backend, reference=True, question="say it again", chat=False)
    assert not judge.pointwise
    matrix = judge.pairwise(["the cat", "the dog"], ["the cat", "paris", "the cat"])
    assert matrix.shape == (2, 3) and len(backend.scored) == 4  # distinct pairs only
    [j] = judge.judgements(["the dog"], "say it again", ["paris"])
    assert matrix[1, 1] == j.score
    assert sum("Reference answer: paris" in p for p in backend.scored) == 2
    d = decide(["the cat", "the dog", "the cat"], judge)
    assert d.mbr.method == "exact"


# -- specs -----------------------------------------------------------------------------------------------
def test_a_spec_round_trips_through_yaml_and_sets_the_prompt(tmp_path, tiny):
    spec = JudgeSpec(
        criteria="Closer in meaning scores higher.",
        task="Paraphrase the sentence.",
        shots=[{"question": "q1", "candidate": "a1", "reference": None, "score": 4}],
        scale=4,
        model="smollm2-135m-instruct",
        backend="hf",
        agreement={"held_back": {"spearman": 0.5}},
    )
    path = tmp_path / "judge.yaml"
    spec.to_yaml(path)
    loaded = JudgeSpec.from_yaml(path)
    assert loaded == spec
    judge = Judge(backend=tiny[0], spec=path, chat=False)
    assert judge.scale == 4
    prompt = judge.render("q2", "a2", None)
    assert prompt.startswith("Paraphrase the sentence.\n")
    assert "Closer in meaning scores higher." in prompt
    assert "Answer: a1\nScore (1-4): 4\n\n" in prompt and prompt.endswith("Score (1-4):")
    assert spec.prompt_hash() in judge.signature()
    with pytest.raises(InvalidParameterError, match="scale"):
        Judge(backend=tiny[0], spec=path, scale=5)


def test_a_malformed_spec_is_refused(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("metricwise_judge_spec: 1\nitem: 'Answer: {answer}'\n")
    with pytest.raises(InvalidParameterError, match="answer"):
        JudgeSpec.from_yaml(path)
    path.write_text("just: text\n")
    with pytest.raises(InvalidParameterError, match="metricwise_judge_spec"):
        JudgeSpec.from_yaml(path)


def test_bad_arguments_are_refused():
    with pytest.raises(InvalidParameterError, match="'backend'"):
        Judge(backend="hff")
    with pytest.raises(InvalidParameterError, match="base_url"):
        Judge(backend="openai")
    with pytest.raises(InvalidParameterError, match="scale"):
        Judge(backend="hf", scale=1)


def test_a_scale_past_nine_is_refused(tiny):
    # Digits are tokenised one by one (here, and in smollm2 and gemma): " 10" is " 1" then "0",
    # so log p(" 1") holds the probability of " 10" too, and normalising over " 1" .. " 10"
    # would count the 10s twice (a judge sure of 10 would rate 5.5).
    _, _, tokenizer = tiny
    one, ten = (tokenizer(s, add_special_tokens=False)["input_ids"] for s in (" 1", " 10"))
    assert ten[: len(one)] == one
    for scale in (10, 100):
        with pytest.raises(InvalidParameterError, match=r"\[2, 9\]"):
            Judge(backend=tiny[0], scale=scale)
    with pytest.raises(InvalidParameterError, match=r"\[2, 9\]"):
        JudgeSpec(scale=10)


# -- Kendall's tau-b -------------------------------------------------------------------------------------
def test_kendall_tau_b_with_ties():
    # 10 pairs: 6 concordant, 2 discordant, 1 tied in x only, 1 tied in y only.
    x = np.array([1, 2, 2, 3, 4])
    y = np.array([1, 3, 2, 2, 5])
    dx = np.sign(x[:, None] - x[None, :])[np.triu_indices(5, 1)]
    dy = np.sign(y[:, None] - y[None, :])[np.triu_indices(5, 1)]
    c, d = int(((dx * dy) > 0).sum()), int(((dx * dy) < 0).sum())
    expected = (c - d) / math.sqrt((10 - (dx == 0).sum()) * (10 - (dy == 0).sum()))
    assert kendall_tau_b(x, y) == pytest.approx(expected)
    assert math.isnan(kendall_tau_b(np.ones(4), np.arange(4)))
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 5, 40), rng.integers(0, 4, 40)
    assert kendall_tau_b(a, b) == pytest.approx(stats.kendalltau(a, b).statistic)


# -- judge-calibrate -------------------------------------------------------------------------------------
def _labelled(path, n=12, **overrides):
    rows = []
    for i in range(n):
        row = {
            "question": "Say the same thing in other words.",
            "candidate": ["the cat sat on the mat", "the dog ran", "paris", "5"][i % 4],
            "reference": "the cat sat on the mat",
            "score": float(i % 6),
        }
        rows.append({**row, **(overrides if i == 3 else {})})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    model, tokenizer = long_tiny_model()
    path = tmp_path_factory.mktemp("tiny-judge")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_judge_calibrate_writes_a_spec_that_judge_loads(tiny_model_dir, tmp_path, capsys):
    examples = _labelled(tmp_path / "labelled.jsonl", n=16)
    out = tmp_path / "judge.yaml"
    argv = ["judge-calibrate", "--examples", str(examples), "--model", str(tiny_model_dir),
            "--label_range", "0,5", "--shots", "2", "--explanations", "1", "--quiet",
            "--output", str(out)]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| fixed criteria: generic/rate/0-shot | held-back | 8 |" in printed
    assert "explanation:" in printed
    spec = JudgeSpec.from_yaml(out)
    assert spec.model == str(tiny_model_dir) and spec.backend == "hf" and spec.scale == 5
    assert spec.agreement["chosen"] in spec.agreement["grid"] and len(spec.agreement["grid"]) == 8
    for part in ("calibration", "held_back", "fixed_criteria_held_back"):
        assert set(spec.agreement[part]) >= {"pearson", "spearman", "kendall", "n"}
    assert spec.provenance["calibration"] == 8 and spec.provenance["held_back"] == 8
    assert all(1 <= s["score"] <= 5 for s in spec.shots)
    judge = Judge(spec=out)  # model and backend from the spec
    [j] = judge.judgements(["the dog ran"], "Say it again.", ["the cat sat on the mat"])
    assert j.score is not None and 1 <= j.score <= 5


@pytest.mark.parametrize(
    ("overrides", "n", "message"),
    [
        ({"score": "high"}, 12, "numeric 'score'"),
        ({"score": 7}, 12, "outside the label range"),
        ({"candidate": None}, 12, "'candidate' string"),
        ({}, 6, "enough labelled examples"),
    ],
)
def test_judge_calibrate_refuses_bad_input_before_any_model_loads(
    tmp_path, capsys, monkeypatch, overrides, n, message
):
    import metricwise.backends.base as base

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(base, "load_backend", no_model)
    examples = _labelled(tmp_path / "labelled.jsonl", n=n, **overrides)
    argv = ["judge-calibrate", "--examples", str(examples), "--label_range", "0,5",
            "--output", str(tmp_path / "j.yaml")]  # fmt: skip
    assert main(argv) == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_llamacpp_continuation_logprobs_equal_its_teacher_forced_score():
    pytest.importorskip("llama_cpp")
    from metricwise.backends.llamacpp import LlamaCppBackend
    from metricwise.types import SamplingConfig

    try:
        backend = LlamaCppBackend("smollm2-135m-instruct", n_threads=1, n_ctx=1024)
    except InvalidParameterError:
        pytest.skip("smollm2-135m-instruct is not installed")
    greedy = SamplingConfig(n=1, temperature=0.0, max_tokens=1)
    prompt = "Rate the answer from 1 to 5. Score:"
    for continuations in ([" 1", " 2", " 3", " 4", " 5"], [" 1 2", " 5"]):
        got = backend.continuation_logprobs([prompt], continuations)[0]
        expected = [
            backend.score(prompt, backend.tokenize_continuation(c), greedy)[0]
            for c in continuations
        ]
        np.testing.assert_allclose(got, expected, atol=1e-9)
    backend.close()


def test_a_device_torch_cannot_use_stops_the_judge_when_built():
    pytest.importorskip("torch")
    import torch

    from metricwise.metrics import get as get_metric

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(InvalidParameterError, match="'device' parameter of judge"):
        get_metric("judge", device="cuda")
