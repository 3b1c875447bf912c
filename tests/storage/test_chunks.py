"""ChunkReader: the direct path equals zarr-python on every chunk, over codecs, dtypes, shards and edges."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from zarr.codecs import BytesCodec, GzipCodec, TransposeCodec

from storage.chunks import ChunkReader
from storage.codecs import CODECS, compressors
from storage.errors import StoreError
from storage.layout import SampleGrid
from storage.store import ArraySpec, TrainingStore

# 23 samples, chunks of 4, shards of 12: a partial last chunk (3 samples) in a partial last shard (11 samples)
N, CHUNK, SHARD = 23, 4, 12
DTYPES = ["float32", "uint16", "int32", "uint8", "float16"]
TAILS = {"1d": (), "3d": (3, 5)}


def _values(shape: tuple[int, ...], dtype: str, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    kind = np.dtype(dtype).kind
    if kind == "f":
        return rng.normal(0, 50, size=shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)


def _make(path: Path, values: np.ndarray, *, sharded: bool, codec: str = "blosc-lz4", **kwargs: Any) -> Path:
    tail = values.shape[1:]
    array = zarr.create_array(
        path,
        shape=values.shape,
        chunks=(CHUNK, *tail),
        shards=(SHARD, *tail) if sharded else None,
        dtype=values.dtype,
        compressors=compressors(codec),
        **kwargs,
    )
    array[:] = values
    return path


def _assert_all_chunks_equal(path: Path, values: np.ndarray, *, direct: bool = True) -> None:
    reader = ChunkReader(path)
    assert reader.direct is direct
    reference = zarr.open_array(path, mode="r")
    assert reader.n_chunks == -(-values.shape[0] // reader.chunk_samples)
    assert reader.shape == values.shape
    assert reader.dtype == values.dtype
    for k in range(reader.n_chunks):
        start, stop = reader.chunk_bounds(k)
        if reader.rows_per_chunk:  # row bands: put the chunk's bands back together
            bands = [reader.read_chunk(k, row=j) for j in range(reader.n_row_chunks)]
            assert all(band.shape[1] == reader.rows_per_chunk for band in bands[:-1])
            chunk = np.concatenate(bands, axis=1)
        else:
            chunk = reader.read_chunk(k)
        assert chunk.dtype == values.dtype
        assert chunk.shape == (stop - start, *values.shape[1:])
        np.testing.assert_array_equal(chunk, reference[start:stop])  # zarr-python's read
        np.testing.assert_array_equal(chunk, values[start:stop])  # what was written
    assert reader.chunk_bounds(reader.n_chunks - 1)[1] == values.shape[0]


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("rows", [1, 2, 4, 7])
def test_row_bands_read_directly(tmp_path: Path, codec: str, rows: int) -> None:
    """Arrays cut into row bands (a virtual picking store's micrographs) are read band by band."""
    values = _values((5, 7, 6), "float32")
    path = tmp_path / "bands"
    zarr.create_array(
        path,
        shape=values.shape,
        chunks=(1, rows, 6),
        shards=(2, -(-7 // rows) * rows, 6),
        dtype=values.dtype,
        compressors=compressors(codec),
    )[:] = values
    _assert_all_chunks_equal(path, values)
    reader = ChunkReader(path)
    assert reader.rows_per_chunk == (rows if rows < 7 else 0)
    with pytest.raises(IndexError, match="row band"):
        reader.read_chunk(0, row=reader.n_row_chunks)


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("sharded", [True, False], ids=["sharded", "unsharded"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tail", TAILS.values(), ids=TAILS.keys())
def test_direct_read_equals_zarr(
    tmp_path: Path, codec: str, sharded: bool, dtype: str, tail: tuple[int, ...]
) -> None:
    values = _values((N, *tail), dtype)
    path = _make(tmp_path / "a", values, sharded=sharded, codec=codec)
    _assert_all_chunks_equal(path, values)


@pytest.mark.parametrize("sharded", [True, False], ids=["sharded", "unsharded"])
def test_slow_path_equals_direct(tmp_path: Path, sharded: bool) -> None:
    values = _values((N, 3, 5), "float32")
    path = _make(tmp_path / "a", values, sharded=sharded)
    fast, slow = ChunkReader(path), ChunkReader(path, fast=False)
    assert fast.direct and not slow.direct
    assert fast.n_chunks == slow.n_chunks == 6
    for k in range(fast.n_chunks):
        np.testing.assert_array_equal(fast.read_chunk(k), slow.read_chunk(k))


def test_one_chunk_per_shard_and_one_sample_chunks(tmp_path: Path) -> None:
    values = _values((7, 2, 2), "int32")
    path = tmp_path / "a"
    zarr.create_array(path, shape=values.shape, chunks=(1, 2, 2), shards=(1, 2, 2), dtype="int32")[:] = values
    _assert_all_chunks_equal(path, values)


def test_array_smaller_than_one_chunk(tmp_path: Path) -> None:
    values = _values((3, 4), "uint16")
    path = tmp_path / "a"
    zarr.create_array(path, shape=values.shape, chunks=(8, 4), shards=(16, 4), dtype="uint16")[:] = values
    _assert_all_chunks_equal(path, values)


def test_big_endian_bytes(tmp_path: Path) -> None:
    values = _values((N, 3), "int32")
    for sharded in (True, False):
        path = _make(tmp_path / f"a{sharded}", values, sharded=sharded, serializer=BytesCodec(endian="big"))
        _assert_all_chunks_equal(path, values)


def test_store_written_arrays_read_directly(tmp_path: Path) -> None:
    values = _values((10, 4, 4), "float32")
    spec = ArraySpec("patches", ("sample", "patch_y", "patch_x"), values.shape, values.dtype)
    with TrainingStore.open_for_writing(tmp_path / "s.zarr", [spec], grid=SampleGrid(2, 4), record={}) as store:
        for block in store.blocks():
            store.write_block(block, {"patches": values[block.start : block.stop]})
        store.finalize()
    _assert_all_chunks_equal(tmp_path / "s.zarr" / "patches", values)


# ---------------------------------------------------------------- fallbacks


@pytest.mark.parametrize(
    "layout",
    [
        {"chunks": (4, 2, 5)},  # chunked along axis 1 too
        {"chunks": (4, 3, 2), "shards": (8, 3, 4)},  # inner chunks and shards split axis 2
    ],
    ids=["axis1", "sharded-axis2"],
)
def test_other_layouts_fall_back_to_zarr(tmp_path: Path, layout: dict[str, Any]) -> None:
    values = _values((N, 3, 5), "float32")
    path = tmp_path / "a"
    zarr.create_array(path, shape=values.shape, dtype=values.dtype, **layout)[:] = values
    _assert_all_chunks_equal(path, values, direct=False)


def test_transpose_codec_falls_back(tmp_path: Path) -> None:
    values = _values((N, 3, 5), "uint16")
    path = tmp_path / "a"
    zarr.create_array(
        path, shape=values.shape, chunks=(4, 3, 5), dtype=values.dtype, filters=[TransposeCodec(order=(0, 2, 1))]
    )[:] = values
    _assert_all_chunks_equal(path, values, direct=False)


def test_zarr_v2_arrays_are_refused(tmp_path: Path) -> None:
    values = _values((N, 3), "int32")
    path = tmp_path / "a"
    zarr.create_array(path, shape=values.shape, chunks=(4, 3), dtype=values.dtype, zarr_format=2)[:] = values
    with pytest.raises(StoreError, match="no such array"):
        ChunkReader(path)  # a v2 array has .zarray, not zarr.json: not a store array


def test_unknown_compressor_falls_back(tmp_path: Path) -> None:
    values = _values((N, 3), "int32")
    path = tmp_path / "a"
    zarr.create_array(
        path, shape=values.shape, chunks=(4, 3), shards=(8, 3), dtype="int32", compressors=GzipCodec()
    )[:] = values
    _assert_all_chunks_equal(path, values, direct=False)


# ---------------------------------------------------------------- fill values


@pytest.mark.parametrize("sharded", [True, False], ids=["sharded", "unsharded"])
@pytest.mark.parametrize("fill", [0, 7, np.nan])
def test_unwritten_chunks_read_as_the_fill_value(tmp_path: Path, sharded: bool, fill: float) -> None:
    path = tmp_path / "a"
    array = zarr.create_array(
        path,
        shape=(N, 3),
        chunks=(CHUNK, 3),
        shards=(SHARD, 3) if sharded else None,
        dtype="float32",
        fill_value=fill,
        compressors=compressors(),
        config={"write_empty_chunks": False},
    )
    array[:2] = 1.0  # half of chunk 0; every other chunk (and shard 1 entirely) is never written
    assert not (path / "c" / "1").exists() and not (path / "c" / "5").exists()
    expected = np.full((N, 3), fill, dtype="float32")
    expected[:2] = 1.0
    _assert_all_chunks_equal(path, expected)


def test_chunk_missing_inside_a_shard(tmp_path: Path) -> None:
    path = tmp_path / "a"
    array = zarr.create_array(
        path, shape=(N,), chunks=(CHUNK,), shards=(SHARD,), dtype="uint16", fill_value=9,
        config={"write_empty_chunks": False},
    )  # fmt: skip
    values = np.arange(N, dtype="uint16") + 100
    values[4:8] = 9  # chunk 1 is all fill: left out of shard 0, whose index marks it missing
    array[:] = values
    assert (path / "c" / "0").exists()
    _assert_all_chunks_equal(path, values)


# ---------------------------------------------------------------- errors and pickling


def test_bad_paths(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no such array"):
        ChunkReader(tmp_path / "missing")
    zarr.create_group(tmp_path / "g")
    with pytest.raises(StoreError, match="not a zarr array"):
        ChunkReader(tmp_path / "g")


def test_chunk_index_out_of_range(tmp_path: Path) -> None:
    path = _make(tmp_path / "a", _values((N,), "uint8"), sharded=True)
    reader = ChunkReader(path)
    for k in (-1, reader.n_chunks):
        with pytest.raises(IndexError, match="out of range"):
            reader.read_chunk(k)


@pytest.mark.parametrize("fast", [True, False])
def test_pickles(tmp_path: Path, fast: bool) -> None:
    values = _values((N, 3, 5), "float32")
    path = _make(tmp_path / "a", values, sharded=True)
    reader = ChunkReader(path, fast=fast)
    reader.read_chunk(0)  # caches a shard index / zarr handle, which must not travel
    clone = pickle.loads(pickle.dumps(reader))
    assert clone.direct is fast
    assert clone.path == path
    for k in range(clone.n_chunks):
        np.testing.assert_array_equal(clone.read_chunk(k), reader.read_chunk(k))


def test_reads_return_new_arrays(tmp_path: Path) -> None:
    values = _values((N, 3), "int32")
    reader = ChunkReader(_make(tmp_path / "a", values, sharded=True))
    first = reader.read_chunk(5)
    first[:] = 0
    np.testing.assert_array_equal(reader.read_chunk(5), values[20:])


@pytest.mark.parametrize("fast", [True, False], ids=["direct", "zarr"])
@pytest.mark.parametrize("codec", ["blosc-lz4", "none"])
def test_read_into_a_given_buffer(tmp_path: Path, fast: bool, codec: str) -> None:
    values = _values((N, 3), "float32")
    reader = ChunkReader(_make(tmp_path / "a", values, sharded=True, codec=codec), fast=fast)
    buffer = np.full(reader.chunk_shape, -1.0, dtype="float32")
    assert reader.chunk_shape == (CHUNK, 3)
    for k in range(reader.n_chunks):  # the same buffer for every chunk, the short last one included
        chunk = reader.read_chunk(k, out=buffer)
        start, stop = reader.chunk_bounds(k)
        assert np.shares_memory(chunk, buffer)
        np.testing.assert_array_equal(chunk, values[start:stop])


@pytest.mark.parametrize(
    "buffer",
    [np.empty((CHUNK, 3), "float64"), np.empty((CHUNK + 1, 3), "float32"), np.empty((3, CHUNK), "float32").T],
    ids=["dtype", "shape", "not-contiguous"],
)
def test_read_into_a_wrong_buffer_is_refused(tmp_path: Path, buffer: np.ndarray) -> None:
    reader = ChunkReader(_make(tmp_path / "a", _values((N, 3), "float32"), sharded=True))
    with pytest.raises(ValueError, match="out must be"):
        reader.read_chunk(0, out=buffer)
