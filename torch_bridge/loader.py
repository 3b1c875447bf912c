"""A DataLoader factory with defaults that suit zarrforge stores."""

from __future__ import annotations

import multiprocessing.context
from typing import Any

from ._torch import torch
from .dataset import SampleBatch
from .sampler import ChunkBatchSampler, ChunkShuffleSampler

__all__ = ["collate", "make_loader"]


def collate(batch: list[Any]) -> Any:
    """Collate a batch: the stacked batch a :class:`~torch_bridge.SampleBatch` carries, else ``default_collate``.

    A :class:`~torch_bridge.ZarrDataset` read through a DataLoader with a ``batch_size`` already stacks each batch
    (see :meth:`~torch_bridge.ZarrDataset.__getitems__`); this returns it without a copy, so one tensor per array
    crosses a worker's queue. Anything else (samples of other datasets, a dataset with a ``transform``) goes
    through :func:`torch.utils.data.default_collate`, with the same result.

    Parameters
    ----------
    batch : list
        The samples of a batch, as the DataLoader's fetcher passes them.

    Returns
    -------
    Any
        The collated batch, equal to ``default_collate(batch)``.

    Examples
    --------
    >>> import torch
    >>> collate([{"x": torch.zeros(2)}, {"x": torch.ones(2)}])["x"]
    tensor([[0., 0.],
            [1., 1.]])
    """
    if isinstance(batch, SampleBatch):
        return batch.stacked
    return torch.utils.data.default_collate(batch)


def make_loader(
    dataset: torch.utils.data.Dataset[Any],
    batch_size: int | None = 64,
    *,
    sampler: torch.utils.data.Sampler[Any] | None = None,
    shuffle: bool = True,
    seed: int = 0,
    window: int = 1,
    num_workers: int = 0,
    multiprocessing_context: str | multiprocessing.context.BaseContext | None = None,
    persistent_workers: bool | None = None,
    pin_memory: bool = False,
    drop_last: bool = False,
    **kwargs: Any,
) -> torch.utils.data.DataLoader[Any]:
    """Make a :class:`torch.utils.data.DataLoader` over ``dataset`` that reads it chunk by chunk.

    Parameters
    ----------
    dataset : ZarrDataset
        Or any map-style dataset with ``n_chunks`` and ``chunk_bounds`` when ``sampler`` is not given.
    batch_size : int or None
        Samples per batch.
    sampler : torch.utils.data.Sampler, optional
        Default: batches of ``ChunkShuffleSampler(dataset, seed=seed, shuffle=shuffle, window=window)`` through a
        :class:`ChunkBatchSampler` (``loader.batch_sampler``), which lets each reader decode its next chunk in a
        background thread while it gathers the current batch; call ``loader.batch_sampler.set_epoch(epoch)``
        (or your sampler's ``set_epoch``) each epoch.
    shuffle, seed, window : bool, int, int
        Passed to the default sampler (``window``: chunks whose samples are shuffled together, see
        :class:`ChunkShuffleSampler`); ignored when ``sampler`` is given.
    num_workers : int
        Worker processes; 0 reads in the main process.
    multiprocessing_context : str or context, optional
        Default with workers: ``"spawn"``. A parent that already used a Zarr v3 store holds an I/O thread and
        event loop that a forked child inherits in a broken state (zarrs/zarrs-python#171,
        czbiohub-sf/iohub#416); spawned workers start clean and open the store themselves.
    persistent_workers : bool, optional
        Default: ``True`` with workers, so spawned workers (and their chunk caches) live across epochs.
    pin_memory, drop_last : bool
        As for :class:`~torch.utils.data.DataLoader`.
    **kwargs
        Further :class:`~torch.utils.data.DataLoader` arguments (``prefetch_factor``, ...). ``collate_fn``
        defaults to :func:`collate` (with a ``batch_size``), which takes the batches :class:`ZarrDataset` stacks
        as they are.

    Returns
    -------
    torch.utils.data.DataLoader

    Notes
    -----
    Batches go to workers in turn, so with workers a chunk that spans two batches may be decoded by two
    workers; a ``batch_size`` that is a multiple of the store's ``chunk_samples`` avoids most of that.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> from storage.layout import SampleGrid
    >>> from storage.store import ArraySpec, TrainingStore
    >>> from torch_bridge import ZarrDataset
    >>> path = tempfile.mkdtemp() + "/train.zarr"
    >>> spec = ArraySpec("x", ("sample", "v"), (10, 2), np.dtype("float32"))
    >>> with TrainingStore.open_for_writing(path, [spec], grid=SampleGrid(4, 8), record={"pipeline": "doc"}) as s:
    ...     for b in s.blocks():
    ...         _ = s.write_block(b, {"x": np.ones((b.size, 2), "float32")})
    ...     s.finalize()
    >>> loader = make_loader(ZarrDataset(path), batch_size=4, seed=1)
    >>> [tuple(batch["x"].shape) for batch in loader]
    [(4, 2), (4, 2), (2, 2)]
    """
    if batch_size is not None and kwargs.get("collate_fn") is None:
        kwargs["collate_fn"] = collate
    if num_workers > 0:
        if multiprocessing_context is None:
            multiprocessing_context = "spawn"
        if persistent_workers is None:
            persistent_workers = True
    order = None
    if window > 1 and sampler is None and hasattr(dataset, "reserve_cache"):
        dataset.reserve_cache(2 * window)  # the window being read and the next one, decoded once each
    if sampler is None and batch_size is not None and "batch_sampler" not in kwargs:
        # Batches that tell each reader which chunks its next batch needs: decoding overlaps gathering.
        order = ChunkShuffleSampler(dataset, seed=seed, shuffle=shuffle, window=window)  # type: ignore[arg-type]
        kwargs["batch_sampler"] = ChunkBatchSampler(
            order, batch_size, drop_last=drop_last, lookahead=max(1, num_workers)
        )
        batch_size, drop_last = 1, False  # DataLoader's defaults, required alongside a batch_sampler
    elif sampler is None:
        sampler = ChunkShuffleSampler(dataset, seed=seed, shuffle=shuffle, window=window)  # type: ignore[arg-type]
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        multiprocessing_context=multiprocessing_context,
        persistent_workers=bool(persistent_workers),
        pin_memory=pin_memory,
        drop_last=drop_last,
        **kwargs,
    )
    if order is not None:
        # With a batch_sampler DataLoader keeps a placeholder SequentialSampler as ``loader.sampler``; expose the
        # real order there so ``loader.sampler.set_epoch(epoch)`` works as with a plain sampler. DataLoader only
        # reads ``sampler`` when it has no batch_sampler, and refuses plain assignment after __init__.
        object.__setattr__(loader, "sampler", order)
    return loader
