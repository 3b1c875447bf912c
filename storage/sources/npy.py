"""Lazy reading of ``.npy`` files (2-D images and 3-D stacks)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from storage.errors import SourceError
from storage.sources._lazy import NpyFrames
from storage.sources._paths import PathsLike, file_record, resolve_paths
from storage.sources._stack import ChunksLike, Member, first_mismatch, stacked_dataarray

__all__ = ["open_npy"]

logger = logging.getLogger(__name__)


def _read_npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype[Any]]:
    """Shape and dtype of a ``.npy`` file, checked against its size; no array data is read."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = (
                np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            )
            shape, _, dtype = read(f)
            offset = f.tell()
    except (ValueError, OSError, EOFError, SyntaxError) as exc:
        raise SourceError(f"{path}: not a .npy file ({exc})") from None
    if dtype.hasobject:
        raise SourceError(f"{path}: holds Python objects (dtype {dtype}); save a numeric array")
    if len(shape) not in (2, 3):
        raise SourceError(f"{path}: array of shape {shape}; open_npy reads 2-D images or 3-D stacks of them")
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    found = path.stat().st_size - offset
    if found < expected:
        raise SourceError(f"{path}: truncated: expected {expected} bytes of array data, found {found}")
    return tuple(int(s) for s in shape), dtype


def open_npy(paths: PathsLike, *, chunks: ChunksLike = None) -> xr.DataArray:
    """Open ``.npy`` files as one lazy stack of 2-D images, reading only their headers.

    Parameters
    ----------
    paths : str, path-like, glob, directory, or list of those
        The files (see :func:`resolve_paths`); a directory contributes its ``.npy`` files.
    chunks : dict, tuple, int or str, optional
        Chunks of the result by dimension name (``{"y": 256}``) or position; by default one whole image per
        chunk.

    Returns
    -------
    xarray.DataArray
        Dask-backed, dims ``("image", "y", "x")``: a 2-D array is one image, a 3-D array one image per index of
        its first axis (read through ``np.load(mmap_mode="r")`` inside the tasks). Coords on ``image``:
        ``source``, ``source_index``, ``frame``; attrs ``sources``.

    Raises
    ------
    SourceNotFoundError
        A file, glob or directory does not exist or matches nothing.
    SourceError
        A file is not ``.npy``, is truncated, is not 2-D or 3-D, or differs in image shape or dtype from the first.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> path = Path(tempfile.mkdtemp()) / "stack.npy"
    >>> np.save(path, np.arange(24, dtype=np.float32).reshape(2, 3, 4))
    >>> stack = open_npy(path, chunks={"x": 3})
    >>> stack.shape, stack.data.chunks
    ((2, 3, 4), ((1, 1), (3,), (3, 1)))
    """
    files = resolve_paths(paths, suffixes=(".npy",))
    headers = [_read_npy_header(p) for p in files]
    first_mismatch([h[0][-2:] for h in headers], [h[1] for h in headers], files)
    records = [file_record(p) for p in files]
    members = []
    for i, (p, (shape, dtype)) in enumerate(zip(files, headers, strict=True)):
        lead = 1 if len(shape) == 2 else 0
        exposed = (1, *shape) if lead else shape
        members.append(Member(NpyFrames(str(p), exposed, dtype, lead=lead), str(p), i, np.arange(exposed[0])))
    result = stacked_dataarray(members, ("image", "y", "x"), chunks, records, {})
    logger.debug("opened %d .npy files: %s %s", len(files), result.shape, result.dtype)
    return result
