"""zarrforge picking end to end: both storage modes from the command line, splits, counts, resume, bad input."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import starfile
import torch
import xarray as xr
import zarr
from click.testing import CliRunner

from engine.cli import main
from engine.pipelines import run_picking
from graphs.picking import SAMPLE_TYPES, SPLITS
from storage.errors import SourceError, StoreError
from storage.synthetic import write_micrographs, write_picking_set
from storage.testing import assert_stores_identical, finished_block_files, verify_store
from torch_bridge import ZarrDataset

ARGS = ["--size", "64", "--stride", "32", "--radius", "10", "--negative-ratio", "0.3", "--split", "0.5,0.25,0.25"]


@pytest.fixture
def picking_set(tmp_path: Path) -> Path:
    """Eight 300 × 260 synthetic micrographs and their true particle centers as RELION .star files."""
    write_picking_set(tmp_path / "set", 8, (300, 260), seed=3, n_particles=12)
    return tmp_path / "set"


def _run(args: list[str]) -> str:
    result = CliRunner().invoke(main, ["picking", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def _picking(set_dir: Path, out: Path, *extra: str) -> list[str]:
    return [str(set_dir / "micrographs" / "*.mrc"), "--picks", str(set_dir / "picks" / "*.star"), "-o", str(out)]


@pytest.mark.usefixtures("threads_cluster")
def test_both_modes_hold_the_same_samples(picking_set: Path, tmp_path: Path) -> None:
    """Materialized patches equal the virtual store's windows cut by ZarrDataset, sample for sample."""
    _run([*_picking(picking_set, tmp_path / "m.zarr"), *ARGS])
    _run([*_picking(picking_set, tmp_path / "v.zarr"), *ARGS, "--mode", "virtual"])
    verify_store(tmp_path / "m.zarr")
    verify_store(tmp_path / "v.zarr")
    m = xr.open_zarr(tmp_path / "m.zarr")
    v = xr.open_zarr(tmp_path / "v.zarr")
    for name in ("source_index", "y0", "x0", "label", "sample_type", "split"):
        np.testing.assert_array_equal(m[name].values, v[name].values)
        assert m[name].dtype == (np.int8 if name in ("label", "sample_type", "split") else np.int32)
    assert set(m.variables) - set(v.variables) == {"patches"}
    assert set(v.variables) - set(m.variables) == {"micrographs", "micrograph_index"}
    assert {"label", "sample_type", "split", "y0"} <= set(m.patches.coords)  # per-sample metadata as coords
    # The patches are the normalized micrograph's windows, in both modes.
    dm = ZarrDataset(tmp_path / "m.zarr", arrays=["patches"])
    dv = ZarrDataset(tmp_path / "v.zarr", arrays=["patches"])
    idx = list(range(len(dm)))
    np.testing.assert_array_equal(dm.__getitems__(idx).stacked["patches"], dv.__getitems__(idx).stacked["patches"])
    mics = v.micrographs.values
    for i in (0, len(dm) // 2, len(dm) - 1):
        j, y, x = int(v.micrograph_index[i]), int(v.y0[i]), int(v.x0[i])
        np.testing.assert_array_equal(m.patches.values[i], mics[j, y : y + 64, x : x + 64])
    # Labels follow the picks: a positive window has a particle center within the radius of its center.
    picks = {p.stem: starfile.read(p) for p in sorted((picking_set / "picks").glob("*.star"))}
    sources = [
        Path(s["path"]).stem for s in zarr.open_group(str(tmp_path / "m.zarr")).attrs["zarrforge"]["sources"]
    ]
    for i in range(len(dm)):
        table = picks[sources[int(m.source_index[i])]]
        cy, cx = int(m.y0[i]) + 32, int(m.x0[i]) + 32
        d2 = (table["rlnCoordinateY"] - cy) ** 2 + (table["rlnCoordinateX"] - cx) ** 2
        assert int(m.label[i]) == int((d2 <= 100).any())


@pytest.mark.usefixtures("threads_cluster")
def test_splits_are_by_micrograph_and_open_as_datasets(picking_set: Path, tmp_path: Path) -> None:
    _run([*_picking(picking_set, tmp_path / "m.zarr"), *ARGS])
    ds = xr.open_zarr(tmp_path / "m.zarr")
    split, source = ds.split.values, ds.source_index.values
    for s in SPLITS.values():
        others = set(source[split != s])
        assert not set(source[split == s]) & others  # no micrograph in two splits
    assert [len(set(source[split == s])) for s in SPLITS.values()] == [4, 2, 2]
    assert (np.diff(split) >= 0).all()  # stored train, then val, then test
    total = 0
    for name, code in SPLITS.items():
        view = ZarrDataset(tmp_path / "m.zarr", split=name, return_metadata=True)
        total += len(view)
        assert {view[i]["meta"]["split"] for i in range(len(view))} == {code}
        bounds = [view.chunk_bounds(k) for k in range(view.n_chunks)]
        assert bounds[0][0] == 0 and bounds[-1][1] == len(view)
    assert total == ds.sizes["sample"]
    with pytest.raises(ValueError, match="has splits train, val, test"):
        ZarrDataset(tmp_path / "m.zarr", split="holdout")


@pytest.mark.usefixtures("threads_cluster")
def test_counts_and_info(picking_set: Path, tmp_path: Path) -> None:
    # Micrograph 7 has no pick file: its windows are unlabeled.
    (picking_set / "picks" / "micrograph_0007.star").unlink()
    out = _run([*_picking(picking_set, tmp_path / "m.zarr"), *ARGS])
    assert "wrote" in out
    ds = xr.open_zarr(tmp_path / "m.zarr")
    counts = zarr.open_group(str(tmp_path / "m.zarr")).attrs["zarrforge"]["counts"]
    for name, code in SPLITS.items():
        in_split = ds.split.values == code
        assert counts[name]["samples"] == int(in_split.sum())
        for kind, value in SAMPLE_TYPES.items():
            assert counts[name][kind] == int((in_split & (ds.sample_type.values == value)).sum())
    unlabeled = ds.sample_type.values == SAMPLE_TYPES["unlabeled"]
    assert unlabeled.any() and (ds.label.values[unlabeled] == 0).all()
    assert counts["unmatched"]["micrographs_without_picks"] == 1
    info = CliRunner().invoke(main, ["info", str(tmp_path / "m.zarr")])
    assert info.exit_code == 0, info.output
    assert "train" in info.output and "positive" in info.output and "unlabeled" in info.output


def test_negative_ratio_keeps_every_positive_and_a_share_of_the_rest(picking_set: Path, tmp_path: Path) -> None:
    samples = {}
    for ratio in (0.1, 0.5, 1.0):
        out = tmp_path / f"r{ratio}.zarr"
        with _threads():
            run_picking(
                str(picking_set / "micrographs" / "*.mrc"),
                str(picking_set / "picks" / "*.star"),
                out,
                size=64,
                stride=32,
                radius=10,
                negative_ratio=ratio,
                progress=False,
            )
        ds = xr.open_zarr(out)
        samples[ratio] = (int((ds.label == 1).sum()), int((ds.label == 0).sum()))
    positives = {p for p, _ in samples.values()}
    assert len(positives) == 1  # positives are always kept
    all_negatives = samples[1.0][1]
    for ratio in (0.1, 0.5):
        # round(ratio * negatives) per micrograph: within one per micrograph of the total share
        assert abs(samples[ratio][1] - ratio * all_negatives) <= 8


def _threads():  # type: ignore[no-untyped-def]
    import dask.config

    return dask.config.set(
        {
            "zarrforge.local.processes": False,
            "zarrforge.local.n-workers": 1,
            "zarrforge.local.threads-per-worker": 2,
            "zarrforge.local.dashboard-address": "127.0.0.1:0",
        }
    )


@pytest.mark.parametrize("mode", ["materialized", "virtual"])
def test_same_seed_same_bytes_whatever_the_workers(picking_set: Path, tmp_path: Path, mode: str) -> None:
    import dask.config

    stores = []
    for workers, threads in ((1, 1), (1, 2)):
        out = tmp_path / f"{mode}-{workers}-{threads}.zarr"
        with dask.config.set(
            {
                "zarrforge.local.processes": False,
                "zarrforge.local.n-workers": workers,
                "zarrforge.local.threads-per-worker": threads,
                "zarrforge.local.dashboard-address": "127.0.0.1:0",
                "zarrforge.store.chunk-bytes": 4 * 64 * 64 * 4,
                "zarrforge.store.shard-bytes": 16 * 64 * 64 * 4,
            }
        ):
            _run([*_picking(picking_set, out), *ARGS, "--mode", mode, "--seed", "5"])
        stores.append(out)
    assert_stores_identical(*stores)


def test_resume_after_a_kill_recomputes_nothing_finished(
    picking_set: Path, tmp_path: Path, many_blocks_env: dict[str, str]
) -> None:
    """SIGKILL mid-run, then the same command: finished blocks stay as they were, the store equals a clean run."""
    import os
    import signal
    import time

    out, clean = tmp_path / "killed.zarr", tmp_path / "clean.zarr"
    write_picking_set(picking_set, 16, (300, 260), seed=3, n_particles=12, first=8)  # more blocks
    prefix = [sys.executable, "-m", "engine", "picking"]
    cmd = [*prefix, *_picking(picking_set, out), *ARGS]
    env = {**os.environ, **many_blocks_env}
    subprocess.run([*prefix, *_picking(picking_set, clean), *ARGS], env=env, check=True, capture_output=True)
    total = len(list((clean / ".zarrforge" / "ledger" / "c").iterdir()))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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
    shards = {p: p.stat().st_mtime_ns for p in (out / "patches" / "c").iterdir()}
    resumed = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "blocks already done" in resumed.stdout
    for name, mtime in finished.items():
        assert (ledger / name).stat().st_mtime_ns == mtime
    kept = [p for p in shards if p.exists() and p.stat().st_mtime_ns == shards[p]]
    assert len(kept) >= done_before - 1  # finished shards were not rewritten
    assert_stores_identical(out, clean)


# ------------------------------------------------------------------------------------------ bad input
@pytest.mark.usefixtures("threads_cluster")
def test_bad_parameters_are_one_line_errors(picking_set: Path, tmp_path: Path) -> None:
    base = _picking(picking_set, tmp_path / "x.zarr")
    cases = {
        ("--radius", "0"): "radius must be a positive number",
        ("--radius", "-3"): "radius must be a positive number",
        ("--negative-ratio", "1.5"): "negative ratio must be between 0 and 1",
        ("--split", "0.8,0.1,0.2"): "sum to 1",
        ("--split", "0.8,0.2"): "three numbers",
        ("--profile", "nope"): "no picking profile 'nope'",
    }
    for extra, message in cases.items():
        result = CliRunner().invoke(main, ["picking", *base, "--size", "64", *extra])
        assert result.exit_code == 1, (extra, result.output)
        assert message in result.output, (extra, result.output)
        assert len(result.output.strip().splitlines()[-1]) < 300
    assert not (tmp_path / "x.zarr").exists()  # nothing was written


@pytest.mark.usefixtures("threads_cluster")
def test_pick_file_problems(
    picking_set: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logging.getLogger("engine"), "propagate", True)  # a CLI test in this process cut it
    picks = picking_set / "picks"
    # Picks outside the micrograph and a pick file naming no micrograph: warnings with counts.
    table = starfile.read(picks / "micrograph_0000.star")
    table.loc[0, "rlnCoordinateX"] = 5000.0
    table.loc[1, "rlnCoordinateY"] = -40.0
    starfile.write(table, picks / "micrograph_0000.star", overwrite=True)
    shutil.copy(picks / "micrograph_0001.star", picks / "other_0001.star")
    starfile.write(table.assign(rlnMicrographName="elsewhere.mrc"), picks / "other_0001.star", overwrite=True)
    with caplog.at_level(logging.WARNING, logger="engine"):
        run_picking(
            str(picking_set / "micrographs" / "*.mrc"),
            str(picks / "*.star"),
            tmp_path / "ok.zarr",
            size=64,
            stride=32,
            radius=10,
            negative_ratio=0.3,
            progress=False,
        )
    text = caplog.text
    assert "2 picks lie outside their 300 × 260 micrograph" in text
    assert "12 picks name no micrograph given (elsewhere)" in text
    counts = zarr.open_group(str(tmp_path / "ok.zarr")).attrs["zarrforge"]["counts"]["unmatched"]
    assert counts["picks_outside_micrograph"] == 2 and counts["picks_without_micrograph"] == 12

    # NaN coordinates and missing columns: errors naming the file, before anything is written.
    bad = tmp_path / "bad"
    shutil.copytree(picks, bad)
    starfile.write(table.assign(rlnCoordinateX=np.nan), bad / "micrograph_0002.star", overwrite=True)
    with pytest.raises(SourceError, match=r"micrograph_0002.star.*NaN"):
        run_picking(
            str(picking_set / "micrographs" / "*.mrc"),
            str(bad / "*.star"),
            tmp_path / "nan.zarr",
            size=64,
            radius=10,
            negative_ratio=0.3,
            progress=False,
        )
    starfile.write(table.drop(columns=["rlnCoordinateY"]), bad / "micrograph_0002.star", overwrite=True)
    with pytest.raises(SourceError, match=r"micrograph_0002.star"):
        run_picking(
            str(picking_set / "micrographs" / "*.mrc"),
            str(bad / "*.star"),
            tmp_path / "col.zarr",
            size=64,
            radius=10,
            negative_ratio=0.3,
            progress=False,
        )
    assert not (tmp_path / "nan.zarr").exists() and not (tmp_path / "col.zarr").exists()


def test_duplicate_micrograph_names_are_refused(tmp_path: Path) -> None:
    write_micrographs(tmp_path / "a", 1, (128, 128))
    write_micrographs(tmp_path / "b", 1, (128, 128))
    (tmp_path / "p.csv").write_text("x,y\n10,10\n")
    with pytest.raises(SourceError, match="names must be unique"):
        run_picking(
            [str(tmp_path / "a"), str(tmp_path / "b")],
            str(tmp_path / "p.csv"),
            tmp_path / "o.zarr",
            size=64,
            radius=10,
            negative_ratio=0.3,
            progress=False,
        )


def test_existing_store_is_untouched_by_a_bad_rerun(picking_set: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.zarr"
    with _threads():
        _run([*_picking(picking_set, out), *ARGS])
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != "write.lock"}
    result = CliRunner().invoke(main, ["picking", *_picking(picking_set, out), *ARGS[:-2], "--split", "1,1,1"])
    assert result.exit_code == 1
    mismatch = CliRunner().invoke(main, ["picking", *_picking(picking_set, out), *ARGS, "--radius", "12"])
    assert mismatch.exit_code == 1 and "other parameters" in mismatch.output
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != "write.lock"} == before
    with pytest.raises(StoreError):
        ZarrDataset(tmp_path / "nothing.zarr")


# ------------------------------------------------------------------------------------------ profiles
@pytest.mark.usefixtures("threads_cluster")
def test_profiles_and_paths_from_config(picking_set: Path, tmp_path: Path) -> None:
    import dask.config

    with dask.config.set(
        {
            "zarrforge.picking.micrographs": str(picking_set / "micrographs" / "*.mrc"),
            "zarrforge.picking.picks": str(picking_set / "picks"),
            "zarrforge.picking.profiles": {
                "tiny": {"size": 64, "stride": 64, "radius": 12, "negative-ratio": 1.0}
            },
        }
    ):
        _run(["-o", str(tmp_path / "p.zarr"), "--profile", "tiny", "--stride", "32"])
    params = zarr.open_group(str(tmp_path / "p.zarr")).attrs["zarrforge"]["parameters"]
    assert (params["size"], params["stride"], params["radius"], params["negative_ratio"]) == (64, 32, 12.0, 1.0)


# ------------------------------------------------------------------------------------------ real data
@pytest.mark.real_data
@pytest.mark.usefixtures("threads_cluster")
def test_real_micrograph_and_relion_picks(real_data: Path, tmp_path: Path) -> None:
    folder = real_data / "cryoem-ucsf-micrograph"
    _run(
        [
            str(folder / "*.mrc"),
            "--picks",
            str(folder / "*.star"),
            "-o",
            str(tmp_path / "r.zarr"),
            "--size",
            "128",
            "--stride",
            "64",
            "--radius",
            "40",
            "--negative-ratio",
            "0.5",
            "--split",
            "1,0,0",
        ]
    )
    ds = xr.open_zarr(tmp_path / "r.zarr")
    assert int((ds.label == 1).sum()) > 10 and int((ds.sample_type == 2).sum()) == 0
    patches = torch.as_tensor(ds.patches.values)
    assert torch.isfinite(patches).all() and abs(float(patches.mean())) < 0.5


@pytest.mark.real_data
@pytest.mark.usefixtures("threads_cluster")
def test_real_box_picks_on_a_stand_in_micrograph(real_data: Path, tmp_path: Path) -> None:
    """ASPIRE's EMAN .box (lower-left corners of 256-pixel boxes) drives the labels as centers = corner + 128.

    The box file's micrograph (4096² Falcon, EMPIAR-10017) is not shipped: a blank stand-in of that size and name
    takes its place, binned 4× (picks stay in source pixels).
    """
    import mrcfile

    mics = tmp_path / "mics"
    mics.mkdir()
    with mrcfile.new(mics / "sample.mrc") as mrc:
        mrc.set_data(np.zeros((4096, 4096), dtype=np.int8))
    box = real_data / "picks-formats" / "aspire" / "sample.box"
    run_picking(
        str(mics),
        str(box),
        tmp_path / "b.zarr",
        size=64,
        stride=32,
        radius=60,
        negative_ratio=0.0,
        bin=4,
        split=(1, 0, 0),
        progress=False,
    )
    ds = xr.open_zarr(tmp_path / "b.zarr")
    corners = np.loadtxt(box)[:, :2]
    centers = corners + 128  # (x, y) of the box centers
    cy = ds.y0.values + 128  # a 64-pixel window of the 4× binned image spans 256 source pixels
    cx = ds.x0.values + 128
    d2 = (centers[None, :, 1] - cy[:, None]) ** 2 + (centers[None, :, 0] - cx[:, None]) ** 2
    assert (d2.min(axis=1) <= 60**2).all()  # every kept window is positive (ratio 0 keeps no negative)
    ny = nx = (1024 - 64) // 32 + 1
    grid_y, grid_x = np.meshgrid((np.arange(ny) * 32 + 32) * 4.0, (np.arange(nx) * 32 + 32) * 4.0, indexing="ij")
    dy = centers[None, :, 1] - grid_y.reshape(-1, 1)
    dx = centers[None, :, 0] - grid_x.reshape(-1, 1)
    d2_all = dy**2 + dx**2
    assert ds.sizes["sample"] == int((d2_all.min(axis=1) <= 60**2).sum()) > 100
