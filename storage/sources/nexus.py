"""NeXus tomography scans: find the frames, image keys and angles, split projections, flats and darks lazily."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import dask.array as da
import h5py
import numpy as np
import xarray as xr

from storage.dims import PROJECTION_DIMS
from storage.errors import SourceError, SourceNotFoundError
from storage.sources._h5 import open_h5, resolve_node
from storage.sources._lazy import Hdf5Frames
from storage.sources._paths import file_record
from storage.sources._stack import ChunksLike, Member, chunk_spec, stack

__all__ = ["contiguous_runs", "open_nxtomo", "read_angles"]

logger = logging.getLogger(__name__)

#: image_key values of NXtomo.
PROJECTION, FLAT, DARK = 0, 1, 2
_ANGLE_NAME = re.compile(r"theta|rot|angle|omega", re.IGNORECASE)


def contiguous_runs(indices: np.ndarray) -> list[tuple[int, int]]:
    """Split sorted frame indices into ``(start, stop)`` runs of consecutive indices.

    Examples
    --------
    >>> contiguous_runs(np.array([0, 1, 2, 5, 6, 9]))
    [(0, 3), (5, 7), (9, 10)]
    """
    if len(indices) == 0:
        return []
    breaks = np.flatnonzero(np.diff(indices) != 1) + 1
    starts = np.concatenate([[0], breaks])
    stops = np.concatenate([breaks, [len(indices)]])
    return [(int(indices[a]), int(indices[b - 1]) + 1) for a, b in zip(starts, stops, strict=True)]


def _text(value: Any) -> str:
    if isinstance(value, np.ndarray):
        value = value.ravel()[0] if value.size else ""
    if isinstance(value, bytes | np.bytes_):
        return value.decode(errors="replace")
    return str(value)


def _nx_class(node: h5py.Group) -> str:
    return _text(node.attrs.get("NX_class", ""))


def _candidates(f: h5py.File) -> Iterator[tuple[str, str, str]]:
    """``(entry, data path, image_key path)``: NXtomo entries first, then any group with data and image_key."""
    groups: list[str] = []
    f.visit(lambda name: groups.append("/" + name) if f.get(name, getclass=True) is h5py.Group else None)
    for g in groups:
        node = f[g]
        is_entry = _nx_class(node) in ("NXentry", "NXsubentry") and "definition" in node
        if is_entry and _text(node["definition"][()]).strip().lower() == "nxtomo":
            detector = f"{g}/instrument/detector"
            data = f"{detector}/data" if "data" in f.get(detector, {}) else f"{g}/data/data"
            yield g, data, f"{detector}/image_key"
    for g in groups:
        node = f[g]
        if "data" in node and "image_key" in node:
            entry = g
            while entry.count("/") > 1 and _nx_class(f[entry]) not in ("NXentry", "NXsubentry"):
                entry = entry.rsplit("/", 1)[0]
            yield entry, f"{g}/data", f"{g}/image_key"


def _link_id(group: h5py.Group, name: str) -> tuple[str, str] | None:
    link = group.get(name, getlink=True)
    if isinstance(link, h5py.ExternalLink):
        return (link.filename, link.path)
    if isinstance(link, h5py.SoftLink):
        return ("", link.path)
    return None


def _angle_paths(f: h5py.File, entry: str, data_path: str) -> Iterator[str]:
    """Where the rotation angles may be, most likely first."""
    group = data_path.rsplit("/", 1)[0]
    yield f"{group}/rotation_angle"
    yield f"{entry}/sample/rotation_angle"
    yield f"{entry}/data/rotation_angle"
    parent, name = data_path.rsplit("/", 1)
    ours = _link_id(f[parent], name)
    nxdata: list[tuple[bool, str]] = []
    f[entry].visit(
        lambda n: (
            nxdata.append((False, f"{entry}/{n}"))
            if f[entry].get(n, getclass=True) is h5py.Group and _nx_class(f[entry][n]) == "NXdata"
            else None
        )
    )
    ranked = []
    for _, g in nxdata:
        node = f[g]
        signal = _text(node.attrs.get("signal", "data"))
        same = ours is not None and signal in node and _link_id(node, signal) == ours
        ranked.append((not same, g))
    for _, g in sorted(ranked):
        node = f[g]
        axes = node.attrs.get("axes")
        names = [_text(a) for a in np.atleast_1d(axes)] if axes is not None else []
        names = names[:1] + sorted(
            k[: -len("_indices")]
            for k in node.attrs
            if k.endswith("_indices") and 0 in np.atleast_1d(node.attrs[k])
        )
        for n in names:
            if n != "." and _ANGLE_NAME.search(n):
                yield f"{g}/{n}"


def read_angles(f: h5py.File, entry: str, data_path: str, n: int) -> tuple[np.ndarray | None, str | None]:
    """Rotation angles in degrees (one per frame) and where they were found, or (None, None).

    Looked for beside the frames, in the entry's sample, then in the NXdata groups (the one plotting these
    frames first); radians are converted.
    """
    for path in _angle_paths(f, entry, data_path):
        try:
            node = f[path]
        except (KeyError, OSError):
            continue
        if not isinstance(node, h5py.Dataset) or node.shape != (n,) or node.dtype.kind not in "iuf":
            continue
        angles = np.asarray(node[()], dtype=np.float64)
        units = _text(node.attrs.get("units", "degree")).lower()
        if units.startswith("rad"):
            angles = np.degrees(angles)
        return angles, path
    return None, None


def _split_chunks(chunks: ChunksLike, all_dims: tuple[str, ...], dims: tuple[str, ...]) -> ChunksLike:
    if isinstance(chunks, Mapping):
        unknown = [k for k in chunks if k not in all_dims]
        if unknown:
            raise SourceError(f"chunks: unknown dimension {unknown[0]!r}; the dimensions are {all_dims}")
        return {k: v for k, v in chunks.items() if k in dims}
    return chunks


def open_nxtomo(
    path: Path,
    *,
    chunks: ChunksLike = None,
    data_path: str | None = None,
    image_key_path: str | None = None,
) -> xr.Dataset:
    """Open one NeXus tomography scan as lazy projections, flats and darks.

    This is what :func:`storage.sources.open_hdf5` does when no ``dataset`` is given.

    Parameters
    ----------
    path : pathlib.Path
        The NeXus file.
    chunks : dict, tuple, int or str, optional
        Chunks by dimension name (``angle``, ``flat``, ``dark``, ``detector_y``, ``detector_x``) or position;
        by default one whole frame per chunk.
    data_path, image_key_path : str, optional
        Where the frames and their image keys are, when the layout is not found by itself (both, or one of them
        beside the found other).

    Returns
    -------
    xarray.Dataset
        ``projections``, ``flats`` and ``darks``, dask-backed, each concatenated from contiguous runs of frames.
        The frames come from an NXentry/NXsubentry whose ``definition`` is NXtomo
        (``instrument/detector/data`` and ``image_key``), else from the first group holding ``data`` and
        ``image_key`` whose frames can be opened. Angles come from ``rotation_angle`` beside the frames or in
        ``sample``/``data``, else from an angle-like axis of an NXdata group of the entry.

    Raises
    ------
    SourceNotFoundError
        The frames sit behind an external link whose file is missing (the message names that file).
    SourceError
        No tomography scan is found (pass ``dataset=`` to :func:`open_hdf5`).
    """
    first_error: SourceNotFoundError | None = None
    with open_h5(path) as f:
        found = None
        seen = set()
        candidates = _candidates(f)
        if data_path is not None or image_key_path is not None:
            found_paths = next(_candidates(f), ("/", "", ""))
            given_data = data_path or found_paths[1]
            given_key = image_key_path or found_paths[2]
            entry_path = "/" + given_data.strip("/").split("/", 1)[0]
            candidates = iter([(entry_path, given_data, given_key)])
        for entry, data_path, key_path in candidates:
            if (data_path, key_path) in seen:
                continue
            seen.add((data_path, key_path))
            try:
                keys_node = resolve_node(f, key_path, path)
                data = resolve_node(f, data_path, path)
            except SourceNotFoundError as exc:
                first_error = first_error or exc
                continue
            if not isinstance(data, h5py.Dataset) or data.ndim != 3 or keys_node.shape != (data.shape[0],):
                continue
            found = (entry, data_path, key_path, data.file.filename, data.name, data.shape, data.dtype)
            image_key = np.rint(np.asarray(keys_node[()], dtype=np.float64)).astype(np.int64)
            angles, angles_path = read_angles(f, entry, data_path, data.shape[0])
            break
    if found is None:
        if first_error is not None:
            raise first_error
        raise SourceError(
            f"{path}: no NXtomo entry and no group holding 'data' and 'image_key' found; pass "
            "dataset='/path/to/frames' to open one dataset"
        )
    entry, data_path, key_path, target, name, shape, dtype = found
    records = [file_record(path)]
    if Path(target).resolve() != Path(path).resolve():
        records.append(file_record(target))
    all_dims = (*PROJECTION_DIMS, "flat", "dark")
    arrays: dict[str, Any] = {}
    coords: dict[str, Any] = {}
    parts = (("projections", PROJECTION, "angle"), ("flats", FLAT, "flat"), ("darks", DARK, "dark"))
    for var, key, stack_dim in parts:
        dims = (stack_dim, *PROJECTION_DIMS[1:])
        indices = np.flatnonzero(image_key == key)
        spec = chunk_spec(_split_chunks(chunks, all_dims, dims), dims)
        members = [
            Member(
                Hdf5Frames(target, (b - a, *shape[1:]), dtype, dataset=name, start=a),
                str(path),
                0,
                np.arange(a, b),
            )
            for a, b in contiguous_runs(indices)
        ]
        empty = da.empty((0, *shape[1:]), dtype=dtype, chunks=(1, *shape[1:]))
        data = stack(members, spec) if members else empty
        arrays[var] = (dims, data)
        frame_coord = "frame" if key == PROJECTION else f"{stack_dim}_frame"
        coords[frame_coord] = (stack_dim, indices.astype(np.int64))
        if key == PROJECTION and angles is not None:
            coords["angle"] = (stack_dim, angles[indices], {"units": "degree"})
    if angles is None:
        logger.warning("%s: no rotation angles found; projections have no 'angle' coord", path)
    attrs = {
        "sources": records,
        "entry": entry,
        "data_path": data_path,
        "image_key_path": key_path,
    }
    if angles_path is not None:
        attrs["angles_path"] = angles_path
    result = xr.Dataset(arrays, coords=coords, attrs=attrs)
    logger.debug(
        "opened NeXus scan %s: %d projections, %d flats, %d darks",
        path,
        result.sizes["angle"],
        result.sizes["flat"],
        result.sizes["dark"],
    )
    return result
