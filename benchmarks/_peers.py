"""The datasets bench_loader.py compares: raw-memmap limits, a no-I/O ceiling, naive zarr, xbatcher, tensorstore.

Each pickles as its paths and options and opens its files lazily in the process that reads (DataLoader workers
are spawned). A ``__getitems__`` makes the DataLoader hand a whole batch's indices to one call; the datasets that
have one return the stacked batch, which :func:`passthrough` (their ``collate_fn``) returns as it is. Batches made
in a DataLoader worker are allocated in shared memory, as ``default_collate`` and ZarrDataset do, so no loader
pays an extra copy onto the worker's queue.

xbatcher and tensorstore are imported only inside the processes that use them; they come from the ``bench``
extra (``pip install -e ".[bench]"``), never from zarrforge's runtime dependencies.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "MemmapBatchDataset",
    "MemmapDataset",
    "NaiveZarrDataset",
    "NoIODataset",
    "PerSample",
    "TensorstoreBatchDataset",
    "TensorstoreDataset",
    "XbatcherDataset",
    "missing_peer",
    "passthrough",
]


def passthrough(batch: Any) -> Any:
    """``collate_fn`` for datasets whose ``__getitems__`` already returns the stacked batch."""
    return batch


def missing_peer(module: str) -> str | None:
    """Why peer ``module`` cannot run here (not installed), or None when it can be imported."""
    if importlib.util.find_spec(module) is None:
        return f"{module} is not installed (pip install -e '.[bench]')"
    return None


def _batch_tensor(shape: tuple[int, ...], dtype: np.dtype[Any]) -> Any:
    """An uninitialised tensor for a batch; in a DataLoader worker, in shared memory (as default_collate does)."""
    import torch

    torch_dtype = torch.from_numpy(np.empty(0, dtype=dtype)).dtype
    if torch.utils.data.get_worker_info() is None:
        return torch.empty(shape, dtype=torch_dtype)
    return torch.empty(shape, dtype=torch_dtype).share_memory_()


class PerSample:
    """A map-style dataset that hides ``__getitems__``: the DataLoader reads and collates sample by sample.

    ZarrDataset defines ``__getitems__``, so a plain DataLoader with a ``batch_size`` reads it batch by batch; this
    wrapper measures its per-sample path (``ds[i]`` per sample, then ``default_collate``).
    """

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> Any:
        return self.dataset[i]


class MemmapDataset:
    """Samples of a ``.npy`` file through a memory map opened lazily in each process, one copy per sample."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._mm: np.ndarray | None = None
        self._n = int(np.load(path, mmap_mode="r").shape[0])

    def __len__(self) -> int:
        return self._n

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_mm": None}

    @property
    def mm(self) -> np.ndarray:
        if self._mm is None:
            self._mm = np.load(self.path, mmap_mode="r")
        return self._mm

    def __getitem__(self, i: int) -> Any:
        import torch

        return torch.from_numpy(np.array(self.mm[i]))


class MemmapBatchDataset(MemmapDataset):
    """The same memory map read one gather per batch, straight into the batch tensor (the fastest raw read)."""

    def __getitems__(self, indices: Sequence[int]) -> Any:
        mm = self.mm
        out = _batch_tensor((len(indices), *mm.shape[1:]), mm.dtype)
        np.take(mm, np.asarray(indices, dtype=np.int64), axis=0, out=out.numpy())
        return out


class NoIODataset:
    """A dataset that does no I/O: each batch is a fresh tensor copied from one batch held in memory.

    The DataLoader over it is the ceiling of any loader that hands out fresh batches: allocating a batch,
    filling it at memory speed, and (with workers) passing it between processes. The batch in memory is the
    first batch of the benchmark's order, so the first-batch check holds.
    """

    def __init__(self, template: np.ndarray, n: int) -> None:
        self.template = np.ascontiguousarray(template)
        self._n = n

    def __len__(self) -> int:
        return self._n

    def __getitems__(self, indices: Sequence[int]) -> Any:
        import torch

        out = _batch_tensor((len(indices), *self.template.shape[1:]), self.template.dtype)
        out.copy_(torch.from_numpy(self.template[: len(indices)]))
        return out


class NaiveZarrDataset:
    """Samples of a zarr v3 array read one by one with ``arr[i]`` (zarr-python decodes the whole chunk)."""

    def __init__(self, path: str) -> None:
        import zarr

        self.path = path
        self._arr: Any = None
        self._n = int(zarr.open_array(path, mode="r").shape[0])

    def __len__(self) -> int:
        return self._n

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_arr": None}

    def __getitem__(self, i: int) -> Any:
        import torch
        import zarr

        if self._arr is None:
            self._arr = zarr.open_array(self.path, mode="r")
        return torch.from_numpy(self._arr[i])


class XbatcherDataset:
    """xbatcher's PyTorch adapter (``xbatcher.loaders.torch.MapDataset``) over ``xr.open_zarr(store)[name]``.

    Item ``i`` is batch ``i`` of ``BatchGenerator(da, input_dims={sample: samples, <other dims>: full})``:
    one sample (``samples=1``, per-sample mode) or ``samples`` consecutive samples (whole-batch mode, which is
    what xbatcher offers for batches: it can shuffle batches but not the samples in them). The generator is
    built lazily in each process, as a user would in ``worker_init_fn``, so spawn does not pickle dask graphs.
    """

    def __init__(self, store: str, name: str, samples: int) -> None:
        import xarray as xr

        self.store, self.name, self.samples = store, name, samples
        da = xr.open_zarr(store, consolidated=None)[name]
        self._dims = {str(d): int(s) for d, s in da.sizes.items()}
        self._sample_dim = str(da.dims[0])
        self._n = self._dims[self._sample_dim] // samples
        self._mapped: Any = None

    def __len__(self) -> int:
        return self._n

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_mapped": None}

    def __getitem__(self, i: int) -> Any:
        if self._mapped is None:
            import xarray as xr
            import xbatcher
            from xbatcher.loaders.torch import MapDataset

            da = xr.open_zarr(self.store, consolidated=None)[self.name]
            input_dims = {**self._dims, self._sample_dim: self.samples}
            self._mapped = MapDataset(xbatcher.BatchGenerator(da, input_dims=input_dims))
        return self._mapped[i]


class TensorstoreDataset:
    """A zarr v3 array read with tensorstore, one read per sample.

    ``cache_bytes`` sizes tensorstore's ``cache_pool`` (decoded chunks kept in memory, per process); with 0 every
    read decodes the chunk it touches.
    """

    def __init__(self, path: str, *, cache_bytes: int = 0) -> None:
        self.path, self.cache_bytes = path, int(cache_bytes)
        self._n = int(_zarr_json(path)["shape"][0])
        self._arr: Any = None

    def __len__(self) -> int:
        return self._n

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_arr": None}

    def _open(self) -> Any:
        if self._arr is None:
            import tensorstore as ts

            context = ts.Context({"cache_pool": {"total_bytes_limit": self.cache_bytes}})
            spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": self.path}}
            self._arr = ts.open(spec, read=True, context=context).result()
        return self._arr

    def __getitem__(self, i: int) -> Any:
        import torch

        return torch.from_numpy(self._open()[int(i)].read().result())


class TensorstoreBatchDataset(TensorstoreDataset):
    """The same, one read per batch: one index array for the batch's samples, whose chunks tensorstore decodes
    concurrently (its best use; with a ``cache_pool`` and a chunk-by-chunk order each chunk is decoded once).
    """

    def __getitems__(self, indices: Sequence[int]) -> Any:
        import torch

        return torch.from_numpy(self._open()[np.asarray(indices, dtype=np.int64)].read().result())


def _zarr_json(path: str) -> dict[str, Any]:
    import json
    from pathlib import Path

    return json.loads((Path(path) / "zarr.json").read_text())
