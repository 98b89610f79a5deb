"""Adaptive sampling: the stopping criteria and the rounds through the store."""

from __future__ import annotations

import pytest

from metricwise import Candidate, SampleSet, SamplingConfig, decide
from metricwise.adaptive import Adaptive, sample_and_decide, settled_probability
from metricwise.errors import InvalidParameterError
from metricwise.store import SampleStore


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_n": 8, "max_n": 4}, "'min_n'"),
        ({"confidence": 1.0}, "'confidence'"),
        ({"confidence": 0.0}, "'confidence'"),
        ({"tolerance": -0.1}, "'tolerance'"),
        ({"round": 0}, "'round'"),
    ],
)
def test_bad_settings_name_what_is_wrong(kwargs, message):
    with pytest.raises(InvalidParameterError, match=message):
        Adaptive(**kwargs)


def test_schedule_reaches_max_n_exactly():
    assert Adaptive(min_n=4, max_n=16, round=4).schedule() == [4, 8, 12, 16]
    assert Adaptive(min_n=3, max_n=10, round=4).schedule() == [3, 7, 10]
    assert Adaptive(min_n=5, max_n=5).schedule() == [5]


def test_mode_agreement_settles_and_a_split_does_not():
    adaptive = Adaptive()
    agree = decide(["Paris"] * 4, "exact_match")
    # Four of four against one unseen rival: the Beta(5, 1) criterion, 1 - 0.5**5.
    assert settled_probability(agree, "exact_match", adaptive) == pytest.approx(
        1 - 0.5**5, abs=0.03
    )
    split = decide(["Paris", "Lyon", "Paris", "Lyon"], "exact_match")
    assert settled_probability(split, "exact_match", adaptive) < 0.6
    many = decide(["Paris"] * 30 + ["Lyon"] * 2, "exact_match")
    assert settled_probability(many, "exact_match", adaptive) > 0.99


def test_numeric_rules_settle_within_the_tolerance():
    tight = decide(["3.0", "3.05", "2.95", "3.0"] * 4, "squared_error")
    wide = decide(["0", "5", "1", "4"], "squared_error")
    adaptive = Adaptive(tolerance=0.1)
    assert settled_probability(tight, "squared_error", adaptive) > 0.95
    assert settled_probability(wide, "squared_error", adaptive) < 0.4
    # At max_n nothing more will be drawn: the decision is final.
    assert (
        settled_probability(wide, "squared_error", Adaptive(min_n=4, max_n=4, tolerance=0.1)) == 1.0
    )
    median = decide(["1", "2", "2", "2", "2", "3"], "absolute_error")
    assert 0.0 < settled_probability(median, "absolute_error", adaptive) <= 1.0


def test_mbr_settles_when_the_best_candidate_stays_best():
    same = decide(["the cat sat"] * 6 + ["a dog ran"], "chrf")
    apart = decide(["one two", "three four", "five six", "seven eight"], "chrf")
    adaptive = Adaptive()
    assert settled_probability(same, "chrf", adaptive) > 0.95
    assert settled_probability(apart, "chrf", adaptive) < 0.8


def test_best_of_n_settles_by_the_rank_of_the_best_sample_not_by_resampling():
    from metricwise.metrics.base import Metric

    class Length(Metric):
        """A pointwise utility that records the context of every call."""

        name = "length_reward"
        higher_is_better = True
        pointwise = True

        def __init__(self) -> None:
            self.contexts: list[str | None] = []

        def pointwise_scores(self, cands, *, context=None):
            self.contexts.append(context)
            return [float(len(c)) for c in cands]

        def _score_one(self, pred, ref):
            return float(len(pred))

    metric = Length()
    samples = SampleSet(
        candidates=tuple(
            Candidate(t, logp=-1.0, logq=-1.0, n_tokens=1, finish_reason="eos")
            for t in ["a", "bbb", "cc", "d"]
        ),
        prompt="question?",
    )
    decision = decide(samples, metric)
    assert decision.output == "bbb" and metric.contexts == ["question?"]
    # Resampling the 4 samples seen never beats "bbb"; whether one of the 12 to come does is
    # the question: the best of 16 exchangeable draws is among the first 4 with chance 4/16.
    assert settled_probability(decision, metric, Adaptive(max_n=16)) == pytest.approx(4 / 16)
    assert settled_probability(decision, metric, Adaptive(max_n=4)) == 1.0
    assert metric.contexts == ["question?"]  # no score computed, none without its question


def test_a_failed_decision_is_never_settled():
    assert settled_probability(decide(["n/a"], "squared_error"), "squared_error", Adaptive()) == 0.0


class ScriptedBackend:
    """Sample i of a prompt is script[prompt][i % len]: easy prompts agree, hard ones alternate."""

    signature = "scripted"

    def __init__(self, script):
        self.script = script
        self.calls = []

    def sample(self, prompts, config, *, start=0):
        self.calls.append((tuple(prompts), start, config.n))
        return [
            SampleSet(
                candidates=tuple(
                    Candidate(
                        self.script[p][i % len(self.script[p])],
                        logp=-1.0,
                        logq=-1.0,
                        n_tokens=1,
                        finish_reason="eos",
                    )
                    for i in range(start, config.n)
                ),
                prompt=p,
            )
            for p in prompts
        ]

    def greedy(self, prompts, config):
        raise AssertionError("not used")

    def close(self):
        pass


def test_rounds_stop_each_prompt_when_settled_and_reuse_the_stored_prefix(tmp_path):
    script = {"easy": ["7"], "hard": ["1", "9", "4", "6", "2"], "none": ["no answer here"]}
    backend = ScriptedBackend(script)
    adaptive = Adaptive(min_n=4, max_n=12, round=4, tolerance=0.1)
    with SampleStore(tmp_path / "s.db") as store:
        decisions = sample_and_decide(
            store,
            backend,
            ["easy", "hard", "none", "easy"],
            SamplingConfig(n=1),
            adaptive,
            metric="squared_error",
        )
        easy, hard, none, again = decisions
        assert (easy.n_used, easy.stopped, easy.output) == (4, "settled", 7.0)
        assert again == easy
        assert (hard.n_used, hard.stopped) == (12, "max_n")
        assert (none.n_used, none.stopped, none.output) == (12, "no_valid_samples", None)
        # Each round draws only the new indices of the prompts still open.
        assert backend.calls == [
            (("easy", "hard", "none"), 0, 4),
            (("hard", "none"), 4, 8),
            (("hard", "none"), 8, 12),
        ]
        # The adaptive samples are the prefix of a fixed-N run: a later fixed run draws nothing.
        fixed = store.sample(backend, ["hard"], SamplingConfig(n=12))
        assert (
            len(backend.calls) == 3 and [c.text for c in fixed[0].candidates][:5] == script["hard"]
        )


def test_every_decide_option_passes_through_the_rounds(tmp_path):
    """Options of decide are not metric arguments: mbr="prune" reaches decide, tau the metric."""
    backend = ScriptedBackend({"p": ["the cat sat", "a cat sat", "the cat sat down", "dogs"]})
    adaptive = Adaptive(min_n=4, max_n=8, round=4)
    with SampleStore(tmp_path / "s.db") as store:
        (pruned,) = sample_and_decide(
            store, backend, ["p"], SamplingConfig(n=1), adaptive, metric="chrf", mbr="prune"
        )
        (exact,) = sample_and_decide(
            store, backend, ["p"], SamplingConfig(n=1), adaptive, metric="chrf"
        )
        assert (
            pruned.output == exact.output
            and pruned.mbr is not None
            and pruned.mbr.method == "prune"
        )
        (quantile,) = sample_and_decide(
            store,
            ScriptedBackend({"q": ["1", "2", "3", "4"]}),
            ["q"],
            SamplingConfig(n=1),
            adaptive,
            metric="pinball",
            tau=0.9,
        )
        assert quantile.output == 4.0


def test_each_batch_goes_through_its_rounds_on_one_prefill(tmp_path):
    """Batch-major rounds: the hf backend prefills each batch of prompts once, however many
    rounds its unsettled prompts take."""
    pytest.importorskip("torch")
    from metricwise.backends.hf import HFBackend
    from tiny_lm import tiny_model_and_tokenizer

    model, tokenizer = tiny_model_and_tokenizer()
    backend = HFBackend(model, tokenizer=tokenizer)
    prompts = ["the cat sat on", "what is two plus three ?", "paris is the", "numbers 0 1 2"]
    # Token F1 of random tiny-model text never settles at this confidence: every round runs.
    adaptive = Adaptive(min_n=2, max_n=6, round=2, confidence=0.999)
    with SampleStore(tmp_path / "s.db") as store:
        decisions = sample_and_decide(
            store,
            backend,
            prompts,
            SamplingConfig(n=1, max_tokens=4, seed=3),
            adaptive,
            batch_size=2,
            metric="token_f1",
        )
    assert any(d.n_used == 6 for d in decisions)  # some prompt took all three rounds
    assert backend.prefill_calls == 2  # 4 prompts in 2 batches, not one prefill per round


@pytest.mark.parametrize(
    ("samples", "metric", "threshold"),
    [
        (["3", "3.2", "2.9", "3.1", "3", "3"], "squared_error", {"max_expected_loss": 1e-6}),
        (["Paris"] * 5 + ["Lyon"], "exact_match", {"min_expected_utility": 0.99}),
    ],
)
def test_an_abstention_settles_on_the_answer_it_withheld(samples, metric, threshold):
    """An abstention has no output, but more samples can still change the answer it held
    back: it is judged by that answer, as the same decision without a threshold is."""
    adaptive = Adaptive(min_n=4, max_n=32, round=4, tolerance=0.5)
    plain = decide(samples, metric)
    withheld = decide(samples, metric, **threshold)
    assert withheld.abstained and withheld.best == plain.output and withheld.decided
    assert (
        settled_probability(withheld, metric, adaptive)
        == settled_probability(plain, metric, adaptive)
        > 0
    )
