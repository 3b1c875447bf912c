from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from storage.errors import StoreError
from storage.layout import SampleGrid
from storage.store import ArraySpec, TrainingStore
from torch_bridge import ChunkShuffleSampler, ZarrDataset

N_SAMPLES = 1000  # as written by conftest.write_store
CHUNK = 64


def add_one(sample: dict) -> dict:
    return {**sample, "patches": sample["patches"] + 1}


def test_every_sample_equals_zarr(store: Path) -> None:
    ds = ZarrDataset(store, arrays=["patches", "origin"])
    patches = zarr.open_array(str(store / "patches"), mode="r")
    origin = zarr.open_array(str(store / "origin"), mode="r")
    all_patches, all_origin = patches[:], origin[:]
    assert len(ds) == N_SAMPLES
    for i in range(N_SAMPLES):  # every sample, the short last chunk (960..999) included
        sample = ds[i]
        assert sample.keys() == {"patches", "origin"}
        np.testing.assert_array_equal(sample["patches"].numpy(), all_patches[i])
        np.testing.assert_array_equal(sample["origin"].numpy(), all_origin[i])
    for i in [0, CHUNK - 1, CHUNK, 255, 256, 959, 960, N_SAMPLES - 1]:  # against zarr's own per-sample reads
        np.testing.assert_array_equal(ds[i]["patches"].numpy(), patches[i])
    assert ds[0]["patches"].dtype == torch.float32 and ds[0]["patches"].shape == (8, 6)


def test_defaults_pick_arrays_and_metadata(store: Path) -> None:
    ds = ZarrDataset(store)
    assert ds.arrays == ("origin", "patches")  # every array with 2 or more dims, by name
    assert ds.metadata == ("source_index", "x0", "y0")  # every 1-D array not in arrays
    assert set(ds[0]) == {"origin", "patches"}  # no "meta" unless asked
    assert ds.chunk_samples == CHUNK and ds.n_chunks == 16
    assert ds.chunk_bounds(15) == (960, N_SAMPLES)
    with pytest.raises(IndexError):
        ds.chunk_bounds(16)


def test_metadata_is_returned(store: Path) -> None:
    ds = ZarrDataset(store, arrays=["patches"], return_metadata=True)
    y0 = zarr.open_array(str(store / "y0"), mode="r")[:]
    for i in [0, 5, 511, 999]:
        meta = ds[i]["meta"]
        assert meta == {"source_index": i // 100, "x0": 3 * i, "y0": int(y0[i])}
        assert all(type(v) is int for v in meta.values())


def test_chosen_metadata_may_be_nd(store: Path) -> None:
    ds = ZarrDataset(store, arrays=["patches"], return_metadata=True, metadata=["origin", "x0"])
    origin = zarr.open_array(str(store / "origin"), mode="r")[:]
    meta = ds[999]["meta"]
    assert meta["x0"] == 2997
    assert isinstance(meta["origin"], torch.Tensor)
    np.testing.assert_array_equal(meta["origin"].numpy(), origin[999])


def test_negative_and_numpy_indices(store: Path) -> None:
    ds = ZarrDataset(store, arrays=["patches"])
    torch.testing.assert_close(ds[-1]["patches"], ds[N_SAMPLES - 1]["patches"])
    torch.testing.assert_close(ds[np.int64(-N_SAMPLES)]["patches"], ds[0]["patches"])
    for bad in [N_SAMPLES, -N_SAMPLES - 1]:
        with pytest.raises(IndexError, match="out of range"):
            ds[bad]
    with pytest.raises(TypeError):
        ds[1.5]  # type: ignore[index]


def test_transform_is_applied(store: Path) -> None:
    plain = ZarrDataset(store, arrays=["patches"], return_metadata=True)
    ds = ZarrDataset(store, arrays=["patches"], return_metadata=True, transform=add_one)
    torch.testing.assert_close(ds[7]["patches"], plain[7]["patches"] + 1)
    assert ds[7]["meta"] == plain[7]["meta"]


def test_samples_are_copies(store: Path) -> None:
    ds = ZarrDataset(store, arrays=["patches"])
    first = ds[3]["patches"]
    expected = first.clone()
    first += 100  # must not change the cached chunk
    torch.testing.assert_close(ds[3]["patches"], expected)


def test_each_chunk_is_decoded_once_in_sampler_order(store: Path) -> None:
    # The cache holds only two chunks of each array, yet chunk-by-chunk order needs nothing more.
    ds = ZarrDataset(store, arrays=["patches"], return_metadata=True, cache_bytes=2 * CHUNK * (8 * 6 * 4 + 12))
    sampler = ChunkShuffleSampler(ds, seed=3)
    for epoch in range(2):
        sampler.set_epoch(epoch)
        for i in sampler:
            ds[i]
    n_reads = 2 * N_SAMPLES * 4  # two epochs, patches and three metadata arrays
    stats = ds.cache.stats
    assert stats["decodes"] == stats["misses"] == 2 * ds.n_chunks * 4
    assert stats["hits"] == n_reads - stats["decodes"]


def test_random_order_with_a_small_cache_decodes_more(store: Path) -> None:
    ds = ZarrDataset(store, arrays=["patches"], cache_bytes=2 * CHUNK * 8 * 6 * 4)
    for i in np.random.default_rng(0).permutation(N_SAMPLES):
        ds[i]
    assert ds.cache.stats["decodes"] > 5 * ds.n_chunks


def test_metadata_with_its_own_chunk_size(metadata_chunked_store: Path) -> None:
    ds = ZarrDataset(metadata_chunked_store, return_metadata=True)
    assert ds.chunk_samples == 64 and ds.n_chunks == 2
    for i in [0, 9, 10, 63, 64, 99]:
        sample = ds[i]
        assert sample["x"].tolist() == [3 * i, 3 * i + 1, 3 * i + 2]
        assert sample["meta"] == {"label": 2 * i}
    assert ("label", 9) in ds.cache and ("x", 1) in ds.cache


def test_load_in_memory(store: Path) -> None:
    cached = ZarrDataset(store, arrays=["patches"], return_metadata=True)
    ds = ZarrDataset(store, arrays=["patches"], return_metadata=True, load_in_memory=True)
    for i in [0, 63, 64, 999, -1]:
        torch.testing.assert_close(ds[i]["patches"], cached[i]["patches"])
        assert ds[i]["meta"] == cached[i]["meta"]
    assert ds.cache.stats["decodes"] == 0  # served from RAM
    ds[0]["patches"] += 1  # a copy: RAM stays intact
    torch.testing.assert_close(ds[0]["patches"], cached[0]["patches"])


def test_pickles_as_path_and_options(store: Path) -> None:
    ds = ZarrDataset(store, arrays=["patches"], return_metadata=True, transform=add_one, load_in_memory=True)
    ds[0]  # opens readers, fills the cache, loads into memory
    blob = pickle.dumps(ds)
    assert len(blob) < 4000  # no chunks, no arrays
    clone = pickle.loads(blob)
    assert clone._readers == {} and clone._cache is None and clone._memory is None
    torch.testing.assert_close(clone[999]["patches"], ds[999]["patches"])
    assert clone[999]["meta"] == ds[999]["meta"]


def test_reopens_after_the_process_changes(store: Path) -> None:
    ds = ZarrDataset(store, arrays=["patches"])
    ds[0]
    old_cache, old_reader = ds.cache, ds._readers["patches"]
    ds._pid = -1  # as a forked child sees it
    ds[1]
    assert ds.cache is not old_cache and ds._readers["patches"] is not old_reader
    assert ds.cache.stats["decodes"] == 1


def test_missing_array_names_store_and_choices(store: Path) -> None:
    with pytest.raises(StoreError, match=r"train\.zarr: no array 'patchez'.*available arrays: origin, patches"):
        ZarrDataset(store, arrays=["patchez"])
    with pytest.raises(StoreError, match=r"no array 'label' \(asked for in metadata=\)"):
        ZarrDataset(store, arrays=["patches"], metadata=["label"])
    with pytest.raises(StoreError, match=r"no array .\.zarrforge."):  # the hidden bookkeeping group
        ZarrDataset(store, arrays=[".zarrforge"])


def test_bad_store_paths(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no such store"):
        ZarrDataset(tmp_path / "nope.zarr")
    (tmp_path / "plain").mkdir()
    with pytest.raises(StoreError, match="not a Zarr v3 group"):
        ZarrDataset(tmp_path / "plain")
    arr = zarr.create_array(str(tmp_path / "arr.zarr"), shape=(4, 2), dtype="int8")
    arr[:] = 1
    with pytest.raises(StoreError, match="not a Zarr v3 group"):
        ZarrDataset(tmp_path / "arr.zarr")


def test_unfinished_store_is_refused(tmp_path: Path) -> None:
    spec = ArraySpec("x", ("sample", "v"), (10, 2), np.dtype("float32"))
    with TrainingStore.open_for_writing(
        tmp_path / "t.zarr", [spec], grid=SampleGrid(4, 8), record={"pipeline": "test"}
    ) as s:
        s.write_block(s.blocks()[0], {"x": np.ones((8, 2), "float32")})
    with pytest.raises(StoreError, match="unfinished"):
        ZarrDataset(tmp_path / "t.zarr")


def test_bad_arguments(store: Path) -> None:
    with pytest.raises(TypeError, match="sequence of array names"):
        ZarrDataset(store, arrays="patches")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="twice"):
        ZarrDataset(store, arrays=["patches", "patches"])
    with pytest.raises(ValueError, match="cache_bytes"):
        ZarrDataset(store, cache_bytes=-1)


def test_arrays_must_share_the_sample_axis(tmp_path: Path) -> None:
    group = zarr.create_group(str(tmp_path / "g.zarr"))
    group.create_array("x", shape=(10, 2), dtype="int8")
    group.create_array("label", shape=(9,), dtype="int8")
    with pytest.raises(StoreError, match="disagree on the number of samples"):
        ZarrDataset(tmp_path / "g.zarr")


def test_one_sample_store(make_store) -> None:
    path = make_store("one.zarr", n=1, chunk=4, shard=8)
    ds = ZarrDataset(path, arrays=["patches"], return_metadata=True)
    assert len(ds) == 1 and ds.n_chunks == 1 and ds[0]["meta"]["x0"] == 0


def test_cache_default_is_small_and_grows_for_a_window(store: Path) -> None:
    from torch_bridge import make_loader
    from torch_bridge.dataset import DEFAULT_CACHE_BYTES

    ds = ZarrDataset(store, arrays=["patches"])
    assert ds.chunk_nbytes == 64 * 8 * 6 * 4
    assert ds.cache_bytes == DEFAULT_CACHE_BYTES == 16 * 2**20  # more than 4 chunks of these tiny samples
    ds.reserve_cache(2)
    assert ds.cache_bytes == DEFAULT_CACHE_BYTES  # never shrinks
    ds.reserve_cache(10_000)
    assert ds.cache_bytes == 10_000 * ds.chunk_nbytes
    assert ds.cache.capacity_bytes == ds.cache_bytes  # an open cache grows too

    given = ZarrDataset(store, arrays=["patches"], return_metadata=True, cache_bytes=1000)
    assert given.cache_bytes == 1000  # as given
    make_loader(given, 64, window=8)
    assert given.cache_bytes == 16 * given.chunk_nbytes  # two windows of chunks
