"""Lazy reading of HDF5 datasets and NeXus tomography scans."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import xarray as xr

from storage.errors import SourceError
from storage.sources._h5 import HDF5_SUFFIXES, open_h5, resolve_node
from storage.sources._lazy import Hdf5Frames
from storage.sources._paths import PathsLike, file_record, resolve_paths
from storage.sources._stack import ChunksLike, Member, first_mismatch, stacked_dataarray
from storage.sources.nexus import open_nxtomo

__all__ = ["open_hdf5"]

logger = logging.getLogger(__name__)


def _dataset_header(path: Path, dataset: str) -> tuple[str, str, tuple[int, ...], np.dtype[Any]]:
    """The file and path the dataset really lives at (after links), its shape and dtype."""
    with open_h5(path) as f:
        node = resolve_node(f, dataset, path)
        if not isinstance(node, h5py.Dataset):
            raise SourceError(f"{path}: {dataset!r} is a group, not a dataset; name a dataset in it")
        if node.ndim not in (2, 3):
            raise SourceError(
                f"{path}: dataset {dataset!r} has shape {node.shape}; open_hdf5 reads 2-D images or "
                "3-D stacks of them"
            )
        if node.dtype.kind not in "biuf":
            raise SourceError(f"{path}: dataset {dataset!r} has dtype {node.dtype}, not numbers")
        return node.file.filename, node.name, tuple(int(s) for s in node.shape), node.dtype


def open_hdf5(
    paths: PathsLike,
    dataset: str | None = None,
    *,
    chunks: ChunksLike = None,
) -> xr.DataArray | xr.Dataset:
    """Open an HDF5 dataset (concatenated over files) or a NeXus tomography scan, lazily.

    Parameters
    ----------
    paths : str, path-like, glob, directory, or list of those
        The files (see :func:`resolve_paths`); a directory contributes its ``.h5``, ``.hdf``, ``.hdf5``,
        ``.nxs`` ... files. With ``dataset=None`` exactly one file.
    dataset : str, optional
        Path of the dataset inside each file, e.g. ``"/entry/data/data"``. When None the file must be a NeXus
        tomography scan: an NXentry whose ``definition`` is NXtomo, or a group holding ``data`` and
        ``image_key``.
    chunks : dict, tuple, int or str, optional
        Chunks of the result(s) by dimension name or position; by default one whole image per chunk.

    Returns
    -------
    xarray.DataArray or xarray.Dataset
        With `dataset`: a DataArray, dims ``("image", "y", "x")`` (3-D datasets concatenated along their first
        axis, 2-D datasets one image per file), or ``("y", "x")`` for one file holding a 2-D dataset; coords
        ``source``, ``source_index``, ``frame`` on ``image``; attrs ``sources`` (the files given, then any file
        an external link led to) and ``dataset``.
        Without: a Dataset of ``projections`` ``("angle", "detector_y", "detector_x")``, ``flats``
        ``("flat", ...)`` and ``darks`` ``("dark", ...)`` split by ``image_key`` 0/1/2, with coords ``angle``
        (degrees, when the file records angles), ``frame``, ``flat_frame`` and ``dark_frame`` (index of each
        image in the file's frame dataset); attrs ``sources``, ``entry``, ``data_path``, ``image_key_path``
        and ``angles_path``.

    Raises
    ------
    SourceNotFoundError
        A file, the dataset, or the target of an external link does not exist; the message names it.
    SourceError
        A file is not HDF5, the dataset is not 2-D/3-D numbers, the files differ in image shape or dtype, or
        (without `dataset`) no tomography scan is found.

    Examples
    --------
    >>> import tempfile, h5py, numpy as np
    >>> path = Path(tempfile.mkdtemp()) / "scan.h5"
    >>> with h5py.File(path, "w") as f:
    ...     _ = f.create_dataset("entry/data/data", data=np.ones((4, 6, 5), np.float32))
    >>> frames = open_hdf5(path, "/entry/data/data", chunks={"image": 2})
    >>> frames.dims, frames.data.chunks[0], float(frames.sum())
    (('image', 'y', 'x'), (2, 2), 120.0)
    """
    files = resolve_paths(paths, suffixes=HDF5_SUFFIXES)
    if dataset is None:
        if len(files) != 1:
            raise SourceError(
                f"{len(files)} files given without dataset=: a NeXus scan is opened one file at a time; "
                "pass dataset='/path/in/file' to concatenate a dataset over files"
            )
        return open_nxtomo(files[0], chunks=chunks)
    headers = [_dataset_header(p, dataset) for p in files]
    first_mismatch([h[2][-2:] for h in headers], [h[3] for h in headers], files)
    records = [file_record(p) for p in files]
    given = {Path(p).resolve() for p in files}
    linked = sorted({Path(h[0]).resolve() for h in headers} - given)
    records += [file_record(x) for x in linked]
    members = []
    for i, (p, (target, name, shape, dtype)) in enumerate(zip(files, headers, strict=True)):
        lead = 1 if len(shape) == 2 else 0
        exposed = (1, *shape) if lead else shape
        reader = Hdf5Frames(target, exposed, dtype, dataset=name, lead=lead)
        members.append(Member(reader, str(p), i, np.arange(exposed[0])))
    single_image = len(files) == 1 and len(headers[0][2]) == 2
    dims = ("image", "y", "x")
    if single_image and chunks is not None and not isinstance(chunks, dict):
        chunks = (1, *chunks) if isinstance(chunks, tuple | list) else chunks
    result = stacked_dataarray(members, dims, chunks, records, {"dataset": dataset})
    if single_image:
        result = result.isel(image=0, drop=True)
    logger.debug("opened %s in %d HDF5 files: %s %s", dataset, len(files), result.shape, result.dtype)
    return result
