"""Synthetic micrographs for the demo, the tests and the benchmarks.

The images look like low-dose cryo-EM micrographs: a slowly varying ice background, round particles of a few
sizes, a dark contamination blob, and shot noise, stored as float32 around a detector offset (the real UCSF
micrograph in ``shared/data/real`` sits around 6,800 with a standard deviation of ~9). They are made block by
block from ``np.random.default_rng([seed, index])`` so each file depends only on the seed and its index.
"""

from __future__ import annotations

import os
from pathlib import Path

import mrcfile
import numpy as np
import numpy.typing as npt

__all__ = ["make_micrograph", "write_micrographs", "write_picking_set"]


def make_micrograph(
    shape: tuple[int, int] = (1024, 1024),
    *,
    seed: int = 0,
    index: int = 0,
    n_particles: int | None = None,
    dtype: npt.DTypeLike = np.float32,
) -> tuple[np.ndarray, np.ndarray]:
    """Make one synthetic micrograph and the centres of its particles.

    Parameters
    ----------
    shape : tuple of int
        ``(height, width)`` in pixels.
    seed, index : int
        The image is drawn from ``np.random.default_rng([seed, index])``.
    n_particles : int, optional
        Number of particles; by default one per 64×64 pixels of area.
    dtype : numpy dtype
        Output dtype (float32 by default, as motion-corrected micrographs are).

    Returns
    -------
    image : numpy.ndarray
        The micrograph, shape ``shape``.
    centres : numpy.ndarray
        ``(n_particles, 2)`` float array of particle centres as ``(y, x)`` pixels.

    Examples
    --------
    >>> image, centres = make_micrograph((256, 256), seed=1)
    >>> image.shape, image.dtype, centres.shape[1]
    ((256, 256), dtype('float32'), 2)
    """
    height, width = shape
    rng = np.random.default_rng([seed, index])
    if n_particles is None:
        n_particles = max(1, height * width // (64 * 64))
    # Ice: a smooth gradient plus low-frequency ripple.
    y = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    x = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
    phase = rng.uniform(0, 2 * np.pi, 2)
    signal = 1.0 + 0.3 * y + 0.2 * x + 0.1 * np.sin(6 * y + phase[0]) * np.cos(5 * x + phase[1])
    signal = signal.astype(np.float32)
    centres = np.column_stack([rng.uniform(0, height, n_particles), rng.uniform(0, width, n_particles)]).astype(
        np.float64
    )
    radii = rng.choice([6.0, 9.0, 12.0], n_particles)
    for (cy, cx), r in zip(centres, radii, strict=True):
        # Only touch a small box around each particle: O(particles), not O(pixels × particles).
        y0, y1 = int(max(cy - 3 * r, 0)), int(min(cy + 3 * r + 1, height))
        x0, x1 = int(max(cx - 3 * r, 0)), int(min(cx + 3 * r + 1, width))
        yy, xx = np.mgrid[y0:y1, x0:x1]
        signal[y0:y1, x0:x1] -= 0.5 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
    # A dark contamination blob in one corner region.
    by, bx = rng.uniform(0.6, 0.9) * height, rng.uniform(0.6, 0.9) * width
    br = 0.08 * min(height, width)
    y0, y1 = int(max(by - 3 * br, 0)), int(min(by + 3 * br + 1, height))
    x0, x1 = int(max(bx - 3 * br, 0)), int(min(bx + 3 * br + 1, width))
    yy, xx = np.mgrid[y0:y1, x0:x1]
    signal[y0:y1, x0:x1] *= 1.0 - 0.6 * np.exp(-((yy - by) ** 2 + (xx - bx) ** 2) / (2 * br * br))
    # Shot noise around a detector offset, continuous like a dose-weighted sum.
    counts = 80.0 * signal
    noisy = (
        6700.0 + counts + np.sqrt(np.maximum(counts, 1.0)) * rng.standard_normal((height, width), dtype=np.float32)
    )
    return noisy.astype(dtype), centres


def write_micrographs(
    directory: str | os.PathLike[str],
    n: int,
    shape: tuple[int, int] = (1024, 1024),
    *,
    seed: int = 0,
    prefix: str = "micrograph",
    pixel_size: float = 1.06,
    n_particles: int | None = None,
    dtype: npt.DTypeLike = np.float32,
    first: int = 0,
) -> list[Path]:
    """Write ``n`` synthetic micrographs as MRC files and return their paths.

    Existing files of the same names are replaced. Each file is written to a temporary name and renamed, so a
    killed writer never leaves a truncated micrograph behind.

    Parameters
    ----------
    directory : path
        Folder to write into (created if missing).
    n : int
        Number of micrographs.
    shape : tuple of int
        ``(height, width)`` of each micrograph.
    seed : int
        Seed; micrograph ``i`` comes from ``default_rng([seed, i])``.
    prefix : str
        File names are ``{prefix}_{i:04d}.mrc``.
    pixel_size : float
        Voxel size written to the header, in ångström.
    n_particles, dtype
        As for :func:`make_micrograph` (``int16`` writes MRC mode 1, half the bytes of float32).
    first : int
        Index of the first micrograph (to add files to a set without rewriting it).

    Returns
    -------
    list of pathlib.Path
        The files, in index order.

    Examples
    --------
    >>> import tempfile
    >>> paths = write_micrographs(tempfile.mkdtemp(), 2, (64, 64))
    >>> [p.name for p in paths]
    ['micrograph_0000.mrc', 'micrograph_0001.mrc']
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    return [
        _write_one(directory, shape, seed, i, prefix, pixel_size, n_particles, dtype)[0]
        for i in range(first, first + n)
    ]


def write_picking_set(
    directory: str | os.PathLike[str],
    n: int,
    shape: tuple[int, int] = (1024, 1024),
    *,
    seed: int = 0,
    n_particles: int | None = None,
    dtype: npt.DTypeLike = np.float32,
    first: int = 0,
) -> tuple[list[Path], list[Path]]:
    """Write synthetic micrographs and, beside them, RELION ``.star`` pick files of their particles.

    ``{directory}/micrographs/micrograph_{i:04d}.mrc`` and ``{directory}/picks/micrograph_{i:04d}.star``, whose
    ``rlnCoordinateX/Y`` are the true particle centers (pixels). Parameters as for :func:`write_micrographs`.

    Returns
    -------
    micrographs, picks : list of pathlib.Path

    Examples
    --------
    >>> import tempfile, starfile
    >>> mics, picks = write_picking_set(tempfile.mkdtemp(), 1, (128, 128), n_particles=3)
    >>> len(starfile.read(picks[0]))
    3
    """
    import pandas as pd
    import starfile

    directory = Path(directory)
    (directory / "micrographs").mkdir(parents=True, exist_ok=True)
    (directory / "picks").mkdir(parents=True, exist_ok=True)
    mics, picks = [], []
    for i in range(first, first + n):
        path, centres = _write_one(
            directory / "micrographs", shape, seed, i, "micrograph", 1.06, n_particles, dtype
        )
        table = pd.DataFrame(
            {"rlnCoordinateX": centres[:, 1], "rlnCoordinateY": centres[:, 0], "rlnMicrographName": path.name}
        )
        star = directory / "picks" / f"{path.stem}.star"
        tmp = star.with_name(star.name + ".partial.star")
        starfile.write(table, tmp, overwrite=True)
        os.replace(tmp, star)
        mics.append(path)
        picks.append(star)
    return mics, picks


def _write_one(
    directory: Path,
    shape: tuple[int, int],
    seed: int,
    index: int,
    prefix: str,
    pixel_size: float,
    n_particles: int | None,
    dtype: npt.DTypeLike,
) -> tuple[Path, np.ndarray]:
    image, centres = make_micrograph(shape, seed=seed, index=index, n_particles=n_particles, dtype=dtype)
    path = directory / f"{prefix}_{index:04d}.mrc"
    tmp = path.with_name(path.name + ".partial")
    with mrcfile.new(tmp, overwrite=True) as mrc:
        mrc.set_data(image)
        mrc.voxel_size = pixel_size
    os.replace(tmp, path)
    return path, centres
