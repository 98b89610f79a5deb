"""Hugging Face transformers backend: N samples per prompt from one prefill.

For a batch of P prompts and n samples each, the prompts are left-padded and prefilled once
(P rows, not P x n), the KV cache is repeated to the P x n sequences, and all of them are decoded
as one batch. Finished sequences are dropped from the batch (and the cache) as they end.

The decode loop keeps tokens, log-probabilities and random numbers on the model's device and
reads them back every ``sync_every`` steps (1 on a CPU, where reading back costs nothing, so that
finished rows leave the batch at once; 16 on an accelerator, where every read waits for the
device to finish its queue). The host then replays those steps' bookkeeping (EOS, stop strings,
the repetition guard, the wall-clock budget) in order and drops the finished rows; a row that
ended inside a window is decoded to its end and its extra tokens ignored, so the samples are the
same whatever ``sync_every`` up to rounding (the batch's shape changes the logits by rounding,
see below).

Per step, for every active sequence:

- ``logp += log_softmax(raw logits)[token]``: the raw model (temperature 1, no truncation);
- ``logq += log_softmax(processed logits)[token]``: the distribution actually sampled, after
  temperature, then top-k, then top-p, then min-p (the order transformers applies them);
- the token is drawn by inverse-CDF sampling with one uniform number from the sequence's own
  random stream (see :func:`metricwise.backends.base.sample_seed`), so its random numbers do not
  depend on which other prompts or samples share its batch, and sample ``i`` of a set can be
  drawn later (n=16 extended to 32). The logits do depend on the batch, by rounding only (left
  padding and the batch's shape: about 2e-5 for gemma-3-270m in float32 on a CPU), which flips
  a token whose uniform number falls that close to a CDF boundary (2 to 7 of 64 samples in
  ``bench/batch_invariance.py``); the same call with the same batch repeats bitwise.

The per-step work over the vocabulary is one max, one ``exp`` into a reused scratch buffer and
block sums (:class:`TokenSelector`); neither a log-softmax nor a full cumulative sum is
materialised. With Gemma 3's 262k-token vocabulary and 128 sequences, the straightforward
``log_softmax`` / ``cumsum`` version spent a third of the decoding time there.

EOS and the token that completes a stop string are included in ``logp``/``logq`` and
``n_tokens``; the returned text excludes EOS and everything from the stop string on.

Two KV caches (``kv_cache``):

- ``dynamic`` (on a CPU, and for models without a static cache): the cache grows by one
  position per step and finished rows leave the batch at each read-back.
- ``static`` (by default on CUDA where the model supports it): transformers' ``StaticCache``,
  sized once per batch (prompt width + ``max_tokens``, rounded up to
  :data:`STATIC_CACHE_ROUNDING`), a fixed (rows, capacity) attention mask, and finished rows kept
  in the batch (their tokens ignored) until every row has finished. Every step has the same
  shapes, so nothing in a step, the model's mask building included, reads the device (with a
  dynamic cache transformers checks the padding mask on the host every step), and the step can
  be compiled (``compile``: ``torch.compile``, with CUDA graphs on CUDA). The samples are those
  of the dynamic cache up to rounding (the attention runs over the masked capacity).
  A compiled step decodes every batch in one cache kept between calls (a batch's rows are
  copied into it), so that its tensors keep their addresses and the CUDA graphs recorded for
  one batch replay for the next of the same shape; a new address would record them again.
  Not compiled, a sliding-window layer (Gemma 3's, 512 tokens) whose window is full makes a
  small host-to-device copy every step in transformers' cache code, which waits for the
  device: ``compile=False`` with such a model and long prompts is not free of host syncs.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import os
import time
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from metricwise.backends.base import (
    DecodeState,
    check_prompt_lengths,
    looks_like_control_token,
    prompt_excerpt,
    register_backend,
    sample_seed,
    sample_sets,
)
from metricwise.backends.sampling import CDF_BLOCK, is_ancestral
from metricwise.backends.truncation import top_p_filter
from metricwise.errors import BackendError, InvalidParameterError, SamplingTimeout, import_torch
from metricwise.guards import Guards
from metricwise.types import Candidate, SampleSet, SamplingConfig, TokenLogprob

_torch = functools.partial(import_torch, "The hf backend")


def process_logits(
    logits: Any, config: SamplingConfig, *, out: Any = None, scratch: Any = None
) -> Any:
    """Apply temperature, top-k, top-p and min-p to raw logits, shape (B, V), float32.

    Removed tokens get ``-inf``. ``log_softmax`` of the result is the sampling distribution q.
    Matches transformers' ``TemperatureLogitsWarper``, ``TopKLogitsWarper``,
    ``TopPLogitsWarper`` and ``MinPLogitsWarper`` applied in that order.

    ``out`` (shape (B, V) float32) and ``scratch`` (shape (B, V) bool), when given, are written
    in place of fresh tensors: a decode reuses them every step, because a fresh (B, V) tensor
    costs page faults on a CPU comparable to the arithmetic itself. The values are the same.
    """
    torch = _torch()
    scores = torch.empty_like(logits) if out is None else out
    if config.temperature != 1.0:
        torch.div(logits, config.temperature, out=scores)
    else:
        scores.copy_(logits)
    vocab = scores.shape[-1]
    if 0 < config.top_k < vocab:
        kth = torch.topk(scores, config.top_k, dim=-1).values[:, -1:]
        scores.masked_fill_(torch.lt(scores, kth, out=scratch), -math.inf)
    if config.top_p < 1.0:
        # On an accelerator the radix select, which never waits for the device; on a CPU the
        # partial sort, which reads a flag back (free there) and is cheaper. Same kept set.
        scores = top_p_filter(scores, config.top_p, sync_free=scores.device.type != "cpu")
    if config.min_p > 0.0:
        probs = torch.softmax(scores, dim=-1)
        threshold = config.min_p * probs.max(dim=-1, keepdim=True).values
        scores.masked_fill_(torch.lt(probs, threshold, out=scratch), -math.inf)
    return scores


class TokenSelector:
    """Each row's next token and its log-probabilities under p (raw model) and q (sampler).

    Holds (rows, V) float32 scratch buffers for the whole decode, because allocating a fresh
    (rows, V) tensor every step costs page faults comparable to the arithmetic itself on CPU.

    Parameters
    ----------
    rows:
        The largest batch the selector will see (it may shrink as sequences finish).
    vocab:
        V, the width of the logits.
    config:
        The sampling configuration; ``temperature == 1`` with no truncation is ancestral
        sampling, where q is p and a single pass serves both.
    """

    def __init__(self, rows: int, vocab: int, config: SamplingConfig, device: Any) -> None:
        torch = _torch()
        self.config = config
        self.vocab = vocab
        self.blocks = -(-vocab // CDF_BLOCK)
        width = self.blocks * CDF_BLOCK
        # The padding past V stays zero: padded ids have no weight and are never drawn.
        self.raw = torch.zeros(rows, width, device=device)
        self.ancestral = is_ancestral(config)
        # Allocated on the first sampled step that needs them (greedy never does): q's weights,
        # and process_logits' scores and comparison mask.
        self.q: Any = None
        self.scores: Any = None
        self.scratch: Any = None
        #: The raw logsumexp (B,) float64 of the last call's logits.
        self.lse_raw: Any = None

    def _weights(self, scores: Any, buffer: Any) -> tuple[Any, Any, Any]:
        """``exp(scores - max)`` into ``buffer`` (rows, V padded), its block sums, and logsumexp (float64)."""
        torch = _torch()
        rows = scores.shape[0]
        top = scores.amax(dim=-1, keepdim=True)
        weights = buffer[:rows]
        torch.sub(scores, top, out=weights[:, : self.vocab])
        weights[:, : self.vocab].exp_()
        # float32 sums of 1024 values (relative error ~1e-6), accumulated across blocks in float64.
        block_sums = weights.view(rows, self.blocks, CDF_BLOCK).sum(dim=-1).double()
        lse = top.squeeze(-1).double() + block_sums.sum(dim=-1).log()
        return weights, block_sums, lse

    def __call__(self, logits: Any, uniforms: Any) -> tuple[Any, Any, Any]:
        """Choose tokens for ``logits`` (shape (B, V), float32).

        ``uniforms`` (shape (B,), float64, each in (0, 1]) drive inverse-CDF sampling from q; None
        is greedy (argmax). Returns ``tokens`` (B,) int64, and ``logp`` and ``logq`` (B,)
        float64 in nats (``logq`` is 0 for greedy), all on the logits' device: nothing here
        waits for the device.
        """
        torch = _torch()
        raw_weights, raw_blocks, lse_raw = self._weights(logits, self.raw)
        self.lse_raw = lse_raw  # for the callers that read the raw log-probabilities of others
        if uniforms is None:
            tokens = logits.argmax(dim=-1)
            logq = torch.zeros(logits.shape[0], dtype=torch.float64, device=logits.device)
        else:
            if self.ancestral:
                scores, weights, blocks, lse_q = logits, raw_weights, raw_blocks, lse_raw
            else:
                if self.q is None:
                    self.q = torch.zeros_like(self.raw)
                    self.scores = torch.empty(self.raw.shape[0], self.vocab, device=self.raw.device)
                    self.scratch = torch.empty_like(self.scores, dtype=torch.bool)
                rows = logits.shape[0]
                scores = process_logits(
                    logits, self.config, out=self.scores[:rows], scratch=self.scratch[:rows]
                )
                weights, blocks, lse_q = self._weights(scores, self.q)
            tokens = self._inverse_cdf(weights, blocks, uniforms.to(blocks.device))
            logq = scores.gather(1, tokens[:, None]).squeeze(-1).double() - lse_q
        logp = logits.gather(1, tokens[:, None]).squeeze(-1).double() - lse_raw
        return tokens, logp, logq

    def _inverse_cdf(self, weights: Any, block_sums: Any, uniforms: Any) -> Any:
        """Per row, the first id whose cumulative weight reaches ``u * total``.

        Two levels: the block is found from the cumulative block sums, then only that block's
        1024 weights are cumulated (the same search as the llamacpp backend's numpy kernel).
        """
        torch = _torch()
        rows = weights.shape[0]
        cum = block_sums.cumsum(dim=-1)
        targets = uniforms * cum[:, -1]
        block = (cum < targets[:, None]).sum(dim=-1).clamp(max=self.blocks - 1)
        blocked = weights.view(rows, self.blocks, CDF_BLOCK)
        row_index = torch.arange(rows, device=weights.device)
        inside = blocked[row_index, block]
        before = (cum.gather(1, block[:, None]) - block_sums.gather(1, block[:, None])).squeeze(-1)
        inner = inside.double().cumsum(dim=-1) + before[:, None]
        position = torch.searchsorted(inner, targets[:, None]).squeeze(-1).clamp(max=CDF_BLOCK - 1)
        tokens = block * CDF_BLOCK + position
        # Rounding at a block edge can land on an id with no weight: take the first id at or
        # after it that has weight, else the last one that has. Computed for every row, so that
        # no row has to be picked out on the host.
        ids = torch.arange(CDF_BLOCK, device=weights.device)
        block_ids = torch.arange(self.blocks, device=weights.device)
        weighted_blocks = block_sums > 0
        here = torch.where((inside > 0) & (ids >= position[:, None]), ids, CDF_BLOCK).amin(-1)
        later = weighted_blocks & (block_ids > block[:, None])
        next_block = torch.where(later, block_ids, self.blocks).amin(-1)
        next_block_first = torch.where(
            blocked[row_index, next_block.clamp(max=self.blocks - 1)] > 0, ids, CDF_BLOCK
        ).amin(-1)
        last_block = torch.where(weighted_blocks, block_ids, 0).amax(-1)
        last_id = torch.where(blocked[row_index, last_block] > 0, ids, 0).amax(-1)
        nearest = torch.where(
            here < CDF_BLOCK,
            block * CDF_BLOCK + here,
            torch.where(
                next_block < self.blocks,
                next_block * CDF_BLOCK + next_block_first,
                last_block * CDF_BLOCK + last_id,
            ),
        )
        return torch.where(inside.gather(1, position[:, None]).squeeze(-1) > 0, tokens, nearest)


@register_backend("hf")
class HFBackend:
    """Sample from a transformers causal LM (a named model, a local directory, a GGUF file or a hub id).

    Parameters
    ----------
    model:
        A name for :func:`metricwise.models.load_hf_causal_lm`, or an already loaded
        ``PreTrainedModel`` (then ``tokenizer`` is required).
    tokenizer:
        The tokenizer, when ``model`` is an object.
    device, dtype:
        Where and in which precision to load the model (``dtype`` as for transformers).
    guards:
        Runaway-generation policy; see :class:`metricwise.guards.Guards`.
    signature:
        Identifies the model in the sample store; derived from the model name by default.
    reuse_prefill:
        Keep a copy of the last prompt batch's prefill (its KV cache) so that following calls
        on the same prompts or a subset of them (greedy, then the samples; the rounds of
        adaptive sampling) skip another pass over the prompts. Costs one batch's KV cache of
        memory between calls (and a copy of it per reuse); False turns it off.
    sync_every:
        Decoding steps between two reads of the device (see the module docstring); by default
        1 on a CPU and 16 elsewhere.
    max_batch_rows:
        The most sequences decoded at once; by default as many as fit in memory
        (:meth:`rows_that_fit`). Prompts x n sequences beyond it are decoded in several
        batches, which changes the logits by rounding only.
    kv_cache:
        ``"dynamic"``, ``"static"`` or ``"auto"`` (static on a CUDA device when the model
        supports it, dynamic otherwise); see the module docstring. ``"static"`` for a model
        without static-cache support is refused, naming the reason.
    compile:
        Compile the decoding step with ``torch.compile`` (mode ``reduce-overhead``, i.e. CUDA
        graphs, on CUDA). Needs the static cache. None (default): on with a static cache on
        CUDA, as transformers' ``generate`` does. The first batch of each new shape pays for the
        compilation; when compiling fails, a warning says why and the batch is decoded without.
        Holds the last batch's decode cache between calls (its graphs replay for the next batch
        of that shape); :meth:`close` frees it.
    sdpa_backends:
        The scaled-dot-product attention kernels the model may use, any of ``flash``,
        ``efficient``, ``cudnn``, ``math`` (a sequence, or one string joined by ``+``), or None
        for torch's own choice. ``"auto"`` (default): every kernel but cuDNN's on CUDA
        (:data:`CUDA_SDPA_BACKENDS`), torch's choice elsewhere. Only models that run SDPA are
        affected.
    """

    def __init__(
        self,
        model: Any,
        *,
        tokenizer: Any = None,
        device: str = "cpu",
        dtype: Any = None,
        guards: Guards | None = None,
        signature: str | None = None,
        reuse_prefill: bool = True,
        sync_every: int | None = None,
        max_batch_rows: int | None = None,
        kv_cache: str = "auto",
        compile: bool | None = None,
        sdpa_backends: str | Sequence[str] | None = "auto",
    ) -> None:
        torch = _torch()
        if kv_cache not in ("auto", "dynamic", "static"):
            raise InvalidParameterError(
                f"The 'kv_cache' parameter of HFBackend must be 'auto', 'dynamic' or 'static'. Got {kv_cache!r} instead."
            )
        if compile not in (None, True, False):
            raise InvalidParameterError(
                f"The 'compile' parameter of HFBackend must be true, false or None. Got {compile!r} instead."
            )
        for name, value in (("sync_every", sync_every), ("max_batch_rows", max_batch_rows)):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise InvalidParameterError(
                    f"The {name!r} parameter of HFBackend must be an int >= 1. Got {value!r} instead."
                )
        if compile and kv_cache == "dynamic":
            raise InvalidParameterError(
                "compile=True needs kv_cache='static' (a dynamic cache changes shape every step). "
                "Got kv_cache='dynamic' instead."
            )
        self.device = torch.device(device)
        self.sdpa_backends = _sdpa_backends(sdpa_backends, self.device)
        self.max_batch_rows = max_batch_rows
        #: The most sequences decoded at once so far (memory-sized batches; see rows_that_fit).
        self.largest_batch = 0
        if model is None:
            from metricwise.models import DEFAULT_MODEL

            model = DEFAULT_MODEL
        if isinstance(model, str):
            from metricwise.models import load_hf_causal_lm, resolve_model

            resolved = resolve_model(model)
            self.model, self.tokenizer = load_hf_causal_lm(model, device=device, dtype=dtype)
            default_signature = f"hf:{getattr(resolved, 'signature', model)}"
        else:
            if tokenizer is None:
                raise InvalidParameterError(
                    "The 'tokenizer' parameter of HFBackend is required when 'model' is a model object."
                )
            self.model, self.tokenizer = model, tokenizer
            default_signature = (
                f"hf:{getattr(model.config, '_name_or_path', '') or type(model).__name__}"
            )
        self.model.eval()
        self.sync_every = sync_every or (1 if self.device.type == "cpu" else 16)
        unsupported = _static_cache_unsupported(self.model)
        if kv_cache == "static" and unsupported:
            raise InvalidParameterError(
                f"kv_cache='static' is not available for this model: {unsupported}. Use kv_cache='dynamic'."
            )
        #: "static" or "dynamic": the KV cache the decode loop uses (see the module docstring).
        self.kv_cache = (
            "static"
            if kv_cache == "static"
            or (kv_cache == "auto" and self.device.type == "cuda" and not unsupported)
            else "dynamic"
        )
        if compile and self.kv_cache != "static":
            raise InvalidParameterError(
                f"compile=True needs a static KV cache, which this model cannot use: {unsupported}."
                if unsupported
                else "compile=True needs kv_cache='static' (a dynamic cache changes shape every "
                f"step, and kv_cache='auto' is dynamic on {self.device.type}): add kv_cache='static'."
            )
        #: Whether the decoding step runs through torch.compile.
        self.compile = (
            compile
            if compile is not None
            else self.kv_cache == "static" and self.device.type == "cuda"
        )
        self._compiled_forward: Any = None
        #: The static cache compiled steps decode in, kept across batches (see _decode_cache).
        self._held_decode_cache: Any = None
        self.guards = guards or Guards()
        self.signature = signature or default_signature
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        #: Token ids that end a sample (EOS and control tokens); see :func:`_end_ids`.
        self.end_ids = _end_ids(self.model, self.tokenizer)
        #: Prefill forward passes run so far (tests check one per prompt batch).
        self.prefill_calls = 0
        #: (prompts, prefill result, static cache capacity or None) of the last prompt batch;
        #: see :meth:`_prefill`.
        self._kept_prefill: tuple[tuple[str, ...], tuple[Any, Any, Any, Any], int | None] | None = (
            None
        )
        self.reuse_prefill = reuse_prefill
        # transformers 5.x renamed forward's past_key_values to cache and warns on the old name
        # (a FutureWarning on every call would reach the user); older versions know only the old one.
        forward = inspect.signature(self.model.forward).parameters
        self._cache_argument = "cache" if "cache" in forward else "past_key_values"
        # Older transformers index a static cache by an explicit cache_position (the same for
        # every row, since the batch is left-padded); newer ones keep the length in the cache.
        self._cache_position_argument = "cache_position" in forward

    # -- protocol --------------------------------------------------------------------------
    def sample(
        self,
        prompts: Sequence[str],
        config: SamplingConfig,
        *,
        start: int = 0,
        token_logprobs: int | None = None,
        on_text: Any = None,
    ) -> list[SampleSet]:
        """The protocol's ``sample``. ``token_logprobs=k`` (an int >= 0) also gives every
        candidate its per-token log-probabilities with the ``k`` most probable alternatives
        at each position (:attr:`~metricwise.types.Candidate.tokens`); None (default) gives
        the sequence totals only, and the samples are the same either way.

        ``on_text(prompt_index, sample_index, text)``, when given, is called from the decode
        loop as samples grow (at most every :data:`STREAM_INTERVAL` seconds per batch, and as
        each one ends) with the settled text so far (see
        :meth:`~metricwise.backends.base.DecodeState.text_so_far`); ``sample_index`` counts
        from ``start``, and greedy decoding (temperature 0) reports sample 0 only."""
        # One wall-clock budget for the whole call (--max_seconds is per batch of prompts),
        # read by every chunk _decode_fitting makes; the greedy path starts its own.
        deadline = self.guards.deadline()

        def draw(batch: list[str], m: int) -> list[list[Candidate]]:
            return self._decode_fitting(batch, m, config, start, deadline, token_logprobs, on_text)

        def greedy(batch: Sequence[str], c: SamplingConfig) -> list[Candidate]:
            rows = self._decode_fitting(
                list(batch), 1, c, None, self.guards.deadline(), token_logprobs, on_text
            )
            return [row[0] for row in rows]

        return sample_sets(prompts, config, start, greedy, draw)

    def greedy(
        self, prompts: Sequence[str], config: SamplingConfig, *, token_logprobs: int | None = None
    ) -> list[Candidate]:
        deadline = self.guards.deadline()
        rows = self._decode_fitting(list(prompts), 1, config, None, deadline, token_logprobs)
        return [row[0] for row in rows]

    # -- batches that fit in memory -------------------------------------------------------------
    def _decode_fitting(
        self,
        prompts: list[str],
        m: int,
        config: SamplingConfig,
        start: int | None,
        deadline: float,
        token_logprobs: int | None = None,
        on_text: Any = None,
    ) -> list[list[Candidate]]:
        """``m`` candidates per prompt (samples ``start .. start + m - 1``; ``start=None`` is
        greedy), decoded in as few batches as fit in memory (:meth:`rows_that_fit`): whole
        prompts while their ``m`` rows fit together, else one prompt's samples in chunks (its
        prefill is kept and reused between the chunks).

        Every chunk reads the one monotonic ``deadline`` of the call: a budget of
        ``max_seconds`` bounds the whole call, however many chunks memory asks for."""
        if not prompts:
            return []
        lengths = [len(ids) for ids in self.tokenizer(prompts)["input_ids"]]
        fit = self.rows_that_fit(max(lengths) + config.max_tokens)
        per_call = max(1, fit // m) if m <= fit else 1
        chunk = min(m, fit)
        rows: list[list[Candidate]] = []
        chunks = -(-len(prompts) // per_call) * -(-m // chunk)
        for first in range(0, len(prompts), per_call):
            group = prompts[first : first + per_call]
            got: list[list[Candidate]] = [[] for _ in group]
            for j0 in range(0, m, chunk):
                count = min(chunk, m - j0)
                seeds = (
                    None
                    if start is None
                    else [
                        sample_seed(config.seed, start + j0 + j, p)
                        for p in group
                        for j in range(count)
                    ]
                )
                if time.monotonic() > deadline:
                    done = len(rows) * m + sum(map(len, got))
                    raise SamplingTimeout(
                        f"Decoding {len(prompts)} prompts x {m} sequences ran past the wall-clock "
                        f"budget of {self.guards.max_seconds:g} s (--max_seconds) after {done} of "
                        f"them ({chunks} batches of at most {min(m, fit) * per_call} rows fit in "
                        "memory); nothing from this call was kept. Raise --max_seconds or ask for "
                        "fewer prompts or samples at once (--batch_size, -n)."
                    )
                report = None
                if on_text is not None:

                    def report(
                        seq: int, text: str, p0: int = first, j0: int = j0, c: int = count
                    ) -> None:
                        on_text(p0 + seq // c, j0 + seq % c, text)

                cands = self._decode(group, count, config, seeds, deadline, token_logprobs, report)
                for i in range(len(group)):
                    got[i] += cands[i * count : (i + 1) * count]
            rows += got
        return rows

    def rows_that_fit(self, tokens: int) -> int:
        """How many sequences of ``tokens`` tokens (prompt and new ones) one decode may hold.

        ``max_batch_rows`` when set; otherwise the memory left for decoding (on a CUDA device
        its free memory now; on a CPU half the machine's RAM, so that a run splits the same way
        whatever else is running) over one row's share: its KV cache
        (2 x layers x key-value heads x head size x the parameters' bytes per number x
        ``tokens``, rounded up as a static cache is) and the (rows, vocabulary) float32 buffers of a sampling step
        (:data:`_SAMPLING_BUFFERS` of them). An estimate: a fifth of the memory is kept back.
        """
        if self.max_batch_rows is not None:
            return self.max_batch_rows
        free = _memory_for_decoding(self.device)
        if free is None:
            return 1 << 30
        free += _cache_bytes(self._held_decode_cache)  # the next batch reuses or replaces it
        config = getattr(self.model.config, "text_config", None) or self.model.config
        heads = int(getattr(config, "num_attention_heads", 1) or 1)
        kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
        head_dim = int(
            getattr(config, "head_dim", None) or getattr(config, "hidden_size", heads) // heads
        )
        layers = int(getattr(config, "num_hidden_layers", 1) or 1)
        element = next(self.model.parameters()).element_size()
        vocab = int(getattr(config, "vocab_size", 0) or 0)
        if self.kv_cache == "static":  # the capacity it allocates (see _prefill)
            tokens = -(-tokens // STATIC_CACHE_ROUNDING) * STATIC_CACHE_ROUNDING
        per_row = 2 * layers * kv_heads * head_dim * element * tokens
        per_row += _SAMPLING_BUFFERS * 4 * (-(-vocab // CDF_BLOCK) * CDF_BLOCK)
        return max(1, int(0.8 * free) // max(1, per_row))

    def close(self) -> None:
        self.model = None
        self._kept_prefill = None
        self._held_decode_cache = None

    # -- teacher-forced scoring ------------------------------------------------------------------
    def continuation_logprobs(
        self, prompts: Sequence[str], continuations: Sequence[str]
    ) -> np.ndarray:
        """Shape (P, K) float64: ``log p(continuation_k | prompt_i)`` in nats, teacher-forced.

        The prompt is tokenised as for sampling (with the tokenizer's special tokens), each
        continuation on its own without them, and its tokens are appended to the prompt's (see
        :func:`metricwise.backends.base.continuation_logprobs`). When every continuation is one
        token (the judge's "1" .. "5"), one left-padded pass over the prompts gives all of them
        from the next-token distribution; otherwise each prompt's K sequences prompt +
        continuation are scored in one left-padded pass.
        """
        torch = _torch()
        if not prompts or not continuations:
            return np.zeros((len(prompts), len(continuations)))
        cont_ids = [self.tokenizer(c, add_special_tokens=False)["input_ids"] for c in continuations]
        for c, ids in zip(continuations, cont_ids, strict=True):
            if not ids:
                raise InvalidParameterError(
                    f"The 'continuations' parameter of continuation_logprobs must be texts of at "
                    f"least one token. Got {c!r} instead."
                )
        prompt_ids = [self.tokenizer(p)["input_ids"] for p in prompts]
        longest = max(len(ids) for ids in cont_ids)
        self._check_lengths([len(ids) for ids in prompt_ids], longest, list(prompts))
        pad = int(self.tokenizer.pad_token_id)
        with torch.inference_mode():
            if longest == 1:
                width = max(len(ids) for ids in prompt_ids)
                rows = [[pad] * (width - len(ids)) + ids for ids in prompt_ids]
                mask = [[0] * (width - len(ids)) + [1] * len(ids) for ids in prompt_ids]
                attention = torch.tensor(mask, device=self.device)
                out = self.model(
                    input_ids=torch.tensor(rows, device=self.device),
                    attention_mask=attention,
                    position_ids=(attention.cumsum(-1) - 1).clamp(min=0),
                    logits_to_keep=1,
                    use_cache=False,
                )
                logp = torch.log_softmax(out.logits[:, -1, :].double(), dim=-1)
                targets = torch.tensor([ids[0] for ids in cont_ids], device=logp.device)
                return logp[:, targets].cpu().numpy()
            # One pass per prompt over its K sequences, left-padded so that every continuation
            # ends the row and only the last ``longest + 1`` positions' logits are materialised.
            out_values = np.empty((len(prompts), len(continuations)))
            for p, ids in enumerate(prompt_ids):
                full = [ids + c for c in cont_ids]
                width = max(len(f) for f in full)
                attention = torch.tensor(
                    [[0] * (width - len(f)) + [1] * len(f) for f in full], device=self.device
                )
                out = self.model(
                    input_ids=torch.tensor(
                        [[pad] * (width - len(f)) + f for f in full], device=self.device
                    ),
                    attention_mask=attention,
                    position_ids=(attention.cumsum(-1) - 1).clamp(min=0),
                    logits_to_keep=longest + 1,
                    use_cache=False,
                )
                logits = out.logits.double()  # (K, longest + 1, V); the last predicts nothing
                for k, c in enumerate(cont_ids):
                    rows = logits[k, longest - len(c) : longest]
                    logp = torch.log_softmax(rows, dim=-1)
                    target = torch.tensor(c, device=logp.device)
                    out_values[p, k] = float(logp[torch.arange(len(c)), target].sum())
            return out_values

    def prompt_logprobs(
        self, prompts: Sequence[str | Sequence[int]], top: int = 0, extra: int = 0
    ) -> list[tuple[TokenLogprob, ...]]:
        """Every token of each prompt with its teacher-forced log-probability (what OpenAI's
        completions return with ``echo`` and ``logprobs``), then ``extra`` (0 or 1) greedy
        tokens after it; used to serve lm-eval's loglikelihood requests.

        A prompt is a text, tokenised as for sampling (with the tokenizer's special tokens), or
        token ids used as given. Entry ``t`` of a prompt's tuple is its token ``t``: its text,
        ``log p(token_t | tokens_<t)`` in nats (NaN for the first token, which has no context)
        and the ``top`` most probable tokens at its position (none for the first). With
        ``extra=1`` one more entry follows: the most probable next token (temperature 0), with
        its own alternatives. One forward pass per prompt; the log-softmax is taken in float64
        over a bounded number of positions at a time (Gemma 3 has 262k tokens).
        """
        torch = _torch()
        if extra not in (0, 1):
            raise InvalidParameterError(
                f"The 'extra' parameter of prompt_logprobs must be 0 or 1. Got {extra!r} instead."
            )
        vocab = int(self.model.get_output_embeddings().weight.shape[0])
        rows: list[list[int]] = []
        for p, prompt in enumerate(prompts):
            if isinstance(prompt, str):
                rows.append(list(self.tokenizer(prompt)["input_ids"]))
                continue
            ids = [int(i) for i in prompt]
            bad = [i for i in ids if not 0 <= i < vocab]
            if bad:
                raise InvalidParameterError(
                    f"Prompt {p} of the batch has token ids outside the model's vocabulary "
                    f"(0 .. {vocab - 1}): {bad[:5]}."
                )
            rows.append(ids)
        labels = [p if isinstance(p, str) else f"<{len(p)} token ids>" for p in prompts]
        self._check_lengths([len(r) for r in rows], extra, labels)
        k = min(top, vocab)
        out: list[tuple[TokenLogprob, ...]] = []
        with torch.inference_mode():
            for ids in rows:
                logits = self.model(
                    input_ids=torch.tensor([ids], device=self.device), use_cache=False
                ).logits[0]
                # Position t predicts token t + 1; the last position predicts the extra token.
                targets = ids[1:]
                chosen: list[float] = []
                alternatives: list[tuple[list[int], list[float]]] = []
                for lo in range(0, len(ids), _SCORE_CHUNK):
                    logp = torch.log_softmax(logits[lo : lo + _SCORE_CHUNK].double(), dim=-1)
                    hi = lo + logp.shape[0]
                    want = targets[lo:hi]
                    if want:
                        picked = logp[torch.arange(len(want)), torch.tensor(want)]
                        chosen += picked.cpu().tolist()
                    if k or (extra and hi == len(ids)):
                        values, index = torch.topk(logp, max(k, 1), dim=-1)
                        alternatives += zip(
                            index.cpu().tolist(), values.cpu().tolist(), strict=True
                        )
                tokens = [TokenLogprob(self._token_text(ids[0]), math.nan, ids[0])]
                for t, token in enumerate(targets):
                    top_ids, top_values = alternatives[t] if k else ((), ())
                    tokens.append(
                        TokenLogprob(
                            self._token_text(token),
                            chosen[t],
                            token,
                            tuple(
                                (self._token_text(i), v, i)
                                for i, v in zip(top_ids[:k], top_values[:k], strict=True)
                            ),
                        )
                    )
                if extra:
                    top_ids, top_values = alternatives[-1]
                    token = top_ids[0]
                    tokens.append(
                        TokenLogprob(
                            "" if token in self.end_ids else self._token_text(token),
                            top_values[0],
                            token,
                            tuple(
                                (self._token_text(i), v, i)
                                for i, v in zip(top_ids[:k], top_values[:k], strict=True)
                            ),
                        )
                    )
                out.append(tuple(tokens))
        return out

    # -- prefill -------------------------------------------------------------------------------
    def _prefill(self, prompts: list[str], max_tokens: int) -> tuple[Any, Any, Any, Any]:
        """Run the prompt batch once: last-position logits (P, V) float32, the KV cache (of the
        backend's ``kv_cache`` kind; a static one holds the prompts and ``max_tokens`` more
        positions at least), the attention mask and position ids (P, L), left-padded.

        Every prompt's token count is checked first (:meth:`_check_lengths`), before any
        forward pass, with room for ``max_tokens`` new tokens.

        A copy of the result is kept for the following calls: while they ask for the same
        prompts or some of them (the evaluation harness asks for greedy and then the N samples
        of one batch; adaptive sampling asks for the unsettled prompts of a batch round after
        round), a copy of the kept rows is used instead of another forward pass over the
        prompts. Decoding extends the cache in place, hence the copies.
        """
        torch = _torch()
        import copy

        from transformers import DynamicCache, StaticCache

        key = tuple(prompts)
        if self._kept_prefill is not None:
            kept_prompts, kept, kept_capacity = self._kept_prefill
            rows = _rows_within(kept_prompts, key)
            roomy = kept_capacity is None or kept_capacity >= kept[2].shape[1] + max_tokens
            if rows is not None and roomy:
                return self._reuse_prefill(kept, rows, max_tokens, list(key))
        self._kept_prefill = None
        self.tokenizer.padding_side = "left"
        enc = self.tokenizer(prompts, return_tensors="pt", padding=True)
        input_ids = enc["input_ids"].to(self.device)
        attention = enc["attention_mask"].to(self.device)
        self._check_lengths(attention.sum(dim=-1).tolist(), max_tokens, prompts)
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        capacity: int | None = None
        cache: Any
        if self.kv_cache == "static":
            # Rounded up, so that batches of similar prompts share one compiled step.
            needed = input_ids.shape[1] + max_tokens
            capacity = -(-needed // STATIC_CACHE_ROUNDING) * STATIC_CACHE_ROUNDING
            cache = StaticCache(config=self.model.config, max_cache_len=capacity)
        else:
            cache = DynamicCache(config=self.model.config)
        try:
            with torch.inference_mode(), self._attention_kernels():
                out = self.model(
                    input_ids=input_ids,
                    attention_mask=attention,
                    position_ids=positions,
                    use_cache=True,
                    logits_to_keep=1,
                    **{self._cache_argument: cache},
                )
        except RuntimeError as exc:
            raise BackendError(f"The model failed on the prompt batch: {exc}") from exc
        self.prefill_calls += 1
        result = (out.logits[:, -1, :].float(), cache, attention, positions)
        if self.reuse_prefill:
            self._kept_prefill = (
                key,
                (result[0].clone(), copy.deepcopy(cache), attention, positions),
                capacity,
            )
        return result

    def _reuse_prefill(
        self, kept: tuple[Any, Any, Any, Any], rows: list[int], max_tokens: int, prompts: list[str]
    ) -> tuple[Any, Any, Any, Any]:
        """A copy of the ``rows`` of the ``kept`` prefill (rows of the kept batch that hold
        ``prompts``, in the order asked).

        The kept batch's left padding stays: a subset is padded to the kept batch's longest
        prompt, which the attention mask hides, so its prompts' KV values are the very ones
        the first call used and every round of an adaptive run decodes from the same numbers.
        """
        torch = _torch()
        import copy

        logits, cache, attention, positions = kept
        cache = copy.deepcopy(cache)
        if rows != list(range(attention.shape[0])):
            index = torch.tensor(rows, dtype=torch.long, device=attention.device)
            _select_cache_rows(cache, index)
            logits, attention, positions = logits[index], attention[index], positions[index]
        self._check_lengths(attention.sum(dim=-1).tolist(), max_tokens, prompts)
        return logits.clone(), cache, attention, positions

    # -- decoding ------------------------------------------------------------------------------
    def _decode(
        self,
        prompts: list[str],
        m: int,
        config: SamplingConfig,
        seeds: Sequence[tuple[int, ...]] | None,
        deadline: float,
        token_logprobs: int | None = None,
        on_text: Any = None,
    ) -> list[Candidate]:
        """Decode ``m`` continuations of every prompt; ``seeds=None`` is greedy; past the
        monotonic ``deadline`` the decode raises :class:`SamplingTimeout`.

        When the compiled step fails (torch.compile cannot handle the model, or its compiler is
        missing), the batch is decoded again without it, from a fresh copy of its prefill, and
        the backend stops compiling.
        """
        if not prompts:
            return []
        try:
            return self._decode_batch(
                prompts, m, config, seeds, deadline, token_logprobs, on_text, compiled=self.compile
            )
        except _CompileFailed as failure:
            warnings.warn(
                f"torch.compile failed on the decoding step ({failure}); decoding without it "
                "from now on (compile=False)",
                stacklevel=2,
            )
            self.compile = False
            # What compiling held (the decode cache, the compiled graphs' memory) is not needed.
            self._compiled_forward = self._held_decode_cache = None
            return self._decode_batch(
                prompts, m, config, seeds, deadline, token_logprobs, on_text, compiled=False
            )

    def _decode_batch(
        self,
        prompts: list[str],
        m: int,
        config: SamplingConfig,
        seeds: Sequence[tuple[int, ...]] | None,
        deadline: float,
        token_logprobs: int | None = None,
        on_text: Any = None,
        *,
        compiled: bool,
    ) -> list[Candidate]:
        torch = _torch()
        static = self.kv_cache == "static"
        logits, cache, attention, positions = self._prefill(prompts, config.max_tokens)
        total = len(prompts) * m
        if compiled:
            cache = self._decode_cache(cache, m)
        elif m > 1:
            _repeat_cache_rows(cache, m)
        if m > 1:
            logits = logits.repeat_interleave(m, dim=0)
            attention = attention.repeat_interleave(m, dim=0)
            positions = positions.repeat_interleave(m, dim=0)
        next_position = positions[:, -1:] + 1
        extra: dict[str, Any] = {}
        if static:
            # One mask for the whole decode: the prompts', then every position of the cache
            # (those past the current one are hidden by causality). Its width is the cache's
            # capacity, so that batches of other prompt widths have the same shapes.
            width = attention.shape[1]
            capacity = max(width + config.max_tokens, *(x.max_cache_len for x in cache.layers))
            attention = torch.cat([attention, attention.new_ones((total, capacity - width))], -1)
            if self._cache_position_argument:
                cache_positions = torch.arange(
                    width, width + config.max_tokens, device=attention.device
                )
            if compiled:
                _mark_static_addresses(cache)

        self.largest_batch = max(self.largest_batch, total)
        state = DecodeState(
            total,
            config,
            self.guards,
            self.end_ids.__contains__,
            self._detokenize,
            sampled=seeds is not None,
            token_logprobs=token_logprobs,
            token_text=self._token_text,
        )
        top_n = min(token_logprobs or 0, logits.shape[-1])
        tops: list[tuple[Any, Any]] = []  # the alternatives of the steps not read back yet
        uniforms = None if seeds is None else _uniforms(seeds, config.max_tokens, logits.device)
        active = np.arange(total)  # the sequence each row of the batch decodes
        rows = torch.arange(total, device=logits.device)  # the same, on the device
        going = list(range(total))  # the rows of the batch not finished yet
        window: list[tuple[Any, Any, Any]] = []  # the steps not read back yet
        window_start = 0

        select = TokenSelector(total, logits.shape[-1], config, logits.device)
        streamed = (0.0, [""] * total)  # when texts were last reported, and what they were
        forward = self._step_forward(compiled)  # raises _CompileFailed
        with torch.inference_mode(), self._attention_kernels():
            for step in range(config.max_tokens):
                chosen, p_chosen, q_chosen = select(
                    logits, None if uniforms is None else uniforms[rows, step]
                )
                window.append((chosen, p_chosen, q_chosen))
                if top_n:
                    # Raw log-probabilities less the selector's own logsumexp: the chosen
                    # token's entry equals its logp bitwise.
                    values, ids = torch.topk(logits, top_n, dim=-1)
                    tops.append((ids, values.double() - select.lse_raw[:, None]))
                if len(window) == self.sync_every or step == config.max_tokens - 1:
                    before = active[going].tolist()
                    going = _replay(
                        state, window, active, going, window_start, deadline, tops or None
                    )
                    if on_text is not None:
                        streamed = _stream_texts(state, before, streamed, on_text)
                    window, window_start, tops = [], step + 1, []
                    if not going:
                        break
                    # A dynamic cache drops the finished rows; a static one keeps its shape and
                    # decodes them on, their tokens ignored.
                    if not static and len(going) < len(active):
                        keep = torch.tensor(going, dtype=torch.long, device=self.device)
                        cache.batch_select_indices(keep)
                        attention = attention[keep]
                        next_position = next_position[keep]
                        chosen = chosen[keep]
                        rows = rows[keep]
                        active = active[going]
                        going = list(range(len(active)))
                if static:
                    if self._cache_position_argument:
                        extra["cache_position"] = cache_positions[step : step + 1]
                else:
                    attention = torch.cat([attention, attention.new_ones((len(active), 1))], dim=-1)
                if compiled:
                    # The previous step's outputs are consumed: CUDA graphs may reuse their memory.
                    torch.compiler.cudagraph_mark_step_begin()
                try:
                    out = forward(
                        input_ids=chosen[:, None],
                        attention_mask=attention,
                        position_ids=next_position,
                        use_cache=True,
                        **{self._cache_argument: cache},
                        **extra,
                    )
                except Exception as exc:
                    # Out of memory is the batch's size, not the compiler's doing.
                    if compiled and not isinstance(exc, torch.cuda.OutOfMemoryError):
                        raise _CompileFailed(f"{type(exc).__name__}: {exc}") from exc
                    raise
                logits = out.logits[:, -1, :].float()
                next_position = next_position + 1

        return [state.candidate(seq) for seq in range(total)]

    def _step_forward(self, compiled: bool) -> Any:
        """The model's forward for one decoding step, compiled once per backend when asked;
        raises :class:`_CompileFailed` when torch.compile itself refuses (an unsupported Python,
        say)."""
        if not compiled:
            return self.model
        if self._compiled_forward is None:
            torch = _torch()
            try:
                self._compiled_forward = torch.compile(
                    self.model.__call__,
                    mode="reduce-overhead" if self.device.type == "cuda" else None,
                )
            except Exception as exc:
                raise _CompileFailed(f"{type(exc).__name__}: {exc}") from exc
        return self._compiled_forward

    def _decode_cache(self, prefill: Any, repeats: int) -> Any:
        """The static cache a compiled step decodes in, holding each row of the ``prefill``
        cache ``repeats`` times in a row: the one held from an earlier batch of the same
        shapes, the rows copied into it (no second cache of the batch's size), else the
        repeated ``prefill`` itself, held from now on. Its tensors keep their addresses from
        batch to batch, so the CUDA graphs recorded for one batch replay for the next (a new
        address records new ones, and torch keeps every graph it recorded)."""
        held = self._held_decode_cache
        if held is not None and _copy_cache_into(held, prefill, repeats):
            return held
        self._held_decode_cache = None  # freed before the new one is made
        if repeats > 1:
            _repeat_cache_rows(prefill, repeats)
        self._held_decode_cache = prefill
        return prefill

    def _attention_kernels(self) -> Any:
        """A context in which SDPA uses only ``sdpa_backends`` (nothing when None)."""
        if self.sdpa_backends is None:
            return contextlib.nullcontext()
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel([getattr(SDPBackend, SDPA_KERNELS[n]) for n in self.sdpa_backends])

    def _check_lengths(self, lengths: list[int], max_tokens: int, prompts: list[str]) -> None:
        """Refuse an empty prompt, and one that with ``max_tokens`` new tokens exceeds the
        model's context; ``lengths`` are the ``prompts``' token counts (the attention mask's sums).

        A batched empty prompt would be sampled from its padding alone; positions past the
        context are either an error deep in the model or silently wrong (and a megabyte prompt
        would only fail when memory runs out), so both are checked before the forward pass.
        The CLI and the harness check the same before the weights load
        (:meth:`check_prompts`), naming the file's line or the item.
        """
        config = getattr(self.model.config, "text_config", None) or self.model.config
        check_prompt_lengths(
            lengths,
            [f"Prompt {i} of the batch ({prompt_excerpt(p)})" for i, p in enumerate(prompts)],
            max_tokens,
            getattr(config, "max_position_embeddings", None),
        )

    @staticmethod
    def check_prompts(
        model: Any, prompts: Sequence[tuple[str, str]], max_tokens: int, **options: Any
    ) -> None:
        """Refuse, before the weights load, a prompt that tokenizes to nothing or that with
        ``max_tokens`` new tokens exceeds the model's context. ``prompts`` are (label, text)
        pairs; the label names the prompt in the message (``"prompts.jsonl: line 2"``). Only
        the tokenizer and the config are read (the tokenizer is the one the backend then uses).
        """
        if model is not None and not isinstance(model, (str, os.PathLike)):
            return  # a loaded model object: checked as its batches are decoded
        from metricwise.models import DEFAULT_MODEL, load_hf_tokenizer

        tokenizer, context = load_hf_tokenizer(model if model is not None else DEFAULT_MODEL)
        lengths: list[int] = []
        for first in range(0, len(prompts), 256):  # bounded memory for many prompts
            texts = [text for _, text in prompts[first : first + 256]]
            lengths += [len(ids) for ids in tokenizer(texts)["input_ids"]]
        check_prompt_lengths(lengths, [label for label, _ in prompts], max_tokens, context)

    def _detokenize(self, tokens: list[int]) -> str:
        return str(self.tokenizer.decode(tokens, skip_special_tokens=True))

    def _token_text(self, token: int) -> str:
        """One token's text on its own (special tokens: ""), cached per id."""
        cache = self.__dict__.setdefault("_token_texts", {})
        text = cache.get(token)
        if text is None:
            text = cache[token] = self._detokenize([token])
        return str(text)


#: Positions whose log-softmax :meth:`HFBackend.prompt_logprobs` takes at once (in float64: with
#: Gemma 3's 262k-token vocabulary, 64 positions are 134 MB).
_SCORE_CHUNK = 64

#: A static cache's capacity (prompt width + max_tokens) is rounded up to a multiple of this, so
#: that batches of similar prompts have one shape (and share one compiled step).
STATIC_CACHE_ROUNDING = 128

#: The names ``sdpa_backends`` takes, and torch's SDPBackend members they stand for.
SDPA_KERNELS = {
    "flash": "FLASH_ATTENTION",
    "efficient": "EFFICIENT_ATTENTION",
    "cudnn": "CUDNN_ATTENTION",
    "math": "MATH",
}
#: The kernels allowed on CUDA by default: all but cuDNN's, whose host-side cost (about 2.3 ms
#: per call on an H200, torch 2.11; issue 13's profile) exceeds the GPU time of a whole decoding
#: step of a small model.
CUDA_SDPA_BACKENDS = ("flash", "efficient", "math")


class _CompileFailed(Exception):
    """The compiled decoding step raised; the batch is decoded again without compiling."""


def _sdpa_backends(value: str | Sequence[str] | None, device: Any) -> tuple[str, ...] | None:
    """The SDPA kernel names of ``sdpa_backends`` (see HFBackend), checked; None for torch's choice."""
    if value is None:
        return None
    if value == "auto":
        return CUDA_SDPA_BACKENDS if device.type == "cuda" else None
    names = value.split("+") if isinstance(value, str) else list(value)
    bad = [n for n in names if n not in SDPA_KERNELS]
    if not names or bad:
        raise InvalidParameterError(
            f"The 'sdpa_backends' parameter of HFBackend takes 'auto', None or kernels among "
            f"{', '.join(SDPA_KERNELS)} (joined by '+'). Got {value!r} instead."
        )
    return tuple(names)


def _static_cache_unsupported(model: Any) -> str | None:
    """Why the decode loop cannot use a static cache with ``model``; None when it can.

    It needs transformers to declare the model compilable with a static cache, and every layer
    of that cache to be a plain (or sliding-window) key-value layer, whose rows the loop repeats
    and selects itself (transformers' static layers have no such methods).
    """
    if not getattr(model, "_can_compile_fullgraph", False):
        return f"transformers does not declare a static cache for {type(model).__name__}"
    try:
        from transformers import StaticCache
        from transformers.cache_utils import StaticLayer, StaticSlidingWindowLayer

        layers = StaticCache(config=model.config, max_cache_len=STATIC_CACHE_ROUNDING).layers
    except (ImportError, ValueError, TypeError, AttributeError) as exc:
        return f"transformers cannot build a StaticCache for it ({exc})"
    others = sorted(
        {type(x).__name__ for x in layers if type(x) not in (StaticLayer, StaticSlidingWindowLayer)}
    )
    if others:
        return f"its static cache has {', '.join(others)} layers, whose rows cannot be repeated"
    return None


def _change_static_rows(cache: Any, change: Any) -> None:
    """Apply ``change`` (a function of a tensor whose dim 0 is the batch) to every layer of a
    static cache."""
    for layer in cache.layers:
        if layer.is_initialized:
            layer.keys, layer.values = change(layer.keys), change(layer.values)
            layer.batch_size = layer.keys.shape[0]


def _repeat_cache_rows(cache: Any, repeats: int) -> None:
    """Each row of ``cache`` ``repeats`` times in a row (the prompts' rows to their samples')."""
    from transformers import StaticCache

    if isinstance(cache, StaticCache):
        _change_static_rows(cache, lambda t: t.repeat_interleave(repeats, dim=0))
    else:
        cache.batch_repeat_interleave(repeats)


def _select_cache_rows(cache: Any, index: Any) -> None:
    """Keep the rows ``index`` (a device tensor of row numbers) of ``cache``, in that order."""
    from transformers import StaticCache

    if isinstance(cache, StaticCache):
        _change_static_rows(cache, lambda t: t.index_select(0, index))
    else:
        cache.batch_select_indices(index)


def _mark_static_addresses(cache: Any) -> None:
    """Tell torch.compile that the static cache's tensors keep their addresses (each step
    writes them in place), so that CUDA graphs capture them instead of copying them; the rows
    repeated or selected for a batch are new tensors that transformers did not mark."""
    torch = _torch()
    for layer in cache.layers:
        if layer.is_initialized:
            for tensor in (layer.keys, layer.values, getattr(layer, "cumulative_length", None)):
                if isinstance(tensor, torch.Tensor):
                    torch._dynamo.mark_static_address(tensor)


def _copy_cache_into(target: Any, source: Any, repeats: int = 1) -> bool:
    """Copy static cache ``source`` into ``target`` in place, each of its rows ``repeats``
    times in a row (keys and values by ``copy_``, a layer's other tensors, such as its length,
    as they are, and its other attributes, such as a sliding layer's length, by value); False,
    copying nothing, when their layers differ in kind or a tensor in shape, dtype or device."""
    torch = _torch()
    if len(target.layers) != len(source.layers):
        return False
    for old, new in zip(target.layers, source.layers, strict=True):
        if type(old) is not type(new) or vars(old).keys() != vars(new).keys():
            return False
        for name, value in vars(new).items():
            kept = getattr(old, name)
            if isinstance(value, torch.Tensor) != isinstance(kept, torch.Tensor):
                return False
            if not isinstance(value, torch.Tensor):
                continue
            shape = value.shape
            if name in ("keys", "values"):
                shape = torch.Size((shape[0] * repeats, *shape[1:]))
            if kept.shape != shape or kept.dtype != value.dtype or kept.device != value.device:
                return False
    with torch.inference_mode():  # the cache's tensors were made in it
        _copy_layers(target, source, repeats)
    return True


def _copy_layers(target: Any, source: Any, repeats: int) -> None:
    """The copy of :func:`_copy_cache_into`, once every shape is known to match."""
    torch = _torch()
    for old, new in zip(target.layers, source.layers, strict=True):
        for name, value in vars(new).items():
            if name in ("keys", "values"):
                rows, *rest = value.shape
                getattr(old, name).view(rows, repeats, *rest).copy_(
                    value.unsqueeze(1).expand(rows, repeats, *rest)
                )
            elif isinstance(value, torch.Tensor):
                getattr(old, name).copy_(value)
            elif name != "batch_size":
                setattr(old, name, value)


def _cache_bytes(cache: Any) -> int:
    """Bytes held by the tensors of a cache's layers (0 for None)."""
    torch = _torch()
    if cache is None:
        return 0
    return sum(
        value.numel() * value.element_size()
        for layer in cache.layers
        for value in vars(layer).values()
        if isinstance(value, torch.Tensor)
    )


#: (rows, vocabulary) float32 arrays a sampling step holds per row at once: the model's logits
#: and their float32 copy, the selector's two weight buffers, and process_logits' temporaries.
_SAMPLING_BUFFERS = 8


def _memory_for_decoding(device: Any) -> int | None:
    """Bytes a decode may use on ``device``: CUDA's free memory plus what torch holds unused;
    half the RAM of a CPU (Linux); None where unknown."""
    torch = _torch()
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    if device.type == "cpu":
        try:
            return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")) // 2
        except (ValueError, OSError, AttributeError):
            return None
    return None


def _uniforms(seeds: Sequence[tuple[int, ...]], steps: int, device: Any) -> Any:
    """Shape (len(seeds), steps) float64 in (0, 1]: sequence ``i``'s random number for each
    step, from its own stream (:func:`~metricwise.backends.base.sample_seed`).

    Drawn up front so that the loop never goes back to the host for them; a sequence uses one
    per step while it runs, so these are the numbers it would draw one step at a time.
    """
    torch = _torch()
    table = np.empty((len(seeds), steps))
    for i, seed in enumerate(seeds):
        table[i] = 1.0 - np.random.default_rng(list(seed)).random(steps)
    return torch.from_numpy(table).to(device)


def _replay(
    state: DecodeState,
    window: list[tuple[Any, Any, Any]],
    active: np.ndarray,
    going: list[int],
    first_step: int,
    deadline: float,
    tops: list[tuple[Any, Any]] | None = None,
) -> list[int]:
    """Read back the ``window``'s steps (tokens, logp, logq of every row of the batch, on the
    device) in one transfer and record the ``going`` rows' steps in ``state`` in order; returns
    the rows still going after the last step. A row that finished inside the window is not
    advanced past its end: the tokens decoded for it after that are ignored. ``active[row]`` is
    the sequence a row of the batch decodes."""
    torch = _torch()
    steps = torch.stack([torch.stack([t.double() for t in step]) for step in window]).cpu().numpy()
    tokens = steps[:, 0].astype(np.int64)  # ids < 2**53 travel exactly as float64
    top_ids = top_values = None
    if tops is not None:
        top_ids = torch.stack([ids for ids, _ in tops]).cpu().numpy()
        top_values = torch.stack([values for _, values in tops]).cpu().numpy()
    still = list(going)
    for offset in range(len(window)):
        going = state.advance(
            active[still].tolist(),
            tokens[offset, still].tolist(),
            steps[offset, 1, still].tolist(),
            steps[offset, 2, still].tolist(),
            first_step + offset,
            deadline,
            None
            if top_ids is None or top_values is None
            else [(top_ids[offset, r].tolist(), top_values[offset, r].tolist()) for r in still],
        )
        still = [still[r] for r in going]
        if not still:
            break
    return still


#: Seconds between two reports of the growing texts to ``on_text`` (a sample that ends is
#: reported at once).
STREAM_INTERVAL = 0.05


def _stream_texts(
    state: DecodeState, seqs: list[int], streamed: tuple[float, list[str]], on_text: Any
) -> tuple[float, list[str]]:
    """Report to ``on_text(seq, text)`` the ``seqs`` whose settled text grew, when
    :data:`STREAM_INTERVAL` has passed or they ended; returns the new (time, texts)."""
    last, texts = streamed
    now = time.monotonic()
    due = now - last >= STREAM_INTERVAL
    for seq in seqs:
        if not due and state.finish[seq] is None:
            continue
        text = state.text_so_far(seq)
        if text != texts[seq]:
            texts[seq] = text
            on_text(seq, text)
    return (now if due else last), texts


def _rows_within(kept: tuple[str, ...], prompts: tuple[str, ...]) -> list[int] | None:
    """Rows of ``kept`` that hold ``prompts`` in order, or None when one of them is not there."""
    first: dict[str, int] = {}
    for row, prompt in enumerate(kept):
        first.setdefault(prompt, row)
    rows = [first.get(p) for p in prompts]
    return None if any(r is None for r in rows) else [r for r in rows if r is not None]


def _end_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    """Token ids that end a sample: EOS (from every config that names one) and control tokens.

    Control tokens are the tokenizer's special tokens and the added tokens that look like markup
    (:func:`~metricwise.backends.base.looks_like_control_token`); none of them is answer text.
    """
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), model.config, tokenizer):
        value = getattr(source, "eos_token_id", None)
        if value is None:
            continue
        ids.update(value if isinstance(value, (list, tuple, set)) else [value])
    ids.update(getattr(tokenizer, "all_special_ids", ()))
    for token_id, added in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items():
        if getattr(added, "special", False) or looks_like_control_token(
            str(getattr(added, "content", ""))
        ):
            ids.add(token_id)
    return frozenset(int(i) for i in ids)
