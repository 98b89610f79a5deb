"""llama.cpp in-process (llama-cpp-python's low-level API): N samples per prompt from one prompt evaluation.

For every prompt the prompt is evaluated once, into KV-cache sequence ``s``; the cache is then
shared with the other ``n - 1`` sequences by ``llama_memory_seq_cp`` (in a unified KV cache that
tags the prompt's cells with the new sequence ids: no copy, no second evaluation), and all the
sequences of several prompts are decoded together, one token each per ``llama_decode`` call.
Finished sequences leave the batch and their cells are freed.

Per step, for the ``B`` active sequences at once, on the logits matrix of shape ``(B, V)``
(numpy, vectorised; no per-token Python sort over the vocabulary):

- ``logp += log_softmax(raw logits)[token]``: the raw model;
- ``logq += log_softmax(processed logits)[token]``: the distribution actually sampled, after
  temperature, then top-k (``np.partition``), then top-p (a partial sort of the top
  ``TOP_P_PARTIAL`` tokens, a full sort only for rows whose nucleus is larger), then min-p:
  the definition and order of :func:`metricwise.backends.hf.process_logits`;
- the token is drawn by inverse-CDF sampling with one uniform number from the sequence's own
  stream ``np.random.default_rng(list(sample_seed(seed, i, prompt)))``, as in the hf backend,
  so that both backends sample the same distribution with the same random numbers (the tokens
  agree wherever the two implementations' logits do).

EOS (any end-of-generation token) and the token that completes a stop string are included in
``logp``/``logq`` and ``n_tokens``; the returned text excludes EOS and everything from the stop
string on. All log-probabilities are in nats.

Numerics: llama.cpp's CPU kernels round differently for a one-token batch than for larger ones
and for different KV-cache layouts, so the logits of a sequence decoded with others differ from a
lone teacher-forced evaluation by about 1e-2 (log-probabilities agree to ~0.01-0.03 nats per
token; :meth:`LlamaCppBackend.score` reproduces an all-logits evaluation exactly). A run is
reproducible, and sample ``i`` is drawn from its own random stream whatever shares its batch, but
a token whose uniform lands within that rounding of a CDF boundary can differ between, say,
``n=16`` and ``n=32``. Flash attention is off by default (see ``flash_attn``).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from metricwise.backends.base import (
    DecodeState,
    looks_like_control_token,
    register_backend,
    sample_seed,
    sample_sets,
)
from metricwise.backends.sampling import CDF_BLOCK, TOP_P_PARTIAL, is_ancestral
from metricwise.errors import BackendError, InvalidParameterError, MissingDependencyError
from metricwise.guards import Guards
from metricwise.types import Candidate, SampleSet, SamplingConfig

#: Rows processed together: bounds the temporaries at rows x vocabulary float32.
_ROW_CHUNK = 16
LLAMA_CPP_INSTALL = "CMAKE_BUILD_PARALLEL_LEVEL=2 pip install 'llama-cpp-python==0.3.36'  (builds from source, about 8 minutes on 2 cores)"

_init_lock = threading.Lock()
_initialised = False
_log_callback: Any = None  # kept alive: llama.cpp holds the pointer


def _llama_cpp() -> Any:
    """Import ``llama_cpp`` (lazily) and initialise its backend once, with llama.cpp's logging off."""
    global _initialised, _log_callback
    try:
        import llama_cpp
    except ImportError:
        raise MissingDependencyError(
            f"The llamacpp backend needs llama-cpp-python: {LLAMA_CPP_INSTALL}"
        ) from None
    with _init_lock:
        if not _initialised:
            if not os.environ.get("METRICWISE_LLAMA_LOG"):
                _log_callback = llama_cpp.llama_log_callback(lambda level, text, data: None)
                llama_cpp.llama_log_set(_log_callback, ctypes.c_void_p(0))
            llama_cpp.llama_backend_init()
            _initialised = True
    return llama_cpp


# -- the sampling step (pure numpy; shared by sampling and teacher-forced scoring) ---------------------
def _row_logsumexp(x: np.ndarray) -> np.ndarray:
    """log(sum(exp(x))) of every row of ``x`` (shape (B, V)); ``-inf`` entries count as 0."""
    top = x.max(axis=1)
    safe = np.where(np.isfinite(top), top, 0.0).astype(x.dtype)
    total = np.exp(x - safe[:, None]).sum(axis=1, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return np.log(total) + safe.astype(np.float64)


def process_logits(logits: np.ndarray, config: SamplingConfig) -> np.ndarray:
    """Temperature, then top-k, then top-p, then min-p on raw logits; removed tokens get ``-inf``.

    Parameters
    ----------
    logits : ndarray, shape (B, V), float32
        Raw logits of ``B`` sequences over a vocabulary of ``V`` tokens.
    config : SamplingConfig
        ``temperature`` > 0, ``top_k``, ``top_p``, ``min_p``.

    Returns
    -------
    ndarray, shape (B, V), float32
        Processed scores; ``log_softmax`` of a row is the sampling distribution q. The numpy twin of
        :func:`metricwise.backends.hf.process_logits` (transformers' warpers, in that order).
        Cost O(B V) for temperature, top-k (``np.partition``) and min-p; top-p adds a sort of
        ``TOP_P_PARTIAL`` values per row (O(V log V) only for rows whose nucleus is larger).
    """
    scores = (
        logits / np.float32(config.temperature)
        if config.temperature != 1.0
        else logits.astype(np.float32, copy=True)
    )
    vocab = scores.shape[1]
    neg_inf = np.float32(-np.inf)
    if 0 < config.top_k < vocab:
        kth = np.partition(scores, vocab - config.top_k, axis=1)[:, vocab - config.top_k]
        scores[scores < kth[:, None]] = neg_inf
    if config.top_p < 1.0:
        _top_p(scores, config.top_p)
    if config.min_p > 0.0:
        best = scores.max(axis=1, keepdims=True)
        # p < min_p * p_max  <=>  score < best + log(min_p)
        scores[scores < best + np.float32(np.log(config.min_p))] = neg_inf
    return scores


def _top_p(scores: np.ndarray, top_p: float) -> None:
    """Keep, per row, the most probable tokens until the mass before a token reaches ``top_p`` (in place)."""
    rows, vocab = scores.shape
    lse = _row_logsumexp(scores)
    k = min(TOP_P_PARTIAL, vocab)
    for r in range(rows):
        row = scores[r]
        if k < vocab:
            part = np.partition(row, vocab - k)[vocab - k :]
            top = np.sort(part)[::-1]
        else:
            top = np.sort(row)[::-1]
        probs = np.exp(top.astype(np.float64) - lse[r])
        before = np.cumsum(probs) - probs
        if k < vocab and probs.sum() < top_p:
            top = np.sort(row)[::-1]  # the nucleus is larger than the partial sort: sort all
            probs = np.exp(top.astype(np.float64) - lse[r])
            before = np.cumsum(probs) - probs
        n_keep = max(1, int(np.count_nonzero(before < top_p)))
        cutoff = top[n_keep - 1]
        row[row < cutoff] = -np.inf


def sample_step(
    logits: np.ndarray,
    config: SamplingConfig,
    uniforms: np.ndarray | None,
    rows: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Choose one token per row and return its raw and sampling log-probabilities.

    Parameters
    ----------
    logits : ndarray, shape (B, V), float32
        Raw logits.
    config : SamplingConfig
        The sampler; ignored when ``uniforms`` is None.
    uniforms : ndarray, shape (B,), or None
        One number in (0, 1] per row for inverse-CDF sampling over the vocabulary in id order;
        None means greedy (argmax, ``logq = 0``).
    rows : ndarray of int, shape (B,), optional
        Row ``b`` uses ``logits[rows[b]]`` (the n samples of a prompt share its prompt's logits
        without copying them n times); by default row ``b`` of ``logits``.

    Returns
    -------
    tokens : ndarray, shape (B,), int64
    logp : ndarray, shape (B,), float64
        ``log_softmax(logits)[token]`` in nats.
    logq : ndarray, shape (B,), float64
        ``log_softmax(process_logits(logits))[token]`` in nats (0 for greedy).
    """
    n_rows = logits.shape[0] if rows is None else len(rows)
    tokens = np.empty(n_rows, dtype=np.int64)
    logp = np.empty(n_rows)
    logq = np.zeros(n_rows)
    ancestral = is_ancestral(config)
    for lo in range(0, n_rows, _ROW_CHUNK):
        x = logits[lo : lo + _ROW_CHUNK] if rows is None else logits[rows[lo : lo + _ROW_CHUNK]]
        idx = np.arange(x.shape[0])
        top = x.max(axis=1)
        weights = np.subtract(x, top[:, None])
        np.exp(weights, out=weights)  # unnormalised raw probabilities, float32
        lse_raw = np.log(weights.sum(axis=1, dtype=np.float64)) + top
        if uniforms is None:
            chosen = x.argmax(axis=1)
        else:
            if ancestral:
                q_scores, q_weights, lse_q = x, weights, lse_raw
            else:
                q_scores = process_logits(x, config)
                q_top = q_scores.max(axis=1)
                q_weights = np.subtract(q_scores, q_top[:, None])
                np.exp(q_weights, out=q_weights)
                lse_q = np.log(q_weights.sum(axis=1, dtype=np.float64)) + q_top
            chosen = _inverse_cdf(
                q_weights, np.asarray(uniforms[lo : lo + x.shape[0]], dtype=np.float64)
            )
            logq[lo : lo + x.shape[0]] = q_scores[idx, chosen].astype(np.float64) - lse_q
        tokens[lo : lo + x.shape[0]] = chosen
        logp[lo : lo + x.shape[0]] = x[idx, chosen].astype(np.float64) - lse_raw
    return tokens, logp, logq


def _inverse_cdf(weights: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
    """Per row, the first token id whose cumulative weight reaches ``u * total`` (inverse CDF).

    ``weights`` (shape (R, V), >= 0, unnormalised) are summed in blocks of ``CDF_BLOCK`` ids
    (float64), the block is found from the block sums, and only that block is scanned: O(V) of
    vectorised sums per row instead of a sequential cumulative sum over the whole vocabulary.
    """
    rows, vocab = weights.shape
    starts = np.arange(0, vocab, CDF_BLOCK)
    # Block sums in float32 (relative error ~1e-5, far below the logits' own), cumulated in float64.
    cum = np.cumsum(np.add.reduceat(weights, starts, axis=1).astype(np.float64), axis=1)
    targets = uniforms * cum[:, -1]
    blocks = np.minimum((cum < targets[:, None]).sum(axis=1), starts.size - 1)
    out = np.empty(rows, dtype=np.int64)
    for r in range(rows):
        b = int(blocks[r])
        lo = int(starts[b])
        inner = np.cumsum(weights[r, lo : lo + CDF_BLOCK], dtype=np.float64)
        if b:
            inner += cum[r, b - 1]
        token = lo + min(int(np.searchsorted(inner, targets[r], side="left")), inner.size - 1)
        if weights[r, token] <= 0:  # rounding at a block edge: the nearest token that has weight
            positive = np.flatnonzero(weights[r] > 0)
            token = int(positive[min(int(np.searchsorted(positive, token)), positive.size - 1)])
        out[r] = token
    return out


# -- the backend ---------------------------------------------------------------------------------------
@dataclass
class _Item:
    """``count`` samples of one prompt starting at sample index ``first``."""

    prompt_index: int
    first: int
    count: int


@register_backend("llamacpp")
class LlamaCppBackend:
    """Sample from a GGUF model with llama.cpp in this process.

    Parameters
    ----------
    model : str or path
        A named model (``gemma-3-270m``, ``smollm2-135m-instruct``) or a local ``.gguf`` file.
    n_ctx : int
        KV-cache cells shared by all sequences decoded together: a group of prompts needs the sum
        of their prompt lengths plus ``samples x max_tokens``; larger sets are split into groups.
    n_threads : int, optional
        CPU threads for llama.cpp (default: all cores).
    n_batch : int
        Most prompt tokens evaluated per ``llama_decode`` call.
    max_sequences : int
        Most sequences decoded together (``n_seq_max``; at most 256).
    flash_attn : bool
        llama.cpp's flash attention. Off by default: on CPU it computes attention in half
        precision, which moves log-probabilities by about 0.02 nats per token and makes a
        sequence's logits depend on which other sequences share the KV cache (so sample ``i``
        would depend on ``n`` and on the batch); off, they agree with a lone teacher-forced
        evaluation to ~1e-6.
    guards : Guards, optional
        Wall-clock budget per :meth:`sample` call and the repetition detector.
    signature : str, optional
        Identifies the model in the sample store; ``llamacpp:<model>`` by default.

    Notes
    -----
    llama.cpp's own log lines are silenced (process-wide) unless ``METRICWISE_LLAMA_LOG`` is
    set. llama.cpp's worker threads spin at barriers: on a machine whose cores are busy with other
    work, ``n_threads`` above the free cores is many times slower than ``n_threads=1``.
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        *,
        n_ctx: int = 8192,
        n_threads: int | None = None,
        n_batch: int = 512,
        max_sequences: int = 64,
        flash_attn: bool = False,
        guards: Guards | None = None,
        signature: str | None = None,
    ) -> None:
        for name, value, low, high in (
            ("n_ctx", n_ctx, 16, 1 << 24),
            ("n_batch", n_batch, 1, 1 << 20),
            ("max_sequences", max_sequences, 1, 256),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise InvalidParameterError(
                    f"The '{name}' parameter of LlamaCppBackend must be an int in [{low}, {high}]. Got {value!r} instead."
                )
        if n_threads is not None and (not isinstance(n_threads, int) or n_threads < 1):
            raise InvalidParameterError(
                f"The 'n_threads' parameter of LlamaCppBackend must be an int >= 1 or None. Got {n_threads!r} instead."
            )
        from metricwise.models import DEFAULT_MODEL, resolve_model

        resolved = resolve_model(DEFAULT_MODEL if model is None else model)
        if resolved.kind != "gguf" or resolved.path is None:
            raise InvalidParameterError(
                f"The 'model' parameter of LlamaCppBackend must be a named model or a .gguf file. Got {str(model)!r} "
                f"(a {resolved.kind}) instead; use the hf backend for transformers models."
            )
        lib = _llama_cpp()
        self._lib = lib
        self.path = resolved.path
        self.signature = signature or f"llamacpp:{resolved.signature}"
        self.guards = guards or Guards()
        threads = n_threads or os.cpu_count() or 1
        mparams = lib.llama_model_default_params()
        mparams.n_gpu_layers = 0
        self._model = lib.llama_model_load_from_file(str(self.path).encode("utf-8"), mparams)
        if not self._model:
            raise BackendError(f"llama.cpp could not load the GGUF file {self.path}.")
        cparams = lib.llama_context_default_params()
        cparams.n_ctx = n_ctx
        cparams.n_batch = max(n_batch, max_sequences)
        cparams.n_ubatch = max(n_batch, max_sequences)
        cparams.n_seq_max = max_sequences
        cparams.n_threads = threads
        cparams.n_threads_batch = threads
        cparams.kv_unified = True
        cparams.flash_attn_type = 1 if flash_attn else 0
        cparams.no_perf = True
        self._ctx = lib.llama_init_from_model(self._model, cparams)
        if not self._ctx:
            lib.llama_model_free(self._model)
            self._model = None
            raise BackendError(
                f"llama.cpp could not create a context (n_ctx={n_ctx}, max_sequences={max_sequences}) for {self.path}."
            )
        self._vocab = lib.llama_model_get_vocab(self._model)
        self.n_vocab = int(lib.llama_vocab_n_tokens(self._vocab))
        self.n_ctx = int(lib.llama_n_ctx(self._ctx))
        self.n_batch = int(cparams.n_batch)
        self.max_sequences = max_sequences
        self._batch = lib.llama_batch_init(self.n_batch, 0, 1)
        self._pieces: dict[int, bytes] = {}
        self._eog: dict[int, bool] = {}
        #: Prompt evaluations run so far (one per prompt per :meth:`sample` call; tests check it).
        self.prompt_evaluations = 0

    # -- protocol ------------------------------------------------------------------------------
    def sample(
        self, prompts: Sequence[str], config: SamplingConfig, *, start: int = 0
    ) -> list[SampleSet]:
        return sample_sets(
            prompts,
            config,
            start,
            self.greedy,
            lambda batch, m: self._generate(batch, start, m, config, greedy=False),
        )

    def greedy(self, prompts: Sequence[str], config: SamplingConfig) -> list[Candidate]:
        return [row[0] for row in self._generate(list(prompts), 0, 1, config, greedy=True)]

    def close(self) -> None:
        lib = self._lib
        if getattr(self, "_batch", None) is not None:
            lib.llama_batch_free(self._batch)
            self._batch = None
        if getattr(self, "_ctx", None):
            lib.llama_free(self._ctx)
            self._ctx = None
        if getattr(self, "_model", None):
            lib.llama_model_free(self._model)
            self._model = None

    def __enter__(self) -> LlamaCppBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    # -- tokens ----------------------------------------------------------------------------------
    def tokenize(self, text: str) -> list[int]:
        """Token ids of ``text`` with the model's BOS (when it adds one), special tokens parsed."""
        data = text.encode("utf-8")
        size = len(data) + 8
        buf = (self._lib.llama_token * size)()
        n = self._lib.llama_tokenize(self._vocab, data, len(data), buf, size, True, True)
        if n < 0:
            size = -n
            buf = (self._lib.llama_token * size)()
            n = self._lib.llama_tokenize(self._vocab, data, len(data), buf, size, True, True)
        return list(buf[:n])

    def piece(self, token: int) -> bytes:
        """The bytes of ``token`` (control tokens render as nothing)."""
        cached = self._pieces.get(token)
        if cached is None:
            buf = ctypes.create_string_buffer(64)
            n = self._lib.llama_token_to_piece(self._vocab, token, buf, 64, 0, False)
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = self._lib.llama_token_to_piece(self._vocab, token, buf, -n, 0, False)
            cached = buf.raw[:n]
            self._pieces[token] = cached
        return cached

    def detokenize(self, tokens: Sequence[int]) -> str:
        return b"".join(self.piece(int(t)) for t in tokens).decode("utf-8", errors="replace")

    # -- decoding ---------------------------------------------------------------------------------
    def _memory(self) -> Any:
        return self._lib.llama_get_memory(self._ctx)

    def _decode(
        self,
        tokens: Sequence[int],
        positions: Sequence[int],
        seqs: Sequence[int],
        logits: Sequence[bool],
    ) -> None:
        if self._ctx is None:
            raise BackendError("The llamacpp backend is closed.")
        batch = self._batch
        n = len(tokens)
        for i in range(n):
            batch.token[i] = tokens[i]
            batch.pos[i] = positions[i]
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = seqs[i]
            batch.logits[i] = logits[i]
        batch.n_tokens = n
        code = self._lib.llama_decode(self._ctx, batch)
        if code == 1:
            raise BackendError(
                f"llama.cpp ran out of KV-cache cells (n_ctx={self.n_ctx}); pass a larger n_ctx or fewer max_sequences."
            )
        if code != 0:
            raise BackendError(f"llama_decode failed with code {code}.")

    def _logits(self, rows: int) -> np.ndarray:
        """The output logits of the last decode, shape (rows, V), float32 (a view: use before the next decode)."""
        ptr = self._lib.llama_get_logits(self._ctx)
        return np.ctypeslib.as_array(ptr, shape=(rows * self.n_vocab,)).reshape(rows, self.n_vocab)

    def _evaluate_prompt(self, tokens: list[int], seq: int) -> np.ndarray:
        """Evaluate ``tokens`` into sequence ``seq``; the last position's logits, shape (V,)."""
        for lo in range(0, len(tokens), self.n_batch):
            chunk = tokens[lo : lo + self.n_batch]
            last = lo + len(chunk) == len(tokens)
            self._decode(
                chunk,
                range(lo, lo + len(chunk)),
                [seq] * len(chunk),
                [last and i == len(chunk) - 1 for i in range(len(chunk))],
            )
        self.prompt_evaluations += 1
        return self._logits(1)[0].copy()

    def _plan(self, lengths: list[int], start: int, m: int, max_tokens: int) -> list[list[_Item]]:
        """Group (prompt, sample range) items so that each group fits the sequences and KV cells."""
        margin = 256  # llama.cpp pads the cache and keeps a few cells
        items: list[_Item] = []
        for p, length in enumerate(lengths):
            if length + max_tokens + margin > self.n_ctx:
                raise InvalidParameterError(
                    f"Prompt {p} has {length} tokens; with max_tokens={max_tokens} it needs more than the "
                    f"n_ctx={self.n_ctx} cells of the llamacpp backend. Pass a larger n_ctx."
                )
            per_item = min(
                self.max_sequences, m, max(1, (self.n_ctx - margin - length) // max_tokens)
            )
            for first in range(start, start + m, per_item):
                items.append(_Item(p, first, min(per_item, start + m - first)))
        groups: list[list[_Item]] = []
        current: list[_Item] = []
        seqs = cells = 0
        for item in items:
            need = lengths[item.prompt_index] + item.count * max_tokens
            if current and (
                seqs + item.count > self.max_sequences or cells + need + margin > self.n_ctx
            ):
                groups.append(current)
                current, seqs, cells = [], 0, 0
            current.append(item)
            seqs += item.count
            cells += need
        if current:
            groups.append(current)
        return groups

    def _generate(
        self, prompts: list[str], start: int, m: int, config: SamplingConfig, *, greedy: bool
    ) -> list[list[Candidate]]:
        if not prompts:
            return []
        deadline = self.guards.deadline()
        encoded = [self.tokenize(p) for p in prompts]
        for p, tokens in enumerate(encoded):
            if not tokens:
                raise InvalidParameterError(
                    f"Prompt {p} produced no tokens: the prompts must not be empty."
                )
        results: list[list[Candidate | None]] = [[None] * m for _ in prompts]
        for group in self._plan([len(t) for t in encoded], start, m, config.max_tokens):
            self._run_group(group, prompts, encoded, start, config, greedy, deadline, results)
        return [[c for c in row if c is not None] for row in results]

    def _run_group(
        self,
        group: list[_Item],
        prompts: list[str],
        encoded: list[list[int]],
        start: int,
        config: SamplingConfig,
        greedy: bool,
        deadline: float,
        results: list[list[Candidate | None]],
    ) -> None:
        lib = self._lib
        memory = self._memory()
        lib.llama_memory_clear(memory, True)
        # One prompt evaluation per item, shared with its other sequences through the KV cache.
        owners: list[tuple[int, int]] = []  # (prompt index, sample index) per sequence id
        positions: list[int] = []
        prompt_logits: list[np.ndarray] = []
        first_rows: list[int] = []
        for item in group:
            seq0 = len(owners)
            prompt_logits.append(self._evaluate_prompt(encoded[item.prompt_index], seq0))
            for k in range(item.count):
                if k:
                    lib.llama_memory_seq_cp(memory, seq0, seq0 + k, -1, -1)
                owners.append((item.prompt_index, item.first + k))
                positions.append(len(encoded[item.prompt_index]))
                first_rows.append(len(prompt_logits) - 1)
        total = len(owners)
        rngs = (
            None
            if greedy
            else [
                np.random.default_rng(list(sample_seed(config.seed, i, prompts[p])))
                for p, i in owners
            ]
        )
        state = DecodeState(
            total, config, self.guards, self._is_eog, self.detokenize, sampled=not greedy
        )
        active = list(range(total))
        logits = np.stack(prompt_logits)
        rows: np.ndarray | None = np.array(first_rows)
        for step in range(config.max_tokens):
            uniforms = None if rngs is None else np.array([1.0 - rngs[s].random() for s in active])
            chosen, step_p, step_q = sample_step(logits, config, uniforms, rows)
            going = state.advance(
                active, chosen.tolist(), step_p.tolist(), step_q.tolist(), step, deadline
            )
            still = [active[r] for r in going]
            for seq in set(active).difference(still):  # finished: free their KV cells
                lib.llama_memory_seq_rm(memory, seq, -1, -1)
            if not still:
                break
            active = still
            self._decode(
                [state.tokens[s][-1] for s in active],
                [positions[s] + step for s in active],
                active,
                [True] * len(active),
            )
            logits, rows = self._logits(len(active)), None
        lib.llama_memory_clear(memory, True)
        for seq, (p, i) in enumerate(owners):
            results[p][i - start] = state.candidate(seq)

    def _is_eog(self, token: int) -> bool:
        """Whether ``token`` ends a sample: end-of-generation, control, or a user-defined token
        that looks like markup (:func:`~metricwise.backends.base.looks_like_control_token`)."""
        eog = self._eog.get(token)
        if eog is None:
            lib = self._lib
            eog = bool(lib.llama_vocab_is_eog(self._vocab, token)) or bool(
                lib.llama_vocab_is_control(self._vocab, token)
            )
            if (
                not eog
                and lib.llama_vocab_get_attr(self._vocab, token) & lib.LLAMA_TOKEN_ATTR_USER_DEFINED
            ):
                eog = looks_like_control_token(self.piece(token).decode("utf-8", "replace"))
            self._eog[token] = eog
        return eog

    # -- rescoring ---------------------------------------------------------------------------------
    def tokenize_continuation(self, text: str) -> list[int]:
        """Token ids of ``text`` on its own: no BOS, special-token markup read as plain text."""
        data = text.encode("utf-8")
        size = len(data) + 8
        buf = (self._lib.llama_token * size)()
        n = self._lib.llama_tokenize(self._vocab, data, len(data), buf, size, False, False)
        if n < 0:
            size = -n
            buf = (self._lib.llama_token * size)()
            n = self._lib.llama_tokenize(self._vocab, data, len(data), buf, size, False, False)
        return list(buf[:n])

    def continuation_logprobs(
        self, prompts: Sequence[str], continuations: Sequence[str]
    ) -> np.ndarray:
        """Shape (P, K) float64: ``log p(continuation_k | prompt_i)`` in nats, teacher-forced.

        Continuations are tokenised on their own (:meth:`tokenize_continuation`) and appended
        to the prompt's tokens (see :func:`metricwise.backends.base.continuation_logprobs`).
        When every continuation is one token, each prompt is evaluated once and the K values
        are read from its next-token distribution; otherwise each (prompt, continuation) is
        scored by :meth:`score` (one evaluation each).
        """
        cont_ids = [self.tokenize_continuation(c) for c in continuations]
        for c, ids in zip(continuations, cont_ids, strict=True):
            if not ids:
                raise InvalidParameterError(
                    f"The 'continuations' parameter of continuation_logprobs must be texts of at "
                    f"least one token. Got {c!r} instead."
                )
        out = np.empty((len(prompts), len(continuations)))
        single = all(len(ids) == 1 for ids in cont_ids)
        greedy = SamplingConfig(n=1, temperature=0.0, max_tokens=1)
        for p, prompt in enumerate(prompts):
            if not single:
                out[p] = [self.score(prompt, ids, greedy)[0] for ids in cont_ids]
                continue
            tokens = self.tokenize(prompt)
            if not tokens or len(tokens) + 8 > self.n_ctx:
                raise InvalidParameterError(
                    f"Prompt {p} has {len(tokens)} tokens; it must have at least one and fit "
                    f"n_ctx={self.n_ctx}."
                )
            memory = self._memory()
            self._lib.llama_memory_clear(memory, True)
            logits = self._evaluate_prompt(tokens, 0)[None, :]
            self._lib.llama_memory_clear(memory, True)
            lse = _row_logsumexp(logits)[0]
            out[p] = [float(logits[0, ids[0]]) - lse for ids in cont_ids]
        return out

    def score(
        self, prompt: str, continuation: Sequence[int], config: SamplingConfig
    ) -> tuple[float, float]:
        """Teacher-forced ``(logp, logq)`` in nats of ``continuation`` (token ids) after ``prompt``.

        One evaluation of prompt + continuation with logits at the positions that predict the
        continuation; ``logq`` uses ``config``'s sampler (0 when ``config.temperature == 0``).
        For checks and rescoring; :meth:`sample` never calls it.
        """
        prompt_tokens = self.tokenize(prompt)
        ids = prompt_tokens + [int(t) for t in continuation]
        if not continuation:
            return 0.0, 0.0
        if len(ids) + 8 > self.n_ctx:
            raise InvalidParameterError(
                f"The prompt and continuation ({len(ids)} tokens) exceed n_ctx={self.n_ctx}."
            )
        memory = self._memory()
        self._lib.llama_memory_clear(memory, True)
        first_scored = len(prompt_tokens) - 1
        rows: list[np.ndarray] = []
        for lo in range(0, len(ids) - 1, self.n_batch):
            chunk = ids[lo : min(lo + self.n_batch, len(ids) - 1)]
            flags = [lo + i >= first_scored for i in range(len(chunk))]
            self._decode(chunk, range(lo, lo + len(chunk)), [0] * len(chunk), flags)
            if any(flags):
                rows.append(self._logits(sum(flags)).copy())
        self._lib.llama_memory_clear(memory, True)
        logits = np.concatenate(rows)
        target = np.asarray(continuation, dtype=np.int64)
        raw = logits[np.arange(len(target)), target].astype(np.float64) - _row_logsumexp(logits)
        if config.temperature == 0:
            return float(raw.sum()), 0.0
        processed = process_logits(logits, config)
        q = processed[np.arange(len(target)), target].astype(np.float64) - _row_logsumexp(processed)
        return float(raw.sum()), float(q.sum())
