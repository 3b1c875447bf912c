"""``zarrforge voxels``, ``zarrforge rays`` and ``zarrforge splits``: hierarchical voxel stores and their rays."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

from graphs.errors import ParameterError
from graphs.picking import SPLITS, assign_splits
from graphs.rays import RAY_FIELDS, Backend, check_levels, icosphere_views, rays_dataset
from graphs.voxels import (
    OBJECT,
    ObjectSummary,
    level_sides,
    mesh_voxels,
    procedural_voxels,
    summaries_graph,
    voxel_dataset,
)
from storage.errors import StoreError
from storage.layout import SampleGrid
from storage.sources.meshes import check_meshes, read_mesh
from storage.store import TrainingStore, is_training_store
from storage.voxel_store import levels_of, open_voxel_store, reassign_split, store_meta, voxel_identity

from ..clusters import connect, describe_profile
from ..run import RunSummary
from .common import store_grid, write_pipeline

__all__ = ["reassign_splits", "run_rays", "run_voxels"]

log = logging.getLogger(__name__)

PathsLike = str | os.PathLike[str] | Sequence[str | os.PathLike[str]]


def run_voxels(
    inputs: PathsLike | None,
    output: str | os.PathLike[str],
    *,
    synthetic: int | None = None,
    resolution: int = 64,
    min_resolution: int = 4,
    split: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    cluster: str | None = None,
    overwrite: bool = False,
    codec: str | None = None,
    progress: bool | None = None,
) -> RunSummary:
    """Build a hierarchical voxel store from meshes or procedural objects (``zarrforge voxels``).

    Parameters
    ----------
    inputs : path, glob, folder or list of them, optional
        Mesh files (STL, OBJ, PLY, OFF, GLB) read with trimesh; or ``None`` with ``synthetic``.
    output : path
        The store.
    synthetic : int, optional
        Generate this many procedural objects (unions of spheres, boxes and tori) instead of reading meshes.
    resolution, min_resolution : int
        Powers of two: the object grid and the smallest subvolume side (:func:`graphs.voxels.level_sides`).
    split : sequence of float
        Train, val, test shares of the objects (a seeded permutation; reassign later with
        :func:`reassign_splits`).
    seed, cluster, overwrite, codec, progress
        As for every pipeline.

    Returns
    -------
    RunSummary
    """
    sides = level_sides(resolution, min_resolution)
    assign_splits(1, split, seed)  # checks the ratios before anything runs
    if (inputs is None) == (synthetic is None):
        raise ParameterError("give mesh files or --synthetic N (not both)")
    describe_profile(cluster)
    parameters: dict[str, Any] = {
        "resolution": resolution,
        "min_resolution": min_resolution,
        "split": [float(r) for r in split],
        "synthetic": synthetic,
    }
    if synthetic is not None:
        voxels = procedural_voxels(int(synthetic), resolution=resolution, seed=seed)
        names = [f"synthetic-{i:05d}" for i in range(int(synthetic))]
        sources: list[dict[str, Any]] = []
    else:
        meshes = check_meshes(inputs if isinstance(inputs, str | os.PathLike) else list(inputs or ()))
        voxels = mesh_voxels([str(m.path) for m in meshes], read_mesh, resolution=resolution)
        names = [m.path.stem for m in meshes]
        sources = [m.record for m in meshes]
    done = _finished_summary(output, "voxels", parameters, seed, sources, overwrite)
    if done is not None:
        return done
    with connect(cluster) as client:
        # Pass 1: one task per object voxelizes and hashes it; the counts decide every offset of the store.
        futures = client.compute(summaries_graph(voxels, sides))
        summaries: list[ObjectSummary] = client.gather(futures)
    object_bytes = sum(4 * (resolution // s) ** 3 for s in sides)
    grids = {OBJECT: store_grid(object_bytes)}
    for level, side in enumerate(sides):
        grids[f"subvolume_{level}"] = store_grid(max(side**3, 16))
    ds = voxel_dataset(
        summaries,
        sides=sides,
        split=split,
        seed=seed,
        names=names,
        block_items={axis: g.shard_samples for axis, g in grids.items()},
    )
    ds.attrs["parameters"] = parameters
    ds.attrs["sources"] = sources
    for level, c in ds.attrs["counts"]["levels"].items():
        log.info(
            "level %s (%d³): %d cells, %d unique (%d empty, %d full); dedup stores %.1f%% of the bytes",
            level,
            c["side"],
            c["cells"],
            c["unique"],
            c["empty"],
            c["full"],
            100 * c["bytes_with_dedup"] / max(c["bytes_without_dedup"], 1),
        )
    return write_pipeline(
        ds,
        output,
        grid=grids,
        pipeline="voxels",
        seed=seed,
        cluster=cluster,
        overwrite=overwrite,
        codec=codec,
        progress=progress,
    )


def run_rays(
    voxels: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    sphere_divisions: int = 2,
    samples_per_view: int = 3000,
    views_per_subvolume: int | None = 1,
    adaptive: bool = False,
    levels: Sequence[int] = (),
    seed: int = 0,
    backend: Backend = "auto",
    cluster: str | None = None,
    overwrite: bool = False,
    codec: str | None = None,
    progress: bool | None = None,
) -> RunSummary:
    """Cast rays at every unique subvolume of a voxel store into a rays store (``zarrforge rays``).

    Parameters
    ----------
    voxels : path
        A finished voxel store (:func:`run_voxels`); its identity (fingerprint and registry digest) is recorded,
        so a Dataset refuses a rays store cast from another voxel store.
    output : path
    sphere_divisions, samples_per_view, views_per_subvolume, adaptive
        See :func:`graphs.rays.rays_dataset`; ``views_per_subvolume=None`` means every view.
    levels : sequence of int
        Levels to cast (default: all).
    backend : str
        ``auto``: torch on a CUDA device when the worker has one, else the numba kernel.
    seed, cluster, overwrite, codec, progress
        As for every pipeline.
    """
    voxel_ds, meta = open_voxel_store(voxels)
    chosen = check_levels(list(levels), levels_of(meta), str(voxels))
    n_views = len(icosphere_views(sphere_divisions))
    per_subvolume = n_views if views_per_subvolume is None else int(views_per_subvolume)
    n_rays = per_subvolume * max(int(samples_per_view), 1)
    describe_profile(cluster)
    grids: dict[int, SampleGrid] = {}
    for level in chosen:
        grids[level] = store_grid(n_rays * 4 * 3)  # origins: the largest array per subvolume
    ds = rays_dataset(
        {k: voxel_ds[f"subvolumes_{k}"] for k in chosen},
        sphere_divisions=sphere_divisions,
        samples_per_view=samples_per_view,
        views_per_subvolume=per_subvolume,
        adaptive=adaptive,
        seed=seed,
        block_items={k: grids[k].shard_samples for k in chosen},
        backend=backend,
    )
    identity = voxel_identity(voxels)
    total = sum(int(voxel_ds.sizes[f"subvolume_{k}"]) for k in chosen) * n_rays
    log.info(
        "%d rays (%d per subvolume) for levels %s: about %.1f MiB before compression",
        total,
        n_rays,
        chosen,
        total * (4 * (len(RAY_FIELDS) - 1) + 1) / 2**20,
    )
    # The voxel store's identity is a parameter: a rays store is fingerprinted with what it was cast from.
    ds.attrs["parameters"] = {**ds.attrs["parameters"], "voxels": identity}
    ds.attrs["sources"] = [identity]
    store_grids = {f"subvolume_{k}": grids[k] for k in chosen}
    store_grids["view"] = SampleGrid(n_views, n_views)
    return write_pipeline(
        ds,
        output,
        grid=store_grids,
        pipeline="rays",
        seed=seed,
        cluster=cluster,
        overwrite=overwrite,
        codec=codec,
        progress=progress,
    )


def reassign_splits(
    store: str | os.PathLike[str], ratios: Sequence[float], *, seed: int | None = None
) -> dict[str, int]:
    """Reassign a voxel store's objects to train/val/test without recomputing voxels or rays.

    The new split is the same seeded permutation :func:`run_voxels` draws (``seed`` defaults to the store's),
    cut by ``ratios``. Rays stores cast from the voxel store stay valid: they are per unique subvolume, and the
    voxel store's identity does not change.

    Returns
    -------
    dict of str to int
        Objects per split.
    """
    meta = store_meta(store, "voxels")
    seed = int(meta.get("seed", 0)) if seed is None else int(seed)
    n_objects = int(meta["counts"]["objects"])
    split = assign_splits(n_objects, ratios, seed)
    counts = {name: int((split == code).sum()) for name, code in SPLITS.items()}
    reassign_split(store, split, {"ratios": [float(r) for r in ratios], "seed": seed}, counts)
    return counts


def _finished_summary(
    output: str | os.PathLike[str],
    pipeline: str,
    parameters: dict[str, Any],
    seed: int,
    sources: list[dict[str, Any]],
    overwrite: bool,
) -> RunSummary | None:
    """A summary for a store this exact run already finished (so pass 1 is not recomputed), else ``None``."""
    if overwrite or not is_training_store(output):
        return None
    store = TrainingStore.open(output)
    try:
        meta = store.attrs
        content = meta["content"]
        same = (
            content.get("pipeline") == pipeline
            and content.get("parameters") == parameters
            and content.get("seed") == seed
            and content.get("sources") == sources
        )
        if not (same and store.complete):
            return None
        done, total = store.progress()
    except (StoreError, KeyError, OSError):
        return None
    return RunSummary(
        str(store.path), int(meta["counts"]["objects"]), total, 0, done, 0, store.nbytes_on_disk(), 0.0
    )
