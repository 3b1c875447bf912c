"""``zarrforge sinograms``: a tomography scan, flat/dark-normalized, into a store of sinograms."""

from __future__ import annotations

import logging
import os
from typing import Any

import dask
import numpy as np

from graphs.sinograms import FlatAverage, Method, average_frames, dead_pixels, plan_band, sinogram_dataset
from storage.errors import SourceError
from storage.layout import SampleGrid
from storage.sources.tomo import SourceLayout, open_scan, source_layout

from .. import config
from ..errors import ConfigError
from ..run import RunSummary
from .common import write_pipeline

__all__ = ["run_sinograms"]

log = logging.getLogger(__name__)


def run_sinograms(
    scan: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    flats: str | os.PathLike[str] | None = None,
    darks: str | os.PathLike[str] | None = None,
    data_path: str | None = None,
    image_key_path: str | None = None,
    angles: tuple[float, float] | None = None,
    flat_average: FlatAverage | None = None,
    log_transform: bool = False,
    method: str | None = None,
    cluster: str | None = None,
    overwrite: bool = False,
    codec: str | None = None,
    progress: bool | None = None,
) -> RunSummary:
    """Write the flat/dark-normalized sinograms of a scan into a store (``zarrforge sinograms``).

    The store holds ``sinograms (detector_y, angle, detector_x)`` float32 (one sinogram per chunk or a few,
    a band of detector rows per shard), the ``angle`` coord in degrees and the averaged ``flat`` and ``dark``.
    Flats and darks are read and averaged first (they are small) and checked: flats no brighter than the darks
    anywhere are an error, before the output is touched.

    Parameters
    ----------
    scan : path
        A NeXus/HDF5 scan (see :func:`storage.sources.tomo.open_scan` for ``flats``, ``darks``, ``data_path``,
        ``image_key_path`` and ``angles``).
    output : path
        The store.
    flat_average : {"mean", "median"}, optional
        How flats and darks are averaged [default: ``zarrforge.sinograms.flat-average``].
    log_transform : bool
        Store ``-log`` of the normalized transmission.
    method : {"auto", "slab", "rechunk", "rechunk-tasks", "rechunk-p2p"}, optional
        The transpose (see :mod:`graphs.sinograms`); ``auto`` reads slabs unless the source's frames are
        compressed in chunks spanning more rows than a band [default: ``zarrforge.sinograms.method``].
    cluster, overwrite, codec, progress
        As for every pipeline.
    """
    flat_average = config.get("sinograms.flat-average", flat_average)
    guard = float(config.get("sinograms.guard"))
    block_bytes = int(config.get("sinograms.block-bytes"))
    method = str(config.get("sinograms.method", method))
    if method not in ("auto", "slab", "rechunk", "rechunk-tasks", "rechunk-p2p"):
        raise ConfigError(
            f"sinograms method must be auto, slab, rechunk, rechunk-tasks or rechunk-p2p: {method!r}"
        )
    opened = open_scan(
        scan, flats=flats, darks=darks, data_path=data_path, image_key_path=image_key_path, angles=angles
    )
    n_angles, height, width = opened.projections.shape
    if "data_path" in opened.attrs:
        layout = source_layout(scan, opened.attrs["data_path"])
    else:  # TIF projections: one image per read
        layout = SourceLayout(None, compressed=False)
    chunk_rows, band = plan_band(
        n_angles,
        height,
        width,
        block_bytes=block_bytes,
        chunk_bytes=int(config.get("store.chunk-bytes")),
        source_rows=layout.rows_per_read(height),
    )
    if method == "auto":
        method = "rechunk" if layout.compressed and layout.rows_per_read(height) > band else "slab"
    log.info(
        "%s: %d projections of %d × %d, %d flats, %d darks; bands of %d rows (%s)",
        scan,
        n_angles,
        height,
        width,
        opened.sizes["flat"],
        opened.sizes["dark"],
        band,
        method,
    )
    with dask.config.set(scheduler="threads"):  # small reductions, before any cluster starts
        flat, dark = dask.compute(
            average_frames(opened.flats, flat_average).data, average_frames(opened.darks, flat_average).data
        )
    flat, dark = np.asarray(flat, np.float32), np.asarray(dark, np.float32)
    _check_flats(scan, flats, flat, dark, guard)
    if method == "slab":  # reopen with one chunk per band: each block reads its slab straight from the file
        quiet = [logging.getLogger(f"storage.sources.{name}") for name in ("tomo", "nexus")]
        levels = [logger.level for logger in quiet]
        for logger in quiet:
            logger.setLevel(logging.ERROR)  # their warnings were given on the first opening
        try:
            opened = _reopen(scan, flats, darks, data_path, image_key_path, angles, band)
        finally:
            for logger, level in zip(quiet, levels, strict=True):
                logger.setLevel(level)
    parameters: dict[str, Any] = {
        "flat_average": flat_average,
        "data_path": opened.attrs.get("data_path"),
        "image_key_path": opened.attrs.get("image_key_path"),
        "angles_path": opened.attrs.get("angles_path"),
        "given_angles": list(angles) if angles else None,
    }
    method_: Method = method  # type: ignore[assignment]
    ds = sinogram_dataset(
        opened.projections,
        flat,
        dark,
        band=band,
        log=log_transform,
        guard=guard,
        method=method_,
        parameters=parameters,
    )
    ds.attrs["sources"] = opened.attrs["sources"]
    if ds.attrs["counts"]["dead_pixels"]:
        log.warning(
            "%s: %d detector pixels have flat - dark <= %g × its median (dead): their sinogram values are 0",
            scan,
            ds.attrs["counts"]["dead_pixels"],
            guard,
        )
    return write_pipeline(
        ds,
        output,
        grid={"detector_y": SampleGrid(chunk_rows, band), "angle": SampleGrid(n_angles, n_angles)},
        pipeline="sinograms",
        seed=0,
        cluster=cluster,
        overwrite=overwrite,
        codec=codec,
        progress=progress,
    )


def _reopen(
    scan: str | os.PathLike[str],
    flats: str | os.PathLike[str] | None,
    darks: str | os.PathLike[str] | None,
    data_path: str | None,
    image_key_path: str | None,
    angles: tuple[float, float] | None,
    band: int,
) -> Any:
    """The scan again, its projections chunked (all angles, ``band`` rows, all columns)."""
    return open_scan(
        scan,
        flats=flats,
        darks=darks,
        data_path=data_path,
        image_key_path=image_key_path,
        angles=angles,
        chunks={"angle": -1, "detector_y": band, "detector_x": -1},
    )


def _check_flats(
    scan: str | os.PathLike[str],
    flats: str | os.PathLike[str] | None,
    flat: np.ndarray,
    dark: np.ndarray,
    guard: float,
) -> None:
    """Zero-valued flats (or flats no brighter than the darks) leave nothing to divide by: a clear error."""
    where = flats if flats is not None else scan
    if not np.isfinite(flat).all() or not np.isfinite(dark).all():
        raise SourceError(f"{where}: the flats or darks hold NaN or infinite values")
    if dead_pixels(flat, dark, guard).all():
        raise SourceError(
            f"{where}: the flats are zero-valued (or no brighter than the darks) at every pixel, so the "
            "projections cannot be normalized; check the flats' image_key or pass --flats FILE"
        )
