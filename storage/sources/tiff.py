"""Lazy reading of TIF files: folders of single images and multi-page stacks."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import xarray as xr

from storage.errors import SourceError
from storage.sources._lazy import TiffFrames
from storage.sources._paths import PathsLike, file_record, resolve_paths
from storage.sources._stack import ChunksLike, Member, first_mismatch, stacked_dataarray

__all__ = ["TIFF_SUFFIXES", "open_tiffs"]

logger = logging.getLogger(__name__)

#: Suffixes a directory's TIF files may have.
TIFF_SUFFIXES = (".tif", ".tiff")

#: The stack dim of TIF images.
IMAGE_STACK_DIMS = ("image", "y", "x")


def _read_tiff_header(path: Path) -> tuple[tuple[int, int, int], np.dtype[Any]]:
    """``(pages, y, x)`` and dtype of a TIF file's first series, checked against the file size."""
    size = path.stat().st_size
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            shape = tuple(int(s) for s in series.shape)
            dtype = np.dtype(series.dtype)
            if "S" in series.axes:
                raise SourceError(
                    f"{path}: has colour samples (axes {series.axes!r}); open_tiffs reads grey images"
                )
            if len(shape) < 2:
                raise SourceError(f"{path}: first series has shape {shape}, not images")
            ends = [] if series.dataoffset is None else [int(series.dataoffset) + int(series.nbytes)]
            try:
                for page in tif.pages:  # parses every IFD: headers only, no pixel data
                    if page is not None and hasattr(page, "dataoffsets"):
                        ends.extend(
                            int(o) + int(c) for o, c in zip(page.dataoffsets, page.databytecounts, strict=True)
                        )
            except (tifffile.TiffFileError, ValueError, OSError, IndexError) as exc:
                raise SourceError(f"{path}: truncated or corrupt TIF ({exc})") from None
            end = max(ends, default=0)
    except SourceError:
        raise
    except (tifffile.TiffFileError, ValueError, OSError, IndexError, KeyError) as exc:
        raise SourceError(f"{path}: not a readable TIF file ({exc})") from None
    if end > size:
        raise SourceError(f"{path}: truncated: image data ends at byte {end}, but the file has {size} bytes")
    n = int(np.prod(shape[:-2], dtype=np.int64)) if len(shape) > 2 else 1
    return (n, shape[-2], shape[-1]), dtype


def open_tiffs(paths: PathsLike, *, chunks: ChunksLike = None) -> xr.DataArray:
    """Open TIF files as one lazy stack of 2-D images, reading only their headers.

    Parameters
    ----------
    paths : str, path-like, glob, directory, or list of those
        The files (see :func:`resolve_paths`); a directory contributes its ``.tif`` and ``.tiff`` files.
    chunks : dict, tuple, int or str, optional
        Chunks of the result by dimension name (``{"y": 256}``) or position; by default one whole image per
        chunk.

    Returns
    -------
    xarray.DataArray
        Dask-backed, dims ``("image", "y", "x")``: a single-page file gives one image, a multi-page file one
        image per page. Coords on ``image``: ``source``, ``source_index`` (into ``attrs["sources"]``) and
        ``frame`` (page within its file). Attrs: ``sources`` (one :func:`file_record` per file).

    Raises
    ------
    SourceNotFoundError
        A file, glob or directory does not exist or matches nothing.
    SourceError
        A file is not a TIF, is truncated, or has another image shape or dtype than the first file.

    Examples
    --------
    >>> import tempfile, numpy as np, tifffile
    >>> folder = Path(tempfile.mkdtemp())
    >>> tifffile.imwrite(folder / "a.tif", np.zeros((3, 8, 5), np.uint16), photometric="minisblack")
    >>> tifffile.imwrite(folder / "b.tif", np.ones((8, 5), np.uint16))
    >>> stack = open_tiffs(folder)
    >>> stack.shape, stack.frame.values.tolist(), int(stack.sum())
    ((4, 8, 5), [0, 1, 2, 0], 40)
    """
    files = resolve_paths(paths, suffixes=TIFF_SUFFIXES)
    headers = [_read_tiff_header(p) for p in files]
    first_mismatch([h[0][1:] for h in headers], [h[1] for h in headers], files)
    records = [file_record(p) for p in files]
    members = [
        Member(TiffFrames(str(p), shape, dtype), str(p), i, np.arange(shape[0]))
        for i, (p, (shape, dtype)) in enumerate(zip(files, headers, strict=True))
    ]
    result = stacked_dataarray(members, IMAGE_STACK_DIMS, chunks, records, {})
    logger.debug("opened %d TIF files: %s %s", len(files), result.shape, result.dtype)
    return result
