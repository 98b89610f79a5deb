"""The backend protocol: N candidates per prompt, each with its log-probabilities.

A backend draws ``config.n`` candidates for every prompt and records, while sampling (never by a
second scoring pass), each candidate's ``logp`` (sequence log-probability under the raw model)
and ``logq`` (under the distribution it was drawn from, after temperature and truncation).

Sample ``i`` of a prompt is drawn with seed ``config.seed + i`` wherever the backend allows it,
so a stored set can be extended from n to 2n without changing its first n samples.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from metricwise.errors import UnknownNameError, did_you_mean
from metricwise.guards import Guards, is_repeating, truncate_at_stop
from metricwise.types import Candidate, SampleSet, SamplingConfig


@runtime_checkable
class Backend(Protocol):
    """What every sampling backend provides."""

    #: Identifies the model and backend for the sample store and result signatures.
    signature: str

    def sample(self, prompts: Sequence[str], config: SamplingConfig, *, start: int = 0) -> list[SampleSet]:
        """Draw samples ``start .. config.n - 1`` for every prompt (seeds ``config.seed + i``).

        Returns one :class:`SampleSet` per prompt holding ``config.n - start`` candidates.
        """
        ...

    def greedy(self, prompts: Sequence[str], config: SamplingConfig) -> list[Candidate]:
        """One greedy (argmax) continuation per prompt; ``logq`` is 0 (a point mass)."""
        ...

    def close(self) -> None:
        """Release the model or connections."""
        ...


def sample_seed(seed: int, index: int, prompt: str) -> tuple[int, int, int]:
    """Entropy of sample ``index``'s random stream: the run's seed, the index, and the prompt.

    The prompt enters through a stable hash so that different prompts do not share random
    numbers (sample i of every item would otherwise be correlated across items).
    """
    import zlib

    return (int(seed), int(index), zlib.crc32(prompt.encode("utf-8")))


def sample_sets(
    prompts: Sequence[str],
    config: SamplingConfig,
    start: int,
    greedy: Callable[[Sequence[str], SamplingConfig], list[Candidate]],
    draw: Callable[[list[str], int], Sequence[Sequence[Candidate]]],
) -> list[SampleSet]:
    """The shared body of every backend's ``sample``: samples ``start .. n - 1`` per prompt.

    ``draw(prompts, m)`` returns ``m`` candidates per prompt. Temperature 0 is greedy decoding,
    so every sample is the greedy sequence.
    """
    m = config.n - start
    if m < 1:
        return [SampleSet(candidates=(), prompt=p) for p in prompts]
    if config.temperature == 0:
        return [SampleSet(candidates=(c,) * m, prompt=p) for p, c in zip(prompts, greedy(prompts, config), strict=True)]
    rows = draw(list(prompts), m)
    return [SampleSet(candidates=tuple(row), prompt=p) for p, row in zip(prompts, rows, strict=True)]


class DecodeState:
    """The per-sequence bookkeeping of a batched token-by-token decode (the hf and llamacpp backends).

    Sequences are numbered 0 .. total-1. Each step, :meth:`advance` records one token per active
    sequence with its log-probabilities under p and q, and decides whether the sequence ends:
    ``"eos"``, ``"stop"`` (a stop string appeared; the text is cut before it), ``"guard"``
    (repetition or the wall-clock deadline) or ``"length"`` (``max_tokens`` reached).

    Parameters
    ----------
    total:
        Number of sequences.
    config, guards:
        Stop strings and ``max_tokens``; the repetition policy.
    is_eos:
        Whether a token id ends generation.
    detokenize:
        Token ids -> text (special tokens left out).
    sampled:
        False for greedy decoding, whose candidates get ``logq = 0`` (a point mass).
    """

    def __init__(
        self,
        total: int,
        config: SamplingConfig,
        guards: Guards,
        is_eos: Callable[[int], bool],
        detokenize: Callable[[list[int]], str],
        *,
        sampled: bool,
    ) -> None:
        self.config, self.guards = config, guards
        self.is_eos, self.detokenize, self.sampled = is_eos, detokenize, sampled
        self.tokens: list[list[int]] = [[] for _ in range(total)]
        self.logp = np.zeros(total)
        self.logq = np.zeros(total)
        self.finish: list[str | None] = [None] * total
        self.stop_texts: list[str] = [""] * total

    def advance(
        self, active: Sequence[int], chosen: Sequence[int], logp: Sequence[float], logq: Sequence[float], step: int, timed_out: bool
    ) -> list[int]:
        """Record step ``step``'s token for each sequence in ``active`` (row r is ``active[r]``).

        Returns the rows (indices into ``active``) whose sequences go on.
        """
        still: list[int] = []
        for row, seq in enumerate(active):
            token = int(chosen[row])
            self.tokens[seq].append(token)
            self.logp[seq] += logp[row]
            self.logq[seq] += logq[row]
            reason = self._finish_reason(seq, token)
            if reason is None and step == self.config.max_tokens - 1:
                reason = "length"
            if reason is None and timed_out:
                reason = "guard"
            if reason is None:
                still.append(row)
            else:
                self.finish[seq] = reason
        return still

    def _finish_reason(self, seq: int, token: int) -> str | None:
        tokens = self.tokens[seq]
        if self.is_eos(token):
            return "eos"
        if self.config.stop:
            text, found = truncate_at_stop(self.detokenize(tokens), self.config.stop)
            if found:
                self.stop_texts[seq] = text
                return "stop"
        if is_repeating(tokens, self.guards):
            return "guard"
        return None

    def candidate(self, seq: int) -> Candidate:
        """Sequence ``seq`` as a candidate; its text leaves out EOS and everything from a stop string on."""
        tokens, finish = self.tokens[seq], self.finish[seq]
        if finish == "stop":
            text = self.stop_texts[seq]
        else:
            text = self.detokenize(tokens[:-1] if finish == "eos" else tokens)
        return Candidate(
            text=text,
            logp=float(self.logp[seq]),
            logq=float(self.logq[seq]) if self.sampled else 0.0,
            n_tokens=len(tokens),
            finish_reason=finish,
            token_ids=tuple(tokens),
        )


#: Backend name -> "module:factory"; modules import their heavy dependencies lazily.
BACKENDS: dict[str, str] = {
    "hf": "metricwise.backends.hf:HFBackend",
    "llamacpp": "metricwise.backends.llamacpp:LlamaCppBackend",
    "openai": "metricwise.backends.openai:create_backend",
}


def load_backend(name: str, model: str, **options: Any) -> Backend:
    """Instantiate backend ``name`` for ``model`` (a named model, a path, a hub id or a URL)."""
    if name not in BACKENDS:
        raise UnknownNameError(
            f"The 'backend' parameter must be one of {', '.join(sorted(BACKENDS))}. Got {name!r} instead."
            f"{did_you_mean(name, list(BACKENDS))}"
        )
    import importlib

    module_name, _, factory_name = BACKENDS[name].partition(":")
    factory = getattr(importlib.import_module(module_name), factory_name)
    backend: Backend = factory(model, **options)
    return backend
