"""Sliding-window patches of image stacks: lazy images in, a lazy patch dataset out.

The number of patches is known from the shapes alone, so every output block knows its samples before anything
is read, and each block is cut by one task (``patches-extract``) from only the image rows it needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import dask.array as da
import numpy as np
import xarray as xr
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph
from numpy.lib.stride_tricks import sliding_window_view

from storage.dims import PATCH_DIMS, SAMPLE

from .errors import ParameterError, SourceError
from .windows import Edges, WindowGrid, window_grid

__all__ = ["extract_patches", "patch_count"]


def patch_count(
    images: xr.DataArray, *, size: int, stride: int | None = None, edges: Edges = "drop", bin: int = 1
) -> int:
    """Number of patches :func:`extract_patches` makes from ``images``, without reading anything.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> images = xr.DataArray(np.zeros((2, 300, 260)), dims=("micrograph", "y", "x"))
    >>> patch_count(images, size=128, stride=64)
    18
    """
    _, height, width = _binned_shape(images, bin)
    return images.shape[0] * window_grid(height, width, size, stride, edges).per_image


def extract_patches(
    images: xr.DataArray,
    *,
    size: int,
    stride: int | None = None,
    edges: Edges = "drop",
    normalize: bool = False,
    bin: int = 1,
    block_samples: int = 2048,
) -> xr.Dataset:
    """Cut every image of a stack into sliding-window patches, lazily.

    Parameters
    ----------
    images : xarray.DataArray
        A lazy ``(image, y, x)`` stack, e.g. from :func:`storage.sources.open_mrc`. Its ``source_index`` coord
        (if present) maps each image to the file it came from, and ``attrs["sources"]`` lists those files.
    size, stride : int
        Window side and step in pixels (of the binned image); ``stride`` defaults to ``size``.
    edges : {"drop", "pad"}
        ``drop`` windows that do not fit, or reflect-``pad`` the bottom and right edges to cover the image.
    normalize : bool
        Subtract each image's mean and divide by its standard deviation (over the whole binned image).
    bin : int
        Average ``bin × bin`` pixel blocks before cutting (remainder rows/columns are trimmed).
    block_samples : int
        Samples per output chunk; the engine passes one store shard, so each chunk is one write block.

    Returns
    -------
    xarray.Dataset
        Lazy variables ``patches (sample, patch_y, patch_x)`` in the source dtype (float32 when normalizing or
        binning), ``source_index``, ``y0``, ``x0`` (int32, per sample; corners in source pixels), and
        ``frame`` when a source file holds several images. Samples run in row-major order of ``(y0, x0)``
        within each image, images in stack order.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> images = xr.DataArray(np.arange(2 * 6 * 5, dtype="uint16").reshape(2, 6, 5), dims=("image", "y", "x"))
    >>> ds = extract_patches(images, size=4, stride=2, block_samples=3)
    >>> ds.patches.shape, ds.patches.dtype, ds.y0.values.tolist(), ds.x0.values.tolist()
    ((4, 4, 4), dtype('uint16'), [0, 2, 0, 2], [0, 0, 0, 0])
    """
    if images.ndim != 3:
        raise ParameterError(f"images must be a 3-D (image, y, x) stack, got dims {images.dims}")
    if block_samples < 1:
        raise ParameterError(f"block_samples must be >= 1, got {block_samples}")
    n_images, height, width = _binned_shape(images, bin)
    grid = window_grid(height, width, size, stride, edges)
    stack_dim, y_dim, x_dim = images.dims
    data = _as_dask(images)

    out_dtype = np.dtype(np.float32) if (normalize or bin > 1) else np.dtype(images.dtype)
    if bin > 1:
        data = da.coarsen(np.mean, data[:, : height * bin, : width * bin], {1: bin, 2: bin}).astype(np.float32)
    if normalize:
        work = data.astype(np.float64)
        mean = work.mean(axis=(1, 2), keepdims=True)
        std = work.std(axis=(1, 2), keepdims=True)
        data = ((work - mean) / da.where(std > 0, std, 1.0)).astype(np.float32)
    if grid.pad_y or grid.pad_x:
        data = da.pad(data, ((0, 0), (0, grid.pad_y), (0, grid.pad_x)), mode="reflect")

    n_samples = n_images * grid.per_image
    names = _source_names(images, stack_dim)
    patches = _patches_array(data, grid, out_dtype, names, n_samples, block_samples)
    token = tokenize(patches.name, block_samples)

    chunks = patches.chunks[:1]
    to_source = _coord(images, "source_index", np.arange(images.shape[0]))

    def per_sample(kind: str, table: np.ndarray | None = None) -> da.Array:
        # One named task per block computing the values from the block's sample range, so the dashboard shows
        # ``patches-corner-y`` and not a chain of arange, floordiv, mod, astype tasks.
        return cast(
            da.Array,
            da.map_blocks(
                _sample_values,
                chunks=chunks,
                dtype=np.int32,
                meta=np.empty((0,), np.int32),
                name=f"patches-{kind}-{token}",
                kind=kind,
                per_image=grid.per_image,
                nx=grid.nx,
                step=grid.stride * bin,
                table=table,
            ),
        )

    variables: dict[str, Any] = {
        "patches": (PATCH_DIMS, patches, {"long_name": "image patch", "coordinates": ""}),
        "source_index": (
            (SAMPLE,),
            per_sample("source", to_source),
            {"long_name": "index of the source file in attrs zarrforge.sources"},
        ),
        "y0": (
            (SAMPLE,),
            per_sample("corner-y"),
            {"long_name": "top row of the patch in the source image", "units": "pixel"},
        ),
        "x0": (
            (SAMPLE,),
            per_sample("corner-x"),
            {"long_name": "left column of the patch in the source image", "units": "pixel"},
        ),
    }
    frames = _coord(images, "frame", np.zeros(images.shape[0], dtype=np.int64))
    if frames.any():
        variables["frame"] = (
            (SAMPLE,),
            per_sample("frame", frames),
            {"long_name": "index of the image within its source file"},
        )
    coords = [name for name in variables if name != "patches"]
    variables["patches"][2]["coordinates"] = " ".join(coords)
    ds = xr.Dataset({name: xr.Variable(dims, arr, attrs) for name, (dims, arr, attrs) in variables.items()})
    ds.attrs = {
        "sources": images.attrs.get("sources", []),
        "parameters": {"size": size, "stride": grid.stride, "edges": edges, "normalize": normalize, "bin": bin},
        "source_dims": [str(stack_dim), str(y_dim), str(x_dim)],
    }
    return ds


def _binned_shape(images: xr.DataArray, bin: int) -> tuple[int, int, int]:
    if bin < 1:
        raise ParameterError(f"bin must be >= 1, got {bin}")
    n, height, width = images.shape
    if height // bin < 1 or width // bin < 1:
        raise ParameterError(f"bin {bin} is larger than the image ({height} × {width} pixels)")
    return n, height // bin, width // bin


def _as_dask(images: xr.DataArray) -> da.Array:
    data = images.data
    if isinstance(data, da.Array):
        return data
    return cast(da.Array, da.from_array(np.asarray(data), chunks=(1, -1, -1)))


def _coord(images: xr.DataArray, name: str, default: np.ndarray) -> np.ndarray:
    if name in images.coords and images.coords[name].dims == (images.dims[0],):
        return np.asarray(images.coords[name].values, dtype=np.int64)
    return default


def _source_names(images: xr.DataArray, stack_dim: Any) -> list[str]:
    if "source" in images.coords and images.coords["source"].dims == (stack_dim,):
        return [str(s) for s in images.coords["source"].values]
    return [f"{stack_dim} {i}" for i in range(images.shape[0])]


@dataclass(frozen=True)
class _BlockPlan:
    """What one ``patches-extract`` task cuts: for each image it touches, where its rows start and which windows.

    ``pieces[i] = (image, index of the image in its input chunk, first needed row within the first input chunk,
    w0, w1)``; the task receives the input chunks holding those rows.
    """

    pieces: tuple[tuple[int, int, int, int, int], ...]
    grid: WindowGrid
    dtype: np.dtype[Any]
    names: tuple[str, ...]


def _patches_array(
    data: da.Array, grid: WindowGrid, dtype: np.dtype[Any], names: list[str], n_samples: int, block_samples: int
) -> da.Array:
    """One task per output block, fed only the input chunks (row bands of images) its windows need.

    The graph is written out directly (dask's documented custom-graph form) rather than by slicing ``data``
    and calling ``dask.delayed``: that would re-cull the whole input graph once per block, quadratic in the
    number of blocks, and fuse the read tasks under other names.
    """
    if data.numblocks[2] > 1:
        data = data.rechunk({2: -1})
    image_bounds = np.cumsum((0, *data.chunks[0]))
    row_bounds = np.cumsum((0, *data.chunks[1]))
    name = f"patches-extract-{tokenize(data, grid, dtype, block_samples, names)}"
    layer: dict[Any, Any] = {}
    sizes = []
    for k, start in enumerate(range(0, n_samples, block_samples)):
        stop = min(start + block_samples, n_samples)
        refs, pieces = [], []
        for image in range(start // grid.per_image, (stop - 1) // grid.per_image + 1):
            w0 = max(start - image * grid.per_image, 0)
            w1 = min(stop - image * grid.per_image, grid.per_image)
            r0, r1 = grid.rows(w0, w1)
            ci = int(np.searchsorted(image_bounds, image, side="right")) - 1
            j0 = int(np.searchsorted(row_bounds, r0, side="right")) - 1
            j1 = int(np.searchsorted(row_bounds, r1, side="left"))
            refs.append([(data.name, ci, j, 0) for j in range(j0, j1)])
            pieces.append((image, image - int(image_bounds[ci]), r0 - int(row_bounds[j0]), w0, w1))
        layer[(name, k, 0, 0)] = (_cut_block, refs, _BlockPlan(tuple(pieces), grid, dtype, tuple(names)))
        sizes.append(stop - start)
    if not sizes:
        return cast(da.Array, da.zeros((0, grid.size, grid.size), dtype, chunks=block_samples))
    graph = HighLevelGraph.from_collections(name, layer, dependencies=[cast(Any, data)])
    return da.Array(graph, name, chunks=(tuple(sizes), (grid.size,), (grid.size,)), dtype=dtype)


def _sample_values(
    *,
    kind: str,
    per_image: int,
    nx: int,
    step: int,
    table: np.ndarray | None,
    block_info: dict[Any, Any] | None = None,
) -> np.ndarray:
    """Per-sample metadata of one block: ``source``/``frame`` (looked up in ``table`` by image) or a corner."""
    assert block_info is not None
    start, stop = block_info[None]["array-location"][0]
    image, window = np.divmod(np.arange(start, stop, dtype=np.int64), per_image)
    if kind == "corner-y":
        values = (window // nx) * step
    elif kind == "corner-x":
        values = (window % nx) * step
    else:
        assert table is not None
        values = table[image]
    return np.asarray(values, dtype=np.int32)


def _cut_block(chunks: Sequence[Sequence[np.ndarray]], plan: _BlockPlan) -> np.ndarray:
    """Cut each image's windows ``[w0, w1)`` out of its row chunks into one contiguous block."""
    grid = plan.grid
    n = sum(w1 - w0 for *_, w0, w1 in plan.pieces)
    out = np.empty((n, grid.size, grid.size), dtype=plan.dtype)
    k = 0
    for bands, (image, local, offset, w0, w1) in zip(chunks, plan.pieces, strict=True):
        r0, r1 = grid.rows(w0, w1)
        rows = bands[0][local] if len(bands) == 1 else np.concatenate([band[local] for band in bands], axis=0)
        piece = rows[offset : offset + r1 - r0]
        if piece.dtype.kind == "f" and not np.isfinite(piece).all():
            raise SourceError(
                f"{plan.names[image]}: NaN or infinite pixels in rows {r0}-{r1}; clean the image or exclude it"
            )
        views = sliding_window_view(piece, (grid.size, grid.size))[:: grid.stride, :: grid.stride]
        first_row = w0 // grid.nx
        for w_row in range(first_row, (w1 - 1) // grid.nx + 1):
            ix0 = max(w0 - w_row * grid.nx, 0)
            ix1 = min(w1 - w_row * grid.nx, grid.nx)
            out[k : k + ix1 - ix0] = views[w_row - first_row, ix0:ix1]
            k += ix1 - ix0
    return out
