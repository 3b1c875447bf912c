from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import zarr

from storage.codecs import CODECS, compressors
from storage.shards import ShardWriter, shard_layout


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("dtype", ["float32", "uint16", "int32", "uint8", "float16", ">f4"])
@pytest.mark.parametrize("sharded", [True, False])
@pytest.mark.parametrize("n", [1, 37, 64])
def test_shards_are_byte_identical_to_zarr_python(tmp_path: Path, codec: str, dtype: str, sharded: bool, n: int):
    data = (np.random.default_rng(n).standard_normal((n, 5, 3)) * 100).astype(dtype)
    kwargs = {
        "shape": data.shape,
        "chunks": (4, 5, 3),
        "dtype": dtype,
        "compressors": compressors(codec),
        "config": {"write_empty_chunks": True},
        "fill_value": 0,
        **({"shards": (16, 5, 3)} if sharded else {}),
    }
    zarr.create_array(tmp_path / "zarr", **kwargs)[:] = data
    zarr.create_array(tmp_path / "ours", **kwargs)
    writer = ShardWriter(tmp_path / "ours")
    assert writer.direct
    s = writer.shard_samples
    for k in range(-(-n // s)):
        writer.write_shard(k, data[k * s : (k + 1) * s])
    assert _files(tmp_path / "ours") == _files(tmp_path / "zarr")
    np.testing.assert_array_equal(zarr.open_array(tmp_path / "ours")[:], data)


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("rows", [1, 3, 4])
def test_row_band_shards_are_byte_identical_to_zarr_python(tmp_path: Path, codec: str, rows: int):
    """Shards of arrays cut into row bands: the index runs over (item chunk, band) in C order, edges padded."""
    data = (np.random.default_rng(rows).standard_normal((5, 10, 3)) * 100).astype("float32")
    kwargs = {
        "shape": data.shape,
        "chunks": (1, rows, 3),
        "shards": (2, -(-10 // rows) * rows, 3),
        "dtype": data.dtype,
        "compressors": compressors(codec),
        "config": {"write_empty_chunks": True},
        "fill_value": 0,
    }
    zarr.create_array(tmp_path / "zarr", **kwargs)[:] = data
    zarr.create_array(tmp_path / "ours", **kwargs)
    writer = ShardWriter(tmp_path / "ours")
    assert writer.direct and writer.shard_samples == 2
    for k in range(3):
        writer.write_shard(k, data[2 * k : 2 * k + 2])
    assert _files(tmp_path / "ours") == _files(tmp_path / "zarr")


def test_other_layouts_fall_back_to_zarr(tmp_path: Path):
    arr = zarr.create_array(tmp_path / "a", shape=(8, 6), chunks=(4, 3), dtype="int32")
    assert shard_layout(tmp_path / "a") is None
    writer = ShardWriter(tmp_path / "a")
    assert not writer.direct and writer.shard_samples == 4
    writer.write_shard(1, np.arange(24, dtype="int32").reshape(4, 6))
    np.testing.assert_array_equal(arr[4:], np.arange(24).reshape(4, 6))


def test_a_shard_must_be_written_whole(tmp_path: Path):
    zarr.create_array(tmp_path / "a", shape=(10,), chunks=(2,), shards=(4,), dtype="int8")
    writer = ShardWriter(tmp_path / "a")
    with pytest.raises(ValueError, match="shard 0 holds samples 0-4"):
        writer.write_shard(0, np.zeros(3, "int8"))
    with pytest.raises(ValueError, match="shard 2"):
        writer.write_shard(2, np.zeros(4, "int8"))  # the last shard has 2 samples
    writer.write_shard(2, np.ones(2, "int8"))


def test_writer_pickles_as_its_path(tmp_path: Path):
    zarr.create_array(tmp_path / "a", shape=(4,), chunks=(2,), shards=(4,), dtype="int8")
    clone = pickle.loads(pickle.dumps(ShardWriter(tmp_path / "a")))
    assert clone.path == tmp_path / "a" and clone.direct
