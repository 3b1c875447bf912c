"""Class-balanced batches for particle picking: a fixed share of positives in every batch, read chunk-aware.

Positive windows (a particle under the window) are rare in a picking store. A uniformly random balanced batch
would decode a chunk per sample; :class:`BalancedBatchSampler` keeps the chunk-aware order of
:class:`~torch_bridge.ChunkShuffleSampler` (shuffled chunks, dealt to ranks, read ``window`` chunks at a time)
and balances each batch inside it, oversampling the positives of the chunks being read.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from ._torch import torch
from .sampler import BatchIndices, ChunkedDataset

__all__ = ["BalancedBatchSampler"]

# Last words of the seeds of a window's shuffles, so that they never equal each other's or another seed
# (SeedSequence ignores trailing zeros: ``[s, e, r, 0]`` would seed like ``[s, e, r]``).
_ONCE_TAG = 0x6F6E6365  # "once": the shuffle of the class taken once per epoch
_CYCLE_TAG = 0x6379636C  # "cycl": the permutations of the oversampled positives
_MIX_TAG = 0x6D697821  # "mix!": the order within each batch


class BalancedBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Batches with exactly ``round(positive_ratio * batch_size)`` positives, read window by window of chunks.

    A *batch* sampler: use it as ``DataLoader(dataset, batch_sampler=sampler)``. Labels equal to 1 are
    positives; every other label is a non-positive.

    **Order.** Chunks are shuffled with ``np.random.default_rng([seed, epoch])`` and dealt round-robin to
    ``num_replicas`` ranks, so two ranks never read the same chunk's non-positives. Each rank walks its chunks in
    windows of ``window`` chunks and shuffles each window's non-positives on their own; the windows' shuffles,
    one after another, make the rank's *stream* of non-positives, which is cut into batches.

    **Epoch.** One pass over the non-positives: each non-positive of the rank's chunks comes exactly once, so
    the ranks together take every non-positive once. A rank whose stream does not fill its last batch completes
    it with the non-positives just before (a few repeats, unless ``drop_last``, which drops that batch). Every
    rank yields the same number of batches, :func:`len`, fixed at construction like
    :class:`torch.utils.data.DistributedSampler`: the most any rank's chunks can hold (with ``drop_last``, the
    fewest); a rank with fewer batches in an epoch repeats its own batches from the start. With
    ``positive_ratio=1`` there are no non-positives to take, and an epoch is one pass over the positives instead.

    **Positives.** A batch takes its positives from the window in which its last non-positive lies (the window
    being read), cycling through permutations of that window's positives: oversampled, each one once before any
    comes again, and never twice in a batch when the pool holds a batch's worth. A window whose chunks hold
    fewer positives than a batch takes (none, say) borrows: its pool grows with the positives of the rank's
    following windows (wrapping round to its first), whose chunks are read next anyway, until it holds a batch's
    worth; a rank whose chunks hold fewer than that borrows whole chunks' positives from the other ranks' chunks,
    in the epoch's chunk order. So the ratio holds exactly in every batch whenever the dataset has any positive.

    **Chunks per batch.** A batch's non-positives are consecutive in the stream: when every window holds at least
    a batch's non-positives they lie in at most two consecutive windows (one, except at a window's end), as
    with ``ChunkShuffleSampler(window=...)``; its positives lie in its window, or, borrowed, in the following
    ones. Give ``ZarrDataset`` a ``cache_bytes`` of ``2 * window`` decoded chunks (``reserve_cache``).

    Each batch is a :class:`~torch_bridge.BatchIndices` whose ``prefetch`` names the chunks of the batch
    ``lookahead`` later, so the dataset decodes them in the background (see
    :class:`~torch_bridge.ChunkBatchSampler`). The order depends only on ``(seed, epoch)`` and the rank: call
    :meth:`set_epoch` before each epoch.

    Parameters
    ----------
    dataset : ZarrDataset or ChunkedDataset
        Anything with ``len()``, ``n_chunks`` and ``chunk_bounds(k)`` (consecutive chunks covering the samples).
    labels : array_like of int, optional
        One label per sample (length ``len(dataset)``); default: the dataset's ``label`` array
        (:meth:`ZarrDataset.read <torch_bridge.ZarrDataset.read>`), as a picking store holds it.
    batch_size : int
        Samples per batch.
    positive_ratio : float
        Share of positives in each batch, in ``[0, 1]``; ``round(positive_ratio * batch_size)`` of them.
    seed : int
        Seed shared by all ranks.
    window : int
        Chunks read together (consecutive chunks of this rank's shuffled order; the last window may be shorter).
    num_replicas, rank : int
        Number of distributed ranks and this one's index.
    drop_last : bool
        Drop each rank's last, incomplete batch and keep ranks even by the fewest batches instead of repeating.
    lookahead : int
        How many batches ahead the ``prefetch`` hint points (``max(1, num_workers)`` of the DataLoader).

    Raises
    ------
    ValueError
        A parameter is out of range, ``labels`` does not have one label per sample, or the labels hold no
        sample of a class the batches need (no positive at all, or only positives with ``positive_ratio < 1``).

    Examples
    --------
    >>> import numpy as np
    >>> class Chunks:  # 12 samples in chunks of 4
    ...     n_chunks = 3
    ...     def __len__(self): return 12
    ...     def chunk_bounds(self, k): return 4 * k, 4 * k + 4
    >>> labels = np.zeros(12, dtype="int8")
    >>> labels[[1, 6]] = 1  # two positives among 12
    >>> sampler = BalancedBatchSampler(Chunks(), labels, batch_size=4, positive_ratio=0.5, window=1)
    >>> batches = list(sampler)
    >>> len(sampler), len(batches), [int(labels[b].sum()) for b in batches]  # 10 non-positives, 2 a batch
    (5, 5, [2, 2, 2, 2, 2])
    >>> sorted(i for b in batches for i in b if labels[i] != 1) == [0, 2, 3, 4, 5, 7, 8, 9, 10, 11]
    True
    """

    def __init__(
        self,
        dataset: ChunkedDataset,
        labels: Sequence[int] | np.ndarray | None = None,
        batch_size: int = 64,
        *,
        positive_ratio: float = 0.5,
        seed: int = 0,
        window: int = 8,
        num_replicas: int = 1,
        rank: int = 0,
        drop_last: bool = False,
        lookahead: int = 1,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0.0 <= positive_ratio <= 1.0:
            raise ValueError(
                f"positive_ratio must be in [0, 1] (share of positives per batch), got {positive_ratio}"
            )
        if window < 1:
            raise ValueError(f"window must be >= 1 (chunks read together), got {window}")
        if num_replicas < 1:
            raise ValueError(f"num_replicas must be >= 1, got {num_replicas}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, {num_replicas}), got {rank}")
        if lookahead < 1:
            raise ValueError(f"lookahead must be >= 1 (batches ahead of the prefetch hint), got {lookahead}")
        self.batch_size, self.positive_ratio = int(batch_size), float(positive_ratio)
        self.seed, self.window, self.lookahead = int(seed), int(window), int(lookahead)
        self.num_replicas, self.rank, self.drop_last = int(num_replicas), int(rank), bool(drop_last)
        self.epoch = 0
        self.n_positive = round(self.positive_ratio * self.batch_size)
        self.n_negative = self.batch_size - self.n_positive

        n_chunks = int(dataset.n_chunks)
        bounds = np.array([dataset.chunk_bounds(k) for k in range(n_chunks)], dtype=np.int64).reshape(-1, 2)
        self._starts = bounds[:, 0]
        n, held = len(dataset), int((bounds[:, 1] - bounds[:, 0]).sum())
        if held != n:
            raise ValueError(f"the chunks of {dataset!r} hold {held} samples, not its {n}")
        if not n:
            raise ValueError(f"dataset {dataset!r} holds no sample; pass a dataset with samples to balance")
        if labels is None:
            read = getattr(dataset, "read", None)
            if read is None:
                raise ValueError(f"pass labels=: {dataset!r} cannot read its 'label' array")
            labels = read("label")
        label_array = np.asarray(labels)
        if label_array.shape != (n,):
            raise ValueError(
                f"labels must be 1-D with one label per sample of the dataset ({n}), got shape {label_array.shape}"
            )
        positive = label_array == 1
        n_pos_total = int(positive.sum())
        if self.n_positive and not n_pos_total:
            raise ValueError(
                f"labels hold no positive (label == 1) for batches of {self.n_positive} positives; check the "
                "labels (a picking store's 'label'), or pass positive_ratio=0"
            )
        if self.n_negative and n_pos_total == n:
            raise ValueError(
                f"labels hold only positives (label == 1) for batches of {self.n_negative} non-positives; "
                "check the labels, or pass positive_ratio=1"
            )
        # The class taken once per epoch sets its length; positives are cycled when batches also hold those.
        once = ~positive if self.n_negative else positive
        self._per_once = self.n_negative or self.batch_size
        self._once = self._by_chunk(np.flatnonzero(once))
        self._positives = self._by_chunk(np.flatnonzero(positive)) if self.n_negative and self.n_positive else None
        self._once_counts = np.array([len(c) for c in self._once], dtype=np.int64)
        self.num_batches = self._per_rank_batches()

    def _by_chunk(self, idx: np.ndarray) -> list[np.ndarray]:
        """Sorted sample indices split by chunk (computed once: an epoch only concatenates these)."""
        return np.split(idx.astype(np.int64), np.searchsorted(idx, self._starts[1:]))

    def _per_rank_batches(self) -> int:
        """Batches every rank yields in any epoch: the largest (``drop_last``: smallest) share a rank can get.

        Round-robin gives each rank ``q`` or ``q + 1`` chunks; any of them may be the fullest (or emptiest).
        """
        counts = np.sort(self._once_counts)
        fewest_chunks, most_chunks = len(counts) // self.num_replicas, -(-len(counts) // self.num_replicas)
        if self.drop_last:
            return int(counts[:fewest_chunks].sum()) // self._per_once
        return -(-int(counts[len(counts) - most_chunks :].sum()) // self._per_once)

    def set_epoch(self, epoch: int) -> None:
        """Use the order of ``epoch`` for the next iteration (call it at the start of every epoch)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_batches

    def __repr__(self) -> str:
        return (
            f"BalancedBatchSampler(chunks={len(self._once)}, batch_size={self.batch_size}, "
            f"positives={self.n_positive}, seed={self.seed}, epoch={self.epoch}, window={self.window}, "
            f"rank={self.rank}/{self.num_replicas}, batches={self.num_batches})"
        )

    def chunk_order(self) -> np.ndarray:
        """The chunks of all ranks in this epoch's order (dealt round-robin to ranks)."""
        return np.random.default_rng([self.seed, self.epoch]).permutation(len(self._once))

    def windows(self) -> list[np.ndarray]:
        """The chunks of this rank in the current epoch, in windows of ``window`` chunks, in reading order.

        A rank whose chunks hold nothing to take once (fewer chunks than ranks, say) reads every chunk, starting
        at its rank: the only case where ranks share non-positives.
        """
        order = self.chunk_order()
        own = order[self.rank :: self.num_replicas]
        if not self._once_counts[own].sum():
            own = np.roll(order, -self.rank)
        return [own[first : first + self.window] for first in range(0, len(own), self.window)]

    def batches(self) -> np.ndarray:
        """The batches of this rank in the current epoch: an int64 array of shape ``(len(self), batch_size)``."""
        windows = self.windows()
        streams = [
            self._rng(w, _ONCE_TAG).permutation(np.concatenate([self._once[k] for k in chunks]))
            for w, chunks in enumerate(windows)
        ]
        stream = np.concatenate(streams)
        per = self._per_once
        full, rest = divmod(len(stream), per)
        rows = [stream[: full * per].reshape(full, per)]
        if rest and not self.drop_last:  # the last batch completed with the samples just before it
            rows.append(np.resize(stream[-per:], (1, per)))
        once = np.concatenate(rows)
        if not len(once):
            return np.empty((0, self.batch_size), dtype=np.int64)
        if self._positives is not None:
            # Each batch belongs to the window holding its last sample: the window being read.
            last = np.minimum(np.arange(1, len(once) + 1) * per, len(stream)) - 1
            owner = np.searchsorted(np.cumsum([len(s) for s in streams]), last, side="right")
            positives = np.empty((len(once), self.n_positive), dtype=np.int64)
            pools = self._pools(windows)
            for w in np.unique(owner).tolist():
                mine = owner == w
                drawn = _cycle(
                    pools[w], int(mine.sum()) * self.n_positive, self.n_positive, self._rng(w, _CYCLE_TAG)
                )
                positives[mine] = drawn.reshape(-1, self.n_positive)
            # Positives spread over the batch rather than at its end.
            once = self._rng(_MIX_TAG).permuted(np.concatenate([once, positives], axis=1), axis=1)
        if len(once) < self.num_batches:  # even ranks: repeat own batches from the start
            once = once[np.resize(np.arange(len(once)), self.num_batches)]
        return once[: self.num_batches]

    def _rng(self, *words: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, self.rank, *words])

    def _pools(self, windows: list[np.ndarray]) -> list[np.ndarray]:
        """The positives each window draws from: its own, grown to a batch's worth when it holds fewer.

        First with the rank's following windows (wrapping round), then with whole chunks of the other ranks'
        positives, in the epoch's chunk order.
        """
        assert self._positives is not None
        need = self.n_positive
        own = [np.concatenate([self._positives[k] for k in chunks]) for chunks in windows]
        counts = np.array([len(p) for p in own], dtype=np.int64)
        total = int(counts.sum())
        twice = np.concatenate(own + own)  # a pool may wrap past the rank's last window
        offsets = np.concatenate([[0], np.cumsum(np.concatenate([counts, counts]))])
        borrowed = np.empty(0, dtype=np.int64)
        if total < need:  # the rank's chunks hold less than a batch's positives: borrow from other chunks
            mine = set(np.concatenate(windows).tolist())
            others = [self._positives[k] for k in self.chunk_order().tolist() if k not in mine]
            taken = np.searchsorted(np.cumsum([len(p) for p in others]), need - total) + 1
            borrowed = np.concatenate(others[:taken]) if others else borrowed
        pools = []
        for w, count in enumerate(counts.tolist()):
            if count >= need:
                pools.append(own[w])
            elif total >= need:
                end = int(np.searchsorted(offsets, offsets[w] + need))
                pools.append(twice[offsets[w] : offsets[end]])
            else:
                pools.append(np.concatenate([twice[offsets[w] : offsets[w] + total], borrowed]))
        return pools

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.batches()
        chunk_of = np.searchsorted(self._starts, batches, side="right") - 1
        for b, batch in enumerate(batches.tolist()):
            later = chunk_of[b + self.lookahead].tolist() if b + self.lookahead < len(batches) else []
            yield BatchIndices(batch, dict.fromkeys(later))  # first-use order, no repeats


def _cycle(pool: np.ndarray, count: int, per_batch: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` draws from ``pool``: permutation after permutation, batches of ``per_batch`` free of repeats.

    At a permutation's end the batch being filled already holds some of the pool; those go to the end of the
    next permutation, so when the pool holds a batch's worth no batch takes a sample twice.
    """
    out = np.empty(count, dtype=np.int64)
    filled = 0
    while filled < count:
        perm = pool[rng.permutation(len(pool))]
        held = filled % per_batch
        if held and len(pool) >= per_batch:
            repeat = np.isin(perm, out[filled - held : filled])
            perm = np.concatenate([perm[~repeat], perm[repeat]])
        take = min(len(perm), count - filled)
        out[filled : filled + take] = perm[:take]
        filled += take
    return out
