from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from torch_bridge import ZarrDataset, collate
from torch_bridge._torch import torch
from torch_bridge.balanced import BalancedBatchSampler
from torch_bridge.sampler import BatchIndices


class FakeChunks:
    """Just the chunk grid of a dataset: ``n`` samples in chunks of ``chunk``."""

    def __init__(self, n: int, chunk: int) -> None:
        self.n, self.chunk_samples = n, chunk

    def __len__(self) -> int:
        return self.n

    @property
    def n_chunks(self) -> int:
        return -(-self.n // self.chunk_samples)

    def chunk_bounds(self, k: int) -> tuple[int, int]:
        return k * self.chunk_samples, min((k + 1) * self.chunk_samples, self.n)


def sparse_labels(n: int, every: int = 7, seed: int = 0) -> np.ndarray:
    """Labels 0/1/2 (2: another non-positive class) with about one positive in ``every``."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(np.array([0, 2], dtype=np.int8), n)
    labels[rng.random(n) < 1 / every] = 1
    return labels


def split(batches: list[list[int]], labels: np.ndarray) -> tuple[list[int], list[int]]:
    flat = [i for b in batches for i in b]
    return [i for i in flat if labels[i] == 1], [i for i in flat if labels[i] != 1]


def test_exact_ratio_and_each_non_positive_once() -> None:
    grid, labels = FakeChunks(1000, 64), sparse_labels(1000)
    sampler = BalancedBatchSampler(grid, labels, batch_size=32, positive_ratio=0.25, window=3)
    batches = list(sampler)
    non_positives = np.flatnonzero(labels != 1)
    assert len(batches) == len(sampler) == -(-len(non_positives) // 24)
    assert all(isinstance(b, BatchIndices) and len(b) == 32 for b in batches)
    assert [int((labels[b] == 1).sum()) for b in batches] == [8] * len(batches)
    _, seen = split(batches[:-1], labels)  # all but the last batch: no repeats
    assert len(seen) == len(set(seen))
    _, everything = split(batches, labels)
    assert set(everything) == set(non_positives.tolist())
    repeats = len(everything) - len(non_positives)
    assert 0 <= repeats < 24 and len(set(batches[-1]) & set(seen)) == repeats  # the last batch completed


def test_ranks_are_disjoint_by_chunk_and_cover_every_non_positive_once() -> None:
    grid, labels = FakeChunks(1000, 50), sparse_labels(1000, every=5)
    samplers = [BalancedBatchSampler(grid, labels, 16, num_replicas=3, rank=r, window=2) for r in range(3)]
    for epoch in range(3):
        for s in samplers:
            s.set_epoch(epoch)
        chunk_sets = [set(np.concatenate(s.windows()).tolist()) for s in samplers]
        assert set().union(*chunk_sets) == set(range(20))
        assert sum(map(len, chunk_sets)) == 20  # disjoint
        per_rank = [list(s) for s in samplers]
        assert {len(b) for b in per_rank} == {len(samplers[0])}
        union: set[int] = set()
        for batches, chunks in zip(per_rank, chunk_sets, strict=True):
            _, non_positives = split(batches, labels)
            assert {i // 50 for i in non_positives} <= chunks  # a rank reads only its chunks' non-positives
            assert all(int((labels[b] == 1).sum()) == 8 for b in batches)
            own = [i for k in chunks for i in range(k * 50, k * 50 + 50) if labels[i] != 1]
            assert sorted(set(non_positives)) == sorted(own)
            # own batches first, each non-positive once but in the completed last one; then repeats from the start
            n_own = -(-len(own) // 8)
            assert batches[n_own:] == batches[: len(batches) - n_own]
            _, first = split(batches[: n_own - 1], labels)
            assert len(first) == len(set(first))
            union |= set(non_positives)
        assert union == set(np.flatnonzero(labels != 1).tolist())


def test_same_seed_and_epoch_same_batches_new_epoch_new_order() -> None:
    grid, labels = FakeChunks(600, 40), sparse_labels(600)
    a, b = (BalancedBatchSampler(grid, labels, 20, seed=4) for _ in range(2))
    assert list(a) == list(b) == list(a)
    a.set_epoch(1)
    epoch1 = list(a)
    assert epoch1 != list(b)
    b.set_epoch(1)
    assert list(b) == epoch1
    assert list(BalancedBatchSampler(grid, labels, 20, seed=5)) != list(BalancedBatchSampler(grid, labels, 20))


def test_len_is_fixed_across_epochs() -> None:
    grid, labels = FakeChunks(1000, 64), sparse_labels(1000, every=3)
    for drop_last in (False, True):
        samplers = [
            BalancedBatchSampler(grid, labels, 24, num_replicas=3, rank=r, drop_last=drop_last) for r in range(3)
        ]
        lengths = {len(s) for s in samplers}
        assert len(lengths) == 1
        for epoch in range(4):
            for s in samplers:
                s.set_epoch(epoch)
                assert s.batches().shape == (len(s), 24) and len(list(s)) == len(s)
    dropped = BalancedBatchSampler(grid, labels, 24, drop_last=True)
    _, seen = split(list(dropped), labels)
    assert len(seen) == len(set(seen)) == len(dropped) * 12  # no repeat, the incomplete batch dropped


def test_batches_read_one_window_when_windows_hold_whole_batches() -> None:
    # 10 samples a chunk, 2 of them positive: a window of 2 chunks holds 16 non-positives = 4 batches of 4 + 4
    labels = np.tile(np.array([1, 0, 0, 2, 0, 0, 1, 0, 0, 0], dtype=np.int8), 30)
    sampler = BalancedBatchSampler(FakeChunks(300, 10), labels, batch_size=8, window=2)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        windows = sampler.windows()
        batches = sampler.batches()
        assert len(batches) == 60
        for b, batch in enumerate(batches):
            assert set((batch // 10).tolist()) <= set(windows[b // 4].tolist())
            assert len(set(batch.tolist())) == 8  # a window's 4 positives: none twice in a batch


def test_a_batch_spans_at_most_two_consecutive_windows() -> None:
    grid, labels = FakeChunks(1000, 20), sparse_labels(1000, every=4)  # ~15 non-positives a chunk
    sampler = BalancedBatchSampler(grid, labels, batch_size=20, positive_ratio=0.3, window=2)
    window_of = {int(k): w for w, chunks in enumerate(sampler.windows()) for k in chunks}
    for batch in sampler.batches():
        non_positive_windows = sorted({window_of[i // 20] for i in batch if labels[i] != 1})
        assert non_positive_windows in (
            [non_positive_windows[0]],
            [non_positive_windows[0], non_positive_windows[0] + 1],
        )
        positive_windows = {window_of[i // 20] for i in batch if labels[i] == 1}
        assert positive_windows <= {non_positive_windows[-1], non_positive_windows[-1] + 1}  # own or borrowed


def test_windows_without_positives_borrow_from_the_following_windows() -> None:
    labels = np.zeros(200, dtype=np.int8)
    labels[[5, 6, 7, 8, 9, 190]] = 1  # positives in chunks 0 (five) and 9 (one) only
    sampler = BalancedBatchSampler(FakeChunks(200, 20), labels, batch_size=8, window=1)
    for epoch in range(4):
        sampler.set_epoch(epoch)
        order = [int(w[0]) for w in sampler.windows()]
        holders = [order.index(0), order.index(9)]
        batches = sampler.batches()
        assert 190 in batches  # chunk 9's lone positive, in a pool grown with chunk 0's
        for batch in batches:
            assert int((labels[batch] == 1).sum()) == 4
            # a batch belongs to the window of its last non-positive: the later of the (at most two) it spans
            w = max(order.index(i // 20) for i in batch if labels[i] != 1)
            # the pool: windows from w on (wrapping round) until they hold 4 positives
            nearest = min(holders, key=lambda h: (h - w) % 10)
            expected = {0} if order[nearest] == 0 else {9, 0}
            assert {i // 20 for i in batch if labels[i] == 1} <= expected


def test_a_rank_without_positives_borrows_from_other_ranks() -> None:
    labels = np.zeros(200, dtype=np.int8)
    labels[:3] = 1  # three positives, all in chunk 0
    samplers = [BalancedBatchSampler(FakeChunks(200, 20), labels, 8, num_replicas=2, rank=r) for r in range(2)]
    for s in samplers:
        batches = s.batches()
        assert ((labels[batches] == 1).sum(axis=1) == 4).all()  # 3 positives for 4 places: one comes twice
        assert set(batches[labels[batches] == 1].tolist()) == {0, 1, 2}


def test_all_positive_and_no_positive_batches() -> None:
    grid, labels = FakeChunks(500, 50), sparse_labels(500)
    positives = BalancedBatchSampler(grid, labels, 8, positive_ratio=1.0)
    seen = [i for b in positives for i in b]
    assert (labels[seen] == 1).all() and sorted(set(seen)) == np.flatnonzero(labels == 1).tolist()
    none = BalancedBatchSampler(grid, labels, 8, positive_ratio=0.0)
    seen = [i for b in none for i in b]
    assert (labels[seen] != 1).all() and sorted(set(seen)) == np.flatnonzero(labels != 1).tolist()
    assert len(BalancedBatchSampler(grid, np.zeros(500, "int8"), 8, positive_ratio=0.01)) == -(-500 // 8)


def test_prefetch_names_the_chunks_of_the_batch_lookahead_later() -> None:
    grid, labels = FakeChunks(400, 40), sparse_labels(400)
    sampler = BalancedBatchSampler(grid, labels, 16, lookahead=2)
    batches = list(sampler)
    for b, batch in enumerate(batches):
        later = batches[b + 2] if b + 2 < len(batches) else []
        assert batch.prefetch == tuple(dict.fromkeys(i // 40 for i in later))


def test_through_a_dataloader(make_store: Callable[..., Path]) -> None:
    ds = ZarrDataset(make_store(n=300, chunk=32, shard=64), arrays=["patches"], return_metadata=True)
    labels = (np.arange(300) % 5 == 0).astype(np.int8)  # x0 == 3 * index tells the sample
    sampler = BalancedBatchSampler(ds, labels, batch_size=10, positive_ratio=0.4, window=2)
    loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler, collate_fn=collate)
    batches = list(loader)
    assert len(batches) == len(sampler)
    for batch, expected in zip(batches, sampler.batches(), strict=True):
        index = batch["meta"]["x0"].numpy() // 3
        np.testing.assert_array_equal(index, expected)
        assert int(labels[index].sum()) == 4


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"positive_ratio": 1.5}, "positive_ratio"),
        ({"positive_ratio": -0.1}, "positive_ratio"),
        ({"window": 0}, "window"),
        ({"num_replicas": 0}, "num_replicas"),
        ({"num_replicas": 2, "rank": 2}, "rank"),
        ({"rank": -1}, "rank"),
        ({"lookahead": 0}, "lookahead"),
        ({"labels": np.zeros(99, "int8")}, "labels must be 1-D"),
        ({"labels": np.zeros((100, 1), "int8")}, "labels must be 1-D"),
        ({"labels": np.zeros(100, "int8")}, "no positive"),
        ({"labels": np.ones(100, "int8")}, "only positives"),
    ],
)
def test_bad_parameters(kwargs: dict, match: str) -> None:
    args = {"labels": sparse_labels(100), "batch_size": 8, **kwargs}
    with pytest.raises(ValueError, match=match):
        BalancedBatchSampler(FakeChunks(100, 10), **args)


def test_chunks_must_cover_the_dataset() -> None:
    class Short(FakeChunks):
        def __len__(self) -> int:
            return self.n + 1

    with pytest.raises(ValueError, match="chunks of"):
        BalancedBatchSampler(Short(100, 10), sparse_labels(101), 8)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 300),
    chunk=st.integers(1, 40),
    every=st.integers(1, 12),
    batch_size=st.integers(1, 20),
    ratio=st.floats(0, 1),
    window=st.integers(1, 4),
    replicas=st.integers(1, 3),
    drop_last=st.booleans(),
    seed=st.integers(0, 3),
)
def test_properties(
    n: int,
    chunk: int,
    every: int,
    batch_size: int,
    ratio: float,
    window: int,
    replicas: int,
    drop_last: bool,
    seed: int,
) -> None:
    labels = sparse_labels(n, every, seed)
    n_pos = round(ratio * batch_size)
    grid = FakeChunks(n, chunk)
    try:
        samplers = [
            BalancedBatchSampler(
                grid,
                labels,
                batch_size,
                positive_ratio=ratio,
                window=window,
                num_replicas=replicas,
                rank=r,
                drop_last=drop_last,
                seed=seed,
            )
            for r in range(replicas)
        ]
    except ValueError as exc:  # only when the labels lack a class the batches need
        assert (n_pos and not (labels == 1).any()) or (n_pos < batch_size and (labels == 1).all()), exc
        return
    lengths = {len(s) for s in samplers}
    assert len(lengths) == 1
    taken_once: list[int] = []
    for s in samplers:
        batches = s.batches()
        assert batches.shape == (len(s), batch_size) and len(list(s)) == len(s)
        assert ((labels[batches] == 1).sum(axis=1) == n_pos).all()  # the ratio, exactly, in every batch
        once_class = labels[batches] != 1 if n_pos < batch_size else labels[batches] == 1
        taken_once += sorted(set(batches[once_class].tolist()))
    expected = np.flatnonzero(labels != 1 if n_pos < batch_size else labels == 1).tolist()
    # ranks read disjoint chunks unless one's round-robin share holds nothing to take once (then it reads all)
    everyone_owns = all(s._once_counts[s.chunk_order()[s.rank :: replicas]].sum() for s in samplers)
    if everyone_owns:  # ranks disjoint: each one of the class taken once by exactly one rank
        assert len(taken_once) == len(set(taken_once))
        if not drop_last:
            assert sorted(taken_once) == expected
    elif not drop_last:
        assert set(taken_once) == set(expected)
