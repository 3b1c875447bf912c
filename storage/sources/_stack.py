"""Stacking per-file readers into one lazy array with the chunks the caller asked for, plus its coords."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
from dask.array.core import normalize_chunks

from storage.errors import SourceError
from storage.sources._lazy import LazyFrames, to_dask

__all__ = ["ChunksLike", "Member", "chunk_spec", "stack", "stacked_dataarray"]

#: Chunks as the openers accept them: None (one image per chunk), a dict by dim name, a tuple, or one value.
ChunksLike = Mapping[str, Any] | Sequence[Any] | int | str | None


def chunk_spec(chunks: ChunksLike, dims: Sequence[str]) -> tuple[Any, ...]:
    """Per-axis chunk spec for the stacked result; the default is one image per chunk, whole images."""
    default: tuple[Any, ...] = (1,) + (-1,) * (len(dims) - 1)
    if chunks is None:
        return default
    if isinstance(chunks, Mapping):
        unknown = [k for k in chunks if k not in dims]
        if unknown:
            raise SourceError(f"chunks: unknown dimension {unknown[0]!r}; the dimensions are {tuple(dims)}")
        return tuple(default[i] if chunks.get(d) is None else chunks[d] for i, d in enumerate(dims))
    if isinstance(chunks, str | int):
        return (chunks,) * len(dims)
    spec = tuple(chunks)
    if len(spec) != len(dims):
        raise SourceError(f"chunks: {len(spec)} entries given for the {len(dims)} dimensions {tuple(dims)}")
    return tuple(default[i] if c is None else c for i, c in enumerate(spec))


class Member:
    """One reader in a stack, with the provenance its images carry as coords."""

    def __init__(self, reader: LazyFrames, source: str, source_index: int, frames: np.ndarray) -> None:
        self.reader = reader
        self.source = source
        self.source_index = source_index
        self.frames = np.asarray(frames, dtype=np.int64)


def stack(members: Sequence[Member], spec: tuple[Any, ...]) -> da.Array:
    """Concatenate the members' dask arrays along axis 0 and bring them to the chunks of ``spec``.

    Task names fold in the size and mtime of the file each reader reads, so a changed file gets new names.
    """
    parts = []
    for m in members:
        r = m.reader
        first = spec[0]
        lead = first if isinstance(first, int) and first > 0 else (r.shape[0] if first == -1 else 1)
        per_file = (min(lead, r.shape[0]) or 1, *(c for c in spec[1:]))
        per_file = normalize_chunks(per_file, r.shape, dtype=r.dtype)
        st = os.stat(r.path)
        parts.append(to_dask(r, per_file, size=st.st_size, mtime=st.st_mtime))
    arr = parts[0] if len(parts) == 1 else da.concatenate(parts, axis=0)
    target = normalize_chunks(spec, arr.shape, dtype=arr.dtype, previous_chunks=arr.chunks)
    if target != arr.chunks:
        arr = arr.rechunk(target)
    return arr


def stacked_dataarray(
    members: Sequence[Member],
    dims: Sequence[str],
    chunks: ChunksLike,
    records: Sequence[dict[str, Any]],
    attrs: dict[str, Any],
    name: str | None = None,
) -> xr.DataArray:
    """A DataArray over the stacked members, with ``source``, ``source_index`` and ``frame`` on the stack dim."""
    spec = chunk_spec(chunks, dims)
    data = stack(members, spec)
    stack_dim = dims[0]
    counts = [m.reader.shape[0] for m in members]
    coords = {
        "source": (stack_dim, np.repeat(np.array([m.source for m in members], dtype=str), counts)),
        "source_index": (
            stack_dim,
            np.repeat(np.array([m.source_index for m in members], dtype=np.int64), counts),
        ),
        "frame": (stack_dim, np.concatenate([m.frames for m in members])),
    }
    result = xr.DataArray(data, dims=tuple(dims), coords=coords, attrs={"sources": list(records), **attrs})
    result.name = name  # xarray would otherwise take the dask array's task name
    return result


def first_mismatch(
    shapes: Sequence[tuple[int, ...]], dtypes: Sequence[np.dtype[Any]], paths: Sequence[Any]
) -> None:
    """Raise a SourceError naming the first file whose image shape or dtype differs from the first file's."""
    for path, shape, dtype in zip(paths[1:], shapes[1:], dtypes[1:], strict=True):
        if shape != shapes[0] or dtype != dtypes[0]:
            raise SourceError(
                f"{path}: images of shape {shape} and dtype {dtype} differ from the expected "
                f"shape {shapes[0]} and dtype {dtypes[0]} (of {paths[0]}); open files of one kind together"
            )
