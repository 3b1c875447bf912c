"""A tomography scan ready to normalize: projections with angles, and the flats and darks that go with them.

:func:`open_scan` is what ``zarrforge sinograms`` reads. It takes a NeXus scan whose frames are split by
``image_key`` (:func:`~storage.sources.nexus.open_nxtomo`), or a file of projections only with flats and darks
from separate files (as Diamond's I12 writes them), and checks, before a pixel is read, that everything the
normalization needs is there: flats, angles, matching detector shapes.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import xarray as xr

from storage.dims import PROJECTION_DIMS
from storage.errors import SourceError, SourceNotFoundError
from storage.sources._h5 import open_h5, resolve_node
from storage.sources._lazy import Hdf5Frames, to_dask
from storage.sources._paths import file_record
from storage.sources._stack import chunk_spec
from storage.sources.nexus import open_nxtomo, read_angles
from storage.sources.tiff import TIFF_SUFFIXES, open_tiffs

__all__ = ["SourceLayout", "frames_dataset", "open_scan", "source_layout"]

log = logging.getLogger(__name__)


def frames_dataset(f: h5py.File) -> str | None:
    """The path of the first 3-D numeric dataset in ``f`` (an NXdata ``signal`` first), or None."""
    found: list[str] = []

    def visit(name: str, node: Any) -> None:
        if isinstance(node, h5py.Dataset) and node.ndim == 3 and node.dtype.kind in "iuf":
            found.append("/" + name)

    with contextlib.suppress(KeyError, OSError):  # a broken external link elsewhere in the file
        f.visititems(visit)
    return found[0] if found else None


def _plain_frames(path: Path, dataset: str | None, what: str, chunks: Any = None) -> xr.DataArray:
    """All frames of a 3-D dataset of ``path`` (found by itself when ``dataset`` is None), lazily."""
    with open_h5(path) as f:
        dataset = dataset or frames_dataset(f)
        if dataset is None:
            raise SourceError(f"{path}: no 3-D dataset of {what} found; pass its path inside the file")
        node = resolve_node(f, dataset, path)
        if not isinstance(node, h5py.Dataset) or node.ndim != 3 or node.dtype.kind not in "iuf":
            raise SourceError(f"{path}: {dataset!r} is not a 3-D dataset of numbers, so not {what}")
        target, name, shape, dtype = node.file.filename, node.name, tuple(node.shape), node.dtype
    st = os.stat(target)
    reader = Hdf5Frames(target, shape, dtype, dataset=name)
    data = to_dask(reader, chunk_spec(chunks, PROJECTION_DIMS), size=st.st_size, mtime=st.st_mtime)
    records = [file_record(path)]
    if Path(target).resolve() != Path(path).resolve():
        records.append(file_record(target))
    return xr.DataArray(data, dims=("frame", *PROJECTION_DIMS[1:]), attrs={"sources": records, "dataset": name})


def _is_tiff(path: str | os.PathLike[str]) -> bool:
    """A folder, a glob or a ``.tif``/``.tiff`` file: read as TIF images."""
    text = os.fspath(path)
    return Path(text).is_dir() or any(c in text for c in "*?[") or Path(text).suffix.lower() in TIFF_SUFFIXES


def _tiff_frames(path: str | os.PathLike[str], chunks: Any = None) -> xr.DataArray:
    """TIF images (a file, folder or glob) as frames ``(frame, detector_y, detector_x)``."""
    spec = chunk_spec(chunks, PROJECTION_DIMS)
    images = open_tiffs(path, chunks=dict(zip(("image", "y", "x"), spec, strict=True)))
    frames = images.drop_vars(list(images.coords)).rename({"image": "frame", "y": "detector_y", "x": "detector_x"})
    return frames.assign_coords(frame=np.arange(frames.sizes["frame"]))


def _side_frames(path: Path, key: str, what: str) -> tuple[xr.DataArray, list[dict[str, Any]]]:
    """Flats or darks from separate files: TIFs, an NXtomo scan's frames of ``key``, or all of a file's frames."""
    if _is_tiff(path):
        frames = _tiff_frames(path)
        return frames, frames.attrs["sources"]
    try:
        scan = open_nxtomo(path)
    except SourceError:
        frames = _plain_frames(path, None, what)
        return frames, frames.attrs["sources"]
    return scan[key].rename({key[:-1]: "frame"}), scan.attrs["sources"]


def open_scan(
    path: str | os.PathLike[str],
    *,
    flats: str | os.PathLike[str] | None = None,
    darks: str | os.PathLike[str] | None = None,
    data_path: str | None = None,
    image_key_path: str | None = None,
    angles: tuple[float, float] | None = None,
    chunks: Any = None,
) -> xr.Dataset:
    """Open a tomography scan lazily as ``projections`` with an ``angle`` coord, ``flats`` and ``darks``.

    Parameters
    ----------
    path : path
        A NeXus/HDF5 file. With an ``image_key`` (0 projection, 1 flat, 2 dark; int or float) the frames are
        split by it; without one, every frame is a projection and ``flats`` must be given. Or TIF projections
        (a folder, a quoted glob or a multi-page file; sorted by name), which need ``flats`` and ``angles``.
    flats, darks : path, optional
        Files holding the flats (darks): TIFs, their frames of image key 1 (2) if they are NXtomo scans, else
        every frame of their 3-D dataset. They replace the scan's own.
    data_path, image_key_path : str, optional
        Where the frames and image keys are in ``path`` when they are not found by NXtomo/NXdata conventions.
    angles : (float, float), optional
        First and last rotation angle in degrees, evenly spaced over the projections; used only when the file
        records no angles (a warning says so).
    chunks : optional
        Chunks of ``projections`` (see :func:`~storage.sources.open_hdf5`).

    Returns
    -------
    xarray.Dataset
        ``projections (angle, detector_y, detector_x)`` with the ``angle`` coord in degrees, ``flats (flat,
        detector_y, detector_x)`` and ``darks (dark, ...)`` (possibly empty: no darks means a dark of zero),
        all dask-backed; attrs ``sources`` (every file read) and ``layout`` (where things were found).

    Raises
    ------
    SourceError
        No ``image_key`` and no ``flats`` file; no flats at all; no angles in the file and none given; flats or
        darks of another detector shape. Each message names the file and what to pass.
    SourceNotFoundError
        A file, or the target of an external link, is missing (the message names it).
    """
    if _is_tiff(path):
        return _finish(_tiff_scan(path, flats, chunks), path, flats, darks, angles)
    path = Path(path)
    if not path.is_file():
        raise SourceNotFoundError(f"{path}: no such file")
    if image_key_path is not None or _has_image_key(path):
        scan = open_nxtomo(path, chunks=chunks, data_path=data_path, image_key_path=image_key_path)
    else:
        if flats is None:
            raise SourceError(
                f"{path}: no image_key found to tell projections from flats and darks; pass --flats FILE "
                "(and --darks FILE) to read every frame as a projection, or --image-key PATH"
            ) from None
        frames = _plain_frames(path, data_path, "projections", chunks)
        n = frames.sizes["frame"]
        found = data_path or frames.attrs["dataset"]
        with open_h5(path) as f:  # angles beside the frames or in an NXdata group, as NXtomo files keep them
            entry = _entry_of(f, found)
            values, angles_path = read_angles(f, entry, found, n) if found in f else (None, None)
        scan = xr.Dataset(
            {"projections": frames.rename({"frame": "angle"}).variable},
            coords={"frame": ("angle", np.arange(n))},
            attrs={"sources": frames.attrs["sources"], "data_path": found},
        )
        if values is not None:
            scan = scan.assign_coords(angle=("angle", values, {"units": "degree"}))
            scan.attrs["angles_path"] = angles_path
        scan["flats"] = xr.Variable(("flat", *PROJECTION_DIMS[1:]), frames.data[:0])
        scan["darks"] = xr.Variable(("dark", *PROJECTION_DIMS[1:]), frames.data[:0])
    return _finish(scan, path, flats, darks, angles)


def _tiff_scan(path: str | os.PathLike[str], flats: Any, chunks: Any) -> xr.Dataset:
    """TIF projections, with empty flats and darks (they come from ``flats``/``darks`` files)."""
    if flats is None:
        raise SourceError(f"{path}: TIF projections carry no flats; pass --flats FILE (and --darks FILE)")
    frames = _tiff_frames(path, chunks)
    empty = frames.data[:0]
    return xr.Dataset(
        {
            "projections": frames.rename({"frame": "angle"}).variable,
            "flats": xr.Variable(("flat", *PROJECTION_DIMS[1:]), empty),
            "darks": xr.Variable(("dark", *PROJECTION_DIMS[1:]), empty),
        },
        coords={"frame": ("angle", np.arange(frames.sizes["frame"]))},
        attrs={"sources": frames.attrs["sources"]},
    )


def _finish(
    scan: xr.Dataset,
    path: str | os.PathLike[str],
    flats: str | os.PathLike[str] | None,
    darks: str | os.PathLike[str] | None,
    angles: tuple[float, float] | None,
) -> xr.Dataset:
    """Flats and darks from their files, and the checks every scan passes."""
    sources = list(scan.attrs["sources"])
    detector = tuple(scan.projections.shape[1:])
    for key, given, what in (("flats", flats, "flats"), ("darks", darks, "darks")):
        if given is None:
            continue
        frames, records = _side_frames(Path(given), key, what)
        if tuple(frames.shape[1:]) != detector:
            raise SourceError(
                f"{given}: {what} of shape {tuple(frames.shape[1:])} do not match the projections' "
                f"{detector} of {path}"
            )
        stack_dim = key[:-1]
        scan = scan.drop_vars([key, f"{stack_dim}_frame"], errors="ignore")
        scan[key] = xr.Variable((stack_dim, *PROJECTION_DIMS[1:]), frames.data)
        sources += [r for r in records if r not in sources]
    if scan.sizes["flat"] == 0:
        raise SourceError(
            f"{path}: no flats (image_key 1) to normalize the projections with; pass --flats FILE holding them"
        )
    if scan.sizes["angle"] == 0:
        raise SourceError(f"{path}: no projections (image_key 0) in the scan")
    if scan.sizes["dark"] == 0:
        log.warning("%s: no darks (image_key 2); normalizing with a dark of zero (pass --darks FILE)", path)
    if "angle" not in scan.coords:
        if angles is None:
            raise SourceError(
                f"{path}: no rotation angles found (rotation_angle or an angle axis of an NXdata group); pass "
                "--angles FIRST,LAST in degrees for evenly spaced projections"
            )
        log.warning("%s: no rotation angles recorded; using %g to %g degrees, evenly spaced", path, *angles)
        values = np.linspace(angles[0], angles[1], scan.sizes["angle"])
        scan = scan.assign_coords(angle=("angle", values, {"units": "degree"}))
    scan.attrs["sources"] = sources
    return scan


def _entry_of(f: h5py.File, dataset: str) -> str:
    """The innermost NXentry/NXsubentry holding ``dataset`` (else its top-level group)."""
    parts = dataset.strip("/").split("/")[:-1]
    for depth in range(len(parts), 0, -1):
        group = "/" + "/".join(parts[:depth])
        nx_class = f[group].attrs.get("NX_class", b"")
        nx_class = nx_class.decode() if isinstance(nx_class, bytes) else str(nx_class)
        if nx_class in ("NXentry", "NXsubentry"):
            return group
    return "/" + parts[0] if parts else "/"


def _has_image_key(path: Path) -> bool:
    """Whether any dataset (or link) in the file is named ``image_key``."""
    found = []

    def visit(name: str, _: Any) -> bool | None:
        if name.rsplit("/", 1)[-1] == "image_key":
            found.append(name)
            return True
        return None

    with open_h5(path) as f:
        f.visititems_links(visit)
    return bool(found)


class SourceLayout:
    """How a scan's frames are stored: HDF5 chunk shape (None: contiguous) and whether chunks are compressed."""

    def __init__(self, chunks: tuple[int, ...] | None, compressed: bool) -> None:
        self.chunks = chunks
        self.compressed = compressed

    def rows_per_read(self, height: int) -> int:
        """Detector rows one stored chunk spans (the whole detector height when contiguous)."""
        return height if self.chunks is None else int(self.chunks[1])

    def __repr__(self) -> str:
        return f"SourceLayout(chunks={self.chunks}, compressed={self.compressed})"


def source_layout(path: str | os.PathLike[str], data_path: str) -> SourceLayout:
    """The storage layout of the frames at ``data_path`` of ``path`` (after external links)."""
    with open_h5(Path(path)) as f:
        node = resolve_node(f, data_path, Path(path))
        if not isinstance(node, h5py.Dataset):
            raise SourceError(f"{path}: {data_path!r} is not a dataset")
        chunks = tuple(int(c) for c in node.chunks) if node.chunks else None
        return SourceLayout(chunks, bool(node.compression or node.id.get_create_plist().get_nfilters()))
