"""image_loaders / paired_loaders over stores made by zarrforge images."""

from __future__ import annotations

from pathlib import Path

import dask.config
import numpy as np
import pytest
import tifffile
import torch
import xarray as xr

from engine.pipelines import run_images
from torch_bridge import ThreadedLoader, image_loaders, paired_loaders
from torch_bridge.images import PairedTransform

THREADS = {
    "zarrforge.local.processes": False,
    "zarrforge.local.n-workers": 1,
    "zarrforge.local.threads-per-worker": 2,
    "zarrforge.local.dashboard-address": "127.0.0.1:0",
    "zarrforge.store.chunk-bytes": 4 * 32 * 32 * 4,  # 4 images per chunk: several chunks
    "zarrforge.store.shard-bytes": 8 * 32 * 32 * 4,
}


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A paired store (target = condition, so paired transforms must keep them equal) and a single one."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for folder in ("edente", "dente"):
        (root / "data" / folder).mkdir(parents=True)
    for i in range(20):
        image = rng.integers(1, 1000, (40 + i, 50)).astype(np.uint16)
        image[:5] = 0
        for folder in ("edente", "dente"):
            tifffile.imwrite(root / "data" / folder / f"im{i:02d}.tif", image)
    (root / "data" / "dente" / "extra.tif").write_bytes((root / "data" / "dente" / "im00.tif").read_bytes())
    with dask.config.set(THREADS):
        # the paired store: only names both folders hold
        (root / "pairs" / "edente").mkdir(parents=True)
        (root / "pairs" / "dente").mkdir()
        for i in range(20):
            for folder in ("edente", "dente"):
                src = root / "data" / folder / f"im{i:02d}.tif"
                (root / "pairs" / folder / src.name).write_bytes(src.read_bytes())
        run_images(root / "pairs", root / "paired.zarr", size=(32, 32), pairs=True, split=0.75, progress=False)
        run_images(root / "data", root / "single.zarr", size=(32, 32), split=0.75, progress=False)
    return {"paired": root / "paired.zarr", "single": root / "single.zarr"}


def _key(image: object) -> tuple[float, float]:
    """A fingerprint of one normalized image (its sum is ~0 for every image)."""
    values = np.asarray(image)
    return round(float(values[20, 20]), 4), round(float(values[25, 7]), 4)


def test_paired_batches_cover_the_split_once(stores: dict[str, Path]) -> None:
    train, val = paired_loaders(stores["paired"], batch_size=4, target="edente", condition="dente", seed=1)
    ds = xr.open_zarr(stores["paired"])
    for target, condition in train:
        assert target.shape == condition.shape and target.shape[1:] == (1, 32, 32) and len(target) <= 4
        assert target.dtype == torch.float32 and torch.equal(target, condition)
    got = sorted(_key(t[0]) for batch in train for t in batch[0])
    assert got == sorted(_key(x) for x in ds.edente.values[ds.split.values == 0])
    assert sum(len(t) for t, _ in val) == int((ds.split == 1).sum()) == 5


@pytest.mark.parametrize("workers", ["threads", "processes"])
def test_workers_give_the_batches_of_the_training_process(stores: dict[str, Path], workers: str) -> None:
    """Threads (the default) or worker processes: the same batches, in the same order, as with no workers."""
    options = {"target": "edente", "condition": "dente", "seed": 3, "cache_rate": 0.5}
    plain, _ = paired_loaders(stores["paired"], batch_size=4, **options)  # type: ignore[arg-type]
    train, val = paired_loaders(stores["paired"], batch_size=4, num_workers=2, workers=workers, **options)  # type: ignore[arg-type]
    assert (workers == "threads") == isinstance(train, ThreadedLoader)
    for epoch in (0, 1):
        plain.sampler.set_epoch(epoch)  # type: ignore[union-attr]
        train.sampler.set_epoch(epoch)  # type: ignore[union-attr]
        for (target, condition), (want, _) in zip(train, plain, strict=True):
            assert torch.equal(target, want) and torch.equal(target, condition)
    assert sum(len(t) for t, _ in val) == 5
    with pytest.raises(ValueError, match="workers must be"):
        paired_loaders(stores["paired"], num_workers=2, workers="fibres", **options)  # type: ignore[arg-type]


def test_augmented_pairs_stay_aligned(stores: dict[str, Path]) -> None:
    torch.manual_seed(0)
    train, _ = paired_loaders(stores["paired"], batch_size=5, target="edente", condition="dente", augment=True)
    plain, _ = paired_loaders(stores["paired"], batch_size=5, target="edente", condition="dente")
    for (target, condition), (raw, _) in zip(train, plain, strict=True):
        assert torch.equal(target, condition)  # same transform on both
        assert not torch.equal(target, raw)


def test_paired_transform_is_one_transform_for_all_views() -> None:
    x = torch.rand(6, 1, 16, 16)
    torch.manual_seed(3)
    a, b = PairedTransform()(x, x.clone())
    assert torch.equal(a, b) and a.shape == x.shape


def test_cache_rate_subset_and_distributed(stores: dict[str, Path]) -> None:
    cached, val = paired_loaders(
        stores["paired"], batch_size=3, target="edente", condition="dente", cache_rate=0.5
    )
    assert len(cached.dataset._cached) == round(0.5 * len(cached.dataset)) and len(val.dataset._cached) == 5
    plain, _ = paired_loaders(stores["paired"], batch_size=3, target="edente", condition="dente")
    for (a, _), (b, _) in zip(cached, plain, strict=True):
        assert torch.equal(a, b)
    small, _ = paired_loaders(stores["paired"], target="edente", condition="dente", subset_size=4)
    assert len(small.dataset) == 4
    ranks = [
        paired_loaders(
            stores["paired"],
            batch_size=1,
            target="edente",
            condition="dente",
            distributed=True,
            rank=r,
            world_size=2,
        )[0]
        for r in range(2)
    ]
    keys = [{_key(t[0, 0]) for t, _ in loader} for loader in ranks]
    assert len(ranks[0]) == len(ranks[1]) and keys[0] | keys[1] == {_key(t[0]) for b, _ in plain for t in b}


def test_single_store_sources(stores: dict[str, Path]) -> None:
    train, val = image_loaders(stores["single"], batch_size=4, source="both")
    ds = xr.open_zarr(stores["single"])
    assert sum(len(b) for b in train) + sum(len(b) for b in val) == ds.sizes["sample"] == 41
    only, _ = image_loaders(stores["single"], batch_size=4, source="dente")
    dente = int((ds.folder == 0).sum())  # folders are sorted: dente, edente
    assert sum(len(b) for b in only) == int(((ds.folder == 0) & (ds.split == 0)).sum()) < dente
    both, _ = image_loaders(stores["paired"], batch_size=4, source="both")
    assert sum(len(b) for b in both) == 2 * 15
    _, val2 = image_loaders(stores["paired"], batch_size=4, source="edente", val_store=stores["single"])
    assert sum(len(b) for b in val2) == int((ds.folder == 1).sum())


def test_bad_arguments(stores: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="holds folders"):
        image_loaders(stores["single"], source="nope")
    with pytest.raises(ValueError, match="needs a store made with --pairs"):
        paired_loaders(stores["single"], target="dente", condition="edente")
    with pytest.raises(ValueError, match="cache_rate"):
        paired_loaders(stores["paired"], target="edente", condition="dente", cache_rate=2)
    with pytest.raises(ValueError, match="not a folder"):
        paired_loaders(stores["paired"], target="edente", condition="teeth")


def test_local_normalization_on_the_fly(tmp_path: Path) -> None:
    """normalize="local" on a --no-normalize store gives what the ingest's normalization stores, cached or not."""
    root = tmp_path / "data" / "a"
    root.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for i in range(10):
        image = rng.integers(1, 5000, (32, 32)).astype(np.uint16)
        image[:6] = 0
        tifffile.imwrite(root / f"im{i}.tif", image)
    with dask.config.set(THREADS):
        run_images(root.parent, tmp_path / "raw.zarr", split=0.6, normalize=False, progress=False)
        run_images(root.parent, tmp_path / "normalized.zarr", split=0.6, progress=False)
    want = np.sort(xr.open_zarr(tmp_path / "normalized.zarr").images.values.reshape(10, -1), axis=0)
    for cache_rate in (0.0, 0.5):
        train, val = image_loaders(tmp_path / "raw.zarr", batch_size=4, normalize="local", cache_rate=cache_rate)
        got = np.concatenate([b.numpy().reshape(len(b), -1) for loader in (train, val) for b in loader])
        np.testing.assert_allclose(np.sort(got, axis=0), want, atol=1e-5)
    with pytest.raises(ValueError, match="holds normalized images already"):
        image_loaders(tmp_path / "normalized.zarr", normalize="local")
    with pytest.raises(ValueError, match="normalize must be"):
        image_loaders(tmp_path / "raw.zarr", normalize="global")
