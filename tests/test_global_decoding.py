"""Globally normalised sampling by independent Metropolis-Hastings (metricwise.global_decoding)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from metricwise.errors import InvalidParameterError
from metricwise.global_decoding import ChainSettings, describe_chains, imh_chain, log_weight
from metricwise.types import Candidate, SampleSet


def _proposals(logp, logq, finish=None):
    finish = finish or ["eos"] * len(logp)
    return SampleSet(
        candidates=tuple(
            Candidate(text=f"y{i}", logp=p, logq=q, n_tokens=1, finish_reason=f)
            for i, (p, q, f) in enumerate(zip(logp, logq, finish, strict=True))
        ),
        prompt="prompt",
    )


def _random_proposals(m, seed=0):
    rng = np.random.default_rng(seed)
    logq = -rng.gamma(2.0, 2.0, size=m)
    return _proposals(list(logq - rng.gamma(1.0, 0.5, size=m)), list(logq))


# -- properties of the chain ------------------------------------------------------------------


def test_the_acceptance_ratio_is_invariant_to_the_constant():
    base = _random_proposals(200)
    chain = imh_chain(base, 200)
    for shift_p, shift_q in ((5.0, 0.0), (0.0, -3.0), (-40.0, 7.5)):
        shifted = _proposals(
            [c.logp + shift_p for c in base.candidates], [c.logq + shift_q for c in base.candidates]
        )
        other = imh_chain(shifted, 200)
        assert other.state_proposals == chain.state_proposals
    assert 0 < chain.accepted < 199  # the chain really rejects some and accepts some


def test_without_truncation_every_proposal_is_accepted():
    # k = vocabulary, p = 1, T = 1: q is p, every weight is 1.
    logp = list(-np.random.default_rng(1).gamma(2.0, 2.0, size=50))
    chain = imh_chain(_proposals(logp, logp), 50)
    assert chain.acceptance_rate == 1.0
    assert chain.state_proposals == tuple(range(50))


def test_a_cut_off_proposal_is_never_accepted_and_replaces_nothing():
    finish = ["length", "eos", "guard", "stop", "length"]
    # The cut-off proposals are given the largest weights: they still never win.
    chain = imh_chain(
        _proposals([0.0, -5.0, 0.0, -6.0, 0.0], [-9.0, -5.0, -9.0, -6.0, -9.0], finish), 5
    )
    assert log_weight(chain.states.candidates[0]) == -math.inf  # state 0 is proposal 0
    assert chain.cut_off == pytest.approx(3 / 5)
    assert "60% of the proposals were cut off" in describe_chains([chain])
    assert "add a stop string" in describe_chains([chain])
    assert chain.state_proposals[1:] == (1, 1, 3, 3)  # the first acceptable one replaces it


def test_a_longer_chain_extends_a_shorter_one():
    pool = _random_proposals(300, seed=3)
    short, long = imh_chain(pool, 100, seed=7), imh_chain(pool, 300, seed=7)
    assert long.state_proposals[:100] == short.state_proposals
    assert imh_chain(pool, 100, seed=8).state_proposals != short.state_proposals


def test_burn_in_and_thinning_pick_the_stated_states():
    pool = _random_proposals(40, seed=4)
    full = imh_chain(pool, 40)
    thinned = imh_chain(pool, 5, settings=ChainSettings(burn_in=10, thin=6))
    assert thinned.n_proposals == 40
    assert thinned.state_proposals == tuple(full.state_proposals[10 + 6 * j + 5] for j in range(5))


def test_bad_settings_and_inputs_are_refused():
    pool = _random_proposals(10)
    with pytest.raises(InvalidParameterError, match=r"reads 12 proposals\. Got 10"):
        imh_chain(pool, 6, settings=ChainSettings(thin=2))
    with pytest.raises(InvalidParameterError, match="'burn_in'"):
        ChainSettings(burn_in=-1)
    with pytest.raises(InvalidParameterError, match="'thin'"):
        ChainSettings(thin=0)
    with pytest.raises(InvalidParameterError, match="temperature > 0"):
        imh_chain(pool, 5, temperature=0.0)
    with pytest.raises(InvalidParameterError, match="without logq"):
        imh_chain(SampleSet(candidates=(Candidate("x", logp=-1.0, finish_reason="eos"),)), 1)


# -- exactness against an enumerated model ------------------------------------------------------


def _small_vocab_model(seed: int, init: float):
    """A one-layer Llama over 6 word tokens and 4 special ones (all four end a sample), with
    large initial weights so that next-token distributions are peaked and vary by prefix."""
    torch = pytest.importorskip("torch")
    from transformers import LlamaForCausalLM

    from tiny_lm import tiny_llama_config, word_level_tokenizer

    tokenizer = word_level_tokenizer(["a", "b", "c", "d", "e", "f"])
    torch.manual_seed(seed)
    config = tiny_llama_config(
        tokenizer, hidden=16, layers=1, heads=2, kv_heads=1, context=64, initializer_range=init
    )
    return LlamaForCausalLM(config).eval(), tokenizer


def _enumerate_complete(model, prompt_ids, config, end_ids):
    """Every complete sequence inside the truncation sets: {token ids: (log p, log q)}.

    Teacher-forced full forward passes (no cache), independent of the backend's decode loop.
    """
    import torch

    from metricwise.backends.hf import process_logits

    complete = {}
    stack = [((), 0.0, 0.0)]
    while stack:
        prefix, logp, logq = stack.pop()
        with torch.no_grad():
            logits = model(torch.tensor([prompt_ids + list(prefix)])).logits[:, -1].float()
        raw = torch.log_softmax(logits, -1)[0].double()
        q = torch.log_softmax(process_logits(logits, config), -1)[0].double()
        for token in range(logits.shape[-1]):
            if not math.isfinite(float(q[token])):
                continue
            seq, lp, lq = (*prefix, token), logp + float(raw[token]), logq + float(q[token])
            if token in end_ids:
                complete[seq] = (lp, lq)
            elif len(seq) < config.max_tokens:
                stack.append((seq, lp, lq))
    return complete


@pytest.mark.parametrize(
    ("seed", "init", "top_k", "top_p", "temperature"),
    [(0, 0.5, 3, 1.0, 1.0), (0, 1.0, 0, 0.7, 1.0), (0, 1.0, 3, 1.0, 0.7)],
    ids=["top_k=3", "top_p=0.7", "top_k=3,T=0.7"],
)
def test_the_chain_converges_to_the_globally_normalised_distribution(
    seed, init, top_k, top_p, temperature
):
    """Every complete sequence of a tiny model (vocabulary 10, at most 4 new tokens) is
    enumerated, giving p_g(y) proportional to p(y)^(1/T) on the sequences inside the
    truncation sets. With 4,000 proposals from the real hf backend, the chain's empirical
    distribution is within total variation 0.06 of p_g, while local sampling's stays above
    0.09: local sampling draws q, whose exact distance to p_g is above 0.09 in each case.
    """
    from metricwise.backends.hf import HFBackend
    from metricwise.types import SamplingConfig

    model, tokenizer = _small_vocab_model(seed, init)
    proposals = 4000
    config = SamplingConfig(
        n=proposals, top_k=top_k, top_p=top_p, temperature=temperature, max_tokens=4, seed=0
    )
    backend = HFBackend(model, tokenizer=tokenizer)
    prompt = "a b"
    exact = _enumerate_complete(model, tokenizer(prompt)["input_ids"], config, backend.end_ids)
    keys = list(exact)
    logp = np.array([exact[k][0] for k in keys])
    logq = np.array([exact[k][1] for k in keys])
    p_global = np.exp(logp / temperature - np.max(logp / temperature))
    p_global /= p_global.sum()
    q_complete = np.exp(logq) / np.exp(logq).sum()
    tv_q = 0.5 * np.abs(q_complete - p_global).sum()
    assert tv_q > 0.09  # the test means something: local and global differ

    pool = backend.sample([prompt], config)[0]
    chain = imh_chain(pool, proposals, temperature=temperature, seed=0)
    index = {k: i for i, k in enumerate(keys)}

    def empirical(candidates):
        counts = np.zeros(len(keys))
        for c in candidates:
            if c.finish_reason == "eos":
                counts[index[c.token_ids]] += 1
        return counts / counts.sum()

    tv_chain = 0.5 * np.abs(empirical(chain.states.candidates) - p_global).sum()
    tv_local = 0.5 * np.abs(empirical(pool.candidates) - p_global).sum()
    assert tv_chain < 0.06, (tv_chain, tv_local, tv_q)
    assert tv_local > 0.09, (tv_chain, tv_local, tv_q)
    assert all(c.finish_reason == "eos" for c in chain.states.candidates)
    assert 0.3 < chain.acceptance_rate < 1.0


def test_without_truncation_the_real_backend_chain_accepts_every_complete_proposal():
    from metricwise.backends.hf import HFBackend
    from metricwise.types import SamplingConfig

    model, tokenizer = _small_vocab_model(0, 0.5)
    pool = HFBackend(model, tokenizer=tokenizer).sample(
        ["a b"], SamplingConfig(n=200, max_tokens=4, seed=1)
    )[0]
    assert all(c.logp == c.logq for c in pool.candidates)  # ancestral: q is p, bit for bit
    complete = [i for i, c in enumerate(pool.candidates) if c.finish_reason == "eos"]
    assert 0 < len(complete) < 200  # some proposals are cut off by max_tokens
    chain = imh_chain(pool, 200)
    assert set(chain.state_proposals) - {0} == set(complete) - {0}
    assert chain.accepted == len(set(complete) - {0})


# -- through the CLI ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_vocab_dir(tmp_path_factory):
    model, tokenizer = _small_vocab_model(0, 0.5)
    path = tmp_path_factory.mktemp("small-vocab")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _run(argv, capsys):
    from metricwise.cli import main

    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_sample_and_predict_return_chain_states_from_stored_proposals(
    small_vocab_dir, tmp_path, capsys
):
    import json

    from metricwise.store import SampleStore

    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"id": "x", "prompt": "a b"}\n{"id": "y", "prompt": "c"}\n')
    store = tmp_path / "s.sqlite"
    common = ["--model", str(small_vocab_dir), "-n", "8", "--top_k", "3", "--max_tokens", "4",
              "--store", str(store), "--input", str(prompts)]  # fmt: skip
    code, out, err = _run(
        ["sample", *common, "--decoding", "global", "--burn_in", "4", "--thin", "2"], capsys
    )
    assert code == 0, err
    assert "acceptance rate" in err and "from 20 proposals" in err
    records = [json.loads(line) for line in out.splitlines()]
    with SampleStore(store) as kept:
        assert kept.count() == 2 * 20  # every proposal is stored, not only the states
    for record in records:
        chain = record["chain"]
        assert len(record["candidates"]) == 8 and chain["n_proposals"] == 20
        assert chain["state_proposals"] == sorted(chain["state_proposals"])
        # State j is the chain after proposal 4 + 2j + 1: never a proposal from later.
        assert all(i <= 5 + 2 * j for j, i in enumerate(chain["state_proposals"]))
    # Local samples are the first proposals: the same store answers without a model call.
    code, out, _ = _run(["sample", *common, "-n", "20", "--quiet"], capsys)
    local = [json.loads(line) for line in out.splitlines()]
    for record, pool in zip(records, local, strict=True):
        texts = [c["text"] for c in pool["candidates"]]
        assert [c["text"] for c in record["candidates"]] == [
            texts[i] for i in record["chain"]["state_proposals"]
        ]
    code, out, err = _run(["predict", *common, "--metric", "exact_match", "--decoding", "global",
                           "--burn_in", "4", "--thin", "2", "--quiet"], capsys)  # fmt: skip
    assert code == 0, err
    decisions = [json.loads(line) for line in out.splitlines()]
    assert [d["id"] for d in decisions] == ["x", "y"]
    assert all(d["n_total"] == 8 and "acceptance_rate" in d["chain"] for d in decisions)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--decoding", "globl"], "'decoding' parameter must be one of local, global"),
        (["--decoding", "global", "--temperature", "0"], "needs a sampling temperature > 0"),
        (["--decoding", "global", "--burn_in", "-1"], "'burn_in'"),
        (["--decoding", "global", "--thin", "0"], "'thin'"),
        (["--decoding", "global", "--adaptive"], "cannot be combined"),
        (["--burn_in", "4"], "'--burn_in' applies to '--decoding global'"),
        (["--thin", "2"], "'--thin' applies to '--decoding global'"),
        (["--decoding", "global", "--weights", "importance"], "correct for the sampler twice"),
    ],
)
def test_bad_decoding_settings_fail_before_any_model_loads(
    argv, message, tmp_path, capsys, monkeypatch
):
    import metricwise.backends

    monkeypatch.setattr(
        metricwise.backends, "load_backend", lambda *a, **k: pytest.fail("a model was loaded")
    )
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"id": 1, "prompt": "x"}\n')
    code, _, err = _run(
        ["predict", "--metric", "exact_match", "--input", str(prompts), *argv], capsys
    )
    assert code == 2 and message in err


def test_eval_scores_global_against_local_on_one_pool(small_vocab_dir, tmp_path, capsys):
    import json

    out_dir = tmp_path / "out"
    argv = ["eval", "--model", str(small_vocab_dir), "--tasks", "arith", "--limit", "3", "-n", "4",
            "--num_fewshot", "0", "--gen_kwargs", "top_k=3,max_tokens=4", "--decoding", "local,global",
            "--burn_in", "2", "--quiet", "--curve_subsets", "0", "--bootstrap_iters", "50",
            "--store", str(tmp_path / "s.sqlite"), "--output_path", str(out_dir), "--log_samples"]  # fmt: skip
    code, out, err = _run(argv, capsys)
    assert code == 0, err
    results = json.loads((out_dir / "results.json").read_text())
    local, global_ = results["runs"]
    assert (local["decoding"], global_["decoding"]) == ("local", "global")
    assert global_["chain"]["n_proposals"] == 6 and global_["chain"]["states"] == 4
    compared = {(r["decoder"], r["metric"]) for r in global_["vs_local"]}
    assert ("median", "absolute_error") in compared and ("greedy", "absolute_error") not in compared
    # Decoders that read no samples score alike under both decodings.
    greedy = [
        [r["value"] for r in run["scores"] if r["decoder"] == "greedy"] for run in (local, global_)
    ]
    assert greedy[0] == greedy[1]
    signatures = [r["signature"] for r in global_["scores"]]
    assert all("decoding:global(burn_in=2,thin=1)" in s for s in signatures)
    assert not any("decoding:" in r["signature"] for r in local["scores"])
    assert "arith (global)" in out and "global - local" in out
    assert (out_dir / "samples_arith_global.jsonl").exists()


def test_eval_refuses_chain_flags_without_global_decoding(capsys, monkeypatch):
    import metricwise.backends

    monkeypatch.setattr(
        metricwise.backends, "load_backend", lambda *a, **k: pytest.fail("a model was loaded")
    )
    code, _, err = _run(["eval", "--tasks", "arith", "--burn_in", "8"], capsys)
    assert code == 2 and "'--burn_in' applies to '--decoding global'" in err


def test_eval_refuses_global_decoding_with_adaptive_in_its_own_words(capsys, monkeypatch):
    import metricwise.backends
    from metricwise.adaptive import Adaptive
    from metricwise.evaluate.runner import EvalConfig

    monkeypatch.setattr(
        metricwise.backends, "load_backend", lambda *a, **k: pytest.fail("a model was loaded")
    )
    code, _, err = _run(["eval", "--tasks", "arith", "--decoding", "global", "--adaptive"], capsys)
    assert code == 2 and "'--decoding global' and '--adaptive' cannot be combined" in err
    with pytest.raises(InvalidParameterError, match="'decoding global' and 'adaptive' cannot"):
        EvalConfig(model="m", tasks=["arith"], decodings=["local", "global"], adaptive=Adaptive())
