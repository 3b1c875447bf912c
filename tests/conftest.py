"""Shared fixtures: synthetic micrographs made by the project, and the real files of ../shared/data/real."""

from __future__ import annotations

from pathlib import Path

import pytest

from storage.synthetic import write_micrographs

#: Real measurements shipped beside the project (see its SOURCES.md); tests using them are marked ``real_data``.
REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"


@pytest.fixture(scope="session")
def real_data() -> Path:
    """The folder of real data files; the test is skipped when it is absent."""
    if not REAL_DATA.is_dir():
        pytest.skip(f"real data folder {REAL_DATA} is absent")
    return REAL_DATA


@pytest.fixture
def micrograph_dir(tmp_path: Path) -> Path:
    """Three small synthetic micrographs of an odd size, as MRC files."""
    write_micrographs(tmp_path / "mics", 3, (300, 260), seed=7)
    return tmp_path / "mics"
