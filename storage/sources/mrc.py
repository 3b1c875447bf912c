"""Lazy reading of MRC files (micrographs, image stacks, maps)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import mrcfile
import mrcfile.utils
import numpy as np
import xarray as xr

from storage.dims import MICROGRAPH_DIMS, VOLUME_DIMS
from storage.errors import SourceError
from storage.sources._lazy import MrcFrames
from storage.sources._paths import PathsLike, file_record, resolve_paths
from storage.sources._stack import ChunksLike, Member, first_mismatch, stacked_dataarray

__all__ = ["MRC_SUFFIXES", "open_mrc"]

logger = logging.getLogger(__name__)

#: Suffixes a directory's MRC files may have.
MRC_SUFFIXES = (".mrc", ".mrcs", ".map", ".st", ".ali", ".rec")

_HEADER_BYTES = 1024


def _read_header(path: Path) -> tuple[tuple[int, ...], np.dtype[Any], float]:
    """Shape, dtype and pixel size (0.0 when unset) of an MRC file, checked against its size; no pixel data."""
    try:
        with mrcfile.open(path, mode="r", header_only=True, permissive=False) as mrc:
            header = mrc.header
            shape = tuple(int(s) for s in mrcfile.utils.data_shape_from_header(header))
            dtype = mrcfile.utils.data_dtype_from_header(header)
            extended = int(header.nsymbt)
            # float32 header arithmetic gives 1.0600001; six significant digits give 1.06 back.
            pixel = float(f"{float(mrc.voxel_size.x):.6g}")
    except (ValueError, OSError, EOFError) as exc:
        raise SourceError(f"{path}: not an MRC file ({exc})") from None
    expected = int(np.prod(shape)) * dtype.itemsize
    found = path.stat().st_size - _HEADER_BYTES - extended
    if found < expected:
        raise SourceError(f"{path}: truncated: expected {expected} bytes of image data, found {max(found, 0)}")
    return shape, dtype, pixel


def open_mrc(
    paths: PathsLike,
    *,
    kind: Literal["images", "volume"] = "images",
    chunks: ChunksLike = None,
) -> xr.DataArray:
    """Open MRC files as one lazy stack of images (or of volumes), reading only their headers.

    Parameters
    ----------
    paths : str, path-like, glob, directory, or list of those
        The files (see :func:`resolve_paths`); a directory contributes its ``.mrc``, ``.mrcs``, ``.map``, ``.st``,
        ``.ali`` and ``.rec`` files.
    kind : {"images", "volume"}
        ``"images"``: a 2-D file is one image and each z section of a 3-D file is one image, dims
        ``("micrograph", "y", "x")``. ``"volume"``: each file is one volume, dims ``("volume", "z", "y", "x")``.
    chunks : dict, tuple, int or str, optional
        Chunks of the result in :func:`dask.array.from_array` terms, by dimension name (``{"y": 256}``) or
        position. By default one image (or volume) per chunk, each whole.

    Returns
    -------
    xarray.DataArray
        Dask-backed. Coords on the stack dim: ``source`` (the file's path), ``source_index`` (index into
        ``attrs["sources"]``), ``frame`` (index of the image within its file). Attrs: ``sources`` (one
        :func:`file_record` per file), ``pixel_size`` (Å, the header's voxel size along x, when set and the same
        for every file; else a ``pixel_size`` coord) and ``pixel_size_units`` (``"angstrom"``).

    Raises
    ------
    SourceNotFoundError
        A file, glob or directory does not exist or matches nothing.
    SourceError
        A file is not MRC, is truncated, or has another image shape or dtype than the first file.

    Examples
    --------
    >>> import tempfile
    >>> from storage.synthetic import write_micrographs
    >>> folder = tempfile.mkdtemp()
    >>> _ = write_micrographs(folder, 2, (64, 48))
    >>> stack = open_mrc(folder)
    >>> stack.dims, stack.shape, stack.attrs["pixel_size"]
    (('micrograph', 'y', 'x'), (2, 64, 48), 1.06)
    >>> float(stack.isel(micrograph=1).mean()) > 6000
    True
    """
    if kind not in ("images", "volume"):
        raise SourceError(f"kind: expected 'images' or 'volume', got {kind!r}")
    files = resolve_paths(paths, suffixes=MRC_SUFFIXES)
    headers = [_read_header(p) for p in files]
    records = [file_record(p) for p in files]
    members: list[Member] = []
    image_shapes: list[tuple[int, ...]] = []
    for index, (path, (shape, dtype, _)) in enumerate(zip(files, headers, strict=True)):
        if kind == "volume":
            file_shape = shape if len(shape) == 3 else (1,) * (3 - len(shape)) + shape[-3:]
            if len(shape) > 3:
                raise SourceError(f"{path}: holds a stack of volumes {shape}; open it with kind='images'")
            lead, exposed, frames = 1, (1, *file_shape), np.array([0])
        else:
            n = int(np.prod(shape[:-2], dtype=np.int64)) if len(shape) > 2 else 1
            file_shape = (n, *shape[-2:]) if len(shape) > 2 else shape
            lead = 0 if len(shape) > 2 else 1
            exposed, frames = (n, *shape[-2:]), np.arange(n)
        image_shapes.append(exposed[1:])
        reader = MrcFrames(str(path), exposed, dtype, file_shape=file_shape, lead=lead)
        members.append(Member(reader, str(path), index, frames))
    first_mismatch(image_shapes, [np.dtype(h[1]).newbyteorder("=") for h in headers], files)
    dims = ("volume", *VOLUME_DIMS) if kind == "volume" else MICROGRAPH_DIMS
    pixels = [h[2] for h in headers]
    attrs: dict[str, Any] = {}
    result = stacked_dataarray(members, dims, chunks, records, attrs)
    if all(p == pixels[0] for p in pixels):
        if pixels[0] > 0:
            result.attrs["pixel_size"] = pixels[0]
            result.attrs["pixel_size_units"] = "angstrom"
    else:
        counts = [m.reader.shape[0] for m in members]
        result = result.assign_coords(pixel_size=(dims[0], np.repeat(pixels, counts)))
        result["pixel_size"].attrs["units"] = "angstrom"
    logger.debug("opened %d MRC files: %s %s", len(files), result.shape, result.dtype)
    return result
