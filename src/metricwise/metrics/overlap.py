"""Clipped multiset overlap for every (candidate, reference) pair at once.

Token F1, BLEU and chrF all reduce to the same sufficient statistic: for bags of items (tokens,
word n-grams, character n-grams) ``a`` and ``b``, the clipped match count
``sum_g min(a_g, b_g)``. Per pair that is a dictionary intersection (what sacrebleu and the SQuAD
script do C x R times). Here it is computed for all pairs with matrix products, using

    min(a, b) = sum_{k >= 1} [a >= k] * [b >= k]        (a, b non-negative integers)

so the (C, R) overlap matrix is ``sum_k A_k @ B_k.T`` with ``A_k[i, g] = [count_i(g) >= k]``.
Items shared by exactly one candidate and one reference (most rare n-grams, by Zipf's law) touch
a single cell and are scattered directly instead of widening the matrices.

Cost: building the bags is O(total items); the products are O(C x R x sum_g min(K_g, 8)) flops
in BLAS, where g runs over the items shared by more than one pair and K_g is the smaller of the
largest candidate and reference counts of g; items with K_g > 8 cost one O(C x R) minimum each.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from typing import TypeVar

import numpy as np

Bag = Counter  # item -> count
_K = TypeVar("_K", bound=Hashable)
_F = TypeVar("_F")

#: Upper bound on the float32 elements of one dense indicator block; wider vocabularies are
#: processed in column chunks to bound memory (64 Mi elements = 256 MiB).
_MAX_BLOCK_ELEMENTS = 64 * 1024 * 1024
#: Items whose count exceeds this on both sides skip the per-level products (see below).
_MAX_LEVELS = 8


def clipped_overlap(cand_bags: Sequence[Bag], ref_bags: Sequence[Bag]) -> np.ndarray:
    """Return the (C, R) float64 matrix ``M[i, j] = sum_g min(cand_bags[i][g], ref_bags[j][g])``.

    Parameters
    ----------
    cand_bags, ref_bags:
        Multisets as ``Counter`` objects (or any mapping item -> positive int).
    """
    n_c, n_r = len(cand_bags), len(ref_bags)
    out = np.zeros((n_c, n_r), dtype=np.float64)
    if n_c == 0 or n_r == 0:
        return out

    # Index only items present on both sides: the others never match. Passing the same
    # sequence object on both sides (MBR: candidates against themselves) indexes it once.
    same = cand_bags is ref_bags
    ref_items: set[Hashable] = set()
    if not same:
        for bag in ref_bags:
            ref_items.update(bag)
    column: dict[Hashable, int] = {}
    c_rows: list[int] = []
    c_cols: list[int] = []
    c_vals: list[int] = []
    for i, bag in enumerate(cand_bags):
        for item, count in bag.items():
            if same or item in ref_items:
                col = column.setdefault(item, len(column))
                c_rows.append(i)
                c_cols.append(col)
                c_vals.append(count)
    if not column:
        return out
    r_rows: list[int] = c_rows if same else []
    r_cols: list[int] = c_cols if same else []
    r_vals: list[int] = c_vals if same else []
    for j, bag in enumerate(() if same else ref_bags):
        for item, count in bag.items():
            ref_col = column.get(item)
            if ref_col is not None:
                r_rows.append(j)
                r_cols.append(ref_col)
                r_vals.append(count)

    n_items = len(column)
    cr, cc, cv = np.asarray(c_rows), np.asarray(c_cols), np.asarray(c_vals)
    rr, rc, rv = np.asarray(r_rows), np.asarray(r_cols), np.asarray(r_vals)
    cand_df = np.bincount(cc, minlength=n_items)
    ref_df = np.bincount(rc, minlength=n_items)

    # Items in exactly one candidate and one reference: one cell each, scattered directly.
    single = (cand_df == 1) & (ref_df == 1)
    if single.any():
        c_sel = single[cc]
        r_sel = single[rc]
        c_row_of = np.empty(n_items, dtype=np.int64)
        c_val_of = np.empty(n_items, dtype=np.int64)
        c_row_of[cc[c_sel]] = cr[c_sel]
        c_val_of[cc[c_sel]] = cv[c_sel]
        cols = rc[r_sel]
        np.add.at(out, (c_row_of[cols], rr[r_sel]), np.minimum(c_val_of[cols], rv[r_sel]))

    shared = ~single
    if not shared.any():
        return out
    # Renumber the shared items 0..G-1 and fill dense count matrices in column chunks.
    new_col = np.full(n_items, -1, dtype=np.int64)
    new_col[shared] = np.arange(int(shared.sum()))
    c_keep = shared[cc]
    r_keep = shared[rc]
    cr, cc, cv = cr[c_keep], new_col[cc[c_keep]], cv[c_keep]
    rr, rc, rv = rr[r_keep], new_col[rc[r_keep]], rv[r_keep]
    n_shared = int(shared.sum())
    chunk = max(1, _MAX_BLOCK_ELEMENTS // max(n_c, n_r))
    for start in range(0, n_shared, chunk):
        stop = min(start + chunk, n_shared)
        cm = (cc >= start) & (cc < stop)
        rm = (rc >= start) & (rc < stop)
        a = np.zeros((n_c, stop - start), dtype=np.float32)
        b = np.zeros((n_r, stop - start), dtype=np.float32)
        a[cr[cm], cc[cm] - start] = cv[cm]
        b[rr[rm], rc[rm] - start] = rv[rm]
        # Level k only involves the items that some candidate and some reference hold >= k
        # times; an item repeated more than _MAX_LEVELS times on both sides (a character in
        # a long text) is added directly as one outer minimum instead of one product per level.
        depth = np.minimum(a.max(axis=0, initial=0), b.max(axis=0, initial=0))
        deep = depth > _MAX_LEVELS
        for g in np.flatnonzero(deep):
            out += np.minimum(a[:, g, None], b[None, :, g])
        for k in range(1, int(depth[~deep].max(initial=0)) + 1):
            cols = (depth >= k) & ~deep
            # float32 products are exact: every partial sum is an integer far below 2**24.
            out += (a[:, cols] >= k).astype(np.float32) @ (b[:, cols] >= k).astype(np.float32).T
    return out


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
