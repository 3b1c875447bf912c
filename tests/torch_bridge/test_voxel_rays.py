"""VoxelRayDataset, RayBatchSampler, collate_ray_batch and the 3-D transforms, on stores the pipelines write."""

from __future__ import annotations

from pathlib import Path

import dask.config
import numpy as np
import pytest
import torch
import xarray as xr
from torch.utils.data import DataLoader

from engine.pipelines import reassign_splits, run_rays, run_voxels
from graphs.rays import cast_rays
from torch_bridge import RayBatchSampler, VoxelRayDataset, collate_ray_batch, transforms
from torch_bridge.transforms import flip, rotate90


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """12 procedural objects at 16³ down to 4³, and rays for every level (24 per subvolume)."""
    root = tmp_path_factory.mktemp("voxel-rays")
    v, r = root / "voxels.zarr", root / "rays.zarr"
    with dask.config.set(
        {
            "zarrforge.local.processes": False,
            "zarrforge.local.n-workers": 1,
            "zarrforge.local.dashboard-address": "127.0.0.1:0",
        }
    ):
        run_voxels(None, v, synthetic=12, resolution=16, min_resolution=4, split=(0.75, 0.25, 0), progress=False)
        run_rays(v, r, sphere_divisions=0, samples_per_view=12, views_per_subvolume=2, progress=False)
    return v, r


def test_items_are_the_cells_of_the_split_with_their_rays(stores: tuple[Path, Path]) -> None:
    v, r = stores
    vox, rays = xr.open_zarr(v), xr.open_zarr(r)
    split = vox["split"].values
    ds = VoxelRayDataset(v, r, split="train", levels=[1, 2])
    expected = 0
    for level in (1, 2):
        maps = vox[f"map_{level}"].values[split == 0].reshape(-1)
        expected += int((vox[f"flags_{level}"].values[maps] == 0).sum())
    assert len(ds) == expected > 0
    for i in (0, len(ds) // 2, len(ds) - 1):
        s = ds[i]
        level, obj, sub = s["level"], s["object"], s["subvolume"]
        assert split[obj] == 0
        side = 16 >> level
        assert s["voxels"].shape == (1, side, side, side) and s["voxels"].dtype == torch.float32
        np.testing.assert_array_equal(s["voxels"][0].numpy(), vox[f"subvolumes_{level}"].values[sub])
        assert vox[f"map_{level}"].values[(obj, *s["position"].tolist())] == sub
        for name in ("origins", "directions", "distances", "hits"):
            np.testing.assert_array_equal(s[name].numpy(), rays[f"{name}_{level}"].values[sub])
        assert s["center"] == side / 2
    # The whole dataset, every level and kind: each object's cells once.
    everything = VoxelRayDataset(v, r, kinds=("partial", "empty", "full"))
    assert len(everything) == 12 * (1 + 8 + 64)
    assert len(VoxelRayDataset(v, r, split="val")) + len(VoxelRayDataset(v, r, split="train")) == len(
        VoxelRayDataset(v, r)
    )


def test_bad_arguments_are_clear(stores: tuple[Path, Path], tmp_path: Path) -> None:
    v, r = stores
    with pytest.raises(ValueError, match="for levels"):
        VoxelRayDataset(v, r, levels=[3])
    with pytest.raises(ValueError, match="split='holdout'"):
        VoxelRayDataset(v, r, split="holdout")
    with pytest.raises(ValueError, match="kinds="):
        VoxelRayDataset(v, r, kinds=("hollow",))
    with pytest.raises(Exception, match="not a zarrforge rays store"):
        VoxelRayDataset(v, v)
    with pytest.raises(Exception, match="no such store"):
        VoxelRayDataset(tmp_path / "none.zarr", r)


def test_the_cache_is_bounded_in_bytes(stores: tuple[Path, Path]) -> None:
    v, r = stores
    small = VoxelRayDataset(v, r, cache_bytes=4096)
    big = VoxelRayDataset(v, r, cache_bytes=2**26)
    for ds in (small, big):
        for _ in range(2):
            for i in range(0, len(ds), 3):
                ds[i]
    assert small.cache.stats["nbytes"] <= 4096
    assert big.cache.stats["hits"] > small.cache.stats["hits"]
    assert big.cache.stats["decodes"] == big.cache.stats["entries"]  # everything decoded once, then kept


def test_split_reassignment_is_seen_without_recomputing(stores: tuple[Path, Path], tmp_path: Path) -> None:
    import shutil

    v, r = stores
    v2 = tmp_path / "voxels.zarr"
    shutil.copytree(v, v2)
    reassign_splits(v2, (0.5, 0.5, 0))
    # Copied elsewhere, the store's content (digest, fingerprint) is the same: the rays still match.
    a, b = VoxelRayDataset(v2, r, split="train"), VoxelRayDataset(v2, r, split="val")
    assert len(a) + len(b) == len(VoxelRayDataset(v, r))
    assert {int(o) for o in a.items[:, 1]}.isdisjoint({int(o) for o in b.items[:, 1]})


def _distances(sample: dict) -> np.ndarray:
    grid = sample["voxels"][0].numpy().astype(bool)
    scale = sample["center"] if sample["center"] != 0 else None
    origins = sample["origins"].double().numpy()
    if scale is None:  # normalized to [-1, 1]: back to voxels
        n = grid.shape[0] / 2
        return cast_rays(grid, origins * n + n, sample["directions"].double().numpy()) / n
    return cast_rays(grid, origins, sample["directions"].double().numpy())


def test_rotations_and_flips_keep_every_hit(stores: tuple[Path, Path]) -> None:
    v, r = stores
    ds = VoxelRayDataset(v, r, levels=[1])
    sample = ds[len(ds) // 2]
    base = _distances(sample)
    np.testing.assert_array_equal(np.isfinite(base), sample["hits"].numpy())
    np.testing.assert_allclose(base[np.isfinite(base)], sample["distances"].numpy()[np.isfinite(base)], atol=1e-4)
    cases = [lambda s, k=k, p=p: rotate90(s, k, p) for k in (1, 2, 3) for p in ((0, 1), (0, 2), (1, 2))]
    cases += [lambda s, a=a: flip(s, a) for a in (0, 1, 2)]
    for transform in cases:
        out = transform(sample)
        assert not torch.equal(out["voxels"], sample["voxels"]) or torch.equal(
            sample["voxels"], torch.flip(sample["voxels"], (1,))
        )
        got = _distances(out)
        np.testing.assert_array_equal(np.isfinite(got), sample["hits"].numpy())  # every hit stays
        hit = np.isfinite(got)
        np.testing.assert_allclose(got[hit], sample["distances"].numpy()[hit], atol=1e-4)  # at the same distance
    # The random transforms of the issue's example, normalized origins included, keep them too.
    torch.manual_seed(0)
    pipeline = transforms.Compose(
        [
            transforms.RandomRotation90(p=1.0),
            transforms.RandomFlip(axes=(0, 1, 2)),
            transforms.NormalizeRayOrigins(),
        ]
    )
    for _ in range(5):
        out = pipeline(sample)
        got = _distances(out)
        np.testing.assert_array_equal(np.isfinite(got), out["hits"].numpy())
        hit = np.isfinite(got)
        np.testing.assert_allclose(got[hit], out["distances"].numpy()[hit], atol=1e-5)
        # On a tangent plane of the bounding sphere (radius √3 in cube units), within √3 of the tangent point.
        assert out["origins"].norm(dim=1).max() <= np.sqrt(6) + 1e-5


def test_random_ray_subsample_and_bad_parameters() -> None:
    s = {k: torch.arange(30.0).reshape(10, 3) for k in ("origins", "directions")}
    s.update(distances=torch.arange(10.0), hits=torch.ones(10, dtype=torch.bool))
    out = transforms.RandomRaySubsample(4)(s)
    assert out["distances"].shape == (4,)
    np.testing.assert_array_equal(out["origins"][:, 0].numpy() / 3, out["distances"].numpy())  # rows kept together
    assert transforms.RandomRaySubsample(50)(s)["distances"].shape == (10,)
    for bad in (lambda: transforms.RandomRaySubsample(0), lambda: transforms.RandomFlip(axes=(3,))):
        with pytest.raises(ValueError):
            bad()
    with pytest.raises(ValueError):
        transforms.RandomRotation90(p=2)


def test_the_sampler_makes_one_level_batches_of_the_asked_rays(stores: tuple[Path, Path]) -> None:
    v, r = stores
    ds = VoxelRayDataset(v, r)
    sampler = RayBatchSampler(ds, rays_per_batch=100, subvolumes_per_batch=8, seed=3)
    batches = list(sampler)
    assert len(batches) == len(sampler) > 2
    seen: list[int] = []
    for batch in batches:
        assert len(batch) == 8 and sum(n for _, n in batch) == 100
        assert len({int(ds.items[i, 0]) for i, _ in batch}) == 1
        seen += [i for i, _ in batch]
    assert len(seen) == len(set(seen))  # each item at most once per epoch
    assert [list(b) for b in RayBatchSampler(ds, rays_per_batch=100, seed=3)] == batches
    sampler.set_epoch(1)
    assert list(sampler) != batches
    keep_all = RayBatchSampler(ds, rays_per_batch=100, drop_last=False, shuffle=False)
    assert sorted(i for b in keep_all for i, _ in b) == list(range(len(ds)))
    with pytest.raises(ValueError):
        RayBatchSampler(ds, rays_per_batch=4, subvolumes_per_batch=8)
    batch = collate_ray_batch([ds[(i, n)] for i, n in batches[0]])
    assert batch["origins"].shape == (100, 3) and batch["ray_to_voxel"].shape == (100,)
    assert batch["ray_to_voxel"].bincount().tolist() == [13, 13, 13, 13, 12, 12, 12, 12]
    level = int(ds.items[batches[0][0][0], 0])
    side = 16 >> level
    assert batch["voxels"].shape == (8, 1, side, side, side)
    other = next(i for i in range(len(ds)) if ds.items[i, 0] != level)
    with pytest.raises(ValueError, match="mixes subvolume shapes"):
        collate_ray_batch([ds[batches[0][0][0]], ds[other]])


def test_the_issue_example_runs_with_two_workers(stores: tuple[Path, Path]) -> None:
    v, r = stores
    ds = VoxelRayDataset(
        v,
        r,
        split="train",
        levels=[1, 2],
        cache_bytes=2**30,
        transform=transforms.Compose(
            [
                transforms.RandomRotation90(p=0.5),
                transforms.RandomFlip(axes=(0, 1, 2)),
                transforms.NormalizeRayOrigins(),
                transforms.RandomRaySubsample(1024),
            ]
        ),
    )
    loader = DataLoader(
        ds,
        batch_sampler=RayBatchSampler(ds, rays_per_batch=4096, subvolumes_per_batch=8),
        collate_fn=collate_ray_batch,
        num_workers=2,
    )
    n = 0
    for batch in loader:
        n += 1
        b, _, d, h, w = batch["voxels"].shape
        assert b == 8 and d == h == w
        assert batch["origins"].shape == (4096, 3) and batch["directions"].shape == (4096, 3)
        assert batch["distances"].shape == batch["hits"].shape == batch["ray_to_voxel"].shape == (4096,)
        assert batch["hits"].dtype == torch.bool
        # Rays of 24 per subvolume drawn with replacement up to 512: hits still follow the distances.
        np.testing.assert_array_equal(batch["hits"].numpy(), np.isfinite(batch["distances"].numpy()))
    assert n == len(loader.batch_sampler) > 0
