"""open_tiffs: single- and multi-page TIFs against tifffile's eager reads, and broken TIFs."""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import tifffile

from storage.errors import SourceError
from storage.sources import file_record, open_tiffs


def _write(path: Path, data: np.ndarray) -> Path:
    tifffile.imwrite(path, data, photometric="minisblack")
    return path


@pytest.fixture
def mixed(tmp_path: Path) -> tuple[list[Path], np.ndarray]:
    """A 4-page file, a single-page file and a 2-page ImageJ file of one 13×9 uint16 image size."""
    rng = np.random.default_rng(3)
    data = rng.integers(0, 60000, (7, 13, 9), dtype=np.uint16)
    a = _write(tmp_path / "a.tif", data[:4])
    b = _write(tmp_path / "b.tiff", data[4])
    c = tmp_path / "c.tif"
    tifffile.imwrite(c, data[5:], imagej=True)
    (tmp_path / "readme.txt").write_text("not a tif")
    return [a, b, c], data


def test_pages_and_files_match_tifffile_on_odd_chunks(mixed: tuple[list[Path], np.ndarray]) -> None:
    paths, data = mixed
    stack = open_tiffs(paths[0].parent, chunks={"image": 3, "y": 5, "x": 4})
    assert stack.dims == ("image", "y", "x")
    assert stack.data.chunks == ((3, 3, 1), (5, 5, 3), (4, 4, 1))
    da.utils.assert_eq(stack.data, data)
    assert stack.source.values.tolist() == [
        str(p) for p in paths for _ in range({0: 4, 1: 1, 2: 2}[paths.index(p)])
    ]
    assert stack.source_index.values.tolist() == [0, 0, 0, 0, 1, 2, 2]
    assert stack.frame.values.tolist() == [0, 1, 2, 3, 0, 0, 1]
    assert stack.attrs["sources"] == [file_record(p) for p in paths]


def test_default_chunks_are_whole_images(mixed: tuple[list[Path], np.ndarray]) -> None:
    paths, data = mixed
    stack = open_tiffs(paths)
    assert stack.data.chunks == ((1,) * 7, (13,), (9,))
    np.testing.assert_array_equal(stack.isel(image=[6, 0]).values, data[[6, 0]])


def test_not_a_tif(tmp_path: Path) -> None:
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(SourceError, match=r"bad\.tif: not a readable TIF file"):
        open_tiffs(bad)


@pytest.mark.parametrize(("pages", "cut"), [(1, 100), (3, 100), (3, 9000)])
def test_truncated_tif(tmp_path: Path, pages: int, cut: int) -> None:
    path = _write(tmp_path / "cut.tif", np.ones((pages, 64, 64), np.uint16).squeeze())
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - cut)
    with pytest.raises(SourceError, match=r"cut\.tif: truncated"):
        open_tiffs(path)


def test_mixed_shapes_name_the_first_odd_file(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.tif", np.zeros((5, 6), np.uint8))
    b = _write(tmp_path / "b.tif", np.zeros((2, 6, 5), np.uint8))
    c = _write(tmp_path / "c.tif", np.zeros((6, 6), np.uint8))
    with pytest.raises(SourceError, match=rf"^{b}: images of shape \(6, 5\) .*expected shape \(5, 6\)"):
        open_tiffs([a, b, c])


def test_colour_tifs_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "rgb.tif"
    tifffile.imwrite(path, np.zeros((8, 8, 3), np.uint8), photometric="rgb")
    with pytest.raises(SourceError, match=r"rgb\.tif: has colour samples"):
        open_tiffs(path)


@pytest.mark.real_data
def test_real_folder_of_projections(real_data: Path) -> None:
    folder = real_data / "tif-i13-projections" / "tiffs"
    stack = open_tiffs(folder, chunks={"image": 16, "y": 37})
    files = sorted(folder.glob("*.tiff"))
    assert stack.shape == (91, 135, 160)
    assert stack.dtype == np.uint16
    da.utils.assert_eq(stack.data, np.stack([tifffile.imread(p) for p in files]))
    assert [r["path"] for r in stack.attrs["sources"]] == [str(p) for p in files]


@pytest.mark.real_data
def test_real_dark_of_another_dtype_is_named(real_data: Path) -> None:
    folder = real_data / "tif-i13-projections"
    with pytest.raises(SourceError, match=r"dark_00001\.tiff: .*dtype float32 .*expected .*uint16"):
        open_tiffs([folder / "tiffs" / "raw_00000.tiff", folder / "dark_00001.tiff"])


@pytest.mark.real_data
def test_real_multipage_imagej_stacks(real_data: Path) -> None:
    path = real_data / "tif-cryoet-microtubules" / "13pf_MT.tif"
    stack = open_tiffs(path, chunks={"image": 5, "x": 7})
    assert stack.shape == (36, 206, 94)
    da.utils.assert_eq(stack.data, tifffile.imread(path))
    with pytest.raises(SourceError, match=r"14pf_MT\.tif: images of shape \(136, 84\)"):
        open_tiffs(real_data / "tif-cryoet-microtubules")


@pytest.mark.real_data
def test_real_image_and_mask(real_data: Path) -> None:
    folder = real_data / "tif-nuclei-dsb2018"
    stack = open_tiffs(str(folder / "*2d.tif"), chunks={"y": 100})
    eager = np.stack([tifffile.imread(folder / "img2d.tif"), tifffile.imread(folder / "mask2d.tif")])
    da.utils.assert_eq(stack.data, eager)
