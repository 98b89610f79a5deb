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

from metricwise.errors import UnknownNameError, did_you_mean
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
