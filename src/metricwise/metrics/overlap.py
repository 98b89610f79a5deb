"""Clipped multiset overlap for every (candidate, reference) pair at once.

Token F1, BLEU and chrF all reduce to the same sufficient statistic: for bags of items (tokens,
word n-grams, character n-grams) ``a`` and ``b``, the clipped match count
``sum_g min(a_g, b_g)``. Per pair that is a dictionary intersection (what sacrebleu and the SQuAD
script do C x R times). Here every pair is computed at once, and each shared item takes the
cheaper of two exact paths:

* **Frequent items** (held by many rows) go through one matrix product, using

      min(a, b) = sum_{k >= 1} [a >= k] * [b >= k]        (a, b non-negative integers)

  so their share of the (C, R) overlap is ``A @ B.T`` where ``A`` has one indicator column
  ``[count_i(g) >= k]`` per item g and level k = 1..K_g (K_g: the smaller of the largest
  candidate and reference counts of g). In MBR (the same bags on both sides) ``A @ A.T`` lets
  BLAS compute only one triangle.
* **Rare items** (held by few rows: by Zipf's law, most word n-grams and character 4- to
  6-grams) are scattered directly: each of their ``df_c(g) x df_r(g)`` (candidate, reference)
  pairs adds ``min(a, b)`` to one cell, with one ``bincount`` per batch of pairs. A dense column
  would cost O(C x R) flops however few rows hold the item.

An item goes the sparse way when its pairs are cheaper to scatter than its K_g columns are to
multiply (on one core an indicator column of a C x R product costs about as much as scattering
``_COLUMN_COST_IN_PAIRS x C x R`` pairs). Items repeated more than ``_MAX_LEVELS`` times on both sides (a character in a long
text) are added as one O(C x R) outer minimum each instead of K_g columns.

Every partial sum is an integer far below 2**24, so the float32 products and float64 scatters
are exact: the result does not depend on which path an item takes, nor on BLAS's summation order.

Cost: O(total items) to index the bags; the products are
O(C x R x W) flops with W = sum of K_g over the frequent items; the scatter is
O(sum_g df_c(g) x df_r(g)) over the rare items; memory is bounded by ``_MAX_BLOCK_ELEMENTS``
(indicator columns) and ``_MAX_PAIRS`` (scattered pairs) per batch, plus the (C, R) output.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from itertools import chain, count, repeat
from typing import NamedTuple, TypeVar

import numpy as np

Bag = Counter  # item -> count
_K = TypeVar("_K", bound=Hashable)
_F = TypeVar("_F")

#: Upper bound on the float32 elements of one dense indicator block; wider blocks are processed
#: in column chunks to bound memory (64 Mi elements = 256 MiB).
_MAX_BLOCK_ELEMENTS = 64 * 1024 * 1024
#: Items whose count exceeds this on both sides take one outer minimum instead of K_g columns:
#: on one core an O(C x R) minimum-and-add costs about as much as a few hundred columns.
_MAX_LEVELS = 256
#: Scattered (row, row) pairs per ``bincount`` batch: bounds the index arrays (about 48 bytes a
#: pair) to about 100 MB.
_MAX_PAIRS = 2 * 1024 * 1024
#: Scattered pairs that cost as much as one indicator column of a C x R product, per C x R
#: cell: measured on one core (float32 GEMM ~40 GFLOP/s, ~40 ns per scattered pair).
_COLUMN_COST_IN_PAIRS = 1.0 / 1024


class _Entries(NamedTuple):
    """The counts of a list of bags, one entry per (bag, item)."""

    rows: np.ndarray  # (E,) int64: the bag
    cols: np.ndarray  # (E,) int64: the item's number
    vals: np.ndarray  # (E,) int64: its count in the bag


def clipped_overlap(cand_bags: Sequence[Bag], ref_bags: Sequence[Bag]) -> np.ndarray:
    """Return the (C, R) float64 matrix ``M[i, j] = sum_g min(cand_bags[i][g], ref_bags[j][g])``.

    Parameters
    ----------
    cand_bags, ref_bags:
        C and R multisets as ``Counter`` objects (or any mapping item -> non-negative int).
        Passing the same sequence object on both sides (MBR: candidates against themselves)
        indexes it once and uses symmetric products.

    Notes
    -----
    Exact for any counts (integer sums). Time O(E + C x R x W + P) with E the bags' entries,
    W the frequent items' indicator columns and P the rare items' (candidate, reference) pairs
    (see the module docstring); memory O(C x R) plus bounded batches.
    """
    n_c, n_r = len(cand_bags), len(ref_bags)
    out = np.zeros((n_c, n_r), dtype=np.float64)
    if n_c == 0 or n_r == 0:
        return out

    # Number the candidates' items; reference items they lack never match and are dropped.
    # Passing the same sequence object on both sides (MBR: candidates against themselves)
    # indexes it once. The lookups run through map() rather than a Python loop: on short texts
    # the loop cost as much as all the arithmetic.
    same = cand_bags is ref_bags
    column: dict[Hashable, int] = {}
    cand = _entries(cand_bags, column, add=True)
    if not column:
        return out
    ref = cand if same else _entries(ref_bags, column, add=False)
    n_items = len(column)
    cand_df = np.bincount(cand.cols, minlength=n_items)
    ref_df = cand_df if same else np.bincount(ref.cols, minlength=n_items)
    cand_max = np.zeros(n_items, dtype=np.int64)
    np.maximum.at(cand_max, cand.cols, cand.vals)
    if same:
        ref_max = cand_max
    else:
        ref_max = np.zeros(n_items, dtype=np.int64)
        np.maximum.at(ref_max, ref.cols, ref.vals)
    depth = np.minimum(cand_max, ref_max)  # K_g: the levels at which item g can match

    # The cheaper exact path for each item (module docstring): pairs against columns.
    pairs = cand_df * ref_df
    cheap = pairs <= (_COLUMN_COST_IN_PAIRS * n_c * n_r) * np.maximum(depth, 1)
    sparse = cheap & (pairs > 0)
    deep = ~cheap & (depth > _MAX_LEVELS)
    dense = ~cheap & (depth <= _MAX_LEVELS)
    if sparse.any():
        _scatter_pairs(out, cand, ref, sparse, ref_df)
    if dense.any():
        _indicator_products(out, cand, ref, dense, depth, same)
    for g in np.flatnonzero(deep):
        a = np.zeros(n_c)
        b = np.zeros(n_r)
        cm, rm = cand.cols == g, ref.cols == g
        a[cand.rows[cm]] = cand.vals[cm]
        b[ref.rows[rm]] = ref.vals[rm]
        out += np.minimum(a[:, None], b[None, :])
    return out


def _entries(bags: Sequence[Bag], column: dict[Hashable, int], *, add: bool) -> _Entries:
    """Flatten ``bags`` into (bag, item number, count) entries.

    With ``add``, every item gets a number in ``column`` (first seen, first numbered); without,
    the items ``column`` does not hold are left out.
    """
    sizes = np.fromiter(map(len, bags), dtype=np.int64, count=len(bags))
    n = int(sizes.sum())
    keys = list(chain.from_iterable(bags))
    if add:
        column.update(zip(dict.fromkeys(keys), count(len(column))))
        numbers = map(column.__getitem__, keys)
    else:
        numbers = map(column.get, keys, repeat(-1, n))
    cols = np.fromiter(numbers, dtype=np.int64, count=n)
    vals = np.fromiter(chain.from_iterable(b.values() for b in bags), dtype=np.int64, count=n)
    rows = np.repeat(np.arange(len(bags), dtype=np.int64), sizes)
    if not add:
        found = cols >= 0
        return _Entries(rows[found], cols[found], vals[found])
    return _Entries(rows, cols, vals)


def _scatter_pairs(
    out: np.ndarray,
    cand: _Entries,
    ref: _Entries,
    items: np.ndarray,
    ref_df: np.ndarray,
) -> None:
    """Add ``min(a, b)`` of every (candidate, reference) pair sharing an item of ``items``.

    ``items`` is a boolean mask over item numbers, ``ref_df`` the number of reference entries
    of each item. The reference entries are grouped by item (a stable sort), so the partners of
    a candidate entry of item g are one contiguous run; pairs are generated in batches of about
    ``_MAX_PAIRS`` and summed into ``out`` with one ``bincount`` per batch (exact: integer sums).
    """
    n_c, n_r = out.shape
    flat_out = out.reshape(-1)
    ref_order = np.argsort(ref.cols, kind="stable")
    ref_start = np.zeros(len(ref_df), dtype=np.int64)
    np.cumsum(ref_df[:-1], out=ref_start[1:])
    sel = np.flatnonzero(items[cand.cols])
    reps = ref_df[cand.cols[sel]]
    ends = np.cumsum(reps)
    first = 0
    while first < len(sel):
        # As many candidate entries as fit in one batch (at least one).
        limit = (ends[first - 1] if first else 0) + _MAX_PAIRS
        last = max(first + 1, int(np.searchsorted(ends, limit, side="right")))
        entries, n_rep = sel[first:last], reps[first:last]
        total = int(n_rep.sum())
        left = np.repeat(entries, n_rep)
        # Position of each pair within its candidate entry's run of partners.
        offset = np.arange(total) - np.repeat(np.cumsum(n_rep) - n_rep, n_rep)
        right = ref_order[np.repeat(ref_start[cand.cols[entries]], n_rep) + offset]
        cell = cand.rows[left] * n_r + ref.rows[right]
        a, b = cand.vals[left], ref.vals[right]
        if a.max() == 1 and b.max() == 1 and a.min() > 0 and b.min() > 0:
            # All counts 1: min is 1, and an unweighted bincount is twice as fast.
            flat_out += np.bincount(cell, minlength=n_c * n_r)
        else:
            flat_out += np.bincount(cell, weights=np.minimum(a, b), minlength=n_c * n_r)
        first = last


def _indicator_products(
    out: np.ndarray,
    cand: _Entries,
    ref: _Entries,
    items: np.ndarray,
    depth: np.ndarray,
    same: bool,
) -> None:
    """Add ``A @ B.T`` over the level indicators of the items in the boolean mask ``items``.

    Item g gets columns ``[count >= k]`` for k = 1..depth[g]; the columns are filled in chunks
    of at most ``_MAX_BLOCK_ELEMENTS`` float32 elements. With ``same`` the product is
    ``A @ A.T`` (numpy hands it to BLAS as a symmetric rank-k update: half the flops).
    """
    n_c, n_r = out.shape
    width = np.where(items, depth, 0)
    first_col = np.cumsum(width) - width  # the item's first indicator column
    item_ids = np.flatnonzero(items)
    chunk = max(1, _MAX_BLOCK_ELEMENTS // max(n_c, n_r))
    ends = np.cumsum(width[item_ids])
    first = 0
    while first < len(item_ids):
        base = int(ends[first - 1]) if first else 0
        last = max(first + 1, int(np.searchsorted(ends, base + chunk, side="right")))
        n_cols = int(ends[last - 1]) - base
        lo, hi = item_ids[first], item_ids[last - 1]
        a = _indicators(cand, lo, hi, items, depth, first_col, base, n_c, n_cols)
        if same:
            block = a @ a.T
        else:
            block = a @ _indicators(ref, lo, hi, items, depth, first_col, base, n_r, n_cols).T
        out += block
        first = last


def _indicators(
    entries: _Entries,
    lo: int,
    hi: int,
    items: np.ndarray,
    depth: np.ndarray,
    first_col: np.ndarray,
    base: int,
    n_rows: int,
    n_cols: int,
) -> np.ndarray:
    """(n_rows, n_cols) float32 level indicators of the items numbered lo..hi in ``items``."""
    keep = (entries.cols >= lo) & (entries.cols <= hi)
    keep &= items[entries.cols]
    rows, cols = entries.rows[keep], entries.cols[keep]
    levels = np.minimum(entries.vals[keep], depth[cols])  # ones in the first `levels` columns
    total = int(levels.sum())
    within = np.arange(total) - np.repeat(np.cumsum(levels) - levels, levels)
    block = np.zeros((n_rows, n_cols), dtype=np.float32)
    block[np.repeat(rows, levels), np.repeat(first_col[cols] - base, levels) + within] = 1.0
    return block


def bag_sizes(bags: Sequence[Bag]) -> np.ndarray:
    """Total item counts of each bag, shape (len(bags),), float64."""
    return np.fromiter((sum(b.values()) for b in bags), dtype=np.float64, count=len(bags))


def dedupe(values: Sequence[Hashable]) -> tuple[list[Hashable], np.ndarray]:
    """Unique values in first-seen order, and for every input its index into them."""
    index: dict[Hashable, int] = {}
    inverse = np.empty(len(values), dtype=np.int64)
    for i, v in enumerate(values):
        inverse[i] = index.setdefault(v, len(index))
    return list(index), inverse


def featurize(
    cands: Sequence[_K], refs: Sequence[_K], fn: Callable[[_K], _F]
) -> tuple[list[_F], list[_F]]:
    """Apply ``fn`` once per distinct value of ``cands`` and ``refs`` together.

    Returns the features of ``cands`` and of ``refs``, in order. In MBR the candidates are the
    distinct samples and the references are the samples, so every string is processed once.
    """
    cache: dict[_K, _F] = {}

    def get(value: _K) -> _F:
        if value not in cache:
            cache[value] = fn(value)
        return cache[value]

    c_feats = [get(x) for x in cands]
    r_feats = [get(x) for x in refs]
    return c_feats, r_feats
