"""Every decoder scored on stored samples, with no model."""

from __future__ import annotations

import json

import numpy as np
import pytest

from metricwise import Candidate, SampleSet
from metricwise.evaluate.decoders import (
    Decoder,
    default_decoders,
    make_decoder,
    prior_prediction,
    rule_decoder,
)
from metricwise.evaluate.report import load_results, render_markdown
from metricwise.evaluate.runner import write_outputs
from metricwise.evaluate.scoring import powers_of_two_up_to, score_task
from metricwise.evaluate.stats import resample_indices
from metricwise.tasks.base import Item, Task

RATING = Task(
    name="rating",
    description="a 0-5 rating",
    answer_type="number",
    metrics=("squared_error", "absolute_error"),
    extractor="number",
    template="{text}",
    valid_range=(0.0, 5.0),
    corpus_metrics=("pearson", "spearman", "accuracy"),
)
QA = Task(
    name="qa",
    description="short answers",
    answer_type="text",
    metrics=("exact_match", "token_f1"),
    extractor="first_line",
    template="{q}",
)


def pool(texts, logps=None):
    logps = logps or [-1.0] * len(texts)
    return SampleSet(
        candidates=tuple(
            Candidate(t, logp=lp, logq=lp, finish_reason="eos")
            for t, lp in zip(texts, logps, strict=True)
        )
    )


def rating_fixture():
    items = [
        Item(id=str(i), fields={"text": str(i)}, references=(ref,), target=str(ref))
        for i, ref in enumerate([1.0, 4.0, 2.5, 0.0])
    ]
    pools = [
        pool(["1", "2", "0", "1", "3", "1", "1.5", "x"]),
        pool(["5", "4", "4", "3", "5", "4.5", "4", "4"]),
        pool(["2", "3", "2.5", "9", "2", "3", "2", "2"]),
        pool(["0", "0", "1", "0", "0", "2", "0", "0"], logps=[-1, -1, -3, -1, -1, -5, -1, -1]),
    ]
    greedy = [Candidate(t, logp=-0.5, logq=0.0, finish_reason="eos") for t in ["1", "5", "2", "0"]]
    prompts = [f"p{i}" for i in range(4)]
    return items, prompts, greedy, pools


def by(results, decoder, metric):
    return next(r for r in results["scores"] if r["decoder"] == decoder and r["metric"] == metric)


def test_every_decoder_is_scored_on_the_same_samples():
    items, prompts, greedy, pools = rating_fixture()
    results, records = score_task(RATING, items, prompts, greedy, pools, bootstrap_iters=200)
    labels = {r["decoder"] for r in results["scores"]}
    assert labels == {d.label for d in default_decoders(RATING)}
    # Recompute the mean decoder's squared error by hand.
    means = [
        np.mean([1, 2, 0, 1, 3, 1, 1.5]),
        np.mean([5, 4, 4, 3, 5, 4.5, 4, 4]),
        np.mean([2, 3, 2.5, 5, 2, 3, 2, 2]),
        np.mean([0, 0, 1, 0, 0, 2, 0, 0]),
    ]
    expected = np.mean([(m - r) ** 2 for m, r in zip(means, [1.0, 4.0, 2.5, 0.0], strict=True)])
    assert by(results, "mean", "squared_error")["value"] == pytest.approx(expected)
    assert by(results, "greedy", "squared_error")["value"] == pytest.approx(
        np.mean([0, 1, 0.25, 0])
    )
    # The oracle bounds every selector from below (losses).
    oracle = by(results, "oracle", "absolute_error")["value"]
    for label in labels - {"oracle", "mean", "mean+model", "median", "median+model"}:
        assert oracle <= by(results, label, "absolute_error")["value"] + 1e-12
    # One unparsable sample: the first item still parses, its decision counts 7 of 8.
    assert by(results, "mean", "squared_error")["parse_rate"] == 1.0
    assert records[0].predictions["mean"] == pytest.approx(means[0])
    assert "vs_greedy" in by(results, "mean", "squared_error")
    assert "vs_greedy" not in by(results, "greedy", "squared_error")


def test_model_weights_use_logprobs_and_curves_cover_powers_of_two():
    items, prompts, greedy, pools = rating_fixture()
    results, records = score_task(
        RATING, items, prompts, greedy, pools, bootstrap_iters=50, curve_subsets=4
    )
    # Item 3: the improbable "1" and "2" get almost no model weight.
    assert records[3].predictions["mean+model"] < records[3].predictions["mean"]
    assert results["curves"]["k"] == [1, 2, 4, 8]
    assert set(results["curves"]["values"]) == {
        d.label for d in default_decoders(RATING) if d.uses_samples
    }
    # With all N samples the curve ends at the full-pool score.
    assert results["curves"]["values"]["mean"][-1] == pytest.approx(
        by(results, "mean", "squared_error")["value"]
    )
    corpus = {(r["decoder"], r["metric"]) for r in results["corpus"]}
    assert ("mean", "pearson") in corpus and ("greedy", "accuracy") in corpus


def test_the_prior_is_the_primary_metrics_bayes_rule_over_fewshot_references():
    items, prompts, greedy, pools = rating_fixture()
    train = [0.0, 1.0, 1.0, 2.0, 7.0]  # 7 is outside 0..5: clipped like any answer
    results, records = score_task(
        RATING, items, prompts, greedy, pools, bootstrap_iters=100, prior_references=train
    )
    assert [r.predictions["prior"] for r in records] == pytest.approx(
        [9 / 5] * 4
    )  # mean of 0, 1, 1, 2, 5
    expected = np.mean([(9 / 5 - r) ** 2 for r in [1.0, 4.0, 2.5, 0.0]])
    assert by(results, "prior", "squared_error")["value"] == pytest.approx(expected)
    assert "vs_greedy" in by(results, "prior", "squared_error")
    assert "prior" not in results["curves"]["values"]
    corpus = {(r["decoder"], r["metric"]) for r in results["corpus"] if r["decoder"] == "prior"}
    assert corpus == {("prior", "accuracy")}  # a constant has no correlation
    by_median = Task(
        name="r",
        description="",
        answer_type="number",
        metrics=("absolute_error",),
        extractor="number",
        template="",
    )
    assert prior_prediction(by_median, [0.0, 1.0, 1.0, 2.0, 7.0]) == 1.0
    assert prior_prediction(QA, ["Paris", "paris", "Lyon"]).lower() == "paris"
    with pytest.raises(ValueError, match="prior_references"):
        score_task(
            RATING,
            items,
            prompts,
            greedy,
            pools,
            decoders=[make_decoder("greedy"), make_decoder("prior", "squared_error")],
        )


def test_text_task_decoders_and_fallback_for_missing_answers():
    items = [
        Item(
            id="a",
            fields={"q": "capital of France"},
            references=("Paris", "paris, France"),
            target="Paris",
        ),
        Item(id="b", fields={"q": "who"}, references=("George Eliot",), target="George Eliot"),
    ]
    pools = [
        pool(["Paris", "paris", "Lyon", "Paris\nmore"]),
        pool(["Eliot", "George Eliot", "Mary Ann Evans", "George  Eliot"]),
    ]
    greedy = [
        Candidate("Lyon", logp=-1.0, logq=0.0, finish_reason="eos"),
        Candidate("", logp=-1.0, logq=0.0, finish_reason="eos"),
    ]
    results, _ = score_task(QA, items, ["p1", "p2"], greedy, pools, bootstrap_iters=100)
    assert by(results, "mode", "exact_match")["value"] == 1.0
    assert by(results, "greedy", "exact_match")["value"] == 0.0
    assert by(results, "oracle", "token_f1")["value"] == 1.0
    assert {r["decoder"] for r in results["scores"]} >= {"mbr[token_f1]", "mbr[token_f1]+model"}


def test_outputs_and_report_round_trip(tmp_path):
    items, prompts, greedy, pools = rating_fixture()
    run, records = score_task(RATING, items, prompts, greedy, pools, bootstrap_iters=100)
    run.update({"temperature": 1.0, "n": 8, "num_fewshot": 0})
    results = {"config": {}, "runs": [run]}
    written = write_outputs(results, {"rating": records}, tmp_path)
    names = {p.name for p in written}
    assert {"results.json", "results.md", "samples_rating.jsonl", "plot_rating_k.png"} <= names
    table = render_markdown(load_results(tmp_path))
    assert "| rating | 1 | mean | 8 | 1.0 | squared_error | ↓ |" in table
    first = json.loads((tmp_path / "samples_rating.jsonl").read_text().splitlines()[0])
    assert first["predictions"]["greedy"] == 1.0 and len(first["candidates"]) == 8


def test_load_results_names_what_is_missing(tmp_path):
    with pytest.raises(Exception, match="metricwise eval --output_path"):
        load_results(tmp_path)


def test_powers_of_two():
    assert powers_of_two_up_to(1) == [1]
    assert powers_of_two_up_to(16) == [1, 2, 4, 8, 16]
    assert powers_of_two_up_to(10) == [1, 2, 4, 8, 10]


def test_decoder_labels():
    assert make_decoder("mbr", "token_f1", "model").label == "mbr[token_f1]+model"
    assert make_decoder("mean", "squared_error").label == "mean"


def test_accuracy_rounds_on_ordinal_scales_only():
    from metricwise.evaluate.scoring import is_ordinal, numeric_accuracy

    assert numeric_accuracy(3.4, 3.0, ordinal=True) == 1.0
    assert numeric_accuracy(3.5, 3.0, ordinal=True) == 0.0
    assert numeric_accuracy(3.4, 3.0) == 0.0
    assert numeric_accuracy(18.0000000001, 18.0) == 1.0
    scale = Task(
        name="r",
        description="",
        answer_type="number",
        metrics=("absolute_error",),
        extractor="number",
        template="{t}",
        valid_range=(1.0, 5.0),
    )
    assert is_ordinal(scale, [Item(id="1", fields={}, references=(3.0,), target="3")])
    assert not is_ordinal(scale, [Item(id="1", fields={}, references=(3.5,), target="3.5")])
    assert not is_ordinal(RATING, [Item(id="1", fields={}, references=(2.75,), target="2.8")])


def test_every_decoder_is_compared_with_the_prior_on_the_same_resamples():
    items, prompts, greedy, pools = rating_fixture()
    results, _ = score_task(
        RATING,
        items,
        prompts,
        greedy,
        pools,
        bootstrap_iters=200,
        prior_references=[0.0, 1.0, 1.0, 2.0, 7.0],
    )
    prior = by(results, "prior", "absolute_error")
    assert "vs_prior" not in prior
    for label in ("greedy", "mean", "median+model", "oracle"):
        row = by(results, label, "absolute_error")
        vs = row["vs_prior"]
        assert vs["difference"] == pytest.approx(row["value"] - prior["value"])
        assert vs["ci"][0] <= vs["difference"] <= vs["ci"][1]
    # Without few-shot references there is no prior, and no comparison with it.
    plain, _ = score_task(RATING, items, prompts, greedy, pools, bootstrap_iters=50)
    assert all("vs_prior" not in r for r in plain["scores"])


def test_corpus_statistics_get_a_paired_difference_against_greedy():
    items, prompts, greedy, pools = rating_fixture()
    results, records = score_task(
        RATING,
        items,
        prompts,
        greedy,
        pools,
        bootstrap_iters=300,
        seed=3,
        prior_references=[0.0, 1.0, 1.0, 2.0, 7.0],
    )
    corpus = {(r["decoder"], r["metric"]): r for r in results["corpus"]}
    assert "vs_greedy" not in corpus["greedy", "accuracy"]
    for label in ("mode", "mean", "prior"):
        row, base = corpus[label, "accuracy"], corpus["greedy", "accuracy"]
        assert row["vs_greedy"]["difference"] == pytest.approx(row["value"] - base["value"])
    # The interval resamples the same items for both decoders (the scores' resamples).
    refs = np.array([1.0, 4.0, 2.5, 0.0])
    hits = {
        label: np.array(
            [float(r.predictions[label] == ref) for r, ref in zip(records, refs, strict=True)]
        )
        for label in ("greedy", "mode")
    }
    idx = resample_indices(4, 300, seed=3)
    replicates = (hits["mode"] - hits["greedy"])[idx].mean(axis=1)
    assert corpus["mode", "accuracy"]["vs_greedy"]["ci"] == pytest.approx(
        [np.quantile(replicates, 0.025), np.quantile(replicates, 0.975)]
    )
    # Correlations too, but never against a constant (the prior has none).
    pearson = corpus["mean", "pearson"]
    assert pearson["vs_greedy"]["difference"] == pytest.approx(
        pearson["value"] - corpus["greedy", "pearson"]["value"]
    )
    assert "vs_prior" not in pearson and "vs_prior" in corpus["mean", "accuracy"]


def test_every_metric_of_a_task_gets_its_own_rule():
    rating = {d.label for d in default_decoders(RATING)}
    # Squared error's rule is the mean, absolute error's the median; MBR for each metric too.
    assert {"mean", "median", "mbr[squared_error]", "mbr[absolute_error]"} <= rating
    assert {"mbr[squared_error]+model", "mbr[absolute_error]+model"} <= rating
    answers = Task(
        name="answers",
        description="",
        answer_type="text",
        metrics=("token_f1", "chrf", "exact_match"),
        extractor="first_line",
        template="{q}",
    )
    labels = {d.label for d in default_decoders(answers)}
    assert {"mode", "mbr[token_f1]", "mbr[chrf]", "mbr[chrf]+model"} <= labels
    assert "mbr[exact_match]" not in labels  # its rule is the mode
    for task in (RATING, QA, answers):
        labels = {d.label for d in default_decoders(task)}
        assert {rule_decoder(m, task.answer_type).label for m in task.metrics} <= labels
    assert rule_decoder("exact_match", "text").label == "mode"
    assert rule_decoder("absolute_error", "number").label == "median"
    assert rule_decoder("token_f1", "text").label == "mbr[token_f1]"


WORD_PROBLEMS = Task(
    name="word_problems",
    description="answers after 'The answer is'",
    answer_type="number",
    metrics=("absolute_error",),
    extractor="number:answer",
    template="{q}",
    corpus_metrics=("accuracy",),
)


def test_answers_found_after_the_cue_and_by_the_fallback_are_counted_apart():
    items = [
        Item(id=str(i), fields={"q": str(i)}, references=(ref,), target=str(ref))
        for i, ref in enumerate([7.0, 1000.0, 5.0])
    ]
    greedy = [
        Candidate(t, logp=-1.0, logq=0.0, finish_reason="eos")
        for t in [
            "3 + 4 = 7. The answer is 7.",
            "... = 1000.000 = 10000000000000000",  # no cue: the last number, 1e16
            "I do not know.",
        ]
    ]
    pools = [
        pool(["The answer is 7", "7", "The answer is 8", "so 7"]),
        pool(["The answer is 1000", "1000", "no idea", "The answer is 999"]),
        pool(["The answer is 5", "#### 5", "Answer: 5", "5"]),
    ]
    results, records = score_task(
        WORD_PROBLEMS, items, ["p0", "p1", "p2"], greedy, pools, bootstrap_iters=50
    )
    assert records[1].predictions["greedy"] == 1e16  # still parsed, and still scored so
    greedy_row = by(results, "greedy", "absolute_error")
    assert greedy_row["parse_rate"] == pytest.approx(2 / 3)
    assert greedy_row["strict_rate"] == pytest.approx(1 / 3)
    # A rule reads the pool: the share of its parsed samples that were found after a cue.
    expected = np.mean([2 / 4, 2 / 3, 3 / 4])
    assert by(results, "median", "absolute_error")["strict_rate"] == pytest.approx(expected)
    assert by(results, "first", "absolute_error")["strict_rate"] == pytest.approx(1.0)
    # An extractor without a cue has no strict rate to report.
    plain, _ = score_task(RATING, *rating_fixture(), bootstrap_iters=50)
    assert all("strict_rate" not in r for r in plain["scores"])


def test_a_new_decoder_is_one_registered_class():
    from metricwise.errors import InvalidParameterError
    from metricwise.evaluate import Decoder, register_decoder
    from metricwise.evaluate.report import render_markdown as render

    @register_decoder("middle_sample")
    class MiddleSample(Decoder):
        """The middle of the sorted parsed samples."""

        uses_samples = True

        def predict(self, x):
            answers = sorted(a for a in map(x.answer, x.pool.candidates) if a is not None)
            return answers[len(answers) // 2] if answers else None

    items, prompts, greedy, pools = rating_fixture()
    decoders = [*default_decoders(RATING), MiddleSample()]
    results, records = score_task(
        RATING, items, prompts, greedy, pools, decoders=decoders, bootstrap_iters=50
    )
    assert records[1].predictions["middle_sample"] == 4.0
    assert "vs_greedy" in by(results, "middle_sample", "absolute_error")
    assert "middle_sample" in results["curves"]["values"]  # it reads samples: it gets a curve
    assert ("middle_sample", "pearson") in {(r["decoder"], r["metric"]) for r in results["corpus"]}
    run = dict(results, temperature=1.0, n=8)
    assert "| rating | 1 | middle_sample | 8 | 1.0 | squared_error |" in render({"runs": [run]})
    assert Decoder.from_label("middle_sample") == MiddleSample()
    with pytest.raises(InvalidParameterError, match="already registered"):
        register_decoder("middle_sample")(MiddleSample)


def test_mbr_greedy_puts_greedy_among_the_hypotheses_but_not_the_evidence():
    from metricwise.decide import decide

    items = [Item(id="a", fields={"q": "who"}, references=("George Eliot",), target="x")]
    # No sample is the consensus; greedy is (the best token F1 against every sample).
    pools = [pool(["George Eliot Smith", "Mary George Eliot", "Eliot George Ann", "George"])]
    greedy = [Candidate("George Eliot", logp=-1.0, logq=0.0, finish_reason="eos")]
    decoders = [Decoder.from_label("mbr[token_f1]"), Decoder.from_label("mbr[token_f1]+greedy")]
    results, records = score_task(
        QA, items, ["p"], greedy, pools, decoders=decoders, bootstrap_iters=20
    )
    prediction = records[0].predictions["mbr[token_f1]+greedy"]
    expected = decide(
        pools[0], "token_f1", rule="mbr", candidates=[*pools[0].texts, "George Eliot"]
    )
    assert prediction == expected.output == "George Eliot"
    assert records[0].predictions["mbr[token_f1]"] != "George Eliot"
    assert by(results, "mbr[token_f1]+greedy", "exact_match")["value"] == 1.0
    assert "mbr[token_f1]+greedy" in results["curves"]["values"]
    # A truncated greedy decode is no hypothesis, as a truncated sample is none.
    cut = [Candidate("George Eliot", logp=-1.0, logq=0.0, finish_reason="length")]
    _, cut_records = score_task(QA, items, ["p"], cut, pools, decoders=decoders, bootstrap_iters=5)
    assert (
        cut_records[0].predictions["mbr[token_f1]+greedy"]
        == records[0].predictions["mbr[token_f1]"]
    )
    # Every MBR metric gets its +greedy twin by default, and there is no mode+greedy.
    for task in (RATING, QA):
        labels = {d.label for d in default_decoders(task)}
        mbr = {label for label in labels if label.startswith("mbr[") and "+" not in label}
        assert {f"{label}+greedy" for label in mbr} <= labels
        assert not {label for label in labels if label.startswith("mode+greedy")}
    label = "mbr[chrf]+greedy+model"
    assert Decoder.from_label(label).label == label
    assert Decoder.from_label(label).uses_greedy and Decoder.from_label(label).uses_logprobs


ADAPTIVE = dict(min_n=2, max_n=8, round=2)


def test_adaptive_twins_decide_on_the_pool_prefix_where_their_rule_is_settled():
    from metricwise.adaptive import Adaptive, settled_probability
    from metricwise.decide import decide
    from metricwise.evaluate.decoders import AdaptiveRule, BayesRule, extractor_for

    items, prompts, greedy, pools = rating_fixture()
    adaptive = Adaptive(**ADAPTIVE)
    decoders = default_decoders(RATING, adaptive=adaptive)
    twins = [d for d in decoders if d.chooses_n]
    # Every Bayes rule (each weighting) has one; mbr+greedy, a variant, has none by default.
    rules = [d for d in default_decoders(RATING) if isinstance(d, BayesRule) and not d.uses_greedy]
    assert [d.label for d in twins] == [f"{d.label}@adaptive" for d in rules]
    results, records = score_task(
        RATING, items, prompts, greedy, pools, decoders=decoders, bootstrap_iters=20
    )
    used = results["samples_used"]
    assert set(used) == {d.label for d in twins}
    for twin in twins:
        entry = used[twin.label]
        assert sum(entry["histogram"].values()) == len(items)
        assert 2 <= entry["mean"] <= 8 and set(entry["histogram"]) <= {"2", "4", "6", "8"}
        assert entry["mean"] == pytest.approx(
            np.mean([r.samples_used[twin.label] for r in records])
        )
        assert entry["settings"]["max_n"] == 8
        # The definition: the inner rule on the first n_used samples, where n_used is the first
        # round whose decision is settled (or max_n).
        inner = twin.inner
        stopping = twin.stopping(RATING)
        for record, sample_set in zip(records, pools, strict=True):
            n_used = record.samples_used[twin.label]
            options = dict(
                rule=inner.rule,
                weights=inner.weights,
                extractor=extractor_for(RATING),
                valid_range=RATING.valid_range,
            )
            for n in range(2, 9, 2):
                prefix = SampleSet(candidates=sample_set.candidates[:n])
                decision = decide(prefix, inner.metric, **options)
                p = settled_probability(
                    decision, inner.metric, stopping, valid_range=RATING.valid_range
                )
                if p >= stopping.confidence or n == 8:
                    break
            assert n_used == n
            assert record.predictions[twin.label] == decision.output
    assert not set(used) & set(results["curves"]["values"])  # a point, not a curve
    # mean@adaptive with a tolerance as wide as the scale stops at min_n on every item.
    loose = AdaptiveRule(Decoder.from_label("mean"), adaptive, tolerance=5.0)
    wide, _ = score_task(RATING, items, prompts, greedy, pools, decoders=[loose], curve_subsets=0)
    assert wide["samples_used"]["mean@adaptive"]["histogram"] == {"2": 4}


def test_adaptive_labels_tolerances_and_bad_settings():
    from metricwise.adaptive import Adaptive
    from metricwise.errors import InvalidParameterError
    from metricwise.evaluate.decoders import (
        AdaptiveRule,
        DecoderInput,
        default_tolerance,
        make_decoder,
    )

    twin = Decoder.from_label("mbr[token_f1]+model@adaptive")
    assert (
        twin.label == "mbr[token_f1]+model@adaptive" and twin.curve_label == "mbr[token_f1]+model"
    )
    assert twin.weighting == "model" and twin.uses_logprobs and twin.chooses_n
    assert twin == Decoder.from_label(twin.label)
    assert twin != AdaptiveRule(twin.inner, Adaptive(max_n=8))  # other stopping rule
    assert default_tolerance(RATING, "mean") == pytest.approx(0.1)  # 2% of 0..5
    unbounded = Task(
        name="u", description="", answer_type="number", metrics=("absolute_error",),
        extractor="number", template="{q}",
    )  # fmt: skip
    assert default_tolerance(unbounded, "median") == 0.5
    assert default_tolerance(RATING, "mode") == default_tolerance(QA, "mbr") == 0.0
    assert twin.settings(QA)["tolerance"] == 0.0
    assert AdaptiveRule(twin.inner, tolerance=0.2).settings(QA)["tolerance"] == 0.2
    # A variant that reads greedy keeps reading it in each round.
    with_greedy = Decoder.from_label("mbr[token_f1]+greedy@adaptive")
    x = DecoderInput(
        task=QA,
        greedy=Candidate("George Eliot", finish_reason="eos"),
        pool=pool(["George Eliot Smith", "Mary George Eliot", "Eliot George Ann", "George"]),
    )
    assert with_greedy.uses_greedy and with_greedy.predict(x) == "George Eliot"
    assert len(with_greedy.reads(x)) == with_greedy.samples_used(x) + 1
    for label in ("greedy@adaptive", "oracle@adaptive"):
        with pytest.raises(InvalidParameterError, match="wraps a Bayes rule"):
            Decoder.from_label(label)
    with pytest.raises(InvalidParameterError, match="rule@adaptive"):
        make_decoder("adaptive", "squared_error")
    with pytest.raises(InvalidParameterError, match="does not wrap"):
        Decoder.from_label("mean@greedy")
    with pytest.raises(InvalidParameterError, match="'tolerance'"):
        AdaptiveRule(twin.inner, tolerance=-1.0)


def test_every_bayes_rule_is_ranked_by_its_own_risk_and_the_baselines():
    items, prompts, greedy, pools = rating_fixture()
    results, records = score_task(RATING, items, prompts, greedy, pools, bootstrap_iters=100)
    rows = {(r["decoder"], r["metric"]): r for r in results["selective"]}
    mean = rows[("mean", "squared_error")]
    assert set(mean["rankings"]) == {"risk", "logprob", "spread"}
    # The mean's expected squared error is the samples' variance: the same ranking as spread.
    assert mean["rankings"]["risk"]["curve"] == mean["rankings"]["spread"]["curve"]
    risks = [r.decisions["mean"]["expected_loss"] for r in records]
    assert mean["full"] == pytest.approx(by(results, "mean", "squared_error")["value"])
    # The most confident 30% (ceil(0.3 * 4) = 2 items) are the two smallest risks.
    confident = np.argsort(risks)[:2]
    values = [r.scores["mean"]["squared_error"] for r in records]
    assert mean["rankings"]["risk"]["curve"][2][1] == pytest.approx(
        np.mean([values[i] for i in confident])
    )
    assert ("greedy", "squared_error") not in rows  # no risk, no ranking of its own


def test_a_utility_the_run_decides_with_but_does_not_score_is_a_ranking_too():
    """eval --mbr_metrics (a reward model, a judge, chrF): its answer's expected score ranks the
    items for every rule, beside greedy's log-prob and the spread."""
    items = [
        Item(id=str(i), fields={"q": q}, references=(a,), target=a)
        for i, (q, a) in enumerate([("capital of France", "Paris"), ("author", "George Eliot")])
    ]
    pools = [pool(["Paris", "paris", "Lyon", "Paris"]), pool(["Eliot", "Evans", "Mary", "Ann"])]
    greedy = [Candidate("Lyon", logp=-1.0, logq=0.0, finish_reason="eos")] * 2
    decoders = default_decoders(QA, extra_mbr_metrics=["chrf"])
    results, records = score_task(
        QA, items, ["p1", "p2"], greedy, pools, decoders=decoders, bootstrap_iters=50
    )
    mode = next(r for r in results["selective"] if r["decoder"] == "mode")
    assert set(mode["rankings"]) == {"risk", "logprob", "spread", "mbr[chrf]"}
    assert "mbr[chrf]" not in {r["decoder"] for r in results["selective"]}  # not scored by the task
    # Item 0's samples agree (chrF of the chosen answer near 100), item 1's do not: item 0 first.
    chrf_utility = [r.decisions["mbr[chrf]"]["expected_utility"] for r in records]
    assert chrf_utility[0] > chrf_utility[1]
    assert mode["rankings"]["mbr[chrf]"]["curve"][0][1] == pytest.approx(1.0)  # item 0 is right
