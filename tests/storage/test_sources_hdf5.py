"""open_hdf5: datasets over files, NeXus tomography scans split by image_key, and broken HDF5/NeXus files."""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import h5py
import numpy as np
import pytest

from storage.dims import PROJECTION_DIMS
from storage.errors import SourceError, SourceNotFoundError
from storage.sources import file_record, open_hdf5
from storage.sources.nexus import contiguous_runs

#: 2 darks, 3 flats, 6 projections, 2 flats, 1 invalid frame (key 3), 1 dark.
KEYS = np.array([2, 2, 1, 1, 1, 0, 0, 0, 0, 0, 0, 1, 1, 3, 2], dtype=np.float64)


def _frames(n: int = len(KEYS)) -> np.ndarray:
    return np.random.default_rng(9).integers(0, 4000, (n, 10, 12), dtype=np.uint16)


def write_nxtomo(path: Path, *, external: bool = False, units: str = "degree") -> np.ndarray:
    """A small NXtomo file (float image keys, like I13's); with ``external`` the frames live in a side file."""
    frames = _frames()
    angles = np.linspace(0.0, 180.0, len(KEYS))
    with h5py.File(path, "w") as f:
        entry = f.create_group("entry1/tomo_entry")
        f["entry1"].attrs["NX_class"] = "NXentry"
        entry.attrs["NX_class"] = "NXsubentry"
        entry["definition"] = np.array([b"NXtomo"])
        detector = entry.create_group("instrument/detector")
        detector.attrs["NX_class"] = "NXdetector"
        if external:
            side = path.parent / "raw" / "frames.h5"
            side.parent.mkdir(exist_ok=True)
            with h5py.File(side, "w") as g:
                g.create_dataset("entry/detector/data", data=frames, chunks=(1, 10, 12))
            detector["data"] = h5py.ExternalLink("raw/frames.h5", "/entry/detector/data")
        else:
            detector.create_dataset("data", data=frames, chunks=(1, 10, 12))
        detector["image_key"] = KEYS
        values = np.radians(angles) if units == "rad" else angles
        entry.create_dataset("sample/rotation_angle", data=values).attrs["units"] = units
    return frames


def test_dataset_over_files_matches_h5py(tmp_path: Path) -> None:
    frames = _frames(7)
    for name, part in (("a.h5", frames[:4]), ("b.h5", frames[4:])):
        with h5py.File(tmp_path / name, "w") as f:
            f.create_dataset("entry/data/data", data=part, compression="gzip", chunks=(2, 5, 5))
    arr = open_hdf5(tmp_path, "/entry/data/data", chunks={"image": 3, "x": 5})
    assert arr.dims == ("image", "y", "x")
    assert arr.data.chunks == ((3, 3, 1), (10,), (5, 5, 2))
    da.utils.assert_eq(arr.data, frames)
    assert arr.frame.values.tolist() == [0, 1, 2, 3, 0, 1, 2]
    assert arr.source_index.values.tolist() == [0, 0, 0, 0, 1, 1, 1]
    assert arr.attrs["dataset"] == "/entry/data/data"
    assert arr.attrs["sources"] == [file_record(tmp_path / n) for n in ("a.h5", "b.h5")]
    assert sum(name.startswith("read-hdf5-") for name in arr.data.dask.layers) == 2


def test_2d_datasets(tmp_path: Path) -> None:
    images = _frames(2)
    for i in range(2):
        with h5py.File(tmp_path / f"{i}.h5", "w") as f:
            f["image"] = images[i]
    one = open_hdf5(tmp_path / "0.h5", "image", chunks={"y": 3})
    assert one.dims == ("y", "x")
    assert one.data.chunks == ((3, 3, 3, 1), (12,))
    da.utils.assert_eq(one.data, images[0])
    both = open_hdf5(str(tmp_path / "*.h5"), "/image")
    assert both.dims == ("image", "y", "x")
    da.utils.assert_eq(both.data, images)


def test_dataset_behind_external_link(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    frames = write_nxtomo(tmp_path / "scan.nxs", external=True)
    monkeypatch.chdir(tmp_path / "raw")  # the link is relative to the NeXus file, not to the cwd
    arr = open_hdf5(tmp_path / "scan.nxs", "/entry1/tomo_entry/instrument/detector/data")
    da.utils.assert_eq(arr.data, frames)
    assert [r["path"] for r in arr.attrs["sources"]] == [
        str(tmp_path / "scan.nxs"),
        str(tmp_path / "raw" / "frames.h5"),
    ]


def test_wrong_dataset_path_names_it_and_lists_some(tmp_path: Path) -> None:
    write_nxtomo(tmp_path / "scan.nxs")
    with pytest.raises(SourceNotFoundError) as info:
        open_hdf5(tmp_path / "scan.nxs", "/entry/data/data")
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'scan.nxs'}: no dataset '/entry/data/data' (datasets: ")
    assert "/entry1/tomo_entry/instrument/detector/data" in message


def test_bad_datasets(tmp_path: Path) -> None:
    path = tmp_path / "odd.h5"
    with h5py.File(path, "w") as f:
        f["line"] = np.zeros(4)
        f["text"] = np.array([[b"a", b"b"]])
        f.create_group("group")
    with pytest.raises(SourceError, match=r"odd\.h5: dataset '/line' has shape \(4,\)"):
        open_hdf5(path, "/line")
    with pytest.raises(SourceError, match=r"odd\.h5: dataset '/text' has dtype \|S1"):
        open_hdf5(path, "/text")
    with pytest.raises(SourceError, match=r"odd\.h5: '/group' is a group"):
        open_hdf5(path, "/group")


def test_mixed_shapes_name_the_odd_file(tmp_path: Path) -> None:
    for name, shape in (("a.h5", (2, 4, 4)), ("b.h5", (2, 4, 5))):
        with h5py.File(tmp_path / name, "w") as f:
            f["d"] = np.zeros(shape)
    with pytest.raises(SourceError, match=r"b\.h5: images of shape \(4, 5\)"):
        open_hdf5(tmp_path, "d")


def test_not_hdf5(tmp_path: Path) -> None:
    path = tmp_path / "fake.h5"
    path.write_bytes(b"\x89HDF not really")
    with pytest.raises(SourceError, match=r"fake\.h5: not a readable HDF5 file"):
        open_hdf5(path, "/d")


@pytest.mark.parametrize("units", ["degree", "rad"])
def test_nxtomo_split_by_float_image_key(tmp_path: Path, units: str) -> None:
    frames = write_nxtomo(tmp_path / "scan.nxs", units=units)
    scan = open_hdf5(tmp_path / "scan.nxs", chunks={"angle": 4, "detector_x": 5})
    assert scan.projections.dims == PROJECTION_DIMS
    assert scan.flats.dims == ("flat", "detector_y", "detector_x")
    assert scan.darks.dims == ("dark", "detector_y", "detector_x")
    da.utils.assert_eq(scan.projections.data, frames[KEYS == 0])
    da.utils.assert_eq(scan.flats.data, frames[KEYS == 1])
    da.utils.assert_eq(scan.darks.data, frames[KEYS == 2])
    assert scan.projections.data.chunks == ((4, 2), (10,), (5, 5, 2))
    assert scan.flats.data.chunks[0] == (1,) * 5
    np.testing.assert_allclose(scan.angle.values, np.linspace(0, 180, len(KEYS))[KEYS == 0])
    assert scan.angle.attrs["units"] == "degree"
    assert scan.frame.values.tolist() == [5, 6, 7, 8, 9, 10]
    assert scan.flat_frame.values.tolist() == [2, 3, 4, 11, 12]
    assert scan.dark_frame.values.tolist() == [0, 1, 14]
    assert scan.attrs["entry"] == "/entry1/tomo_entry"
    assert scan.attrs["image_key_path"] == "/entry1/tomo_entry/instrument/detector/image_key"
    assert scan.attrs["angles_path"] == "/entry1/tomo_entry/sample/rotation_angle"
    assert scan.attrs["sources"] == [file_record(tmp_path / "scan.nxs")]


def test_nxtomo_reads_contiguous_runs(tmp_path: Path) -> None:
    write_nxtomo(tmp_path / "scan.nxs")
    scan = open_hdf5(tmp_path / "scan.nxs", chunks={"flat": 5})
    reads = [name for name in scan.flats.data.dask.layers if name.startswith("read-hdf5-")]
    assert len(reads) == 2  # frames 2-4 and 11-12: one reader per contiguous run
    assert contiguous_runs(np.array([2, 3, 4, 11, 12])) == [(2, 5), (11, 13)]
    assert contiguous_runs(np.array([], dtype=int)) == []


def test_missing_external_link_names_the_target(tmp_path: Path) -> None:
    write_nxtomo(tmp_path / "scan.nxs", external=True)
    (tmp_path / "raw" / "frames.h5").unlink()
    with pytest.raises(SourceNotFoundError, match=r"scan\.nxs: .*external link .* 'raw/frames\.h5'"):
        open_hdf5(tmp_path / "scan.nxs")


def test_no_tomography_entry_says_to_pass_dataset(tmp_path: Path) -> None:
    path = tmp_path / "plain.h5"
    with h5py.File(path, "w") as f:
        f["entry/data/data"] = np.zeros((2, 3, 3))
    with pytest.raises(SourceError, match=r"plain\.h5: no NXtomo entry.*pass dataset="):
        open_hdf5(path)
    with pytest.raises(SourceError, match="2 files given without dataset="):
        open_hdf5([path, path])


@pytest.mark.real_data
def test_real_diad_scan(real_data: Path) -> None:
    path = real_data / "nexus-k11-diad" / "k11-18014.nxs"
    scan = open_hdf5(path, chunks={"angle": 250, "detector_y": 7})
    with h5py.File(path, "r") as f:
        frames = f["/entry/imaging/data"][()]
        keys = f["/entry/instrument/imaging/image_key"][()]
        theta = f["/entry/imaging_sum/gts_theta_value"][()]
    assert (scan.sizes["angle"], scan.sizes["flat"], scan.sizes["dark"]) == (3001, 100, 100)
    da.utils.assert_eq(scan.projections.data, frames[keys == 0])
    da.utils.assert_eq(scan.flats.data, frames[keys == 1])
    da.utils.assert_eq(scan.darks.data, frames[keys == 2])
    np.testing.assert_array_equal(scan.angle.values, theta[keys == 0])
    assert 89.9 < scan.angle.values[0] < scan.angle.values[-1] < 270.1
    assert scan.attrs["sources"][1]["path"].endswith("k11-18014-imaging.h5")


@pytest.mark.real_data
def test_real_scan_with_missing_beamline_file(real_data: Path) -> None:
    path = real_data / "nexus-i13-24888" / "24888.nxs"
    with pytest.raises(SourceNotFoundError) as info:
        open_hdf5(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert "/dls/i13/data/2014/mt9396-1/raw/pco1-24888.hdf" in message


@pytest.mark.real_data
def test_real_i12_files(real_data: Path) -> None:
    folder = real_data / "i12-lfov"
    files = [folder / "pco2_flats_00000.hdf", folder / "pco2_darks_00000.hdf", folder / "pc2_projections.hdf"]
    arr = open_hdf5(files, "/entry/data/data", chunks={"image": 4, "y": 7})
    eager = []
    for p in files:
        with h5py.File(p, "r") as f:
            eager.append(f["/entry/data/data"][()])
    assert arr.shape == (29, 32, 64)
    da.utils.assert_eq(arr.data, np.concatenate(eager))
    assert arr.source_index.values.tolist() == [0] * 5 + [1] * 5 + [2] * 19
