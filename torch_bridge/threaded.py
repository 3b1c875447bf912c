"""Batches read by threads of the training process: no worker processes, so no inter-process copy of each batch.

A DataLoader with worker processes moves every batch through shared memory: the worker writes it into a new
segment and the main process maps and faults it in again. On a few cores that transfer, not reading, caps the
rate (../shared/research/measured.md: 15-19k samples/s of 128×128 float32 on 2 cores, even for a dataset that
does no I/O). Reading a :class:`~torch_bridge.ZarrDataset` releases the GIL where the time goes (``preadv``,
CRC32C, Blosc, numpy's gather), so threads in the training process read batches in parallel and hand them over
as they are.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from ._torch import torch
from .loader import collate
from .sampler import ChunkBatchSampler, ChunkShuffleSampler

__all__ = ["ThreadedLoader"]


class ThreadedLoader:
    """Iterate over batches of ``dataset`` read by ``num_threads`` threads, in the order of a batch sampler.

    The batches, and their order, are those of :func:`~torch_bridge.make_loader` with the same arguments (the
    same :class:`ChunkShuffleSampler` order cut into ``batch_size`` batches); up to ``prefetch`` batches are
    read ahead. Use it where a DataLoader would use worker processes; it does not fork or spawn anything, so it
    also works after the parent has used a Zarr store, and the chunk cache is shared by all threads.

    Parameters
    ----------
    dataset : ZarrDataset
        Or any map-style dataset; ``__getitems__`` is used when it has one.
    batch_size : int
        Samples per batch.
    sampler : ChunkShuffleSampler, optional
        The order; default ``ChunkShuffleSampler(dataset, seed=seed, shuffle=shuffle, window=window)``.
    batch_sampler : iterable of lists of int, optional
        Batches of indices in any order (a ``torch.utils.data.BatchSampler`` over any sampler) instead of
        ``sampler`` cut into ``batch_size`` batches; its ``sampler`` is the loader's :attr:`sampler`.
    shuffle, seed, window : bool, int, int
        Passed to the default sampler.
    num_threads : int
        Threads reading batches.
    prefetch : int, optional
        Batches read ahead of the one being consumed (default ``2 * num_threads``).
    pin_memory : bool
        Copy each batch's tensors into page-locked memory (in the reading thread) for fast
        ``.to("cuda", non_blocking=True)``; needs a CUDA build of torch.
    drop_last : bool
        Drop a last batch shorter than ``batch_size``.
    collate_fn : callable, optional
        Turns a batch's samples into the batch (default :func:`~torch_bridge.collate`).

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> from storage.layout import SampleGrid
    >>> from storage.store import ArraySpec, TrainingStore
    >>> from torch_bridge import ZarrDataset, make_loader
    >>> path = tempfile.mkdtemp() + "/train.zarr"
    >>> spec = ArraySpec("x", ("sample",), (10,), np.dtype("int64"))
    >>> with TrainingStore.open_for_writing(path, [spec], grid=SampleGrid(4, 8), record={"pipeline": "doc"}) as s:
    ...     for b in s.blocks():
    ...         _ = s.write_block(b, {"x": np.arange(b.start, b.stop)})
    ...     s.finalize()
    >>> ds = ZarrDataset(path, arrays=["x"])
    >>> [batch["x"].tolist() for batch in ThreadedLoader(ds, batch_size=4, seed=1)]
    [[0, 1, 2, 3], [6, 4, 5, 7], [9, 8]]
    >>> [batch["x"].tolist() for batch in make_loader(ds, batch_size=4, seed=1)]  # the same batches
    [[0, 1, 2, 3], [6, 4, 5, 7], [9, 8]]
    """

    def __init__(
        self,
        dataset: Any,
        batch_size: int = 64,
        *,
        sampler: ChunkShuffleSampler | None = None,
        batch_sampler: Iterable[Sequence[int]] | None = None,
        shuffle: bool = True,
        seed: int = 0,
        window: int = 1,
        num_threads: int = 2,
        prefetch: int | None = None,
        pin_memory: bool = False,
        drop_last: bool = False,
        collate_fn: Callable[[Any], Any] | None = None,
    ) -> None:
        if num_threads < 1:
            raise ValueError(f"num_threads must be >= 1, got {num_threads}")
        if prefetch is not None and prefetch < 1:
            raise ValueError(f"prefetch must be >= 1, got {prefetch}")
        self.dataset = dataset
        self.batch_sampler: Any
        if batch_sampler is not None:
            self.batch_sampler = batch_sampler
            self.sampler = getattr(batch_sampler, "sampler", None)
        else:
            if sampler is None and window > 1 and hasattr(dataset, "reserve_cache"):
                dataset.reserve_cache(2 * window)  # the window being read and the next one, decoded once each
            self.sampler = sampler or ChunkShuffleSampler(dataset, seed=seed, shuffle=shuffle, window=window)
            self.batch_sampler = ChunkBatchSampler(self.sampler, batch_size, drop_last=drop_last)
        self.batch_size = batch_size
        self.num_threads = int(num_threads)
        self.prefetch = int(prefetch or 2 * num_threads)
        self.pin_memory = bool(pin_memory)
        self.collate_fn = collate_fn or collate

    def __repr__(self) -> str:
        return (
            f"ThreadedLoader({self.dataset!r}, batch_size={self.batch_size}, num_threads={self.num_threads}, "
            f"prefetch={self.prefetch}, pin_memory={self.pin_memory})"
        )

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def set_epoch(self, epoch: int) -> None:
        """Use the order of ``epoch`` for the next iteration (as ``sampler.set_epoch``)."""
        self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[Any]:
        cache = getattr(self.dataset, "cache", None)  # opens a ZarrDataset's readers once, before the threads
        del cache
        batches = (list(indices) for indices in self.batch_sampler)  # no prefetch hints: the pool reads ahead
        pending: deque[Future[Any]] = deque()
        pool = ThreadPoolExecutor(self.num_threads, thread_name_prefix="zarrforge-loader")
        try:
            for indices in itertools.islice(batches, self.prefetch):
                pending.append(pool.submit(self._fetch, indices))
            while pending:
                batch = pending.popleft().result()
                for indices in itertools.islice(batches, 1):
                    pending.append(pool.submit(self._fetch, indices))
                yield batch
        finally:  # also when the consumer stops early: drop what was read ahead
            pool.shutdown(wait=True, cancel_futures=True)

    def _fetch(self, indices: Sequence[int]) -> Any:
        getitems = getattr(self.dataset, "__getitems__", None)
        samples = getitems(indices) if getitems is not None else [self.dataset[i] for i in indices]
        batch = self.collate_fn(samples)
        return _pin(batch) if self.pin_memory else batch


def _pin(batch: Any) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.pin_memory()
    if isinstance(batch, dict):
        return {key: _pin(value) for key, value in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(_pin(value) for value in batch)
    return batch
