"""What every opener promises: nothing read at open time, graphs that pickle, readers that hold no file handle."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cloudpickle
import dask.array as da
import h5py
import mrcfile
import numpy as np
import pytest
import tifffile
import xarray as xr

from storage.sources import open_hdf5, open_mrc, open_npy, open_tiffs
from storage.sources._lazy import Hdf5Frames, LazyFrames, MrcFrames, NpyFrames, TiffFrames

DATA = np.arange(4 * 9 * 7, dtype=np.float32).reshape(4, 9, 7)


def _mrc(tmp_path: Path) -> xr.DataArray:
    with mrcfile.new(tmp_path / "s.mrc") as mrc:
        mrc.set_data(DATA)
    return open_mrc(tmp_path / "s.mrc", chunks={"y": 4})


def _tiff(tmp_path: Path) -> xr.DataArray:
    tifffile.imwrite(tmp_path / "s.tif", DATA, photometric="minisblack")
    return open_tiffs(tmp_path / "s.tif", chunks={"y": 4})


def _npy(tmp_path: Path) -> xr.DataArray:
    np.save(tmp_path / "s.npy", DATA)
    return open_npy(tmp_path / "s.npy", chunks={"y": 4})


def _hdf5(tmp_path: Path) -> xr.DataArray:
    with h5py.File(tmp_path / "s.h5", "w") as f:
        f["d"] = DATA
    return open_hdf5(tmp_path / "s.h5", "/d", chunks={"y": 4})


def _nexus(tmp_path: Path) -> xr.DataArray:
    with h5py.File(tmp_path / "s.nxs", "w") as f:
        f["entry/detector/data"] = DATA
        f["entry/detector/image_key"] = np.zeros(4, np.int32)
        f["entry/detector/rotation_angle"] = np.arange(4.0)
    result = open_hdf5(tmp_path / "s.nxs", chunks={"detector_y": 4})
    assert isinstance(result, xr.Dataset)
    return result.projections


OPENERS: dict[str, Callable[[Path], xr.DataArray]] = {
    "mrc": _mrc,
    "tiff": _tiff,
    "npy": _npy,
    "hdf5": _hdf5,
    "nexus": _nexus,
}


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every call of a lazy reader's ``__getitem__`` (in this process)."""
    calls: list[Any] = []
    original = LazyFrames.__getitem__

    def counting(self: LazyFrames, key: Any) -> np.ndarray:
        calls.append(key)
        return original(self, key)

    monkeypatch.setattr(LazyFrames, "__getitem__", counting)
    return calls


@pytest.mark.parametrize("fmt", OPENERS)
def test_opening_reads_nothing_until_compute(tmp_path: Path, reads: list[Any], fmt: str) -> None:
    arr = OPENERS[fmt](tmp_path)
    result = (arr.isel({arr.dims[-1]: slice(1, None)}) * 2).mean()
    assert reads == []
    assert float(result.compute(scheduler="synchronous")) == pytest.approx(2 * DATA[..., 1:].mean())
    assert len(reads) == 4 * 3  # 4 images × 3 row blocks, each read once


@pytest.mark.parametrize("fmt", OPENERS)
def test_graph_pickles_and_task_names_say_the_step(tmp_path: Path, fmt: str) -> None:
    arr = OPENERS[fmt](tmp_path)
    readers = [name for name in arr.data.dask.layers if name.startswith("read-")]
    assert readers
    expected = "hdf5" if fmt == "nexus" else fmt
    assert all(name.startswith(f"read-{expected}-") for name in readers)
    assert arr.data.dtype == DATA.dtype
    assert arr.data.chunks[1:] == ((4, 4, 1), (7,))
    clone = cloudpickle.loads(cloudpickle.dumps(arr.data))
    da.utils.assert_eq(clone, DATA)
    assert pickle.loads(pickle.dumps(arr)).identical(arr)


@pytest.mark.parametrize(
    "reader",
    [
        MrcFrames("a.mrc", (1, 5, 6), "<f4", file_shape=(5, 6), lead=1),
        TiffFrames("a.tif", (3, 5, 6), "uint16", start=2),
        NpyFrames("a.npy", (3, 5, 6), ">i2"),
        Hdf5Frames("a.h5", (3, 5, 6), "float64", dataset="/entry/data", start=7),
    ],
    ids=repr,
)
def test_readers_hold_only_plain_values(reader: LazyFrames) -> None:
    plain = (str, int, tuple, np.dtype)
    assert all(isinstance(v, plain) for v in vars(reader).values()), vars(reader)
    clone = pickle.loads(pickle.dumps(reader))
    assert vars(clone) == vars(reader)
    assert clone.dtype.isnative
    assert (clone.ndim, clone.size) == (3, int(np.prod(reader.shape)))


class _Echo(LazyFrames):
    """Returns its own index grid, to check key handling without a file."""

    def _read(self, key: tuple[slice, ...]) -> np.ndarray:
        full = np.arange(np.prod(self.file_shape)).reshape(self.file_shape)
        return full[key]

    file_shape = (10, 4, 5)


@pytest.mark.parametrize(
    "key",
    [
        (slice(0, 3), slice(None), slice(1, 4)),
        (1, slice(None, None, 2)),
        (Ellipsis, 2),
        (-1, Ellipsis),
        (slice(2, 1), 0, 0),
        np.int64(0),
    ],
    ids=str,
)
def test_keys_select_like_numpy_with_a_frame_offset(key: Any) -> None:
    reader = _Echo("x", (3, 4, 5), "int64", start=6)
    expected = np.arange(200).reshape(10, 4, 5)[6:9][key]
    np.testing.assert_array_equal(reader[key], expected)


def test_lead_axis_for_single_images() -> None:
    reader = _Echo("x", (1, 10, 4, 5), "int64", lead=1)
    full = np.arange(200).reshape(1, 10, 4, 5)
    np.testing.assert_array_equal(reader[0, 2:4], full[0, 2:4])
    np.testing.assert_array_equal(reader[:, :, 1], full[:, :, 1])


def test_bad_keys() -> None:
    reader = _Echo("x", (3, 4, 5), "int64")
    with pytest.raises(IndexError, match="out of bounds"):
        reader[3]
    with pytest.raises(IndexError, match="too many indices"):
        reader[0, 0, 0, 0]
    with pytest.raises(IndexError, match="negative steps"):
        reader[::-1]
    with pytest.raises(TypeError, match="ints and slices"):
        reader[[0, 1]]
