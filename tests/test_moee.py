"""moee: the extraction of MoEE's hidden-state (HS) and routing-weight (RW) embeddings, checked
exactly on tiny randomly initialised MoE models built from transformers' own config classes
(OLMoE, Qwen2-MoE, Qwen3-MoE, Mixtral) with a tokenizer built in-process.

No real MoE model is available offline, so these tests check the mechanics (which numbers are
taken from which layer and token, padding, batching, caching, the utility's properties), not
the quality of the similarity.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

import torch

from metricwise import decide, metrics
from metricwise.cli import main
from metricwise.errors import InvalidParameterError
from metricwise.metrics import model_based
from metricwise.metrics.moee import (
    DEFAULT_PROMPT,
    MoEE,
    MoEEncoder,
    apply_prompt,
    router_modules,
)
from tiny_lm import tiny_model_and_tokenizer

pytestmark = pytest.mark.embed

N_EXPERTS = 6
N_LAYERS = 3
TEXTS = [
    "the cat sat on the mat",
    "a dog ran in the park and the cat sat",
    "paris",
    "what is two plus three ? the answer is 5 .",
    "canberra is the capital of australia",
    "5",
]


def tokenizer(side: str = "right"):
    """A private copy of the tiny BPE tokenizer (the tests change its padding side)."""
    tok = copy.deepcopy(tiny_model_and_tokenizer()[1])
    tok.padding_side = side
    return tok


def tiny_moe(kind: str, seed: int = 0, **overrides):
    """A tiny causal MoE LM of transformers' class ``kind``, seeded, routers made decisive.

    Default initialisation (std 0.02) gives near-uniform routing, under which every text has
    almost the same RW and a wrong layer or token could pass unnoticed; std 1 router weights
    route different tokens differently.
    """
    from transformers import (
        AutoModelForCausalLM,
        MixtralConfig,
        OlmoeConfig,
        Qwen2MoeConfig,
        Qwen3MoeConfig,
    )

    tok = tokenizer()
    common = dict(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=32,
        num_hidden_layers=N_LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        num_experts_per_tok=2,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    moe = dict(moe_intermediate_size=16)
    configs = {
        "olmoe": lambda: OlmoeConfig(num_experts=N_EXPERTS, **common, **overrides),
        # Layer 1 is dense: RW must skip it, not add a zero block.
        "qwen2_moe": lambda: Qwen2MoeConfig(
            num_experts=N_EXPERTS,
            shared_expert_intermediate_size=16,
            mlp_only_layers=overrides.pop("mlp_only_layers", [1]),
            **moe,
            **common,
            **overrides,
        ),
        "qwen3_moe": lambda: Qwen3MoeConfig(
            num_experts=N_EXPERTS, head_dim=8, **moe, **common, **overrides
        ),
        "mixtral": lambda: MixtralConfig(num_local_experts=N_EXPERTS, **common, **overrides),
    }
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(configs[kind]()).eval()
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for _, module in router_modules(model):
            module.weight.copy_(torch.randn(module.weight.shape, generator=generator))
    return model, tok


KINDS = ["olmoe", "qwen2_moe", "qwen3_moe", "mixtral"]
MOE_LAYERS = {"olmoe": 3, "qwen2_moe": 2, "qwen3_moe": 3, "mixtral": 3}


@pytest.fixture(scope="module", params=KINDS)
def kind_model(request):
    model, tok = tiny_moe(request.param)
    return request.param, model, tok


def ids_of(tok, text, prompt=None):
    return tok(apply_prompt(prompt, text))["input_ids"]


def independent_embeddings(model, tok, text, prompt=None):
    """HS and RW of one text computed without moee: the text alone (no padding), the model's own
    last hidden state at its last token, and softmax(W_gate x) from each router's INPUT x, taken
    by hooks on the routers, so nothing the router itself returns is trusted."""
    ids = torch.tensor([ids_of(tok, text, prompt)])
    inputs = []
    handles = [
        module.register_forward_hook(lambda m, args, out: inputs.append((m, args[0])))
        for _, module in router_modules(model)
    ]
    try:
        with torch.no_grad():
            out = model(input_ids=ids, output_hidden_states=True)
    finally:
        for h in handles:
            h.remove()
    hs = out.hidden_states[-1][0, -1].float().numpy()
    rw = []
    for module, x in inputs:
        last = x.reshape(-1, x.shape[-1])[-1]
        logits = torch.nn.functional.linear(last, module.weight.detach())
        rw.append(torch.softmax(logits.float(), dim=-1).numpy())
    return hs, np.concatenate(rw)


def test_rw_and_hs_equal_independent_computation(kind_model):
    kind, model, tok = kind_model
    metric = MoEE(model, tokenizer=tok, prompt=None, batch_size=4)
    hs, rw = metric.embed(TEXTS)
    assert rw.shape == (len(TEXTS), MOE_LAYERS[kind] * N_EXPERTS)
    assert hs.shape == (len(TEXTS), 32)
    for i, text in enumerate(TEXTS):
        want_hs, want_rw = independent_embeddings(model, tok, text)
        np.testing.assert_allclose(hs[i], want_hs, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(rw[i], want_rw, rtol=1e-4, atol=1e-6)
    # Each layer's block is a full distribution over the experts, not only the top-k.
    blocks = rw.reshape(len(TEXTS), MOE_LAYERS[kind], N_EXPERTS)
    np.testing.assert_allclose(blocks.sum(axis=2), 1.0, atol=1e-5)
    assert (blocks > 0).all()
    # Routing differs between texts (the test would not see a wrong token otherwise).
    assert np.abs(rw[0] - rw[2]).max() > 1e-2


def test_the_prompt_template_is_what_the_model_reads(kind_model):
    _, model, tok = kind_model
    metric = MoEE(model, tokenizer=tok)  # the default PromptEOL template
    hs, rw = metric.embed(TEXTS[:2])
    for i, text in enumerate(TEXTS[:2]):
        want_hs, want_rw = independent_embeddings(model, tok, text, DEFAULT_PROMPT)
        np.testing.assert_allclose(hs[i], want_hs, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(rw[i], want_rw, rtol=1e-4, atol=1e-6)
    assert apply_prompt(DEFAULT_PROMPT, "a b") == 'This sentence : "a b" means in one word:"'
    assert apply_prompt('{"q": "{text}"}', "x") == '{"q": "x"}'


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batches_give_the_one_at_a_time_embeddings(kind_model, side):
    _, model, _ = kind_model
    batched = MoEE(model, tokenizer=tokenizer(side), prompt=None, batch_size=len(TEXTS))
    alone = MoEE(model, tokenizer=tokenizer(side), prompt=None, batch_size=1)
    hs_b, rw_b = batched.embed(TEXTS)
    hs_1, rw_1 = alone.embed(TEXTS)
    np.testing.assert_allclose(hs_b, hs_1, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(rw_b, rw_1, rtol=1e-4, atol=1e-6)


def test_router_hooks_and_output_router_logits_agree(kind_model):
    _, model, tok = kind_model
    by_output = MoEEncoder(model, tokenizer("left"), name="t", router_source="output")
    by_hooks = MoEEncoder(model, tokenizer("left"), name="t", router_source="hooks")
    assert (by_output.router_source, by_hooks.router_source) == ("output", "hooks")
    assert MoEEncoder(model, tok, name="t").router_source == "output"  # auto prefers the output
    hs_o, rw_o = map(np.stack, zip(*by_output.embed(TEXTS, prompt=None), strict=True))
    hs_h, rw_h = map(np.stack, zip(*by_hooks.embed(TEXTS, prompt=None), strict=True))
    assert rw_o.shape[0] == len(TEXTS)
    np.testing.assert_allclose(hs_o, hs_h, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rw_o, rw_h, rtol=1e-5, atol=1e-7)


class RouterLogitsIgnored(torch.nn.Module):
    """A model that takes output_router_logits but returns none, as some MoE classes do."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.config = inner.config

    def forward(self, output_router_logits=False, **inputs):
        return self.inner(**inputs)


def test_without_router_logits_in_the_output_the_router_hooks_are_used(kind_model):
    _, model, tok = kind_model
    wrapped = MoEE(RouterLogitsIgnored(model.base_model), tokenizer=tok, prompt=None)
    assert wrapped._encoder.router_source == "hooks"
    direct = MoEE(model, tokenizer=tok, prompt=None)
    assert direct._encoder.router_source == "output"
    for got, want in zip(wrapped.embed(TEXTS), direct.embed(TEXTS), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def olmoe():
    return tiny_moe("olmoe")


def test_each_distinct_text_runs_once_and_the_cache_returns_the_same_numbers(olmoe):
    model, tok = olmoe
    metric = MoEE(model, tokenizer=tok, batch_size=2)
    samples = ["the cat sat", "the cat sat", "paris", "5", "paris", "the cat sat"]
    first = metric.pairwise(samples, samples)
    assert metric._encoder.n_encoded == 3
    again = metric.pairwise(samples, samples)
    assert metric._encoder.n_encoded == 3
    np.testing.assert_array_equal(first, again)
    hs, rw = metric.embed(["paris"])
    hs2, rw2 = metric.embed(["paris"])
    np.testing.assert_array_equal(hs, hs2)
    np.testing.assert_array_equal(rw, rw2)


def test_the_shared_cache_is_bounded_and_a_small_one_still_encodes_each_text_once(
    olmoe, monkeypatch
):
    model, tok = olmoe
    big = MoEE(model, tokenizer=tok, batch_size=2).pairwise(TEXTS, TEXTS)
    entry = 4 * (32 + N_LAYERS * N_EXPERTS)  # HS and RW, float32
    small_cache = model_based.LRUCache(max_bytes=2 * entry)
    monkeypatch.setattr(model_based, "CACHE", small_cache)
    small = MoEE(model, tokenizer=tok, batch_size=2)
    got = small.pairwise(TEXTS, TEXTS)
    assert small._encoder.n_encoded == len(TEXTS)
    assert len(small_cache) == 2
    np.testing.assert_allclose(got, big, rtol=1e-6, atol=1e-6)


def test_the_cache_key_has_the_prompt_not_the_mode(olmoe):
    model, tok = olmoe
    metric = MoEE(model, tokenizer=tok, prompt=None)
    bare = metric.embed(["paris"])[0]
    # Another metric object on the same encoder: another prompt is another entry, another mode
    # or alpha reuses the entry.
    other = copy.copy(metric)
    other.prompt = DEFAULT_PROMPT
    templated = other.embed(["paris"])[0]
    assert metric._encoder.n_encoded == 2
    assert np.abs(bare - templated).max() > 1e-3
    rw_only = copy.copy(metric)
    rw_only.mode, rw_only.alpha = "rw", 0.0
    rw_only.embed(["paris"])
    assert metric._encoder.n_encoded == 2


def test_two_models_with_the_same_name_do_not_share_cache_entries():
    first, tok = tiny_moe("olmoe", seed=3)
    second, _ = tiny_moe("olmoe", seed=4)
    assert first.config._name_or_path == second.config._name_or_path
    a = MoEE(first, tokenizer=tok).embed(["paris"])[1]
    b = MoEE(second, tokenizer=tok).embed(["paris"])[1]
    assert np.abs(a - b).max() > 1e-3


def test_modes_combine_hs_and_rw_as_defined(olmoe):
    model, tok = olmoe
    by_mode = {
        mode: MoEE(model, tokenizer=tok, mode=mode, alpha=0.7).pairwise(TEXTS, TEXTS)
        for mode in ("sum", "concat", "hs", "rw")
    }
    off = ~np.eye(len(TEXTS), dtype=bool)
    np.testing.assert_allclose(
        by_mode["sum"][off], (by_mode["hs"] + 0.7 * by_mode["rw"])[off], rtol=1e-12
    )
    hs, rw = MoEE(model, tokenizer=tok).embed(TEXTS)
    both = np.hstack([hs, rw]).astype(np.float64)
    both /= np.linalg.norm(both, axis=1, keepdims=True)
    np.testing.assert_allclose(by_mode["concat"][off], (both @ both.T)[off], rtol=1e-9)
    np.testing.assert_allclose(np.diag(by_mode["sum"]), 1.7)
    np.testing.assert_allclose(np.diag(by_mode["concat"]), 1.0)


@pytest.mark.parametrize("mode", ["sum", "concat"])
def test_properties_symmetric_self_is_best_order_and_elementwise(olmoe, mode):
    """The registry-wide property tests build each metric with no arguments, which moee refuses
    (it needs a model); the same properties are checked here on the tiny model."""
    model, tok = olmoe
    metric = MoEE(model, tokenizer=tok, mode=mode)
    texts = [*TEXTS, "", "the cat sat on the mat ."]
    matrix = metric.pairwise(texts, texts)
    np.testing.assert_allclose(matrix, matrix.T, rtol=1e-9, atol=1e-12)
    assert (np.diag(matrix)[:, None] >= matrix - 1e-12).all()
    assert np.isfinite(matrix).all()
    for i in (0, 3, 6):
        for j in (1, 6, 7):
            assert metric.score(texts[i], texts[j]) == pytest.approx(matrix[i, j], abs=1e-9)
    perm = [3, 0, 7, 1, 6, 2, 5, 4]
    np.testing.assert_allclose(
        metric.pairwise([texts[i] for i in perm], texts[:3]), matrix[perm, :3], atol=1e-12
    )
    assert metric.symmetric and metric.higher_is_better and metric.kind == "text"


def test_an_empty_text_without_prompt_or_bos_is_read_as_one_token(olmoe):
    model, tok = olmoe
    metric = MoEE(model, tokenizer=tok, prompt=None)
    assert tok("")["input_ids"] == []  # this tokenizer adds no BOS
    hs, rw = metric.embed(["", "paris"])
    assert np.isfinite(hs).all() and np.isfinite(rw).all()


def test_truncation_keeps_the_end_where_the_last_token_is(olmoe):
    model, tok = olmoe
    text = "the cat sat on the mat and the dog ran in the park"
    ids = ids_of(tok, text)
    assert len(ids) > 6
    cut = MoEE(model, tokenizer=tok, prompt=None, max_length=6)
    tail = tok.decode(ids[-6:])
    assert ids_of(tok, tail) == ids[-6:]
    want_hs, want_rw = independent_embeddings(model, tok, tail)
    hs, rw = cut.embed([text])
    np.testing.assert_allclose(hs[0], want_hs, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(rw[0], want_rw, rtol=1e-4, atol=1e-6)


def test_two_threads_tokenize_with_the_left_truncation_and_leave_the_tokenizer_as_it_was(olmoe):
    # The encoder sets truncation_side = "left" around each tokenization. Two threads sharing it
    # (decide in a server's worker threads) must not undo each other's setting: B would then
    # tokenize with the right truncation and leave the tokenizer on "left" for good.
    import threading

    model, _ = olmoe
    tok = tokenizer("right")
    encoder = MoEEncoder(model, tok, name="tiny-olmoe")
    entered = {"a": threading.Event(), "b": threading.Event()}
    release = {"a": threading.Event(), "b": threading.Event()}
    seen = []
    plain = type(tok).__call__

    def blocking_call(self, texts, **kwargs):
        who = "a" if texts == ["first"] else "b"
        entered[who].set()
        release[who].wait(10)
        seen.append((who, self.truncation_side))
        return plain(self, texts, **kwargs)

    tok.__class__ = type("BlockingTokenizer", (type(tok),), {"__call__": blocking_call})
    threads = {
        w: threading.Thread(target=encoder.embed, args=([t],), kwargs={"prompt": None})
        for w, t in (("a", "first"), ("b", "second"))
    }
    threads["a"].start()
    assert entered["a"].wait(10)
    threads["b"].start()
    entered["b"].wait(0.5)  # with the tokenizer unguarded, B is inside it now
    release["a"].set()
    threads["a"].join(10)
    release["b"].set()
    threads["b"].join(10)
    assert sorted(seen) == [("a", "left"), ("b", "left")]
    assert tok.truncation_side == "right"


def test_mbr_with_moee_picks_a_sample_and_signs_its_settings(olmoe):
    model, tok = olmoe
    metric = MoEE(model, tokenizer=tok, alpha=0.5)
    samples = ["the cat sat", "the cat sat on the mat", "paris", "the cat sat"]
    d = decide(samples, metric)
    assert d.rule == "mbr"
    utilities = metric.pairwise(list(dict.fromkeys(samples)), samples).mean(axis=1)
    assert d.output == list(dict.fromkeys(samples))[int(np.argmax(utilities))]
    sig = metric.signature()
    assert sig.startswith("moee(") and "mode=sum" in sig and "alpha=0.5" in sig
    assert "means in one word" in sig
    assert "prompt=none" in MoEE(model, tokenizer=tok, prompt=None, mode="rw").signature()


@pytest.fixture(scope="module")
def saved_olmoe(tmp_path_factory, olmoe):
    model, tok = olmoe
    path = tmp_path_factory.mktemp("tiny-olmoe")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_a_model_directory_loads_through_the_registry(saved_olmoe, olmoe):
    model, tok = olmoe
    metric = metrics.get("moee", model=str(saved_olmoe), mode="hs")
    assert metric.name == "moee" and str(saved_olmoe) in metric.signature()
    assert metric._encoder.net.__class__.__name__ == "OlmoeModel"  # the base model, no LM head
    np.testing.assert_allclose(
        metric.embed(TEXTS)[0], MoEE(model, tokenizer=tok).embed(TEXTS)[0], rtol=1e-5, atol=1e-6
    )
    # The loaded model is shared: a second metric on it does not load it again.
    assert metrics.get("moee", model=str(saved_olmoe))._encoder is metric._encoder


def test_the_cli_takes_moee_settings_as_metric_args(saved_olmoe, tmp_path, capsys):
    path = tmp_path / "samples.jsonl"
    path.write_text(json.dumps({"id": 1, "samples": ["the cat sat", "paris", "the cat sat"]}))
    code = main(
        [
            "decide",
            "--metric",
            "moee",
            "--metric_args",
            f"model={saved_olmoe},alpha=0.5,mode=sum,prompt=null",
            str(path),
        ]
    )
    out = json.loads(capsys.readouterr().out.splitlines()[0])
    assert code == 0
    assert out["output"] == "the cat sat" and out["rule"] == "mbr"


# -- errors: said when the metric is built, before any sampling -------------------------------
def test_a_dense_model_is_refused_by_name():
    dense, tok = tiny_model_and_tokenizer()
    with pytest.raises(InvalidParameterError, match=r"mixture-of-experts.*LlamaForCausalLM"):
        MoEE(dense, tokenizer=tok)


def test_a_dense_model_directory_is_refused_before_its_weights_load(tmp_path, monkeypatch, capsys):
    import transformers

    dense, _ = tiny_model_and_tokenizer()
    dense.save_pretrained(tmp_path / "dense")

    def no_loading(*args, **kwargs):
        raise AssertionError("the weights were loaded before the config was checked")

    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", no_loading)
    with pytest.raises(InvalidParameterError, match=r"Got '.*dense', a 'llama' model whose config"):
        metrics.get("moee", model=str(tmp_path / "dense"))
    # The CLI checks the metric's arguments before it reads any input: exit code 2.
    code = main(
        ["decide", "--metric", "moee", "--metric_args", f"model={tmp_path / 'dense'}", "missing"]
    )
    assert code == 2
    assert "mixture-of-experts" in capsys.readouterr().err


def test_an_moe_config_whose_layers_are_all_dense_has_no_router():
    model, tok = tiny_moe("qwen2_moe", mlp_only_layers=[0, 1, 2])
    with pytest.raises(InvalidParameterError, match="no router module"):
        MoEE(model, tokenizer=tok)


def test_bad_settings_are_refused(olmoe):
    model, tok = olmoe
    with pytest.raises(InvalidParameterError, match=r"'model' parameter of moee.*Got None"):
        metrics.get("moee")
    with pytest.raises(InvalidParameterError, match=r"'alpha'.*>= 0. Got -1"):
        MoEE(model, tokenizer=tok, alpha=-1)
    with pytest.raises(InvalidParameterError, match=r"'mode'.*Got 'mean'"):
        MoEE(model, tokenizer=tok, mode="mean")
    with pytest.raises(InvalidParameterError, match=r"\{text\} placeholder"):
        MoEE(model, tokenizer=tok, prompt="no placeholder")
    with pytest.raises(InvalidParameterError, match=r"'tokenizer'.*tokenizer object"):
        MoEE(model)
    with pytest.raises(InvalidParameterError, match=r"'batch_size'.*>= 1"):
        MoEE(model, tokenizer=tok, batch_size=0)


def test_a_low_precision_model_still_gives_float32_distributions(saved_olmoe):
    metric = metrics.get("moee", model=str(saved_olmoe), dtype="bfloat16")
    assert next(metric._encoder.net.parameters()).dtype == torch.bfloat16
    hs, rw = metric.embed(TEXTS)
    assert hs.dtype == rw.dtype == np.float32
    # The softmax runs in float32 on the bfloat16 logits: each layer sums to 1 to float32 accuracy.
    np.testing.assert_allclose(
        rw.reshape(len(TEXTS), N_LAYERS, N_EXPERTS).sum(axis=2), 1, atol=1e-5
    )
    full = metrics.get("moee", model=str(saved_olmoe))
    np.testing.assert_allclose(rw, full.embed(TEXTS)[1], atol=0.05)
