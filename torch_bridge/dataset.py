"""A map-style PyTorch Dataset over the arrays of a zarrforge training store."""

from __future__ import annotations

import json
import logging
import operator
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from storage.chunks import ChunkReader
from storage.errors import StoreError

from ._torch import torch
from .cache import ChunkCache

__all__ = ["ZarrDataset"]

log = logging.getLogger(__name__)

MiB = 2**20


@dataclass(frozen=True)
class _ArrayInfo:
    """What the dataset knows of one array without opening it: its shape, dtype and samples per chunk."""

    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    chunk_samples: int


class ZarrDataset(torch.utils.data.Dataset[dict[str, Any]]):
    """Samples of a training store as dicts of tensors, read chunk by chunk through a per-process cache.

    Sample ``i`` is ``{name: tensor of array name at i}`` for each of ``arrays``, plus ``"meta"``, a dict of the
    ``metadata`` arrays at ``i`` (Python numbers for 1-D arrays, tensors otherwise) when ``return_metadata``.
    The whole chunk holding a sample is decoded once into a :class:`ChunkCache`, so reading samples chunk by chunk
    (see :class:`~torch_bridge.ChunkShuffleSampler`) decodes each chunk once per epoch.

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
    cache_bytes : int
        Capacity of the per-process chunk cache (default 256 MiB).

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
        cache_bytes: int = 256 * MiB,
    ) -> None:
        self.path = Path(store)
        if isinstance(arrays, str) or isinstance(metadata, str):
            raise TypeError("arrays and metadata take a sequence of array names, e.g. ['patches'], not a string")
        if cache_bytes < 0:
            raise ValueError(f"cache_bytes must be >= 0, got {cache_bytes}")
        self.transform = transform
        self.return_metadata = bool(return_metadata)
        self.load_in_memory = bool(load_in_memory)
        self.cache_bytes = int(cache_bytes)

        available = _list_arrays(self.path)
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
                raise StoreError(
                    f"{self.path}: no array {missing[0]!r} (asked for in {kind}=); "
                    f"available arrays: {', '.join(available) or 'none'}"
                )
            if len(set(names)) != len(names):
                raise ValueError(f"{kind}= names an array twice: {list(names)}")
        if not arrays:
            raise ValueError("arrays= must name at least one array")
        self.arrays: tuple[str, ...] = tuple(arrays)
        self.metadata: tuple[str, ...] = tuple(metadata)
        used = (*self.arrays, *self.metadata)
        self._info: dict[str, _ArrayInfo] = {name: available[name] for name in used}
        sizes = {name: self._info[name].shape[0] for name in used}
        if len(set(sizes.values())) != 1:
            raise StoreError(f"{self.path}: arrays disagree on the number of samples: {sizes}")
        self._n = int(sizes[self.arrays[0]])
        # What __getitem__ needs, computed once: (name, samples per chunk) of what it reads.
        self._read_plan: tuple[tuple[str, int], ...] = tuple(
            (name, self._info[name].chunk_samples) for name in self.arrays
        )
        self._meta_plan: tuple[tuple[str, int, bool], ...] = tuple(
            (name, self._info[name].chunk_samples, len(self._info[name].shape) == 1) for name in self.metadata
        )
        self._reset_process_state()

    # ------------------------------------------------------------ process state
    def _reset_process_state(self) -> None:
        self._pid: int | None = None
        self._readers: dict[str, ChunkReader] = {}
        self._cache: ChunkCache | None = None
        self._memory: dict[str, np.ndarray] | None = None

    def _ensure_process(self) -> None:
        """Open readers and the cache in this process (again after a fork: handles are per process)."""
        pid = os.getpid()
        if self._pid == pid:
            return
        memory = self._memory  # plain numpy arrays stay valid in a forked child (copy on write)
        self._reset_process_state()
        self._pid = pid
        self._cache = ChunkCache(self.cache_bytes)
        self._readers = {name: ChunkReader(self.path / name) for name in self._info}
        if self.load_in_memory:
            self._memory = memory if memory is not None else self._read_all()

    def _read_all(self) -> dict[str, np.ndarray]:
        out = {}
        for name, reader in self._readers.items():
            info = self._info[name]
            full = np.empty(info.shape, dtype=reader.dtype)
            for k in range(reader.n_chunks):
                start, stop = reader.chunk_bounds(k)
                full[start:stop] = reader.read_chunk(k)
            full.flags.writeable = False
            out[name] = full
        log.debug("loaded %s into memory (%d bytes)", self.path, sum(a.nbytes for a in out.values()))
        return out

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for key in ("_pid", "_readers", "_cache", "_memory"):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset_process_state()

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
        """Number of chunks of the primary array along the sample axis."""
        return -(-self._n // self.chunk_samples)

    def chunk_bounds(self, k: int) -> tuple[int, int]:
        """Samples ``[start, stop)`` of chunk ``k`` of the primary array."""
        if not 0 <= k < self.n_chunks:
            raise IndexError(f"chunk {k} out of range for {self.n_chunks} chunks of {self.path}")
        start = k * self.chunk_samples
        return start, min(start + self.chunk_samples, self._n)

    def __repr__(self) -> str:
        return (
            f"ZarrDataset({str(self.path)!r}, arrays={list(self.arrays)}, samples={self._n}, "
            f"chunk_samples={self.chunk_samples}, "
            f"metadata={list(self.metadata) if self.return_metadata else None})"
        )

    # ------------------------------------------------------------ reading
    def _row(self, name: str, chunk_samples: int, i: int) -> np.ndarray:
        if self._memory is not None:
            return self._memory[name][i]
        k, j = divmod(i, chunk_samples)
        reader = self._readers[name]
        chunk = self._cache.get((name, k), lambda: reader.read_chunk(k))  # type: ignore[union-attr]
        return chunk[j]

    def __getitem__(self, index: int) -> Any:
        i = operator.index(index)
        n = self._n
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"sample {index} out of range for {n} samples of {self.path}")
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


def _list_arrays(path: Path) -> dict[str, _ArrayInfo]:
    """The arrays directly inside the group at ``path`` (hidden ``.``-names skipped), by name."""
    if not path.exists():
        raise StoreError(f"{path}: no such store; check the path")
    group_meta = _read_json(path / "zarr.json")
    if group_meta is None or group_meta.get("node_type") != "group" or group_meta.get("zarr_format") != 3:
        raise StoreError(f"{path}: not a Zarr v3 group (no group zarr.json); pass the path of a training store")
    zf = group_meta.get("attributes", {}).get("zarrforge")
    if isinstance(zf, Mapping) and zf.get("complete") is False:
        raise StoreError(
            f"{path}: the store is unfinished (its writer has not called finalize()); finish the run that "
            "writes it before training on it"
        )
    found: dict[str, _ArrayInfo] = {}
    for child in sorted(path.iterdir()):
        if child.name.startswith(".") or not child.is_dir():
            continue
        meta = _read_json(child / "zarr.json")
        if meta is None or meta.get("node_type") != "array":
            continue
        reader = ChunkReader(child)
        found[child.name] = _ArrayInfo(tuple(reader.shape), reader.dtype, int(reader.chunk_samples))
    return found


def _read_json(file: Path) -> dict[str, Any] | None:
    try:
        meta = json.loads(file.read_text())
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return None
    return meta if isinstance(meta, dict) else None
