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
build and multiply (on one core an indicator column of a C x R product costs about as much as
scattering ``_COLUMN_COST_IN_PAIRS x C x R + _COLUMN_FIXED_PAIRS x (C + R)`` pairs: flops, plus
the memory of the column itself, which dominates skinny products such as 1024 x 16). Items
repeated more than ``_MAX_LEVELS`` times on both sides (a character in a long text) are added
as one O(C x R) outer minimum each instead of K_g columns.

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
from dataclasses import dataclass
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
#: Scattered pairs that cost as much as one indicator column of a C x R product: per C x R
#: cell (flops) and per C + R row (the column's memory). Measured on one core (float32 GEMM
#: ~40 GFLOP/s, ~40 ns per scattered pair) on 1024 x 1024, 1024 x 16 and 12 x 256 products.
_COLUMN_COST_IN_PAIRS = 1.0 / 1024
_COLUMN_FIXED_PAIRS = 1.0 / 8
#: Bits two non-negative numbers may take together to travel packed in one int64 (a value sort
#: or a single gather instead of an argsort or several gathers); wider ones go unpacked.
_PACKED_BITS = 62


class Entries(NamedTuple):
    """A list of bags as arrays: one entry per (bag, item) with a count > 0.

    Items are numbered 0..G-1 (``cols``); two lists of bags compared with each other must
    number their items alike. At most one entry per (row, col).
    """

    rows: np.ndarray  # (E,) int64: the bag
    cols: np.ndarray  # (E,) int64: the item's number
    vals: np.ndarray  # (E,) int64: its count in the bag


@dataclass(frozen=True)
class NgramStatistics:
    """The n-gram bags of B texts for every order, with one numbering of the n-grams.

    The n-grams of all orders are numbered together (order k's numbers follow order k-1's), so
    one kernel call compares every order at once; ``item_order`` says which order a number
    belongs to. Statistics taken from one :class:`NgramStatistics` (with :meth:`take`) compare
    with each other; statistics computed separately do not. Build with :meth:`from_entries`.
    """

    entries: Entries  # all orders, grouped by row (rows ascending)
    item_order: np.ndarray  # (G,) int64: the order of each n-gram number
    sizes: np.ndarray  # (B, orders) float64: each text's n-gram count per order
    starts: np.ndarray  # (B + 1,) int64: where each row's entries start

    @classmethod
    def from_entries(cls, entries: Sequence[Entries], sizes: np.ndarray) -> NgramStatistics:
        """Number the orders' n-grams together and group the entries by row.

        ``entries[k]`` holds order k's bags with its own numbering; ``sizes`` is (B, orders).
        Grouping by row makes :meth:`take` cost O(what it takes).
        """
        n = int(sizes.shape[0])
        n_items = [int(e.cols.max(initial=-1)) + 1 for e in entries]
        offsets = np.cumsum([0, *n_items])
        rows = np.concatenate([e.rows for e in entries]) if entries else np.zeros(0, np.int64)
        cols = np.concatenate([e.cols + offsets[k] for k, e in enumerate(entries)] or [rows])
        vals = np.concatenate([e.vals for e in entries] or [rows])
        # A radix sort when the row numbers fit in 16 bits (numpy's stable integer sort).
        order = np.argsort(rows.astype(np.uint16) if n <= 1 << 16 else rows, kind="stable")
        per_row = np.bincount(rows, minlength=n)
        start = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(per_row, out=start[1:])
        item_order = np.repeat(np.arange(len(entries), dtype=np.int64), n_items)
        # The sorted rows are known without a gather; the columns and counts travel packed
        # in one int64 when they fit (a random gather costs more than the packing).
        sorted_rows = np.repeat(np.arange(n, dtype=np.int64), per_row)
        count_bits = max(1, int(vals.max(initial=0)).bit_length())
        if int(offsets[-1]).bit_length() + count_bits <= _PACKED_BITS:
            packed = ((cols << count_bits) | vals)[order]
            taken = Entries(sorted_rows, packed >> count_bits, packed & ((1 << count_bits) - 1))
        else:
            taken = Entries(sorted_rows, cols[order], vals[order])
        return cls(taken, item_order, sizes, start)

    @property
    def n_texts(self) -> int:
        return int(self.sizes.shape[0])

    @property
    def n_orders(self) -> int:
        return int(self.sizes.shape[1])

    def take(self, rows: Sequence[int] | np.ndarray) -> NgramStatistics:
        """The statistics of the texts ``rows`` (distinct indices), in that order.

        O(len(rows) + their entries); all rows in order return ``self`` itself (so that the
        kernel sees the same object on both sides and uses its symmetric path).
        """
        rows = np.asarray(rows, dtype=np.int64)
        n = self.n_texts
        if len(rows) == n and np.array_equal(rows, np.arange(n)):
            return self
        first = self.starts[rows]
        count = self.starts[rows + 1] - first
        start = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(count, out=start[1:])
        index = np.arange(int(start[-1])) + np.repeat(first - start[:-1], count)
        new_rows = np.repeat(np.arange(len(rows), dtype=np.int64), count)
        e = self.entries
        taken = Entries(new_rows, e.cols[index], e.vals[index])
        return NgramStatistics(taken, self.item_order, self.sizes[rows], start)

    def overlap(self, other: NgramStatistics) -> np.ndarray:
        """Shape (orders, B, B'): the clipped n-gram matches of every pair, per order.

        ``other`` must come from the same statistics (``take``); ``self`` on both sides uses
        the symmetric kernel.
        """
        same = other is self
        return overlap_from_entries(
            self.entries,
            other.entries,
            self.n_texts,
            other.n_texts,
            same=same,
            item_block=self.item_order,
            n_blocks=self.n_orders,
        )


def token_statistics(sequences: Sequence[Sequence[Hashable]], max_order: int) -> NgramStatistics:
    """The n-gram statistics (n = 1..max_order) of token sequences, one row per sequence.

    Tokens are numbered by equality (a dict), then :func:`ngram_entries`; ``sizes[i, n-1]`` is
    sequence i's number of n-grams, ``max(len - n + 1, 0)``. O(total tokens x max_order).
    """
    lengths = np.fromiter(map(len, sequences), dtype=np.int64, count=len(sequences))
    tokens = list(chain.from_iterable(sequences))
    number = dict(zip(dict.fromkeys(tokens), count()))
    ids = np.fromiter(map(number.__getitem__, tokens), dtype=np.int64, count=len(tokens))
    sizes = np.maximum(lengths[:, None] - np.arange(max_order)[None, :], 0).astype(np.float64)
    return NgramStatistics.from_entries(ngram_entries(ids, lengths, max_order), sizes)


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
    if n_c == 0 or n_r == 0:
        return np.zeros((n_c, n_r), dtype=np.float64)
    # Number the candidates' items; reference items they lack never match and are dropped.
    # Passing the same sequence object on both sides (MBR: candidates against themselves)
    # indexes it once. The lookups run through map() rather than a Python loop: on short texts
    # the loop cost as much as all the arithmetic.
    same = cand_bags is ref_bags
    column: dict[Hashable, int] = {}
    cand = _entries(cand_bags, column, add=True)
    ref = cand if same else _entries(ref_bags, column, add=False)
    return overlap_from_entries(cand, ref, n_c, n_r, same=same)[0]


def overlap_from_entries(
    cand: Entries,
    ref: Entries,
    n_c: int,
    n_r: int,
    *,
    same: bool = False,
    item_block: np.ndarray | None = None,
    n_blocks: int = 1,
) -> np.ndarray:
    """:func:`clipped_overlap` of C candidate and R reference bags given as :class:`Entries`.

    Parameters
    ----------
    cand, ref:
        The bags' entries, items numbered alike on both sides. ``same`` says that ``ref`` is
        ``cand`` (the symmetric products).
    item_block, n_blocks:
        Several overlaps at once: item g counts towards output block ``item_block[g]`` (for
        example the n-gram order), shape (G,). By default every item goes to block 0.

    Returns
    -------
    np.ndarray
        Shape (n_blocks, C, R) float64.
    """
    out = np.zeros((n_blocks, n_c, n_r), dtype=np.float64)
    if n_c == 0 or n_r == 0 or len(cand.cols) == 0 or len(ref.cols) == 0:
        return out
    n_items = int(max(cand.cols.max(), ref.cols.max())) + 1
    if item_block is None:
        item_block = np.zeros(n_items, dtype=np.int64)
    else:
        n_items = max(n_items, len(item_block))
    cand_df = np.bincount(cand.cols, minlength=n_items)
    ref_df = cand_df if same else np.bincount(ref.cols, minlength=n_items)
    if not same:
        # Entries of items the other side lacks never match: dropping them first keeps a
        # small side (one hypothesis against all references) from paying for the large one.
        cand = _shared_only(cand, ref_df)
        ref = _shared_only(ref, cand_df)
        cand_df = np.bincount(cand.cols, minlength=n_items)
        ref_df = np.bincount(ref.cols, minlength=n_items)
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
    column_cost = _COLUMN_COST_IN_PAIRS * n_c * n_r + _COLUMN_FIXED_PAIRS * (n_c + n_r)
    cheap = pairs <= column_cost * np.maximum(depth, 1)
    sparse = cheap & (pairs > 0)
    deep = ~cheap & (depth > _MAX_LEVELS)
    dense = ~cheap & (depth <= _MAX_LEVELS)
    if sparse.any():
        _scatter_pairs(out, cand, ref, sparse, ref_df, same, item_block)
    if dense.any():
        _indicator_products(out, cand, ref, dense, depth, same, item_block)
    for g in np.flatnonzero(deep):
        a = np.zeros(n_c)
        b = np.zeros(n_r)
        cm, rm = cand.cols == g, ref.cols == g
        a[cand.rows[cm]] = cand.vals[cm]
        b[ref.rows[rm]] = ref.vals[rm]
        out[item_block[g]] += np.minimum(a[:, None], b[None, :])
    return out


def ngram_entries(symbols: np.ndarray, lengths: np.ndarray, max_order: int) -> list[Entries]:
    """The n-gram bags (n = 1..max_order) of integer sequences, as :class:`Entries`.

    Parameters
    ----------
    symbols:
        Shape (S,) int64: the sequences concatenated (character code points, token numbers).
    lengths:
        Shape (B,) int64: the length of each sequence, summing to S.
    max_order:
        The largest n.

    Returns
    -------
    list of Entries
        One per order; the n-grams of order n are numbered alike across all B sequences, so
        any two row subsets can be compared. Equal n-grams get equal numbers and different
        ones different numbers, so counts and overlaps are exactly those of per-string
        ``Counter`` bags.

    Notes
    -----
    An n-gram is its (n-1)-gram prefix's number combined with its last symbol, renumbered
    densely by one sort per order (of the n-grams packed with their positions, a value sort
    rather than an argsort), which also yields the (row, n-gram) counts: O(S log S) per
    order in numpy, against a Python ``Counter`` per string and order (about 10x slower on
    short sentences).
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    n_rows, total = len(lengths), int(lengths.sum())
    out: list[Entries] = []
    if total == 0:
        empty = np.zeros(0, dtype=np.int64)
        return [Entries(empty, empty, empty) for _ in range(max_order)]
    # Dense symbol numbers keep the combined keys small.
    alphabet, sym = np.unique(np.asarray(symbols, dtype=np.int64), return_inverse=True)
    sym = sym.reshape(-1).astype(np.int64)
    n_symbols = len(alphabet)
    row = np.repeat(np.arange(n_rows, dtype=np.int64), lengths)
    # How many symbols of its sequence start at each position (an n-gram needs n).
    left = np.repeat(np.cumsum(lengths), lengths) - np.arange(total, dtype=np.int64)
    start = np.arange(total, dtype=np.int64)  # where the n-grams of the current order start
    key = sym
    n_keys = n_symbols
    number_at = np.empty(total, dtype=np.int64)  # the n-gram number of each start position
    position_bits = max(1, int(total - 1).bit_length())
    for n in range(1, max_order + 1):
        if n > 1:
            start = start[left[start] >= n]
            key = number_at[start] * n_symbols + sym[start + n - 1]
            n_keys *= n_symbols
        if len(start) == 0:
            empty = np.zeros(0, dtype=np.int64)
            out += [Entries(empty, empty, empty) for _ in range(n, max_order + 1)]
            break
        if n_keys.bit_length() + position_bits <= _PACKED_BITS:
            # Sorting (n-gram, position) values is about 3x faster than an argsort. Positions
            # ascend with the row, so equal n-grams come out grouped by row too.
            packed = np.sort((key << position_bits) | start)
            key_sorted = packed >> position_bits
            position = packed & ((1 << position_bits) - 1)
        else:
            order = np.lexsort((start, key))
            key_sorted, position = key[order], start[order]
        rows_sorted = row[position]
        new_key = np.empty(len(position), dtype=bool)
        new_key[0] = True
        np.not_equal(key_sorted[1:], key_sorted[:-1], out=new_key[1:])
        dense = np.cumsum(new_key) - 1
        new_cell = new_key.copy()
        new_cell[1:] |= rows_sorted[1:] != rows_sorted[:-1]
        first = np.flatnonzero(new_cell)
        counts = np.diff(np.append(first, len(position)))
        out.append(Entries(rows_sorted[first], dense[first], counts))
        number_at[position] = dense
        n_keys = int(dense[-1]) + 1
    return out


def _select(entries: Entries, items: np.ndarray) -> Entries:
    """The entries whose item is in the boolean mask ``items``."""
    keep = items[entries.cols]
    return Entries(entries.rows[keep], entries.cols[keep], entries.vals[keep])


def _shared_only(entries: Entries, other_df: np.ndarray) -> Entries:
    """``entries`` without those whose item the other side does not hold (``other_df == 0``)."""
    keep = other_df[entries.cols] > 0
    if keep.all():
        return entries
    return Entries(entries.rows[keep], entries.cols[keep], entries.vals[keep])


def _entries(bags: Sequence[Bag], column: dict[Hashable, int], *, add: bool) -> Entries:
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
        return Entries(rows[found], cols[found], vals[found])
    return Entries(rows, cols, vals)


def _scatter_pairs(
    out: np.ndarray,
    cand: Entries,
    ref: Entries,
    items: np.ndarray,
    ref_df: np.ndarray,
    same: bool,
    item_block: np.ndarray,
) -> None:
    """Add ``min(a, b)`` of every (candidate, reference) pair sharing an item of ``items``.

    ``out`` is (blocks, C, R); ``items`` is a boolean mask over item numbers, ``ref_df`` the
    number of reference entries of each item, ``item_block`` each item's block. The reference
    entries are grouped by item, so the partners of a candidate entry of item g are one
    contiguous run; pairs are generated in batches of about ``_MAX_PAIRS`` and summed with one
    ``bincount`` per batch (exact: integer sums). With ``same`` (``cand is ref``) each
    unordered pair of distinct entries is generated once and added to both its cells, which
    halves the pairs; an entry's pair with itself adds its count to the diagonal.
    """
    n_blocks, n_c, n_r = out.shape
    # The reference entries of the selected items, grouped by item.
    keep = items[ref.cols]
    ref_cols, ref_rows, ref_vals = ref.cols[keep], ref.rows[keep], ref.vals[keep]
    # The order within an item is irrelevant: a radix sort when item numbers fit in 16 bits
    # (numpy's stable sort of small integers), else numpy's default sort.
    if len(items) <= 1 << 16:
        order = np.argsort(ref_cols.astype(np.uint16), kind="stable")
    else:
        order = np.argsort(ref_cols)
    ref_cols, ref_rows, ref_vals = ref_cols[order], ref_rows[order], ref_vals[order]
    df = np.where(items, ref_df, 0)
    ref_start = np.zeros(len(df), dtype=np.int64)
    np.cumsum(df[:-1], out=ref_start[1:])
    if same:
        # Entries in item order; the partners of the one at sorted position q are q+1.. to the
        # end of its item's run.
        rows, vals, cols = ref_rows, ref_vals, ref_cols
        run_start = np.arange(1, len(ref_cols) + 1)
        reps = ref_start[cols] + df[cols] - run_start
        np.add.at(out, (item_block[cols], rows, rows), vals)
    else:
        sel = items[cand.cols]
        rows, vals, cols = cand.rows[sel], cand.vals[sel], cand.cols[sel]
        run_start = ref_start[cols]
        reps = df[cols]
    # Where each entry's cells start in the flattened (blocks, C, R) output.
    base = item_block[cols] * (n_c * n_r) + rows * n_r
    # All counts 1 (most rare n-grams): every min is 1, and an unweighted bincount is faster.
    ones = len(vals) == 0 or (vals.max() == 1 and vals.min() == 1)
    ones = ones and (len(ref_vals) == 0 or ref_vals.max() == ref_vals.min() == 1)
    size = n_blocks * n_c * n_r
    flat_out = out.reshape(-1)  # a view: out is C-contiguous
    ends = np.cumsum(reps)
    first = 0
    while first < len(rows):
        # As many entries as fit in one batch (at least one).
        limit = (ends[first - 1] if first else 0) + _MAX_PAIRS
        last = max(first + 1, int(np.searchsorted(ends, limit, side="right")))
        n_rep = reps[first:last]
        total = int(n_rep.sum())
        # Sorted position of each pair's partner: its entry's run start plus its rank in it.
        shift = run_start[first:last] - (np.cumsum(n_rep) - n_rep)
        right = np.arange(total) + np.repeat(shift, n_rep)
        left_base = np.repeat(base[first:last], n_rep)
        right_row = ref_rows[right]
        if same:
            # Both cells of each pair, in one index array (a transposed add of the (C, R)
            # result would cost more than the second half of the indices): with
            # base = block + i * R, cell (i, j) is base + j and (j, i) is
            # base + (j - i) * R + i.
            left_row = np.repeat(rows[first:last], n_rep)
            cell = np.empty(2 * total, dtype=np.int64)
            np.add(left_base, right_row, out=cell[:total])
            transposed = cell[total:]
            np.subtract(right_row, left_row, out=transposed)
            transposed *= n_r
            transposed += left_row
            transposed += left_base
        else:
            cell = left_base + right_row
        if ones:
            counts = np.bincount(cell, minlength=size)
        else:
            weights = np.minimum(np.repeat(vals[first:last], n_rep), ref_vals[right])
            if same:
                weights = np.concatenate([weights, weights])
            counts = np.bincount(cell, weights=weights, minlength=size)
        # Straight into the output: one (blocks, C, R) temporary at a time.
        flat_out += counts
        first = last


def _indicator_products(
    out: np.ndarray,
    cand: Entries,
    ref: Entries,
    items: np.ndarray,
    depth: np.ndarray,
    same: bool,
    item_block: np.ndarray,
) -> None:
    """Add ``A @ B.T`` over the level indicators of the items in the boolean mask ``items``.

    ``out`` is (blocks, C, R). Item g gets columns ``[count >= k]`` for k = 1..depth[g], laid
    out block after block; the indicators of all blocks are filled together, in chunks of at
    most ``_MAX_BLOCK_ELEMENTS`` float32 elements, and each block's columns make its own
    product. With ``same`` a product is ``A @ A.T`` (numpy hands it to BLAS as a symmetric
    rank-k update: half the flops).
    """
    _, n_c, n_r = out.shape
    ids = np.flatnonzero(items)
    ids = ids[np.argsort(item_block[ids], kind="stable")]  # block after block
    widths = depth[ids]
    ends = np.cumsum(widths)
    # Only the entries of these items: picked out once for every block and chunk.
    cand = _select(cand, items)
    ref = cand if same else _select(ref, items)
    chunk = max(1, _MAX_BLOCK_ELEMENTS // max(n_c, n_r))
    first = 0
    while first < len(ids):
        base = int(ends[first - 1]) if first else 0
        last = max(first + 1, int(np.searchsorted(ends, base + chunk, side="right")))
        n_cols = int(ends[last - 1]) - base
        # Each chunk item's first column within the chunk.
        column = np.full(len(items), -1, dtype=np.int64)
        column[ids[first:last]] = ends[first:last] - widths[first:last] - base
        a = _indicators(cand, column, depth, n_c, n_cols)
        b = a if same else _indicators(ref, column, depth, n_r, n_cols)
        blocks = item_block[ids[first:last]]
        bounds = np.flatnonzero(np.diff(blocks)) + 1
        starts = np.concatenate([[0], bounds])
        stops = np.concatenate([bounds, [last - first]])
        for lo, hi in zip(starts, stops, strict=True):
            c0 = int(ends[first + lo] - widths[first + lo]) - base
            c1 = int(ends[first + hi - 1]) - base
            a_block = a[:, c0:c1]
            product = a_block @ a_block.T if same else a_block @ b[:, c0:c1].T
            out[blocks[lo]] += product
        first = last


def _indicators(
    entries: Entries, column: np.ndarray, depth: np.ndarray, n_rows: int, n_cols: int
) -> np.ndarray:
    """(n_rows, n_cols) float32 level indicators of the items with ``column[g] >= 0``.

    Item g's levels k = 1..depth[g] are columns ``column[g] + k - 1``: 1 where the entry's
    count is at least k.
    """
    where = column[entries.cols]
    keep = where >= 0
    rows, cols, where = entries.rows[keep], entries.cols[keep], where[keep]
    levels = np.minimum(entries.vals[keep], depth[cols])  # ones in the first `levels` columns
    total = int(levels.sum())
    within = np.arange(total) - np.repeat(np.cumsum(levels) - levels, levels)
    block = np.zeros((n_rows, n_cols), dtype=np.float32)
    block[np.repeat(rows, levels), np.repeat(where, levels) + within] = 1.0
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
