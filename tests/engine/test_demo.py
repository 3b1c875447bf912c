from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import xarray as xr


def test_demo_runs_end_to_end_from_the_command_line(tmp_path: Path):
    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "engine", "demo", "-o", str(out), "--micrographs", "3", "--shape", "384"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert "generating 3 synthetic micrographs" in text
    assert "wrote 75 samples" in text  # 3 × 5 × 5 windows of 128 every 64 px in 384²
    assert "first patch matches its source pixels" in text
    assert "dashboard: http://127.0.0.1:" in done.stderr
    ds = xr.open_zarr(out / "train.zarr")
    assert ds.sizes["sample"] == 75 and ds.attrs["zarrforge"]["complete"]
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)  # re-run: nothing to redo
    assert again.returncode == 0 and "using the 3 micrographs already" in again.stdout
    assert "complete, nothing to do" in again.stdout
