"""Engine fixtures: an in-process cluster for fast runs, and a reference for patch contents."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import dask.config
import mrcfile
import numpy as np
import pytest


@pytest.fixture
def threads_cluster() -> Iterator[None]:
    """Run pipelines on a one-process LocalCluster (two threads): same code path, faster to start."""
    with dask.config.set(
        {
            "zarrforge.local.processes": False,
            "zarrforge.local.n-workers": 1,
            "zarrforge.local.threads-per-worker": 2,
            "zarrforge.local.dashboard-address": "127.0.0.1:0",
        }
    ):
        yield


@pytest.fixture
def small_shards() -> Iterator[None]:
    """Tiny chunks and shards, so small inputs make many blocks."""
    with dask.config.set(
        {"zarrforge.store.chunk-bytes": 2 * 64 * 64 * 4, "zarrforge.store.shard-bytes": 8 * 64 * 64 * 4}
    ):
        yield


@pytest.fixture
def many_blocks_env() -> dict[str, str]:
    """Environment of CLI runs with tiny chunks and shards: small inputs make many blocks (faults land mid-run)."""
    return {
        "DASK_ZARRFORGE__STORE__CHUNK_BYTES": str(2 * 64 * 64 * 4),
        "DASK_ZARRFORGE__STORE__SHARD_BYTES": str(8 * 64 * 64 * 4),
        "DASK_ZARRFORGE__LOCAL__DASHBOARD_ADDRESS": "127.0.0.1:0",
    }


@pytest.fixture
def patches_cli() -> Callable[[Path, Path], list[str]]:
    """``patches_cli(inputs, out)``: a ``zarrforge patches`` command line (size 64, stride 32) in a new Python."""

    def command(inputs: Path, out: Path) -> list[str]:
        return [
            sys.executable,
            "-m",
            "engine",
            "patches",
            str(inputs),
            "-o",
            str(out),
            "--size",
            "64",
            "--stride",
            "32",
        ]

    return command


@pytest.fixture
def reference_patches():
    """The eager reference: ``reference_patches(files, size, stride)``."""
    return _reference_patches


def _reference_patches(files: list[Path], size: int, stride: int) -> np.ndarray:
    """Eager windows in the documented order: files in order, row-major (y0, x0) within each."""
    out = []
    for file in files:
        image = mrcfile.read(file)
        h, w = image.shape
        for y in range(0, h - size + 1, stride):
            for x in range(0, w - size + 1, stride):
                out.append(image[y : y + size, x : x + size])
    return np.stack(out)
