from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from engine.cli import main
from storage.synthetic import write_micrographs
from storage.testing import store_files


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def good_store(micrograph_dir: Path, tmp_path: Path, threads_cluster: None) -> Path:
    out = tmp_path / "train.zarr"
    code, stdout, _ = run(
        "patches", f"{micrograph_dir}/*.mrc", "-o", str(out), "--size", "64", "--stride", "64", "-q"
    )
    assert code == 0, stdout
    assert "wrote 48 samples" in stdout and str(out) in stdout
    return out


def test_patches_then_info(good_store: Path):
    code, stdout, _ = run("info", str(good_store))
    assert code == 0
    assert "patches store, 48 samples, complete" in stdout
    assert "patches" in stdout and "(sample, patch_y, patch_x)" in stdout and "BloscCodec+Crc32cCodec" in stdout
    assert "size=64, stride=64" in stdout
    code, stdout, _ = run("info", str(good_store), "--json")
    info = json.loads(stdout)
    assert info["arrays"]["patches"]["shape"] == [48, 64, 64]
    assert info["blocks_done"] == info["blocks_total"]


def _bad_inputs(folder: Path) -> dict[str, tuple[list[str], str]]:
    """name -> (patches arguments before -o, text the error must contain)."""
    folder.mkdir()
    write_micrographs(folder / "ok", 2, (200, 200))
    truncated = folder / "truncated.mrc"
    truncated.write_bytes((folder / "ok" / "micrograph_0000.mrc").read_bytes()[:50_000])
    (folder / "text.mrc").write_text("this is not an MRC file\n" * 100)
    with h5py.File(folder / "scan.h5", "w") as f:
        f["entry/data/data"] = np.zeros((2, 50, 50), np.float32)
    ok = str(folder / "ok" / "*.mrc")
    return {
        "missing file": ([str(folder / "nope.mrc"), "--size", "32"], "nope.mrc"),
        "empty glob": ([str(folder / "none" / "*.mrc"), "--size", "32"], "no files match"),
        "truncated": ([str(truncated), "--size", "32"], "truncated.mrc"),
        "not an MRC": ([str(folder / "text.mrc"), "--size", "32"], "text.mrc"),
        "wrong dataset": ([str(folder / "scan.h5"), "--dataset", "/entry/nope", "--size", "32"], "/entry/nope"),
        "size too large": ([ok, "--size", "500"], "size 500"),
        "stride 0": ([ok, "--size", "32", "--stride", "0"], "stride"),
        "bin too large": ([ok, "--size", "32", "--bin", "1000"], "bin"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "missing file",
        "empty glob",
        "truncated",
        "not an MRC",
        "wrong dataset",
        "size too large",
        "stride 0",
        "bin too large",
    ],
)
def test_bad_input_is_one_line_and_leaves_the_store_alone(case: str, good_store: Path, tmp_path: Path):
    args, expected = _bad_inputs(tmp_path / "bad")[case]
    before = store_files(good_store)
    code, _, stderr = run("patches", *args, "-o", str(good_store), "-q")
    assert code == 1
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), stderr
    assert expected in lines[0]
    assert "Traceback" not in stderr
    assert store_files(good_store) == before


def test_output_that_is_not_a_store_is_refused_and_untouched(micrograph_dir: Path, tmp_path: Path):
    folder = tmp_path / "precious"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    code, _, stderr = run("patches", str(micrograph_dir), "-o", str(folder), "--size", "64")
    assert code == 1 and "not a zarrforge store" in stderr and str(folder) in stderr
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]
    a_file = tmp_path / "file.zarr"
    a_file.write_text("x")
    code, _, stderr = run("patches", str(micrograph_dir), "-o", str(a_file), "--size", "64")
    assert code == 1 and "is a file" in stderr and a_file.read_text() == "x"


def test_nan_pixels_name_the_file(tmp_path: Path, threads_cluster: None):
    import mrcfile

    paths = write_micrographs(tmp_path / "mics", 2, (128, 128))
    data = mrcfile.read(paths[1]).copy()
    data[70, 3] = np.nan
    with warnings.catch_warnings():  # mrcfile warns about NaNs while computing header statistics
        warnings.simplefilter("ignore", RuntimeWarning)
        with mrcfile.new(paths[1], overwrite=True) as mrc:
            mrc.set_data(data)
    code, _, stderr = run("patches", str(tmp_path / "mics"), "-o", str(tmp_path / "t.zarr"), "--size", "64", "-q")
    assert code == 1 and "micrograph_0001.mrc" in stderr and "NaN" in stderr


def test_usage_error_exits_2():
    code, _, stderr = run("patches", "x.mrc", "-o", "y.zarr")  # --size missing
    assert code == 2 and "--size" in stderr


def test_python_dash_m_engine_is_the_same_command():
    out = subprocess.run([sys.executable, "-m", "engine", "--help"], capture_output=True, text=True, check=True)
    assert "patches" in out.stdout and "demo" in out.stdout and "info" in out.stdout


def test_config_prints_effective_settings():
    code, stdout, err = run("config")
    assert code == 0, err
    assert json.loads(stdout)["store"]["codec"] == "blosc-lz4"
