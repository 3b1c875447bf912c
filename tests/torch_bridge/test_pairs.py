"""PairDataset over materialized and virtual pair stores: the same pairs, splits, loaders, workers, errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import dask
import numpy as np
import pytest
import torch
import xarray as xr

from graphs.stripe_pairs import detect_sinograms, pair_dataset, patch_grid
from storage.errors import StoreError
from storage.layout import SampleGrid
from storage.store import ArraySpec, TrainingStore
from torch_bridge import ChunkShuffleSampler, PairDataset, make_loader


def _write(ds: xr.Dataset, path: Path, seed: int) -> Path:
    """Write a computed pair dataset as ``zarrforge stripes`` would (without a cluster)."""
    with dask.config.set(scheduler="sync"):
        ds = ds.compute()
    specs = [
        ArraySpec(n, tuple(map(str, v.dims)), v.shape, v.dtype, dict(v.attrs)) for n, v in ds.data_vars.items()
    ]
    grids = {"sample": SampleGrid(4, 8), "real_sample": SampleGrid(4, 8)}
    record = {
        "pipeline": "stripes",
        "parameters": ds.attrs["parameters"],
        "seed": seed,
        "counts": ds.attrs["counts"],
    }
    with TrainingStore.open_for_writing(path, specs, grid=grids, record=record) as store:
        for block in store.blocks():
            names = [n for n, v in ds.data_vars.items() if v.dims[0] == block.axis]
            store.write_block(block, {n: ds[n].values[block.start : block.stop] for n in names})
        store.finalize()
    return path


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pairs")
    rng = np.random.default_rng(0)
    stack = (1 + 0.005 * rng.standard_normal((10, 60, 48))).astype(np.float32)
    stack[:3, :, 2:4] *= 1.1  # real stripes in patch 0 of sinograms 0-2
    sinograms = xr.DataArray(stack, dims=("detector_y", "angle", "detector_x")).chunk({"detector_y": 3})
    grid = patch_grid(60, 48, (60, 16))
    detected = detect_sinograms(sinograms).compute()
    out = {}
    for kind in ("materialized", "virtual"):
        ds = pair_dataset(sinograms, detected, grid, seed=5, split=0.7, block_samples=8, virtual=kind == "virtual")
        out[kind] = _write(ds, root / f"{kind}.zarr", seed=5)
    return out


@pytest.mark.parametrize("split", [None, "train", "val"])
def test_virtual_pairs_equal_the_stored_ones(stores: dict[str, Path], split: str | None) -> None:
    m = PairDataset(stores["materialized"], split=split, return_mask=True, return_metadata=True)
    v = PairDataset(stores["virtual"], split=split, return_mask=True, return_metadata=True)
    assert not m.virtual and v.virtual and len(m) == len(v) > 0
    for i in range(len(m)):
        cm, sm, mm, meta_m = m[i]
        cv, sv, mv, meta_v = v[i]
        assert torch.equal(cm, cv) and torch.equal(sm, sv) and torch.equal(mm, mv)
        assert meta_m == meta_v and set(meta_m) == {"sinogram", "patch", "angle0", "x0", "split"}
        if split is not None:
            assert meta_m["split"] == (0 if split == "train" else 1)
    assert len(PairDataset(stores["materialized"], split="train")) + len(
        PairDataset(stores["materialized"], split="val")
    ) == len(m if split is None else PairDataset(stores["materialized"]))


def test_samples_are_clean_stripe_tuples(stores: dict[str, Path]) -> None:
    for path in stores.values():
        ds = PairDataset(path)
        clean, stripe = ds[0]
        assert clean.shape == stripe.shape == (60, 16) and clean.dtype == stripe.dtype == torch.float32
        assert not torch.equal(clean, stripe)
        batch = ds.__getitems__([0, 3, 1])
        assert all(torch.equal(a, b) for a, b in zip(batch[1], ds[3], strict=True))
        assert repr(ds).startswith("PairDataset(")
    in_memory = PairDataset(stores["virtual"], load_in_memory=True, transform=lambda pair: pair[1] - pair[0])
    assert torch.equal(in_memory[2], PairDataset(stores["virtual"])[2][1] - PairDataset(stores["virtual"])[2][0])


@pytest.mark.parametrize("kind", ["materialized", "virtual"])
def test_loaders_and_workers_give_the_same_batches(stores: dict[str, Path], kind: str) -> None:
    ds = PairDataset(stores[kind], split="train", return_mask=True)
    sampler = ChunkShuffleSampler(ds, seed=1)
    plain = [b for b in torch.utils.data.DataLoader(ds, batch_size=4, sampler=sampler)]
    workers = [b for b in torch.utils.data.DataLoader(ds, batch_size=4, sampler=sampler, num_workers=2)]
    assert len(plain) == len(workers) > 0
    for a, b in zip(plain, workers, strict=True):
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    fast = make_loader(ds, batch_size=4, num_workers=0, seed=1)
    seen = sum(batch[0].shape[0] for batch in fast)
    assert seen == len(ds)


def test_not_a_pair_store(tmp_path: Path) -> None:
    spec = ArraySpec("x", ("sample", "v"), (2, 3), np.dtype("float32"))
    with TrainingStore.open_for_writing(
        tmp_path / "o.zarr", [spec], grid=SampleGrid(1, 1), record={"pipeline": "x"}
    ) as s:
        for block in s.blocks():
            s.write_block(block, {"x": np.zeros((1, 3), "float32")})
        s.finalize()
    with pytest.raises(StoreError, match="not a pair store"):
        PairDataset(tmp_path / "o.zarr")
    with pytest.raises(StoreError, match="not a pair store"):
        PairDataset(tmp_path / "missing.zarr")


def test_reading_a_virtual_store_never_imports_dask(stores: dict[str, Path]) -> None:
    code = (
        "import sys\nfrom torch_bridge import PairDataset\n"
        f"ds = PairDataset({str(stores['virtual'])!r}, return_mask=True)\nds[0]; ds.__getitems__([1, 2])\n"
        "heavy = [m for m in sys.modules if m.split('.')[0] in {'dask', 'distributed', 'engine', 'xarray'}]\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
