"""Voxel stores as inputs: open one lazily (for ``zarrforge rays``), name its content, and reassign its splits.

A voxel store (``zarrforge voxels``) is a training store whose leading axes are ``object`` and one
``subvolume_<k>`` per level. A rays store records :func:`voxel_identity` of the voxel store it was cast from;
:func:`check_rays_match` refuses a pair that does not belong together.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import xarray as xr
import zarr

from .errors import StoreError, StoreMismatchError
from .provenance import utc_now
from .store import TrainingStore

__all__ = [
    "check_rays_match",
    "levels_of",
    "open_voxel_store",
    "reassign_split",
    "store_meta",
    "voxel_identity",
]

log = logging.getLogger(__name__)


def store_meta(path: str | os.PathLike[str], pipeline: str) -> dict[str, Any]:
    """The ``zarrforge`` attrs of a finished store made by ``pipeline``; a clear error for anything else."""
    store = TrainingStore.open(path)
    meta = store.attrs
    if meta.get("pipeline") != pipeline:
        raise StoreError(
            f"{path}: made by zarrforge {meta.get('pipeline')!r}, not {pipeline!r}; pass a store from "
            f"zarrforge {pipeline}"
        )
    if not store.complete:
        done, total = store.progress()
        raise StoreError(f"{path}: unfinished ({done} of {total} blocks); re-run the command that writes it")
    return meta


def voxel_identity(path: str | os.PathLike[str]) -> dict[str, Any]:
    """What identifies a voxel store's content: its path, fingerprint and registry digest.

    The digest hashes every level's unique subvolume hashes and object maps, so two stores with the same digest
    hold the same subvolumes in the same order; reassigning splits changes neither.
    """
    meta = store_meta(path, "voxels")
    return {
        "path": str(Path(path).absolute()),
        "fingerprint": meta.get("fingerprint"),
        "digest": meta.get("counts", {}).get("digest"),
    }


def open_voxel_store(path: str | os.PathLike[str]) -> tuple[xr.Dataset, dict[str, Any]]:
    """A finished voxel store as a lazy xarray Dataset (nothing read but metadata), and its ``zarrforge`` attrs."""
    meta = store_meta(path, "voxels")
    ds = xr.open_zarr(str(path), consolidated=True)
    return ds, meta


def check_rays_match(rays: str | os.PathLike[str], voxels: str | os.PathLike[str]) -> dict[str, Any]:
    """Raise :class:`StoreMismatchError` unless ``rays`` was cast from the voxel store ``voxels`` as it is now.

    Returns the rays store's ``zarrforge`` attrs.
    """
    rays_meta = store_meta(rays, "rays")
    made_from = rays_meta.get("parameters", {}).get("voxels") or {}
    now = voxel_identity(voxels)
    for key in ("digest", "fingerprint"):
        if made_from.get(key) != now[key]:
            raise StoreMismatchError(
                f"{rays}: was cast from the voxel store {made_from.get('path')} with {key} {made_from.get(key)}, "
                f"but {voxels} has {key} {now[key]}; re-run zarrforge rays on {voxels}"
            )
    return rays_meta


def reassign_split(
    path: str | os.PathLike[str], split: np.ndarray, record: Mapping[str, Any], counts: Mapping[str, int]
) -> None:
    """Overwrite a finished store's per-object ``split`` array in place (under the writer lock).

    Nothing else changes: the fingerprint (which a re-run of the original command checks) stays, the new
    assignment is recorded in ``attrs["zarrforge"]["splits"]`` (``record`` plus the time) and ``counts.split``.
    """
    with TrainingStore.open(path).locked():
        try:
            group = zarr.open_group(str(path), mode="r+", use_consolidated=False)
            if "split" not in group:
                raise StoreError(f"{path}: holds no split array")
            array = cast("zarr.Array[Any]", group["split"])
            if array.shape != split.shape:
                raise StoreError(f"{path}: split has shape {array.shape}, got {split.shape}")
            array[:] = split.astype(array.dtype)
            meta = dict(cast(Mapping[str, Any], group.attrs["zarrforge"]))
            meta["splits"] = {**dict(record), "reassigned": utc_now()}
            meta["counts"] = {**dict(meta.get("counts", {})), "split": dict(counts)}
            group.attrs["zarrforge"] = meta
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # consolidated metadata is outside the v3 spec (zarr warns)
                zarr.consolidate_metadata(str(path))
        except OSError as e:
            raise StoreError(f"{path}: rewriting the split failed: {e}") from e


def levels_of(meta: Mapping[str, Any]) -> Sequence[int]:
    """The levels a voxel store holds, from its attrs."""
    return [int(k) for k in meta.get("counts", {}).get("levels", {})]
