"""zarrforge sinograms / stripes / preview end to end: NeXus scan → sinograms → pairs → PNG, resume, bad input."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dask.config
import h5py
import numpy as np
import pytest
import torch
import xarray as xr
import zarr
from click.testing import CliRunner

from engine.cli import main
from graphs.stripe_pairs import patch_grid
from graphs.stripe_simulation import StripeParams, simulate_stripes
from storage.testing import assert_stores_identical, finished_block_files, verify_store
from storage.tomo_synthetic import write_nxtomo_scan
from torch_bridge import PairDataset

STRIPE_COLUMNS = (20, 21, 150)


def _cli(*args: str) -> str:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def _fails(*args: str) -> str:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 1, result.output
    line = result.output.strip().splitlines()[-1]
    assert line.startswith("Error: ") and len(line) < 400
    return line


@pytest.fixture
def scan(tmp_path: Path) -> Path:
    """A synthetic NXtomo scan: 180 projections of 12 × 200, real stripes at ``STRIPE_COLUMNS``."""
    return write_nxtomo_scan(
        tmp_path / "scan.nxs", n_angles=180, height=12, width=200, stripe_columns=STRIPE_COLUMNS, seed=1
    )


def _eager_sinograms(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with h5py.File(path, "r") as f:
        frames = f["entry1/tomo_entry/instrument/detector/data"][()].astype(np.float64)
        keys = f["entry1/tomo_entry/instrument/detector/image_key"][()]
        angles = f["entry1/tomo_entry/sample/rotation_angle"][()]
    flat, dark = frames[keys == 1].mean(0), frames[keys == 2].mean(0)
    sino = (frames[keys == 0] - dark) / (flat - dark)
    return np.transpose(sino, (1, 0, 2)), angles[keys == 0]


@pytest.mark.usefixtures("threads_cluster")
def test_sinograms_equal_the_eager_normalization(scan: Path, tmp_path: Path) -> None:
    with dask.config.set({"zarrforge.sinograms.block-bytes": 4 * 180 * 200 * 4}):  # bands of 4 rows
        out = _cli("sinograms", str(scan), "-o", str(tmp_path / "s.zarr"))
    assert "wrote 12 sinograms" in out
    verify_store(tmp_path / "s.zarr")
    ds = xr.open_zarr(tmp_path / "s.zarr")
    expected, angles = _eager_sinograms(scan)
    assert ds.sinograms.dims == ("detector_y", "angle", "detector_x") and ds.sinograms.dtype == np.float32
    np.testing.assert_allclose(ds.sinograms.values, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(ds.sinograms.rotation_angle.values, angles)
    assert ds.rotation_angle.attrs["units"] == "degree"
    array = zarr.open_array(str(tmp_path / "s.zarr" / "sinograms"), mode="r")
    assert array.chunks[1:] == (180, 200) and array.shards[0] == 4  # bands of 4 rows, whole sinograms
    # The other transpose paths write the same bytes.
    _cli("sinograms", str(scan), "-o", str(tmp_path / "r.zarr"), "--method", "rechunk-tasks")
    meta = zarr.open_group(str(tmp_path / "r.zarr")).attrs["zarrforge"]
    assert meta["parameters"]["method"] == "rechunk-tasks"
    np.testing.assert_array_equal(xr.open_zarr(tmp_path / "r.zarr").sinograms.values, ds.sinograms.values)
    # -log and the median of the flats.
    _cli("sinograms", str(scan), "-o", str(tmp_path / "l.zarr"), "--log", "--flat-average", "median")
    logged = xr.open_zarr(tmp_path / "l.zarr").sinograms.values
    with h5py.File(scan, "r") as f:
        frames = f["entry1/tomo_entry/instrument/detector/data"][()].astype(np.float64)
        keys = f["entry1/tomo_entry/instrument/detector/image_key"][()]
    flat, dark = np.median(frames[keys == 1], 0), np.median(frames[keys == 2], 0)
    expected_log = -np.log(np.maximum((frames[keys == 0] - dark) / (flat - dark), 1e-6)).transpose(1, 0, 2)
    np.testing.assert_allclose(logged, expected_log, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_resume_after_a_kill_gives_the_same_store(scan: Path, tmp_path: Path) -> None:
    """SIGKILL mid-run, then the same command: finished bands are not rewritten, the store equals a clean run."""
    big = write_nxtomo_scan(tmp_path / "big.nxs", n_angles=180, height=48, width=200, seed=2)
    env = {
        **os.environ,
        "DASK_ZARRFORGE__SINOGRAMS__BLOCK_BYTES": str(2 * 180 * 200 * 4),
        "DASK_ZARRFORGE__LOCAL__DASHBOARD_ADDRESS": "127.0.0.1:0",
        "DASK_ZARRFORGE__RUN__MAX_IN_FLIGHT": "1",
    }
    out, clean = tmp_path / "killed.zarr", tmp_path / "clean.zarr"
    command = [sys.executable, "-m", "engine", "sinograms", str(big)]
    subprocess.run([*command, "-o", str(clean)], env=env, check=True, capture_output=True)
    total = len(list((clean / ".zarrforge" / "ledger" / "c").iterdir()))
    proc = subprocess.Popen(
        [*command, "-o", str(out)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    while finished_block_files(out) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = finished_block_files(out)
    if done_before >= total:
        pytest.skip("the run finished before it could be killed")
    shards = {p: p.stat().st_mtime_ns for p in (out / "sinograms" / "c").rglob("*") if p.is_file()}
    resumed = subprocess.run([*command, "-o", str(out)], env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "blocks already done" in resumed.stdout
    kept = [p for p in shards if p.exists() and p.stat().st_mtime_ns == shards[p]]
    assert len(kept) >= done_before - 1
    assert_stores_identical(out, clean)


@pytest.mark.usefixtures("threads_cluster")
def test_stripes_pairs_from_sinograms(scan: Path, tmp_path: Path) -> None:
    sino, pairs, virtual = tmp_path / "s.zarr", tmp_path / "p.zarr", tmp_path / "v.zarr"
    _cli("sinograms", str(scan), "-o", str(sino))
    args = ["--patch", "180x50", "--seed", "3", "--split", "0.75"]
    _cli("stripes", str(sino), "-o", str(pairs), *args)
    _cli("stripes", str(sino), "-o", str(virtual), *args, "--virtual")
    verify_store(pairs)
    ds = xr.open_zarr(pairs)
    real = xr.open_zarr(pairs, group="real_artifacts")
    sinograms = xr.open_zarr(sino).sinograms.values
    grid = patch_grid(180, 200, (180, 50))
    # Patches 0 (columns 0-49, stripes 20-21) and 3 (150-199, stripe 150) hold real stripes in every sinogram.
    found = {(int(s), int(p)) for s, p in zip(real.sinogram.values, real.patch.values, strict=True)}
    assert {(s, p) for s in range(12) for p in (0, 3)} <= found
    for i in range(real.sizes["real_sample"]):
        s, p = int(real.sinogram[i]), int(real.patch[i])
        np.testing.assert_array_equal(real.stripe.values[i], grid.cut(sinograms[s], p))
        if p == 0:
            assert real.mask.values[i][:, 20:22].mean() > 0.9  # the detected mask covers the known stripe
    # Clean patches: cut from their sinogram, striped by the seeded kernel; split by whole sinograms.
    assert ds.sizes["sample"] + real.sizes["real_sample"] == 12 * grid.per_sinogram
    params = StripeParams()
    for i in range(ds.sizes["sample"]):
        s, p = int(ds.sinogram[i]), int(ds.patch[i])
        clean = grid.cut(sinograms[s], p)
        np.testing.assert_array_equal(ds.clean.values[i], clean)
        stripe, mask = simulate_stripes(clean, 3, (s, p), params)
        np.testing.assert_array_equal(ds.stripe.values[i], stripe)
        np.testing.assert_array_equal(ds.mask.values[i], mask)
        assert (int(ds.angle0[i]), int(ds.x0[i])) == grid.origin(p)
    split = ds.split.values
    assert (np.diff(split) >= 0).all()  # train first, then val
    by_sinogram = {int(s): int(v) for s, v in zip(ds.sinogram.values, split, strict=True)}
    assert sorted(by_sinogram.values()).count(0) == 9  # 9 of 12 sinograms train
    # PairDataset: the same pairs from both stores, per split, through a DataLoader.
    for name in ("train", "val"):
        m = PairDataset(pairs, split=name, return_mask=True, return_metadata=True)
        v = PairDataset(virtual, split=name, return_mask=True, return_metadata=True)
        assert len(m) == len(v) == int((split == (0 if name == "train" else 1)).sum())
        for (cm, sm, mm, meta_m), (cv, sv, mv, meta_v) in zip(
            torch.utils.data.DataLoader(m, batch_size=5), torch.utils.data.DataLoader(v, batch_size=5), strict=True
        ):
            assert torch.equal(cm, cv) and torch.equal(sm, sv) and torch.equal(mm, mv)
            assert torch.equal(meta_m["sinogram"], meta_v["sinogram"]) and mm.dtype == torch.bool
    clean, stripe = PairDataset(pairs, split="train")[0]
    assert clean.shape == stripe.shape == (180, 50) and clean.dtype == torch.float32
    assert sum(f.stat().st_size for f in virtual.rglob("*")) < sum(f.stat().st_size for f in pairs.rglob("*"))
    # The same command again is complete; another seed is refused without --overwrite.
    assert "complete, nothing to do" in _cli("stripes", str(sino), "-o", str(pairs), *args)
    assert "other parameters" in _fails("stripes", str(sino), "-o", str(pairs), *args[:4], "--seed", "4")
    # Previews of both stores and of the sinograms.
    for store, png in ((pairs, "pairs.png"), (virtual, "virtual.png"), (sino, "sino.png")):
        out = _cli("preview", str(store), "-o", str(tmp_path / png))
        assert png in out and (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.usefixtures("threads_cluster")
def test_same_stores_whatever_the_workers(scan: Path, tmp_path: Path) -> None:
    """One thread or two, slab or rechunk: byte-identical sinogram and pair stores."""
    _cli("sinograms", str(scan), "-o", str(tmp_path / "s1.zarr"))
    _cli("stripes", str(tmp_path / "s1.zarr"), "-o", str(tmp_path / "a.zarr"), "--patch", "90x40")
    with dask.config.set({"zarrforge.local.threads-per-worker": 1}):
        _cli("sinograms", str(scan), "-o", str(tmp_path / "s2.zarr"))
        _cli("stripes", str(tmp_path / "s1.zarr"), "-o", str(tmp_path / "b.zarr"), "--patch", "90x40")
    assert_stores_identical(tmp_path / "s1.zarr", tmp_path / "s2.zarr")
    assert_stores_identical(tmp_path / "a.zarr", tmp_path / "b.zarr")


# ------------------------------------------------------------------------------------------ bad input
@pytest.mark.usefixtures("threads_cluster")
def test_bad_scans_are_one_line_errors(tmp_path: Path) -> None:
    out = tmp_path / "out.zarr"
    small = {"n_angles": 20, "height": 4, "width": 16}
    no_key = write_nxtomo_scan(tmp_path / "nokey.nxs", image_key=False, **small)
    assert "no image_key found" in _fails("sinograms", str(no_key), "-o", str(out))
    no_flats = write_nxtomo_scan(tmp_path / "noflats.nxs", n_flats=0, **small)
    assert "no flats (image_key 1)" in _fails("sinograms", str(no_flats), "-o", str(out))
    no_angles = write_nxtomo_scan(tmp_path / "noangles.nxs", angles=False, **small)
    assert "no rotation angles found" in _fails("sinograms", str(no_angles), "-o", str(out))
    zero = write_nxtomo_scan(tmp_path / "zero.nxs", zero_flats=True, n_darks=0, **small)
    assert "flats are zero-valued" in _fails("sinograms", str(zero), "-o", str(out))
    assert "no such file" in _fails("sinograms", str(tmp_path / "missing.nxs"), "-o", str(out))
    linked = tmp_path / "linked.nxs"
    with h5py.File(linked, "w") as f:
        entry = f.create_group("entry")
        entry.attrs["NX_class"] = "NXentry"
        entry["definition"] = np.array([b"NXtomo"])
        entry["instrument/detector/data"] = h5py.ExternalLink("gone/frames.h5", "/data")
        entry["instrument/detector/image_key"] = np.zeros(3)
    line = _fails("sinograms", str(linked), "-o", str(out))
    assert "linked.nxs" in line and "gone/frames.h5" in line and "does not exist" in line
    flats = write_nxtomo_scan(tmp_path / "otherflats.nxs", **{**small, "width": 8})
    assert "do not match the projections" in _fails(
        "sinograms", str(no_key), "--flats", str(flats), "-o", str(out)
    )
    assert not out.exists()  # nothing was written


@pytest.mark.usefixtures("threads_cluster")
def test_fallbacks_and_separate_flat_files(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    small = {"n_angles": 20, "height": 4, "width": 16}
    no_angles = write_nxtomo_scan(tmp_path / "noangles.nxs", angles=False, **small)
    _cli("sinograms", str(no_angles), "-o", str(tmp_path / "a.zarr"), "--angles", "0,190")
    np.testing.assert_allclose(xr.open_zarr(tmp_path / "a.zarr").rotation_angle.values, np.linspace(0, 190, 20))
    # Projections without image_key, flats and darks from files of their own (here NXtomo scans: their keys).
    no_key = write_nxtomo_scan(tmp_path / "nokey.nxs", image_key=False, n_flats=0, n_darks=0, **small)
    side = write_nxtomo_scan(tmp_path / "side.nxs", **small)
    _cli("sinograms", str(no_key), "--flats", str(side), "--darks", str(side), "-o", str(tmp_path / "b.zarr"))
    b = xr.open_zarr(tmp_path / "b.zarr")
    assert b.sizes["angle"] == 20 and np.isfinite(b.sinograms.values).all()
    meta = zarr.open_group(str(tmp_path / "b.zarr")).attrs["zarrforge"]
    assert {Path(s["path"]).name for s in meta["sources"]} == {"nokey.nxs", "side.nxs"}
    # No darks at all: a dark of zero, with a warning.
    no_darks = write_nxtomo_scan(tmp_path / "nodarks.nxs", n_darks=0, **small)
    result = CliRunner().invoke(main, ["sinograms", str(no_darks), "-o", str(tmp_path / "c.zarr")])
    assert result.exit_code == 0 and "no darks" in result.output
    assert (xr.open_zarr(tmp_path / "c.zarr").dark.values == 0).all()


@pytest.mark.usefixtures("threads_cluster")
def test_bad_pair_parameters(scan: Path, tmp_path: Path) -> None:
    sino = tmp_path / "s.zarr"
    _cli("sinograms", str(scan), "-o", str(sino))
    out = tmp_path / "p.zarr"
    line = _fails("stripes", str(sino), "-o", str(out), "--patch", "1801x256")
    assert "patch 1801x256 is larger than the sinograms" in line and "180 angles" in line
    assert "between 0 and 1" in _fails("stripes", str(sino), "-o", str(out), "--patch", "90x50", "--split", "1.5")
    assert "stripe width range" in _fails(
        "stripes", str(sino), "-o", str(out), "--patch", "90x50", "--width", "0,3"
    )
    assert "not a sinogram store" in _fails("stripes", str(scan), "-o", str(out), "--patch", "90x50")
    _cli("stripes", str(sino), "-o", str(out), "--patch", "90x50")
    assert "not sinograms" in _fails("stripes", str(out), "-o", str(tmp_path / "q.zarr"))
    assert "no sinogram 99" in _fails("preview", str(sino), "-o", str(tmp_path / "x.png"), "--index", "99")


# ------------------------------------------------------------------------------------------ real scans
@pytest.mark.real_data
@pytest.mark.usefixtures("threads_cluster")
def test_real_diad_scan_to_sinograms_and_pairs(real_data: Path, tmp_path: Path) -> None:
    path = real_data / "nexus-k11-diad" / "k11-18014.nxs"
    _cli("sinograms", str(path), "-o", str(tmp_path / "k11.zarr"))
    ds = xr.open_zarr(tmp_path / "k11.zarr")
    with h5py.File(path, "r") as f:
        frames = f["/entry/imaging/data"][()].astype(np.float64)
        keys = f["/entry/instrument/imaging/image_key"][()]
    flat, dark = frames[keys == 1].mean(0), frames[keys == 2].mean(0)
    expected = ((frames[keys == 0] - dark) / (flat - dark)).transpose(1, 0, 2)
    np.testing.assert_allclose(ds.sinograms.values, expected, rtol=1e-5, atol=1e-6)
    assert ds.sizes == {"detector_y": 22, "angle": 3001, "detector_x": 26}
    _cli("stripes", str(tmp_path / "k11.zarr"), "-o", str(tmp_path / "p.zarr"), "--patch", "3001x26")
    counts = zarr.open_group(str(tmp_path / "p.zarr")).attrs["zarrforge"]["counts"]
    clean = counts["train"]["samples"] + counts["val"]["samples"]
    assert len(PairDataset(tmp_path / "p.zarr")) == clean == 22 - counts["real_artifacts"]["samples"]


@pytest.mark.real_data
@pytest.mark.usefixtures("threads_cluster")
def test_real_scans_with_separate_flats_or_a_missing_link(real_data: Path, tmp_path: Path) -> None:
    folder = real_data / "i12-lfov"
    line = _fails("sinograms", str(folder / "pc2_projections.hdf"), "-o", str(tmp_path / "x.zarr"))
    assert "no image_key found" in line and "--flats" in line
    _cli(
        "sinograms",
        str(folder / "pc2_projections.hdf"),
        "--flats",
        str(folder / "pco2_flats_00000.hdf"),
        "--darks",
        str(folder / "pco2_darks_00000.hdf"),
        "--angles",
        "0,180",
        "-o",
        str(tmp_path / "i12.zarr"),
    )
    ds = xr.open_zarr(tmp_path / "i12.zarr")
    proj, flat, dark = (
        h5py.File(folder / name, "r")["entry/data/data"][()]
        for name in ("pc2_projections.hdf", "pco2_flats_00000.hdf", "pco2_darks_00000.hdf")
    )
    flat, dark = flat.mean(0), dark.mean(0)
    guard = (flat - dark) <= 1e-3 * np.median((flat - dark)[(flat - dark) > 0])
    with np.errstate(all="ignore"):
        expected = np.where(guard, 0, (proj - dark) / (flat - dark)).transpose(1, 0, 2)
    np.testing.assert_allclose(ds.sinograms.values, expected, rtol=1e-4, atol=1e-5)
    i13 = real_data / "nexus-i13-24888" / "24888.nxs"
    line = _fails("sinograms", str(i13), "-o", str(tmp_path / "y.zarr"))
    assert "/dls/i13/data/2014/mt9396-1/raw/pco1-24888.hdf" in line and "does not exist" in line


def _write_tiffs(folder: Path, frames: np.ndarray) -> None:
    import tifffile

    folder.mkdir(parents=True)
    for i, frame in enumerate(frames):
        tifffile.imwrite(folder / f"raw_{i:05d}.tiff", frame)


@pytest.mark.usefixtures("threads_cluster")
def test_tif_projections_with_flat_and_dark_files(tmp_path: Path) -> None:
    import tifffile

    rng = np.random.default_rng(4)
    flat = rng.uniform(3000, 4000, (9, 14)).astype(np.float32)
    dark = rng.uniform(90, 110, (9, 14)).astype(np.float32)
    projections = (dark + flat * rng.uniform(0.2, 0.9, (11, 9, 14))).astype(np.uint16)
    _write_tiffs(tmp_path / "tiffs", projections)
    tifffile.imwrite(tmp_path / "flat.tiff", flat)
    tifffile.imwrite(tmp_path / "dark.tiff", dark)
    flags = ["--flats", str(tmp_path / "flat.tiff"), "--darks", str(tmp_path / "dark.tiff")]
    assert "carry no flats" in _fails("sinograms", str(tmp_path / "tiffs"), "-o", str(tmp_path / "x.zarr"))
    assert "no rotation angles" in _fails(
        "sinograms", str(tmp_path / "tiffs"), *flags, "-o", str(tmp_path / "x.zarr")
    )
    _cli("sinograms", str(tmp_path / "tiffs"), *flags, "--angles", "0,180", "-o", str(tmp_path / "t.zarr"))
    expected = ((projections - dark.astype(np.float64)) / (flat.astype(np.float64) - dark)).transpose(1, 0, 2)
    np.testing.assert_allclose(xr.open_zarr(tmp_path / "t.zarr").sinograms.values, expected, rtol=1e-5)


@pytest.mark.real_data
@pytest.mark.usefixtures("threads_cluster")
def test_real_tif_projections(real_data: Path, tmp_path: Path) -> None:
    import tifffile

    folder = real_data / "tif-i13-projections"
    flags = ["--flats", str(folder / "flat_00001.tiff"), "--darks", str(folder / "dark_00001.tiff")]
    _cli("sinograms", str(folder / "tiffs"), *flags, "--angles", "0,180", "-o", str(tmp_path / "t.zarr"))
    ds = xr.open_zarr(tmp_path / "t.zarr")
    frames = np.stack([tifffile.imread(f) for f in sorted((folder / "tiffs").glob("*.tiff"))]).astype(np.float64)
    flat, dark = tifffile.imread(folder / "flat_00001.tiff"), tifffile.imread(folder / "dark_00001.tiff")
    span = flat.astype(np.float64) - dark
    with np.errstate(all="ignore"):
        expected = np.where(span <= 1e-3 * np.median(span[span > 0]), 0, (frames - dark) / span).transpose(1, 0, 2)
    assert ds.sinograms.shape == (135, 91, 160)
    np.testing.assert_allclose(ds.sinograms.values, expected, rtol=1e-4, atol=1e-5)
