"""Chunk-aware sampling: shuffle the chunks, then the samples within each chunk or window, split chunks by rank.

:func:`order_randomness` tells how far such an order (or any other) is from a uniform shuffle.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Protocol

import numpy as np

from ._torch import torch

__all__ = ["BatchIndices", "ChunkBatchSampler", "ChunkShuffleSampler", "ChunkedDataset", "order_randomness"]

# Last word of the seed of a window's shuffle, so that it never equals a chunk's seed ``[seed, epoch, k]``
# (SeedSequence ignores trailing zeros: ``[s, e, 0, 0]`` would seed like ``[s, e]``).
_WINDOW_TAG = 0x77696E64


class ChunkedDataset(Protocol):
    """What :class:`ChunkShuffleSampler` needs of a dataset (:class:`~torch_bridge.ZarrDataset` has it)."""

    def __len__(self) -> int: ...

    @property
    def n_chunks(self) -> int: ...  # noqa: D102

    def chunk_bounds(self, k: int) -> tuple[int, int]: ...  # noqa: D102


class ChunkShuffleSampler(torch.utils.data.Sampler[int]):
    """Yield sample indices chunk by chunk: chunks in a shuffled order, samples shuffled within each chunk.

    Each chunk's samples come out contiguously, so a dataset with a chunk cache decodes each chunk once per
    epoch. The order depends only on ``(seed, epoch)``: chunks are permuted with
    ``np.random.default_rng([seed, epoch])`` and the samples of chunk ``k`` with
    ``np.random.default_rng([seed, epoch, k])``. Call :meth:`set_epoch` before each epoch.

    With ``window=N`` the samples of every ``N`` consecutive chunks of a rank's order are shuffled together, so a
    batch mixes up to ``N`` chunks instead of one: closer to a uniform shuffle (see :func:`order_randomness`), at
    the price of a cache that holds ``N`` decoded chunks per array and process, and, with DataLoader workers
    (which take batches in turn), of each worker decoding every chunk of a window. ``window=1`` is the plain
    chunk-by-chunk order.

    A short last chunk always comes last (the full chunks are permuted before it): with a ``batch_size`` that is
    a multiple of the chunk size every batch then holds whole chunks, so DataLoader workers, which take batches
    in turn, never decode the same chunk twice.

    For distributed training the shuffled chunks are dealt round-robin to ``num_replicas`` ranks, so two ranks
    never read the same chunk. As with :class:`torch.utils.data.DistributedSampler`, every rank yields the same
    number of samples, :func:`len`: without ``drop_last`` a rank short of that repeats its own samples from the
    start (at most one chunk's worth); with ``drop_last`` every rank stops at the smallest share. The length does
    not depend on the epoch. If there are fewer chunks than ranks and ``drop_last`` is false, a rank without a
    chunk repeats samples of the whole epoch order (the only case where ranks share a chunk).

    Parameters
    ----------
    dataset : ZarrDataset or ChunkedDataset
        Anything with ``len()``, ``n_chunks`` and ``chunk_bounds(k)``; all chunks but the last are full.
    seed : int
        Seed shared by all ranks.
    shuffle : bool
        ``False``: chunks and samples in order (still split across ranks).
    num_replicas, rank : int
        Number of distributed ranks and this one's index.
    drop_last : bool
        Drop samples so that ranks are even instead of repeating some.
    window : int
        Chunks whose samples are shuffled together (consecutive chunks of this rank's shuffled order; the last
        window may be shorter). Give ``ZarrDataset`` a ``cache_bytes`` of at least ``2 * window`` decoded chunks:
        at a window's end the next window's chunks are decoded ahead (see :class:`ChunkBatchSampler`).

    Examples
    --------
    >>> class Chunks:  # 10 samples in chunks of 4
    ...     n_chunks = 3
    ...     def __len__(self): return 10
    ...     def chunk_bounds(self, k): return 4 * k, min(4 * k + 4, 10)
    >>> list(ChunkShuffleSampler(Chunks(), shuffle=False))
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    >>> order = list(ChunkShuffleSampler(Chunks(), seed=1))
    >>> chunks = [i // 4 for i in order]
    >>> sorted(order) == list(range(10)), chunks == sorted(chunks, key=chunks.index)  # chunks stay together
    (True, True)
    >>> [list(ChunkShuffleSampler(Chunks(), shuffle=False, num_replicas=2, rank=r)) for r in (0, 1)]
    [[0, 1, 2, 3, 8, 9, 0, 1], [4, 5, 6, 7, 4, 5, 6, 7]]
    >>> mixed = [i // 4 for i in ChunkShuffleSampler(Chunks(), seed=1, window=3)]  # all 3 chunks shuffled together
    >>> mixed == sorted(mixed, key=mixed.index)
    False
    """

    def __init__(
        self,
        dataset: ChunkedDataset,
        *,
        seed: int = 0,
        shuffle: bool = True,
        num_replicas: int = 1,
        rank: int = 0,
        drop_last: bool = False,
        window: int = 1,
    ) -> None:
        if num_replicas < 1:
            raise ValueError(f"num_replicas must be >= 1, got {num_replicas}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, {num_replicas}), got {rank}")
        if window < 1:
            raise ValueError(f"window must be >= 1 (chunks shuffled together), got {window}")
        self.window = int(window)
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.drop_last = bool(drop_last)
        self.epoch = 0
        n_chunks = int(dataset.n_chunks)
        bounds = np.array([dataset.chunk_bounds(k) for k in range(n_chunks)], dtype=np.int64).reshape(-1, 2)
        self._starts = bounds[:, 0]
        self._sizes = bounds[:, 1] - bounds[:, 0]
        if int(self._sizes.sum()) != len(dataset):
            raise ValueError(
                f"the chunks of {dataset!r} hold {int(self._sizes.sum())} samples, not its {len(dataset)}"
            )
        self.num_samples = _per_rank_samples(self._sizes, self.num_replicas, self.drop_last)

    def set_epoch(self, epoch: int) -> None:
        """Use the order of ``epoch`` for the next iteration (call it at the start of every epoch)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_samples

    def __repr__(self) -> str:
        return (
            f"ChunkShuffleSampler(chunks={len(self._sizes)}, seed={self.seed}, shuffle={self.shuffle}, "
            f"epoch={self.epoch}, rank={self.rank}/{self.num_replicas}, window={self.window}, "
            f"samples={self.num_samples})"
        )

    def chunk_order(self) -> np.ndarray:
        """The chunks of all ranks in this epoch's order (a short last chunk last)."""
        n_chunks = len(self._sizes)
        if not self.shuffle:
            return np.arange(n_chunks)
        rng = np.random.default_rng([self.seed, self.epoch])
        if n_chunks > 1 and self._sizes[-1] < self._sizes[0]:  # the short last chunk goes last
            return np.append(rng.permutation(n_chunks - 1), n_chunks - 1)
        return rng.permutation(n_chunks)

    def _samples(self, chunks: np.ndarray) -> np.ndarray:
        parts = []
        for k in chunks:
            start, size = int(self._starts[k]), int(self._sizes[k])
            if self.shuffle:
                parts.append(start + np.random.default_rng([self.seed, self.epoch, int(k)]).permutation(size))
            else:
                parts.append(np.arange(start, start + size))
        return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)

    def _windowed(self, chunks: np.ndarray) -> np.ndarray:
        """The samples of ``chunks``, each run of ``window`` chunks shuffled together."""
        if self.window == 1 or not self.shuffle:  # window 1: exactly the chunk-by-chunk order
            return self._samples(chunks)
        parts = []
        for w, first in enumerate(range(0, len(chunks), self.window)):
            samples = self._samples(chunks[first : first + self.window])
            rng = np.random.default_rng([self.seed, self.epoch, self.rank, w, _WINDOW_TAG])
            parts.append(samples[rng.permutation(len(samples))])
        return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)

    def indices(self) -> np.ndarray:
        """The sample indices of this rank for the current epoch, as an array."""
        order = self.chunk_order()
        own = self._windowed(order[self.rank :: self.num_replicas])
        n = self.num_samples
        if len(own) >= n:
            return own[:n]
        if len(own) == 0:  # fewer chunks than ranks: borrow from the whole epoch's order
            everything = self._windowed(order)
            return np.resize(np.roll(everything, -self.rank), n) if len(everything) else everything
        return np.resize(own, n)  # repeat own samples from the start

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())


def _per_rank_samples(sizes: np.ndarray, num_replicas: int, drop_last: bool) -> int:
    """Samples every rank yields whatever the chunk order: the largest (or, ``drop_last``, smallest) share.

    Chunks are dealt round-robin, so rank ``r`` gets ``q`` or ``q + 1`` chunks; only where the one short chunk
    (the last) lands changes with the epoch. Taking the extreme over every place it can land keeps the length
    constant across epochs.
    """
    n_chunks = len(sizes)
    if n_chunks == 0:
        return 0
    if num_replicas == 1:
        return int(sizes.sum())
    full = int(sizes.max())
    if n_chunks > 1 and (sizes[:-1] != full).any():
        # Several short chunks (a dataset's split starts mid-chunk): a bound that holds for every deal.
        q, rem = divmod(n_chunks, num_replicas)
        ordered = np.sort(sizes)
        return int(ordered[:q].sum()) if drop_last else int(ordered[::-1][: q + (rem > 0)].sum())
    short = full - int(sizes[-1])
    q, rem = divmod(n_chunks, num_replicas)
    shares = (q + (np.arange(num_replicas) < rem)) * full  # chunks per rank, all full
    holders = shares[shares > 0]  # the ranks that may hold the short chunk
    if drop_last:
        # the smallest share: a holder with the short chunk, or (with other ranks) any rank without it
        smallest = int(holders.min()) - short
        return min(smallest, int(shares.min())) if num_replicas > 1 else smallest
    # the largest share: any rank, while another rank takes the short chunk, unless one rank holds everything
    return int(shares.max()) if len(holders) > 1 else int(holders[0]) - short


class BatchIndices(list):  # type: ignore[type-arg]
    """The sample indices of one batch, with ``prefetch``: the chunks a later batch of the same reader needs.

    :class:`~torch_bridge.ZarrDataset` starts decoding those chunks in a background thread while it gathers this
    batch; it pickles as it is into DataLoader workers' index queues.
    """

    def __init__(self, indices: Iterable[int] = (), prefetch: Iterable[int] = ()) -> None:
        super().__init__(indices)
        self.prefetch: tuple[int, ...] = tuple(prefetch)

    def __reduce__(self) -> tuple[Any, ...]:
        return (BatchIndices, (list(self), self.prefetch))


class ChunkBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Batches of a :class:`ChunkShuffleSampler`'s order, each telling the dataset which chunks come next.

    Batch ``b`` carries the chunks of batch ``b + lookahead`` (as :attr:`BatchIndices.prefetch`): with
    ``lookahead`` equal to the number of DataLoader workers, which take batches in turn, that is the next batch
    of the same worker, so each process decodes its next chunk while it gathers the current batch. The batches
    are exactly those of ``DataLoader(batch_size=..., sampler=sampler, drop_last=...)``.

    Parameters
    ----------
    sampler : ChunkShuffleSampler
        The order; call :meth:`set_epoch` (passed on to it) each epoch.
    batch_size : int
        Samples per batch.
    drop_last : bool
        Drop a last batch shorter than ``batch_size``.
    lookahead : int
        How many batches ahead the hint points (``max(1, num_workers)``).

    Examples
    --------
    >>> class Chunks:  # 10 samples in chunks of 4
    ...     n_chunks = 3
    ...     def __len__(self): return 10
    ...     def chunk_bounds(self, k): return 4 * k, min(4 * k + 4, 10)
    >>> batches = list(ChunkBatchSampler(ChunkShuffleSampler(Chunks(), shuffle=False), batch_size=4))
    >>> [(list(b), b.prefetch) for b in batches]
    [([0, 1, 2, 3], (1,)), ([4, 5, 6, 7], (2,)), ([8, 9], ())]
    """

    def __init__(
        self, sampler: ChunkShuffleSampler, batch_size: int, *, drop_last: bool = False, lookahead: int = 1
    ) -> None:
        if batch_size < 1 or lookahead < 1:
            raise ValueError(f"batch_size and lookahead must be >= 1, got {batch_size}, {lookahead}")
        self.sampler, self.batch_size, self.drop_last, self.lookahead = sampler, batch_size, drop_last, lookahead
        self._chunk_of = np.repeat(np.arange(len(sampler._sizes)), sampler._sizes)

    def set_epoch(self, epoch: int) -> None:
        """Use the order of ``epoch`` for the next iteration."""
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        order = self.sampler.indices()
        starts = range(0, len(self) * self.batch_size, self.batch_size)
        batches = [order[start : start + self.batch_size] for start in starts]
        for b, batch in enumerate(batches):
            later = batches[b + self.lookahead] if b + self.lookahead < len(batches) else order[:0]
            chunks = dict.fromkeys(self._chunk_of[later].tolist())  # first-use order, no repeats
            yield BatchIndices(batch.tolist(), chunks)


def order_randomness(order: Iterable[int], chunk_samples: int, batch_size: int) -> dict[str, float]:
    """How close an order of sample indices is to a uniform shuffle, for samples stored ``chunk_samples`` a chunk.

    A chunk-aware order reads each chunk once but keeps a chunk's samples together; a uniform shuffle spreads
    them over the epoch. Three numbers place an order between the two: how many chunks a batch mixes (against
    what a uniform shuffle of the same samples would give), how many batches come from a single chunk, and the
    correlation of neighbouring samples' positions (about 0 for a uniform shuffle, near 1 when neighbours share
    a chunk).

    Parameters
    ----------
    order : iterable of int
        Sample indices as a loader yields them (an epoch, or its start).
    chunk_samples : int
        Samples per chunk of the store (chunk ``k`` holds samples ``k * chunk_samples`` onwards).
    batch_size : int
        Samples per batch; a last, shorter batch is left out.

    Returns
    -------
    dict of str to float
        ``chunks_per_batch``: mean number of distinct chunks in a batch; ``chunks_per_batch_uniform``: its
        expectation for a uniform shuffle of the same samples (drawn without replacement from the samples in
        ``order``); ``mixing``: the ratio of the two (1 for a uniform shuffle); ``one_chunk_batches``: fraction
        of batches drawn from one chunk; ``lag1_corr``: Pearson correlation of ``order[t]`` and
        ``order[t + 1]`` (NaN for fewer than 3 samples or a constant order); ``batches``: full batches counted.

    Examples
    --------
    >>> r = order_randomness(range(1024), chunk_samples=64, batch_size=64)  # sequential: one chunk a batch
    >>> r["chunks_per_batch"], r["one_chunk_batches"], round(r["lag1_corr"], 3)
    (1.0, 1.0, 1.0)
    >>> round(r["chunks_per_batch_uniform"], 1)  # 16 chunks: a uniform batch of 64 hits almost all of them
    15.8
    >>> u = order_randomness(np.random.default_rng(0).permutation(1024), 64, 64)
    >>> round(u["mixing"], 1), u["one_chunk_batches"], abs(u["lag1_corr"]) < 0.1
    (1.0, 0.0, True)
    """
    if chunk_samples < 1 or batch_size < 1:
        raise ValueError(f"chunk_samples and batch_size must be >= 1, got {chunk_samples}, {batch_size}")
    idx = np.asarray(list(order) if not isinstance(order, np.ndarray) else order, dtype=np.int64)
    n_batches = len(idx) // batch_size
    chunks = idx[: n_batches * batch_size].reshape(n_batches, batch_size) // chunk_samples
    if n_batches:
        ordered = np.sort(chunks, axis=1)
        distinct = 1 + (ordered[:, 1:] != ordered[:, :-1]).sum(axis=1)
        per_batch, one_chunk = float(distinct.mean()), float((distinct == 1).mean())
    else:
        per_batch = one_chunk = float("nan")
    # A uniform batch misses chunk k with the hypergeometric probability of drawing none of its s_k samples.
    _, sizes = np.unique(idx // chunk_samples, return_counts=True)
    n = len(idx)
    draws = np.arange(min(batch_size, n))
    miss = np.array([np.prod(np.clip((n - s - draws) / (n - draws), 0, None)) for s in sizes])
    uniform = float((1 - miss).sum()) if n_batches else float("nan")
    lag1 = float("nan")
    if len(idx) >= 3 and idx[:-1].std() > 0 and idx[1:].std() > 0:
        lag1 = float(np.corrcoef(idx[:-1], idx[1:])[0, 1])
    return {
        "chunks_per_batch": per_batch,
        "chunks_per_batch_uniform": uniform,
        "mixing": per_batch / uniform if n_batches else float("nan"),
        "one_chunk_batches": one_chunk,
        "lag1_corr": lag1,
        "batches": float(n_batches),
    }
