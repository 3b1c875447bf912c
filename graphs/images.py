"""Image-folder training sets: resize images of any size to one shape, and normalize over their foreground.

Images of a folder may differ in size, so they come in as a list of lazy 2-D arrays and leave as one lazy
``(sample, y, x)`` float32 stack, one task per image (``images-resize``). The mask-aware normalization
(``images-normalize``) subtracts the mean and divides by the standard deviation of each image's **non-zero**
pixels and leaves zero pixels (the background) at zero; its statistics are kept per image so it can be undone.
:func:`masked_normalize` is the same operation on one array or tensor, usable on its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

from .errors import ParameterError
from .masked import masked_moments, masked_normalize

__all__ = ["masked_moments", "masked_normalize", "normalize_stack", "resize_images"]


def resize_images(images: Sequence[da.Array], size: tuple[int, int], *, order: int = 1) -> da.Array:
    """Resize each lazy 2-D image to ``size`` and stack them, one task per image.

    Images are stretched to ``size`` (the aspect ratio is not kept, as MONAI's ``Resize`` does), with
    :func:`skimage.transform.resize`: spline ``order`` (1: bilinear), Gaussian anti-aliasing when shrinking, the
    value range kept (no rescaling to [0, 1]).

    Parameters
    ----------
    images : sequence of dask.array.Array
        2-D images, any sizes and dtypes, each one chunk.
    size : (int, int)
        ``(height, width)`` of the result.
    order : int
        Spline order, 0-5 (0 for label images).

    Returns
    -------
    dask.array.Array
        ``(len(images), height, width)`` float32, one image per chunk.

    Examples
    --------
    >>> a = da.from_array(np.arange(16.0).reshape(4, 4), chunks=-1)
    >>> resize_images([a, a[:2]], (2, 2)).compute().shape
    (2, 2, 2)
    """
    height, width = (int(s) for s in size)
    if height < 1 or width < 1:
        raise ParameterError(f"size must be two positive numbers of pixels, got {size}")
    if not 0 <= order <= 5:
        raise ParameterError(f"order must be a spline order 0-5, got {order}")
    for i, image in enumerate(images):
        if image.ndim != 2 or image.numblocks != (1, 1):
            raise ParameterError(f"image {i}: needs one 2-D chunk, got shape {image.shape}, chunks {image.chunks}")
    name = f"images-resize-{tokenize(*images, size, order)}"
    layer: dict[Any, Any] = {
        (name, i, 0, 0): (_resize, (image.name, 0, 0), (height, width), order) for i, image in enumerate(images)
    }
    if not layer:
        return cast(da.Array, da.zeros((0, height, width), np.float32, chunks=(1, height, width)))
    graph = HighLevelGraph.from_collections(name, layer, dependencies=[cast(Any, image) for image in images])
    chunks = ((1,) * len(images), (height,), (width,))
    return da.Array(graph, name, chunks=chunks, dtype=np.float32)


def _resize(image: np.ndarray, size: tuple[int, int], order: int) -> np.ndarray:
    from skimage.transform import resize

    shrinking = size[0] < image.shape[0] or size[1] < image.shape[1]
    out = resize(  # type: ignore[no-untyped-call]
        image.astype(np.float32), size, order=order, anti_aliasing=shrinking, preserve_range=True
    )
    return np.asarray(out, dtype=np.float32)[None]


def normalize_stack(stack: da.Array) -> tuple[da.Array, da.Array, da.Array]:
    """:func:`masked_normalize` each image of a lazy ``(sample, y, x)`` stack, keeping its statistics.

    Returns
    -------
    normalized, mean, std : dask.array.Array
        The float32 stack, and float32 ``(sample,)`` arrays of each image's foreground mean and std
        (``normalized * std + mean`` on the non-zero pixels gives the image back).

    Examples
    --------
    >>> stack = da.from_array(np.array([[[0.0, 2.0], [4.0, 0.0]]] * 2), chunks=1)
    >>> normalized, mean, std = normalize_stack(stack)
    >>> normalized.compute()[1].tolist(), mean.compute().tolist(), std.compute().tolist()
    ([[0.0, -1.0], [1.0, 0.0]], [3.0, 3.0], [1.0, 1.0])
    """
    if stack.ndim != 3:
        raise ParameterError(f"stack must be (sample, y, x), got {stack.ndim} dims")
    stack = stack.rechunk({1: -1, 2: -1})
    token = tokenize(stack)
    stats = da.map_blocks(
        _stats,
        stack,
        drop_axis=[1, 2],
        new_axis=[1],
        chunks=(stack.chunks[0], (2,)),
        dtype=np.float64,
        meta=np.empty((0, 2), np.float64),
        name=f"images-stats-{token}",
    )
    normalized = da.map_blocks(
        _normalize_block,
        stack,
        stats[:, :, None],
        dtype=np.float32,
        meta=np.empty((0, 0, 0), np.float32),
        name=f"images-normalize-{token}",
    )
    return (
        cast(da.Array, normalized),
        cast(da.Array, stats[:, 0].astype(np.float32)),
        cast(da.Array, stats[:, 1].astype(np.float32)),
    )


def _stats(block: np.ndarray) -> np.ndarray:
    return np.array([masked_moments(image) for image in block], dtype=np.float64).reshape(-1, 2)


def _normalize_block(block: np.ndarray, stats: np.ndarray) -> np.ndarray:
    out = np.empty(block.shape, dtype=np.float32)
    for i, image in enumerate(block):
        out[i] = masked_normalize(image.astype(np.float32), float(stats[i, 0, 0]), float(stats[i, 1, 0]))
    return out
