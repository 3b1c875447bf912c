"""Picklable, lazily read views of one source file, and their wrapping into dask arrays.

A reader holds only plain values (path, shape, dtype, where its frames start): no open file handle, so it pickles
into dask worker processes. Each ``__getitem__`` opens the file, reads only the selected region, copies it into a
fresh numpy array and closes the file.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, cast

import dask.array as da
import h5py
import hdf5plugin  # noqa: F401  (registers the HDF5 compression filters before h5py reads)
import mrcfile
import numpy as np
import tifffile
from dask.base import tokenize

__all__ = ["Hdf5Frames", "LazyFrames", "MrcFrames", "NpyFrames", "TiffFrames", "to_dask"]


class LazyFrames:
    """Frames ``[start, start + n)`` of one file, as an array-like of shape ``(1,) * lead + file shape``.

    Parameters
    ----------
    path : str
        The file to read (absolute or as given).
    shape : tuple of int
        The shape this object exposes.
    dtype : numpy dtype
        The (native byte order) dtype of what ``__getitem__`` returns.
    start : int
        Offset of the first frame along the file's first axis (for runs of frames).
    lead : int
        How many length-1 axes ``shape`` adds in front of the file's own axes (a 2-D image seen as a stack of one).
    """

    #: Short format name, used in task names (``read-mrc-…``).
    fmt: ClassVar[str] = "file"

    def __init__(
        self,
        path: str,
        shape: tuple[int, ...],
        dtype: np.dtype[Any] | str,
        *,
        start: int = 0,
        lead: int = 0,
    ) -> None:
        self.path = str(path)
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype).newbyteorder("=")
        self.start = int(start)
        self.lead = int(lead)

    @property
    def ndim(self) -> int:
        """Number of dimensions."""
        return len(self.shape)

    @property
    def size(self) -> int:
        """Number of elements."""
        return math.prod(self.shape)

    def token_parts(self) -> tuple[Any, ...]:
        """What, besides the file's size and mtime, makes the data this object reads distinct."""
        return (type(self).__name__, self.path, self.shape, str(self.dtype), self.start, self.lead)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path!r}, shape={self.shape}, dtype={self.dtype}, start={self.start})"

    def __getitem__(self, key: Any) -> np.ndarray:
        slices, drop = _normalise_key(key, self.shape)
        lead_key, file_key = slices[: self.lead], slices[self.lead :]
        if self.start and file_key:
            first = file_key[0]
            file_key = (
                slice(first.start + self.start, first.stop + self.start, first.step),
                *file_key[1:],
            )
        # Readers return fresh arrays; asarray converts dtype/byte order only where needed (no second copy).
        out: np.ndarray = np.asarray(self._read(tuple(file_key)), dtype=self.dtype)
        index: tuple[Any, ...] = (*lead_key, Ellipsis)
        out = out[(np.newaxis,) * self.lead][index]
        if drop:
            out = out[tuple(0 if i in drop else slice(None) for i in range(out.ndim))]
        return out

    def _read(self, key: tuple[slice, ...]) -> np.ndarray:
        """Read ``key`` (concrete slices in the file's own coordinates) from the file."""
        raise NotImplementedError


def _normalise_key(key: Any, shape: tuple[int, ...]) -> tuple[tuple[slice, ...], set[int]]:
    """Turn an indexing key of ints and slices into one concrete slice per axis, and the axes ints drop."""
    if not isinstance(key, tuple):
        key = (key,)
    if any(k is Ellipsis for k in key):
        at = next(i for i, k in enumerate(key) if k is Ellipsis)
        key = key[:at] + (slice(None),) * (len(shape) - len(key) + 1) + key[at + 1 :]
    if len(key) > len(shape):
        raise IndexError(f"too many indices: {len(key)} for an array of {len(shape)} dimensions")
    key = key + (slice(None),) * (len(shape) - len(key))
    slices: list[slice] = []
    drop: set[int] = set()
    for axis, (k, n) in enumerate(zip(key, shape, strict=True)):
        if isinstance(k, slice):
            start, stop, step = k.indices(n)
            if step < 0:
                raise IndexError("negative steps are not supported by lazy source readers")
            slices.append(slice(start, max(start, stop), step))
        elif isinstance(k, int | np.integer):
            i = int(k) + n if k < 0 else int(k)
            if not 0 <= i < n:
                raise IndexError(f"index {k} is out of bounds for axis {axis} with size {n}")
            slices.append(slice(i, i + 1, 1))
            drop.add(axis)
        else:
            raise TypeError(f"lazy source readers take ints and slices, not {type(k).__name__}")
    return tuple(slices), drop


class MrcFrames(LazyFrames):
    """Sections of an MRC file, read through :func:`mrcfile.mmap`.

    ``file_shape`` is the shape the data is seen with (e.g. a volume stack flattened to sections).
    """

    fmt = "mrc"

    def __init__(
        self,
        path: str,
        shape: tuple[int, ...],
        dtype: Any,
        *,
        file_shape: tuple[int, ...],
        start: int = 0,
        lead: int = 0,
    ) -> None:
        super().__init__(path, shape, dtype, start=start, lead=lead)
        self.file_shape = tuple(int(s) for s in file_shape)

    def token_parts(self) -> tuple[Any, ...]:
        return (*super().token_parts(), self.file_shape)

    def _read(self, key: tuple[slice, ...]) -> np.ndarray:
        with mrcfile.mmap(self.path, mode="r", permissive=True) as mrc:
            data = mrc.data.reshape(self.file_shape)
            offset = mrc.header.nbytes + mrc.extended_header.nbytes
            span = _contiguous_span(key, data.shape)
            if span is None:
                return np.array(data[key])
            file_dtype = data.dtype
        # A contiguous byte range (whole rows of one section, or whole sections) is read with one readinto: ~5×
        # faster than copying out of the memory map, which faults in every page.
        first, count, shape = span
        out = np.empty(shape, dtype=file_dtype)
        with open(self.path, "rb") as f:
            f.seek(offset + first * file_dtype.itemsize)
            if f.readinto(out.reshape(-1).view(np.uint8).data) != count * file_dtype.itemsize:
                raise OSError(f"{self.path}: file ended early (truncated while reading?)")
        return out


def _contiguous_span(key: tuple[slice, ...], shape: tuple[int, ...]) -> tuple[int, int, tuple[int, ...]] | None:
    """``(first element, element count, result shape)`` if ``key`` selects one C-contiguous run, else ``None``."""
    if any(k.step != 1 for k in key):
        return None
    sizes = [k.stop - k.start for k in key]
    # Contiguous in C order: single elements up to some axis, any range on it, whole axes after it.
    axis = next((i for i, n in enumerate(sizes) if n != 1), len(sizes))
    if any(sizes[i] != shape[i] for i in range(axis + 1, len(shape))):
        return None
    strides = [math.prod(shape[i + 1 :]) for i in range(len(shape))]
    first = sum(k.start * st for k, st in zip(key, strides, strict=True))
    return first, math.prod(sizes), tuple(sizes)


class TiffFrames(LazyFrames):
    """Pages of a TIF file (series 0), read page by page with :mod:`tifffile`; the file shape is (pages, y, x)."""

    fmt = "tiff"

    def _read(self, key: tuple[slice, ...]) -> np.ndarray:
        pages = list(range(key[0].start, key[0].stop, key[0].step))
        if not pages:
            return np.empty((0, *self.shape[1:]), self.dtype)[(slice(None), *key[1:])]
        with tifffile.TiffFile(self.path) as tif:
            series = tif.series[0]
            data = series.asarray() if len(series.shape) == 2 else tif.asarray(key=pages)
        data = np.asarray(data).reshape(len(pages), *self.shape[1:])
        return data[(slice(None), *key[1:])]


class NpyFrames(LazyFrames):
    """A ``.npy`` file, read through ``np.load(mmap_mode="r")``."""

    fmt = "npy"

    def _read(self, key: tuple[slice, ...]) -> np.ndarray:
        mm = np.load(self.path, mmap_mode="r", allow_pickle=False)
        try:
            return np.array(mm[key])
        finally:
            del mm


class Hdf5Frames(LazyFrames):
    """Frames of an HDF5 dataset, read by h5py slicing (``dataset`` is its path inside ``path``)."""

    fmt = "hdf5"

    def __init__(
        self, path: str, shape: tuple[int, ...], dtype: Any, *, dataset: str, start: int = 0, lead: int = 0
    ) -> None:
        super().__init__(path, shape, dtype, start=start, lead=lead)
        self.dataset = str(dataset)

    def token_parts(self) -> tuple[Any, ...]:
        return (*super().token_parts(), self.dataset)

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]}, dataset={self.dataset!r})"

    def _read(self, key: tuple[slice, ...]) -> np.ndarray:
        with h5py.File(self.path, "r") as f:
            dset = f[self.dataset]
            if any(s.start == s.stop for s in key):
                return np.empty([len(range(s.start, s.stop, s.step)) for s in key], self.dtype)
            return np.asarray(dset[key])


def to_dask(reader: LazyFrames, chunks: tuple[Any, ...], *, size: int, mtime: float) -> da.Array:
    """Wrap one reader in a dask array whose tasks are named ``read-{fmt}-{token}``.

    Parameters
    ----------
    reader : LazyFrames
        The file view.
    chunks : tuple
        Chunks for ``reader.shape``, in :func:`dask.array.from_array` terms.
    size, mtime : int, float
        The file's size and modification time, folded into the deterministic task name.

    Returns
    -------
    dask.array.Array
        Lazy; nothing is read until it is computed.
    """
    name = f"read-{reader.fmt}-{tokenize(size, mtime, chunks, *reader.token_parts())}"
    return cast(
        da.Array,
        da.from_array(
            reader,
            chunks=chunks,
            lock=False,
            asarray=False,
            meta=np.empty((0,) * reader.ndim, dtype=reader.dtype),
            name=name,
            inline_array=True,  # the reader travels in each task: no separate "original-read-..." task
        ),
    )
