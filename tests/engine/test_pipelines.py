from __future__ import annotations

import json
from pathlib import Path

import dask.config
import numpy as np
import pytest
import xarray as xr
from dask.utils import key_split
from distributed import get_task_stream

from engine.clusters import connect
from engine.pipelines import run_patches, store_grid, write_pipeline
from graphs.patches import extract_patches
from storage.errors import StoreMismatchError
from storage.sources import open_images
from storage.testing import assert_stores_identical, store_files, verify_store


def test_patches_end_to_end_matches_eager_reference(
    micrograph_dir: Path, tmp_path: Path, threads_cluster: None, reference_patches
):
    out = tmp_path / "train.zarr"
    summary = run_patches(f"{micrograph_dir}/*.mrc", out, size=64, stride=48, progress=False)
    files = sorted(micrograph_dir.glob("*.mrc"))
    expected = reference_patches(files, 64, 48)
    assert summary.samples == len(expected)

    ds = xr.open_zarr(out)
    assert ds.patches.dims == ("sample", "patch_y", "patch_x")
    assert set(ds.coords) == {"source_index", "y0", "x0"}
    np.testing.assert_array_equal(ds.patches.values, expected)
    assert ds.patches.dtype == np.float32
    per_image = len(expected) // 3
    np.testing.assert_array_equal(ds.source_index.values, np.repeat(np.arange(3), per_image))
    y0, x0 = ds.y0.values[:per_image], ds.x0.values[:per_image]
    assert list(zip(y0[:3], x0[:3], strict=True)) == [(0, 0), (0, 48), (0, 96)]
    assert ds.y0.dtype == np.int32

    meta = ds.attrs["zarrforge"]
    assert meta["pipeline"] == "patches"
    assert meta["parameters"] == {"size": 64, "stride": 48, "edges": "drop", "normalize": False, "bin": 1}
    assert meta["seed"] == 0 and meta["complete"] is True
    assert [s["path"] for s in meta["sources"]] == [str(f.resolve()) for f in files]
    assert all(s["size"] == f.stat().st_size for s, f in zip(meta["sources"], files, strict=True))
    assert {"zarr", "dask", "numpy", "xarray"} <= set(meta["versions"])
    assert "consolidated_metadata" in json.loads((out / "zarr.json").read_text())
    assert verify_store(out) > 0


def test_rerun_with_same_parameters_does_nothing(micrograph_dir: Path, tmp_path: Path, threads_cluster: None):
    out = tmp_path / "train.zarr"
    run_patches(f"{micrograph_dir}/*.mrc", out, size=64, stride=64, progress=False)
    before = store_files(out)
    again = run_patches(f"{micrograph_dir}/*.mrc", out, size=64, stride=64, progress=False)
    assert again.blocks_written == 0
    assert store_files(out) == before


def test_other_parameters_are_refused_then_overwritten(
    micrograph_dir: Path, tmp_path: Path, threads_cluster: None
):
    out = tmp_path / "train.zarr"
    run_patches(f"{micrograph_dir}/*.mrc", out, size=64, stride=64, progress=False)
    before = store_files(out)
    with pytest.raises(StoreMismatchError, match=r"parameters\.size: 64 → 32.*--overwrite"):
        run_patches(f"{micrograph_dir}/*.mrc", out, size=32, stride=64, progress=False)
    assert store_files(out) == before  # nothing touched
    run_patches(f"{micrograph_dir}/*.mrc", out, size=32, stride=64, progress=False, overwrite=True)
    assert xr.open_zarr(out).patches.shape[1:] == (32, 32)


def test_many_blocks_and_pad_edges(
    micrograph_dir: Path, tmp_path: Path, threads_cluster: None, small_shards: None
):
    out = tmp_path / "train.zarr"
    summary = run_patches(f"{micrograph_dir}/*.mrc", out, size=64, stride=64, edges="pad", progress=False)
    assert summary.blocks_total > 5
    ds = xr.open_zarr(out)
    # 300 × 260 with 64/64 and padding: 5 × 5 windows per image, the last ones reaching into reflected pixels.
    assert ds.sizes["sample"] == 3 * 25
    assert ds.y0.values.max() == 256 and ds.x0.values.max() == 256
    import mrcfile

    image = mrcfile.read(sorted(micrograph_dir.glob("*.mrc"))[1])
    padded = np.pad(image, ((0, 20), (0, 60)), mode="reflect")
    last = ds.patches.values[2 * 25 - 1]
    np.testing.assert_array_equal(last, padded[256:320, 256:320])


def test_same_bytes_on_threads_and_on_worker_processes(micrograph_dir: Path, tmp_path: Path, small_shards: None):
    import dask.config

    with dask.config.set(
        {
            "zarrforge.local.processes": False,
            "zarrforge.local.n-workers": 1,
            "zarrforge.local.threads-per-worker": 1,
        }
    ):
        run_patches(f"{micrograph_dir}/*.mrc", tmp_path / "a.zarr", size=64, stride=32, progress=False)
    with dask.config.set(
        {
            "zarrforge.local.processes": True,
            "zarrforge.local.n-workers": 2,
            "zarrforge.local.dashboard-address": "127.0.0.1:0",
        }
    ):
        run_patches(f"{micrograph_dir}/*.mrc", tmp_path / "b.zarr", size=64, stride=32, progress=False)
    assert_stores_identical(tmp_path / "a.zarr", tmp_path / "b.zarr")


def test_tasks_are_named_after_the_steps(micrograph_dir: Path, tmp_path: Path, threads_cluster: None):
    images = open_images(f"{micrograph_dir}/*.mrc")
    grid = store_grid(64 * 64 * 4)
    ds = extract_patches(images, size=64, stride=64, block_samples=grid.shard_samples)
    with connect() as client, get_task_stream(client) as stream:
        from engine.run import write_dataset
        from storage.store import ArraySpec, TrainingStore

        specs = [ArraySpec(n, tuple(map(str, v.dims)), v.shape, v.dtype, {}) for n, v in ds.data_vars.items()]
        with TrainingStore.open_for_writing(
            tmp_path / "t.zarr", specs, grid=grid, record={"pipeline": "t"}
        ) as store:
            write_dataset(ds, store, client, progress=False)
    names = {key_split(t["key"]) for t in stream.data}
    assert {"read-mrc", "patches-extract", "store-write"} <= names, sorted(names)
    # Every task is named after a step of the pipeline (the dashboard shows these names).
    steps = {"read-mrc", "concatenate", "patches-extract", "patches-source", "patches-corner-y"}
    steps.add("patches-corner-x")
    assert names <= steps | {"store-write"}, sorted(names - steps)


def test_write_pipeline_is_usable_from_python(micrograph_dir: Path, tmp_path: Path, threads_cluster: None):
    images = open_images(micrograph_dir)  # a folder works too
    grid = store_grid(32 * 32 * 4)
    ds = extract_patches(images, size=32, stride=32, normalize=True, block_samples=grid.shard_samples)
    summary = write_pipeline(ds, tmp_path / "n.zarr", grid=grid, pipeline="patches", seed=3, progress=False)
    out = xr.open_zarr(tmp_path / "n.zarr")
    assert out.patches.dtype == np.float32 and summary.samples == out.sizes["sample"]
    assert out.attrs["zarrforge"]["seed"] == 3


@pytest.mark.real_data
@pytest.mark.parametrize(
    ("inputs", "size", "stride", "reference"),
    [
        ("cryoem-ucsf-micrograph/Ucsf_stack_1142_DW.mrc", 128, 64, "mrc"),
        ("tif-i13-projections/tiffs", 64, 32, "tif"),
        ("nexus-k11-diad/k11-18014.nxs", 16, 8, "nexus"),
    ],
)
def test_real_files_end_to_end(
    real_data: Path, tmp_path: Path, threads_cluster: None, inputs: str, size: int, stride: int, reference: str
):
    import h5py
    import mrcfile
    import tifffile

    source = real_data / inputs
    summary = run_patches(source, tmp_path / "real.zarr", size=size, stride=stride, progress=False)
    ds = xr.open_zarr(tmp_path / "real.zarr")
    if reference == "mrc":
        images = mrcfile.read(source)[None]
    elif reference == "tif":
        images = np.stack([tifffile.imread(p) for p in sorted(source.glob("*.tif*"))])
    else:
        with h5py.File(source) as f:
            keys = f["entry/instrument/imaging/image_key"][:]
            images = f["entry/imaging/data"][:][keys == 0]
    n, h, w = images.shape
    corners = [(y, x) for y in range(0, h - size + 1, stride) for x in range(0, w - size + 1, stride)]
    assert summary.samples == ds.sizes["sample"] == n * len(corners)
    assert ds.patches.dtype == images.dtype
    for i in [0, len(corners) - 1, ds.sizes["sample"] - 1]:
        image, (y, x) = divmod(i, len(corners))[0], corners[i % len(corners)]
        np.testing.assert_array_equal(ds.patches[i].values, images[image, y : y + size, x : x + size])
        assert (int(ds.y0[i]), int(ds.x0[i])) == (y, x)


def test_runs_on_a_scheduler_that_already_runs(micrograph_dir: Path, tmp_path: Path):
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=1,
        threads_per_worker=2,
        processes=False,
        protocol="tcp://",
        host="127.0.0.1",
        dashboard_address="127.0.0.1:0",
    ) as cluster:
        summary = run_patches(
            micrograph_dir,
            tmp_path / "a.zarr",
            size=64,
            stride=64,
            cluster=cluster.scheduler_address,
            progress=False,
        )
        assert summary.blocks_written == summary.blocks_total
        assert len(cluster.scheduler.workers) == 1  # the cluster we were given, still up


def test_unknown_cluster_profile_is_one_clear_error(micrograph_dir: Path, tmp_path: Path):
    from engine.errors import ClusterError

    with pytest.raises(ClusterError, match="unknown cluster 'nowhere'"):
        run_patches(micrograph_dir, tmp_path / "a.zarr", size=64, cluster="nowhere", progress=False)
    with dask.config.set({"zarrforge.slurm.walltime": "forever"}), pytest.raises(ClusterError, match="SLURM time"):
        run_patches(micrograph_dir, tmp_path / "b.zarr", size=64, cluster="slurm", progress=False)
    assert not (tmp_path / "a.zarr").exists() and not (tmp_path / "b.zarr").exists()


def test_slurm_without_sbatch_is_one_clear_error(micrograph_dir: Path, tmp_path: Path, monkeypatch):
    from engine.errors import ClusterError

    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    with pytest.raises(ClusterError, match="sbatch"):
        run_patches(micrograph_dir, tmp_path / "b.zarr", size=64, cluster="slurm", progress=False)
    assert not (tmp_path / "b.zarr").exists()
