"""GPU sampling speed: the hf backend against transformers ``generate`` on one device, side by side.

The model is the default model's architecture (Gemma 3 270M: 18 layers, hidden 640, a 262,144
token vocabulary) built from its configuration with random weights, since real weights cannot
travel to a lent GPU machine; speed does not depend on the weights' values once every sequence
runs its full length. EOS is suppressed in every phase (the backend ends no sequence on a
token; ``generate`` gets ``min_new_tokens = max_new_tokens``), so every phase generates exactly
prompts x n x tokens tokens. Prompts are random token ids of a fixed length, written as words of
a word-level tokenizer over the same vocabulary.

Phases, each on the same model object and prompts, at temperature 1:

* ``metricwise``: :class:`metricwise.backends.hf.HFBackend` with its defaults (one prefill per
  prompt batch, logp and logq per token; the device read back every 16 steps, batches sized to
  free memory; on CUDA a static KV cache, the step compiled with CUDA graphs, SDPA without
  cuDNN's kernel);
* ``every_step``: the loop as it was before issue 13: a dynamic cache, the device read back
  every step, torch's own attention kernel choice;
* ``dynamic``: the defaults with a dynamic KV cache (finished rows leave the batch; not compiled);
* ``static_eager``: the defaults with the static cache not compiled;
* ``sdpa_torch``: the defaults with torch's own SDPA kernel choice (cuDNN's included);
* ``generate``: ``model.generate(num_return_sequences=n, do_sample=True)`` with its dynamic cache;
* ``generate_static``: the same with ``cache_implementation="static"`` (which transformers
  compiles by itself on CUDA);
* ``generate_compile``: static cache with the model's forward compiled by ``torch.compile``.

Cells (prompts x n): 8 x 16, 64 x 16, 32 x 64, and 64 x 16 with top-p 0.9 (metricwise and
generate). The run prints tokens/s per phase and cell, each ratio metricwise / generate (the
issue's floor is >= 1.0 at every cell, and >= the static + compile figure at 64 x 16), the GPU
busy time of one metricwise cell from a torch profile (CUDA only), and a roofline estimate of the
cell's decode step (FLOPs and bytes against the device's bf16 peak) where the device is known.

Usage::

    python bench/gpu_sampling.py                       # CUDA, bf16, the full model and cells
    python bench/gpu_sampling.py --quick               # one cell (64 x 16), 32 tokens
    python bench/gpu_sampling.py --device cpu --quick  # CI: a 2-layer, 8k-vocabulary model
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass
from typing import Any

#: The default model's text configuration (converted from its GGUF; transformers' Gemma3TextConfig).
GEMMA3_270M: dict[str, Any] = {
    "vocab_size": 262_144,
    "hidden_size": 640,
    "intermediate_size": 2048,
    "num_hidden_layers": 18,
    "num_attention_heads": 4,
    "num_key_value_heads": 1,
    "head_dim": 256,
    "query_pre_attn_scalar": 256,
    "sliding_window": 512,
    "max_position_embeddings": 32_768,
    "rms_norm_eps": 1e-6,
    "hidden_activation": "gelu_pytorch_tanh",
    "tie_word_embeddings": True,
    "bos_token_id": 2,
    "eos_token_id": 1,
    "pad_token_id": 0,
}
#: bf16 dense peak and memory bandwidth of devices this bench knows (vendor figures).
PEAKS: dict[str, tuple[float, float]] = {
    "H200": (989e12, 4.8e12),
    "H100": (989e12, 3.35e12),
    "A100": (312e12, 2.0e12),
}
CELLS: list[tuple[int, int, float]] = [(8, 16, 1.0), (64, 16, 1.0), (32, 64, 1.0), (64, 16, 0.9)]
PROMPT_TOKENS = 32


@dataclass
class Setup:
    model: Any
    tokenizer: Any
    device: Any
    dtype: Any


def build(device: str, layers: int | None, vocab: int | None) -> Setup:
    """The Gemma 3 270M architecture with random weights, and a word tokenizer over its ids."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, PreTrainedTokenizerFast

    settings = dict(GEMMA3_270M)
    if layers is not None:
        settings["num_hidden_layers"] = layers
    if vocab is not None:
        settings["vocab_size"] = vocab
    config = Gemma3TextConfig(**settings)
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    torch.manual_seed(0)
    with torch.device(device):
        model = Gemma3ForCausalLM(config).to(dtype).eval()
    words = {f"w{i}": i for i in range(config.vocab_size)}
    words.update({"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3})
    raw = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
    return Setup(model, tokenizer, torch.device(device), dtype)


def prompts_for(count: int, vocab: int) -> list[str]:
    import numpy as np

    rng = np.random.default_rng(1)
    return [" ".join(f"w{t}" for t in rng.integers(4, vocab, PROMPT_TOKENS)) for _ in range(count)]


def sync(setup: Setup) -> None:
    import torch

    if setup.device.type == "cuda":
        torch.cuda.synchronize()


#: The most sequences the metricwise phase decoded at once (its memory-sized batches).
LARGEST_BATCH: dict[str, int] = {}


#: HFBackend options of each metricwise phase (the defaults otherwise).
METRICWISE_PHASES: dict[str, dict[str, Any]] = {
    "metricwise": {},
    "every_step": {"sync_every": 1, "kv_cache": "dynamic", "sdpa_backends": None},
    "dynamic": {"kv_cache": "dynamic"},
    "static_eager": {"kv_cache": "static", "compile": False},
    "sdpa_torch": {"sdpa_backends": None},
}
#: generate's cache_implementation and whether the forward is compiled, per generate phase.
GENERATE_PHASES: dict[str, tuple[str | None, bool]] = {
    "generate": (None, False),
    "generate_static": ("static", False),
    "generate_compile": ("static", True),
}
#: Backends built so far, by phase: a compiled step is compiled once per backend.
BACKENDS: dict[str, Any] = {}


def run_metricwise(
    setup: Setup, prompts: list[str], n: int, tokens: int, top_p: float, phase: str
) -> int:
    from metricwise.backends.hf import HFBackend
    from metricwise.guards import Guards
    from metricwise.types import SamplingConfig

    if phase not in BACKENDS:
        BACKENDS[phase] = HFBackend(
            setup.model,
            tokenizer=setup.tokenizer,
            device=str(setup.device),
            reuse_prefill=False,
            # Random weights repeat themselves; the guard would end sequences early.
            guards=Guards(max_seconds=None, min_repeated_tokens=10**9),
            **METRICWISE_PHASES[phase],
        )
    backend = BACKENDS[phase]
    backend.end_ids = frozenset()  # every sequence runs its full length
    sets = backend.sample(prompts, SamplingConfig(n=n, max_tokens=tokens, top_p=top_p, seed=0))
    LARGEST_BATCH[f"{len(prompts)} x {n}"] = backend.largest_batch
    return sum(c.n_tokens or 0 for s in sets for c in s.candidates)


def run_generate(
    setup: Setup, prompts: list[str], n: int, tokens: int, top_p: float, cache: str | None
) -> int:
    import torch

    setup.tokenizer.padding_side = "left"
    enc = setup.tokenizer(prompts, return_tensors="pt", padding=True).to(setup.device)
    options: dict[str, Any] = {}
    if cache is not None:
        options["cache_implementation"] = cache
    with torch.inference_mode():
        out = setup.model.generate(
            **enc,
            do_sample=True,
            temperature=1.0,
            top_k=0,
            top_p=top_p,
            max_new_tokens=tokens,
            min_new_tokens=tokens,
            num_return_sequences=n,
            pad_token_id=0,
            **options,
        )
    return int(out.shape[0] * (out.shape[1] - enc["input_ids"].shape[1]))


def timed(setup: Setup, fn: Any, *args: Any) -> tuple[float, int]:
    fn(*args)  # warm-up: kernels, allocator, compilation
    sync(setup)
    start = time.perf_counter()
    produced = fn(*args)
    sync(setup)
    return time.perf_counter() - start, produced


def roofline(setup: Setup, rows: int, context: int) -> str:
    """Lower bound of one decode step for ``rows`` sequences at ``context`` tokens, bf16."""
    import torch

    if setup.device.type != "cuda":
        return "roofline: no device peak for a CPU run"
    name = torch.cuda.get_device_name(setup.device)
    peak = next((v for k, v in PEAKS.items() if k in name), None)
    if peak is None:
        return f"roofline: no peak figures for {name}"
    c = setup.model.config
    params = sum(p.numel() for p in setup.model.parameters())
    # Matmuls touch every weight once per row (the tied embedding as the output projection);
    # attention reads each row's KV cache: 2 (K, V) x layers x kv_heads x head_dim x context.
    flops = (
        2 * params * rows
        + 4 * c.num_hidden_layers * c.num_attention_heads * c.head_dim * context * rows
    )
    kv_bytes = 2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * context * rows * 2
    weight_bytes = params * 2
    seconds = max(flops / peak[0], (weight_bytes + kv_bytes) / peak[1])
    return (
        f"roofline ({name}, {rows} rows, context {context}): {flops / 1e12:.2f} TFLOP and "
        f"{(weight_bytes + kv_bytes) / 1e9:.2f} GB per step -> at least {seconds * 1e3:.3f} ms, "
        f"at most {rows / seconds:,.0f} tokens/s"
    )


def gpu_busy(setup: Setup, prompts: list[str], n: int, tokens: int) -> str:
    """Share of a metricwise cell's wall time the GPU spent in kernels (CUDA only)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    if setup.device.type != "cuda":
        return "GPU busy: not measured on a CPU run"
    run_metricwise(setup, prompts, n, tokens, 1.0, "metricwise")
    sync(setup)
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        run_metricwise(setup, prompts, n, tokens, 1.0, "metricwise")
        torch.cuda.synchronize()
    wall = time.perf_counter() - start
    busy = (
        sum(e.self_device_time_total for e in prof.key_averages() if e.device_type.name == "CUDA")
        / 1e6
    )
    return f"GPU busy ({len(prompts)} x {n} x {tokens} tokens, profiled): {busy:.3f} s of {wall:.3f} s wall ({busy / wall:.0%})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="one cell, 32 tokens")
    parser.add_argument(
        "--tokens", type=int, default=None, help="new tokens per sequence (default 128)"
    )
    parser.add_argument("--layers", type=int, default=None, help="override the layer count")
    parser.add_argument("--vocab", type=int, default=None, help="override the vocabulary size")
    parser.add_argument(
        "--phases",
        default=",".join([*METRICWISE_PHASES, *GENERATE_PHASES]),
        help="comma-separated phases",
    )
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (CPU runs)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    cpu = not args.device.startswith("cuda")
    if cpu and args.quick:  # CI keeps the code path working; the numbers mean nothing
        args.layers = args.layers or 2
        args.vocab = args.vocab or 8192
    tokens = args.tokens or (32 if args.quick else 128)
    cells = [(4, 4, 1.0)] if cpu and args.quick else [(64, 16, 1.0)] if args.quick else CELLS
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    unknown = [p for p in phases if p not in METRICWISE_PHASES and p not in GENERATE_PHASES]
    if unknown:
        parser.error(
            f"unknown phase(s) {', '.join(unknown)}; known: "
            + ", ".join([*METRICWISE_PHASES, *GENERATE_PHASES])
        )
    setup = build(args.device, args.layers, args.vocab)
    vocab = setup.model.config.vocab_size
    print(
        f"device {args.device} ({torch.cuda.get_device_name() if not cpu else 'cpu'}), "
        f"{setup.model.config.num_hidden_layers} layers, vocabulary {vocab}, {setup.dtype}, "
        f"{PROMPT_TOKENS}-token prompts, {tokens} new tokens, torch {torch.__version__}\n"
    )
    print("| prompts x n | top-p | phase | tokens | seconds | tokens/s | metricwise / phase |")
    print("|---|---|---|---:|---:|---:|---:|")
    for p_count, n, top_p in cells:
        prompts = prompts_for(p_count, vocab)
        rates: dict[str, float] = {}
        for phase in phases:
            if top_p < 1.0 and phase not in ("metricwise", "every_step", "generate"):
                continue
            original_forward = setup.model.forward
            try:
                if phase in METRICWISE_PHASES:
                    seconds, produced = timed(
                        setup, run_metricwise, setup, prompts, n, tokens, top_p, phase
                    )
                else:
                    cache, compiled = GENERATE_PHASES[phase]
                    if compiled:
                        setup.model.forward = torch.compile(
                            original_forward, mode="reduce-overhead"
                        )
                    seconds, produced = timed(
                        setup, run_generate, setup, prompts, n, tokens, top_p, cache
                    )
            except (
                Exception
            ) as exc:  # a phase the model or device cannot run is reported, not fatal
                print(
                    f"| {p_count} x {n} | {top_p:g} | {phase} | failed: {type(exc).__name__}: {str(exc)[:80]} | | | |"
                )
                continue
            finally:
                setup.model.forward = original_forward
            rates[phase] = produced / seconds
            ratio = (
                f"{rates['metricwise'] / rates[phase]:.2f}x"
                if "metricwise" in rates and phase != "metricwise"
                else ""
            )
            print(
                f"| {p_count} x {n} | {top_p:g} | {phase} | {produced} | {seconds:.3f} | "
                f"{rates[phase]:,.0f} | {ratio} |",
                flush=True,
            )
    print()
    if LARGEST_BATCH:
        print(
            "Largest batch metricwise decoded at once (sequences; memory-sized batches): "
            + ", ".join(f"{cell}: {rows}" for cell, rows in LARGEST_BATCH.items())
            + "\n"
        )
    busy_cell = (4, 4) if cpu else (64, 16)
    print(gpu_busy(setup, prompts_for(busy_cell[0], vocab), busy_cell[1], min(tokens, 64)))
    print(roofline(setup, busy_cell[0] * busy_cell[1], PROMPT_TOKENS + tokens // 2))


if __name__ == "__main__":
    for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(_name, "1")
    main()
