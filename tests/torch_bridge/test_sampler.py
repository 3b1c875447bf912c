from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from torch_bridge import ChunkShuffleSampler, ZarrDataset, make_loader
from torch_bridge.sampler import order_randomness


class FakeChunks:
    """Just the chunk grid of a dataset, for sampler tests: ``n`` samples in chunks of ``chunk``."""

    def __init__(self, n: int, chunk: int) -> None:
        self.n, self.chunk_samples = n, chunk

    def __len__(self) -> int:
        return self.n

    @property
    def n_chunks(self) -> int:
        return -(-self.n // self.chunk_samples)

    def chunk_bounds(self, k: int) -> tuple[int, int]:
        return k * self.chunk_samples, min((k + 1) * self.chunk_samples, self.n)


def chunk_runs(order: list[int], chunk: int) -> list[int]:
    """The chunks of ``order`` with consecutive repeats collapsed."""
    runs = [i // chunk for i in order]
    return [c for j, c in enumerate(runs) if j == 0 or c != runs[j - 1]]


def test_an_epoch_is_a_chunk_contiguous_permutation() -> None:
    grid = FakeChunks(1000, 64)
    sampler = ChunkShuffleSampler(grid, seed=0)
    order = list(sampler)
    assert len(sampler) == len(order) == 1000
    assert sorted(order) == list(range(1000))
    runs = chunk_runs(order, 64)
    assert sorted(runs) == list(range(16))  # each chunk visited in one run
    assert runs != list(range(16))  # chunks shuffled
    assert runs[-1] == 15  # the short chunk (40 samples) last: batches of 64 stay chunk-aligned
    assert order[:64] != sorted(order[:64])  # samples shuffled within a chunk


def test_deterministic_per_seed_and_epoch() -> None:
    grid = FakeChunks(1000, 64)
    a, b = ChunkShuffleSampler(grid, seed=5), ChunkShuffleSampler(grid, seed=5)
    assert list(a) == list(b) == list(a)  # iterating twice gives the same epoch
    epochs = []
    for epoch in range(3):
        a.set_epoch(epoch)
        b.set_epoch(epoch)
        assert list(a) == list(b)
        epochs.append(list(a))
    assert epochs[0] != epochs[1] != epochs[2]
    assert list(ChunkShuffleSampler(grid, seed=6)) != epochs[0]


def test_chunk_order_depends_only_on_seed_and_epoch() -> None:
    sampler = ChunkShuffleSampler(FakeChunks(1000, 64), seed=2)
    sampler.set_epoch(4)
    full_chunks = np.random.default_rng([2, 4]).permutation(15)  # the short chunk 15 goes last
    np.testing.assert_array_equal(sampler.chunk_order(), [*full_chunks, 15])
    k = int(sampler.chunk_order()[0])
    expected = k * 64 + np.random.default_rng([2, 4, k]).permutation(64)
    np.testing.assert_array_equal(sampler.indices()[: len(expected)], expected)
    last = 960 + np.random.default_rng([2, 4, 15]).permutation(40)
    np.testing.assert_array_equal(sampler.indices()[-40:], last)


def test_full_chunks_are_all_shuffled() -> None:
    sampler = ChunkShuffleSampler(FakeChunks(1024, 64), seed=2)  # no short chunk: all 16 permuted
    sampler.set_epoch(4)
    np.testing.assert_array_equal(sampler.chunk_order(), np.random.default_rng([2, 4]).permutation(16))
    lasts = set()
    for epoch in range(20):
        sampler.set_epoch(epoch)
        lasts.add(int(sampler.chunk_order()[-1]))
    assert len(lasts) > 1


def test_batches_of_whole_chunks_with_a_short_last_chunk() -> None:
    grid = FakeChunks(1000, 64)
    sampler = ChunkShuffleSampler(grid, seed=9)
    for epoch in range(5):
        sampler.set_epoch(epoch)
        order = sampler.indices()
        for start in range(0, 1000, 128):  # batches of two chunks: each holds exactly two whole chunks
            batch = order[start : start + 128]
            chunks = np.unique(batch // 64)  # the last batch: a full chunk and the short one
            assert len(chunks) == 2
            assert sorted(batch.tolist()) == [i for k in chunks for i in range(*grid.chunk_bounds(int(k)))]


def test_no_shuffle_is_sequential() -> None:
    assert list(ChunkShuffleSampler(FakeChunks(1000, 64), shuffle=False)) == list(range(1000))


def test_works_on_a_dataset(store: Path) -> None:
    ds = ZarrDataset(store, arrays=["patches"])
    sampler = ChunkShuffleSampler(ds, seed=1)
    assert sorted(sampler) == list(range(len(ds)))
    assert list(sampler) == list(ChunkShuffleSampler(FakeChunks(len(ds), ds.chunk_samples), seed=1))


def test_ranks_are_disjoint_by_chunk_and_even() -> None:
    grid = FakeChunks(1000, 64)
    samplers = [ChunkShuffleSampler(grid, seed=3, num_replicas=3, rank=r) for r in range(3)]
    orders = [list(s) for s in samplers]
    assert {len(s) for s in samplers} == {len(o) for o in orders} == {6 * 64}  # 16 chunks: 6, 5, 5 per rank
    chunks = [{i // 64 for i in o} for o in orders]
    assert not (chunks[0] & chunks[1] or chunks[0] & chunks[2] or chunks[1] & chunks[2])
    assert set().union(*orders) == set(range(1000))
    assert chunks[0] | chunks[1] | chunks[2] == set(range(16))


def test_ranks_drop_last() -> None:
    grid = FakeChunks(1000, 64)
    orders = [list(ChunkShuffleSampler(grid, num_replicas=3, rank=r, drop_last=True)) for r in range(3)]
    assert {len(o) for o in orders} == {5 * 64 - 24}  # the smallest share: 5 chunks, one of them short
    everything = [i for o in orders for i in o]
    assert len(everything) == len(set(everything))


def test_fewer_chunks_than_ranks() -> None:
    grid = FakeChunks(10, 4)  # 3 chunks for 4 ranks
    orders = [list(ChunkShuffleSampler(grid, num_replicas=4, rank=r)) for r in range(4)]
    assert {len(o) for o in orders} == {4}
    assert set().union(*orders) == set(range(10))
    assert [list(ChunkShuffleSampler(grid, num_replicas=4, rank=r, drop_last=True)) for r in range(4)] == [[]] * 4


@pytest.mark.parametrize(("kwargs", "match"), [({"num_replicas": 0}, "num_replicas"), ({"rank": 1}, "rank")])
def test_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ChunkShuffleSampler(FakeChunks(10, 4), **kwargs)


def test_empty_dataset() -> None:
    sampler = ChunkShuffleSampler(FakeChunks(0, 4), num_replicas=2, rank=1)
    assert len(sampler) == 0 and list(sampler) == []


@st.composite
def splits(draw: st.DrawFn) -> tuple[FakeChunks, int, int, int, bool]:
    chunk = draw(st.integers(1, 9))
    n = draw(st.integers(1, 80))
    return (
        FakeChunks(n, chunk),
        draw(st.integers(1, 7)),
        draw(st.integers(0, 2**16)),
        draw(st.integers(0, 9)),
        (draw(st.booleans())),
    )


@settings(max_examples=150, deadline=None)
@given(splits())
def test_rank_split_properties(case: tuple[FakeChunks, int, int, int, bool]) -> None:
    grid, replicas, seed, epoch, drop_last = case
    samplers = [
        ChunkShuffleSampler(grid, seed=seed, num_replicas=replicas, rank=r, drop_last=drop_last)
        for r in range(replicas)
    ]
    for s in samplers:
        s.set_epoch(epoch)
    orders = [s.indices().tolist() for s in samplers]
    n = len(samplers[0])
    # every rank yields the same number of samples, which is what len() says
    assert all(len(s) == n for s in samplers) and all(len(o) == n for o in orders)
    # brute force: each rank's own chunks, dealt round-robin from the shuffled order
    order = samplers[0].chunk_order()
    assert sorted(order.tolist()) == list(range(grid.n_chunks))
    own = [[i for k in order[r::replicas] for i in range(*grid.chunk_bounds(int(k)))] for r in range(replicas)]
    shares = [len(o) for o in own]
    if drop_last:
        assert n <= min(shares)  # nobody pads
        everything = [i for o in orders for i in o]
        assert len(everything) == len(set(everything))  # no sample twice
    else:
        assert n >= max(shares)  # nobody drops
        assert set().union(*map(set, orders)) == set(range(len(grid)))  # every sample served
        assert n - max(shares) <= grid.chunk_samples  # padding is at most a chunk per rank
    for r, o in enumerate(orders):
        if own[r]:
            assert set(o) <= set(own[r])  # a rank reads only its own chunks: ranks never share one
            assert (
                o[: min(n, shares[r])]
                == [i for k in order[r::replicas] for i in _shuffled(grid, seed, epoch, int(k))][
                    : min(n, shares[r])
                ]
            )
        else:
            assert grid.n_chunks < replicas  # only then may a rank have no chunk


@settings(max_examples=50, deadline=None)
@given(n=st.integers(1, 60), chunk=st.integers(1, 8), replicas=st.integers(1, 5), drop_last=st.booleans())
def test_length_does_not_depend_on_the_epoch(n: int, chunk: int, replicas: int, drop_last: bool) -> None:
    grid = FakeChunks(n, chunk)
    for r in range(replicas):
        sampler = ChunkShuffleSampler(grid, seed=1, num_replicas=replicas, rank=r, drop_last=drop_last)
        lengths = set()
        for epoch in range(6):
            sampler.set_epoch(epoch)
            lengths.add(len(list(sampler)))
        assert lengths == {len(sampler)}
    if replicas == 1:
        assert len(ChunkShuffleSampler(grid, drop_last=drop_last)) == n  # one rank: exactly the dataset


def _shuffled(grid: FakeChunks, seed: int, epoch: int, k: int) -> list[int]:
    start, stop = grid.chunk_bounds(k)
    return (start + np.random.default_rng([seed, epoch, k]).permutation(stop - start)).tolist()


# --------------------------------------------------------------------------- window: shuffle N chunks together
def _old_order(grid: FakeChunks, seed: int, epoch: int, replicas: int = 1, rank: int = 0) -> list[int]:
    """The chunk-by-chunk order of before ``window`` existed, for a rank that has chunks and needs no padding."""
    sampler = ChunkShuffleSampler(grid, seed=seed, num_replicas=replicas, rank=rank)
    sampler.set_epoch(epoch)
    return [i for k in sampler.chunk_order()[rank::replicas] for i in _shuffled(grid, seed, epoch, int(k))]


@settings(max_examples=100, deadline=None)
@given(splits(), st.integers(1, 12))
def test_window_properties(case: tuple[FakeChunks, int, int, int, bool], window: int) -> None:
    grid, replicas, seed, epoch, drop_last = case
    samplers = [
        ChunkShuffleSampler(grid, seed=seed, num_replicas=replicas, rank=r, drop_last=drop_last, window=window)
        for r in range(replicas)
    ]
    plain = [
        ChunkShuffleSampler(grid, seed=seed, num_replicas=replicas, rank=r, drop_last=drop_last)
        for r in range(replicas)
    ]
    for s in samplers + plain:
        s.set_epoch(epoch)
    orders = [s.indices().tolist() for s in samplers]
    assert [len(o) for o in orders] == [len(s) for s in plain]  # the window never changes the length
    order = samplers[0].chunk_order()
    np.testing.assert_array_equal(order, plain[0].chunk_order())  # nor the chunk order and its rank split
    for r, o in enumerate(orders):
        own = [int(k) for k in order[r::replicas]]
        if not own:
            continue
        assert {i // grid.chunk_samples for i in o} <= set(own)  # ranks still never share a chunk
        # each window of the rank's chunks comes out as a permutation of exactly its chunks' samples
        at = 0
        for first in range(0, len(own), window):
            samples = [i for k in own[first : first + window] for i in range(*grid.chunk_bounds(k))]
            got = o[at : at + len(samples)]
            if len(got) == len(samples):
                assert sorted(got) == sorted(samples)
            else:  # the end of a rank cut short by drop_last: some of the window, none twice
                assert set(got) <= set(samples) and len(set(got)) == len(got)
            at += len(samples)
            if at >= len(o):
                break
    if replicas == 1:
        assert sorted(orders[0]) == list(range(len(grid)))  # one rank: a permutation of every index
    if window == 1:
        assert orders == [s.indices().tolist() for s in plain]


@settings(max_examples=50, deadline=None)
@given(n=st.integers(1, 300), chunk=st.integers(1, 16), seed=st.integers(0, 2**16), epoch=st.integers(0, 5))
def test_window_1_is_the_old_order(n: int, chunk: int, seed: int, epoch: int) -> None:
    grid = FakeChunks(n, chunk)
    sampler = ChunkShuffleSampler(grid, seed=seed, window=1)
    sampler.set_epoch(epoch)
    assert sampler.indices().tolist() == _old_order(grid, seed, epoch)


def test_window_is_deterministic_per_seed_and_epoch() -> None:
    grid = FakeChunks(1000, 64)
    a, b = ChunkShuffleSampler(grid, seed=5, window=4), ChunkShuffleSampler(grid, seed=5, window=4)
    epochs = []
    for epoch in range(3):
        a.set_epoch(epoch)
        b.set_epoch(epoch)
        assert list(a) == list(b) == list(a)
        epochs.append(list(a))
    assert epochs[0] != epochs[1] != epochs[2]
    assert list(ChunkShuffleSampler(grid, seed=6, window=4)) != epochs[0]
    assert sorted(epochs[0]) == list(range(1000))


def test_window_without_shuffle_is_sequential() -> None:
    assert list(ChunkShuffleSampler(FakeChunks(100, 8), shuffle=False, window=5)) == list(range(100))


def test_window_larger_than_the_epoch_shuffles_everything_together() -> None:
    grid = FakeChunks(1000, 64)
    order = ChunkShuffleSampler(grid, seed=1, window=100).indices()
    assert sorted(order.tolist()) == list(range(1000))
    assert order_randomness(order, 64, 64)["mixing"] > 0.9  # as mixed as a uniform shuffle


def test_randomness_grows_with_the_window() -> None:
    grid = FakeChunks(64 * 200, 64)
    stats = [
        order_randomness(ChunkShuffleSampler(grid, seed=3, window=w).indices(), 64, 64) for w in (1, 4, 16, 64)
    ]
    per_batch = [s["chunks_per_batch"] for s in stats]
    assert per_batch[0] == 1.0 and stats[0]["one_chunk_batches"] == 1.0  # window 1: one chunk per batch
    assert per_batch == sorted(per_batch) and per_batch[1] > 3 and per_batch[2] > 14  # ~ min(window, 64) chunks
    assert all(s["one_chunk_batches"] == 0 for s in stats[1:])
    lags = [s["lag1_corr"] for s in stats]
    assert lags == sorted(lags, reverse=True) and lags[0] > 0.95 and lags[-1] < 0.1  # neighbours drift apart


@pytest.mark.parametrize("window", [0, -1])
def test_bad_window(window: int) -> None:
    with pytest.raises(ValueError, match="window"):
        ChunkShuffleSampler(FakeChunks(10, 4), window=window)


def test_make_loader_passes_the_window(store: Path) -> None:
    ds = ZarrDataset(store, arrays=["patches"])
    loader = make_loader(ds, batch_size=64, seed=2, window=4)
    assert loader.sampler.window == 4
    expected = ChunkShuffleSampler(ds, seed=2, window=4).indices()
    got = [i for batch in loader.batch_sampler for i in batch]
    assert got == expected.tolist()
    first = next(iter(loader))["patches"]
    np.testing.assert_array_equal(first.numpy(), np.stack([ds[int(i)]["patches"].numpy() for i in expected[:64]]))


# --------------------------------------------------------------------------- order_randomness
def test_randomness_of_known_orders() -> None:
    seq = order_randomness(np.arange(640), chunk_samples=64, batch_size=32)
    assert seq["chunks_per_batch"] == 1 and seq["one_chunk_batches"] == 1 and seq["batches"] == 20
    assert seq["lag1_corr"] == pytest.approx(1.0)
    # batches straddling two chunks: chunks of 48, batches of 32 -> 1, 2, 1, 2, ... chunks
    straddle = order_randomness(np.arange(96 * 4), chunk_samples=48, batch_size=32)
    assert straddle["chunks_per_batch"] == pytest.approx(4 / 3)
    assert straddle["one_chunk_batches"] == pytest.approx(2 / 3)


@settings(max_examples=50, deadline=None)
@given(n=st.integers(2, 200), chunk=st.integers(1, 20), batch=st.integers(1, 40), seed=st.integers(0, 2**16))
def test_uniform_expectation_matches_brute_force(n: int, chunk: int, batch: int, seed: int) -> None:
    order = np.random.default_rng(seed).permutation(n)
    r = order_randomness(order, chunk, batch)
    if n < batch:
        assert r["batches"] == 0 and np.isnan(r["chunks_per_batch"])
        return
    # the expected number of distinct chunks in a uniform draw of `batch` samples, by simulation
    rng = np.random.default_rng(seed + 1)
    draws = [len(np.unique(rng.choice(n, batch, replace=False) // chunk)) for _ in range(4000)]
    assert r["chunks_per_batch_uniform"] == pytest.approx(np.mean(draws), abs=0.1 + 0.03 * np.std(draws))
    assert 1 <= r["chunks_per_batch"] <= min(batch, -(-n // chunk))


def test_randomness_of_short_orders() -> None:
    r = order_randomness([3, 1], chunk_samples=4, batch_size=8)
    assert r["batches"] == 0 and np.isnan(r["lag1_corr"]) and np.isnan(r["mixing"])
    with pytest.raises(ValueError, match="chunk_samples"):
        order_randomness([1], chunk_samples=0, batch_size=1)
