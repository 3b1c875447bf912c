"""open_npy: 2-D and 3-D ``.npy`` files against np.load, and broken files."""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import numpy as np
import pytest

from storage.errors import SourceError
from storage.sources import open_npy


def test_images_and_stacks_match_np_load(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    stack3 = rng.normal(size=(3, 11, 7)).astype(np.float32)
    image = rng.normal(size=(11, 7)).astype(np.float32)
    np.save(tmp_path / "a.npy", stack3)
    np.save(tmp_path / "b.npy", image)
    np.save(tmp_path / "c.npy", np.asfortranarray(stack3[:2]))
    arr = open_npy(tmp_path, chunks={"image": 2, "y": 4})
    eager = np.concatenate([stack3, image[None], stack3[:2]])
    assert arr.dims == ("image", "y", "x")
    assert arr.data.chunks == ((2, 2, 2), (4, 4, 3), (7,))
    da.utils.assert_eq(arr.data, eager)
    assert arr.frame.values.tolist() == [0, 1, 2, 0, 0, 1]
    assert arr.source_index.values.tolist() == [0, 0, 0, 1, 2, 2]


def test_big_endian_file_gives_native_dtype(tmp_path: Path) -> None:
    data = np.arange(20, dtype=">i4").reshape(4, 5)
    np.save(tmp_path / "be.npy", data)
    arr = open_npy(tmp_path / "be.npy")
    assert arr.dtype == np.dtype("int32")
    assert arr.dtype.isnative
    np.testing.assert_array_equal(arr.values[0], data)


def test_truncated_npy(tmp_path: Path) -> None:
    path = tmp_path / "cut.npy"
    np.save(path, np.zeros((10, 10), np.float64))
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - 8)
    with pytest.raises(SourceError, match=r"cut\.npy: truncated: expected 800 bytes of array data, found 792"):
        open_npy(path)


def test_not_npy(tmp_path: Path) -> None:
    path = tmp_path / "text.npy"
    path.write_text("hello")
    with pytest.raises(SourceError, match=r"text\.npy: not a \.npy file"):
        open_npy(path)


def test_wrong_ndim_and_objects(tmp_path: Path) -> None:
    np.save(tmp_path / "line.npy", np.zeros(5))
    with pytest.raises(SourceError, match=r"line\.npy: array of shape \(5,\)"):
        open_npy(tmp_path / "line.npy")
    np.save(tmp_path / "obj.npy", np.array([[None]], dtype=object), allow_pickle=True)
    with pytest.raises(SourceError, match=r"obj\.npy: holds Python objects"):
        open_npy(tmp_path / "obj.npy")


@pytest.mark.real_data
def test_real_sinograms(real_data: Path) -> None:
    folder = real_data / "sino-larix"
    sino = open_npy(folder / "sino_stripe_i12.npy", chunks={"y": 99, "x": 41})
    assert sino.shape == (1, 800, 400)
    da.utils.assert_eq(sino.data, np.load(folder / "sino_stripe_i12.npy")[None])
    crop = open_npy(folder / "sino_stripes_crop3D.npy", chunks={"image": 7, "y": 3})
    da.utils.assert_eq(crop.data, np.load(folder / "sino_stripes_crop3D.npy"))
    with pytest.raises(SourceError, match=r"sino_stripes_crop3D\.npy: images of shape \(10, 65\)"):
        open_npy(folder)
