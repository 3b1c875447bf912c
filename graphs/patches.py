"""Sliding-window patches of image stacks: lazy images in, a lazy patch dataset out.

The number of patches is known from the shapes alone, so every output block knows its samples before anything
is read, and each block is cut by one task (``patches-extract``) from only the image rows it needs.
"""

from __future__ import annotations

import functools
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

__all__ = ["WindowSelection", "extract_patches", "normalize_images", "patch_count", "prepare_images"]


@dataclass(frozen=True)
class WindowSelection:
    """Which windows of which images make the samples, in sample order.

    Sample order is ``windows[0]`` of image ``images[0]``, then ``windows[1]`` of ``images[1]``, ...; each
    ``windows[i]`` holds increasing window indices (row-major in the image's :class:`WindowGrid`).
    """

    images: tuple[int, ...]
    windows: tuple[np.ndarray, ...]

    def __post_init__(self) -> None:
        if len(self.images) != len(self.windows):
            raise ParameterError(f"{len(self.images)} images but {len(self.windows)} window lists")

    @functools.cached_property
    def offsets(self) -> np.ndarray:
        """The first sample of each entry of ``images``, and the number of samples at the end."""
        return np.cumsum([0, *(len(w) for w in self.windows)])

    @property
    def n_samples(self) -> int:
        """Number of samples."""
        return int(self.offsets[-1])

    def per_sample(self) -> tuple[np.ndarray, np.ndarray]:
        """``(image, window)`` of every sample."""
        counts = [len(w) for w in self.windows]
        image = np.repeat(np.asarray(self.images, dtype=np.int64), counts)
        window = np.concatenate([np.asarray(w, dtype=np.int64) for w in self.windows]) if counts else image
        return image, window


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
    selection: WindowSelection | None = None,
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
    selection : WindowSelection, optional
        Cut only these windows, in this order (the picking pipeline's kept windows); default: every window of
        every image, images in stack order.

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
    if block_samples < 1:
        raise ParameterError(f"block_samples must be >= 1, got {block_samples}")
    data, grid = prepare_images(images, size=size, stride=stride, edges=edges, normalize=normalize, bin=bin)
    stack_dim, y_dim, x_dim = images.dims
    out_dtype = np.dtype(data.dtype)

    n_samples = images.shape[0] * grid.per_image if selection is None else selection.n_samples
    names = _source_names(images, stack_dim)
    patches = _patches_array(data, grid, out_dtype, names, n_samples, block_samples, selection)
    token = tokenize(patches.name, block_samples)

    chunks = patches.chunks[:1]
    to_source = _coord(images, "source_index", np.arange(images.shape[0]))

    if selection is not None:
        sample_image, sample_window = selection.per_sample()

    def per_sample(kind: str, table: np.ndarray | None = None) -> da.Array:
        if selection is not None:
            # The values of a selection are known here; each block of them is a literal of the graph.
            return literal_array(
                _values_of(kind, sample_image, sample_window, grid.nx, grid.stride * bin, table),
                block_samples,
                f"patches-{kind}-{token}",
            )
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


def prepare_images(
    images: xr.DataArray,
    *,
    size: int,
    stride: int | None = None,
    edges: Edges = "drop",
    normalize: bool = False,
    bin: int = 1,
) -> tuple[da.Array, WindowGrid]:
    """The image stack windows are cut from, lazily: binned, normalized and edge-padded, and its window grid.

    Parameters are those of :func:`extract_patches`. The result is float32 when binning or normalizing, else the
    source dtype.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> images = xr.DataArray(np.ones((2, 300, 260), "uint16"), dims=("micrograph", "y", "x"))
    >>> data, grid = prepare_images(images, size=128, stride=64, edges="pad", bin=2)
    >>> data.shape, data.dtype, (grid.ny, grid.nx)
    ((2, 192, 192), dtype('float32'), (2, 2))
    """
    if images.ndim != 3:
        raise ParameterError(f"images must be a 3-D (image, y, x) stack, got dims {images.dims}")
    _, height, width = _binned_shape(images, bin)
    grid = window_grid(height, width, size, stride, edges)
    data = _as_dask(images)
    if bin > 1:
        data = da.coarsen(np.mean, data[:, : height * bin, : width * bin], {1: bin, 2: bin}).astype(np.float32)
    if normalize:
        # One task per image (``patches-normalize``): a chain of whole-image float64 temporaries made this step
        # cost as much as everything else of a virtual picking run, mostly in page faults of fresh memory.
        if data.numblocks[1] > 1 or data.numblocks[2] > 1:
            data = data.rechunk({1: -1, 2: -1})
        data = cast(
            da.Array,
            da.map_blocks(
                normalize_images,
                data,
                dtype=np.float32,
                meta=np.empty((0, 0, 0), np.float32),
                name=f"patches-normalize-{tokenize(data)}",
            ),
        )
    if grid.pad_y or grid.pad_x:
        data = da.pad(data, ((0, 0), (0, grid.pad_y), (0, grid.pad_x)), mode="reflect")
    return data, grid


def normalize_images(stack: np.ndarray, rows: int = 512) -> np.ndarray:
    """Each image of ``stack`` minus its mean, divided by its standard deviation (1 if it is 0), as float32.

    The statistics accumulate in float64. The result is computed in float32 as ``((x - hi) - lo) / std``, where
    ``hi`` is the mean rounded to float32 and ``lo`` the rest: ``x - hi`` loses nothing that float32 can hold,
    so the result is within a unit in the last place of ``((x.astype(float64) - mean) / std).astype(float32)``
    at a quarter of the cost (no float64 copy of the image).

    Examples
    --------
    >>> normalize_images(np.array([[[1.0, 3.0], [1.0, 3.0]]])).tolist()
    [[[-1.0, 1.0], [-1.0, 1.0]]]
    """
    out = np.empty(stack.shape, dtype=np.float32)
    if stack.size == 0:
        return out
    buffer = np.empty((min(rows, stack.shape[1]), stack.shape[2]), dtype=np.float32)
    for image, result in zip(stack, out, strict=True):
        hi = np.float32(image.mean(dtype=np.float64))
        sums = squares = 0.0
        for r in range(0, image.shape[0], rows):
            d = buffer[: min(rows, image.shape[0] - r)]
            np.subtract(image[r : r + rows], hi, out=d, dtype=np.float32)
            flat = d.reshape(-1)
            sums += float(flat.sum(dtype=np.float64))
            squares += float(np.einsum("i,i->", flat, flat, dtype=np.float64))
        shift = sums / image.size  # mean - hi: small, so the variance below does not cancel
        std = float(np.sqrt(max(squares / image.size - shift * shift, 0.0)))
        np.subtract(image, hi, out=result, dtype=np.float32)
        result -= np.float32(shift)
        result /= np.float32(std if std > 0 else 1.0)
    return out


def literal_array(values: np.ndarray, block: int, name: str) -> da.Array:
    """A dask array over values known at graph-building time, one literal key per ``block`` items.

    Unlike ``da.from_array`` it adds no task (no ``original-…`` key, no getitem per block): the blocks are
    values of the graph, sent once to the worker that needs them.

    Examples
    --------
    >>> literal_array(np.arange(5), 2, "demo-values").chunks
    ((2, 2, 1),)
    """
    values = np.asarray(values)
    starts = range(0, len(values), block)
    zeros = (0,) * (values.ndim - 1)
    layer: dict[Any, Any] = {(name, k, *zeros): values[s : s + block] for k, s in enumerate(starts)}
    chunks = (tuple(min(block, len(values) - s) for s in starts) or (0,), *((n,) for n in values.shape[1:]))
    if not layer:
        return cast(da.Array, da.zeros(values.shape, values.dtype, chunks=max(block, 1)))
    graph = HighLevelGraph.from_collections(name, layer, dependencies=[])
    return da.Array(graph, name, chunks=chunks, dtype=values.dtype)


def _values_of(
    kind: str, image: np.ndarray, window: np.ndarray, nx: int, step: int, table: np.ndarray | None
) -> np.ndarray:
    if kind == "corner-y":
        values = (window // nx) * step
    elif kind == "corner-x":
        values = (window % nx) * step
    else:
        assert table is not None
        values = table[image]
    return np.asarray(values, dtype=np.int32)


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
    w0, w1)``; the task receives the input chunks holding those rows. With a selection, ``selected[i]`` holds the
    window indices and ``[w0, w1)`` is the range of windows they span.
    """

    pieces: tuple[tuple[int, int, int, int, int], ...]
    selected: tuple[np.ndarray, ...] | None
    grid: WindowGrid
    dtype: np.dtype[Any]
    names: tuple[str, ...]


def _patches_array(
    data: da.Array,
    grid: WindowGrid,
    dtype: np.dtype[Any],
    names: list[str],
    n_samples: int,
    block_samples: int,
    selection: WindowSelection | None = None,
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
    name = f"patches-extract-{tokenize(data, grid, dtype, block_samples, names, selection)}"
    layer: dict[Any, Any] = {}
    sizes = []
    for k, start in enumerate(range(0, n_samples, block_samples)):
        stop = min(start + block_samples, n_samples)
        refs, pieces, selected = [], [], []
        for image, w0, w1, windows in _block_pieces(start, stop, grid.per_image, selection):
            if windows is not None:
                selected.append(windows)
            r0, r1 = grid.rows(w0, w1)
            ci = int(np.searchsorted(image_bounds, image, side="right")) - 1
            j0 = int(np.searchsorted(row_bounds, r0, side="right")) - 1
            j1 = int(np.searchsorted(row_bounds, r1, side="left"))
            refs.append([(data.name, ci, j, 0) for j in range(j0, j1)])
            pieces.append((image, image - int(image_bounds[ci]), r0 - int(row_bounds[j0]), w0, w1))
        plan = _BlockPlan(tuple(pieces), tuple(selected) if selection else None, grid, dtype, tuple(names))
        layer[(name, k, 0, 0)] = (_cut_block, refs, plan)
        sizes.append(stop - start)
    if not sizes:
        return cast(da.Array, da.zeros((0, grid.size, grid.size), dtype, chunks=block_samples))
    graph = HighLevelGraph.from_collections(name, layer, dependencies=[cast(Any, data)])
    return da.Array(graph, name, chunks=(tuple(sizes), (grid.size,), (grid.size,)), dtype=dtype)


def _block_pieces(
    start: int, stop: int, per_image: int, selection: WindowSelection | None
) -> list[tuple[int, int, int, np.ndarray | None]]:
    """``(image, w0, w1, selected windows or None)`` for each image that samples ``[start, stop)`` touch."""
    if selection is None:
        return [
            (image, max(start - image * per_image, 0), min(stop - image * per_image, per_image), None)
            for image in range(start // per_image, (stop - 1) // per_image + 1)
        ]
    pieces: list[tuple[int, int, int, np.ndarray | None]] = []
    offsets = selection.offsets
    # Start at the entry holding sample ``start``: one pass per block over all images would be quadratic.
    for k in range(int(np.searchsorted(offsets, start, side="right")) - 1, len(selection.images)):
        offset = int(offsets[k])
        if offset >= stop:
            break
        windows = selection.windows[k]
        a, b = max(start - offset, 0), min(stop - offset, len(windows))
        if a < b:
            chosen = np.asarray(windows[a:b], dtype=np.int64)
            pieces.append((selection.images[k], int(chosen[0]), int(chosen[-1]) + 1, chosen))
    return pieces


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
    if plan.selected is not None:
        n = sum(len(windows) for windows in plan.selected)
    else:
        n = sum(w1 - w0 for *_, w0, w1 in plan.pieces)
    out = np.empty((n, grid.size, grid.size), dtype=plan.dtype)
    k = 0
    for i, (bands, (image, local, offset, w0, w1)) in enumerate(zip(chunks, plan.pieces, strict=True)):
        r0, r1 = grid.rows(w0, w1)
        rows = bands[0][local] if len(bands) == 1 else np.concatenate([band[local] for band in bands], axis=0)
        piece = rows[offset : offset + r1 - r0]
        if piece.dtype.kind == "f" and not np.isfinite(piece).all():
            raise SourceError(
                f"{plan.names[image]}: NaN or infinite pixels in rows {r0}-{r1}; clean the image or exclude it"
            )
        views = sliding_window_view(piece, (grid.size, grid.size))[:: grid.stride, :: grid.stride]
        first_row = w0 // grid.nx
        if plan.selected is not None:
            windows = plan.selected[i]
            out[k : k + len(windows)] = views[windows // grid.nx - first_row, windows % grid.nx]
            k += len(windows)
            continue
        for w_row in range(first_row, (w1 - 1) // grid.nx + 1):
            ix0 = max(w0 - w_row * grid.nx, 0)
            ix1 = min(w1 - w_row * grid.nx, grid.nx)
            out[k : k + ix1 - ix0] = views[w_row - first_row, ix0:ix1]
            k += ix1 - ix0
    return out
