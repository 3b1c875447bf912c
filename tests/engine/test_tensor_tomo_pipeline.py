"""zarrforge tensor-tomo end to end: synthetic scan, store layout, determinism, resume, re-runs, bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import dask.config
import h5py
import numpy as np
import pytest
import xarray as xr
from click.testing import CliRunner

import graphs.tensor_tomo as tt
from engine.cli import main
from engine.errors import RunError
from engine.pipelines import run_tensor_tomo, write_synthetic_scan
from graphs.tensor_tomo import ReconstructionSettings, draw_projections, reconstruct
from storage.sources.mumott import MumottScan, open_mumott
from storage.store import TrainingStore
from storage.testing import assert_stores_identical, verify_store
from torch_bridge import ReconstructionDataset, coefficient_subset

# Tiny: 8³, ell_max 2 (6 coefficients), few projections and iterations.
RUN = ["--ell-max", "2", "--num-projections", "6", "--num-samples", "4", "--maxiter", "4", "--maxfun", "8"]
KWARGS = {"ell_max": 2, "num_projections": 6, "num_samples": 4, "maxiter": 4, "maxfun": 8, "device": "cpu"}


@pytest.fixture(scope="module")
def scan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("scan") / "scan.h5"
    result = CliRunner().invoke(
        main,
        ["tensor-tomo", "--synthetic", "8", "--synthetic-projections", "20", "--ell-max", "2", "-o", str(path)],
    )
    assert result.exit_code == 0, result.output
    assert "wrote a synthetic 8³ scan: 20 projections of 8 × 8 pixels, 8 segments" in result.output
    return path


def _cli(*args: str) -> str:
    result = CliRunner().invoke(main, ["tensor-tomo", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.usefixtures("threads_cluster")
def test_the_cli_writes_one_reconstruction_per_sample_as_mumott_makes_it(scan: Path, tmp_path: Path) -> None:
    out = tmp_path / "recon.zarr"
    assert "wrote 4 samples" in _cli(str(scan), "-o", str(out), *RUN, "--seed", "42", "--device", "cpu")
    assert verify_store(out) == 4 * 5  # one chunk per sample and array
    ds = xr.open_zarr(out)
    assert ds.reconstructions.dims == ("sample", "x", "y", "z", "coefficient")
    assert ds.reconstructions.shape == (4, 8, 8, 8, 6) and ds.reconstructions.dtype == np.float32
    assert ds.reconstructions.encoding["chunks"] == (1, 8, 8, 8, 6)
    assert ds.projection_indices.dims == ("sample", "projection") and ds.projection_indices.shape == (4, 6)
    for name, dtype in (("final_loss", np.float64), ("iterations", np.int32), ("evaluations", np.int32)):
        assert ds[name].dims == ("sample",) and ds[name].dtype == dtype
    assert ds.reconstructions.attrs["ell"] == [0, 2, 2, 2, 2, 2]
    assert ds.reconstructions.attrs["m"] == [0, -2, -1, 0, 1, 2]
    record = ds.attrs["zarrforge"]
    assert record["pipeline"] == "tensor-tomo" and record["seed"] == 42
    params = record["parameters"]
    assert [params[k] for k in ("ell_max", "regularization_weight", "maxiter", "maxfun")] == [2, 10.0, 4, 8]
    assert params["basis"] == "SphericalHarmonics" and params["optimizer"] == "L-BFGS-B"
    assert params["device"] == "cpu" and record["sources"][0]["path"] == str(scan.absolute())
    scan_info = open_mumott(scan)
    settings = ReconstructionSettings(ell_max=2, maxiter=4, maxfun=8)
    for k in (0, 3):  # each sample is the direct reconstruction of its own subset, bit for bit
        indices = draw_projections(20, 6, 42, k)
        np.testing.assert_array_equal(ds.projection_indices.values[k], indices)
        direct = reconstruct(scan_info.container(), indices, settings)
        np.testing.assert_array_equal(ds.reconstructions.values[k], direct.coefficients.astype(np.float32))
        assert ds.final_loss.values[k] == direct.loss and ds.iterations.values[k] == direct.iterations
    assert len({tuple(row) for row in ds.projection_indices.values}) == 4
    volume, meta = coefficient_subset(ReconstructionDataset(out, return_metadata=True), ell_max=0)[3]
    np.testing.assert_array_equal(volume.numpy(), ds.reconstructions.values[3][..., :1])
    assert (meta["index"], meta["seed"], meta["iterations"]) == (3, 42, ds.iterations.values[3])


def test_the_same_run_from_python_on_one_or_two_workers_gives_the_same_bytes(scan: Path, tmp_path: Path) -> None:

    for name, threads in (("one.zarr", 1), ("two.zarr", 2)):
        with dask.config.set(
            {
                "zarrforge.local.processes": False,
                "zarrforge.local.n-workers": threads,
                "zarrforge.local.threads-per-worker": 1,
                "zarrforge.local.dashboard-address": "127.0.0.1:0",
            }
        ):
            summary = run_tensor_tomo(scan, tmp_path / name, seed=1, **KWARGS)  # type: ignore[arg-type]
        assert summary.blocks_written == 4 and len(summary.workers) == threads
    assert_stores_identical(tmp_path / "one.zarr", tmp_path / "two.zarr")


@pytest.mark.usefixtures("threads_cluster")
def test_a_failed_run_resumes_without_redoing_finished_samples(
    scan: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clean, out = tmp_path / "clean.zarr", tmp_path / "resumed.zarr"
    run_tensor_tomo(scan, clean, seed=3, **KWARGS)  # type: ignore[arg-type]
    calls: list[int] = []
    original = tt.reconstruct
    bad = draw_projections(20, 6, 3, 2).tolist()

    def failing(container: object, indices: np.ndarray, *args: object, **kwargs: object) -> tt.Reconstruction:
        calls.append(len(calls))
        if np.asarray(indices).tolist() == bad:
            raise RuntimeError("worker lost")
        return original(container, indices, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(tt, "reconstruct", failing)
    with pytest.raises(RunError, match="a block failed"), dask.config.set({"zarrforge.run.max-in-flight": 1}):
        run_tensor_tomo(scan, out, seed=3, **KWARGS)  # type: ignore[arg-type]
    done = TrainingStore.open(out).done_blocks()
    assert done == {0, 1}  # one block at a time: samples 0 and 1 were written before sample 2 failed
    calls.clear()
    monkeypatch.setattr(tt, "reconstruct", lambda *a, **k: (calls.append(1), original(*a, **k))[1])
    summary = run_tensor_tomo(scan, out, seed=3, **KWARGS)  # type: ignore[arg-type]
    assert summary.blocks_skipped == len(done) and len(calls) == 4 - len(done)  # nothing finished is redone
    assert_stores_identical(clean, out)


@pytest.mark.usefixtures("threads_cluster")
def test_a_rerun_with_other_parameters_is_refused_and_the_store_kept(scan: Path, tmp_path: Path) -> None:
    out = tmp_path / "recon.zarr"
    _cli(str(scan), "-o", str(out), *RUN)
    before = (out / "zarr.json").read_text()
    options = dict(zip(RUN[::2], RUN[1::2], strict=True))
    for option, value in (("--num-projections", "5"), ("--ell-max", "4"), ("--seed", "9"), ("--maxiter", "5")):
        args = [item for key, v in {**options, option: value}.items() for item in (key, v)]
        result = CliRunner().invoke(main, ["tensor-tomo", str(scan), "-o", str(out), *args])
        assert result.exit_code == 1, result.output
        assert "made with other parameters" in result.output and "--overwrite" in result.output
    assert (out / "zarr.json").read_text() == before
    assert "complete, nothing to do" in _cli(str(scan), "-o", str(out), *RUN)  # the same run: nothing to do


def _not_mumott(tmp_path: Path) -> Path:
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f["entry/data"] = np.zeros((3, 4, 4))
    return path


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--num-projections", "21"], "num_projections is 21, but .*scan.h5 has only 20 projections"),
        (["--num-projections", "0"], "num_projections must be a whole number >= 1, got 0"),
        (["--ell-max", "3"], "ell_max must be an even number >= 0 .* got 3"),
        (["--ell-max", "-2"], "ell_max must be an even number >= 0 .* got -2"),
        (["--num-samples", "0"], "num_samples must be a whole number >= 1"),
        (["--maxiter", "0"], "maxiter must be >= 1"),
    ],
)
def test_bad_parameters_are_one_line_errors_before_the_output_is_touched(
    scan: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    out = tmp_path / "recon.zarr"
    result = CliRunner().invoke(main, ["tensor-tomo", str(scan), "-o", str(out), *args])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert lines[-1].startswith("Error: ") and re.search(message, lines[-1]), lines
    assert not out.exists()


def test_a_file_that_is_not_a_mumott_scan_is_refused_by_name(tmp_path: Path) -> None:
    other = _not_mumott(tmp_path)
    result = CliRunner().invoke(main, ["tensor-tomo", str(other), "-o", str(tmp_path / "r.zarr")])
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1] == (
        f"Error: {other}: not a mumott scan: no /detector_angles (the detector segments' azimuths, radians)"
    )
    assert not (tmp_path / "r.zarr").exists()


def test_scan_and_synthetic_go_one_at_a_time(scan: Path, tmp_path: Path) -> None:
    both = CliRunner().invoke(main, ["tensor-tomo", str(scan), "--synthetic", "8", "-o", str(tmp_path / "x.h5")])
    assert both.exit_code == 2 and "either SCAN or --synthetic" in both.output
    neither = CliRunner().invoke(main, ["tensor-tomo", "-o", str(tmp_path / "x.zarr")])
    assert neither.exit_code == 2 and "give a SCAN file" in neither.output


def test_the_synthetic_scan_holds_its_ground_truth_and_parameters(tmp_path: Path) -> None:
    written: MumottScan = write_synthetic_scan(tmp_path / "s.h5", 6, ell_max=4, n_projections=12, seed=7)
    assert (written.n_projections, written.volume_shape, written.has_ground_truth) == (12, (6, 6, 6), True)
    with h5py.File(written.path) as f:
        assert f["ground_truth/coefficients"].shape == (6, 6, 6, 15)
        assert f["ground_truth/clean_data"].shape == (12, 6, 6, 8)
        assert "seed 7" in f.attrs["zarrforge_synthetic"]
    again = write_synthetic_scan(tmp_path / "t.h5", 6, ell_max=4, n_projections=12, seed=7)
    with h5py.File(written.path) as a, h5py.File(again.path) as b:  # the same seed, the same scan
        np.testing.assert_array_equal(a["projections/5/data"][()], b["projections/5/data"][()])


@pytest.mark.slow
def test_worker_processes_give_the_bytes_of_an_in_process_run(scan: Path, tmp_path: Path) -> None:
    """The default local cluster (worker processes, one thread each) against the in-process one."""
    with dask.config.set({"zarrforge.local.dashboard-address": "127.0.0.1:0"}):
        summary = run_tensor_tomo(scan, tmp_path / "processes.zarr", seed=5, **KWARGS)  # type: ignore[arg-type]
    assert len(summary.workers) >= 1
    with dask.config.set(
        {
            "zarrforge.local.processes": False,
            "zarrforge.local.threads-per-worker": 2,
            "zarrforge.local.dashboard-address": "127.0.0.1:0",
        }
    ):
        run_tensor_tomo(scan, tmp_path / "threads.zarr", seed=5, **KWARGS)  # type: ignore[arg-type]
    assert_stores_identical(tmp_path / "processes.zarr", tmp_path / "threads.zarr")
    info = json.loads((tmp_path / "processes.zarr" / "zarr.json").read_text())["attributes"]["zarrforge"]
    assert info["complete"] is True
