from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from torch_bridge import ChunkShuffleSampler, ZarrDataset


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
