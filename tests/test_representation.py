"""Matrix Nuclear-Norm, Matrix Entropy and the nuclear norm against independent implementations,
their invariances and extremes, exact batched extraction, corpus scores, data loading and the CLI.

The reference implementations below are the authors' per-text definitions written plainly
(Matrix Entropy from the d x d matrix, as in their code); the library computes entropy from the
smaller Gram side and must give the same values.
"""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest

from metricwise.errors import InvalidParameterError, UnknownNameError
from metricwise.representation import (
    encode_responses,
    encode_texts,
    gaussian_baseline,
    load_texts,
    matrix_entropy,
    matrix_nuclear_norm,
    normalize_representation,
    nuclear_norm,
    paired_difference,
    representation_metrics,
    score_matrices,
)

REL = 1e-6


# -- independent reference implementations (the authors' definitions, written plainly) -----------
def ref_normalize(R: np.ndarray) -> np.ndarray:
    R = np.asarray(R, dtype=np.float64)
    R = R - R.mean(axis=0)  # centre every column over tokens
    return R / np.linalg.norm(R, axis=1, keepdims=True)  # unit-norm rows


def ref_mnn(R: np.ndarray) -> float:
    Z = ref_normalize(R)
    L, d = Z.shape
    column_norms = sorted((math.sqrt(float(np.sum(Z[:, j] ** 2))) for j in range(d)), reverse=True)
    return sum(column_norms[: min(L, d)]) / L


def ref_entropy(R: np.ndarray) -> float:
    Z = ref_normalize(R)
    Z = Z / np.linalg.norm(Z, axis=1, keepdims=True)
    L, d = Z.shape
    A = Z.T @ Z / L  # d x d, as the authors
    eigenvalues = np.linalg.eigh(A)[0] / np.trace(A)
    terms = [-lam * math.log(lam) for lam in eigenvalues if lam > 0]
    return sum(terms) / math.log(d)


def ref_nuclear(R: np.ndarray) -> float:
    Z = ref_normalize(R)
    return float(np.linalg.norm(Z, ord="nuc")) / Z.shape[0]


REFERENCES = {
    "mnn": (matrix_nuclear_norm, ref_mnn),
    "entropy": (matrix_entropy, ref_entropy),
    "nuclear": (nuclear_norm, ref_nuclear),
}


def random_matrix(L: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # anisotropic, with an offset: closer to real hidden states than an isotropic Gaussian
    return rng.standard_normal((L, d)) * rng.uniform(0.1, 3.0, size=d) + rng.standard_normal(d)


SHAPES = [(7, 12), (20, 5), (9, 9), (2, 6), (33, 64)]


# -- values ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(REFERENCES))
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_reference_implementation(name, shape):
    ours, ref = REFERENCES[name]
    R = random_matrix(*shape, seed=sum(shape))
    assert ours(R) == pytest.approx(ref(R), rel=REL)


def test_hand_computed_values():
    # R = [[1,0],[0,1],[0,0]]: centred rows (2,-1)/3, (-1,2)/3, (-1,-1)/3. Column norms of Z are
    # both sqrt(1.5); Z^T Z = [[1.5,-0.3],[-0.3,1.5]], eigenvalues 1.8 and 1.2.
    R = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    assert matrix_nuclear_norm(R) == pytest.approx(2 * math.sqrt(1.5) / 3, rel=REL)
    assert matrix_entropy(R) == pytest.approx(
        -(0.6 * math.log(0.6) + 0.4 * math.log(0.4)) / math.log(2), rel=REL
    )
    assert nuclear_norm(R) == pytest.approx((math.sqrt(1.8) + math.sqrt(1.2)) / 3, rel=REL)


@pytest.mark.parametrize("shape", [(5, 40), (40, 5), (8, 8)])
def test_entropy_gram_side_equals_covariance_side(shape):
    R = random_matrix(*shape, seed=3)
    values = {side: matrix_entropy(R, side=side) for side in ("auto", "gram", "covariance")}
    assert values["gram"] == pytest.approx(values["covariance"], rel=1e-10)
    assert values["auto"] == pytest.approx(values["covariance"], rel=1e-10)


def test_representation_metrics_equals_single_functions():
    R = random_matrix(11, 17, seed=5)
    both = representation_metrics(R, "mnn,entropy,nuclear")
    assert list(both) == ["mnn", "entropy", "nuclear"]
    for name, (fn, _) in REFERENCES.items():
        assert both[name] == pytest.approx(fn(R), rel=1e-12)
    assert list(representation_metrics(R, ["matrix_entropy", "mnn"])) == ["entropy", "mnn"]


def test_precision_is_independent_of_input_dtype():
    R = random_matrix(16, 24, seed=6)
    R16 = R.astype(np.float16)
    # float16 input is computed in float64: same as the float64 computation on the rounded values
    assert matrix_entropy(R16) == pytest.approx(ref_entropy(R16.astype(np.float64)), rel=REL)
    assert matrix_nuclear_norm(R, dtype="float32") == pytest.approx(ref_mnn(R), rel=1e-5)
    assert matrix_entropy(R, dtype="float32") == pytest.approx(ref_entropy(R), rel=1e-4)
    assert nuclear_norm(R.tolist()) == pytest.approx(ref_nuclear(R), rel=REL)  # nested lists work


@pytest.mark.parametrize(
    "torch_kernels", [False, True], ids=["cpu-tensor-via-numpy", "torch-kernels"]
)
def test_torch_input_matches_numpy(torch_kernels, monkeypatch):
    torch = pytest.importorskip("torch")
    from metricwise.representation import mnn as metrics_module

    # the torch code path (used for GPU tensors) is exercised on CPU by this switch
    monkeypatch.setattr(metrics_module, "_TORCH_ON_CPU", torch_kernels)
    for shape in [(10, 30), (30, 10)]:
        R = random_matrix(*shape, seed=7)
        for name, (fn, ref) in REFERENCES.items():
            for dtype in (torch.float32, torch.bfloat16):
                T = torch.tensor(R, dtype=dtype)
                assert fn(T) == pytest.approx(ref(T.to(torch.float64).numpy()), rel=REL), (
                    name,
                    dtype,
                )
                assert fn(T, dtype="float32") == pytest.approx(
                    ref(T.to(torch.float64).numpy()), rel=1e-4
                ), (name, dtype)
    R = random_matrix(10, 30, seed=7)
    Z = normalize_representation(torch.tensor(R))
    if torch_kernels:
        assert isinstance(Z, torch.Tensor) and Z.dtype == torch.float64
    np.testing.assert_allclose(np.asarray(Z), ref_normalize(R), rtol=1e-12)
    with pytest.raises(InvalidParameterError, match="equal to the mean"):
        matrix_nuclear_norm(torch.ones(3, 4))


# -- invariances ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(REFERENCES))
def test_invariances(name):
    fn = REFERENCES[name][0]
    R = random_matrix(12, 20, seed=8)
    value = fn(R)
    rng = np.random.default_rng(0)
    assert fn(R[rng.permutation(12)]) == pytest.approx(value, rel=1e-10)  # row (token) order
    assert fn(R[:, rng.permutation(20)]) == pytest.approx(value, rel=1e-10)  # column order
    assert fn(R + rng.standard_normal(20) * 5) == pytest.approx(
        value, rel=1e-9
    )  # a shift of every token
    assert fn(R * 7.5) == pytest.approx(value, rel=1e-10)  # global scale
    # scaling a row: after centring, only each row's direction matters
    centred = R - R.mean(axis=0)
    scaled = centred * rng.uniform(0.1, 10.0, size=(12, 1))
    assert fn(scaled, center=False) == pytest.approx(value, rel=1e-10)
    before = scaled.copy()
    fn(scaled), fn(scaled, center=False)
    np.testing.assert_array_equal(scaled, before)  # the caller's matrix is never modified


def test_rotation_invariance_holds_for_entropy_and_nuclear_norm_not_mnn():
    R = random_matrix(12, 20, seed=9)
    Q, _ = np.linalg.qr(np.random.default_rng(1).standard_normal((20, 20)))
    assert matrix_entropy(R @ Q) == pytest.approx(matrix_entropy(R), rel=1e-9)
    assert nuclear_norm(R @ Q) == pytest.approx(nuclear_norm(R), rel=1e-9)
    # the column-norm proxy depends on the basis: a documented property, not a bug
    assert abs(matrix_nuclear_norm(R @ Q) - matrix_nuclear_norm(R)) > 1e-4


# -- extremes -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("L,d", [(6, 3), (6, 10), (8, 8)])
def test_rank_one_gives_the_minimum(L, d):
    u = np.random.default_rng(2).standard_normal(d)
    R = np.outer(np.arange(1.0, L + 1), u) + 3.0  # every centred token along +-u
    assert matrix_entropy(R) == pytest.approx(0.0, abs=1e-12)
    assert nuclear_norm(R) == pytest.approx(1 / math.sqrt(L), rel=REL)
    expected_mnn = (
        np.sort(np.abs(u))[::-1][: min(L, d)].sum() / np.linalg.norm(u) * math.sqrt(L) / L
    )
    assert matrix_nuclear_norm(R) == pytest.approx(expected_mnn, rel=REL)
    R1 = np.outer(
        np.arange(1.0, L + 1), np.eye(d)[0]
    )  # one-hot direction: MNN equals the nuclear norm
    assert matrix_nuclear_norm(R1) == pytest.approx(1 / math.sqrt(L), rel=REL)


@pytest.mark.parametrize("d", [2, 5, 16])
def test_tokens_spread_over_all_directions_give_the_maximum(d):
    R = np.vstack(
        [np.eye(d), -np.eye(d)]
    )  # identity-like: 2d tokens, mean 0, orthogonal directions
    assert matrix_entropy(R) == pytest.approx(1.0, rel=REL)
    assert matrix_nuclear_norm(R) == pytest.approx(1 / math.sqrt(2), rel=REL)
    assert nuclear_norm(R) == pytest.approx(1 / math.sqrt(2), rel=REL)
    # and nothing exceeds the bounds on random matrices
    for seed in range(5):
        X = random_matrix(2 * d, d, seed=seed)
        assert 0 <= matrix_entropy(X) <= 1 + 1e-12
        assert 1 / math.sqrt(2 * d) - 1e-12 <= nuclear_norm(X) <= math.sqrt(0.5) + 1e-12
        assert (
            nuclear_norm(X) <= matrix_nuclear_norm(X) + 1e-12
        )  # L >= d: the proxy is an upper bound


def test_two_tokens_give_entropy_zero():
    R = random_matrix(2, 10, seed=1)
    assert matrix_entropy(R) == pytest.approx(0.0, abs=1e-12)


# -- errors --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "R,match",
    [
        (np.zeros((0, 8)), "at least one row"),
        (np.ones((1, 8)), "at least 2 rows"),
        (np.ones(8), "2-D"),
        (np.ones((2, 3, 4)), "2-D"),
        (np.array([[1.0, np.nan], [0.0, 1.0]]), "finite"),
        (np.array([[1.0, 2.0], [1.0, 2.0], [1.0, 2.0]]), "equal to the mean"),
        (np.array([["a", "b"], ["c", "d"]]), "real-valued"),
        (np.zeros((3, 0)), "at least one column"),
    ],
)
def test_clear_errors(R, match):
    for fn in (matrix_nuclear_norm, matrix_entropy, nuclear_norm):
        with pytest.raises(InvalidParameterError, match=match):
            fn(R)


def test_parameter_errors():
    R = random_matrix(4, 4)
    with pytest.raises(InvalidParameterError, match="'dtype' parameter of matrix_entropy"):
        matrix_entropy(R, dtype="float16")
    with pytest.raises(InvalidParameterError, match="'side'"):
        matrix_entropy(R, side="left")
    with pytest.raises(InvalidParameterError, match="at least 2 columns"):
        matrix_entropy(np.arange(4.0)[:, None])
    with pytest.raises(UnknownNameError, match="Did you mean 'entropy'"):
        representation_metrics(R, "entropi")
    with pytest.raises(InvalidParameterError, match="n_rows"):
        gaussian_baseline("mnn", 1, 8)


# -- the Gaussian baseline -------------------------------------------------------------------------------
def test_gaussian_baseline_is_deterministic_and_follows_the_width_confound():
    assert gaussian_baseline("mnn", 64, 1024, seed=3) == gaussian_baseline("mnn", 64, 1024, seed=3)
    assert gaussian_baseline("mnn", 64, 1024, seed=3) != gaussian_baseline("mnn", 64, 1024, seed=4)
    assert gaussian_baseline("mnn", 64, 1024) == pytest.approx(math.sqrt(64 / 1024), rel=0.25)
    assert gaussian_baseline("mnn", 1024, 256) == pytest.approx(math.sqrt(256 / 1024), rel=0.05)
    assert gaussian_baseline("entropy", 64, 1024) == pytest.approx(
        math.log(64) / math.log(1024), rel=0.05
    )
    # wider models get lower raw values on the same length with nothing learned
    assert gaussian_baseline("mnn", 64, 2048) < gaussian_baseline("mnn", 64, 512)
    assert gaussian_baseline("entropy", 64, 2048) < gaussian_baseline("entropy", 64, 512)


# -- corpus scores on matrices ----------------------------------------------------------------------------
def test_score_matrices_means_skips_and_baseline():
    mats = [random_matrix(L, 16, seed=L) for L in (5, 9, 12, 7)]
    mats.insert(1, np.zeros((0, 16)))
    mats.insert(3, random_matrix(1, 16))
    mats.append(np.ones((4, 16)))  # degenerate: every token identical
    score = score_matrices(mats, n_bootstrap=200, seed=1)
    assert score.n_texts == 7 and score.n_scored == 4
    assert score.skipped == {"empty": 1, "too_short": 1, "degenerate": 1}
    assert score.tokens == 5 + 9 + 12 + 7 and score.hidden_size == 16
    good = [m for m in mats if m.shape[0] >= 2 and np.ptp(m, axis=0).any()]
    for name, (_, ref) in REFERENCES.items():
        s = score.metrics[name]
        assert s.value == pytest.approx(np.mean([ref(m) for m in good]), rel=REL)
        assert s.ci_low <= s.value <= s.ci_high
        ratios = [ref(m) / gaussian_baseline(name, m.shape[0], 16, seed=1) for m in good]
        assert s.ratio == pytest.approx(np.mean(ratios), rel=REL)
    assert [r["index"] for r in score.per_text] == list(range(7))
    assert score.per_text[1]["skipped"] == "empty"
    json.dumps(score.to_dict())  # serialisable


def test_score_matrices_errors_on_mismatched_shapes():
    with pytest.raises(InvalidParameterError, match="mismatched shapes"):
        score_matrices([random_matrix(4, 8), random_matrix(4, 9)])
    with pytest.raises(InvalidParameterError, match="2-D"):
        score_matrices([np.ones(8)])
    with pytest.raises(InvalidParameterError, match="non-empty"):
        score_matrices([])


def test_paired_difference():
    a = score_matrices([random_matrix(6, 8, seed=s) for s in range(6)], n_bootstrap=100)
    d = paired_difference(a, a, "mnn")
    assert d["n"] == 6 and d["mean"] == 0.0


# -- hidden-state extraction on a tiny random model (no downloads) -----------------------------------------
WORDS = [
    "the",
    "a",
    "cat",
    "dog",
    "sat",
    "on",
    "mat",
    "and",
    "ran",
    "far",
    "away",
    "fast",
    "slow",
    "big",
    "small",
    "red",
    "blue",
    "one",
    "two",
    "three",
    "is",
    "was",
]


def tiny_lm_with_bos(seed: int = 0):
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from transformers import LlamaForCausalLM

    from tiny_lm import tiny_llama_config, word_level_tokenizer

    tokenizer = word_level_tokenizer(WORDS, add_bos=True)
    torch.manual_seed(seed)
    config = tiny_llama_config(tokenizer, context=128)
    return LlamaForCausalLM(config).eval(), tokenizer


@pytest.fixture(scope="module")
def tiny():
    return tiny_lm_with_bos()


TEXTS = [
    "the cat sat on the mat",
    "a dog ran far away fast and the cat was slow",
    "one two three",
    "big red dog",
    "the small blue cat sat on a big red mat and one dog ran away",
]


def authors_hidden(model, tokenizer, text):
    """One text at a time, as the authors: the causal LM's hidden_states[-1], BOS kept."""
    import torch

    ids = torch.tensor([tokenizer(text)["input_ids"]])
    with torch.no_grad():
        return model(ids, output_hidden_states=True).hidden_states[-1][0]


def test_padded_batch_equals_one_at_a_time(tiny):
    import torch

    from metricwise.representation import extract_hidden_states

    model, tokenizer = tiny
    batched = extract_hidden_states(model, tokenizer, TEXTS, batch_size=4, keep_bos=True)
    single = extract_hidden_states(model, tokenizer, TEXTS, batch_size=1, keep_bos=True)
    for text, b, s in zip(TEXTS, batched, single, strict=True):
        ref = authors_hidden(model, tokenizer, text)
        assert b.shape == ref.shape == (len(text.split()) + 1, 32)
        torch.testing.assert_close(b, ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(s, ref, rtol=1e-5, atol=1e-5)
        for fn, _ in REFERENCES.values():
            assert fn(b) == pytest.approx(fn(ref), rel=1e-5)


def test_pad_rows_would_change_the_values(tiny):
    """The pitfall the batching avoids: keeping padded positions in the matrix."""
    import torch

    from metricwise.representation.hidden import forward_hidden

    model, tokenizer = tiny
    ids = [tokenizer(t)["input_ids"] for t in TEXTS[2:4]]
    width = 12
    input_ids = torch.tensor([row + [0] * (width - len(row)) for row in ids])
    mask = (torch.arange(width)[None, :] < torch.tensor([len(r) for r in ids])[:, None]).long()
    with torch.no_grad():
        hidden = forward_hidden(model, input_ids, mask)
    exact = matrix_nuclear_norm(hidden[0, : len(ids[0])])
    with_pads = matrix_nuclear_norm(hidden[0])
    assert abs(exact - with_pads) > 0.01


def test_bos_drop_and_keep(tiny):
    from metricwise.representation import extract_hidden_states

    model, tokenizer = tiny
    keep = extract_hidden_states(model, tokenizer, TEXTS[:2], keep_bos=True)
    drop = extract_hidden_states(model, tokenizer, TEXTS[:2], keep_bos=False)
    for k, d in zip(keep, drop, strict=True):
        assert d.shape[0] == k.shape[0] - 1
        assert (d == k[1:]).all()  # the model still saw BOS; only its row is dropped
    enc = encode_texts(tokenizer, TEXTS[:1], keep_bos=False)[0]
    assert enc.has_bos and enc.start == 1 and enc.ids[0] == tokenizer.bos_token_id


def test_skips_truncation_and_stats(tiny):
    from metricwise.representation import ExtractionStats, iter_hidden_states

    model, tokenizer = tiny
    texts = ["", "cat", "the cat sat", TEXTS[4]]
    stats = ExtractionStats()
    records = {
        r.index: r
        for r in iter_hidden_states(
            model, tokenizer, texts, max_length=6, min_tokens=2, stats=stats
        )
    }
    assert records[0].skipped == "empty" and records[0].hidden is None
    assert records[1].skipped == "too_short"  # one row once BOS is dropped
    assert records[2].skipped is None and records[2].hidden.shape == (3, 32)
    assert records[3].truncated and records[3].n_tokens == 5 and records[3].n_input_tokens == 6
    assert (
        stats.skipped == {"empty": 1, "too_short": 1}
        and stats.n_truncated == 1
        and stats.n_batches == 1
    )
    assert stats.matrix_tokens == 3 + 5


def test_extract_errors(tiny):
    import torch

    from metricwise.representation import extract_hidden_states

    model, tokenizer = tiny
    with pytest.raises(InvalidParameterError, match="index 1 that has no tokens"):
        extract_hidden_states(model, tokenizer, ["the cat sat", ""])
    with pytest.raises(InvalidParameterError, match="list of strings"):
        extract_hidden_states(model, tokenizer, "the cat sat")
    with pytest.raises(InvalidParameterError, match="must be a torch model"):
        extract_hidden_states("gemma", tokenizer, ["the cat"])

    class NoHiddenStates(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, input_ids, attention_mask=None):
            return input_ids.float()  # logits-like, no hidden states

    with pytest.raises(InvalidParameterError, match="must return hidden states"):
        extract_hidden_states(NoHiddenStates(), tokenizer, ["the cat sat"])
    with pytest.raises(InvalidParameterError, match="'layer'"):
        extract_hidden_states(model, tokenizer, ["the cat sat"], layer=7)
    with pytest.raises(InvalidParameterError, match="batch_size"):
        extract_hidden_states(model, tokenizer, ["the cat sat"], batch_size=0)


def test_layer_selection(tiny):
    import torch

    from metricwise.representation import extract_hidden_states

    model, tokenizer = tiny
    ids = torch.tensor([tokenizer(TEXTS[0])["input_ids"]])
    with torch.no_grad():
        states = model(ids, output_hidden_states=True).hidden_states
    (first,) = extract_hidden_states(model, tokenizer, TEXTS[:1], layer=0, keep_bos=True)
    torch.testing.assert_close(first, states[0][0])
    (last,) = extract_hidden_states(model, tokenizer, TEXTS[:1], layer=-1, keep_bos=True)
    torch.testing.assert_close(last, states[-1][0])


def test_score_texts_end_to_end(tiny):
    from metricwise.representation import extract_hidden_states, score_texts

    model, tokenizer = tiny
    texts = [*TEXTS, ""]
    score = score_texts(
        model, tokenizer, texts, batch_size=2, n_bootstrap=100, model_name="tiny", data_name="toy"
    )
    assert score.n_scored == 5 and score.skipped == {"empty": 1} and score.hidden_size == 32
    mats = extract_hidden_states(model, tokenizer, TEXTS, batch_size=1)
    for name, (fn, _) in REFERENCES.items():
        assert score.metrics[name].value == pytest.approx(np.mean([fn(m) for m in mats]), rel=1e-5)
    assert score.settings["bos"] == "drop" and "bos:drop" in score.signature
    assert score.tokens == sum(m.shape[0] for m in mats)


def test_responses_score_only_the_response_rows(tiny):
    import torch

    from metricwise.representation import score_responses
    from metricwise.representation.hidden import iter_encoded_hidden_states

    model, tokenizer = tiny
    enc = encode_responses(tokenizer, ["the cat sat on"], ["the mat and ran away"], max_length=64)[
        0
    ]
    assert enc.ids[: enc.start] == tuple(tokenizer("the cat sat on")["input_ids"])
    assert enc.n_rows == 5
    (rec,) = list(iter_encoded_hidden_states(model, [enc]))
    with torch.no_grad():
        full = model(torch.tensor([list(enc.ids)]), output_hidden_states=True).hidden_states[-1][0]
    torch.testing.assert_close(rec.hidden, full[enc.start :], rtol=1e-5, atol=1e-5)

    records = [
        {"prompt": "the cat", "response": "sat on the mat", "model": "A"},
        {"prompt": "the cat", "response": "ran far away fast", "model": "B"},
        {"prompt": "a dog", "response": "was big and red", "model": "A"},
        {"prompt": "a dog", "response": "sat", "model": "B"},
    ]
    scores = score_responses(model, tokenizer, records, n_bootstrap=50)
    assert [s.group for s in scores] == ["A", "B"]
    assert (
        scores[0].n_scored == 2
        and scores[1].n_scored == 1
        and scores[1].skipped == {"too_short": 1}
    )
    assert [r["index"] for r in scores[1].per_text] == [1, 3]
    # systems are paired by prompt: A and B both answered "the cat" with a scored response
    assert paired_difference(scores[1], scores[0], "mnn")["n"] == 1
    # truncation keeps BOS and the end of the prompt, and at least half the budget for the response
    long = encode_responses(
        tokenizer, ["one two three " * 10], ["the cat sat on the mat"], max_length=8
    )[0]
    assert (
        long.truncated
        and len(long.ids) == 8
        and long.ids[0] == tokenizer.bos_token_id
        and long.n_rows == 4
    )


# -- data -----------------------------------------------------------------------------------------------
def test_load_texts_from_files(tmp_path):
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text('{"text": "a b"}\n\n{"text": "c d", "body": "x"}\n')
    assert load_texts(jsonl) == ["a b", "c d"]
    with pytest.raises(InvalidParameterError, match="field 'body'"):
        load_texts(jsonl, field="body")
    txt = tmp_path / "c.txt"
    txt.write_text("first line\n\nsecond line\n")
    assert load_texts(txt, limit=1) == ["first line"]
    js = tmp_path / "c.json"
    js.write_text(json.dumps([{"t": "x"}, {"t": "y"}]))
    assert load_texts(js, field="t") == ["x", "y"]
    with pytest.raises(UnknownNameError, match="Did you mean 'squad'"):
        load_texts("sqaud")


def test_tasks_need_a_data_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("METRICWISE_DATA_DIR", raising=False)
    with pytest.raises(InvalidParameterError, match=r"METRICWISE_DATA_DIR environment variable"):
        load_texts("gsm8k")
    with pytest.raises(InvalidParameterError, match=str(tmp_path / "gsm8k" / "test.jsonl")):
        load_texts("gsm8k", data_dir=tmp_path)


def test_tasks_from_the_data_dir(data_dir):
    questions = load_texts("gsm8k", data_dir=data_dir, limit=5)
    assert len(questions) == 5 and all(q.strip() for q in questions)
    contexts = load_texts("squad", data_dir=data_dir)
    from metricwise.tasks import get_task

    expected = {item.fields["context"] for item in get_task("squad").load(data_dir, split="eval")}
    assert (
        len(contexts) == len(set(contexts)) == len(expected)
    )  # distinct contexts of the evaluated SQuAD items
    assert set(contexts) == expected
    assert len(load_texts("squad", field="question", data_dir=data_dir, limit=3)) == 3


# -- the CLI ----------------------------------------------------------------------------------------------
def test_cli_on_a_local_model_directory(tiny, tmp_path, capsys):
    from metricwise.representation.cli import add_mnn_parser

    model, tokenizer = tiny
    model_dir = tmp_path / "tiny"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    data = tmp_path / "texts.jsonl"
    data.write_text("".join(json.dumps({"body": t}) + "\n" for t in [*TEXTS, ""]))
    parser = argparse.ArgumentParser(prog="metricwise")
    add_mnn_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / "res.json"
    args = parser.parse_args(
        [
            "mnn",
            "--model",
            f"{model_dir},{model_dir}",
            "--data",
            str(data),
            "--field",
            "body",
            "--metrics",
            "mnn,entropy",
            "--bootstrap",
            "50",
            "--output",
            str(out),
            "--quiet",
        ]
    )
    assert args.handler(args) == 0
    table = capsys.readouterr().out
    assert (
        "Matrix Nuclear-Norm" in table and "Matrix Entropy" in table and "nuclear norm" not in table
    )
    assert "Paired difference" in table and "'empty': 1" in table
    payload = json.loads(out.read_text())
    (first, second) = payload["results"]
    assert first["n_scored"] == 5 and first["settings"]["bos"] == "drop"
    assert first["metrics"]["mnn"]["value"] == second["metrics"]["mnn"]["value"]
    assert len(first["per_text"]) == 6
    responses = tmp_path / "responses.jsonl"
    responses.write_text(
        "".join(
            json.dumps({"prompt": p, "response": r, "model": m}) + "\n"
            for p, r, m in [
                ("the cat", "sat on the mat", "A"),
                ("the cat", "ran far away", "B"),
                ("a dog", "was big", "A"),
                ("a dog", "was red", "B"),
            ]
        )
    )
    args = parser.parse_args(
        [
            "mnn",
            "--model",
            str(model_dir),
            "--data",
            str(responses),
            "--responses",
            "--quiet",
            "--bootstrap",
            "20",
        ]
    )
    assert args.handler(args) == 0
    table = capsys.readouterr().out
    assert (
        "tiny / A" in table and "tiny / B" in table and "| 2 | " in table
    )  # paired over the 2 shared prompts
    bad = parser.parse_args(
        ["mnn", "--model", str(model_dir), "--data", str(data), "--metrics", "mnm"]
    )
    with pytest.raises(UnknownNameError, match="Did you mean 'mnn'"):
        bad.handler(bad)


# -- the real named models (slow) --------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("name", ["gemma-3-270m", "smollm2-135m-instruct"])
def test_named_model_batched_equals_one_at_a_time(name, data_dir):
    torch = pytest.importorskip("torch")
    from metricwise.models import NAMED_MODELS, is_available, load_hf_causal_lm
    from metricwise.representation import extract_hidden_states

    if not is_available(name):
        pytest.skip(f"{NAMED_MODELS[name].package} is not installed")
    model, tokenizer = load_hf_causal_lm(name)
    texts = load_texts("gsm8k", data_dir=data_dir, limit=6)
    batched = extract_hidden_states(model, tokenizer, texts, batch_size=6, max_length=128)
    single = extract_hidden_states(model, tokenizer, texts, batch_size=1, max_length=128)
    for b, s in zip(batched, single, strict=True):
        assert b.shape == s.shape and b.shape[1] == NAMED_MODELS[name].hidden_size
        torch.testing.assert_close(b, s, rtol=1e-3, atol=1e-3)
        for fn, _ in REFERENCES.values():
            assert fn(b) == pytest.approx(fn(s), rel=1e-4)


def test_gpu_extraction_and_metrics_match_cpu(tiny):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    import copy

    from metricwise.representation import extract_hidden_states

    model, tokenizer = tiny
    gpu_model = copy.deepcopy(model).to("cuda")
    on_gpu = extract_hidden_states(gpu_model, tokenizer, TEXTS, batch_size=3)
    on_cpu = extract_hidden_states(model, tokenizer, TEXTS, batch_size=1)
    for g, c in zip(on_gpu, on_cpu, strict=True):
        assert g.device.type == "cuda"
        for fn, _ in REFERENCES.values():
            assert fn(g) == pytest.approx(fn(c), rel=1e-4)  # TF32/cuBLAS vs CPU kernels
