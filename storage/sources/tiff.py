"""Lazy reading of TIF files: folders of single images and multi-page stacks."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import tifffile
import xarray as xr
from dask.base import tokenize

from storage.errors import SourceError
from storage.sources._lazy import TiffFrames
from storage.sources._paths import PathsLike, file_record, resolve_paths
from storage.sources._stack import ChunksLike, Member, first_mismatch, stacked_dataarray

__all__ = ["TIFF_SUFFIXES", "TiffImage", "open_tiff_images", "open_tiffs"]

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
            _check_complete(tif, path, size)
    except SourceError:
        raise
    except (tifffile.TiffFileError, ValueError, OSError, IndexError, KeyError) as exc:
        raise SourceError(f"{path}: not a readable TIF file ({exc})") from None
    n = int(np.prod(shape[:-2], dtype=np.int64)) if len(shape) > 2 else 1
    return (n, shape[-2], shape[-1]), dtype


def _check_complete(tif: tifffile.TiffFile, path: Path, size: int) -> None:
    """Raise if the image data of an open TIF file ends past the file's ``size`` bytes (a truncated file)."""
    series = tif.series[0]
    ends = [] if series.dataoffset is None else [int(series.dataoffset) + int(series.nbytes)]
    try:
        for page in tif.pages:  # parses every IFD: headers only, no pixel data
            if page is not None and hasattr(page, "dataoffsets"):
                ends.extend(int(o) + int(c) for o, c in zip(page.dataoffsets, page.databytecounts, strict=True))
    except (tifffile.TiffFileError, ValueError, OSError, IndexError) as exc:
        raise SourceError(f"{path}: truncated or corrupt TIF ({exc})") from None
    end = max(ends, default=0)
    if end > size:
        raise SourceError(f"{path}: truncated: image data ends at byte {end}, but the file has {size} bytes")


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


#: Weights of R, G and B in the grey value of a colour image (ITU-R BT.709 luminance, as skimage.color.rgb2gray).
RGB_WEIGHTS = (0.2125, 0.7154, 0.0721)


@dataclass(frozen=True)
class TiffImage:
    """One 2-D image of a TIF file, lazily: ``data`` is a one-chunk dask array (one ``read-tif`` task)."""

    name: str
    """The file stem, with ``_p{page}`` for a page of a multi-page file."""
    path: str
    page: int
    data: da.Array


def open_tiff_images(paths: PathsLike, *, skipped: list[tuple[str, str]] | None = None) -> list[TiffImage]:
    """Open every image of TIF files of any sizes, one lazy 2-D array each, reading only the headers.

    Unlike :func:`open_tiffs`, images need not share a shape or dtype (a folder of photographs), so they are not
    stacked. A multi-page file gives one image per page; a colour image (RGB or RGBA samples) is converted to
    one grey channel as ``0.2125 R + 0.7154 G + 0.0721 B`` in float32 (alpha dropped), the value range kept.

    Parameters
    ----------
    paths : str, path-like, glob, directory, or list of those
        The files (see :func:`resolve_paths`); a directory contributes its ``.tif`` and ``.tiff`` files, sorted.
    skipped : list, optional
        Collect ``(file, reason)`` of unreadable or truncated files here and leave them out, instead of raising.

    Returns
    -------
    list of TiffImage

    Raises
    ------
    SourceError
        A file is not a readable TIF or is truncated (naming the file).

    Examples
    --------
    >>> import tempfile, numpy as np, tifffile
    >>> folder = Path(tempfile.mkdtemp())
    >>> tifffile.imwrite(folder / "a.tif", np.zeros((2, 8, 5), np.uint16), photometric="minisblack")
    >>> tifffile.imwrite(folder / "b.tif", np.full((4, 6, 3), 100, np.uint8), photometric="rgb")
    >>> [(im.name, im.data.shape, str(im.data.dtype)) for im in open_tiff_images(folder)]
    [('a_p0', (8, 5), 'uint16'), ('a_p1', (8, 5), 'uint16'), ('b', (4, 6), 'float32')]
    >>> float(open_tiff_images(folder)[2].data.compute()[0, 0])
    100.0
    """
    images = []
    for path in resolve_paths(paths, suffixes=TIFF_SUFFIXES):
        try:
            pages, shape, dtype, colour = _image_header(path)
        except SourceError as e:
            if skipped is None:
                raise
            skipped.append((str(path), str(e)))
            continue
        out_dtype = np.dtype(np.float32) if colour else dtype
        for page in range(pages):
            name = f"read-tif-{tokenize(str(path), path.stat().st_mtime_ns, page)}"
            graph = {(name, 0, 0): (_read_image, str(path), page, colour)}
            data = da.Array(graph, name, chunks=((shape[0],), (shape[1],)), dtype=out_dtype)
            images.append(TiffImage(path.stem if pages == 1 else f"{path.stem}_p{page}", str(path), page, data))
    return images


def _image_header(path: Path) -> tuple[int, tuple[int, int], np.dtype[Any], bool]:
    """``(pages, (y, x), dtype, colour)`` of a TIF file's first series, checked for truncation."""
    size = path.stat().st_size
    try:
        with tifffile.TiffFile(path) as tif:  # one open: the header and the truncation check
            series = tif.series[0]
            axes, shape, dtype = series.axes, tuple(int(s) for s in series.shape), np.dtype(series.dtype)
            _check_complete(tif, path, size)
    except SourceError:
        raise
    except (tifffile.TiffFileError, ValueError, OSError, IndexError, KeyError) as exc:
        raise SourceError(f"{path}: not a readable TIF file ({exc})") from None
    colour = "S" in axes
    if colour:
        if axes[-1] != "S" or shape[-1] not in (3, 4):
            raise SourceError(f"{path}: colour samples {shape} on axes {axes!r}; expected ...YXS with 3 or 4")
        shape = shape[:-1]
    if len(shape) < 2:
        raise SourceError(f"{path}: first series has shape {shape}, not images")
    pages = int(np.prod(shape[:-2], dtype=np.int64)) if len(shape) > 2 else 1
    return pages, (shape[-2], shape[-1]), dtype, colour


def _read_image(path: str, page: int, colour: bool) -> np.ndarray:
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            data = series.asarray(key=page) if len(series.pages) > 1 else series.asarray()
    except (tifffile.TiffFileError, ValueError, OSError, IndexError) as exc:
        raise SourceError(f"{path}: reading page {page} failed ({exc})") from None
    if colour:
        rgb = np.asarray(data, dtype=np.float32)[..., :3]
        return np.asarray(rgb @ np.asarray(RGB_WEIGHTS, dtype=np.float32), dtype=np.float32)
    return np.asarray(data)
