"""One entry point for every image reader: :func:`open_images` chooses the reader by file suffix."""

from __future__ import annotations

from pathlib import Path

import xarray as xr

from storage.errors import SourceError
from storage.sources._paths import PathsLike, resolve_paths
from storage.sources.hdf5 import open_hdf5
from storage.sources.mrc import open_mrc
from storage.sources.npy import open_npy
from storage.sources.tiff import open_tiffs

__all__ = ["SOURCE_SUFFIXES", "open_images"]

#: File suffixes each reader takes.
SOURCE_SUFFIXES = {
    "mrc": (".mrc", ".mrcs", ".map", ".st", ".ali", ".rec"),
    "tif": (".tif", ".tiff"),
    "npy": (".npy",),
    "hdf5": (".h5", ".hdf", ".hdf5", ".nxs"),
}


def open_images(
    inputs: PathsLike,
    *,
    fmt: str = "auto",
    dataset: str | None = None,
) -> xr.DataArray:
    """Open files (paths, globs, folders) as one lazy ``(image, y, x)`` stack, choosing the reader by suffix.

    Parameters
    ----------
    inputs : path, glob, folder, or a list of those
        The files; all of one kind unless ``fmt`` is given.
    fmt : {"auto", "mrc", "tif", "npy", "hdf5"}
        The reader; ``auto`` chooses by suffix (:data:`SOURCE_SUFFIXES`).
    dataset : str, optional
        HDF5 dataset path; without it a NeXus tomography scan gives its projections.

    Returns
    -------
    xarray.DataArray
        Lazy, three dims (a single 2-D image gets a leading ``image`` dim of length 1).

    Examples
    --------
    >>> import tempfile
    >>> from storage.synthetic import write_micrographs
    >>> folder = tempfile.mkdtemp()
    >>> _ = write_micrographs(folder, 2, (64, 48))
    >>> open_images(folder).dims, open_images(folder).shape
    (('micrograph', 'y', 'x'), (2, 64, 48))
    """
    paths = resolve_paths(inputs, suffixes=tuple(s for group in SOURCE_SUFFIXES.values() for s in group))
    if fmt == "auto":
        kinds = {_kind(p) for p in paths}
        if len(kinds) != 1:
            raise SourceError(
                f"inputs mix file types ({', '.join(sorted(k or '?' for k in kinds))}); "
                "give one kind of file or pass --format"
            )
        fmt = kinds.pop() or ""
        if not fmt:
            raise SourceError(f"{paths[0]}: unknown file type; pass --format mrc|tif|npy|hdf5")
    if fmt == "mrc":
        images = open_mrc(paths)
    elif fmt == "tif":
        images = open_tiffs(paths)
    elif fmt == "npy":
        images = open_npy(paths)
    elif fmt == "hdf5":
        opened = open_hdf5(paths, dataset)
        images = opened["projections"] if isinstance(opened, xr.Dataset) else opened
    else:
        raise SourceError(f"unknown --format {fmt!r}: use auto, mrc, tif, npy or hdf5")
    if images.ndim == 2:
        images = images.expand_dims("image")
    if images.ndim != 3:
        raise SourceError(f"{paths[0]}: expected 2-D images or stacks of them, got dims {images.dims}")
    return images


def _kind(path: Path) -> str | None:
    suffix = path.suffix.lower()
    return next((kind for kind, suffixes in SOURCE_SUFFIXES.items() if suffix in suffixes), None)
