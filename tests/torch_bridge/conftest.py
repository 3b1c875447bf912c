"""Small training stores with deliberately odd sizes: 1000 samples in chunks of 64 and shards of 256.

The tests restate ``N_SAMPLES`` and ``CHUNK`` (conftest modules are not imported by name).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from storage.layout import SampleGrid
from storage.store import ArraySpec, TrainingStore

N_SAMPLES = 1000
CHUNK = 64
SHARD = 256
PATCH = (8, 6)


def write_store(path: Path, n: int = N_SAMPLES, chunk: int = CHUNK, shard: int = SHARD, seed: int = 0) -> Path:
    """A finished training store: ``patches (sample, 8, 6)`` float32, ``origin (sample, 2)`` and int32 metadata."""
    rng = np.random.default_rng(seed)
    data = {
        "patches": rng.standard_normal((n, *PATCH)).astype("float32"),
        "origin": rng.integers(0, 500, (n, 2)).astype("int32"),
        "source_index": (np.arange(n) // 100).astype("int32"),
        "y0": rng.integers(0, 500, n).astype("int32"),
        "x0": np.arange(n, dtype="int32") * 3,
    }
    dims = {"patches": ("sample", "patch_y", "patch_x"), "origin": ("sample", "axis")}
    specs = [ArraySpec(k, dims.get(k, ("sample",)), v.shape, v.dtype) for k, v in data.items()]
    grid = SampleGrid(chunk, shard)
    with TrainingStore.open_for_writing(path, specs, grid=grid, record={"pipeline": "test"}) as s:
        for block in s.blocks():
            s.write_block(block, {k: v[block.start : block.stop] for k, v in data.items()})
        s.finalize()
    return path


@pytest.fixture(scope="session")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished store, shared by the tests of this folder (read only)."""
    return write_store(tmp_path_factory.mktemp("torch_bridge") / "train.zarr")


@pytest.fixture
def make_store(tmp_path: Path) -> Callable[..., Path]:
    """``make_store(name, n=..., chunk=..., shard=...)``: write a store of that name in ``tmp_path``."""

    def make(name: str = "train.zarr", **kwargs: int) -> Path:
        return write_store(tmp_path / name, **kwargs)

    return make


@pytest.fixture
def metadata_chunked_store(tmp_path: Path) -> Path:
    """A group not written by TrainingStore: ``x (100, 3)`` int32 chunked by 64, ``label (100,)`` chunked by 10.

    ``x[i] == [3i, 3i + 1, 3i + 2]`` and ``label[i] == 2i``.
    """
    import zarr

    group = zarr.create_group(str(tmp_path / "g.zarr"))
    x = group.create_array("x", shape=(100, 3), chunks=(64, 3), shards=(128, 3), dtype="int32")
    x[:] = np.arange(300, dtype="int32").reshape(100, 3)
    label = group.create_array("label", shape=(100,), chunks=(10,), dtype="int64")
    label[:] = np.arange(100) * 2
    return tmp_path / "g.zarr"


@pytest.fixture(scope="session")
def picking_stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same picking set stored ``materialized`` and ``virtual`` (six 300 × 260 micrographs, one unpicked).

    Windows of 32 pixels at stride 16 in row bands of 16 rows, so a window spans two or three bands; chunks of 64
    samples.
    """
    import dask.config

    from engine.pipelines import run_picking
    from storage.synthetic import write_picking_set

    root = tmp_path_factory.mktemp("picking")
    write_picking_set(root, 6, (300, 260), seed=11, n_particles=15)
    (root / "picks" / "micrograph_0005.star").unlink()
    stores = {}
    config = {
        "zarrforge.local.processes": False,
        "zarrforge.local.n-workers": 1,
        "zarrforge.local.threads-per-worker": 2,
        "zarrforge.local.dashboard-address": "127.0.0.1:0",
        "zarrforge.store.chunk-bytes": 64 * 32 * 32 * 4,
        "zarrforge.store.shard-bytes": 256 * 32 * 32 * 4,
    }
    with dask.config.set(config):
        for mode in ("materialized", "virtual"):
            stores[mode] = root / f"{mode}.zarr"
            run_picking(
                str(root / "micrographs"),
                str(root / "picks"),
                stores[mode],
                size=32,
                stride=16,
                radius=6,
                negative_ratio=0.5,
                split=(0.5, 0.25, 0.25),
                mode=mode,  # type: ignore[arg-type]
                progress=False,
            )
    return stores
