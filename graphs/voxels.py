"""Hierarchical voxel datasets: solid voxel grids of objects, cut into levels of subvolumes, deduplicated by hash.

Conventions (also in the README):

- **Grid.** An object is a boolean ``(R, R, R)`` grid, axes ``(z, y, x)``; voxel ``(i, j, k)`` spans
  ``[i, i+1) × [j, j+1) × [k, k+1)`` in voxel units and is occupied when its center lies inside the solid.
- **Levels.** Level ``k`` cuts the grid into ``(2**k)**3`` cubes of side ``R / 2**k`` (level 0: the whole
  object), down to the side ``min_resolution``. A cell's position is its ``(cz, cy, cx)`` index, C order.
- **Hash.** A subvolume's key is ``blake2b(digest_size=16)`` of ``"<side>,<side>,<side>|uint8|"`` followed by its
  raw bytes (uint8 0/1, C order): the same content at the same level is stored once.
- **Registry.** Unique subvolumes of a level are numbered in order of first occurrence (objects in order, cells
  in C order), so the registry depends only on the inputs, never on scheduling.

The pipeline runs in two passes, as DESIGN.md asks for data-dependent counts: one task per object voxelizes and
hashes it (:func:`summarize_object`), then :func:`voxel_dataset` builds the store's arrays at known offsets.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
from dask.base import tokenize
from dask.delayed import delayed

from .errors import ParameterError
from .patches import literal_array
from .picking import SPLITS, assign_splits

__all__ = [
    "FLAGS",
    "OBJECT",
    "ObjectSummary",
    "Registry",
    "build_registries",
    "level_sides",
    "mesh_voxels",
    "registry_digest",
    "summaries_graph",
    "unique_subvolumes",
    "procedural_description",
    "procedural_object",
    "procedural_voxels",
    "split_cells",
    "subvolume_hashes",
    "summarize_object",
    "voxel_dataset",
    "voxelize_mesh",
]

#: The leading axis of per-object arrays.
OBJECT = "object"
#: ``flags_<k>`` values: a subvolume with some, no, or only occupied voxels.
FLAGS = {"partial": 0, "empty": 1, "full": 2}
_SHAPES = ("sphere", "box", "torus")


def level_sides(resolution: int, min_resolution: int) -> list[int]:
    """Subvolume sides of each level: ``resolution``, halved down to ``min_resolution``.

    Examples
    --------
    >>> level_sides(64, 4)
    [64, 32, 16, 8, 4]
    """
    for name, value in (("resolution", resolution), ("min resolution", min_resolution)):
        if not isinstance(value, int | np.integer) or value < 1 or value & (value - 1):
            raise ParameterError(f"{name} must be a power of two (4, 8, ..., 128), got {value}")
    if min_resolution > resolution:
        raise ParameterError(
            f"min resolution {min_resolution} is above the resolution {resolution}; give --min-resolution <= "
            "--resolution"
        )
    sides = [int(resolution)]
    while sides[-1] > min_resolution:
        sides.append(sides[-1] // 2)
    return sides


# ---------------------------------------------------------------- procedural shapes
def procedural_description(index: int, seed: int) -> list[dict[str, Any]]:
    """The primitives of procedural object ``index``: 1-3 spheres, boxes or tori, drawn from ``[seed, index]``.

    Coordinates are in the unit cube ``[-1, 1]**3`` (z, y, x); the object is their union.

    Examples
    --------
    >>> [p["shape"] for p in procedural_description(0, seed=0)] == [
    ...     p["shape"] for p in procedural_description(0, seed=0)]
    True
    """
    rng = np.random.default_rng([seed, index])
    parts = []
    for _ in range(int(rng.integers(1, 4))):
        shape = _SHAPES[int(rng.integers(len(_SHAPES)))]
        center = rng.uniform(-0.35, 0.35, 3)
        part: dict[str, Any] = {"shape": shape, "center": center.tolist()}
        if shape == "sphere":
            part["radius"] = float(rng.uniform(0.2, 0.55))
        elif shape == "box":
            part["half"] = rng.uniform(0.1, 0.5, 3).tolist()
        else:
            part["major"] = float(rng.uniform(0.3, 0.55))
            part["minor"] = float(rng.uniform(0.08, 0.2))
            part["axis"] = int(rng.integers(3))
        parts.append(part)
    return parts


def procedural_object(index: int, seed: int, resolution: int) -> np.ndarray:
    """Voxelize procedural object ``index``: the union of its primitives, sampled at voxel centers.

    Returns
    -------
    numpy.ndarray
        Boolean ``(resolution,) * 3``.

    Examples
    --------
    >>> grid = procedural_object(3, seed=0, resolution=16)
    >>> grid.shape, grid.dtype, bool(grid.any())
    ((16, 16, 16), dtype('bool'), True)
    """
    c = (np.arange(resolution) + 0.5) / resolution * 2 - 1
    z, y, x = np.meshgrid(c, c, c, indexing="ij", sparse=True)
    inside = np.zeros((resolution,) * 3, dtype=bool)
    for part in procedural_description(index, seed):
        cz, cy, cx = part["center"]
        dz, dy, dx = z - cz, y - cy, x - cx
        if part["shape"] == "sphere":
            inside |= dz * dz + dy * dy + dx * dx <= part["radius"] ** 2
        elif part["shape"] == "box":
            hz, hy, hx = part["half"]
            inside |= (np.abs(dz) <= hz) & (np.abs(dy) <= hy) & (np.abs(dx) <= hx)
        else:
            d = [dz, dy, dx]
            along = d.pop(part["axis"])
            ring = np.sqrt(d[0] * d[0] + d[1] * d[1]) - part["major"]
            inside |= ring * ring + along * along <= part["minor"] ** 2
    return inside


def procedural_voxels(n_objects: int, *, resolution: int, seed: int) -> da.Array:
    """``n_objects`` procedural objects as a lazy ``(object, z, y, x)`` boolean array, one task per object.

    Examples
    --------
    >>> procedural_voxels(3, resolution=8, seed=0).chunks[0]
    (1, 1, 1)
    """
    if n_objects < 1:
        raise ParameterError(f"--synthetic needs at least 1 object, got {n_objects}")
    name = f"voxels-procedural-{tokenize(n_objects, resolution, seed)}"
    layer = {(name, i, 0, 0, 0): (_one_procedural, i, seed, resolution) for i in range(n_objects)}
    return da.Array(layer, name, chunks=((1,) * n_objects, *((resolution,),) * 3), dtype=bool)


def _one_procedural(index: int, seed: int, resolution: int) -> np.ndarray:
    return procedural_object(index, seed, resolution)[None]


# ---------------------------------------------------------------- meshes
def voxelize_mesh(vertices: np.ndarray, faces: np.ndarray, resolution: int, *, fill: bool = True) -> np.ndarray:
    """Solid voxelization of a triangle mesh into a ``(resolution,) * 3`` grid (axes z, y, x = mesh z, y, x).

    The mesh's bounding box is centered in the grid and scaled uniformly so that its longest side spans
    ``resolution - 1`` voxels (half a voxel of margin on each side). Every voxel the surface passes through is
    occupied (the triangles are subdivided until no edge is longer than half a voxel, and the voxels holding a
    vertex are marked, as ``trimesh.voxel.creation.voxelize_subdivide`` does); with ``fill`` the cavities these
    surface voxels enclose are filled (``scipy.ndimage.binary_fill_holes``), giving the solid. A surface with
    holes larger than a voxel encloses nothing there, so a non-watertight mesh may stay hollow.

    Examples
    --------
    >>> import trimesh
    >>> box = trimesh.creation.box((2, 2, 2))
    >>> grid = voxelize_mesh(np.asarray(box.vertices), np.asarray(box.faces), 8)
    >>> int(grid.sum())  # a solid box fills the grid but its margin
    512
    """
    import scipy.ndimage  # type: ignore[import-untyped]
    import trimesh.remesh

    vertices = np.asarray(vertices, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    if not len(faces) or not len(vertices):
        raise ParameterError("the mesh has no triangles")
    low, high = vertices.min(axis=0), vertices.max(axis=0)
    extent = float((high - low).max())
    if not np.isfinite(extent) or extent <= 0:
        raise ParameterError("the mesh is flat or degenerate (its bounding box has no extent)")
    # Mesh (x, y, z) → grid (z, y, x); centered, longest side over resolution - 1 voxels.
    scale = (resolution - 1) / extent
    points = (vertices - (low + high) / 2) * scale + resolution / 2
    points = points[:, ::-1]
    subdivide: Any = trimesh.remesh.subdivide_to_size
    fine, _ = subdivide(points, faces, max_edge=0.5, max_iter=64)
    index = np.clip(np.floor(fine).astype(np.int64), 0, resolution - 1)
    grid = np.zeros((resolution,) * 3, dtype=bool)
    grid[index[:, 0], index[:, 1], index[:, 2]] = True
    if fill:
        grid = scipy.ndimage.binary_fill_holes(grid)
    return np.asarray(grid, dtype=bool)


def mesh_voxels(
    paths: Sequence[str], read: Callable[[str], tuple[np.ndarray, np.ndarray]], *, resolution: int
) -> da.Array:
    """Meshes as a lazy ``(object, z, y, x)`` boolean array: one ``voxels-mesh`` task per file reads and voxelizes.

    ``read`` returns a file's ``(vertices, faces)`` (:func:`storage.sources.meshes.read_mesh`); it runs in the
    task, so only the worker holding the object ever holds its mesh.
    """
    name = f"voxels-mesh-{tokenize(tuple(paths), resolution)}"
    layer = {(name, i, 0, 0, 0): (_one_mesh, read, path, resolution) for i, path in enumerate(paths)}
    return da.Array(layer, name, chunks=((1,) * len(paths), *((resolution,),) * 3), dtype=bool)


def _one_mesh(read: Callable[[str], tuple[np.ndarray, np.ndarray]], path: str, resolution: int) -> np.ndarray:
    vertices, faces = read(path)
    return voxelize_mesh(vertices, faces, resolution)[None]


# ---------------------------------------------------------------- hierarchy and hashes
def split_cells(voxels: np.ndarray, side: int) -> np.ndarray:
    """Cut a cubic grid into cubes of ``side``: ``(n**3, side, side, side)``, cells in C order of ``(cz, cy, cx)``.

    Examples
    --------
    >>> grid = np.arange(64).reshape(4, 4, 4)
    >>> cells = split_cells(grid, 2)
    >>> cells.shape, cells[1].tolist() == grid[:2, :2, 2:].tolist()
    ((8, 2, 2, 2), True)
    """
    r = voxels.shape[0]
    n = r // side
    cells = voxels.reshape(n, side, n, side, n, side).transpose(0, 2, 4, 1, 3, 5)
    return np.ascontiguousarray(cells).reshape(n**3, side, side, side)


def subvolume_hashes(cells: np.ndarray) -> np.ndarray:
    """blake2b-128 of ``"<shape>|<dtype>|"`` + bytes of each cell: ``(n, 16)`` uint8.

    Examples
    --------
    >>> cells = np.zeros((2, 4, 4, 4), np.uint8)
    >>> h = subvolume_hashes(cells)
    >>> h.shape, bool((h[0] == h[1]).all())
    ((2, 16), True)
    """
    cells = np.ascontiguousarray(cells)
    prefix = f"{','.join(map(str, cells.shape[1:]))}|{cells.dtype}|".encode()
    out = np.empty((len(cells), 16), dtype=np.uint8)
    for i, cell in enumerate(cells):
        h = hashlib.blake2b(prefix, digest_size=16)
        h.update(cell.data)
        out[i] = np.frombuffer(h.digest(), dtype=np.uint8)
    return out


@dataclass(frozen=True)
class ObjectSummary:
    """What pass 1 learns of one object: each cell's hash and occupied voxels per level; its voxels, packed."""

    resolution: int
    hashes: tuple[np.ndarray, ...]
    counts: tuple[np.ndarray, ...]
    packed: np.ndarray = field(repr=False)

    def voxels(self) -> np.ndarray:
        """The object's boolean grid."""
        r = self.resolution
        return np.unpackbits(self.packed, count=r**3).reshape(r, r, r).astype(bool)


def summarize_object(voxels: np.ndarray, sides: Sequence[int]) -> ObjectSummary:
    """Hash every cell of every level of one object (pass 1 of the pipeline).

    Examples
    --------
    >>> s = summarize_object(np.ones((1, 8, 8, 8), bool), [8, 4])
    >>> [len(h) for h in s.hashes], s.counts[1].tolist()
    ([1, 8], [64, 64, 64, 64, 64, 64, 64, 64])
    """
    grid: np.ndarray = np.asarray(voxels)
    grid = grid.reshape(grid.shape[-3:]).astype(np.uint8)
    hashes, counts = [], []
    for side in sides:
        cells = split_cells(grid, side)
        hashes.append(subvolume_hashes(cells))
        counts.append(cells.reshape(len(cells), -1).sum(axis=1, dtype=np.int64).astype(np.int32))
    return ObjectSummary(len(grid), tuple(hashes), tuple(counts), np.packbits(grid.reshape(-1)))


@dataclass(frozen=True)
class Registry:
    """The unique subvolumes of one level, numbered by first occurrence.

    Attributes
    ----------
    side : int
    hashes : numpy.ndarray
        ``(unique, 16)`` uint8.
    first : numpy.ndarray
        ``(unique, 2)`` int64: ``(object, cell)`` where each first occurs.
    counts : numpy.ndarray
        Occupied voxels of each unique subvolume.
    refs : numpy.ndarray
        How many cells of all objects hold it.
    maps : numpy.ndarray
        ``(object, n, n, n)`` int32: the unique subvolume at each cell.
    """

    side: int
    hashes: np.ndarray
    first: np.ndarray
    counts: np.ndarray
    refs: np.ndarray
    maps: np.ndarray

    @property
    def flags(self) -> np.ndarray:
        """int8 ``FLAGS`` of each unique subvolume."""
        flags = np.full(len(self.counts), FLAGS["partial"], dtype=np.int8)
        flags[self.counts == 0] = FLAGS["empty"]
        flags[self.counts == self.side**3] = FLAGS["full"]
        return flags


def build_registries(summaries: Sequence[ObjectSummary], sides: Sequence[int]) -> list[Registry]:
    """Deduplicate the cells of all objects, level by level, in order of first occurrence.

    Examples
    --------
    >>> a = summarize_object(np.zeros((8, 8, 8), bool), [8, 4])
    >>> regs = build_registries([a, a], [8, 4])
    >>> len(regs[1].hashes), regs[1].refs.tolist(), regs[1].maps.shape
    (1, [16], (2, 2, 2, 2))
    """
    registries = []
    resolution = sides[0]
    for level, side in enumerate(sides):
        n = resolution // side
        index: dict[bytes, int] = {}
        first: list[tuple[int, int]] = []
        counts: list[int] = []
        maps = np.empty((len(summaries), n**3), dtype=np.int32)
        for obj, summary in enumerate(summaries):
            hashes, cell_counts = summary.hashes[level], summary.counts[level]
            for cell in range(len(hashes)):
                key = hashes[cell].tobytes()
                u = index.get(key)
                if u is None:
                    u = index[key] = len(first)
                    first.append((obj, cell))
                    counts.append(int(cell_counts[cell]))
                maps[obj, cell] = u
        unique_hashes = np.frombuffer(b"".join(index), dtype=np.uint8).reshape(-1, 16)
        refs = np.bincount(maps.reshape(-1), minlength=len(first)).astype(np.int32)
        registries.append(
            Registry(
                side,
                unique_hashes,
                np.asarray(first, dtype=np.int64).reshape(-1, 2),
                np.asarray(counts, dtype=np.int32),
                refs,
                maps.reshape(len(summaries), n, n, n),
            )
        )
    return registries


def registry_digest(registries: Sequence[Registry]) -> str:
    """One hash of every level's unique hashes and maps: the identity of a voxel store's content.

    Examples
    --------
    >>> regs = build_registries([summarize_object(np.ones((4, 4, 4), bool), [4, 2])], [4, 2])
    >>> len(registry_digest(regs))
    32
    """
    h = hashlib.blake2b(digest_size=16)
    for reg in registries:
        h.update(reg.hashes.tobytes())
        h.update(reg.maps.tobytes())
    return h.hexdigest()


def unique_subvolumes(registry: Registry, summaries: Sequence[ObjectSummary]) -> np.ndarray:
    """The unique subvolumes of one level, ``(unique, side, side, side)`` uint8, cut from their first object."""
    out = np.empty((len(registry.first), *(registry.side,) * 3), dtype=np.uint8)
    for obj in np.unique(registry.first[:, 0]) if len(registry.first) else []:
        mine = np.flatnonzero(registry.first[:, 0] == obj)
        cells = split_cells(summaries[int(obj)].voxels().astype(np.uint8), registry.side)
        out[mine] = cells[registry.first[mine, 1]]
    return out


def summaries_graph(voxels: da.Array, sides: Sequence[int]) -> list[Any]:
    """Pass 1 as lazy tasks: one ``voxels-summarize`` per object, each on one object's block of ``voxels``."""
    name = f"voxels-summarize-{tokenize(voxels.name, tuple(sides))}"
    return [
        delayed(summarize_object, pure=True)(block, tuple(sides), dask_key_name=(name, i))
        for i, block in enumerate(voxels.to_delayed().reshape(-1))
    ]


def voxel_dataset(
    summaries: Sequence[ObjectSummary],
    *,
    sides: Sequence[int],
    split: Sequence[float],
    seed: int,
    names: Sequence[str],
    block_items: dict[str, int],
) -> xr.Dataset:
    """The voxel store's arrays, from the summaries of pass 1 (every value known: written at known offsets).

    Parameters
    ----------
    summaries : sequence of ObjectSummary
        One per object, in object order.
    sides : sequence of int
        Subvolume side of each level (:func:`level_sides`).
    split : sequence of float
        Train, val, test shares of the objects (:func:`graphs.picking.assign_splits`).
    seed : int
    names : sequence of str
        A name per object (file stem or ``synthetic-0007``), kept in ``attrs["names"]``.
    block_items : dict of str to int
        Items per write block (one shard) of each leading axis: ``object`` and ``subvolume_<k>``.

    Returns
    -------
    xarray.Dataset
        Per object: ``split`` (int8), ``occupancy`` (float32), ``map_<k>`` (int32 ``(object, n, n, n)``); per
        level's unique subvolume: ``subvolumes_<k>`` (uint8 0/1), ``hash_<k>`` (16 bytes), ``occupancy_<k>``,
        ``flags_<k>`` (int8, ``FLAGS``), ``refs_<k>`` (int32). ``attrs``: ``counts`` (per level: cells, unique,
        empty, full, bytes with and without dedup, and the registry ``digest``).
    """
    if len(summaries) != len(names):
        raise ParameterError(f"{len(summaries)} objects but {len(names)} names")
    registries = build_registries(summaries, sides)
    token = tokenize(registry_digest(registries), tuple(split), seed)
    n_objects = len(summaries)
    obj_block = block_items[OBJECT]
    ds = xr.Dataset()
    splits = assign_splits(n_objects, split, seed)
    ds["split"] = xr.Variable(
        (OBJECT,),
        literal_array(splits, obj_block, f"voxels-split-{token}"),
        {
            "long_name": "dataset split of the object",
            "flag_values": list(SPLITS.values()),
            "flag_meanings": " ".join(SPLITS),
        },
    )
    occupancy = np.asarray([s.counts[0][0] / s.resolution**3 for s in summaries], dtype=np.float32)
    ds["occupancy"] = xr.Variable(
        (OBJECT,),
        literal_array(occupancy, obj_block, f"voxels-occupancy-{token}"),
        {"long_name": "share of occupied voxels of the object"},
    )
    counts: dict[str, Any] = {"objects": n_objects, "digest": registry_digest(registries), "levels": {}}
    for level, reg in enumerate(registries):
        n = sides[0] // reg.side
        cell = (f"cell_z_{level}", f"cell_y_{level}", f"cell_x_{level}")
        ds[f"map_{level}"] = xr.Variable(
            (OBJECT, *cell),
            literal_array(reg.maps, obj_block, f"voxels-map{level}-{token}"),
            {"long_name": f"index into subvolumes_{level} of each cell ({n}**3 cells of {reg.side}**3 voxels)"},
        )
        axis = f"subvolume_{level}"
        block = block_items[axis]
        flags = reg.flags
        per_unique: dict[str, tuple[np.ndarray, tuple[str, ...], dict[str, Any]]] = {
            "subvolumes": (
                unique_subvolumes(reg, summaries),
                (axis, f"z_{level}", f"y_{level}", f"x_{level}"),
                {"long_name": f"unique level-{level} subvolumes, 1 = occupied"},
            ),
            "hash": (reg.hashes, (axis, "digest"), {"long_name": "blake2b-128 of '<shape>|uint8|' + bytes"}),
            "occupancy": (
                (reg.counts / reg.side**3).astype(np.float32),
                (axis,),
                {"long_name": "share of occupied voxels"},
            ),
            "flags": (
                flags,
                (axis,),
                {
                    "long_name": "empty, full or partial",
                    "flag_values": list(FLAGS.values()),
                    "flag_meanings": " ".join(FLAGS),
                },
            ),
            "refs": (reg.refs, (axis,), {"long_name": "cells of all objects holding this subvolume"}),
        }
        for kind, (values, dims, attrs) in per_unique.items():
            ds[f"{kind}_{level}"] = xr.Variable(
                dims, literal_array(values, block, f"voxels-{kind}{level}-{token}"), attrs
            )
        cells = n_objects * n**3
        counts["levels"][str(level)] = {
            "side": reg.side,
            "cells": cells,
            "unique": len(reg.hashes),
            "empty": int((flags == FLAGS["empty"]).sum()),
            "full": int((flags == FLAGS["full"]).sum()),
            "partial": int((flags == FLAGS["partial"]).sum()),
            "bytes_without_dedup": cells * reg.side**3,
            "bytes_with_dedup": len(reg.hashes) * reg.side**3,
        }
    counts["split"] = {name: int((splits == code).sum()) for name, code in SPLITS.items()}
    ds.attrs["counts"] = counts
    ds.attrs["names"] = list(names)
    return ds
