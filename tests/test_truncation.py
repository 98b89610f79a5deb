"""Top-p truncation (metricwise.backends.truncation) against a full stable sort in float64.

The reference ranks the float32 softmax probabilities with a stable descending sort (ties by id
ascending) and cumulates them in float64; the kernels sum fixed-point masses instead, which can
only differ when a cumulative mass lies within about 1e-13 of ``top_p``, which these inputs
never produce. Both kernels (partial sort, radix select) must give exactly the reference's set.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from metricwise.backends.sampling import TOP_P_PARTIAL  # noqa: E402
from metricwise.backends.truncation import top_p_filter, top_p_keep  # noqa: E402


def reference_keep(scores, top_p: float):
    """Kept tokens by the definition: full stable sort, float64 mass before each token."""
    probs = torch.softmax(scores, dim=-1).double()
    sorted_probs, order = torch.sort(probs, dim=-1, descending=True, stable=True)
    keep_sorted = (sorted_probs.cumsum(dim=-1) - sorted_probs) < top_p
    keep_sorted[:, 0] = True
    keep = torch.zeros_like(keep_sorted)
    keep.scatter_(1, order, keep_sorted)
    return keep


def assert_exact(scores, top_p: float) -> None:
    expected = reference_keep(scores, top_p)
    for sync_free in (False, True):
        keep = top_p_keep(scores, top_p, sync_free=sync_free)
        assert keep.shape == scores.shape and keep.dtype == torch.bool
        wrong = (keep != expected).sum(dim=-1)
        assert int(wrong.sum()) == 0, f"sync_free={sync_free}: rows differ by {wrong.tolist()}"
        filtered = top_p_filter(scores, top_p, sync_free=sync_free)
        assert torch.equal(filtered, torch.where(keep, scores, -math.inf))


def random_logits(seed: int, rows: int, vocab: int, scale: float, *, bf16: bool = False):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, vocab, generator=gen) * scale
    # bf16 keeps 8 bits of mantissa: many equal logits, hence equal probabilities.
    return logits.bfloat16().float() if bf16 else logits


@pytest.mark.parametrize("vocab", [2, 5, TOP_P_PARTIAL, TOP_P_PARTIAL + 1, 3000, 50_000])
@pytest.mark.parametrize("scale", [0.05, 1.0, 4.0, 20.0])
@pytest.mark.parametrize("top_p", [1e-6, 0.3, 0.9, 0.95, 0.999])
def test_matches_full_stable_sort(vocab, scale, top_p):
    assert_exact(random_logits(vocab, 6, vocab, scale), top_p)


@settings(max_examples=150, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    vocab=st.sampled_from([3, 17, 1000, 1024, 1500, 4096, 20_000]),
    scale=st.floats(0.01, 30.0),
    top_p=st.floats(1e-4, 0.9999),
    bf16=st.booleans(),
    levels=st.integers(0, 6),
    top_k=st.integers(0, 2000),
)
def test_matches_full_stable_sort_hypothesis(seed, vocab, scale, top_p, bf16, levels, top_k):
    scores = random_logits(seed, 4, vocab, scale, bf16=bf16)
    if levels:
        # Only a few distinct logits: long runs of ties, often across the nucleus boundary.
        scores = (scores.clamp(-2, 2) * levels / 2).round()
    if 0 < top_k < vocab:
        kth = torch.topk(scores, top_k, dim=-1).values[:, -1:]
        scores = scores.masked_fill(scores < kth, -math.inf)
    assert_exact(scores, top_p)


@pytest.mark.parametrize("top_p", [0.1003, 0.3507, 0.5001, 0.9991])
def test_ties_are_kept_in_id_order(top_p):
    """Equal probabilities are ranked by id: the nucleus is a prefix of the tied ids."""
    vocab, tied = 5000, 2000
    gen = torch.Generator().manual_seed(7)
    ids = torch.randperm(vocab, generator=gen)[:tied].sort().values
    scores = torch.full((1, vocab), -30.0)
    scores[0, ids] = 0.0
    # All top-k values are equal here, so the partial sort cannot settle the row.
    assert_exact(scores, top_p)
    kept = top_p_keep(scores, top_p)[0].nonzero().squeeze(-1)
    # Each tied token weighs 1 / tied (to 1e-9): the first ceil(top_p * tied) of them are kept.
    expected = ids[: math.ceil(top_p * tied)]
    assert torch.equal(kept, expected)


def test_ties_straddling_the_partial_sort():
    """Tied probabilities at the K-th rank, the nucleus ending among them."""
    vocab = 4000
    gen = torch.Generator().manual_seed(3)
    scores = torch.randn(3, vocab, generator=gen) - 10
    perm = torch.randperm(vocab, generator=gen)
    scores[:, perm[: TOP_P_PARTIAL - 10]] = torch.linspace(5, 4, TOP_P_PARTIAL - 10)
    scores[:, perm[TOP_P_PARTIAL - 10 : TOP_P_PARTIAL + 300]] = 3.0
    probs = torch.softmax(scores, dim=-1).double()
    above = probs[0, perm[: TOP_P_PARTIAL - 10]].sum().item()
    tie = probs[0, perm[TOP_P_PARTIAL]].item()
    for extra in (0.5, 5.5, 20.5, 150.5):
        assert_exact(scores, above + extra * tie)


def test_nucleus_wider_than_the_partial_sort():
    scores = random_logits(11, 3, 2**18, 0.5)
    assert_exact(scores, 0.999)
    assert int(top_p_keep(scores, 0.999).sum(dim=-1).min()) > 100 * TOP_P_PARTIAL


def test_tiny_top_p_keeps_the_most_probable_token():
    scores = random_logits(5, 8, 3000, 2.0)
    scores[0, [10, 20]] = 50.0  # a tie for the top: the lower id wins
    for top_p in (1e-12, 0.0, -1.0):
        keep = top_p_keep(scores, top_p)
        assert torch.equal(keep.sum(dim=-1), torch.ones(8, dtype=torch.long))
        assert int(keep[0].nonzero()) == 10
        assert torch.equal(keep, top_p_keep(scores, top_p, sync_free=True))
    assert_exact(scores, 1e-12)


def test_infinite_scores():
    scores = random_logits(2, 4, 3000, 3.0)
    scores[0, :] = -math.inf
    scores[0, 1234] = 1.0  # all -inf but one
    scores[1, 100:] = -math.inf  # a top-k of 100
    scores[2, ::2] = -math.inf
    for top_p in (0.5, 0.99, 0.999999):
        assert_exact(scores, top_p)
        for sync_free in (False, True):
            out = top_p_filter(scores, top_p, sync_free=sync_free)
            assert torch.isfinite(out[0]).nonzero().squeeze(-1).tolist() == [1234]
            assert out[0, 1234] == 1.0
            assert not torch.isfinite(out[1, 100:]).any()


def test_top_p_one_keeps_everything():
    scores = random_logits(4, 2, 100, 1.0)
    assert torch.equal(top_p_filter(scores, 1.0), scores)
    assert bool(top_p_keep(scores, 1.0, sync_free=True).all())


def test_identical_paths_on_bf16_logits_of_a_large_vocabulary():
    scores = random_logits(9, 4, 2**18, 3.0, bf16=True)
    scores[2] = scores[2] * 0.1  # a flat row: nucleus wider than the partial sort
    for top_p in (0.9, 0.95, 0.999):
        a = top_p_filter(scores, top_p)
        b = top_p_filter(scores, top_p, sync_free=True)
        assert torch.equal(a, b)
    assert_exact(scores, 0.95)


class SyncError(AssertionError):
    pass


class RecordOps(TorchDispatchMode):
    """Records every aten op with its output shapes; an op that reads a value back raises."""

    READ_BACK = ("aten._local_scalar_dense", "aten.nonzero", "aten.unique", "aten.masked_select")

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[tuple[str, tuple]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func.overloadpacket)
        if any(name.startswith(bad) for bad in self.READ_BACK):
            raise SyncError(f"{name} reads device data back")
        out = func(*args, **(kwargs or {}))
        outs = out if isinstance(out, tuple | list) else (out,)
        shapes = tuple(tuple(o.shape) for o in outs if isinstance(o, torch.Tensor))
        self.ops.append((name, shapes))
        return out


def patch_read_backs(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise SyncError("host synchronisation")

    for name in ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "nonzero"):
        monkeypatch.setattr(torch.Tensor, name, refuse)
    monkeypatch.setattr(torch, "nonzero", refuse)


def sync_free_inputs():
    peaked = random_logits(1, 6, 5000, 8.0)
    flat = random_logits(2, 6, 5000, 0.01)
    tied = (random_logits(3, 6, 5000, 1.0).clamp(-2, 2) * 2).round()
    tied[0, :] = -math.inf
    tied[0, 17] = 0.0
    return peaked, flat, tied


@pytest.mark.parametrize("top_p", [1e-9, 0.9, 0.999])
def test_sync_free_path_never_reads_back(monkeypatch, top_p):
    inputs = sync_free_inputs()
    expected = [top_p_filter(x, top_p) for x in inputs]
    patch_read_backs(monkeypatch)
    traces = []
    for x, want in zip(inputs, expected, strict=True):
        with RecordOps() as record:
            got = top_p_filter(x, top_p, sync_free=True)
            keep = top_p_keep(x, top_p, sync_free=True)
        traces.append(record.ops)
        monkeypatch.undo()
        assert torch.equal(got, want)
        assert torch.equal(keep, torch.isfinite(want) | (keep & torch.isneginf(x)))
        patch_read_backs(monkeypatch)
    # The same ops with the same shapes, whatever the data: nothing depends on the values.
    assert traces[0] == traces[1] == traces[2]


def test_the_read_back_checks_catch_the_partial_sort(monkeypatch):
    """The checks above can fail: the synchronising path trips both of them."""
    flat = sync_free_inputs()[1]
    with pytest.raises(SyncError), RecordOps():
        top_p_filter(flat, 0.9)
    patch_read_backs(monkeypatch)
    with pytest.raises(SyncError):
        top_p_filter(flat, 0.9)
