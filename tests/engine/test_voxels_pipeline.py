"""zarrforge voxels / rays / splits end to end: stores, determinism, resume, split reassignment, bad input."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dask.config
import numpy as np
import pytest
import trimesh
import xarray as xr
import zarr
from click.testing import CliRunner

from engine.cli import main
from engine.pipelines import reassign_splits, run_rays, run_voxels
from graphs.errors import ParameterError
from graphs.rays import cast_rays
from graphs.voxels import FLAGS, procedural_object, split_cells, voxelize_mesh
from storage.errors import SourceError, StoreError, StoreMismatchError
from storage.sources.meshes import read_mesh
from storage.testing import assert_stores_identical, finished_block_files, store_files, verify_store

VOXEL_ARGS = ["--resolution", "16", "--min-resolution", "4", "--split", "0.5,0.5,0"]
RAY_ARGS = ["--sphere-divisions", "0", "--samples-per-view", "16", "--views-per-subvolume", "2"]


def _cli(*args: str) -> str:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def _fails(*args: str) -> str:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 1, result.output
    line = result.output.strip().splitlines()[-1]
    assert line.startswith("Error: ") and len(line) < 400, line
    return line


@pytest.fixture
def meshes(tmp_path: Path) -> Path:
    """A sphere, a box and a torus as STL files."""
    folder = tmp_path / "meshes"
    folder.mkdir()
    trimesh.creation.icosphere(subdivisions=3).export(folder / "a_sphere.stl")
    trimesh.creation.box((1.0, 2.0, 1.5)).export(folder / "b_box.stl")
    trimesh.creation.torus(1.0, 0.3).export(folder / "c_torus.stl")
    return folder


@pytest.mark.usefixtures("threads_cluster")
def test_synthetic_voxels_rays_and_splits_from_the_command_line(tmp_path: Path) -> None:
    v, r = tmp_path / "voxels.zarr", tmp_path / "rays.zarr"
    _cli("voxels", "--synthetic", "6", "-o", str(v), *VOXEL_ARGS, "--seed", "3")
    _cli("rays", str(v), "-o", str(r), *RAY_ARGS, "--adaptive", "--seed", "3")
    verify_store(v)
    verify_store(r)
    vox = xr.open_zarr(v)
    meta = zarr.open_group(str(v)).attrs["zarrforge"]
    assert meta["names"] == [f"synthetic-{i:05d}" for i in range(6)]
    for level, side in enumerate([16, 8, 4]):
        subs, maps = vox[f"subvolumes_{level}"].values, vox[f"map_{level}"].values
        assert maps.shape == (6, *(16 // side,) * 3)
        # object -> (level, position) -> subvolume rebuilds every procedural object exactly.
        for obj in range(6):
            cells = split_cells(procedural_object(obj, seed=3, resolution=16).astype(np.uint8), side)
            np.testing.assert_array_equal(subs[maps[obj].reshape(-1)], cells)
        assert len({s.tobytes() for s in subs}) == len(subs)  # stored once
        occupied = subs.reshape(len(subs), -1).mean(1)
        np.testing.assert_allclose(vox[f"occupancy_{level}"].values, occupied)
        np.testing.assert_array_equal(vox[f"flags_{level}"].values == FLAGS["empty"], occupied == 0)
        counts = meta["counts"]["levels"][str(level)]
        assert counts["unique"] == len(subs) and counts["cells"] == maps.size
    # Rays: every subvolume of every level, distances as the kernel finds them on the stored voxels.
    rays = xr.open_zarr(r)
    rmeta = zarr.open_group(str(r)).attrs["zarrforge"]
    assert rmeta["parameters"]["voxels"]["digest"] == meta["counts"]["digest"]
    assert rays["view_directions"].shape == (12, 3)
    for level in range(3):
        subs = vox[f"subvolumes_{level}"].values
        assert rays[f"distances_{level}"].shape == (len(subs), 32)
        for u in (0, len(subs) - 1):
            o, d = rays[f"origins_{level}"].values[u], rays[f"directions_{level}"].values[u]
            expected = cast_rays(subs[u].astype(bool), o.astype(np.float64), d.astype(np.float64))
            got = rays[f"distances_{level}"].values[u]
            np.testing.assert_array_equal(np.isfinite(got), np.isfinite(expected))
            np.testing.assert_allclose(got[np.isfinite(got)], expected[np.isfinite(expected)], atol=1e-3)
            np.testing.assert_array_equal(rays[f"hits_{level}"].values[u], np.isfinite(got))
    # Splits: reassigned in place; the arrays, the ledger and the rays are untouched.
    before = {k: b for k, b in store_files(v).items() if not k.startswith(("split/", "zarr.json"))}
    out = _cli("splits", str(v), "--ratios", "1,0,0")
    assert "train 6, val 0, test 0" in out
    assert xr.open_zarr(v)["split"].values.tolist() == [0] * 6
    after = {k: b for k, b in store_files(v).items() if not k.startswith(("split/", "zarr.json"))}
    assert before == after
    assert zarr.open_group(str(v)).attrs["zarrforge"]["splits"]["ratios"] == [1.0, 0.0, 0.0]
    # Re-running the original commands finds nothing to do.
    assert "nothing to do" in _cli("voxels", "--synthetic", "6", "-o", str(v), *VOXEL_ARGS, "--seed", "3")
    assert "nothing to do" in _cli("rays", str(v), "-o", str(r), *RAY_ARGS, "--adaptive", "--seed", "3")


@pytest.mark.usefixtures("threads_cluster")
def test_meshes_are_voxelized_as_trimesh_reads_them(meshes: Path, tmp_path: Path) -> None:
    v = tmp_path / "voxels.zarr"
    _cli("voxels", str(meshes / "*.stl"), "-o", str(v), *VOXEL_ARGS)
    vox = xr.open_zarr(v)
    meta = zarr.open_group(str(v)).attrs["zarrforge"]
    assert meta["names"] == ["a_sphere", "b_box", "c_torus"]
    assert [Path(s["path"]).name for s in meta["sources"]] == ["a_sphere.stl", "b_box.stl", "c_torus.stl"]
    assert all(s["watertight"] for s in meta["sources"])
    for obj, name in enumerate(meta["names"]):
        expected = voxelize_mesh(*read_mesh(meshes / f"{name}.stl"), 16)
        np.testing.assert_array_equal(vox["subvolumes_0"].values[vox["map_0"].values[obj, 0, 0, 0]], expected)
    assert 0 < vox["occupancy"].values.min() < 1


@pytest.mark.parametrize("pipeline", ["voxels", "rays"])
def test_same_seed_same_bytes_whatever_the_workers(tmp_path: Path, pipeline: str) -> None:
    source = tmp_path / "source.zarr"
    settings = {"zarrforge.local.processes": False, "zarrforge.local.dashboard-address": "127.0.0.1:0"}
    small = {"zarrforge.store.chunk-bytes": 512, "zarrforge.store.shard-bytes": 2048}  # several blocks per axis
    if pipeline == "rays":
        with dask.config.set(settings):
            run_voxels(None, source, synthetic=5, resolution=16, min_resolution=4, seed=1, progress=False)
    stores = []
    for workers, threads in ((1, 1), (2, 2)):
        out = tmp_path / f"{workers}-{threads}.zarr"
        with dask.config.set(
            {
                **settings,
                **small,
                "zarrforge.local.n-workers": workers,
                "zarrforge.local.threads-per-worker": threads,
            }
        ):
            if pipeline == "voxels":
                run_voxels(None, out, synthetic=5, resolution=16, min_resolution=4, seed=1, progress=False)
            else:
                run_rays(
                    source, out, sphere_divisions=1, samples_per_view=8, adaptive=True, seed=1, progress=False
                )
        stores.append(out)
        assert n_blocks(out) > 3
    assert_stores_identical(*stores)


def n_blocks(path: Path) -> int:
    return int(zarr.open_group(str(path)).attrs["zarrforge"]["n_blocks"])


@pytest.mark.slow
def test_rays_resume_after_a_kill_recomputes_nothing_finished(tmp_path: Path) -> None:
    """SIGKILL mid-run, then the same command: finished blocks are kept, the store equals a clean run."""
    v = tmp_path / "voxels.zarr"
    env = {
        **os.environ,
        "DASK_ZARRFORGE__LOCAL__DASHBOARD_ADDRESS": "127.0.0.1:0",
        "DASK_ZARRFORGE__STORE__CHUNK_BYTES": str(16 * 1024),
        "DASK_ZARRFORGE__STORE__SHARD_BYTES": str(32 * 1024),
    }
    prefix = [sys.executable, "-m", "engine"]
    subprocess.run([*prefix, "voxels", "--synthetic", "8", "-o", str(v), *VOXEL_ARGS], env=env, check=True)
    args = ["--sphere-divisions", "1", "--samples-per-view", "8", "--views-per-subvolume", "all"]
    clean, out = tmp_path / "clean.zarr", tmp_path / "killed.zarr"
    subprocess.run([*prefix, "rays", str(v), "-o", str(clean), *args], env=env, check=True, capture_output=True)
    total = n_blocks(clean)
    proc = subprocess.Popen(
        [*prefix, "rays", str(v), "-o", str(out), *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while finished_block_files(out) < max(2, total // 3) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = finished_block_files(out)
    if done_before >= total:
        pytest.skip("the run finished before it could be killed")
    ledger = out / ".zarrforge" / "ledger" / "c"
    finished = {f.name: f.stat().st_mtime_ns for f in ledger.iterdir() if not f.name.endswith(".partial")}
    resumed = subprocess.run(
        [*prefix, "rays", str(v), "-o", str(out), *args], env=env, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr
    for name, mtime in finished.items():
        assert (ledger / name).stat().st_mtime_ns == mtime  # not redone
    assert_stores_identical(out, clean)


# ------------------------------------------------------------------------------------------ bad input
@pytest.mark.usefixtures("threads_cluster")
def test_bad_parameters_are_one_line_errors_and_write_nothing(tmp_path: Path) -> None:
    out = tmp_path / "x.zarr"
    base = ["voxels", "--synthetic", "2", "-o", str(out)]
    assert "power of two" in _fails(*base, "--resolution", "48")
    assert "power of two" in _fails(*base, "--resolution", "64", "--min-resolution", "3")
    assert "above the resolution" in _fails(*base, "--resolution", "16", "--min-resolution", "32")
    assert "sum to 1" in _fails(*base, "--split", "0.8,0.3,0")
    assert "at least 1" in _fails("voxels", "--synthetic", "0", "-o", str(out))
    assert not out.exists()
    result = CliRunner().invoke(main, ["voxels", "-o", str(out)])
    assert result.exit_code == 2 and "--synthetic" in result.output


@pytest.mark.usefixtures("threads_cluster")
def test_bad_meshes_are_named(
    meshes: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "x.zarr"
    (meshes / "d_empty.stl").write_bytes(b"")
    assert "d_empty.stl" in _fails("voxels", str(meshes / "*.stl"), "-o", str(out))
    (meshes / "d_empty.stl").write_text("solid empty\nendsolid empty\n")
    line = _fails("voxels", str(meshes / "*.stl"), "-o", str(out))
    assert "d_empty.stl" in line and "empty" in line
    (meshes / "d_empty.stl").unlink()
    (meshes / "e_broken.obj").write_text("v 0 0 0\nv nan 1 0\nv 0 1 1\nf 1 2 3\n")
    assert "e_broken.obj" in _fails("voxels", str(meshes / "*"), "-o", str(out))
    (meshes / "e_broken.obj").unlink()
    assert "no files match" in _fails("voxels", str(tmp_path / "none" / "*.stl"), "-o", str(out))
    assert not out.exists()
    # Not watertight: voxelized by the documented fallback, with a warning naming the file.
    box = trimesh.creation.box()
    trimesh.Trimesh(box.vertices, box.faces[2:]).export(meshes / "d_open.stl")
    monkeypatch.setattr(logging.getLogger("storage"), "propagate", True)  # the CLI runs above turned it off
    with caplog.at_level(logging.WARNING, logger="storage"):
        run_voxels(meshes, out, resolution=8, min_resolution=4, progress=False)
    assert any("d_open.stl" in r.getMessage() and "not watertight" in r.getMessage() for r in caplog.records)
    sources = zarr.open_group(str(out)).attrs["zarrforge"]["sources"]
    assert [s["watertight"] for s in sources] == [True, True, True, False]


@pytest.mark.usefixtures("threads_cluster")
def test_rays_from_another_voxel_store_are_refused(tmp_path: Path) -> None:
    from torch_bridge import VoxelRayDataset

    a, b, r = tmp_path / "a.zarr", tmp_path / "b.zarr", tmp_path / "rays.zarr"
    run_voxels(None, a, synthetic=3, resolution=8, min_resolution=4, progress=False)
    run_voxels(None, b, synthetic=3, resolution=8, min_resolution=4, seed=1, progress=False)
    run_rays(a, r, sphere_divisions=0, samples_per_view=4, progress=False)
    VoxelRayDataset(a, r)  # the pair that belongs together
    with pytest.raises(StoreMismatchError, match="was cast from the voxel store"):
        VoxelRayDataset(b, r)
    # Rebuilt with other parameters under the same path: the rays no longer match either.
    run_voxels(None, a, synthetic=4, resolution=8, min_resolution=4, overwrite=True, progress=False)
    with pytest.raises(StoreMismatchError, match="re-run zarrforge rays"):
        VoxelRayDataset(a, r)
    from storage.voxel_store import check_rays_match

    with pytest.raises(StoreMismatchError):
        check_rays_match(r, a)
    # Other bad inputs of `rays`.
    assert "not 'voxels'" in _fails("rays", str(r), "-o", str(tmp_path / "x.zarr"))
    assert "no such store" in _fails("rays", str(tmp_path / "none.zarr"), "-o", str(tmp_path / "x.zarr"))
    assert "has no level 5" in _fails("rays", str(a), "-o", str(tmp_path / "x.zarr"), "--levels", "5")
    assert "views per subvolume" in _fails(
        "rays", str(a), "-o", str(tmp_path / "x.zarr"), "--sphere-divisions", "0", "--views-per-subvolume", "13"
    )
    assert not (tmp_path / "x.zarr").exists()
    with pytest.raises(ParameterError, match="sum to 1"):
        reassign_splits(a, (0.5, 0.6, 0))
    with pytest.raises(StoreError, match="not 'voxels'"):
        reassign_splits(r, (1, 0, 0))
    with pytest.raises(SourceError):
        read_mesh(tmp_path / "a.zarr" / "zarr.json")
