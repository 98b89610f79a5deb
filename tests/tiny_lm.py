"""A tiny randomly initialised causal LM and a tokenizer built in-process: no downloads.

Used by the fast tests of the mechanics (sampling, log-probabilities, hidden states)."""

from __future__ import annotations

from functools import lru_cache

CORPUS = [
    "the cat sat on the mat and the dog ran in the park",
    "what is two plus three ? the answer is 5 .",
    "rate the similarity from 0 to 5 : 3.5 4 2 1 0",
    "paris is the capital of france . canberra is the capital of australia .",
    "numbers 0 1 2 3 4 5 6 7 8 9 10 100 1000 , . ! ?",
]


@lru_cache(maxsize=4)
def tiny_model_and_tokenizer(seed: int = 0, vocab_size: int = 128, hidden: int = 32):
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    raw.train_from_iterator(CORPUS, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_llama_config(tokenizer, hidden=hidden)).eval()
    return model, tokenizer


def tiny_llama_config(
    tokenizer,
    *,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    context: int = 256,
    **overrides,
):
    """A small LlamaConfig over ``tokenizer``'s vocabulary and special tokens."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=context,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **overrides,
    )


def word_level_tokenizer(words, *, add_bos: bool = False):
    """A whitespace word-level tokenizer: <pad> 0, <s> 1, </s> 2, <unk> 3, then ``words``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, **{w: i + 4 for i, w in enumerate(words)}}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    if add_bos:
        raw.post_processor = processors.TemplateProcessing(
            single="<s> $A", special_tokens=[("<s>", 1)]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=raw,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    )


def tiny_eval_config(tmp_path, **overrides):
    """The EvalConfig of a small eval on the tiny model: arith, 4 items, n 4, one shot, 4
    tokens, outputs and store under ``tmp_path``; ``overrides`` replace any field."""
    from metricwise.evaluate.runner import EvalConfig

    settings = dict(
        model="tiny",
        tasks=["arith"],
        limit=4,
        n=4,
        num_fewshot=1,
        max_tokens=4,
        output_path=str(tmp_path / "out"),
        log_samples=True,
        store=str(tmp_path / "samples.sqlite"),
        bootstrap_iters=50,
        curve_subsets=2,
        quiet=True,
    )
    settings.update(overrides)
    return EvalConfig(**settings)


def tiny_backend():
    """The hf backend on the tiny model, signed as the tests' store expects."""
    from metricwise.backends.hf import HFBackend

    model, tokenizer = tiny_model_and_tokenizer()
    return HFBackend(model, tokenizer=tokenizer, signature="hf:tiny-test")
