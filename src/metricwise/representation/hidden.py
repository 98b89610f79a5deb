"""Batched extraction of last-layer hidden states, one exact ``(L_i, d)`` matrix per text.

The authors' code runs one text at a time. Here texts are sorted by length, batched with
*right* padding and an attention mask, and each text's matrix is the first ``L_i`` rows of its
row in the batch, so padded positions never enter a matrix. With right padding a causal model's
valid positions only attend to valid positions, and the default position ids ``0..L_i-1`` are
the same as unpadded, so the matrices equal the one-at-a-time ones up to floating-point
reassociation (checked by the tests). Left padding would need explicit position ids.

Choices, all recorded in the corpus output:

- **BOS.** Tokenizers that add a beginning-of-sequence token (Gemma does, SmolLM2 does not) give
  a first row that is an outlier and moves the centring mean. The model always *sees* the BOS
  token (Gemma degrades without it); ``keep_bos=False`` (the default) drops its row from the
  matrix, ``keep_bos=True`` keeps it as the authors' code does.
- **Minimum length.** One row is a zero row after centring (the metrics are undefined) and two
  rows give entropy 0; texts with fewer than ``min_tokens`` rows are skipped and counted, never
  scored. Texts with no tokens at all are counted as ``"empty"``.
- **Truncation.** Inputs longer than ``max_length`` tokens (BOS included) are cut on the right
  and counted.
- **Hidden states.** The base model's ``last_hidden_state`` (after the final norm), which is
  ``hidden_states[-1]`` of the causal LM, computed without the LM head (whose logits would be
  ``L x vocab``, 262k wide for Gemma). ``layer`` picks another entry of ``hidden_states``.

torch is imported only when a model is run; the model is used on whatever device it is on.
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from metricwise.errors import InvalidParameterError, import_torch

SKIP_EMPTY = "empty"
SKIP_TOO_SHORT = "too_short"


@dataclass(frozen=True)
class EncodedText:
    """Token ids of one input and the rows of its hidden states that form the matrix.

    Attributes
    ----------
    ids:
        Token ids fed to the model (after truncation), BOS and prompt included.
    start:
        Index of the first row kept: 1 when a BOS row is dropped, the prompt length for a
        response, else 0. The matrix is rows ``start .. len(ids) - 1``.
    n_text_tokens:
        Tokens of the text itself (without BOS or prompt) before truncation; 0 means empty.
    truncated:
        Whether ``ids`` was cut to ``max_length``.
    has_bos:
        Whether ``ids`` starts with the tokenizer's BOS token.
    """

    ids: tuple[int, ...]
    start: int
    n_text_tokens: int
    truncated: bool
    has_bos: bool

    @property
    def n_rows(self) -> int:
        """Rows of the matrix this input gives."""
        return len(self.ids) - self.start


@dataclass(frozen=True)
class TextHiddenStates:
    """The hidden-state matrix of one text, or why it was skipped.

    Attributes
    ----------
    index:
        Position of the text in the input sequence.
    hidden:
        ``(n_tokens, d)`` torch tensor on the model's device, in the model's dtype; ``None``
        when skipped. A view into its batch's output: copy it to keep it beyond the next batch.
    n_tokens:
        Rows of ``hidden`` (tokens of the text entering the metrics).
    n_input_tokens:
        Tokens fed to the model for this text (BOS and prompt included).
    truncated:
        Whether the input was cut to ``max_length``.
    skipped:
        ``None``, ``"empty"`` (no tokens) or ``"too_short"`` (fewer than ``min_tokens`` rows).
    """

    index: int
    hidden: Any
    n_tokens: int
    n_input_tokens: int
    truncated: bool
    skipped: str | None = None


@dataclass
class ExtractionStats:
    """Counters filled while extracting (mutable; pass one in to read them afterwards).

    ``forward_seconds`` is the time inside the model's forward passes and copies;
    ``padded_tokens`` counts batch positions including padding (``batch x longest``).
    """

    n_texts: int = 0
    n_batches: int = 0
    n_truncated: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    input_tokens: int = 0
    matrix_tokens: int = 0
    padded_tokens: int = 0
    forward_seconds: float = 0.0


def _check_int(value: Any, name: str, fn: str, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise InvalidParameterError(
            f"The '{name}' parameter of {fn} must be an int >= {lo}. Got {value!r} instead."
        )
    return value


def _check_texts(texts: Any, fn: str, name: str = "texts") -> list[str]:
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise InvalidParameterError(
            f"The '{name}' parameter of {fn} must be a list of strings. Got {type(texts).__name__} instead."
        )
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise InvalidParameterError(
                f"The '{name}' parameter of {fn} must contain only strings. Got {type(t).__name__} at index {i} instead."
            )
    return list(texts)


def _token_ids(
    tokenizer: Any, texts: list[str], add_special_tokens: bool, fn: str
) -> list[list[int]]:
    if not texts:
        return []
    if not callable(tokenizer):
        raise InvalidParameterError(
            f"The 'tokenizer' parameter of {fn} must be a transformers tokenizer (callable). Got {type(tokenizer).__name__} instead."
        )
    encoded = tokenizer(texts, add_special_tokens=add_special_tokens)
    try:
        ids = encoded["input_ids"]
    except (KeyError, TypeError):
        raise InvalidParameterError(
            f"The 'tokenizer' parameter of {fn} must return a mapping with 'input_ids'. Got {type(encoded).__name__} instead."
        ) from None
    return [list(map(int, row)) for row in ids]


def encode_texts(
    tokenizer: Any, texts: Sequence[str], *, max_length: int = 512, keep_bos: bool = False
) -> list[EncodedText]:
    """Tokenize texts (special tokens added as the tokenizer does) and mark the rows to keep.

    Parameters
    ----------
    tokenizer : transformers tokenizer
    texts : list of str
    max_length : int, default 512
        Tokens fed to the model per text, BOS included; longer inputs are cut on the right.
    keep_bos : bool, default False
        Keep the BOS token's row in the matrix (the model sees BOS either way).

    Returns
    -------
    list of EncodedText, one per text, in order.
    """
    fn = "encode_texts"
    texts = _check_texts(texts, fn)
    _check_int(max_length, "max_length", fn, 2)
    bos = getattr(tokenizer, "bos_token_id", None)
    out = []
    for ids in _token_ids(tokenizer, texts, True, fn):
        has_bos = bos is not None and bool(ids) and ids[0] == bos
        n_text = len(ids) - int(has_bos)
        kept = ids[:max_length]
        out.append(
            EncodedText(
                ids=tuple(kept),
                start=1 if (has_bos and not keep_bos) else 0,
                n_text_tokens=n_text,
                truncated=len(ids) > max_length,
                has_bos=has_bos,
            )
        )
    return out


def encode_responses(
    tokenizer: Any,
    prompts: Sequence[str],
    responses: Sequence[str],
    *,
    max_length: int = 512,
    keep_bos: bool = False,
    context: str = "prompt",
) -> list[EncodedText]:
    """Tokenize (prompt, response) pairs so that only the response's rows form the matrix.

    The prompt is tokenized with special tokens (BOS), the response without, and the ids are
    concatenated, so the response tokens are the same whatever the prompt.

    Parameters
    ----------
    prompts, responses : list of str, same length
    max_length : int
        Tokens fed per pair. When too long, the response keeps at least ``max_length // 2``
        tokens (or all of it), and the prompt keeps its BOS and its *last* tokens.
    keep_bos : bool
        Only used with ``context="none"``, where the BOS row would otherwise be the first row.
    context : {"prompt", "none"}
        ``"prompt"``: the model reads the prompt, then the response (the response's hidden
        states are conditioned on it). ``"none"``: the response alone.
    """
    fn = "encode_responses"
    prompts = _check_texts(prompts, fn, "prompts")
    responses = _check_texts(responses, fn, "responses")
    if len(prompts) != len(responses):
        raise InvalidParameterError(
            f"The 'responses' parameter of {fn} must have one response per prompt ({len(prompts)}). Got {len(responses)} instead."
        )
    if context not in ("prompt", "none"):
        raise InvalidParameterError(
            f"The 'context' parameter of {fn} must be 'prompt' or 'none'. Got {context!r} instead."
        )
    _check_int(max_length, "max_length", fn, 4)
    bos = getattr(tokenizer, "bos_token_id", None)
    heads = _token_ids(tokenizer, [p if context == "prompt" else "" for p in prompts], True, fn)
    bodies = _token_ids(tokenizer, responses, False, fn)
    out = []
    for head, full_body in zip(heads, bodies, strict=True):
        body = full_body
        has_bos = bos is not None and bool(head) and head[0] == bos
        truncated = len(head) + len(body) > max_length
        if truncated:
            body_keep = min(len(body), max(max_length - len(head), max_length // 2))
            head_keep = max_length - body_keep
            if len(head) > head_keep:
                head = (
                    [head[0], *head[len(head) - head_keep + 1 :]]
                    if has_bos
                    else head[len(head) - head_keep :]
                )
            body = body[:body_keep]
        start = len(head)
        if context == "none" and has_bos and keep_bos:
            start = 0
        out.append(
            EncodedText(
                ids=tuple(head + body),
                start=start,
                n_text_tokens=len(full_body),
                truncated=truncated,
                has_bos=has_bos,
            )
        )
    return out


_import_torch = functools.partial(import_torch, "Hidden-state extraction")


def _model_device(model: Any) -> Any:
    torch = _import_torch()
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError, TypeError):
        return torch.device("cpu")


def _check_model(model: Any, fn: str) -> Any:
    torch = _import_torch()
    if not isinstance(model, torch.nn.Module):
        raise InvalidParameterError(
            f"The 'model' parameter of {fn} must be a torch model (a transformers causal LM). Got {type(model).__name__} instead."
        )
    return torch


def forward_hidden(model: Any, input_ids: Any, attention_mask: Any, *, layer: int = -1) -> Any:
    """Run the model's base (no LM head) and return hidden states, shape (B, T, d).

    ``layer=-1`` gives ``last_hidden_state`` (after the final norm, equal to the causal LM's
    ``hidden_states[-1]``); another value indexes ``hidden_states`` (0 = embeddings).

    Raises
    ------
    InvalidParameterError
        The model returns no hidden states, or ``layer`` is out of range.
    """
    fn = "forward_hidden"
    _check_model(model, fn)
    base = getattr(model, "base_model", model)
    kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask}
    if layer != -1:
        kwargs["output_hidden_states"] = True
    try:
        out = base(use_cache=False, **kwargs)
    except TypeError:
        out = base(**kwargs)
    hidden: Any = None
    if layer == -1:
        hidden = getattr(out, "last_hidden_state", None)
        if hidden is None:
            states = getattr(out, "hidden_states", None)
            hidden = states[-1] if states else None
    else:
        states = getattr(out, "hidden_states", None)
        if states:
            if not -len(states) <= layer < len(states):
                raise InvalidParameterError(
                    f"The 'layer' parameter of {fn} must be in [{-len(states)}, {len(states) - 1}] for this model. Got {layer} instead."
                )
            hidden = states[layer]
    if hidden is None or getattr(hidden, "ndim", 0) != 3:
        raise InvalidParameterError(
            f"The 'model' parameter of {fn} must return hidden states (an output with 'last_hidden_state' or "
            f"'hidden_states' of shape (batch, tokens, d)). Got {type(out).__name__} from {type(base).__name__} instead."
        )
    return hidden


def _progress(total: int, enabled: bool, desc: str) -> Any:
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit="text", file=sys.stderr, leave=False)


def iter_encoded_hidden_states(
    model: Any,
    encoded: Sequence[EncodedText],
    *,
    pad_token_id: int = 0,
    batch_size: int = 8,
    min_tokens: int = 2,
    layer: int = -1,
    sort_by_length: bool = True,
    stats: ExtractionStats | None = None,
    progress: bool = False,
) -> Iterator[TextHiddenStates]:
    """Hidden-state matrices of pre-tokenized inputs, batched with right padding.

    Skipped inputs are yielded first, then the others batch by batch (longest first when
    ``sort_by_length``, which minimises padding); each record carries its input ``index``.
    See :func:`iter_hidden_states` for the parameters.
    """
    fn = "iter_hidden_states"
    torch = _check_model(model, fn)
    _check_int(batch_size, "batch_size", fn, 1)
    _check_int(min_tokens, "min_tokens", fn, 2)
    stats = stats if stats is not None else ExtractionStats()
    stats.n_texts += len(encoded)
    todo: list[int] = []
    for i, enc in enumerate(encoded):
        stats.n_truncated += int(enc.truncated)
        reason = (
            SKIP_EMPTY
            if enc.n_text_tokens == 0 or enc.n_rows <= 0
            else SKIP_TOO_SHORT
            if enc.n_rows < min_tokens
            else None
        )
        if reason is not None:
            stats.skipped[reason] = stats.skipped.get(reason, 0) + 1
            yield TextHiddenStates(i, None, max(enc.n_rows, 0), len(enc.ids), enc.truncated, reason)
        else:
            todo.append(i)
    if sort_by_length:
        todo.sort(key=lambda i: -len(encoded[i].ids))
    device = _model_device(model)
    bar = _progress(len(todo), progress, "hidden states")
    try:
        for b in range(0, len(todo), batch_size):
            batch = todo[b : b + batch_size]
            width = max(len(encoded[i].ids) for i in batch)
            start = time.perf_counter()
            ids = torch.full((len(batch), width), int(pad_token_id), dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                n = len(encoded[i].ids)
                ids[row, :n] = torch.tensor(encoded[i].ids, dtype=torch.long)
                mask[row, :n] = 1
            with torch.inference_mode():
                hidden = forward_hidden(model, ids.to(device), mask.to(device), layer=layer)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
            stats.forward_seconds += time.perf_counter() - start
            stats.n_batches += 1
            stats.padded_tokens += len(batch) * width
            for row, i in enumerate(batch):
                enc = encoded[i]
                matrix = hidden[row, enc.start : len(enc.ids)]
                stats.input_tokens += len(enc.ids)
                stats.matrix_tokens += enc.n_rows
                yield TextHiddenStates(i, matrix, enc.n_rows, len(enc.ids), enc.truncated, None)
            if bar is not None:
                bar.update(len(batch))
    finally:
        if bar is not None:
            bar.close()


def pad_token_id_of(tokenizer: Any) -> int:
    """The id used for right padding: pad, else EOS, else 0 (masked out, so only validity matters)."""
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if isinstance(value, int):
            return value
        if isinstance(value, (list, tuple)) and value and isinstance(value[0], int):
            return value[0]
    return 0


def iter_hidden_states(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    batch_size: int = 8,
    max_length: int = 512,
    keep_bos: bool = False,
    min_tokens: int = 2,
    layer: int = -1,
    sort_by_length: bool = True,
    stats: ExtractionStats | None = None,
    progress: bool = False,
) -> Iterator[TextHiddenStates]:
    """Yield one :class:`TextHiddenStates` per text: its ``(L_i, d)`` last hidden states, or why skipped.

    Parameters
    ----------
    model : transformers causal LM (torch.nn.Module)
        Run on the device it is on, in its dtype, under ``torch.inference_mode``.
    tokenizer : transformers tokenizer
    texts : list of str
    batch_size : int, default 8
        Texts per forward pass; ``1`` reproduces the authors' one-at-a-time loop.
    max_length : int, default 512
        Tokens per text fed to the model (BOS included); longer texts are cut and counted.
    keep_bos : bool, default False
        Keep the BOS row in the matrix (see the module notes).
    min_tokens : int, default 2
        Texts with fewer matrix rows are skipped (``"too_short"``); must be >= 2.
    layer : int, default -1
        Which hidden states: -1 the last (after the final norm), else an index of ``hidden_states``.
    sort_by_length : bool, default True
        Batch texts of similar length together (results are the same, padding is smaller).
    stats : ExtractionStats, optional
        Filled with counts and timings.
    progress : bool, default False
        Show a progress bar on stderr (needs tqdm).

    Yields
    ------
    TextHiddenStates
        Skipped texts first, then the others batch by batch; use ``.index`` to restore order.
    """
    encoded = encode_texts(tokenizer, texts, max_length=max_length, keep_bos=keep_bos)
    yield from iter_encoded_hidden_states(
        model,
        encoded,
        pad_token_id=pad_token_id_of(tokenizer),
        batch_size=batch_size,
        min_tokens=min_tokens,
        layer=layer,
        sort_by_length=sort_by_length,
        stats=stats,
        progress=progress,
    )


def extract_hidden_states(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    batch_size: int = 8,
    max_length: int = 512,
    keep_bos: bool = False,
    min_tokens: int = 2,
    layer: int = -1,
) -> list[Any]:
    """The hidden-state matrices of all texts, in order; strict about unusable texts.

    Same parameters as :func:`iter_hidden_states`.

    Returns
    -------
    list of torch.Tensor
        One ``(L_i, d)`` tensor per text (a copy, on the model's device, in the model's dtype).

    Raises
    ------
    InvalidParameterError
        A text is empty or shorter than ``min_tokens`` rows (the message names its index).
    """
    texts = _check_texts(texts, "extract_hidden_states")
    out: list[Any] = [None] * len(texts)
    for rec in iter_hidden_states(
        model,
        tokenizer,
        texts,
        batch_size=batch_size,
        max_length=max_length,
        keep_bos=keep_bos,
        min_tokens=min_tokens,
        layer=layer,
    ):
        if rec.skipped is not None:
            what = (
                "has no tokens"
                if rec.skipped == SKIP_EMPTY
                else f"gives {rec.n_tokens} row(s), fewer than min_tokens={min_tokens}"
            )
            raise InvalidParameterError(
                f"The 'texts' parameter of extract_hidden_states must hold texts of at least {min_tokens} tokens. "
                f"Got a text at index {rec.index} that {what} instead ({texts[rec.index][:40]!r})."
            )
        out[rec.index] = rec.hidden.clone()
    return out
