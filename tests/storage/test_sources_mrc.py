"""open_mrc: lazy MRC stacks against mrcfile's eager reads; header checks; laziness; pickling; task names."""

from __future__ import annotations

import os
from pathlib import Path

import cloudpickle
import dask
import dask.array as da
import mrcfile
import numpy as np
import pytest

from storage.dims import MICROGRAPH_DIMS
from storage.errors import SourceError, SourceNotFoundError
from storage.sources import file_record, open_mrc
from storage.sources._lazy import LazyFrames
from storage.synthetic import write_micrographs


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Every call of a lazy reader's ``__getitem__`` (in this process)."""
    calls: list[object] = []
    original = LazyFrames.__getitem__

    def counting(self: LazyFrames, key: object) -> np.ndarray:
        calls.append(key)
        return original(self, key)

    monkeypatch.setattr(LazyFrames, "__getitem__", counting)
    return calls


def _write(path: Path, data: np.ndarray, voxel_size: float | None = None) -> Path:
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(data)
        if voxel_size is not None:
            mrc.voxel_size = voxel_size
    return path


def test_micrographs_match_mrcfile_on_odd_chunks(micrograph_dir: Path) -> None:
    stack = open_mrc(micrograph_dir, chunks={"y": 7, "x": 100})
    files = sorted(micrograph_dir.glob("*.mrc"))
    eager = np.stack([mrcfile.read(p) for p in files])
    assert stack.dims == MICROGRAPH_DIMS
    assert stack.data.chunks == ((1, 1, 1), (7,) * 42 + (6,), (100, 100, 60))
    da.utils.assert_eq(stack.data, eager)
    assert stack.source.values.tolist() == [str(p) for p in files]
    assert stack.source_index.values.tolist() == [0, 1, 2]
    assert stack.frame.values.tolist() == [0, 0, 0]
    assert stack.attrs["sources"] == [file_record(p) for p in files]
    assert stack.attrs["pixel_size"] == 1.06
    assert stack.attrs["pixel_size_units"] == "angstrom"
    assert stack.name is None


def test_3d_files_give_one_image_per_section(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    a = _write(tmp_path / "a.mrcs", rng.normal(size=(4, 9, 11)).astype(np.float32))
    b = _write(tmp_path / "b.mrc", rng.normal(size=(9, 11)).astype(np.float32))
    stack = open_mrc([a, b], chunks={"micrograph": 3, "x": 4})
    eager = np.concatenate([mrcfile.read(a), mrcfile.read(b)[None]])
    assert stack.data.chunks == ((3, 2), (9,), (4, 4, 3))
    da.utils.assert_eq(stack.data, eager)
    assert stack.frame.values.tolist() == [0, 1, 2, 3, 0]
    assert stack.source_index.values.tolist() == [0, 0, 0, 0, 1]
    assert "pixel_size" not in stack.attrs  # unset (0) in these headers


def test_tuple_chunks_and_isel(tmp_path: Path) -> None:
    data = np.arange(5 * 6 * 7, dtype=np.int16).reshape(5, 6, 7)
    path = _write(tmp_path / "s.mrc", data)
    stack = open_mrc(path, chunks=(2, 5, -1))
    assert stack.data.chunks == ((2, 2, 1), (5, 1), (7,))
    np.testing.assert_array_equal(stack.isel(micrograph=3, y=slice(1, 4)).values, data[3, 1:4])
    np.testing.assert_array_equal(stack.data[::2, ::3, 5].compute(), data[::2, ::3, 5])


def test_volume_kind(tmp_path: Path) -> None:
    data = np.random.default_rng(1).normal(size=(5, 6, 7)).astype(np.float32)
    paths = [_write(tmp_path / f"v{i}.map", data + i, voxel_size=2.5) for i in range(2)]
    vol = open_mrc(paths, kind="volume", chunks={"z": 2})
    assert vol.dims == ("volume", "z", "y", "x")
    assert vol.data.chunks == ((1, 1), (2, 2, 1), (6,), (7,))
    da.utils.assert_eq(vol.data, np.stack([data, data + 1]))
    assert vol.attrs["pixel_size"] == 2.5
    assert vol.frame.values.tolist() == [0, 0]


def test_differing_pixel_sizes_become_a_coord(tmp_path: Path) -> None:
    data = np.zeros((4, 4), np.float32)
    paths = [_write(tmp_path / "a.mrc", data, 1.5), _write(tmp_path / "b.mrc", data, 2.0)]
    stack = open_mrc(paths)
    assert "pixel_size" not in stack.attrs
    assert stack.pixel_size.values.tolist() == [1.5, 2.0]
    assert stack.pixel_size.attrs["units"] == "angstrom"


def test_opening_reads_no_pixels(micrograph_dir: Path, reads: list[object]) -> None:
    stack = open_mrc(micrograph_dir, chunks={"y": 50})
    summed = (stack * 2).sum()
    assert reads == []
    summed.compute(scheduler="synchronous")
    assert len(reads) == 3 * 6


def test_task_names_are_deterministic_and_follow_the_file(tmp_path: Path) -> None:
    (path,) = write_micrographs(tmp_path, 1, (32, 30), seed=1)
    first, again = open_mrc(path), open_mrc(path)
    assert first.data.name == again.data.name
    layers = [name for name in first.data.dask.layers if name.startswith("read-mrc-")]
    assert layers, list(first.data.dask.layers)
    assert all(key[0].startswith("read-mrc-") for key in first.data.__dask_keys__()[0][0])
    assert open_mrc(path, chunks={"y": 8}).data.name != first.data.name
    write_micrographs(tmp_path, 1, (32, 30), seed=2)
    os.utime(path, (1, 1))
    assert open_mrc(path).data.name != first.data.name


def test_graph_pickles_and_runs_in_other_processes(micrograph_dir: Path) -> None:
    stack = open_mrc(micrograph_dir, chunks={"x": 64})
    eager = np.stack([mrcfile.read(p) for p in sorted(micrograph_dir.glob("*.mrc"))])
    clone = cloudpickle.loads(cloudpickle.dumps(stack))
    da.utils.assert_eq(clone.data, eager)
    (mean,) = dask.compute(stack.mean(("y", "x")).data, scheduler="processes", num_workers=2)
    np.testing.assert_allclose(mean, eager.mean(axis=(1, 2)), rtol=1e-6)


def test_not_an_mrc_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.mrc"
    bad.write_bytes(b"this is not an MRC header" * 50)
    with pytest.raises(SourceError, match=r"bad\.mrc: not an MRC file \(") as info:
        open_mrc(bad)
    assert isinstance(info.value, ValueError)


def test_truncated_file(micrograph_dir: Path) -> None:
    path = sorted(micrograph_dir.glob("*.mrc"))[1]
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size - 1000)
    expected = 300 * 260 * 4
    with pytest.raises(SourceError, match=rf"micrograph_0001\.mrc: truncated: expected {expected} bytes"):
        open_mrc(micrograph_dir)


def test_mixed_shapes_name_the_first_odd_file(tmp_path: Path) -> None:
    good = write_micrographs(tmp_path / "a", 2, (40, 30))
    odd = write_micrographs(tmp_path / "b", 2, (30, 40), prefix="odd")
    with pytest.raises(SourceError) as info:
        open_mrc([*good, *odd])
    message = str(info.value)
    assert message.startswith(f"{odd[0]}: ")
    assert "(30, 40)" in message
    assert "(40, 30)" in message


def test_mixed_dtypes_name_the_odd_file(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.mrc", np.zeros((8, 8), np.float32))
    b = _write(tmp_path / "b.mrc", np.zeros((8, 8), np.int16))
    with pytest.raises(SourceError, match=r"b\.mrc: .*dtype int16 .*expected .*float32"):
        open_mrc([a, b])


def test_missing_inputs(tmp_path: Path) -> None:
    with pytest.raises(SourceNotFoundError, match=r"nope\.mrc: no such file"):
        open_mrc(tmp_path / "nope.mrc")
    with pytest.raises(SourceNotFoundError, match="no files match"):
        open_mrc(str(tmp_path / "*.mrc"))


def test_bad_parameters(micrograph_dir: Path) -> None:
    with pytest.raises(SourceError, match="kind"):
        open_mrc(micrograph_dir, kind="stack")  # type: ignore[arg-type]
    with pytest.raises(SourceError, match="unknown dimension 'image'"):
        open_mrc(micrograph_dir, chunks={"image": 2})
    with pytest.raises(SourceError, match="2 entries given for the 3 dimensions"):
        open_mrc(micrograph_dir, chunks=(1, 2))


@pytest.mark.real_data
def test_real_micrograph(real_data: Path) -> None:
    path = real_data / "cryoem-ucsf-micrograph" / "Ucsf_stack_1142_DW.mrc"
    stack = open_mrc(str(real_data / "cryoem-ucsf-micrograph" / "*.mrc"), chunks={"y": 97})
    assert stack.shape == (1, 927, 959)
    da.utils.assert_eq(stack.data, mrcfile.read(path)[None])
    assert stack.attrs["pixel_size"] == 1.0


@pytest.mark.real_data
def test_real_float16_projection_stack(real_data: Path) -> None:
    path = real_data / "savu-mrc" / "projections.mrc"
    stack = open_mrc(path, chunks={"micrograph": 10, "y": 7})
    eager = mrcfile.read(path)
    assert stack.dtype == np.float16
    assert stack.shape == (91, 135, 160)
    np.testing.assert_array_equal(stack.values, eager)  # NaNs compare equal here
    assert stack.frame.values.tolist() == list(range(91))


@pytest.mark.real_data
def test_real_map_as_volume(real_data: Path) -> None:
    path = real_data / "mrc-emdb" / "EMD-3197.map"
    vol = open_mrc(path, kind="volume", chunks={"z": 3, "x": 7})
    assert vol.shape == (1, 20, 20, 20)
    da.utils.assert_eq(vol.data, mrcfile.read(path)[None])
    assert vol.attrs["pixel_size"] == 11.4
    images = open_mrc(path)
    assert images.shape == (20, 20, 20)
