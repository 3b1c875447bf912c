"""ChunkBatchSampler's hints and the dataset's background decoding of the chunks they name."""

from __future__ import annotations

import pickle
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from storage.layout import SampleGrid
from storage.store import ArraySpec, TrainingStore
from torch_bridge import BatchIndices, ChunkBatchSampler, ChunkShuffleSampler, ZarrDataset, make_loader


@pytest.fixture
def store(tmp_path: Path) -> Path:
    path = tmp_path / "p.zarr"
    data = np.arange(1000 * 6, dtype=np.float32).reshape(1000, 2, 3)
    specs = [
        ArraySpec("x", ("sample", "a", "b"), data.shape, np.dtype("float32")),
        ArraySpec("i", ("sample",), (1000,), np.dtype("int32")),
    ]
    with TrainingStore.open_for_writing(path, specs, grid=SampleGrid(64, 256), record={"pipeline": "t"}) as s:
        for b in s.blocks():
            s.write_block(b, {"x": data[b.start : b.stop], "i": np.arange(b.start, b.stop, dtype=np.int32)})
        s.finalize()
    return path


def test_batches_equal_a_plain_batching_of_the_order(store: Path):
    ds = ZarrDataset(store)
    order = ChunkShuffleSampler(ds, seed=3)
    for drop_last in (False, True):
        batches = list(ChunkBatchSampler(order, 100, drop_last=drop_last))
        plain = list(torch.utils.data.BatchSampler(order, 100, drop_last=drop_last))
        assert [list(b) for b in batches] == plain
        assert len(ChunkBatchSampler(order, 100, drop_last=drop_last)) == len(plain)


@pytest.mark.parametrize("lookahead", [1, 2, 3])
def test_hints_name_the_chunks_of_the_batch_lookahead_later(store: Path, lookahead: int):
    ds = ZarrDataset(store)
    batches = list(ChunkBatchSampler(ChunkShuffleSampler(ds, seed=1), 64, lookahead=lookahead))
    for b, batch in enumerate(batches):
        later = batches[b + lookahead] if b + lookahead < len(batches) else []
        assert set(batch.prefetch) == {i // ds.chunk_samples for i in later}


def test_batch_indices_pickle_with_their_hints():
    batch = pickle.loads(pickle.dumps(BatchIndices([5, 1, 2], prefetch=(7, 3))))
    assert isinstance(batch, BatchIndices) and list(batch) == [5, 1, 2] and batch.prefetch == (7, 3)


def test_prefetched_chunks_are_decoded_once_and_used(store: Path):
    ds = ZarrDataset(store, return_metadata=True)
    ds.prefetch([2, 5])
    deadline = time.monotonic() + 10
    while ds.cache.stats["decodes"] < 4 and time.monotonic() < deadline:  # 2 chunks × (x, i)
        time.sleep(0.01)
    assert ds.cache.stats["prefetched"] == 4
    batch = ds.__getitems__(BatchIndices(list(range(128, 192)), prefetch=(5,)))
    assert ds.cache.stats["decodes"] == 4 and ds.cache.stats["misses"] == 0  # chunk 2 came from the prefetch
    np.testing.assert_array_equal(batch.stacked["meta"]["i"].numpy(), np.arange(128, 192))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_make_loader_with_hints_gives_the_same_batches(store: Path, num_workers: int):
    ds = ZarrDataset(store, return_metadata=True)
    loader = make_loader(ds, batch_size=64, seed=2, num_workers=num_workers)
    assert isinstance(loader.batch_sampler, ChunkBatchSampler)
    assert loader.batch_sampler.lookahead == max(1, num_workers)
    reference = torch.utils.data.DataLoader(ds, batch_size=64, sampler=ChunkShuffleSampler(ds, seed=2))
    for epoch in range(2):
        loader.sampler.set_epoch(epoch)  # the documented call still reaches the order
        reference.sampler.set_epoch(epoch)
        for got, want in zip(loader, reference, strict=True):
            torch.testing.assert_close(got["x"], want["x"])
            torch.testing.assert_close(got["meta"]["i"], want["meta"]["i"])
