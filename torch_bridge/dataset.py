"""A map-style PyTorch Dataset over the arrays of a zarrforge training store."""

from __future__ import annotations

import functools
import itertools
import logging
import operator
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from storage.chunks import ChunkReader
from storage.errors import StoreError

from ._layout import ArrayInfo, list_arrays, split_range, virtual_arrays
from ._torch import torch
from .cache import ChunkCache

__all__ = ["SampleBatch", "ZarrDataset"]

log = logging.getLogger(__name__)

MiB = 2**20
#: Default capacity of a ZarrDataset's chunk cache (per process), see ``cache_bytes``.
DEFAULT_CACHE_BYTES = 16 * MiB

# Guards opening a dataset's per-process state; a new one in a forked child, whatever the parent held.
_open_lock = threading.Lock()


def _new_open_lock() -> None:
    global _open_lock
    _open_lock = threading.Lock()


os.register_at_fork(after_in_child=_new_open_lock)

# Samples of a batch grouped by chunk: (chunk, indices within it, where they go in the batch) per chunk.
_Groups = list[tuple[int, np.ndarray, slice | np.ndarray]]


class SampleBatch(list):  # type: ignore[type-arg]
    """The samples of one batch, as :meth:`ZarrDataset.__getitems__` returns them, with the batch already stacked.

    A list of per-sample dicts, as a DataLoader's ``default_collate`` expects, whose tensors are views of the
    rows of the batch's tensors; ``stacked`` is what ``default_collate`` would make of the list, built without
    a further copy. :func:`torch_bridge.collate` returns it as it is.

    Parameters
    ----------
    samples : iterable of dict
        The per-sample dicts, in the requested order.
    stacked : dict
        The collated batch: one tensor per array, and ``"meta"`` as ``default_collate`` makes it.

    Attributes
    ----------
    stacked : dict
        As given.
    """

    def __init__(self, samples: Iterable[dict[str, Any]] = (), stacked: dict[str, Any] | None = None) -> None:
        super().__init__(samples)
        self.stacked: dict[str, Any] = {} if stacked is None else stacked


class ZarrDataset(torch.utils.data.Dataset[dict[str, Any]]):
    """Samples of a training store as dicts of tensors, read chunk by chunk through a per-process cache.

    Sample ``i`` is ``{name: tensor of array name at i}`` for each of ``arrays``, plus ``"meta"``, a dict of the
    ``metadata`` arrays at ``i`` (Python numbers for 1-D arrays, tensors otherwise) when ``return_metadata``.
    The whole chunk holding a sample is decoded once into a :class:`ChunkCache`, so reading samples chunk by chunk
    (see :class:`~torch_bridge.ChunkShuffleSampler`) decodes each chunk once per epoch.

    A DataLoader with a ``batch_size`` reads whole batches through :meth:`__getitems__`: one gather per chunk
    and array into the batch, so ``default_collate`` and, without a copy, :func:`torch_bridge.collate` (the
    default of :func:`~torch_bridge.make_loader`) get the same batches as from sample-by-sample reads.

    The dataset is safe in DataLoader workers: it pickles as its path and options; chunk readers, the cache and
    in-memory copies are opened lazily in each process, and again after a fork.

    Parameters
    ----------
    store : path
        A training store (a Zarr v3 group whose arrays share the leading ``sample`` axis).
    arrays : sequence of str, optional
        The arrays returned as tensors; default: every array with 2 or more dims, by name. The first is the
        *primary* array whose chunk grid the samplers use.
    transform : callable, optional
        Applied to each sample dict; its result is returned. Must pickle for ``spawn`` workers.
    return_metadata : bool
        Add ``"meta"`` to each sample.
    metadata : sequence of str, optional
        The arrays in ``"meta"``; default: every 1-D array not in ``arrays``.
    load_in_memory : bool
        Read every array fully once per process and serve samples from RAM.
    cache_bytes : int, optional
        Capacity of the per-process chunk cache. Default: 16 MiB, or 4 chunks of every array read if that is
        more: enough for chunk-by-chunk order (the chunk being read and the next one), and small, because
        filling a large cache with fresh memory costs page faults (a 256 MiB cache made a first epoch
        1.3-2× slower in ``benchmarks/bench_loader.py``). :func:`~torch_bridge.make_loader` and
        :class:`~torch_bridge.ThreadedLoader` grow it for a ``window`` (see :meth:`reserve_cache`); give more
        to keep a small store decoded across epochs, or use ``load_in_memory``.

    Raises
    ------
    StoreError
        ``store`` is not a Zarr group, is unfinished, names an array it does not hold, or its arrays disagree on
        the number of samples.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> from storage.layout import SampleGrid
    >>> from storage.store import ArraySpec, TrainingStore
    >>> path = tempfile.mkdtemp() + "/train.zarr"
    >>> specs = [ArraySpec("x", ("sample", "v"), (5, 3), np.dtype("float32")),
    ...          ArraySpec("label", ("sample",), (5,), np.dtype("int32"))]
    >>> with TrainingStore.open_for_writing(path, specs, grid=SampleGrid(2, 4), record={"pipeline": "doc"}) as s:
    ...     for b in s.blocks():
    ...         _ = s.write_block(b, {"x": np.full((b.size, 3), b.index, "float32"),
    ...                               "label": np.arange(b.start, b.stop, dtype="int32")})
    ...     s.finalize()
    >>> ds = ZarrDataset(path, return_metadata=True)
    >>> len(ds), ds.arrays, ds.metadata, ds.n_chunks, ds.chunk_bounds(2)
    (5, ('x',), ('label',), 3, (4, 5))
    >>> ds[-1]
    {'x': tensor([1., 1., 1.]), 'meta': {'label': 4}}
    """

    def __init__(
        self,
        store: str | os.PathLike[str],
        arrays: Sequence[str] | None = None,
        *,
        transform: Callable[[dict[str, Any]], Any] | None = None,
        return_metadata: bool = False,
        metadata: Sequence[str] | None = None,
        load_in_memory: bool = False,
        cache_bytes: int | None = None,
        split: str | None = None,
    ) -> None:
        self.path = Path(store)
        if isinstance(arrays, str) or isinstance(metadata, str):
            raise TypeError("arrays and metadata take a sequence of array names, e.g. ['patches'], not a string")
        if cache_bytes is not None and cache_bytes < 0:
            raise ValueError(f"cache_bytes must be >= 0, got {cache_bytes}")
        self.transform = transform
        self.return_metadata = bool(return_metadata)
        self.load_in_memory = bool(load_in_memory)

        available = list_arrays(self.path)
        self._virtual = virtual_arrays(self.path, available)
        sample_arrays = {name: info for name, info in available.items() if info.dims[:1] in (("sample",), ())}
        for name, virtual in self._virtual.items():
            index = available[virtual.index]
            image = available[virtual.images]
            sample_arrays[name] = ArrayInfo(
                (index.shape[0], virtual.size, virtual.size), image.dtype, index.chunk_samples, ("sample",)
            )
        hidden = [name for name in available if name not in sample_arrays]  # other leading axes
        available = sample_arrays
        if arrays is None:
            arrays = [name for name, info in available.items() if len(info.shape) >= 2]
            if not arrays:
                raise StoreError(
                    f"{self.path}: no array with 2 or more dims to return as samples; pass arrays= "
                    f"(available: {', '.join(available) or 'none'})"
                )
        if metadata is None:
            metadata = [name for name, info in available.items() if len(info.shape) == 1 and name not in arrays]
        for kind, names in (("arrays", arrays), ("metadata", metadata)):
            missing = [name for name in names if name not in available]
            if missing:
                why = f" ({missing[0]!r} is not indexed by sample)" if missing[0] in hidden else ""
                raise StoreError(
                    f"{self.path}: no array {missing[0]!r} (asked for in {kind}=){why}; "
                    f"available arrays: {', '.join(available) or 'none'}"
                )
            if len(set(names)) != len(names):
                raise ValueError(f"{kind}= names an array twice: {list(names)}")
        if not arrays:
            raise ValueError("arrays= must name at least one array")
        self.arrays: tuple[str, ...] = tuple(arrays)
        self.metadata: tuple[str, ...] = tuple(metadata)
        used = (*self.arrays, *self.metadata)
        self._info: dict[str, ArrayInfo] = {name: available[name] for name in used}
        # What the virtual arrays read: their index arrays (through the cache) and images (in row bands).
        self._sources: dict[str, ArrayInfo] = {}
        for name in used:
            if name in self._virtual:
                v = self._virtual[name]
                self._sources.update({n: available[n] for n in (v.index, v.y0, v.x0)})
                self._sources[v.images] = list_arrays(self.path)[v.images]
        sizes = {name: self._info[name].shape[0] for name in used}
        if len(set(sizes.values())) != 1:
            raise StoreError(f"{self.path}: arrays disagree on the number of samples: {sizes}")
        self._offset, stop = 0, int(sizes[self.arrays[0]])
        self.split = split
        if split is not None:
            self._offset, stop = split_range(self.path, split)
        self._n = stop - self._offset
        # What __getitem__ needs, computed once: (name, samples per chunk) of what it reads.
        self._read_plan: tuple[tuple[str, int], ...] = tuple(
            (name, self._info[name].chunk_samples) for name in self.arrays
        )
        self._meta_plan: tuple[tuple[str, int, bool], ...] = tuple(
            (name, self._info[name].chunk_samples, len(self._info[name].shape) == 1) for name in self.metadata
        )
        self._reset_process_state()
        self.cache_bytes = int(DEFAULT_CACHE_BYTES if cache_bytes is None else cache_bytes)
        self.reserve_cache(4 if cache_bytes is None else 0)

    # ------------------------------------------------------------ process state
    def _reset_process_state(self) -> None:
        self._pid: int | None = None
        self._readers: dict[str, ChunkReader] = {}
        self._cache: ChunkCache | None = None
        self._memory: dict[str, np.ndarray] | None = None
        self._prefetcher: ThreadPoolExecutor | None = None

    def _ensure_process(self) -> None:
        """Open readers and the cache in this process (again after a fork: handles are per process)."""
        pid = os.getpid()
        if self._pid == pid:
            return
        with _open_lock:  # threads (ThreadedLoader) may arrive here together
            if self._pid == pid:
                return
            memory = self._memory  # plain numpy arrays stay valid in a forked child (copy on write)
            self._reset_process_state()
            self._cache = ChunkCache(self.cache_bytes)
            stored = [name for name in (*self._info, *self._sources) if name not in self._virtual]
            self._readers = {name: ChunkReader(self.path / name) for name in stored}
            if self.load_in_memory:
                self._memory = memory if memory is not None else self._read_all()
            self._pid = pid  # last: another thread uses the state only once it is complete

    def _read_all(self) -> dict[str, np.ndarray]:
        out = {}
        for name, reader in self._readers.items():
            full = np.empty(reader.shape, dtype=reader.dtype)
            for k in range(reader.n_chunks):
                start, stop = reader.chunk_bounds(k)
                if not reader.rows_per_chunk:
                    full[start:stop] = reader.read_chunk(k)
                for row in range(reader.n_row_chunks if reader.rows_per_chunk else 0):
                    r0 = row * reader.rows_per_chunk
                    band = reader.read_chunk(k, row=row)
                    full[start:stop, r0 : r0 + band.shape[1]] = band
            full.flags.writeable = False
            out[name] = full
        log.debug("loaded %s into memory (%d bytes)", self.path, sum(a.nbytes for a in out.values()))
        return out

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for key in ("_pid", "_readers", "_cache", "_memory", "_prefetcher"):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset_process_state()

    @property
    def chunk_nbytes(self) -> int:
        """Decoded bytes of one chunk of each array read (``arrays``, and ``metadata`` when returned)."""
        names = (*self.arrays, *(self.metadata if self.return_metadata else ()))
        # A virtual array's chunk is cut from row bands of its images that also hold rows of neighbouring
        # windows: count three times the bytes of its patches.
        return sum(
            (3 if n in self._virtual else 1)
            * self._info[n].chunk_samples
            * int(np.prod(self._info[n].shape[1:]))
            * self._info[n].dtype.itemsize
            for n in names
        )

    def reserve_cache(self, chunks: int) -> None:
        """Grow the chunk cache, if needed, to hold ``chunks`` decoded chunks of every array read.

        ``ChunkShuffleSampler(window=N)`` needs ``2 * N`` (the window being read and the next one).
        """
        need = int(chunks) * self.chunk_nbytes
        if need > self.cache_bytes:
            self.cache_bytes = need
            if self._cache is not None:
                self._cache.capacity_bytes = need

    def read(self, name: str) -> np.ndarray:
        """The whole array ``name`` for this dataset's samples (of its ``split``), read chunk by chunk.

        Meant for small per-sample arrays, e.g. the ``label`` a balanced sampler needs.

        Examples
        --------
        >>> ZarrDataset(path, return_metadata=True).read("label")  # doctest: +SKIP
        array([0, 1, 0, ...], dtype=int8)
        """
        try:
            reader = ChunkReader(self.path / name)
        except StoreError:
            raise StoreError(f"{self.path}: no array {name!r} to read") from None
        if reader.shape[0] < self._offset + self._n:
            raise StoreError(f"{self.path}: array {name!r} has {reader.shape[0]} items, not one per sample")
        c = reader.chunk_samples
        first, last = self._offset // c, -(-(self._offset + self._n) // c)
        parts = [reader.read_chunk(k) for k in range(first, last)]
        values = np.concatenate(parts) if parts else np.empty((0, *reader.shape[1:]), reader.dtype)
        start = self._offset - first * c
        return values[start : start + self._n]

    @property
    def cache(self) -> ChunkCache:
        """The chunk cache of the calling process (see its ``stats``)."""
        self._ensure_process()
        assert self._cache is not None
        return self._cache

    # ------------------------------------------------------------ grid
    def __len__(self) -> int:
        return self._n

    @property
    def chunk_samples(self) -> int:
        """Samples per chunk of the primary array (the first of ``arrays``)."""
        return self._info[self.arrays[0]].chunk_samples

    @property
    def n_chunks(self) -> int:
        """Number of chunks of the primary array along the sample axis (those holding samples of ``split``)."""
        c = self.chunk_samples
        return -(-(self._offset + self._n) // c) - self._offset // c

    def chunk_bounds(self, k: int) -> tuple[int, int]:
        """Samples ``[start, stop)`` of chunk ``k`` of the primary array.

        With a ``split``, its first and last chunk may hold fewer samples.
        """
        if not 0 <= k < self.n_chunks:
            raise IndexError(f"chunk {k} out of range for {self.n_chunks} chunks of {self.path}")
        c, offset = self.chunk_samples, self._offset
        first = (offset // c + k) * c
        return max(first, offset) - offset, min(first + c, offset + self._n) - offset

    def __repr__(self) -> str:
        split = f", split={self.split!r}" if self.split is not None else ""
        return (
            f"ZarrDataset({str(self.path)!r}, arrays={list(self.arrays)}{split}, samples={self._n}, "
            f"chunk_samples={self.chunk_samples}, "
            f"metadata={list(self.metadata) if self.return_metadata else None})"
        )

    # ------------------------------------------------------------ reading
    def _row(self, name: str, chunk_samples: int, i: int) -> np.ndarray:
        if name in self._virtual:
            out = np.empty(self._info[name].shape[1:], dtype=self._info[name].dtype)
            return self._cut(name, np.array([i]), {}, out[None])[0]
        if self._memory is not None:
            return self._memory[name][i]
        k, j = divmod(i, chunk_samples)
        chunk = self._cache.get((name, k), functools.partial(self._decode, name, k))  # type: ignore[union-attr]
        return chunk[j]

    def _decode(self, name: str, k: int) -> np.ndarray:
        """Chunk ``k`` of array ``name``, decoded into the memory of an evicted chunk when one is free."""
        reader = self._readers[name]
        return reader.read_chunk(k, out=self._cache.spare(reader.chunk_shape, reader.dtype))  # type: ignore[union-attr]

    def __getitem__(self, index: int) -> Any:
        i = operator.index(index)
        n = self._n
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"sample {index} out of range for {n} samples of {self.path}")
        i += self._offset
        self._ensure_process()
        sample: dict[str, Any] = {
            name: torch.from_numpy(np.array(self._row(name, c, i))) for name, c in self._read_plan
        }
        if self.return_metadata:
            meta: dict[str, Any] = {}
            for name, c, scalar in self._meta_plan:
                row = self._row(name, c, i)
                meta[name] = row.item() if scalar else torch.from_numpy(np.array(row))
            sample["meta"] = meta
        if self.transform is not None:
            return self.transform(sample)
        return sample

    def __getitems__(self, indices: Sequence[int]) -> list[Any]:
        """Read the samples ``indices`` at once (a DataLoader calls this with a whole batch's indices).

        Samples are grouped by chunk, and each chunk's samples are gathered with one fancy index per array into
        the batch's arrays, in the order asked for.

        Parameters
        ----------
        indices : sequence of int
            Sample indices, negative ones counting from the end.

        Returns
        -------
        SampleBatch or list
            The samples, equal to ``[self[i] for i in indices]``: a :class:`SampleBatch` whose ``stacked`` is the
            collated batch; with a ``transform``, that plain list (transforms work on single samples).

        Raises
        ------
        IndexError
            An index is out of range.
        """
        if self.transform is not None:
            return [self[i] for i in indices]
        if hints := getattr(indices, "prefetch", None):  # from ChunkBatchSampler: a later batch's chunks
            self.prefetch(hints)
        n = self._n
        idx = np.fromiter((operator.index(i) for i in indices), dtype=np.int64, count=len(indices))
        idx[idx < 0] += n
        bad = np.flatnonzero((idx < 0) | (idx >= n))
        if len(bad):
            raise IndexError(f"sample {indices[int(bad[0])]} out of range for {n} samples of {self.path}")
        idx += self._offset
        self._ensure_process()
        groups: dict[int, _Groups] = {}
        stacked: dict[str, Any] = {}
        columns: list[Sequence[Any]] = []
        for name, c in self._read_plan:
            batch = _empty_batch((len(idx), *self._info[name].shape[1:]), self._info[name].dtype)
            self._gather(name, c, idx, groups, out=batch.numpy())
            stacked[name] = batch
            columns.append(batch.unbind(0))
        samples = [dict(zip(self.arrays, row, strict=True)) for row in zip(*columns, strict=True)]
        if self.return_metadata:
            meta: dict[str, Any] = {}
            meta_columns: list[Sequence[Any]] = []
            for name, c, scalar in self._meta_plan:
                gathered = self._gather(name, c, idx, groups)
                if scalar:  # Python numbers per sample, as row.item(); stacked as default_collate stacks them
                    values = gathered.tolist()
                    meta[name] = torch.utils.data.default_collate(values)
                    meta_columns.append(values)
                else:
                    batch = torch.from_numpy(gathered)
                    meta[name] = batch
                    meta_columns.append(batch.unbind(0))
            stacked["meta"] = meta
            for sample, row in zip(samples, zip(*meta_columns, strict=True), strict=True):
                sample["meta"] = dict(zip(self.metadata, row, strict=True))
        return SampleBatch(samples, stacked)

    def prefetch(self, chunks: Iterable[int]) -> None:
        """Start decoding chunks (of the primary array's grid) in a background thread of this process.

        Decoding releases the GIL, so it overlaps with gathering the current batch; :meth:`__getitems__` does this
        for the hints of :class:`~torch_bridge.ChunkBatchSampler`. Chunks already cached are skipped.
        """
        self._ensure_process()
        if self._memory is not None or self._cache is None:
            return
        if self._prefetcher is None:
            with _open_lock:
                if self._prefetcher is None:
                    self._prefetcher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="zarrforge-prefetch")
        primary = self.chunk_samples
        plan = self._read_plan + (tuple((m, c) for m, c, _ in self._meta_plan) if self.return_metadata else ())
        # A virtual array's bands are known only once its index is read: prefetch the index.
        plan = tuple(
            (v.index, self._sources[v.index].chunk_samples) if (v := self._virtual.get(name)) else (name, c)
            for name, c in plan
        )
        first = self._offset // primary
        for k in chunks:
            k = first + k
            for name, c in plan:
                if c == primary and 0 <= k < self._readers[name].n_chunks:
                    self._cache.prefetch((name, k), functools.partial(self._decode, name, k), self._prefetcher)

    def _gather(
        self, name: str, c: int, idx: np.ndarray, groups: dict[int, _Groups], out: np.ndarray | None = None
    ) -> np.ndarray:
        """Samples ``idx`` of array ``name`` (``c`` samples per chunk) gathered into ``out``, one gather per chunk.

        ``out`` defaults to a new array.
        """
        info = self._info.get(name) or self._sources[name]
        if out is None:
            out = np.empty((len(idx), *info.shape[1:]), dtype=info.dtype)
        if name in self._virtual:
            return self._cut(name, idx, groups, out)
        if self._memory is not None:
            np.take(self._memory[name], idx, axis=0, out=out, mode="clip")  # "clip": no buffering, checked above
            return out
        if c not in groups:
            groups[c] = _chunk_groups(idx, c)
        for k, local, where in groups[c]:
            chunk = self._cache.get((name, k), functools.partial(self._decode, name, k))  # type: ignore[union-attr]
            if isinstance(where, slice):  # the chunk's samples are consecutive in the batch: gather in place
                np.take(chunk, local, axis=0, out=out[where], mode="clip")
            else:
                out[where] = chunk[local]
        return out

    # ------------------------------------------------------------ virtual arrays
    def _cut(self, name: str, idx: np.ndarray, groups: dict[int, _Groups], out: np.ndarray) -> np.ndarray:
        """Cut the windows of samples ``idx`` of virtual array ``name`` into ``out``."""
        v = self._virtual[name]
        where = self._gather(v.index, self._sources[v.index].chunk_samples, idx, groups)
        ys = self._gather(v.y0, self._sources[v.y0].chunk_samples, idx, groups) // v.scale
        xs = self._gather(v.x0, self._sources[v.x0].chunk_samples, idx, groups) // v.scale
        size = v.size
        if self._memory is not None:
            images = self._memory[v.images]
            for j, (m, y, x) in enumerate(zip(where.tolist(), ys.tolist(), xs.tolist(), strict=True)):
                out[j] = images[m, y : y + size, x : x + size]
            return out
        reader = self._readers[v.images]
        rows = reader.rows_per_chunk or reader.shape[1]
        for j, (m, y, x) in enumerate(zip(where.tolist(), ys.tolist(), xs.tolist(), strict=True)):
            band, r = divmod(y, rows)
            filled = 0
            while filled < size:  # a window spans one or more row bands
                rows_here = self._band(v.images, m, band)
                take = min(size - filled, rows_here.shape[0] - r)
                out[j, filled : filled + take] = rows_here[r : r + take, x : x + size]
                filled += take
                band, r = band + 1, 0
        return out

    def _band(self, images: str, m: int, band: int) -> np.ndarray:
        """Row band ``band`` of image ``m`` of ``images``, decoded once into the cache."""
        key = (images, m, band)
        return self._cache.get(key, functools.partial(self._decode_band, images, m, band))[0]  # type: ignore[union-attr]

    def _decode_band(self, images: str, m: int, band: int) -> np.ndarray:
        reader = self._readers[images]
        spare = self._cache.spare(reader.chunk_shape, reader.dtype)  # type: ignore[union-attr]
        return reader.read_chunk(m, out=spare, row=band)


def _empty_batch(shape: tuple[int, ...], dtype: np.dtype[Any]) -> Any:
    """An uninitialised tensor for a batch; in a DataLoader worker, in shared memory.

    A worker's queue sends a tensor in shared memory as a handle; any other tensor is first copied into new shared
    memory. ``default_collate`` allocates its batches the same way.
    """
    torch_dtype = torch.from_numpy(np.empty(0, dtype=dtype)).dtype
    if torch.utils.data.get_worker_info() is None:
        return torch.empty(shape, dtype=torch_dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    storage = torch.UntypedStorage._new_shared(nbytes)
    return torch.empty(0, dtype=torch_dtype).set_(storage, 0, shape)


def _chunk_groups(idx: np.ndarray, c: int) -> _Groups:
    """Group sample indices by chunk: ``(chunk, indices within it, where they go in the batch)`` per chunk.

    Where they go is a slice when the chunk's samples are consecutive in ``idx`` (as in chunk-by-chunk order),
    else an array of positions.
    """
    ks = idx // c
    if len(ks) == 0:
        return []
    if ks[0] == ks[-1] and (ks == ks[0]).all():
        k = int(ks[0])
        return [(k, idx - k * c, slice(0, len(idx)))]
    order = np.argsort(ks, kind="stable")  # positions of each chunk's samples, increasing
    sorted_ks = ks[order]
    bounds = [0, *(np.flatnonzero(sorted_ks[1:] != sorted_ks[:-1]) + 1).tolist(), len(idx)]
    groups: _Groups = []
    for a, b in itertools.pairwise(bounds):
        where = order[a:b]
        k = int(sorted_ks[a])
        first, last = int(where[0]), int(where[-1])
        place: slice | np.ndarray = slice(first, last + 1) if last - first == b - a - 1 else where
        groups.append((k, idx[where] - k * c, place))
    return groups
