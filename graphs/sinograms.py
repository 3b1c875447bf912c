"""Flat/dark normalization and the projection → sinogram transpose, as lazy graphs.

A scan on disk is projection-major ``(angle, detector_y, detector_x)``; stripe detection and training want
sinograms ``(detector_y, angle, detector_x)``. Each output block is a *band* of detector rows holding every
angle. Two ways to get there:

- ``"slab"``: the source is opened with one chunk per band (all angles × the band's rows), so each block reads
  its slab straight from the file (one strided read per projection) and normalizes and transposes it in one
  pass; nothing but the block is ever in memory.
- ``"rechunk"``: the source keeps its own chunks (e.g. one projection each) and dask's rechunk (``tasks`` or
  ``p2p``) moves them into bands: the generic path, for sources a slab read does not suit (compressed chunks
  spanning many detector rows would be decompressed once per band).
"""

from __future__ import annotations

from typing import Any, Literal

import dask.array as da
import numpy as np
import xarray as xr
from dask.base import tokenize

from storage.dims import SINOGRAM_DIMS

from .errors import ParameterError

__all__ = [
    "FLAT_AVERAGES",
    "TRANSPOSE_METHODS",
    "average_frames",
    "dead_pixels",
    "flat_field_inverse",
    "normalize_band",
    "plan_band",
    "sinogram_dataset",
    "to_sinograms",
]

FlatAverage = Literal["mean", "median"]
#: How flats and darks are averaged.
FLAT_AVERAGES: tuple[FlatAverage, ...] = ("mean", "median")
Method = Literal["slab", "rechunk", "rechunk-tasks", "rechunk-p2p"]
#: Transpose methods (``rechunk`` lets dask choose between tasks and p2p).
TRANSPOSE_METHODS: tuple[Method, ...] = ("slab", "rechunk", "rechunk-tasks", "rechunk-p2p")


def average_frames(frames: xr.DataArray, how: FlatAverage = "mean") -> xr.DataArray:
    """Average a lazy stack of flats or darks along its first dim, in float32 (lazy).

    An empty stack (no darks) averages to zeros.

    Examples
    --------
    >>> stack = xr.DataArray(np.arange(12.0).reshape(3, 2, 2), dims=("flat", "detector_y", "detector_x"))
    >>> average_frames(stack, "median").values.tolist()
    [[4.0, 5.0], [6.0, 7.0]]
    """
    if how not in FLAT_AVERAGES:
        raise ParameterError(f"flat average must be one of {', '.join(FLAT_AVERAGES)}, got {how!r}")
    dim = str(frames.dims[0])
    if frames.sizes[dim] == 0:
        return xr.DataArray(da.zeros(frames.shape[1:], dtype=np.float32), dims=frames.dims[1:])
    data = frames.astype(np.float32)
    if how == "median":
        data = data.chunk({dim: -1})
        return data.median(dim).astype(np.float32)
    return data.mean(dim, dtype=np.float64).astype(np.float32)


def dead_pixels(flat: np.ndarray, dark: np.ndarray, guard: float) -> np.ndarray:
    """Pixels whose ``flat - dark`` is at most ``guard`` times its median: no signal to divide by.

    Examples
    --------
    >>> dead_pixels(np.array([[100.0, 0.5, 90.0]]), np.zeros((1, 3)), guard=0.01).tolist()
    [[False, True, False]]
    """
    span = np.asarray(flat, np.float64) - np.asarray(dark, np.float64)
    positive = span[span > 0]
    level = float(np.median(positive)) if positive.size else 0.0
    return np.asarray(span <= guard * level)


def flat_field_inverse(flat: np.ndarray, dark: np.ndarray, guard: float = 1e-3) -> np.ndarray:
    """``1 / (flat - dark)`` in float32, and 0 at dead pixels (see :func:`dead_pixels`): the guarded divisor.

    Examples
    --------
    >>> flat_field_inverse(np.array([[110.0, 10.0]]), np.array([[10.0, 10.0]])).tolist()
    [[0.009999999776482582, 0.0]]
    """
    span = np.asarray(flat, np.float32) - np.asarray(dark, np.float32)
    dead = dead_pixels(flat, dark, guard)
    return np.where(dead, np.float32(0), np.float32(1) / np.where(dead, np.float32(1), span)).astype(np.float32)


def normalize_band(raw: np.ndarray, dark: np.ndarray, inverse: np.ndarray, *, log: bool = False) -> np.ndarray:
    """Normalize a slab ``(angle, rows, x)`` of projections and return it as sinograms ``(rows, angle, x)``.

    ``(raw - dark) * inverse`` in float32, ``inverse`` from :func:`flat_field_inverse` (so dead pixels give 0
    rather than a division by ~0). With ``log``, ``-log`` of the result, values below 1e-6 clipped to it first.

    Examples
    --------
    >>> inverse = flat_field_inverse(np.array([[110.0, 10.0]]), np.array([[10.0, 10.0]]))
    >>> normalize_band(np.full((3, 1, 2), 60.0), np.array([[10.0, 10.0]]), inverse).tolist()
    [[[0.5, 0.0], [0.5, 0.0], [0.5, 0.0]]]
    """
    dark = np.asarray(dark, np.float32)
    rows = raw.shape[1]
    out = np.empty((rows, raw.shape[0], raw.shape[2]), dtype=np.float32)
    for i in range(rows):  # row by row: one sinogram's copy at a time, never a second slab
        row = out[i]
        np.subtract(raw[:, i, :], dark[i], out=row, dtype=np.float32, casting="unsafe")
        row *= inverse[i]
        if log:
            np.maximum(row, np.float32(1e-6), out=row)
            np.log(row, out=row)
            np.negative(row, out=row)
    return out


def to_sinograms(
    projections: xr.DataArray,
    flat: np.ndarray,
    dark: np.ndarray,
    *,
    band: int,
    log: bool = False,
    guard: float = 1e-3,
    method: Method = "slab",
) -> xr.DataArray:
    """Normalized sinograms ``(detector_y, angle, detector_x)`` float32, chunked in bands of ``band`` rows (lazy).

    Parameters
    ----------
    projections : xarray.DataArray
        Lazy ``(angle, detector_y, detector_x)``. For ``"slab"`` chunked ``(all angles, band, all columns)``
        (open the source so); for the rechunk methods any chunks.
    flat, dark : numpy.ndarray
        Averaged flat and dark, ``(detector_y, detector_x)``.
    band : int
        Detector rows per output block.
    log : bool
        Take ``-log`` (see :func:`normalize_band`).
    guard : float
        Dead-pixel guard (see :func:`dead_pixels`): such pixels give 0.
    method : {"slab", "rechunk", "rechunk-tasks", "rechunk-p2p"}
        See the module docstring.

    Returns
    -------
    xarray.DataArray
        With the ``angle`` coord of ``projections``; tasks named ``sinograms-normalize``.

    Examples
    --------
    >>> raw = xr.DataArray(da.ones((4, 3, 2), chunks=(4, 2, 2)), dims=("angle", "detector_y", "detector_x"))
    >>> sino = to_sinograms(raw, np.full((3, 2), 2.0), np.zeros((3, 2)), band=2)
    >>> sino.dims, sino.data.chunks, float(sino.mean())
    (('detector_y', 'angle', 'detector_x'), ((2, 1), (4,), (2,)), 0.5)
    """
    if method not in TRANSPOSE_METHODS:
        raise ParameterError(f"method must be one of {', '.join(TRANSPOSE_METHODS)}, got {method!r}")
    if band < 1:
        raise ParameterError(f"band must be >= 1 detector row, got {band}")
    n_angles, height, width = projections.shape
    if np.shape(flat) != (height, width) or np.shape(dark) != (height, width):
        raise ParameterError(f"flat and dark must have the detector shape {(height, width)}")
    data = projections.data
    if not isinstance(data, da.Array):
        data = da.from_array(np.asarray(data), chunks=(-1, band, -1))
    target = ((n_angles,), _bands(height, band), (width,))
    if method == "slab":
        if data.chunks != target:
            raise ParameterError(
                f"slab transpose needs projections chunked (all angles, {band} rows, all columns), got "
                f"{tuple(c[:2] for c in data.chunks)}...; open the source so, or use a rechunk method"
            )
    elif data.chunks != target:
        kind = {"rechunk-tasks": "tasks", "rechunk-p2p": "p2p"}.get(method)
        data = data.rechunk(target, method=kind) if kind else data.rechunk(target)
    inverse = flat_field_inverse(flat, dark, guard)
    dark_d = da.from_array(np.asarray(dark, np.float32), chunks=(band, width), name=f"dark-{tokenize(dark)}")
    inverse_d = da.from_array(inverse, chunks=(band, width), name=f"flat-inverse-{tokenize(inverse)}")
    name = f"sinograms-normalize-{tokenize(data.name, dark_d.name, inverse_d.name, log)}"
    sino = da.blockwise(
        _normalize_task,
        "yax",
        data,
        "ayx",
        dark_d,
        "yx",
        inverse_d,
        "yx",
        dtype=np.float32,
        name=name,
        log=log,
        meta=np.empty((0, 0, 0), np.float32),
    )
    coords = {"angle": projections.coords["angle"]} if "angle" in projections.coords else {}
    return xr.DataArray(sino, dims=SINOGRAM_DIMS, coords=coords, name="sinograms")


def _normalize_task(raw: np.ndarray, dark: np.ndarray, inverse: np.ndarray, log: bool) -> np.ndarray:
    return normalize_band(raw, dark, inverse, log=log)


def _bands(height: int, band: int) -> tuple[int, ...]:
    full, rest = divmod(height, band)
    return (band,) * full + ((rest,) if rest else ())


def sinogram_dataset(
    projections: xr.DataArray,
    flat: np.ndarray,
    dark: np.ndarray,
    *,
    band: int,
    log: bool = False,
    guard: float = 1e-3,
    method: Method = "slab",
    parameters: dict[str, Any] | None = None,
) -> xr.Dataset:
    """The sinogram store's lazy content: ``sinograms``, the ``angle`` coord, the averaged ``flat`` and ``dark``.

    Chunked on ``detector_y`` by ``band`` (one write block per band) and on ``angle`` as one block. See
    :func:`to_sinograms` for the parameters; ``parameters`` are recorded with them in ``attrs``.

    Returns
    -------
    xarray.Dataset
        ``sinograms (detector_y, angle, detector_x)`` float32 with the coord ``rotation_angle (angle,)``
        float64 in degrees, ``flat`` and
        ``dark (detector_y, detector_x)`` float32; attrs ``parameters`` and ``counts`` (``dead_pixels``).
    """
    sino = to_sinograms(projections, flat, dark, band=band, log=log, guard=guard, method=method)
    height, width = flat.shape
    angle = np.asarray(projections.coords["angle"].values, np.float64)
    ds = xr.Dataset(
        {
            "sinograms": xr.Variable(
                SINOGRAM_DIMS,
                sino.data,
                {
                    "long_name": "flat/dark-normalized sinograms" + (", -log" if log else ""),
                    "units": "1",
                    "coordinates": "rotation_angle",
                },
            ),
            # Not named ``angle``: xarray would make a variable named like its dim an in-memory index, and
            # stores write data variables. ``coordinates`` makes it the sinograms' angle coord on reading.
            "rotation_angle": xr.Variable(
                ("angle",),
                da.from_array(angle, chunks=-1, name=f"sinograms-angle-{tokenize(angle)}"),
                {"long_name": "rotation angle", "units": "degree"},
            ),
        }
    )
    for name, frame in (("flat", flat), ("dark", dark)):
        ds[name] = xr.Variable(
            SINOGRAM_DIMS[::2],
            da.from_array(
                np.asarray(frame, np.float32), chunks=(band, width), name=f"sinograms-{name}-{tokenize(frame)}"
            ),
            {"long_name": f"averaged {name}s"},
        )
    ds.attrs["parameters"] = {
        **(parameters or {}),
        "log": bool(log),
        "guard": float(guard),
        "band": int(band),
        "method": method,
    }
    ds.attrs["counts"] = {"dead_pixels": int(dead_pixels(flat, dark, guard).sum()), "sinograms": int(height)}
    return ds


def plan_band(
    n_angles: int, height: int, width: int, *, block_bytes: int, chunk_bytes: int, source_rows: int | None = None
) -> tuple[int, int]:
    """Detector rows per stored chunk and per band (one write block) of float32 sinograms.

    A chunk holds as many whole sinograms as fit in ``chunk_bytes`` and ``block_bytes`` (at least one): what a
    reader decodes. A band
    is a whole number of chunks fitting in ``block_bytes`` (at least one chunk); when the source stores its
    frames in chunks of ``source_rows`` detector rows, the band is a multiple of those rows where the budget
    allows, so no stored chunk is read by two bands.

    Returns
    -------
    (int, int)
        ``(chunk_rows, band_rows)``, ``band_rows`` a multiple of ``chunk_rows``.

    Examples
    --------
    >>> plan_band(900, 512, 1024, block_bytes=64 * 2**20, chunk_bytes=4 * 2**20)
    (1, 18)
    >>> plan_band(900, 512, 1024, block_bytes=64 * 2**20, chunk_bytes=4 * 2**20, source_rows=8)
    (1, 16)
    """
    row = max(1, n_angles * width * 4)
    chunk_rows = min(max(1, min(chunk_bytes, block_bytes) // row), height)
    chunks_per_band = max(1, block_bytes // (row * chunk_rows))
    band = min(chunk_rows * chunks_per_band, -(-height // chunk_rows) * chunk_rows)
    if source_rows and 1 < source_rows < height:
        step = np.lcm(chunk_rows, source_rows)
        if step <= band:
            band = int(band // step * step)
    return int(chunk_rows), int(band)
