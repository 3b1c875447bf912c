"""Particle-picking training sets: window labels from picks, negative sampling, splits by micrograph.

A window is *positive* when some particle center lies within ``radius`` pixels (Euclidean) of the window's
center ``(y0 + size / 2, x0 + size / 2)``. Every positive window is kept, and a seeded share of the others.
Labels need only the picks and the image shapes, so the samples (and their number) are known before a pixel is
read: :func:`picking_dataset` builds the whole lazy dataset from them, in either storage mode.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import xarray as xr
from dask.base import tokenize

from storage.dims import MICROGRAPH_DIMS, SAMPLE

from .errors import ParameterError
from .patches import WindowSelection, extract_patches, literal_array, prepare_images
from .windows import Edges, WindowGrid

__all__ = [
    "LABELS",
    "SAMPLE_TYPES",
    "SPLITS",
    "assign_splits",
    "keep_negatives",
    "picking_dataset",
    "positive_windows",
]

#: ``label`` values: 1 when a particle center is within the radius of the window center.
LABELS = {"negative": 0, "positive": 1}
#: ``sample_type`` values: ``unlabeled`` windows come from micrographs without picks (for PU learning: they may
#: hold particles nobody picked), ``negative`` ones from micrographs with picks.
SAMPLE_TYPES = {"negative": 0, "positive": 1, "unlabeled": 2}
#: ``split`` values.
SPLITS = {"train": 0, "val": 1, "test": 2}

Mode = Literal["materialized", "virtual"]
# Last word of the seed of the split draw, so that it never equals an image's seed ``[seed, index]``.
_SPLIT_TAG = 0x73706C74


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


def assign_splits(n_images: int, ratios: Sequence[float], seed: int) -> np.ndarray:
    """Assign whole images to splits: a seeded permutation cut by ``ratios`` (train, val, test).

    Counts are ``ratios * n_images`` rounded by largest remainder, so they add up to ``n_images``; which images
    go where depends only on ``n_images`` and ``seed``.

    Parameters
    ----------
    n_images : int
    ratios : sequence of float
        One per split (``SPLITS`` order), each in ``[0, 1]``, summing to 1 (within 1e-6).
    seed : int

    Returns
    -------
    numpy.ndarray
        int8 split of each image.

    Examples
    --------
    >>> assign_splits(10, (0.8, 0.1, 0.1), seed=0).tolist().count(0)
    8
    """
    ratios = tuple(float(r) for r in ratios)
    if len(ratios) != len(SPLITS) or any(not 0 <= r <= 1 for r in ratios):
        raise ParameterError(
            f"split ratios must be {len(SPLITS)} numbers in [0, 1] (train, val, test), got {list(ratios)}"
        )
    if abs(sum(ratios) - 1) > 1e-6:
        raise ParameterError(f"split ratios must sum to 1, got {list(ratios)} (sum {sum(ratios):g})")
    exact = np.asarray(ratios) * n_images
    counts = np.floor(exact).astype(np.int64)
    for i in np.argsort(-(exact - counts), kind="stable")[: n_images - int(counts.sum())]:
        counts[i] += 1
    order = np.random.default_rng([seed, _SPLIT_TAG]).permutation(n_images)
    splits = np.empty(n_images, dtype=np.int8)
    splits[order] = np.repeat(np.arange(len(ratios), dtype=np.int8), counts)
    return splits


def picking_dataset(
    images: xr.DataArray,
    centers: Sequence[np.ndarray | None],
    *,
    size: int,
    stride: int | None = None,
    radius: float,
    negative_ratio: float,
    split: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    mode: Mode = "materialized",
    edges: Edges = "drop",
    normalize: bool = True,
    bin: int = 1,
    block_samples: int = 2048,
) -> xr.Dataset:
    """A lazy picking training set: labelled windows of micrographs, split by micrograph.

    Parameters
    ----------
    images : xarray.DataArray
        A lazy ``(micrograph, y, x)`` stack (:func:`storage.sources.open_images`).
    centers : sequence
        Per image, its ``(n, 2)`` particle centers ``(y, x)`` in source pixels, or ``None`` for an image without
        picks (its windows are ``unlabeled``).
    size, stride, edges, normalize, bin
        As for :func:`graphs.patches.extract_patches`.
    radius : float
        A window is positive when a particle center is within ``radius`` source pixels of its center.
    negative_ratio : float
        Share of the other windows kept (seeded per image with ``[seed, image]``); positives are always kept.
    split : sequence of float
        Train, val, test shares of the micrographs (see :func:`assign_splits`).
    seed : int
    mode : {"materialized", "virtual"}
        ``materialized`` adds ``patches (sample, patch_y, patch_x)``. ``virtual`` adds the prepared (normalized)
        ``micrographs (micrograph, y, x)`` once, and ``micrograph_index (sample,)``, the image each window is
        cut from; a :class:`~torch_bridge.ZarrDataset` cuts the windows when reading.
    block_samples : int
        Samples per block (one store shard).

    Returns
    -------
    xarray.Dataset
        Per sample, in split order (train, val, test), then image order, then row-major window order:
        ``source_index``, ``y0``, ``x0`` (int32, source pixels), ``label``, ``sample_type``, ``split`` (int8,
        with CF ``flag_values``/``flag_meanings``), and the mode's arrays. ``attrs`` hold ``parameters``,
        ``sources``, ``counts`` and, in virtual mode, ``virtual`` (how to cut ``patches``).
    """
    if mode not in ("materialized", "virtual"):
        raise ParameterError(f"mode must be 'materialized' or 'virtual', got {mode!r}")
    if len(centers) != images.shape[0]:
        raise ParameterError(f"{len(centers)} pick lists for {images.shape[0]} micrographs")
    data, grid = prepare_images(images, size=size, stride=stride, edges=edges, normalize=normalize, bin=bin)
    splits = assign_splits(images.shape[0], split, seed)
    order, windows, labels, types = _label_images(grid, centers, splits, radius, negative_ratio, seed, bin)
    selection = WindowSelection(tuple(order), tuple(windows))
    ds = extract_patches(
        images,
        size=size,
        stride=stride,
        edges=edges,
        normalize=normalize,
        bin=bin,
        block_samples=block_samples,
        selection=selection,
    )
    token = tokenize(ds.y0.data.name, radius, negative_ratio, tuple(split), seed)
    sample_image, _ = selection.per_sample()
    per_sample = {
        "label": (np.concatenate(labels) if labels else np.zeros(0, np.int8), LABELS, "particle within radius"),
        "sample_type": (
            np.concatenate(types) if types else np.zeros(0, np.int8),
            SAMPLE_TYPES,
            "positive, kept negative, or unlabeled (micrograph without picks)",
        ),
        "split": (splits[sample_image], SPLITS, "dataset split of the window's micrograph"),
    }
    for name, (values, flags, long_name) in per_sample.items():
        attrs = {
            "long_name": long_name,
            "flag_values": list(flags.values()),
            "flag_meanings": " ".join(flags),
        }
        array = literal_array(np.asarray(values, np.int8), block_samples, f"picking-{name}-{token}")
        ds[name] = xr.Variable((SAMPLE,), array, attrs)
    if mode == "materialized":  # per-sample metadata as coordinates of the patches, for xarray users
        coordinates = " ".join(str(n) for n in ds.data_vars if n != "patches")
        ds.variables["patches"].attrs["coordinates"] = coordinates
    parameters = {
        **ds.attrs["parameters"],
        "radius": float(radius),
        "negative_ratio": float(negative_ratio),
        "split": [float(r) for r in split],
        "mode": mode,
    }
    if mode == "virtual":
        ds = ds.drop_vars("patches")
        ds["micrograph_index"] = xr.Variable(
            (SAMPLE,),
            literal_array(sample_image.astype(np.int32), block_samples, f"picking-micrograph-{token}"),
            {"long_name": "index of the window's image in micrographs"},
        )
        stack = data.rechunk({0: 1, 1: -1, 2: -1})
        ds["micrographs"] = xr.Variable(
            MICROGRAPH_DIMS,
            stack,
            {"long_name": "prepared micrograph (binned, normalized, padded) the windows are cut from"},
        )
        ds.attrs["virtual"] = {
            "patches": {
                "images": "micrographs",
                "index": "micrograph_index",
                "y0": "y0",
                "x0": "x0",
                "size": grid.size,
                "scale": bin,
                "dtype": str(stack.dtype),
            }
        }
        ds.attrs["rows_per_chunk"] = {"micrographs": max(grid.stride, 8)}
    ds.attrs["parameters"] = parameters
    ds.attrs["counts"] = _counts(per_sample["label"][0], per_sample["sample_type"][0], per_sample["split"][0])
    return ds


def _label_images(
    grid: WindowGrid,
    centers: Sequence[np.ndarray | None],
    splits: np.ndarray,
    radius: float,
    ratio: float,
    seed: int,
    bin: int,
) -> tuple[list[int], list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """The kept windows of every image, images in split order: ``(order, windows, labels, sample types)``."""
    if not radius > 0 or not np.isfinite(radius):
        raise ParameterError(f"radius must be a positive number of pixels, got {radius}")
    if not 0 <= ratio <= 1:
        raise ParameterError(f"the negative ratio must be between 0 and 1, got {ratio}")
    order = [int(i) for i in np.argsort(splits, kind="stable")]
    windows, labels, types = [], [], []
    for image in order:
        picks = centers[image]
        positive = (
            np.zeros(grid.per_image, dtype=bool)
            if picks is None
            else positive_windows(grid, picks, radius, scale=bin)
        )
        kept = np.flatnonzero(keep_negatives(positive, ratio, np.random.SeedSequence([seed, image])))
        windows.append(kept)
        labels.append(positive[kept].astype(np.int8))
        if picks is None:
            types.append(np.full(len(kept), SAMPLE_TYPES["unlabeled"], dtype=np.int8))
        else:
            negative, positive_type = SAMPLE_TYPES["negative"], SAMPLE_TYPES["positive"]
            types.append(np.where(positive[kept], positive_type, negative).astype(np.int8))
    return order, windows, labels, types


def _counts(label: np.ndarray, sample_type: np.ndarray, split: np.ndarray) -> dict[str, dict[str, int]]:
    """Samples per split and sample type (what ``zarrforge info`` shows)."""
    counts: dict[str, dict[str, int]] = {}
    for split_name, s in SPLITS.items():
        in_split = split == s
        counts[split_name] = {
            "samples": int(in_split.sum()),
            **{t: int((in_split & (sample_type == v)).sum()) for t, v in SAMPLE_TYPES.items()},
        }
    return counts
