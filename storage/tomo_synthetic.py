"""Synthetic tomography scans as NXtomo files, for tests, demos and benchmarks (no real data needed).

The sample is a few spheres rotating about the ``detector_y`` axis; a projection is the detector's dark current
plus its gain times the beam times the spheres' transmission, with Poisson-like noise. Columns listed in
``stripe_columns`` respond differently in the projections than in the flats (a miscalibrated pixel column), so
they become real stripes once normalized.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np

__all__ = ["phantom_projections", "write_nxtomo_scan"]


def phantom_projections(
    angles: np.ndarray, height: int, width: int, *, seed: int = 0, n_spheres: int = 6
) -> np.ndarray:
    """Transmission ``(angle, height, width)`` float32 of random spheres rotating about the vertical axis.

    Examples
    --------
    >>> t = phantom_projections(np.linspace(0, 180, 4), 8, 16)
    >>> t.shape, bool(0 < t.min() <= t.max() <= 1)
    ((4, 8, 16), True)
    """
    rng = np.random.default_rng([seed, 0x5048])
    theta = np.radians(np.asarray(angles, np.float64))[:, None, None]
    y = np.arange(height, dtype=np.float64)[None, :, None]
    x = np.arange(width, dtype=np.float64)[None, None, :] - (width - 1) / 2
    path = np.zeros((len(theta), height, width), np.float64)
    for _ in range(n_spheres):
        r = rng.uniform(0.08, 0.25) * min(width, 2 * height)
        cx, cz = rng.uniform(-0.25, 0.25, 2) * width
        cy = rng.uniform(0.2, 0.8) * height
        mu = rng.uniform(0.5, 2.0) / width
        along = cx * np.cos(theta) + cz * np.sin(theta)  # the sphere's center as the detector sees it
        d2 = r * r - (y - cy) ** 2 - (x - along) ** 2
        path += mu * 2 * np.sqrt(np.maximum(d2, 0))
    return np.exp(-path).astype(np.float32)


def write_nxtomo_scan(
    path: str | os.PathLike[str],
    *,
    n_angles: int = 90,
    height: int = 16,
    width: int = 64,
    n_flats: int = 4,
    n_darks: int = 4,
    seed: int = 0,
    dtype: str = "uint16",
    stripe_columns: Sequence[int] = (),
    stripe_strength: float = 0.05,
    image_key: bool = True,
    angles: bool = True,
    zero_flats: bool = False,
    chunks: tuple[int, int, int] | None = None,
    compression: str | None = None,
) -> Path:
    """Write a synthetic NXtomo scan: darks, flats, then projections over 0-180 degrees, float image keys.

    Parameters
    ----------
    path : path
        The ``.nxs`` file to write.
    n_angles, height, width : int
        Projections and detector shape.
    n_flats, n_darks : int
        Frames of each kind (written before the projections).
    seed : int
    dtype : str
        Of the frames (``uint16`` counts or ``float32``).
    stripe_columns : sequence of int
        Detector columns whose gain in the projections is off by ``stripe_strength`` (relative): real stripes.
    image_key, angles : bool
        Write ``image_key`` / ``rotation_angle`` (False makes the broken files the error tests need).
    zero_flats : bool
        Flats of zero.
    chunks, compression : optional
        HDF5 storage of the frames (default contiguous, uncompressed).

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    path = Path(path)
    rng = np.random.default_rng([seed, 0x4E58])
    theta = np.linspace(0.0, 180.0, n_angles)
    gain = rng.uniform(0.9, 1.1, (height, width))
    beam, dark_level = 20000.0, 100.0
    projection_gain = gain.copy()
    for c in stripe_columns:
        projection_gain[:, c] *= 1 + stripe_strength
    n = n_darks + n_flats + n_angles
    keys = np.concatenate([np.full(n_darks, 2.0), np.full(n_flats, 1.0), np.zeros(n_angles)])
    with h5py.File(path, "w") as f:
        entry = f.create_group("entry1/tomo_entry")
        f["entry1"].attrs["NX_class"] = "NXentry"
        entry.attrs["NX_class"] = "NXsubentry"
        entry["definition"] = np.array([b"NXtomo"])
        detector = entry.create_group("instrument/detector")
        detector.attrs["NX_class"] = "NXdetector"
        data = detector.create_dataset(
            "data", shape=(n, height, width), dtype=dtype, chunks=chunks, compression=compression
        )
        for i in range(n_darks):
            data[i] = _counts(rng, np.full((height, width), dark_level), dtype)
        flat_counts = np.zeros((height, width)) if zero_flats else dark_level + beam * gain
        for i in range(n_flats):
            data[n_darks + i] = _counts(rng, flat_counts, dtype)
        step = max(1, (1 << 22) // max(1, height * width))  # a few MiB of projections at a time
        for a in range(0, n_angles, step):
            t = phantom_projections(theta[a : a + step], height, width, seed=seed)
            counts = dark_level + beam * projection_gain * t
            data[n_darks + n_flats + a : n_darks + n_flats + a + len(t)] = _counts(rng, counts, dtype)
        if image_key:
            detector["image_key"] = keys
        if angles:
            all_angles = np.concatenate([np.zeros(n_darks + n_flats), theta])
            entry.create_dataset("sample/rotation_angle", data=all_angles).attrs["units"] = "degree"
    return path


def _counts(rng: np.random.Generator, mean: np.ndarray, dtype: str) -> np.ndarray:
    """Noisy detector counts around ``mean`` (Gaussian approximation of Poisson noise)."""
    noisy = mean + rng.standard_normal(mean.shape) * np.sqrt(np.maximum(mean, 0))
    if np.dtype(dtype).kind in "iu":
        out: np.ndarray = np.clip(np.rint(noisy), 0, np.iinfo(dtype).max).astype(dtype)
        return out
    positive: np.ndarray = np.maximum(noisy, 0).astype(dtype)
    return positive
