"""Shared fixtures: synthetic micrographs made by the project, and the real files of ../shared/data/real."""

from __future__ import annotations

import os
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


def require(feature: str, missing: str | None) -> None:
    """Skip the calling test loudly when ``missing`` says what it lacks, or fail it where the run requires it.

    ``ZARRFORGE_REQUIRE`` (comma-separated features, e.g. ``slurm,browser``; ``.ci/run`` sets it after installing
    them) turns the skip into a failure, so CI never passes with those tests silently skipped.
    """
    if missing is None:
        return
    required = {f.strip() for f in os.environ.get("ZARRFORGE_REQUIRE", "").split(",") if f.strip()}
    message = f"{feature} unavailable: {missing}"
    if feature in required:
        pytest.fail(f"{message} (ZARRFORGE_REQUIRE={','.join(sorted(required))})", pytrace=False)
    pytest.skip(message)


@pytest.fixture
def require_feature():  # type: ignore[no-untyped-def]
    """:func:`require` as a fixture: ``require_feature("slurm", None if ok else "why not")``."""
    return require
