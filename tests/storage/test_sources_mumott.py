"""mumott scan files: the layout check names what is missing, the container loads once per process, round trips."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest

from storage.errors import SourceError, SourceNotFoundError, ZarrforgeError
from storage.sources.mumott import import_mumott, open_mumott, read_ground_truth, write_mumott_scan

SEGMENTS = (np.arange(8) + 0.5) * np.pi / 8


def _scan(path: Path, n: int = 4) -> Path:
    rng = np.random.default_rng(0)
    write_mumott_scan(
        path,
        rng.uniform(1, 2, size=(n, 6, 5, 8)),
        inner_angles=np.linspace(0, np.pi, n, endpoint=False),
        outer_angles=np.zeros(n),
        detector_angles=SEGMENTS,
        volume_shape=(6, 6, 5),
        ground_truth={"coefficients": np.ones((6, 6, 5, 6))},
    )
    return path


def test_a_written_scan_is_checked_and_loads_in_mumott_as_written(tmp_path: Path) -> None:
    path = _scan(tmp_path / "scan.h5")
    scan = open_mumott(path)
    assert (scan.n_projections, scan.projection_shape, scan.n_segments) == (4, (6, 5), 8)
    assert scan.volume_shape == (6, 6, 5)
    assert scan.has_ground_truth and scan.record() == {"path": scan.path, "size": scan.size, "mtime": scan.mtime}
    dc = scan.container()
    with h5py.File(path) as f:
        np.testing.assert_array_equal(dc.data, np.stack([f[f"projections/{i}/data"][()] for i in range(4)]))
        np.testing.assert_allclose(dc.geometry.inner_angles, np.linspace(0, np.pi, 4, endpoint=False))
    np.testing.assert_array_equal(dc.geometry.volume_shape, [6, 6, 5])
    np.testing.assert_array_equal(read_ground_truth(path)["coefficients"], np.ones((6, 6, 5, 6)))
    assert not list(tmp_path.glob(".*.tmp"))  # the temporary file was renamed into place


def test_the_container_is_loaded_once_per_process_and_again_after_a_rewrite(tmp_path: Path) -> None:
    path = _scan(tmp_path / "scan.h5")
    scan = open_mumott(path)
    assert scan.container() is scan.container()
    assert open_mumott(path).container() is scan.container()  # keyed by path, size and mtime
    _scan(path, n=5)
    os.utime(path, (1, 1))  # a different mtime even on a coarse clock
    rewritten = open_mumott(path)
    assert len(rewritten.container().projections) == 5
    with pytest.raises(SourceError, match="changed since it was checked"):
        scan.container()  # the stale handle refuses instead of loading the new file under the old key


def _corrupt(path: Path, edit: Callable[[h5py.File], object]) -> Path:
    with h5py.File(path, "r+") as f:
        edit(f)
    return path


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda f: f.__delitem__("detector_angles"), "not a mumott scan: no /detector_angles"),
        (lambda f: f.__delitem__("projections"), "no /projections group"),
        (lambda f: f.move("projections/2", "projections/7"), "projections/2 is missing"),
        (lambda f: f.__delitem__("projections/1/diode"), "projections/1 has no diode"),
        (lambda f: f.__delitem__("projections/3/data"), "projections/3 has no data"),
        (
            lambda f: (f.__delitem__("projections/0/inner_angle"), f.__delitem__("projections/0/outer_angle")),
            "projections/0 has no rotation",
        ),
        (
            lambda f: (f.__delitem__("detector_angles"), f.create_dataset("detector_angles", data=np.zeros(3))),
            "not \\(J, K, 3\\)",
        ),
    ],
    ids=["no-detector-angles", "no-projections", "gap", "no-diode", "no-data", "no-rotation", "segments"],
)
def test_files_not_in_mumotts_layout_get_one_line_naming_the_file_and_what_is_missing(
    tmp_path: Path, edit: Callable[[h5py.File], object], message: str
) -> None:
    path = _corrupt(_scan(tmp_path / "bad.h5"), edit)
    with pytest.raises(SourceError, match=message) as info:
        open_mumott(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_a_file_that_is_not_hdf5_or_absent_is_refused(tmp_path: Path) -> None:
    (tmp_path / "scan.h5").write_bytes(b"not hdf5 at all")
    with pytest.raises(SourceError, match="not an HDF5 file"):
        open_mumott(tmp_path / "scan.h5")
    with pytest.raises(SourceNotFoundError, match="no such file"):
        open_mumott(tmp_path / "absent.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["entry/data"] = np.zeros(3)
    with pytest.raises(SourceError, match=r"other\.h5: not a mumott scan"):
        open_mumott(tmp_path / "other.h5")


def test_importing_mumott_leaves_the_root_logger_and_stdout_alone() -> None:
    """mumott configures the root logger at import (INFO to stdout); import_mumott prevents it."""
    code = (
        "import logging; from storage.sources.mumott import import_mumott; import_mumott(); "
        "import mumott; root = logging.getLogger(); print(root.handlers, root.level)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"[] {logging.WARNING}"


def test_a_missing_mumott_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mumott", None)  # what an absent package looks like to ``import``
    with pytest.raises(ImportError, match=r'pip install "zarrforge\[mumott\]"') as raised:
        import_mumott()
    assert isinstance(raised.value, ZarrforgeError)  # so the CLI prints it as one line, "Error: ..."
