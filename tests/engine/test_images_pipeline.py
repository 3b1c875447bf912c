"""zarrforge images: TIF folders of any sizes into a store, single and paired, with mask-aware normalization."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import xarray as xr
import zarr
from click.testing import CliRunner
from skimage.transform import resize

from engine.cli import main
from graphs.images import masked_normalize
from storage.testing import assert_stores_identical, verify_store
from torch_bridge import ZarrDataset


def _folders(root: Path, names: dict[str, list[str]], seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for folder, files in names.items():
        (root / folder).mkdir(parents=True)
        for name in files:
            h, w = (int(v) for v in rng.integers(60, 140, 2))
            image = rng.integers(1, 60000, (h, w)).astype(np.uint16)
            image[: h // 5] = 0  # background
            tifffile.imwrite(root / folder / f"{name}.tif", image)
    return root


def _run(*args: str) -> str:
    result = CliRunner().invoke(main, ["images", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.usefixtures("threads_cluster")
def test_paired_folders(tmp_path: Path) -> None:
    root = _folders(tmp_path / "data", {"edente": [f"im{i:02d}" for i in range(10)], "dente": []})
    for tif in (root / "edente").iterdir():  # the condition images: same names, other sizes and values
        tifffile.imwrite(root / "dente" / tif.name, (tifffile.imread(tif)[::2, ::2] // 2).astype(np.uint16))
    out = tmp_path / "images.zarr"
    _run(str(root), "-o", str(out), "--folders", "edente,dente", "--size", "48x64", "--pairs", "--split", "0.8")
    verify_store(out)
    ds = xr.open_zarr(out)
    assert ds.edente.shape == ds.dente.shape == (10, 48, 64) and ds.edente.dtype == np.float32
    meta = zarr.open_group(str(out)).attrs["zarrforge"]
    names = meta["names"]
    assert ds.coords["name"].dims == ("sample",) and ds.name.values.tolist() == names  # a coord, for xarray users
    assert "name" in ds.edente.attrs.get("coordinates", "") or "name" in ds.edente.coords
    assert (np.diff(ds.split.values) >= 0).all() and int((ds.split == 0).sum()) == 8
    for i in (0, 9):
        for folder in ("edente", "dente"):
            raw = tifffile.imread(root / folder / f"{names[i]}.tif").astype(np.float32)
            resized = resize(raw, (48, 64), order=1, anti_aliasing=True, preserve_range=True)
            np.testing.assert_allclose(ds[folder].values[i], masked_normalize(resized), atol=1e-4)
            # The stored statistics undo the normalization on the foreground.
            back = ds[folder].values[i] * float(ds[f"{folder}_std"][i]) + float(ds[f"{folder}_mean"][i])
            foreground = resized != 0
            np.testing.assert_allclose(back[foreground], resized[foreground], rtol=1e-4, atol=0.05)
    train = ZarrDataset(out, arrays=["edente", "dente"], split="train")
    assert len(train) == 8 and train[0]["edente"].shape == (48, 64)


@pytest.mark.usefixtures("threads_cluster")
def test_single_images_of_several_folders(tmp_path: Path) -> None:
    root = _folders(tmp_path / "data", {"a": ["x", "y", "z"], "b": ["x", "w"]})
    out = tmp_path / "single.zarr"
    _run(str(root), "-o", str(out), "--size", "32", "--no-normalize")
    ds = xr.open_zarr(out)
    assert ds.images.shape == (5, 32, 32) and "images_mean" not in ds
    assert sorted(ds.folder.values.tolist()) == [0, 0, 0, 1, 1]
    assert ds.folder.attrs["flag_meanings"] == "a b"


@pytest.mark.usefixtures("threads_cluster")
def test_same_seed_same_bytes_and_resume(tmp_path: Path) -> None:
    root = _folders(tmp_path / "data", {"t": [f"{i}" for i in range(6)], "c": [f"{i}" for i in range(6)]})
    args = ["--size", "40x40", "--pairs", "--seed", "7"]
    _run(str(root), "-o", str(tmp_path / "a.zarr"), *args)
    _run(str(root), "-o", str(tmp_path / "b.zarr"), *args)
    assert_stores_identical(tmp_path / "a.zarr", tmp_path / "b.zarr")
    assert "nothing to do" in _run(str(root), "-o", str(tmp_path / "a.zarr"), *args)


@pytest.mark.usefixtures("threads_cluster")
def test_bad_input(tmp_path: Path) -> None:
    root = _folders(tmp_path / "data", {"t": [f"n{i}" for i in range(14)], "c": [f"n{i}" for i in range(2, 16)]})
    out = tmp_path / "x.zarr"
    result = CliRunner().invoke(main, ["images", str(root), "-o", str(out), "--size", "32", "--pairs"])
    assert result.exit_code == 1
    assert "4 mismatches" in result.output and "n0 missing from c" in result.output
    result = CliRunner().invoke(main, ["images", str(root), "-o", str(out)])
    assert result.exit_code == 1 and "pass --size HxW" in result.output
    (root / "t" / "n3.tif").write_bytes((root / "t" / "n3.tif").read_bytes()[:300])
    result = CliRunner().invoke(main, ["images", str(root / "t"), "-o", str(out), "--size", "32"])
    assert result.exit_code == 1 and "n3.tif" in result.output
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(main, ["images", str(tmp_path / "empty"), "-o", str(out), "--size", "32"])
    assert result.exit_code == 1 and "empty" in result.output
    result = CliRunner().invoke(main, ["images", str(root), "-o", str(out), "--size", "big"])
    assert result.exit_code == 2 and "HxW" in result.output
    assert not out.exists()


@pytest.mark.real_data
@pytest.mark.usefixtures("threads_cluster")
def test_real_tifs(real_data: Path, tmp_path: Path) -> None:
    """The nuclei image and its mask (16-bit), and a 36-page cryo-ET TIF, ingest and load."""
    out = tmp_path / "real.zarr"
    nuclei = tmp_path / "nuclei"
    (nuclei / "image").mkdir(parents=True)
    (nuclei / "mask").mkdir()
    source = real_data / "tif-nuclei-dsb2018"
    (nuclei / "image" / "a.tif").write_bytes((source / "img2d.tif").read_bytes())
    (nuclei / "mask" / "a.tif").write_bytes((source / "mask2d.tif").read_bytes())
    _run(str(nuclei), "-o", str(out), "--size", "128x128", "--pairs", "--split", "1")
    ds = xr.open_zarr(out)
    assert ds.image.shape == (1, 128, 128) and np.isfinite(ds.image.values).all()
    mt = tmp_path / "mt.zarr"
    _run(str(real_data / "tif-cryoet-microtubules"), "-o", str(mt), "--size", "64x32")
    assert xr.open_zarr(mt).images.shape == (80, 64, 32)  # two files of 36 and 44 pages


@pytest.mark.usefixtures("threads_cluster")
def test_skip_bad_leaves_out_unreadable_files_and_keeps_pairs_whole(tmp_path: Path) -> None:
    names = [f"n{i}" for i in range(6)]
    root = _folders(tmp_path / "data", {"t": names, "c": names})
    (root / "t" / "n2.tif").write_bytes((root / "t" / "n2.tif").read_bytes()[:300])  # truncated
    (root / "c" / "n4.tif").write_bytes(b"not a tif at all")
    out = tmp_path / "skip.zarr"
    failed = CliRunner().invoke(main, ["images", str(root), "-o", str(out), "--size", "32", "--pairs"])
    assert failed.exit_code == 1 and "n4.tif" in failed.output and not out.exists()
    _run(str(root), "-o", str(out), "--size", "32", "--pairs", "--skip-bad")
    meta = zarr.open_group(str(out)).attrs["zarrforge"]
    assert sorted(meta["names"]) == ["n0", "n1", "n3", "n5"]
    assert meta["counts"]["skipped"]["unreadable_files"] == 2
    assert xr.open_zarr(out).t.shape[0] == 4


@pytest.mark.usefixtures("threads_cluster")
@pytest.mark.parametrize("pairs", [False, True])
def test_validation_folder_is_the_val_split(tmp_path: Path, pairs: bool) -> None:
    """--val-dir: its images are val, every image of DATA_DIR is train, for single and paired sets."""
    folders = {"edente": [f"t{i}" for i in range(5)], "dente": [f"t{i}" for i in range(5)]}
    train = _folders(tmp_path / "train", folders)
    val = _folders(tmp_path / "val", {f: [f"v{i}" for i in range(3)] for f in folders}, seed=1)
    out = tmp_path / "images.zarr"
    options = ["--folders", "edente,dente", "--size", "32x32", *(["--pairs"] if pairs else [])]
    _run(str(train), "-o", str(out), *options, "--val-dir", str(val))
    ds = xr.open_zarr(out)
    per_name = 1 if pairs else 2  # without --pairs both folders' images are samples
    assert ds.split.values.tolist() == [0] * 5 * per_name + [1] * 3 * per_name
    assert {n[0] for n in ds.name.values[ds.split.values == 1]} == {"v"}
    sources = ds.attrs["zarrforge"]["sources"]
    assert sum("/val/" in s["path"] for s in sources) == 3 * 2  # two files per val name either way
    missing = tmp_path / "nowhere"
    result = CliRunner().invoke(
        main, ["images", str(train), "-o", str(tmp_path / "x.zarr"), "--val-dir", str(missing)]
    )
    assert result.exit_code == 1 and "nowhere: no such folder of validation images" in result.output
    (val / "dente" / "v0.tif").unlink()  # a val pair without its condition: listed, nothing written
    result = CliRunner().invoke(
        main, ["images", str(train), "-o", str(tmp_path / "y.zarr"), *options, "--val-dir", str(val)]
    )
    if pairs:
        assert result.exit_code == 1 and "v0 missing from dente" in result.output
        assert not (tmp_path / "y.zarr").exists()
