"""Properties every registered metric must have, checked across the whole registry."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metricwise import metrics
from metricwise.errors import InvalidParameterError, MetricwiseError
from metricwise.metrics import base as metrics_base

WORDS = [
    "the",
    "cat",
    "sat",
    "on",
    "a",
    "mat",
    "dog",
    "Paris",
    "paris",
    "é",
    "42",
    ",",
    "runs",
    "The",
]
texts = st.lists(st.sampled_from(WORDS), min_size=0, max_size=8).map(" ".join)
free_texts = st.text(max_size=30)
numbers = st.floats(min_value=-1e4, max_value=1e4, allow_nan=False, allow_infinity=False)


_BUILT: dict[str, Any] = {}


def built(name: str) -> Any:
    """The metric ``name``, built once per session; skipped when it cannot be built here (an
    optional extra is missing, or it needs a model that none ships: reward, moee). Collection
    reads what metrics declare (metrics.describe) and builds none, so no model loads then."""
    if name not in _BUILT:
        try:
            _BUILT[name] = metrics.get(name)
        except MetricwiseError as exc:
            _BUILT[name] = exc
    if isinstance(_BUILT[name], MetricwiseError):
        pytest.skip(f"{name} cannot be built here: {_BUILT[name]}")
    return _BUILT[name]


# The judge runs an LLM for every judgement (its contract is tested on a tiny model in
# tests/test_judge.py); hundreds of property examples through the default model would be slow.
ALL = [n for n in metrics.names() if n != "judge"]
TEXT = [n for n in ALL if metrics.describe(n).kind == "text"]
NUMBER = [n for n in ALL if metrics.describe(n).kind == "number"]
FAST_TEXT = [n for n in TEXT if n != "embedding_cosine"]


def strategy_for(name: str):
    return numbers if metrics.describe(name).kind == "number" else texts


def test_the_registry_has_the_documented_metrics():
    expected = {
        "exact_match",
        "token_f1",
        "squared_error",
        "absolute_error",
        "pinball",
        "bleu",
        "chrf",
        "rouge_l",
    }
    assert expected <= set(metrics.names())


@pytest.mark.parametrize("name", ALL)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_pairwise_equals_elementwise_score(name, data):
    metric = built(name)
    strategy = strategy_for(name)
    cands = data.draw(st.lists(strategy, min_size=1, max_size=5))
    refs = data.draw(st.lists(strategy, min_size=1, max_size=5))
    matrix = metric.pairwise(cands, refs)
    assert matrix.shape == (len(cands), len(refs))
    expected = np.array([[metric.score(c, r) for r in refs] for c in cands])
    np.testing.assert_allclose(matrix, expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", ALL)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_self_score_is_the_best_score(name, data):
    metric = built(name)
    strategy = strategy_for(name)
    x, y = data.draw(strategy), data.draw(strategy)
    if metric.higher_is_better:
        assert metric.score(x, x) >= metric.score(x, y) - 1e-9
    else:
        assert metric.score(x, x) <= metric.score(x, y) + 1e-9


@pytest.mark.parametrize("name", [n for n in ALL if metrics_base.METRICS[n].symmetric])
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_symmetric_metrics_are_symmetric(name, data):
    metric = built(name)
    strategy = strategy_for(name)
    x, y = data.draw(strategy), data.draw(strategy)
    assert metric.score(x, y) == pytest.approx(metric.score(y, x), rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("name", ALL)
@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_pairwise_rows_follow_the_candidate_order(name, data):
    metric = built(name)
    strategy = strategy_for(name)
    cands = data.draw(st.lists(strategy, min_size=1, max_size=6))
    refs = data.draw(st.lists(strategy, min_size=1, max_size=6))
    perm = data.draw(st.permutations(range(len(cands))))
    np.testing.assert_allclose(
        metric.pairwise([cands[i] for i in perm], refs),
        metric.pairwise(cands, refs)[list(perm)],
        rtol=1e-12,
        atol=1e-12,
    )


@pytest.mark.parametrize("name", FAST_TEXT)
@settings(max_examples=40, deadline=None)
@given(x=free_texts, y=free_texts)
def test_text_metrics_never_fail_on_arbitrary_unicode(name, x, y):
    value = built(name).score(x, y)
    assert np.isfinite(value)


@pytest.mark.parametrize("name", [n for n in TEXT if n != "bleu"])
def test_multiple_references_take_the_best(name):
    """BLEU is the exception: it pools references as sacrebleu does (tested against sacrebleu)."""
    metric = built(name)
    refs = ["the cat sat on the mat", "a dog runs", "Paris"]
    # The best reference is the highest utility or the lowest loss (a loss such as
    # CONTRIBUTING's length_gap takes the min, as Metric.score does).
    pick = max if metric.higher_is_better else min
    best = pick(metric.score("the cat sat", r) for r in refs)
    assert metric.score("the cat sat", refs) == pytest.approx(best)
    with pytest.raises(InvalidParameterError, match="empty list"):
        metric.score("x", [])


def test_registry_refuses_duplicates_and_unknown_arguments():
    with pytest.raises(InvalidParameterError, match="already registered"):
        metrics.register("token_f1")(lambda: None)
    with pytest.raises(InvalidParameterError, match="pinball"):
        metrics.get("pinball", tau=1.5)
    with pytest.raises(InvalidParameterError, match="Bad arguments"):
        metrics.get("squared_error", tau=0.2)


@pytest.mark.parametrize("name", ALL)
def test_a_metric_is_named_by_its_registration(name):
    """The name is written once (``@register``); results are signed with that name."""
    metric = built(name)
    assert metric.name == name
    assert metric.signature().startswith(name)


@pytest.fixture
def scratch_registry(monkeypatch):
    """A copy of the registry that the test may add to; the real one is left as it was."""
    metrics.names()  # discover the built-in metrics before copying
    monkeypatch.setattr(metrics_base.METRICS, "_entries", dict(metrics_base.METRICS._entries))


def test_a_third_party_metric_registers_with_the_decorator(scratch_registry):
    @metrics.register("length_gap_test")
    class LengthGap(metrics.Metric):
        higher_is_better = False

        def _score_one(self, pred, ref):
            return float(abs(len(pred) - len(ref)))

    assert LengthGap.name == "length_gap_test"
    metric = metrics.get("length_gap_test")
    assert metric.name == "length_gap_test" and metric.signature() == "length_gap_test"
    assert metric.score("abc", "a") == 2.0
    assert "length_gap_test" in metrics.names()


def test_register_refuses_a_class_that_names_itself_otherwise(scratch_registry):
    with pytest.raises(InvalidParameterError, match="sets name = 'other' but is registered as"):

        @metrics.register("named_test")
        class Named(metrics.Metric):
            name = "other"

    assert "named_test" not in metrics.names()
    # A subclass of a registered metric gets its own name, not its parent's.
    squad = importlib.import_module("metricwise.metrics.squad")

    @metrics.register("token_f1_subclass_test")
    class Sub(squad.TokenF1):
        pass

    assert Sub.name == "token_f1_subclass_test" and squad.TokenF1.name == "token_f1"
    with pytest.raises(InvalidParameterError, match="non-empty string"):
        metrics.register("")


def test_every_metric_module_is_discovered_without_a_list():
    package = Path(metrics.__file__).parent
    modules = {p.stem for p in package.glob("*.py")} - {"__init__", "base"}
    metrics.names()
    assert {m for m in modules if f"metricwise.metrics.{m}" not in sys.modules} == set()


def test_discovery_imports_no_heavy_dependency():
    # embedding_cosine needs torch, but only once the metric is built: listing the metrics and
    # using the others must work, and stay fast, without it.
    code = (
        "import sys; from metricwise import metrics; metrics.names(); metrics.get('bleu'); "
        "heavy = {'torch', 'transformers', 'sentence_transformers'} & set(sys.modules); "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_metric_kinds_use_the_tasks_answer_types():
    # A metric's kind and a task's answer_type are the same vocabulary ("text" or "number").
    assert {metrics.describe(n).kind for n in ALL} == {"text", "number"}
    assert set(NUMBER) >= {"squared_error", "absolute_error", "pinball"}
    assert metrics.resolve(abs, higher_is_better=False, numeric=True).kind == "number"


def test_a_metric_spec_carries_its_arguments():
    from metricwise.errors import InvalidParameterError
    from metricwise.metrics.base import parse_spec

    assert parse_spec("reward(model=/models/rm, batch_size=8)") == (
        "reward",
        {"model": "/models/rm", "batch_size": 8},
    )
    assert parse_spec("chrf") == ("chrf", {})
    pinball = metrics.get("pinball(tau=0.9)")
    assert pinball.score(1.0, 2.0) == pytest.approx(0.9)
    assert metrics.get("pinball(tau=0.9)", tau=0.1).score(1.0, 2.0) == pytest.approx(0.1)
    with pytest.raises(InvalidParameterError, match="key=value"):
        parse_spec("pinball(0.9)")
    with pytest.raises(InvalidParameterError, match="Bad arguments for metric 'chrf'"):
        metrics.get("chrf(colour=1)")


def test_a_metric_spec_argument_may_be_a_json_list_or_a_quoted_string_with_commas():
    from metricwise.metrics.base import parse_spec

    assert parse_spec('m(a=[" ", ","], b="x,y", c=2)') == (
        "m",
        {"a": [" ", ","], "b": "x,y", "c": 2},
    )
    assert parse_spec(r'm(a="\\",b=1)') == ("m", {"a": "\\", "b": 1})


def test_a_malformed_metric_spec_is_named_as_such():
    from metricwise.errors import InvalidParameterError

    for spec in ("chrf(", "chrf(word_order=2", "chrf)"):
        with pytest.raises(InvalidParameterError, match="malformed"):
            metrics.get(spec)
