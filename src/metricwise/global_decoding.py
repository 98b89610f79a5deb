"""Globally normalised top-k / top-p / min-p sampling by independent Metropolis-Hastings (IMH).

A truncating sampler (top-k, top-p, min-p) renormalises the kept tokens at every step: it draws
from the *locally* normalised distribution ``q(y) = prod_t q_t(y_t | y_<t)``. "Local and Global
Decoding in Text Generation" (Gareev, Hofmann, Krishnasamy, Pimentel 2024) asks what the same
truncation gives when normalised once over whole sequences instead:

    p_g(y) = p(y)^(1/T) * 1[y in S] / Z,

where ``p`` is the raw model, ``T`` the temperature and ``S`` the sequences whose every token lies
inside the sampler's truncation set at its step (the set the local sampler computes, after
temperature, in :data:`~metricwise.backends.sampling.SAMPLER_ORDER`). At ``T = 1`` this is the
model restricted to ``S`` and renormalised. At ``T != 1`` the target is the *global* tempered
distribution ``p(y)^(1/T)``, restricted and renormalised over sequences, not the product of
per-step tempered distributions that local sampling draws from.

``p_g`` cannot be sampled directly (``Z`` sums over every sequence), but every candidate a backend
draws records ``logp`` (raw model) and ``logq`` (the distribution it was drawn from), so the
importance weight of a proposal is known up to a constant:

    log w(y) = logp(y) / T - logq(y)    (for top-k at T = 1: the log of the product of the
                                          truncation sets' probability masses along y)

An independent Metropolis-Hastings chain whose proposals are ordinary local samples moves from
the current state ``y`` to the proposal ``y'`` with probability ``min(1, w(y') / w(y))``; its
states are distributed as ``p_g`` in the limit. The constant cancels in the ratio, so no model
call is needed beyond the proposals themselves.

Conventions
-----------
- **Proposals are local samples, kept in the store.** Proposal ``i`` is sample ``i`` of the
  prompt (seed ``seed + i``), so a chain over ``M`` proposals reads the same stored samples as
  a local run of ``n = M``: both decodings share one pool, the chain is reproducible from the
  seed, and an interrupted run resumes.
- **States.** ``s_0`` is proposal 0; ``s_i`` is proposal ``i`` when accepted, else ``s_{i-1}``.
  The output is ``n`` states: ``s_{b + t - 1}, s_{b + 2t - 1}, ..., s_{b + nt - 1}`` for burn-in
  ``b`` and thinning ``t``, so the chain reads ``M = b + n * t`` proposals. With the defaults
  (``b = 0``, ``t = 1``) and no truncation at ``T = 1`` every proposal is accepted and the
  states are the proposals themselves: global decoding then equals local decoding.
- **Outside the target.** A proposal that was cut off (finish reason ``length`` or ``guard``,
  or unknown) or whose ``logq`` is not finite (it left the truncation set) has ``w = 0`` and is
  never accepted. If proposal 0 is such a proposal, the first acceptable one replaces it.
- **Acceptance draws.** Proposal ``i``'s uniform number comes from one stream per prompt,
  seeded from ``(seed, prompt)``, so the first ``M`` proposals always meet the same numbers: a
  longer chain extends a shorter one.

IMH against importance weights
------------------------------
``decide(..., weights="importance")`` weights the same proposals by ``exp(logp - logq)``,
self-normalised; since ``q`` is zero outside ``S``, at ``T = 1`` that targets the same ``p_g``.
(At ``T != 1`` it targets the raw ``p`` restricted to ``S``, not ``p_g``.) The two differ in
what they return: IMH returns real samples with repeats, uniform weights over states, usable by
any consumer of samples (and its ``n`` states cost ``M`` proposals, with repeats wasting some
of them when acceptance is low); importance weighting keeps every proposal, lower variance
for the same ``M``, but needs weights downstream and collapses onto a few proposals when the
weights are uneven (watch the effective sample size).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from metricwise.errors import InvalidParameterError
from metricwise.types import COMPLETE_FINISH_REASONS, Candidate, SampleSet

#: How samples relate to the truncating sampler: ``local`` (as drawn: renormalised per step) or
#: ``global`` (an IMH chain towards the globally normalised distribution).
DECODINGS: tuple[str, ...] = ("local", "global")

# Separates the acceptance stream from the samples' own streams (which use (seed, i, prompt)).
_STREAM_TAG = 0x494D48


@dataclass(frozen=True)
class ChainSettings:
    """Burn-in and thinning of an IMH chain.

    Attributes
    ----------
    burn_in:
        Proposals read before the first state that is returned (the chain starts from a local
        sample, which is already close to the target; raise it when acceptance is low).
    thin:
        Proposals read per returned state (1 returns every state).
    """

    burn_in: int = 0
    thin: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.burn_in, bool) or not isinstance(self.burn_in, int) or self.burn_in < 0:
            raise InvalidParameterError(
                f"The 'burn_in' parameter of global decoding must be an int >= 0. Got {self.burn_in!r} instead."
            )
        if isinstance(self.thin, bool) or not isinstance(self.thin, int) or self.thin < 1:
            raise InvalidParameterError(
                f"The 'thin' parameter of global decoding must be an int >= 1. Got {self.thin!r} instead."
            )

    def proposals(self, n: int) -> int:
        """Proposals a chain of ``n`` states reads: ``burn_in + n * thin``."""
        return self.burn_in + n * self.thin


@dataclass(frozen=True)
class Chain:
    """An IMH chain's returned states and how it moved.

    Attributes
    ----------
    states:
        The ``n`` returned states as a :class:`SampleSet` (repeats expected), with the
        proposals' prompt and id.
    state_proposals:
        For each state, the index of the proposal it is (length ``n``).
    n_proposals:
        Proposals read, ``burn_in + n * thin``.
    accepted:
        Proposals ``1 .. M - 1`` that the chain moved to.
    distinct_states:
        Distinct texts among the returned states.
    cut_off:
        Share of the proposals read that lie outside the target (cut off by ``max_tokens`` or a
        guard, or with a non-finite ``logq``): weight 0, never accepted.
    settings:
        The burn-in and thinning used.
    """

    states: SampleSet
    state_proposals: tuple[int, ...]
    n_proposals: int
    accepted: int
    distinct_states: int
    settings: ChainSettings
    cut_off: float = 0.0

    @property
    def acceptance_rate(self) -> float:
        """Accepted moves over proposals offered after the first, which starts the chain
        (``accepted / (n_proposals - 1)``; 1.0 for a one-proposal chain)."""
        offered = self.n_proposals - 1
        return self.accepted / offered if offered else 1.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_proposals": self.n_proposals,
            "accepted": self.accepted,
            "acceptance_rate": self.acceptance_rate,
            "distinct_states": self.distinct_states,
            "cut_off": self.cut_off,
            "burn_in": self.settings.burn_in,
            "thin": self.settings.thin,
            "state_proposals": list(self.state_proposals),
        }


def check_decoding(decoding: str) -> str:
    """Return ``decoding`` when it is one of :data:`DECODINGS`, else raise a clear error."""
    if decoding not in DECODINGS:
        raise InvalidParameterError(
            f"The 'decoding' parameter must be one of {', '.join(DECODINGS)}. Got {decoding!r} instead."
        )
    return decoding


class ChainMisuse(InvalidParameterError):
    """A setting that cannot go with the decoding asked for; ``param`` names the one to change
    (a server's 400 points at it)."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


def check_chain_use(
    decoding: str,
    *,
    chain_given: dict[str, int] | None = None,
    temperature: float | None = None,
    weights: str | None = None,
    adaptive: bool = False,
    spell: Callable[[str], str] = str,
) -> None:
    """Refuse the settings that cannot go with ``decoding``: one rule set for the CLI, the
    server and eval, each spelling parameters as its users write them (``spell("burn_in")`` is
    ``--burn_in`` on the command line, ``burn_in`` in a request body).

    ``chain_given`` holds the chain settings (``burn_in``, ``thin``) the user set explicitly.

    Raises :class:`ChainMisuse` for: a chain setting with local decoding; global decoding with
    adaptive sampling (a chain's states are not a prefix of its proposals), at temperature 0
    (greedy decoding has no distribution to normalise), or with importance weights (the states
    already follow the target: exp(logp - logq) would correct for the sampler twice).
    """
    check_decoding(decoding)
    d = spell("decoding")
    if decoding == "local":
        for name, value in (chain_given or {}).items():
            raise ChainMisuse(
                f"'{spell(name)}' applies to '{d} global' only. Got {spell(name)} {value} with "
                f"{d} local instead.",
                name,
            )
        return
    if adaptive:
        raise ChainMisuse(
            f"'{d} global' and '{spell('adaptive')}' cannot be combined: a chain's states are not "
            "a prefix of its proposals. Use one of them.",
            "decoding",
        )
    if temperature == 0:
        raise ChainMisuse(
            f"'{d} global' needs a sampling temperature > 0 (greedy decoding has no distribution "
            f"to normalise). Got {spell('temperature')} 0 instead.",
            "decoding",
        )
    if weights == "importance":
        w = spell("weights")
        raise ChainMisuse(
            f"'{w} importance' cannot weight the states of '{d} global': they already follow the "
            "global distribution, and exp(logp - logq) would correct for the sampler twice. Use "
            f"{w} uniform or model (or importance weights on local samples, which target the "
            "same distribution at temperature 1).",
            "weights",
        )


def log_weight(candidate: Candidate, temperature: float = 1.0) -> float:
    """``log p(y) / T - log q(y)``, the unnormalised log of ``p_g(y) / q(y)``; ``-inf`` outside
    the target (a cut-off proposal, or a non-finite ``logq``).

    Raises :class:`InvalidParameterError` when the candidate has no ``logp`` or ``logq``: a
    chain needs both, and a backend that gives neither cannot decode globally.
    """
    if candidate.logp is None or candidate.logq is None:
        raise InvalidParameterError(
            "Global decoding needs each proposal's 'logp' and 'logq'. Got a candidate without "
            f"{'logp' if candidate.logp is None else 'logq'} instead (a server that returns no "
            "log-probabilities cannot decode globally)."
        )
    if candidate.finish_reason not in COMPLETE_FINISH_REASONS:
        return -math.inf
    if not (math.isfinite(candidate.logp) and math.isfinite(candidate.logq)):
        return -math.inf
    return candidate.logp / temperature - candidate.logq


def acceptance_uniforms(seed: int, prompt: str | None, count: int) -> np.ndarray:
    """The chain's uniform numbers in [0, 1) for proposals ``0 .. count - 1``, shape (count,).

    One stream per (seed, prompt): a prefix of a longer draw equals a shorter draw.
    """
    key = zlib.crc32((prompt or "").encode("utf-8"))
    rng = np.random.default_rng([int(seed), key, _STREAM_TAG])
    return rng.random(count)


def imh_chain(
    proposals: SampleSet | Sequence[Candidate],
    n: int,
    *,
    temperature: float = 1.0,
    settings: ChainSettings | None = None,
    seed: int = 0,
    prompt: str | None = None,
) -> Chain:
    """Run an IMH chain over ``proposals`` and return ``n`` of its states.

    Parameters
    ----------
    proposals:
        Local samples in sampling order, each with ``logp`` and ``logq``; at least
        ``settings.proposals(n)`` of them (only that many are read).
    n:
        States to return.
    temperature:
        The sampler's temperature ``T`` (> 0); the target is ``p(y)^(1/T)`` on the truncation
        support (see the module docstring).
    settings:
        Burn-in and thinning (default: none).
    seed, prompt:
        Key the acceptance stream (the prompt defaults to the sample set's). Use the sampling
        seed, so one seed reproduces proposals and chain.

    Cost: O(M) for M proposals; no model call.
    """
    settings = settings or ChainSettings()
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InvalidParameterError(
            f"The 'n' parameter of imh_chain must be an int >= 1. Got {n!r} instead."
        )
    if not (temperature > 0 and math.isfinite(temperature)):
        raise InvalidParameterError(
            f"Global decoding needs a sampling temperature > 0 (greedy has nothing to normalise). Got {temperature!r} instead."
        )
    if isinstance(proposals, SampleSet):
        candidates = proposals.candidates
        prompt = proposals.prompt if prompt is None else prompt
        set_id = proposals.id
    else:
        candidates = tuple(proposals)
        set_id = None
    total = settings.proposals(n)
    if len(candidates) < total:
        raise InvalidParameterError(
            f"A chain of {n} states with burn_in={settings.burn_in} and thin={settings.thin} reads "
            f"{total} proposals. Got {len(candidates)} instead."
        )
    weights = [log_weight(c, temperature) for c in candidates[:total]]
    uniforms = acceptance_uniforms(seed, prompt, total)
    current, accepted = 0, 0
    chosen: list[int] = []
    for i in range(total):
        if i > 0:
            # Accept with probability min(1, w'/w): log u < log w' - log w. A proposal of weight
            # 0 is never accepted; any acceptable one replaces a current state of weight 0.
            proposed, held = weights[i], weights[current]
            if proposed > -math.inf and (
                held == -math.inf or _accept(uniforms[i], proposed - held)
            ):
                current = i
                accepted += 1
        if i >= settings.burn_in and (i - settings.burn_in) % settings.thin == settings.thin - 1:
            chosen.append(current)
    states = tuple(candidates[i] for i in chosen)
    return Chain(
        states=SampleSet(candidates=states, prompt=prompt, id=set_id),
        state_proposals=tuple(chosen),
        n_proposals=total,
        accepted=accepted,
        distinct_states=len({c.text for c in states}),
        settings=settings,
        cut_off=sum(w == -math.inf for w in weights) / total,
    )


def _accept(uniform: float, log_ratio: float) -> bool:
    """Metropolis-Hastings acceptance: ``u < min(1, exp(log_ratio))`` for ``u`` in [0, 1)."""
    return log_ratio >= 0 or uniform < math.exp(log_ratio)


def global_chains(
    pools: Sequence[SampleSet],
    n: int,
    *,
    temperature: float,
    settings: ChainSettings | None = None,
    seed: int = 0,
) -> list[Chain]:
    """One chain of ``n`` states per pool of proposals (see :func:`imh_chain`)."""
    return [
        imh_chain(pool, n, temperature=temperature, settings=settings, seed=seed) for pool in pools
    ]


def chain_summary(chains: Sequence[Chain]) -> dict[str, Any]:
    """What a set of chains did, for reports: acceptance rate (mean, min, max over prompts),
    mean distinct states, proposals read per chain, burn-in and thinning."""
    if not chains:
        return {}
    rates = np.array([c.acceptance_rate for c in chains])
    return {
        "cut_off": float(np.mean([c.cut_off for c in chains])),
        "acceptance_rate": float(rates.mean()),
        "acceptance_rate_min": float(rates.min()),
        "acceptance_rate_max": float(rates.max()),
        "distinct_states": float(np.mean([c.distinct_states for c in chains])),
        "states": len(chains[0].state_proposals),
        "n_proposals": chains[0].n_proposals,
        "burn_in": chains[0].settings.burn_in,
        "thin": chains[0].settings.thin,
    }


def describe_chains(chains: Sequence[Chain]) -> str:
    """One line for a command's standard error: how the chains moved."""
    s = chain_summary(chains)
    if not s:
        return "global decoding: no chains"
    line = (
        f"global decoding: acceptance rate {s['acceptance_rate']:.2f} on average "
        f"({s['acceptance_rate_min']:.2f}-{s['acceptance_rate_max']:.2f} over {len(chains)} prompts), "
        f"{s['distinct_states']:.1f} distinct states of {s['states']} from {s['n_proposals']} proposals"
    )
    if s["cut_off"] > 0:
        line += (
            f"; {s['cut_off']:.0%} of the proposals were cut off (max_tokens or a guard) and are "
            "never accepted"
            + (": add a stop string (--stop) or raise --max_tokens" if s["cut_off"] >= 0.5 else "")
        )
    return line
