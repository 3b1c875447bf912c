"""Voxel hierarchy: levels, cells, hashes and the dedup registry against brute force; shapes and meshes."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import trimesh
from hypothesis import given, settings
from hypothesis import strategies as st

from graphs.errors import ParameterError
from graphs.voxels import (
    FLAGS,
    build_registries,
    level_sides,
    procedural_description,
    procedural_object,
    procedural_voxels,
    registry_digest,
    split_cells,
    subvolume_hashes,
    summarize_object,
    unique_subvolumes,
    voxel_dataset,
    voxelize_mesh,
)


def test_levels_halve_down_to_the_minimum() -> None:
    assert level_sides(128, 4) == [128, 64, 32, 16, 8, 4]
    assert level_sides(8, 8) == [8]
    for resolution, minimum, message in [
        (100, 4, "power of two"),
        (64, 6, "power of two"),
        (0, 1, "power of two"),
        (16, 32, "above the resolution"),
    ]:
        with pytest.raises(ParameterError, match=message):
            level_sides(resolution, minimum)


def test_cells_are_the_cubes_in_c_order() -> None:
    grid = np.random.default_rng(0).integers(0, 9, (8, 8, 8))
    cells = split_cells(grid, 4)
    for index, (cz, cy, cx) in enumerate(np.ndindex(2, 2, 2)):
        np.testing.assert_array_equal(
            cells[index], grid[cz * 4 : cz * 4 + 4, cy * 4 : cy * 4 + 4, cx * 4 : cx * 4 + 4]
        )


def test_the_hash_is_blake2b_of_shape_dtype_and_bytes() -> None:
    cells = (np.random.default_rng(1).random((3, 4, 4, 4)) < 0.5).astype(np.uint8)
    cells[2] = cells[0]
    h = subvolume_hashes(cells)
    expected = hashlib.blake2b(b"4,4,4|uint8|" + cells[1].tobytes(), digest_size=16).digest()
    assert h[1].tobytes() == expected
    assert h[0].tobytes() == h[2].tobytes() != h[1].tobytes()
    # Same bytes, other shape: another hash.
    assert subvolume_hashes(cells[:1].reshape(1, 8, 8, 1))[0].tobytes() != h[0].tobytes()


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), n_objects=st.integers(1, 4), density=st.sampled_from([0.0, 0.05, 0.5, 1.0]))
def test_registry_dedups_exactly_like_a_set_of_bytes(seed: int, n_objects: int, density: float) -> None:
    rng = np.random.default_rng(seed)
    sides = [8, 4, 2]
    # Few distinct 2³ patterns, so the finest level repeats a lot.
    grids = [
        (rng.random((8, 8, 8)) < density) | (rng.random((8, 8, 8)) < 0.02 * (density > 0))
        for _ in range(n_objects)
    ]
    summaries = [summarize_object(g, sides) for g in grids]
    for level, reg in enumerate(build_registries(summaries, sides)):
        cells = np.concatenate([split_cells(g.astype(np.uint8), sides[level]) for g in grids])
        brute = {c.tobytes() for c in cells}
        assert len(reg.hashes) == len(brute)
        unique = unique_subvolumes(reg, summaries)
        # The maps rebuild every cell of every object, and the registry is in order of first occurrence.
        np.testing.assert_array_equal(unique[reg.maps.reshape(-1)], cells)
        first_seen = list(dict.fromkeys(c.tobytes() for c in cells))
        assert [u.tobytes() for u in unique] == first_seen
        assert reg.refs.sum() == len(cells)
        occupied = unique.reshape(len(unique), -1).sum(1)
        np.testing.assert_array_equal(reg.flags == FLAGS["empty"], occupied == 0)
        np.testing.assert_array_equal(reg.flags == FLAGS["full"], occupied == sides[level] ** 3)


def test_procedural_objects_are_seeded_per_object() -> None:
    a = procedural_object(4, seed=1, resolution=32)
    np.testing.assert_array_equal(a, procedural_object(4, seed=1, resolution=32))
    assert not np.array_equal(a, procedural_object(5, seed=1, resolution=32))
    assert not np.array_equal(a, procedural_object(4, seed=2, resolution=32))
    shapes = {p["shape"] for i in range(30) for p in procedural_description(i, seed=0)}
    assert shapes == {"sphere", "box", "torus"}
    assert 0 < a.mean() < 1
    lazy = procedural_voxels(3, resolution=16, seed=1)
    assert lazy.chunks == ((1, 1, 1), (16,), (16,), (16,))
    np.testing.assert_array_equal(lazy[2].compute(), procedural_object(2, seed=1, resolution=16))
    with pytest.raises(ParameterError, match="at least 1"):
        procedural_voxels(0, resolution=16, seed=1)


def test_a_sphere_mesh_voxelizes_to_a_solid_ball() -> None:
    sphere = trimesh.creation.icosphere(subdivisions=4, radius=1.0)
    grid = voxelize_mesh(np.asarray(sphere.vertices), np.asarray(sphere.faces), 32)
    r = 31 / 2  # the longest side spans resolution - 1 voxels
    # Every voxel the surface touches counts: between the balls of radius r - 1 and r + 1.
    assert 4 / 3 * np.pi * (r - 1) ** 3 < grid.sum() < 4 / 3 * np.pi * (r + 1) ** 3
    assert grid[16, 16, 16]  # filled inside
    c = (np.arange(32) + 0.5 - 16) ** 2
    inside = c[:, None, None] + c[None, :, None] + c[None, None, :] < (r - 1.5) ** 2
    assert grid[inside].all()


def test_axes_follow_the_mesh_axes() -> None:
    box = trimesh.creation.box((1.0, 2.0, 4.0))  # x, y, z extents
    grid = voxelize_mesh(np.asarray(box.vertices), np.asarray(box.faces), 16)
    extent = [
        int(np.ptp(np.flatnonzero(grid.any(axis=tuple(a for a in range(3) if a != k))))) + 1 for k in range(3)
    ]
    assert extent[0] > extent[1] > extent[2]  # z (4) > y (2) > x (1)


def test_a_mesh_with_a_hole_still_gives_a_grid() -> None:
    box = trimesh.creation.box((2, 2, 2))
    faces = np.asarray(box.faces)[2:]  # two triangles missing: not watertight
    grid = voxelize_mesh(np.asarray(box.vertices), faces, 8)
    assert grid.any()
    with pytest.raises(ParameterError, match="no triangles"):
        voxelize_mesh(np.zeros((0, 3)), np.zeros((0, 3), int), 8)
    with pytest.raises(ParameterError, match="degenerate"):
        voxelize_mesh(np.zeros((3, 3)), np.array([[0, 1, 2]]), 8)


def test_voxel_dataset_holds_the_registry_in_blocks() -> None:
    sides = [16, 8, 4]
    summaries = [summarize_object(procedural_object(i, 0, 16), sides) for i in range(5)]
    names = [f"o{i}" for i in range(5)]
    blocks = {"object": 2, "subvolume_0": 2, "subvolume_1": 3, "subvolume_2": 50}
    ds = voxel_dataset(summaries, sides=sides, split=(0.6, 0.4, 0), seed=0, names=names, block_items=blocks)
    regs = build_registries(summaries, sides)
    for level, reg in enumerate(regs):
        np.testing.assert_array_equal(ds[f"map_{level}"].values, reg.maps)
        np.testing.assert_array_equal(ds[f"hash_{level}"].values, reg.hashes)
        assert ds[f"subvolumes_{level}"].data.chunks[0][0] == min(blocks[f"subvolume_{level}"], len(reg.hashes))
        c = ds.attrs["counts"]["levels"][str(level)]
        assert c["unique"] == len(reg.hashes) and c["cells"] == 5 * (16 // sides[level]) ** 3
        assert c["bytes_with_dedup"] <= c["bytes_without_dedup"]
    # Level 0 rebuilds each object exactly.
    np.testing.assert_array_equal(
        ds["subvolumes_0"].values[ds["map_0"].values.reshape(-1)], np.stack([s.voxels() for s in summaries])
    )
    assert ds.attrs["counts"]["digest"] == registry_digest(regs)
    assert sorted(ds["split"].values.tolist()) == [0, 0, 0, 1, 1]
    with pytest.raises(ParameterError, match="names"):
        voxel_dataset(summaries, sides=sides, split=(1, 0, 0), seed=0, names=names[:2], block_items=blocks)
