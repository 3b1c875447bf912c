"""Ray casting: the traversals against a brute-force reference, ray generation, and the lazy rays graph."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import xarray as xr

from graphs.errors import ParameterError
from graphs.rays import (
    RAY_FIELDS,
    cast_rays,
    cast_rays_numba,
    cast_rays_numpy,
    cast_rays_torch,
    generate_rays,
    icosphere_views,
    rays_dataset,
    rays_for_subvolumes,
    surface_voxels,
)


def brute_force(grid: np.ndarray, origins: np.ndarray, directions: np.ndarray, h: float = 2e-4) -> np.ndarray:
    """Dense sampling along each ray every ``h`` voxels, then bisection of the first occupied step to 1e-9."""
    n = np.asarray(grid.shape, dtype=np.float64)

    def occupied(points: np.ndarray) -> np.ndarray:
        idx = np.floor(points).astype(np.int64)
        inside = ((idx >= 0) & (idx < n.astype(np.int64))).all(axis=-1)
        out = np.zeros(points.shape[:-1], dtype=bool)
        i = idx[inside]
        out[inside] = grid[i[..., 0], i[..., 1], i[..., 2]]
        return out

    result = np.full(len(origins), np.inf)
    for r, (o, d) in enumerate(zip(origins, directions, strict=True)):
        # Sample only where the ray is inside the grid's box (plus a step), found by sampling it coarsely.
        coarse = np.arange(0, 4 * n.max() + np.abs(o).max() * 2, 0.05)
        inside = np.flatnonzero(((o + coarse[:, None] * d >= -0.1) & (o + coarse[:, None] * d <= n + 0.1)).all(1))
        if not len(inside):
            continue
        ts = np.arange(max(coarse[inside[0]] - 0.05, 0), coarse[inside[-1]] + 0.05, h)
        hits = np.flatnonzero(occupied(o + ts[:, None] * d))
        if not len(hits):
            continue
        lo, hi = max(ts[hits[0]] - h, 0.0), ts[hits[0]]
        if ts[hits[0]] == 0:
            result[r] = 0.0
            continue
        for _ in range(40):
            mid = (lo + hi) / 2
            if occupied((o + mid * d)[None])[0]:
                hi = mid
            else:
                lo = mid
        result[r] = hi
    return result


def random_rays(rng: np.random.Generator, n: int, size: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Rays from random points around the grid towards random points inside it."""
    origins = rng.uniform(-0.5 * size, 1.5 * size, (count, 3))
    targets = rng.uniform(0, size, (count, 3))
    directions = targets - origins
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    return origins, directions


@pytest.mark.parametrize("size, density, seed", [(6, 0.08, 0), (8, 0.03, 1), (10, 0.15, 2)])
def test_every_traversal_agrees_with_dense_sampling(size: int, density: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    grid = rng.random((size, size, size)) < density
    origins, directions = random_rays(rng, 0, size, 60)
    o2, d2 = generate_rays(grid, icosphere_views(0), 8, rng, adaptive=True)  # the pipeline's own rays
    origins, directions = np.concatenate([origins, o2]), np.concatenate([directions, d2])
    reference = brute_force(grid, origins, directions)
    for cast in (cast_rays_numba, cast_rays_numpy, lambda g, o, d: cast_rays_torch(g, o, d, device="cpu")):
        got, steps = cast(grid, origins, directions)
        np.testing.assert_array_equal(np.isfinite(got), np.isfinite(reference))  # every hit flag
        hit = np.isfinite(reference)
        assert np.abs(got[hit] - reference[hit]).max(initial=0) < 1e-4  # distances within 1e-4 voxel
        assert steps > 0
    assert 0 < np.isfinite(reference).sum() < len(reference)  # the case holds hits and misses


def test_backends_give_identical_answers_and_steps() -> None:
    rng = np.random.default_rng(5)
    grid = rng.random((16, 16, 16)) < 0.02
    origins, directions = generate_rays(grid, icosphere_views(1), 50, rng)
    a, steps_a = cast_rays_numba(grid, origins, directions)
    b, steps_b = cast_rays_numpy(grid, origins, directions)
    c, steps_c = cast_rays_torch(grid, origins, directions, device="cpu")
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a, c, rtol=0, atol=1e-12)
    assert steps_a == steps_b == steps_c
    np.testing.assert_array_equal(cast_rays(grid, origins, directions, backend="numpy"), b)


def test_axis_aligned_and_origin_inside_cases() -> None:
    grid = np.zeros((4, 4, 4), bool)
    grid[2, 1, 3] = True
    origins = np.array([[-2.0, 1.5, 3.5], [1.5, 1.5, 3.5], [-2.0, 0.5, 0.5], [2.5, 1.5, 3.5], [1.5, 1.5, 9.0]])
    directions = np.array([[1.0, 0, 0], [1.0, 0, 0], [1.0, 0, 0], [0, 0, 1.0], [0, 0, -1.0]])
    for cast in (cast_rays_numba, cast_rays_numpy):
        d, _ = cast(grid, origins, directions)
        assert d.tolist() == [4.0, 0.5, np.inf, 0.0, np.inf]  # ray 4 runs along row (1, 1): no hit


def test_bad_shapes_are_errors() -> None:
    with pytest.raises(ParameterError, match="3-D"):
        cast_rays_numba(np.zeros((4, 4)), np.zeros((1, 3)), np.ones((1, 3)))
    with pytest.raises(ParameterError, match="origins"):
        cast_rays_numpy(np.zeros((4, 4, 4)), np.zeros((2, 3)), np.ones((1, 3)))
    with pytest.raises(ParameterError, match="backend"):
        cast_rays(np.zeros((4, 4, 4)), np.zeros((1, 3)), np.ones((1, 3)), backend="optix")  # type: ignore[arg-type]
    with pytest.raises(ParameterError, match="sphere divisions"):
        icosphere_views(-1)


def test_views_and_rays_follow_the_stated_cameras() -> None:
    views = icosphere_views(2)
    assert views.shape == (162, 3)
    np.testing.assert_allclose(np.linalg.norm(views, axis=1), 1)
    grid = np.zeros((8, 8, 8), bool)
    rng = np.random.default_rng(0)
    origins, directions = generate_rays(grid, views[:3], 100, rng)
    radius = 8 * np.sqrt(3) / 2
    for v in range(3):
        o, d = origins[v * 100 : (v + 1) * 100], directions[v * 100 : (v + 1) * 100]
        np.testing.assert_allclose(d, -views[v][None].repeat(100, 0))
        # On the plane tangent to the bounding sphere, within its radius of the tangent point.
        np.testing.assert_allclose((o - 4) @ views[v], radius)
        assert (np.linalg.norm(o - 4 - radius * views[v], axis=1) <= radius + 1e-9).all()


def test_adaptive_rays_pass_through_surface_voxels() -> None:
    grid = np.zeros((16, 16, 16), bool)
    grid[7:9, 7:9, 7:9] = True  # a small cube: uniform rays mostly miss it
    surface = surface_voxels(grid)
    assert len(surface) == 8
    views = icosphere_views(1)
    uniform = generate_rays(grid, views, 200, np.random.default_rng(1))
    adaptive = generate_rays(grid, views, 200, np.random.default_rng(1), adaptive=True)
    hit_uniform = np.isfinite(cast_rays(grid, *uniform)).mean()
    hit_adaptive = np.isfinite(cast_rays(grid, *adaptive)).mean()
    assert hit_uniform < 0.05
    assert hit_adaptive >= 0.5  # every second ray aims at a surface voxel, and meets the object


def test_rays_of_a_subvolume_do_not_depend_on_its_block() -> None:
    rng = np.random.default_rng(3)
    subvolumes = (rng.random((5, 4, 4, 4)) < 0.3).astype(np.uint8)
    kwargs = dict(
        level=2, views=icosphere_views(0), views_per_subvolume=2, samples_per_view=7, adaptive=True, seed=9
    )
    whole = rays_for_subvolumes(subvolumes, start=0, **kwargs)
    parts = np.concatenate(
        [
            rays_for_subvolumes(subvolumes[:2], start=0, **kwargs),
            rays_for_subvolumes(subvolumes[2:], start=2, **kwargs),
        ]
    )
    np.testing.assert_array_equal(whole, parts)
    assert whole.shape == (5, 14, len(RAY_FIELDS))
    np.testing.assert_array_equal(whole[..., 7].astype(bool), np.isfinite(whole[..., 6]))


def test_rays_dataset_is_lazy_and_matches_the_kernel() -> None:
    rng = np.random.default_rng(4)
    values = (rng.random((7, 4, 4, 4)) < 0.3).astype(np.uint8)

    def explode(block: np.ndarray) -> np.ndarray:
        raise AssertionError("computed while building the graph")

    lazy = da.from_array(values, chunks=(2, 4, 4, 4)).map_blocks(explode, dtype=np.uint8)
    subs = xr.DataArray(lazy, dims=("subvolume_1", "z_1", "y_1", "x_1"))
    ds = rays_dataset({1: subs}, sphere_divisions=0, samples_per_view=5, seed=1, block_items={1: 3})
    assert ds["distances_1"].data.chunks[0] == (3, 3, 1)
    assert ds.attrs["parameters"]["rays_per_subvolume"] == 60  # all 12 views by default
    good = xr.DataArray(da.from_array(values, chunks=(4, 4, 4, 4)), dims=subs.dims)
    ds = rays_dataset(
        {1: good}, sphere_divisions=0, samples_per_view=5, views_per_subvolume=3, seed=1, block_items={1: 3}
    )
    expected = rays_for_subvolumes(
        values,
        start=0,
        level=1,
        views=icosphere_views(0),
        views_per_subvolume=3,
        samples_per_view=5,
        adaptive=False,
        seed=1,
    )
    np.testing.assert_array_equal(ds["distances_1"].values, expected[..., 6])
    np.testing.assert_array_equal(ds["origins_1"].values, expected[..., 0:3])
    with pytest.raises(ParameterError, match="views per subvolume"):
        rays_dataset({1: good}, sphere_divisions=0, samples_per_view=5, views_per_subvolume=13, block_items={1: 3})
    with pytest.raises(ParameterError, match="samples per view"):
        rays_dataset({1: good}, sphere_divisions=0, samples_per_view=0, block_items={1: 3})


@pytest.mark.gpu
def test_the_cuda_traversal_agrees_with_numba() -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    rng = np.random.default_rng(6)
    grid = rng.random((32, 32, 32)) < 0.01
    origins, directions = generate_rays(grid, icosphere_views(2), 100, rng, adaptive=True)
    expected, steps = cast_rays_numba(grid, origins, directions)
    got, cuda_steps = cast_rays_torch(grid, origins, directions, device="cuda")
    np.testing.assert_array_equal(np.isfinite(got), np.isfinite(expected))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9)
    assert cuda_steps == steps
    np.testing.assert_array_equal(cast_rays(grid, origins, directions), got)  # auto picks the GPU
