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
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

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
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config).eval()
    return model, tokenizer
