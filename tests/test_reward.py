"""reward: a sequence-classification model as a pointwise utility, on tiny random models.

No reward model ships offline, so these tests build tiny randomly initialised ones from
transformers' own config classes (``save_pretrained`` into a temporary directory): they check
the mechanics (the input format, batching, caching, the head's reading, the errors), not any
model's judgement.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from metricwise import SampleSet, decide, metrics
from metricwise.cli import main
from metricwise.errors import InvalidParameterError
from metricwise.metrics import model_based
from metricwise.types import Candidate

CHAT_TEMPLATE = "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>\n{% endfor %}"


def save_tiny(path, *, num_labels=1, chat=False, causal=False, seed=0):
    import torch
    from transformers import LlamaForCausalLM, LlamaForSequenceClassification

    from tiny_lm import tiny_llama_config, tiny_model_and_tokenizer

    _, tokenizer = tiny_model_and_tokenizer()
    torch.manual_seed(seed)
    config = tiny_llama_config(tokenizer, num_labels=num_labels)
    model = (LlamaForCausalLM if causal else LlamaForSequenceClassification)(config).eval()
    model.save_pretrained(path)
    tokenizer.chat_template = CHAT_TEMPLATE if chat else None
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def reward_dir(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("reward"))


@pytest.fixture(autouse=True)
def fresh_cache():
    model_based.CACHE.clear()
    yield
    model_based.CACHE.clear()


def direct(path, texts, add_special_tokens=True):
    """One forward pass per text, unbatched, straight through transformers."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    out = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=add_special_tokens, return_tensors="pt")
        with torch.inference_mode():
            logits = model(**ids).logits[0]
        out.append(float(logits[0]) if len(logits) == 1 else float(logits[1] - logits[0]))
    return np.array(out)


ANSWERS = ["the cat sat on the mat", "5", "paris is the capital of france", "the dog ran", "1 2 3"]
QUESTION = "what is two plus three ?"


def test_equals_a_direct_forward_pass_on_plain_text(reward_dir):
    metric = metrics.get("reward", model=str(reward_dir))
    got = metric.pointwise_scores(ANSWERS, context=QUESTION)
    expected = direct(reward_dir, [f"{QUESTION}\n\n{a}" for a in ANSWERS])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    alone = metric.pointwise_scores(ANSWERS)
    np.testing.assert_allclose(alone, direct(reward_dir, ANSWERS), rtol=1e-5, atol=1e-5)
    assert metric.signature() == f"reward(model={reward_dir},format=plain)"


def test_chat_template_puts_question_and_answer_in_turns(tmp_path):
    path = save_tiny(tmp_path / "chat", chat=True)
    metric = metrics.get("reward", model=str(path))
    got = metric.pointwise_scores(ANSWERS[:3], context=QUESTION)
    rendered = [f"<s>user: {QUESTION}</s>\n<s>assistant: {a}</s>\n" for a in ANSWERS[:3]]
    np.testing.assert_allclose(
        got, direct(path, rendered, add_special_tokens=False), rtol=1e-5, atol=1e-5
    )
    assert "format=chat" in metric.signature()


def test_two_labels_give_the_log_odds_of_label_one(tmp_path):
    path = save_tiny(tmp_path / "two", num_labels=2)
    got = metrics.get("reward", model=str(path)).pointwise_scores(ANSWERS, context=QUESTION)
    expected = direct(path, [f"{QUESTION}\n\n{a}" for a in ANSWERS])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_batching_and_caching_give_the_same_numbers(reward_dir):
    one = metrics.get("reward", model=str(reward_dir), batch_size=1)
    first = one.pointwise_scores(ANSWERS, context=QUESTION)
    model_based.CACHE.clear()
    many = metrics.get("reward", model=str(reward_dir), batch_size=8)
    batched = many.pointwise_scores(ANSWERS, context=QUESTION)
    np.testing.assert_allclose(batched, first, rtol=1e-5, atol=1e-6)
    # A second call computes nothing: the cached values come back bitwise.
    scorer = many._scorer
    calls = []
    original = scorer.scores
    scorer.scores = lambda pairs: calls.append(pairs) or original(pairs)
    try:
        again = many.pointwise_scores(list(reversed(ANSWERS)), context=QUESTION)
        assert calls == []
        np.testing.assert_array_equal(again, batched[::-1])
        # A new question is a new pair: computed once, each distinct answer once.
        many.pointwise_scores(ANSWERS + ANSWERS, context="another question")
        assert [len(c) for c in calls] == [len(ANSWERS)]
    finally:
        del scorer.scores


def test_decide_is_best_of_n_with_the_prompt_as_question(reward_dir):
    metric = metrics.get("reward", model=str(reward_dir))
    scores = metric.pointwise_scores(ANSWERS, context=QUESTION)
    samples = SampleSet(tuple(Candidate(a) for a in ANSWERS), prompt=QUESTION)
    decision = decide(samples, metric)
    assert decision.rule == "mbr" and decision.mbr.method == "pointwise"
    assert decision.output == ANSWERS[int(np.argmax(scores))]
    assert decision.expected_utility == pytest.approx(scores.max())
    # Without a SampleSet the question is decide's context; weights do not choose.
    heavy = [0.0] * len(ANSWERS)
    heavy[int(np.argmin(scores))] = 100.0
    heavy = [w + 1.0 for w in heavy]
    again = decide(ANSWERS, "reward", model=str(reward_dir), context=QUESTION, weights=heavy)
    assert again.output == decision.output


def test_a_model_without_a_score_head_is_refused_by_name(tmp_path):
    causal = save_tiny(tmp_path / "causal", causal=True)
    with pytest.raises(InvalidParameterError) as info:
        metrics.get("reward", model=str(causal))
    message = str(info.value)
    assert str(causal) in message and "ForSequenceClassification" in message
    assert "LlamaForCausalLM" in message
    # A config that claims a head while the weights lack it is caught when the weights load.
    lying = save_tiny(tmp_path / "lying", causal=True)
    config = json.loads((lying / "config.json").read_text())
    config["architectures"] = ["LlamaForSequenceClassification"]
    (lying / "config.json").write_text(json.dumps(config))
    metric = metrics.get("reward", model=str(lying))
    with pytest.raises(InvalidParameterError, match="score head"):
        metric.pointwise_scores(["x"])


@pytest.mark.parametrize(
    "args, message",
    [
        ({}, "'model' parameter of reward is required"),
        ({"model": "/nonexistent/reward-model"}, "not a directory"),
        ({"model": "no-such-org/no-such-reward-model"}, "can be loaded here"),
    ],
)
def test_missing_models_say_what_and_how(args, message, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(InvalidParameterError, match=message) as info:
        metrics.get("reward", **args)
    assert "No reward model ships with metricwise" in str(info.value)
    assert ".." not in str(info.value)


def test_a_directory_without_a_config_is_named_as_such(tmp_path):
    with pytest.raises(InvalidParameterError, match=r"a directory without a config\.json"):
        metrics.get("reward", model=str(tmp_path))


def test_predict_refuses_a_bad_reward_model_before_sampling(tmp_path, capsys, monkeypatch):
    import metricwise.backends

    monkeypatch.setattr(
        metricwise.backends, "load_backend", lambda *a, **k: pytest.fail("a model was loaded")
    )
    causal = save_tiny(tmp_path / "causal", causal=True)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"id": 1, "prompt": "2 + 3 = ?"}\n')
    argv = ["predict", "--metric", "reward", "--metric_args", f"model={causal}", "-n", "4"]
    code = main([*argv, "--input", str(prompts), "--store", str(tmp_path / "s.sqlite")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "metricwise predict: error: The 'model' parameter of reward" in err
    assert str(causal) in err and "ForSequenceClassification" in err
