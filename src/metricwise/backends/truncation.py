"""Top-p (nucleus) truncation of torch logits, exact and optionally free of host synchronisation.

The kept set follows the definition in :mod:`metricwise.backends.sampling`: a token is kept when
the mass of the tokens ranked before it is below ``top_p`` (the most probable token is always
kept). To make that set a function of the logits alone, two details are fixed:

- **Ranking.** Tokens are ranked by probability (the float32 ``softmax`` of the scores)
  descending, ties by token id ascending: the order a stable descending sort gives. The
  probabilities, not the scores, are compared, so two scores that round to the same float32
  probability are a tie.
- **Mass.** Each probability ``p`` counts as the integer ``floor(p * 2**62)`` and masses are
  summed in int64, which is exact and independent of the summation order (float sums are not,
  and a scatter-add of floats on a GPU is not even repeatable). A row's total stays below
  ``2**63`` because float32 probabilities sum to at most about ``1 + V * 2**-24``; the
  truncation loses less than ``V * 2**-62`` of mass per row (``6e-14`` for ``V = 2**18``).
  The comparison ``mass_before < top_p`` becomes ``mass_before < ceil(top_p * 2**62)``.

Two kernels compute that same set (:func:`top_p_filter` chooses with ``sync_free``):

- **Partial sort** (synchronising): ``torch.topk`` of the :data:`TOP_P_PARTIAL` most probable
  tokens; a row whose nucleus does not provably lie strictly above the K-th value (a wider
  nucleus, or ties at the K-th value that ``topk`` may have cut anywhere) goes to the radix
  select, and those rows are picked out on the host. Cheapest on a CPU, where reading a flag
  back costs nothing.
- **Radix select** (sync-free): the probabilities' float32 bit patterns, which order like the
  values, are searched MSB-first in two fixed passes (16 and 14 bits) of mass histograms
  (``scatter_add_``), which give the probability of the last kept token exactly; its ties are
  then kept in id order with one cumulative count. Every shape is fixed and nothing is read
  back, so a decode loop on an accelerator can queue it without waiting.
"""

from __future__ import annotations

import functools
import math
from typing import Any

from metricwise.backends.sampling import TOP_P_PARTIAL
from metricwise.errors import import_torch

#: Fixed-point scale of a probability's mass (see the module docstring).
MASS_SCALE_BITS = 62
#: Bits of a probability's float32 pattern resolved by each radix pass, most significant first.
#: Probabilities lie in [0, 1], so their patterns are below 2**30 (sign and top exponent bit 0).
_RADIX_PASSES: tuple[tuple[int, int], ...] = ((14, 16), (0, 14))


_torch = functools.partial(import_torch, "Top-p truncation")


def mass_limit(top_p: float) -> int:
    """``top_p`` as a fixed-point mass: a token is kept when the mass before it is below this.

    At least 1, so that the most probable token (mass 0 before it) is always kept, whatever
    ``top_p``.
    """
    return max(1, math.ceil(top_p * 2.0**MASS_SCALE_BITS))


def fixed_point_mass(probs: Any) -> Any:
    """``floor(probs * 2**62)`` as int64, same shape.

    Multiplying a float32 by a power of two is exact and the conversion truncates, so the same
    probability gives the same integer wherever and however it is computed.
    """
    torch = _torch()
    return (probs * 2.0**MASS_SCALE_BITS).to(torch.int64)


def top_p_filter(scores: Any, top_p: float, *, sync_free: bool = False) -> Any:
    """Set to ``-inf`` every score outside the top-p nucleus.

    Parameters
    ----------
    scores : Tensor, shape (B, V), float32
        Logits after temperature and top-k (``-inf`` entries allowed; each row needs one finite
        entry, as ``softmax`` does).
    top_p : float
        Nucleus mass, in (0, 1); ``top_p >= 1`` keeps everything, ``top_p <= 0`` only the most
        probable token (the lowest id among equally probable ones).
    sync_free : bool
        True: the radix select on every row, with no host synchronisation and only
        data-independent shapes (for a decode loop on an accelerator). False: the partial sort,
        which reads back whether any row needs the radix select (cheapest on a CPU). Both keep
        exactly the same tokens.

    Returns
    -------
    Tensor, shape (B, V), float32, on the scores' device
        A new tensor: kept scores unchanged, the others ``-inf``. ``log_softmax`` of a row is
        the distribution sampled from it.
    """
    torch = _torch()
    if top_p >= 1.0:
        return scores.clone()
    probs = torch.softmax(scores, dim=-1)
    limit = mass_limit(top_p)
    if sync_free:
        return torch.where(_radix_keep(probs, limit), scores, -math.inf)
    top_idx, keep_top, rest = _partial_sort(probs, limit)
    # Filling from the top k alone writes the (B, V) output once, instead of building a
    # (B, V) mask and applying it.
    out = torch.full_like(scores, -math.inf)
    out.scatter_(1, top_idx, torch.where(keep_top, scores.gather(1, top_idx), -math.inf))
    if rest is not None:
        out[rest] = torch.where(_radix_keep(probs[rest], limit), scores[rest], -math.inf)
    return out


def top_p_keep(scores: Any, top_p: float, *, sync_free: bool = False) -> Any:
    """The kept set of :func:`top_p_filter`, as a mask.

    Parameters are those of :func:`top_p_filter`. Returns a Tensor of shape (B, V), bool: True
    for a kept token (including a kept token whose score is already ``-inf``, which the
    filtered scores cannot tell from a removed one).
    """
    torch = _torch()
    if top_p >= 1.0:
        return torch.ones_like(scores, dtype=torch.bool)
    probs = torch.softmax(scores, dim=-1)
    limit = mass_limit(top_p)
    if sync_free:
        return _radix_keep(probs, limit)
    top_idx, keep_top, rest = _partial_sort(probs, limit)
    keep = torch.zeros_like(scores, dtype=torch.bool)
    keep.scatter_(1, top_idx, keep_top)
    if rest is not None:
        keep[rest] = _radix_keep(probs[rest], limit)
    return keep


def _radix_keep(probs: Any, limit: int) -> Any:
    """Kept tokens of every row by radix select, without host synchronisation.

    Parameters
    ----------
    probs : Tensor, shape (R, V), float32
        Row-wise softmax, values in [0, 1].
    limit : int
        :func:`mass_limit` of ``top_p``.

    Returns
    -------
    Tensor, shape (R, V), bool
    """
    torch = _torch()
    rows, vocab = probs.shape
    device = probs.device
    bits = probs.view(torch.int32)
    mass = fixed_point_mass(probs)
    # The search finds w, the smallest probability pattern whose first token (in rank order) is
    # kept: the smallest w whose mass strictly above it is below the limit. Each pass fixes the
    # next digits of w among the tokens sharing the digits found so far.
    prefix = torch.zeros(rows, 1, dtype=torch.int32, device=device)
    # One int64 buffer for both passes' bins (scatter_add_ wants int64 indices): the shift
    # writes int64 directly, and on a CPU each fresh (R, V) tensor costs about as much in page
    # faults as the arithmetic that fills it.
    index = torch.empty(rows, vocab, dtype=torch.int64, device=device)
    for shift, width in _RADIX_PASSES:
        digits = 1 << width
        # Bin 0 collects the tokens below the current bucket and the last bin those above it,
        # so the last bin carries the mass already ranked before the bucket. The clamp also
        # keeps a NaN row's patterns inside the histogram.
        torch.bitwise_right_shift(bits, shift, out=index)
        index.sub_((prefix.long() << width) - 1).clamp_(0, digits + 1)
        hist = torch.zeros(rows, digits + 2, dtype=torch.int64, device=device)
        hist.scatter_add_(1, index, mass)
        # above[:, j]: mass of the bins after j, that is of the tokens ranked before bin j.
        above = hist.sum(dim=-1, keepdim=True) - hist.cumsum(dim=-1)
        # "mass before the digit's top pattern < limit" holds for a top range of digits (mass
        # above is non-increasing in the digit), never empty: for the last digit it is the
        # mass ranked before the bucket, nothing at the first pass and below the limit after
        # it by the choice of the previous digit. So the smallest digit where it holds is the
        # count of digits where it fails.
        digit = (above[:, 1:-1] >= limit).sum(dim=-1, keepdim=True)
        above_w = above.gather(1, digit + 1)
        prefix = (prefix << width) + digit.to(torch.int32)
    del index, mass
    w = prefix
    # Ties at w are ranked by id; the j-th of them (j = 0, 1, ...) has mass above_w + j * m_w
    # before it, so ceil((limit - above_w) / m_w) of them are kept (above_w < limit), or all
    # of them when each weighs nothing in fixed point.
    tie_mass = fixed_point_mass(w.view(torch.float32))
    n_ties = torch.where(
        tie_mass > 0,
        (limit - above_w + tie_mass - 1) // tie_mass.clamp(min=1),
        vocab,
    )
    # int32 like the ranks, so that comparing them does not widen a (R, V) tensor.
    n_ties = n_ties.clamp(max=vocab).to(torch.int32)
    tied = bits == w
    keep = tied.cumsum(dim=-1, dtype=torch.int32) <= n_ties
    keep.logical_and_(tied).logical_or_(bits > w)
    return keep


def _partial_sort(probs: Any, limit: int) -> tuple[Any, Any, Any]:
    """The nucleus among the ``TOP_P_PARTIAL`` most probable tokens of each row.

    Parameters
    ----------
    probs : Tensor, shape (B, V), float32
        Row-wise softmax.
    limit : int
        :func:`mass_limit` of ``top_p``.

    Returns
    -------
    top_idx : Tensor, shape (B, K), int64
        Token ids of the ``K = min(TOP_P_PARTIAL, V)`` most probable tokens, in rank order.
    keep_top : Tensor, shape (B, K), bool
        Which of them are kept; every token outside them is removed, except in ``rest``.
    rest : Tensor of int64, or None
        Rows this could not settle (their kept sets are to come from :func:`_radix_keep`); None
        when there are none. Finding out reads one flag back from the device.
    """
    torch = _torch()
    vocab = probs.shape[1]
    k = min(TOP_P_PARTIAL, vocab)
    top_probs, top_idx = torch.topk(probs, k, dim=-1)
    # topk orders ties arbitrarily: rank its k tokens by (probability desc, id asc) with a
    # composite key, distinct per token, so that a plain sort gives the order.
    id_bits = max(1, (vocab - 1).bit_length())
    key = (top_probs.view(torch.int32).long() << id_bits) | ((1 << id_bits) - 1 - top_idx)
    order = torch.argsort(key, dim=-1, descending=True)
    top_probs = top_probs.gather(1, order)
    top_idx = top_idx.gather(1, order)
    mass = fixed_point_mass(top_probs)
    keep_top = (mass.cumsum(dim=-1) - mass) < limit
    if k == vocab:
        return top_idx, keep_top, None
    # The k tokens hold every token more probable than the k-th value, in rank order; ties at
    # that value may continue outside them, and topk picks among those in any order. If the
    # tokens strictly above that value already reach the limit, the first token at it is not
    # kept and neither is any later one, so the row is settled here; otherwise (a nucleus wider
    # than k, or a row of ties) it is not.
    above_kth = top_probs > top_probs[:, -1:]
    settled = above_kth[:, 0] & ((mass * above_kth).sum(dim=-1) >= limit)
    if bool(settled.all()):
        return top_idx, keep_top, None
    return top_idx, keep_top, (~settled).nonzero(as_tuple=True)[0]
