"""Window labels from particle picks, and the seeded choice of the negative windows to keep.

Plain numpy on small per-image tables (a window grid, an image's pick centers): the picking pipeline calls
these per micrograph inside its graph. A window is *positive* when some particle center lies within ``radius``
pixels (Euclidean) of the window's center ``(y0 + size / 2, x0 + size / 2)``.
"""

from __future__ import annotations

import numpy as np

from .errors import ParameterError
from .windows import WindowGrid

__all__ = ["keep_negatives", "positive_windows"]


def positive_windows(grid: WindowGrid, centers: np.ndarray, radius: float, scale: float = 1.0) -> np.ndarray:
    """Which windows of ``grid`` have a particle center within ``radius`` pixels of their center.

    Each pick only visits the windows whose centers can lie within ``radius`` of it, so the cost grows with the
    number of picks, not with the number of windows times picks.

    Parameters
    ----------
    grid : WindowGrid
        The windows of one image (row-major order of ``(y0, x0)``, as the patch store holds them).
    centers : numpy.ndarray
        ``(n, 2)`` particle centers ``(y, x)`` in pixels of the source image.
    radius : float
        In pixels of the source image; > 0.
    scale : float
        Source pixels per grid pixel (the binning factor): window ``(y0, x0)`` of the grid covers source pixels
        from ``(y0 * scale, x0 * scale)``.

    Returns
    -------
    numpy.ndarray
        Boolean, ``(grid.per_image,)``.

    Examples
    --------
    >>> from graphs.windows import window_grid
    >>> grid = window_grid(256, 256, size=128, stride=64)  # 3 × 3 windows, centers at 64, 128, 192
    >>> positive_windows(grid, np.array([[70.0, 130.0]]), radius=10).reshape(3, 3).astype(int)
    array([[0, 1, 0],
           [0, 0, 0],
           [0, 0, 0]])
    """
    if not radius > 0 or not np.isfinite(radius):
        raise ParameterError(f"radius must be a positive number of pixels, got {radius}")
    centers = np.asarray(centers, dtype=np.float64).reshape(-1, 2)
    if not np.isfinite(centers).all():
        raise ParameterError(
            f"{int((~np.isfinite(centers)).any(axis=1).sum())} particle centers are NaN or infinite"
        )
    positive = np.zeros((grid.ny, grid.nx), dtype=bool)
    if not len(centers):
        return positive.reshape(-1)
    # Window (i, j) has its center at (i * stride + size / 2, j * stride + size / 2) grid pixels.
    step = grid.stride * scale
    offset = grid.size / 2 * scale
    reach = int(np.ceil(radius / step))
    for cy, cx in centers:
        i0 = int(np.floor((cy - offset) / step))
        j0 = int(np.floor((cx - offset) / step))
        i = np.arange(max(i0 - reach, 0), min(i0 + reach + 2, grid.ny))
        j = np.arange(max(j0 - reach, 0), min(j0 + reach + 2, grid.nx))
        if not len(i) or not len(j):
            continue
        dy = (i * step + offset - cy)[:, None]
        dx = (j * step + offset - cx)[None, :]
        positive[np.ix_(i, j)] |= dy * dy + dx * dx <= radius * radius
    return positive.reshape(-1)


def keep_negatives(positive: np.ndarray, ratio: float, seed: int | np.random.SeedSequence) -> np.ndarray:
    """Which windows to keep: every positive one, and ``round(ratio * negatives)`` negatives chosen at random.

    The choice depends only on ``positive``, ``ratio`` and ``seed``; seed each image with, e.g.,
    ``np.random.SeedSequence([seed, image_index])`` so that images (and the workers that label them) are
    independent of each other and of the order they run in.

    Parameters
    ----------
    positive : numpy.ndarray
        Boolean label per window.
    ratio : float
        Fraction of the negative windows kept, in ``[0, 1]``.
    seed : int or numpy.random.SeedSequence

    Returns
    -------
    numpy.ndarray
        Boolean keep-mask, same shape as ``positive``.

    Examples
    --------
    >>> positive = np.array([True, False, False, False, False, True, False, False, False, False])
    >>> keep = keep_negatives(positive, 0.5, seed=0)
    >>> int(keep.sum()), bool(keep[positive].all())
    (6, True)
    """
    if not 0 <= ratio <= 1:
        raise ParameterError(f"the negative ratio must be between 0 and 1, got {ratio}")
    positive = np.asarray(positive, dtype=bool)
    negatives = np.flatnonzero(~positive)
    n_keep = round(ratio * len(negatives))
    rng = np.random.default_rng(seed)
    chosen = rng.choice(negatives, size=n_keep, replace=False) if n_keep else negatives[:0]
    keep = positive.copy()
    keep[chosen] = True
    return keep
