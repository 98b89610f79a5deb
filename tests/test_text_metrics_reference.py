"""BLEU, chrF and ROUGE-L against their reference implementations, on real sentences.

References: ``sacrebleu.sentence_bleu`` / ``sentence_chrf`` (sacrebleu 2.6.0) and
``rouge_score.rouge_scorer.RougeScorer`` (rouge-score 0.1.2). Sentences come from STS-B dev
(paired and mismatched) and SQuAD v1.1 dev (questions and answers), plus hand-made edge cases.
Values are compared to 1e-9 absolute; in practice they agree bit for bit, because the
vectorised code performs the reference's floating-point operations in the same order.
"""

from __future__ import annotations

import csv
import json
import logging
import random
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metricwise import metrics
from metricwise.errors import InvalidParameterError, MissingDependencyError
from metricwise.metrics import overlap as overlap_module
from metricwise.metrics.bleu import tokenize_13a
from metricwise.metrics.chrf import words_for_chrf
from metricwise.metrics.overlap import clipped_overlap, ngram_entries
from metricwise.metrics.rouge import lcs_matrix, tokenize_rouge

sacrebleu = pytest.importorskip(
    "sacrebleu", reason="the [reference] extra (sacrebleu) is not installed"
)
rouge_scorer = pytest.importorskip(
    "rouge_score.rouge_scorer", reason="the [reference] extra (rouge-score) is not installed"
)

# sacrebleu warns once per BLEU object when effective_order is off; keep test output clean.
logging.getLogger("sacrebleu").setLevel(logging.ERROR)

ATOL = 1e-9
NAMES = ("bleu", "chrf", "rouge_l")

EDGE_CASES = [
    "",
    " ",
    "\t\n",
    "word",
    "Word.",
    ".",
    "?!...",
    "--- ,,, ;;",
    "the the the the the the the",
    "the cat the cat the cat",
    "the cat sat on the mat",
    "The Cat Sat On The Mat!",
    "Ünïcödé — «quotes» 東京 ☃ naïve café",
    "İstanbul straße \u212a Kelvin \u00a0non-breaking\u00a0space",
    "emoji 👍🏽 and zero\u200bwidth",
    "&amp; &quot;quoted&quot; &lt;tag&gt; <skipped> removed",
    "line one-\nline two\nline three",
    "1,000.50 dollars 3-4 times, e.g. 2.5x",
    "(parenthesised) 'quoted' \"double\" [bracketed] {braced}",
    "trailing spaces   ",
    "   leading spaces",
]


# -- data ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stsb_pairs(data_dir: Path) -> list[tuple[str, str]]:
    path = data_dir / "stsb" / "sts-dev.csv"
    if not path.is_file():
        pytest.skip(f"STS-B dev file not found at {path}")
    pairs = []
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
            if len(row) >= 7:
                pairs.append((row[5], row[6]))
    return random.Random(0).sample(pairs, 200)


@pytest.fixture(scope="module")
def squad_texts(data_dir: Path) -> list[str]:
    path = data_dir / "squad" / "dev-v1.1.json"
    if not path.is_file():
        pytest.skip(f"SQuAD v1.1 dev file not found at {path}")
    texts = []
    for article in json.loads(path.read_text(encoding="utf-8"))["data"]:
        for para in article["paragraphs"]:
            for qa in para["qas"]:
                texts.append(qa["question"])
                texts.extend(a["text"] for a in qa["answers"])
    return random.Random(1).sample(texts, 40)


@pytest.fixture(scope="module")
def long_text(stsb_pairs: list[tuple[str, str]]) -> str:
    """About 350 words: longer than one 64-bit LCS word several times over."""
    return " ".join(s for pair in stsb_pairs[:30] for s in pair)


@pytest.fixture(scope="module")
def mixed(stsb_pairs: list[tuple[str, str]], squad_texts: list[str]) -> list[str]:
    """Mismatched inputs: STS-B sentences, SQuAD questions and answers, edge cases, duplicates."""
    texts = [s for pair in stsb_pairs[:15] for s in pair] + squad_texts[:15] + EDGE_CASES[:8]
    return [*texts, texts[0], texts[20]]


# -- reference implementations --------------------------------------------------------------
def reference(name: str, **kwargs: object) -> Callable[[str, str], float]:
    """u(pred, ref) from the reference implementation, with metricwise's keyword names."""
    if name == "bleu":
        bleu = sacrebleu.BLEU(**kwargs) if kwargs else sacrebleu.BLEU(effective_order=True)
        return lambda p, r: bleu.sentence_score(p, [r]).score
    if name == "chrf":
        chrf = sacrebleu.CHRF(**kwargs)
        return lambda p, r: chrf.sentence_score(p, [r]).score
    scorer = rouge_scorer.RougeScorer(["rougeL"], **kwargs)
    return lambda p, r: scorer.score(r, p)["rougeL"].fmeasure


def reference_matrix(
    fn: Callable[[str, str], float], cands: list[str], refs: list[str]
) -> np.ndarray:
    return np.array([[fn(c, r) for r in refs] for c in cands], dtype=np.float64)


def test_the_module_level_sentence_functions_agree_with_the_reference_objects():
    hyp, ref = "The cat sat on the mat.", "The cat is sitting on a mat."
    assert metrics.get("bleu").score(hyp, ref) == pytest.approx(
        sacrebleu.sentence_bleu(hyp, [ref]).score, abs=ATOL
    )
    assert metrics.get("chrf").score(hyp, ref) == pytest.approx(
        sacrebleu.sentence_chrf(hyp, [ref]).score, abs=ATOL
    )
    expected = rouge_scorer.RougeScorer(["rougeL"]).score(ref, hyp)["rougeL"].fmeasure
    assert metrics.get("rouge_l").score(hyp, ref) == pytest.approx(expected, abs=ATOL)


# -- values against the references ----------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_paired_sentences_match_the_reference(name, stsb_pairs):
    metric, ref_fn = metrics.get(name), reference(name)
    hyps = [p[0] for p in stsb_pairs]
    refs = [p[1] for p in stsb_pairs]
    expected = np.array([ref_fn(h, r) for h, r in zip(hyps, refs, strict=True)])
    scores = np.array([metric.score(h, r) for h, r in zip(hyps, refs, strict=True)])
    np.testing.assert_allclose(scores, expected, rtol=0, atol=ATOL)
    # The same pairs through the matrix: its diagonal, and the reverse direction.
    np.testing.assert_allclose(np.diag(metric.pairwise(hyps, refs)), expected, rtol=0, atol=ATOL)
    reverse = np.array([ref_fn(r, h) for h, r in zip(hyps, refs, strict=True)])
    np.testing.assert_allclose(np.diag(metric.pairwise(refs, hyps)), reverse, rtol=0, atol=ATOL)
    assert np.ptp(expected) > 0  # the sample is not degenerate


@pytest.mark.parametrize("name", NAMES)
def test_pairwise_on_mismatched_texts_matches_the_reference(name, mixed):
    metric = metrics.get(name)
    expected = reference_matrix(reference(name), mixed, mixed)
    np.testing.assert_allclose(metric.pairwise(mixed, mixed), expected, rtol=0, atol=ATOL)


@pytest.mark.parametrize("name", NAMES)
def test_edge_cases_match_the_reference(name, stsb_pairs):
    texts = [*EDGE_CASES, stsb_pairs[0][0]]
    expected = reference_matrix(reference(name), texts, texts)
    metric = metrics.get(name)
    np.testing.assert_allclose(metric.pairwise(texts, texts), expected, rtol=0, atol=ATOL)
    scores = np.array([[metric.score(c, r) for r in texts] for c in texts])
    np.testing.assert_allclose(scores, expected, rtol=0, atol=ATOL)


@pytest.mark.parametrize("name", NAMES)
def test_very_long_inputs_match_the_reference(name, long_text, stsb_pairs):
    words = long_text.split()
    texts = [long_text, " ".join(reversed(words)), " ".join(words[::2]), stsb_pairs[1][0], ""]
    assert len(words) > 300
    metric = metrics.get(name)
    expected = reference_matrix(reference(name), texts, texts)
    np.testing.assert_allclose(metric.pairwise(texts, texts), expected, rtol=0, atol=ATOL)


@pytest.mark.parametrize("name", NAMES)
def test_repeated_words_are_clipped_like_the_reference(name):
    texts = ["the the the the the the the", "the cat", "the the cat cat", "cat the the the", "the"]
    expected = reference_matrix(reference(name), texts, texts)
    np.testing.assert_allclose(
        metrics.get(name).pairwise(texts, texts), expected, rtol=0, atol=ATOL
    )


# Adversarial fragments for the tokenizers: entities, <skipped>, hyphenation, digits with
# periods/commas/dashes, quotes, case, non-ASCII letters that lower-case to ASCII.
FRAGMENTS = [
    "a",
    "b",
    "the",
    "The",
    " ",
    "  ",
    ".",
    ",",
    "-",
    "1",
    "2",
    "&amp;",
    "&quot;",
    "<skipped>",
    "-\n",
    "\n",
    "\t",
    "'",
    '"',
    "(",
    ")",
    "é",
    "東",
    "İ",
    "\u212a",
    "ß",
    " . ",
]
fragment_texts = st.lists(st.sampled_from(FRAGMENTS), max_size=14).map("".join)


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=60, deadline=None)
@given(
    cands=st.lists(fragment_texts, min_size=1, max_size=4),
    refs=st.lists(fragment_texts, min_size=1, max_size=4),
)
def test_adversarial_fragments_match_the_reference(name, cands, refs):
    expected = reference_matrix(reference(name), cands, refs)
    np.testing.assert_allclose(metrics.get(name).pairwise(cands, refs), expected, rtol=0, atol=ATOL)


# -- settings against the references --------------------------------------------------------
BLEU_SETTINGS = [
    ({"tokenize": "none"}, {"tokenize": "none", "effective_order": True}),
    ({"tokenize": "char"}, {"tokenize": "char", "effective_order": True}),
    ({"lowercase": True}, {"lowercase": True, "effective_order": True}),
    ({"smooth_method": "floor"}, {"smooth_method": "floor", "effective_order": True}),
    (
        {"smooth_method": "floor", "smooth_value": 0.5},
        {"smooth_method": "floor", "smooth_value": 0.5, "effective_order": True},
    ),
    ({"smooth_method": "add-k"}, {"smooth_method": "add-k", "effective_order": True}),
    (
        {"smooth_method": "add-k", "smooth_value": 3},
        {"smooth_method": "add-k", "smooth_value": 3, "effective_order": True},
    ),
    ({"smooth_method": "none"}, {"smooth_method": "none", "effective_order": True}),
    ({"effective_order": False}, {"effective_order": False}),
    (
        {"smooth_method": "none", "effective_order": False},
        {"smooth_method": "none", "effective_order": False},
    ),
    ({"max_ngram_order": 2}, {"max_ngram_order": 2, "effective_order": True}),
    (
        {"max_ngram_order": 6, "smooth_method": "floor"},
        {"max_ngram_order": 6, "smooth_method": "floor", "effective_order": True},
    ),
]
CHRF_SETTINGS = [
    {"word_order": 2},  # chrF++
    {"word_order": 1, "char_order": 4},
    {"char_order": 0, "word_order": 2},
    {"beta": 1},
    {"beta": 3, "word_order": 2},
    {"lowercase": True},
    {"whitespace": True},
    {"eps_smoothing": True},
    {"eps_smoothing": True, "word_order": 2},
]


@pytest.mark.parametrize(("ours", "theirs"), BLEU_SETTINGS, ids=[str(s[0]) for s in BLEU_SETTINGS])
def test_bleu_settings_match_sacrebleu(ours, theirs, mixed, stsb_pairs):
    texts = mixed[:24] + [p[0] for p in stsb_pairs[100:110]]
    expected = reference_matrix(reference("bleu", **theirs), texts, texts)
    np.testing.assert_allclose(
        metrics.get("bleu", **ours).pairwise(texts, texts), expected, rtol=0, atol=ATOL
    )


@pytest.mark.parametrize("settings", CHRF_SETTINGS, ids=str)
def test_chrf_settings_match_sacrebleu(settings, mixed):
    texts = mixed[:30]
    expected = reference_matrix(reference("chrf", **settings), texts, texts)
    np.testing.assert_allclose(
        metrics.get("chrf", **settings).pairwise(texts, texts), expected, rtol=0, atol=ATOL
    )


def test_chrf_plus_plus_matches_sentence_chrf_with_word_order_2():
    hyp, ref = "The (quick) brown fox, it jumps!", "A quick brown fox jumps."
    expected = sacrebleu.sentence_chrf(hyp, [ref], word_order=2).score
    assert metrics.get("chrf", word_order=2).score(hyp, ref) == pytest.approx(expected, abs=ATOL)


def test_rouge_l_with_the_stemmer_matches_rouge_score(mixed):
    pytest.importorskip("nltk", reason="nltk is not installed")
    texts = [*mixed[:25], "running runs runner ran", "He was running; they run quickly."]
    expected = reference_matrix(reference("rouge_l", use_stemmer=True), texts, texts)
    np.testing.assert_allclose(
        metrics.get("rouge_l", use_stemmer=True).pairwise(texts, texts), expected, rtol=0, atol=ATOL
    )


# -- multiple references ----------------------------------------------------------------------
def test_bleu_multi_reference_score_matches_sacrebleu(stsb_pairs):
    bleu = metrics.get("bleu")
    for i in range(0, 60, 3):
        hyp = stsb_pairs[i][0]
        refs = [stsb_pairs[i][1], stsb_pairs[i + 1][1], stsb_pairs[i + 2][0]]
        expected = sacrebleu.sentence_bleu(hyp, refs).score
        assert bleu.multi_reference_score(hyp, refs) == pytest.approx(expected, abs=ATOL)
        assert bleu.score(hyp, refs) == pytest.approx(expected, abs=ATOL)
    # The closest reference length decides the brevity penalty; on ties the shorter one.
    assert bleu.multi_reference_score("a b c d", ["a b c d e f", "a b"]) == pytest.approx(
        sacrebleu.sentence_bleu("a b c d", ["a b c d e f", "a b"]).score, abs=ATOL
    )
    with pytest.raises(
        InvalidParameterError, match=r"'refs' parameter of bleu\.multi_reference_score"
    ):
        bleu.multi_reference_score("x", [])


def test_several_references_give_the_best_one_as_chrf_and_rouge_score_do(stsb_pairs):
    hyp = stsb_pairs[3][0]
    refs = [stsb_pairs[3][1], stsb_pairs[4][1], hyp.upper()]
    assert metrics.get("chrf").score(hyp, refs) == pytest.approx(
        sacrebleu.sentence_chrf(hyp, refs).score, abs=ATOL
    )
    expected = rouge_scorer.RougeScorer(["rougeL"]).score_multi(refs, hyp)["rougeL"].fmeasure
    assert metrics.get("rouge_l").score(hyp, refs) == pytest.approx(expected, abs=ATOL)


# -- the matrix contract ----------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_pairwise_equals_elementwise_score_and_follows_candidate_order(name, mixed):
    metric = metrics.get(name)
    cands, refs = mixed[:20], mixed[10:]
    matrix = metric.pairwise(cands, refs)
    assert matrix.shape == (len(cands), len(refs))
    assert matrix.dtype == np.float64
    elementwise = np.array([[metric.score(c, r) for r in refs] for c in cands])
    np.testing.assert_array_equal(matrix, elementwise)
    perm = np.random.default_rng(0).permutation(len(cands))
    np.testing.assert_array_equal(metric.pairwise([cands[i] for i in perm], refs), matrix[perm])
    perm_r = np.random.default_rng(1).permutation(len(refs))
    np.testing.assert_array_equal(
        metric.pairwise(cands, [refs[j] for j in perm_r]), matrix[:, perm_r]
    )


@pytest.mark.parametrize("name", NAMES)
def test_pairwise_handles_empty_sides_and_duplicates(name):
    metric = metrics.get(name)
    assert metric.pairwise([], ["a"]).shape == (0, 1)
    assert metric.pairwise(["a"], []).shape == (1, 0)
    m = metric.pairwise(["a b", "a b", "c"], ["a b", "c", "a b"])
    np.testing.assert_array_equal(m[0], m[1])
    np.testing.assert_array_equal(m[:, 0], m[:, 2])


# -- tokenizers -------------------------------------------------------------------------------
def test_tokenize_13a_matches_sacrebleu(stsb_pairs, squad_texts):
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    theirs = Tokenizer13a()
    ascii_soup = "".join(chr(i) for i in range(32, 127))
    texts = [
        *EDGE_CASES,
        ascii_soup,
        ascii_soup[::-1],
        "a.b,c 1.5 1,5 .5 5. -5 5- a-b 5-b",
        *squad_texts,
    ]
    texts += [s for pair in stsb_pairs for s in pair]
    for text in texts:
        assert tokenize_13a(text) == theirs(text).split(), text


def test_chrf_word_splitting_matches_sacrebleu():
    theirs = sacrebleu.CHRF(word_order=2)
    for text in [*EDGE_CASES, "(hi) 'x' a. .a ..", "word, word; (word)"]:
        assert words_for_chrf(text) == theirs._remove_punctuation(text), text


def test_rouge_tokenizer_matches_rouge_score():
    from rouge_score import tokenize as rouge_tokenize

    for text in [*EDGE_CASES, "The U.S. isn't 2x-bigger!", "ABC_def ghi-JKL"]:
        assert tokenize_rouge(text) == rouge_tokenize.tokenize(text, None), text


# -- the LCS kernel ---------------------------------------------------------------------------
def _lcs_dp(a: list[int], b: list[int]) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def test_bit_parallel_lcs_matches_the_dynamic_programme():
    rng = np.random.default_rng(0)
    lengths = [0, 1, 2, 63, 64, 65, 128, 129, 200]
    seqs = [rng.integers(0, v, size=n) for n in lengths for v in (2, 7)]
    seqs.append(np.arange(150) % 5)
    expected = np.array([[_lcs_dp(list(a), list(b)) for b in seqs] for a in seqs])
    np.testing.assert_array_equal(lcs_matrix(seqs, seqs), expected)
    np.testing.assert_array_equal(lcs_matrix(seqs[:5], seqs), expected[:5])
    assert lcs_matrix([], seqs).shape == (0, len(seqs))


def test_clipped_overlap_with_heavily_repeated_items_matches_counter_intersection():
    # Counts up to 40: many indicator levels per item (and, below, the outer-minimum path).
    rng = np.random.default_rng(2)
    items = list("abcdefgh")
    bags = [
        Counter({x: int(rng.integers(1, 30)) for x in rng.choice(items, size=4, replace=False)})
        for _ in range(12)
    ]
    bags += [Counter(), Counter({"z": 40}), Counter({"z": 3, "a": 1})]
    expected = np.array([[sum((a & b).values()) for b in bags] for a in bags], dtype=np.float64)
    np.testing.assert_array_equal(clipped_overlap(bags, bags), expected)
    np.testing.assert_array_equal(clipped_overlap(bags[:3], bags), expected[:3])


@pytest.mark.parametrize(
    ("column_cost", "max_levels"),
    [(0.0, 256), (1e9, 256), (1.0 / 1024, 256), (0.0, 2), (1.0 / 64, 3)],
    ids=["all-dense", "all-sparse", "default", "dense-and-deep", "mixed"],
)
def test_clipped_overlap_is_exact_whichever_path_each_item_takes(
    monkeypatch, column_cost, max_levels
):
    # Every item may be scattered as pairs, multiplied as level indicators or added as an outer
    # minimum; all three are exact, so forcing each one must give the Counter intersection.
    from metricwise.metrics import overlap

    monkeypatch.setattr(overlap, "_COLUMN_COST_IN_PAIRS", column_cost)
    monkeypatch.setattr(overlap, "_MAX_LEVELS", max_levels)
    monkeypatch.setattr(overlap, "_MAX_PAIRS", 7)  # many scatter batches
    monkeypatch.setattr(overlap, "_MAX_BLOCK_ELEMENTS", 40)  # many column chunks
    rng = np.random.default_rng(5)
    vocabulary = [*"abcdefghij", ("w", 1), ("w", 2), 3]
    bags = [
        Counter(
            {
                vocabulary[k]: int(rng.integers(1, 6 if k % 3 else 2))
                for k in rng.choice(len(vocabulary), size=int(rng.integers(0, 7)), replace=False)
            }
        )
        for _ in range(25)
    ]
    others = [*bags[10:18], Counter({"zzz": 2}), Counter({"a": 9, "b": 1})]
    expected = np.array([[sum((a & b).values()) for b in bags] for a in bags], dtype=np.float64)
    np.testing.assert_array_equal(clipped_overlap(bags, bags), expected)
    cross = np.array([[sum((a & b).values()) for b in others] for a in bags], dtype=np.float64)
    np.testing.assert_array_equal(clipped_overlap(bags, others), cross)
    np.testing.assert_array_equal(clipped_overlap(others, bags), cross.T)
    assert clipped_overlap([], bags).shape == (0, len(bags))
    assert clipped_overlap([Counter()], [Counter()]).tolist() == [[0.0]]


@given(
    st.lists(st.text(alphabet="ab c\u00e9\U0001f600\ud800", max_size=14), min_size=1, max_size=6)
)
@settings(max_examples=60, deadline=None)
def test_ngram_entries_number_ngrams_as_counter_bags_do(texts):
    # Same n-gram -> same number and different n-grams -> different numbers: the overlaps of
    # all pairs, each text's counts and the number of distinct n-grams are the Counters'.
    lengths = np.array([len(t) for t in texts])
    codes = np.frombuffer("".join(texts).encode("utf-32-le", "surrogatepass"), dtype="<u4")
    for n, entries in enumerate(ngram_entries(codes.astype(np.int64), lengths, 5), start=1):
        bags = [Counter(t[i : i + n] for i in range(len(t) - n + 1)) for t in texts]
        as_bags = [
            Counter(
                dict(
                    zip(
                        entries.cols[entries.rows == r].tolist(),
                        entries.vals[entries.rows == r].tolist(),
                        strict=True,
                    )
                )
            )
            for r in range(len(texts))
        ]
        assert [sorted(b.values()) for b in as_bags] == [sorted(b.values()) for b in bags]
        assert len(set(entries.cols.tolist())) == len(set().union(*bags))
        overlap = [[sum((a & b).values()) for b in as_bags] for a in as_bags]
        assert overlap == [[sum((a & b).values()) for b in bags] for a in bags]


def test_chrf_statistics_of_a_subset_compare_like_the_strings():
    chrf = metrics.get("chrf", word_order=2)
    texts = ["The cat sat.", "the cat  sat!", "A dog, (barking)", "", "cat", "\ud800x", "sat on"]
    stats = chrf.statistics(texts)
    rows, cols = [4, 0, 2], [1, 5, 3, 6]
    got = chrf.pairwise_statistics(stats.take(rows), stats.take(cols))
    expected = chrf.pairwise([texts[i] for i in rows], [texts[j] for j in cols])
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(
        chrf.pairwise_statistics(stats, stats), chrf.pairwise(texts, texts)
    )
    assert chrf.score("\ud800x", "\ud800x") == 100.0


@pytest.mark.parametrize(
    ("name", "kwargs"), [("bleu", {}), ("bleu", {"tokenize": "char"}), ("token_f1", {})]
)
def test_token_statistics_of_a_subset_compare_like_the_strings(name, kwargs):
    metric = metrics.get(name, **kwargs)
    texts = [
        "The cat sat.",
        "the cat  sat!",
        "A dog, (barking)",
        "",
        "cat",
        "The the the",
        "sat on",
    ]
    stats = metric.statistics(texts)
    rows, cols = [4, 0, 2], [1, 5, 3, 6]
    got = metric.pairwise_statistics(stats.take(rows), stats.take(cols))
    expected = np.array([[metric.score(texts[i], texts[j]) for j in cols] for i in rows])
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(
        metric.pairwise_statistics(stats, stats), metric.pairwise(texts, texts)
    )


# -- metric attributes and parameters ---------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_metrics_are_registered_mbr_utilities(name):
    metric = metrics.get(name)
    assert metric.name == name
    assert metric.higher_is_better is True
    assert metric.bayes_rule is None
    assert metric.kind == "text"
    assert metric.signature().startswith(name + "(")


def test_signatures_record_the_settings():
    assert metrics.get("bleu").signature() == "bleu(tok=13a,case=mixed,smooth=exp,order=4,eff=yes)"
    assert "smooth=floor[0.10]" in metrics.get("bleu", smooth_method="floor").signature()
    assert (
        metrics.get("chrf", word_order=2).signature()
        == "chrf(nc=6,nw=2,beta=2,case=mixed,space=no,eff=yes)"
    )
    assert metrics.get("rouge_l").signature() == "rouge_l(stemmer=no)"
    assert metrics.get("bleu").symmetric is False
    assert metrics.get("chrf").symmetric is False


@pytest.mark.parametrize(
    ("name", "kwargs", "match"),
    [
        ("bleu", {"tokenize": "intl"}, "The 'tokenize' parameter of bleu must be one of"),
        ("bleu", {"smooth_method": "laplace"}, "The 'smooth_method' parameter of bleu"),
        ("bleu", {"smooth_value": -1}, "The 'smooth_value' parameter of bleu"),
        (
            "bleu",
            {"max_ngram_order": 0},
            "The 'max_ngram_order' parameter of bleu must be an int >= 1. Got 0 instead.",
        ),
        ("bleu", {"lowercase": "yes"}, "The 'lowercase' parameter of bleu must be True or False"),
        (
            "chrf",
            {"char_order": -1},
            "The 'char_order' parameter of chrf must be an int >= 0. Got -1 instead.",
        ),
        ("chrf", {"char_order": 0, "word_order": 0}, "must not both be 0"),
        ("chrf", {"beta": -2}, "The 'beta' parameter of chrf"),
        ("chrf", {"whitespace": 1}, "The 'whitespace' parameter of chrf"),
        ("rouge_l", {"use_stemmer": "porter"}, "The 'use_stemmer' parameter of rouge_l"),
    ],
)
def test_bad_parameters_raise_clear_errors(name, kwargs, match):
    with pytest.raises(InvalidParameterError, match=match.replace("(", r"\(").replace(")", r"\)")):
        metrics.get(name, **kwargs)


@pytest.mark.parametrize("name", NAMES)
def test_non_string_inputs_raise(name):
    with pytest.raises(InvalidParameterError, match=r"must be strings\. Got 3 \(int\) instead"):
        metrics.get(name).pairwise(["a"], [3])


def test_the_stemmer_without_nltk_raises_missing_dependency(monkeypatch):
    monkeypatch.setitem(sys.modules, "nltk.stem", None)
    with pytest.raises(MissingDependencyError, match="nltk"):
        metrics.get("rouge_l", use_stemmer=True)


def test_statistics_are_the_same_when_numbers_travel_unpacked(monkeypatch):
    # ngram_entries sorts n-grams packed with their positions, and from_entries gathers
    # columns packed with counts, when both fit in one int64; otherwise an argsort and plain
    # gathers. The two paths must give the same statistics.
    texts = ["The cat sat.", "the cat  sat!", "A dog, (barking)", "", "cat", "\ud800x", "sat on"]
    for metric in (metrics.get("chrf", word_order=2), metrics.get("bleu")):
        packed = metric.statistics(texts)
        monkeypatch.setattr(overlap_module, "_PACKED_BITS", 0)
        unpacked = metric.statistics(texts)
        monkeypatch.undo()
        for got, expected in zip(unpacked.entries, packed.entries, strict=True):
            np.testing.assert_array_equal(got, expected)
        np.testing.assert_array_equal(unpacked.item_order, packed.item_order)
        np.testing.assert_array_equal(unpacked.starts, packed.starts)
