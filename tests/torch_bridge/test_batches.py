"""The batch path: ``ZarrDataset.__getitems__``, ``SampleBatch`` and ``torch_bridge.collate``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, default_collate

from torch_bridge import ChunkShuffleSampler, SampleBatch, ZarrDataset, collate, make_loader

N_SAMPLES = 1000  # as written by conftest.write_store
CHUNK = 64


class PerSample(torch.utils.data.Dataset):
    """The dataset read sample by sample (no ``__getitems__``): the reference."""

    def __init__(self, ds: ZarrDataset) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> Any:
        return self.ds[i]


def assert_identical(a: Any, b: Any) -> None:
    """Equal values, types, dtypes, shapes and keys (in order), recursively."""
    assert type(a) is type(b), (type(a), type(b))
    if isinstance(a, dict):
        assert list(a) == list(b)
        for key in a:
            assert_identical(a[key], b[key])
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert torch.equal(a, b)
    else:
        assert a == b


def add_one(sample: dict) -> dict:
    return {**sample, "patches": sample["patches"] + 1}


@pytest.mark.parametrize("return_metadata", [False, True])
@pytest.mark.parametrize("load_in_memory", [False, True])
def test_getitems_equals_getitem(store: Path, return_metadata: bool, load_in_memory: bool) -> None:
    ds = ZarrDataset(
        store, arrays=["patches", "origin"], return_metadata=return_metadata, load_in_memory=load_in_memory
    )
    rng = np.random.default_rng(0)
    cases = [
        list(range(CHUNK)),  # one whole chunk
        (960 + rng.permutation(40)).tolist(),  # the short last chunk
        rng.integers(0, N_SAMPLES, 64).tolist(),  # random order, chunks interleaved
        [5, 70, 6, 71, 999, -1, -1000, 5],  # interleaved, negative, repeated
        [*(128 + rng.permutation(64)).tolist(), *(0 + rng.permutation(64)).tolist()],  # two chunks in a row
        [np.int64(3), np.int32(900)],
    ]
    for indices in cases:
        batch = ds.__getitems__(indices)
        reference = [ds[i] for i in indices]
        assert isinstance(batch, SampleBatch) and len(batch) == len(indices)
        for got, want in zip(batch, reference, strict=True):
            assert_identical(got, want)
        assert_identical(batch.stacked, default_collate(reference))
        assert_identical(default_collate(batch), default_collate(reference))


def test_metadata_dtypes_follow_default_collate(store: Path) -> None:
    ds = ZarrDataset(store, arrays=["patches"], return_metadata=True, metadata=["origin", "x0", "y0"])
    stacked = ds.__getitems__([1, 2, 3]).stacked
    assert stacked["meta"]["x0"].dtype == torch.int64  # Python ints per sample, collated to int64
    assert stacked["meta"]["origin"].dtype == torch.int32 and stacked["meta"]["origin"].shape == (3, 2)
    assert stacked["meta"]["x0"].tolist() == [3, 6, 9]


def test_samples_are_views_of_the_batch_not_of_the_cache(store: Path) -> None:
    ds = ZarrDataset(store, arrays=["patches"])
    batch = ds.__getitems__([3, 4])
    assert batch[1]["patches"].data_ptr() == batch.stacked["patches"][1].data_ptr()
    expected = ds[3]["patches"].clone()
    batch.stacked["patches"] += 100  # a new array: the cached chunk stays intact
    torch.testing.assert_close(ds[3]["patches"], expected)


def test_one_decode_per_chunk_and_array(store: Path) -> None:
    ds = ZarrDataset(store, arrays=["patches"], return_metadata=True)
    ds.__getitems__([*range(64, 128), *range(0, 10)])
    stats = ds.cache.stats
    assert stats["decodes"] == stats["misses"] == 2 * 4 and stats["hits"] == 0  # 2 chunks, 4 arrays


def test_metadata_with_its_own_chunk_size(metadata_chunked_store: Path) -> None:
    ds = ZarrDataset(metadata_chunked_store, return_metadata=True)
    indices = [99, 0, 9, 10, 63, 64, 11]
    batch = ds.__getitems__(indices)
    for got, i in zip(batch, indices, strict=True):
        assert_identical(got, ds[i])


def test_out_of_range_and_bad_indices(store: Path) -> None:
    ds = ZarrDataset(store, arrays=["patches"])
    with pytest.raises(IndexError, match="sample 1000 out of range"):
        ds.__getitems__([0, 1000])
    with pytest.raises(IndexError, match="sample -1001 out of range"):
        ds.__getitems__([-1001])
    with pytest.raises(TypeError):
        ds.__getitems__([1.5])  # type: ignore[list-item]
    assert ds.__getitems__([]) == []


def test_transform_falls_back_to_samples(store: Path) -> None:
    ds = ZarrDataset(store, arrays=["patches"], return_metadata=True, transform=add_one)
    batch = ds.__getitems__([1, 900])
    assert type(batch) is list
    assert_identical(batch[1], ds[900])
    assert_identical(collate(batch), default_collate([ds[1], ds[900]]))


def test_collate_falls_back_to_default_collate() -> None:
    items = [(torch.zeros(2), 1), (torch.ones(2), 2)]
    assert_identical(collate(items)[0], default_collate(items)[0])
    batch = SampleBatch([{"x": torch.zeros(1)}], {"x": torch.zeros(1, 1)})
    assert collate(batch) is batch.stacked


@pytest.mark.parametrize("return_metadata", [False, True])
@pytest.mark.parametrize("workers", [0, 2])
def test_loaders_give_the_per_sample_batches(store: Path, return_metadata: bool, workers: int) -> None:
    ds = ZarrDataset(store, arrays=["patches", "origin"], return_metadata=return_metadata)
    sampler = ChunkShuffleSampler(ds, seed=7)
    sampler.set_epoch(1)
    reference = list(DataLoader(PerSample(ds), batch_size=64, sampler=sampler))
    options: dict[str, Any] = {"num_workers": workers}
    if workers:
        options.update(multiprocessing_context="spawn", persistent_workers=False)
    plain = DataLoader(ds, batch_size=64, sampler=sampler, **options)
    made = make_loader(ds, batch_size=64, sampler=sampler, **options)
    assert made.collate_fn is collate
    for loader in (plain, made):
        batches = list(loader)
        assert len(batches) == len(reference) == 16
        for got, want in zip(batches, reference, strict=True):
            assert_identical(got, want)


def test_random_order_through_a_plain_loader(store: Path) -> None:
    ds = ZarrDataset(store, arrays=["patches"], return_metadata=True)
    order = torch.randperm(N_SAMPLES, generator=torch.Generator().manual_seed(0)).tolist()  # chunks interleaved
    reference = list(DataLoader(PerSample(ds), batch_size=50, sampler=order))
    for got, want in zip(DataLoader(ds, batch_size=50, sampler=order), reference, strict=True):
        assert_identical(got, want)
