"""Guards against runaway generations, which sampling multiplies by N.

Every backend honours EOS, stop strings and ``max_tokens`` (finish reasons ``"eos"``,
``"stop"``, ``"length"``). On top of that a :class:`Guards` policy stops a candidate that
repeats itself (a streaming periodicity check on its tokens) or a request that overruns its
wall-clock budget; such candidates get the finish reason ``"guard"`` and are left out of
decisions by default.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from metricwise.errors import InvalidParameterError


@dataclass(frozen=True)
class Guards:
    """Runaway-generation policy.

    Attributes
    ----------
    max_seconds:
        Wall-clock budget of one request (one batch of prompts), in seconds; ``None`` is no limit.
    max_period:
        Longest token period the repetition detector looks for.
    min_repeated_tokens:
        The detector fires when the last ``max(min_repeated_tokens, period * min_repeats)``
        tokens are periodic: 32 identical tokens, or 8 copies of a 4-token phrase.
    min_repeats:
        Copies of the period that must be seen.
    """

    max_seconds: float | None = 300.0
    max_period: int = 12
    min_repeated_tokens: int = 32
    min_repeats: int = 4

    def __post_init__(self) -> None:
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise InvalidParameterError(
                f"The 'max_seconds' parameter of Guards must be > 0 or None. Got {self.max_seconds!r} instead."
            )
        for name in ("max_period", "min_repeated_tokens", "min_repeats"):
            if getattr(self, name) < 1:
                raise InvalidParameterError(
                    f"The '{name}' parameter of Guards must be >= 1. Got {getattr(self, name)!r} instead."
                )

    def deadline(self) -> float:
        """Monotonic time after which the request in progress must stop."""
        return float("inf") if self.max_seconds is None else time.monotonic() + self.max_seconds


def is_repeating(tokens: Sequence[int], guards: Guards) -> bool:
    """True when the tail of ``tokens`` is periodic with some period <= ``guards.max_period``.

    Cost per call: at most ``max_period`` slice comparisons of length
    ``max(min_repeated_tokens, period * min_repeats)``, run in C.
    """
    n = len(tokens)
    for period in range(1, guards.max_period + 1):
        span = max(guards.min_repeated_tokens, period * guards.min_repeats)
        if span > n:
            continue
        tail = tokens[n - span :]
        if tail[period:] == tail[:-period]:
            return True
    return False


def truncate_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """Cut ``text`` before the earliest stop string; returns (text, whether one was found)."""
    cut = -1
    for s in stop:
        if s:
            k = text.find(s)
            if k != -1 and (cut == -1 or k < cut):
                cut = k
    return (text[:cut], True) if cut != -1 else (text, False)
