"""Pure arithmetic of a training store's sample grid: chunks, shards and write blocks.

A training store chunks only its leading ``sample`` axis. A *chunk* is the unit a loader decodes (a few MiB of
whole samples); a *shard* is one file holding many chunks and the unit of writing: every write task owns whole
shards (concurrent writes into one shard lose data, zarr-python#3514), so a write *block* is exactly one shard.
No I/O here; see ``tests/storage/test_layout.py`` for the properties.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Block", "SampleGrid", "plan_axis_blocks", "plan_blocks", "sample_grid"]

MiB = 2**20


@dataclass(frozen=True)
class SampleGrid:
    """How many samples make a chunk and a shard (a shard is a whole number of chunks)."""

    chunk_samples: int
    shard_samples: int

    def __post_init__(self) -> None:
        if self.chunk_samples < 1 or self.shard_samples < 1:
            raise ValueError(f"chunk and shard sizes must be >= 1 sample, got {self}")
        if self.shard_samples % self.chunk_samples:
            raise ValueError(f"shard_samples must be a multiple of chunk_samples, got {self}")

    @property
    def chunks_per_shard(self) -> int:
        """Number of chunks in a full shard."""
        return self.shard_samples // self.chunk_samples


@dataclass(frozen=True)
class Block:
    """One unit of writing: items ``[start, stop)`` of a leading axis, one shard of every array on that axis.

    ``index`` numbers the blocks of the whole store (the ledger's entry); ``shard`` numbers the shard along
    ``axis`` (equal to ``index`` in a store with only a ``sample`` axis).
    """

    index: int
    start: int
    stop: int
    axis: str = "sample"
    shard: int = -1

    def __post_init__(self) -> None:
        if self.shard < 0:
            object.__setattr__(self, "shard", self.index)

    @property
    def size(self) -> int:
        """Number of samples in the block."""
        return self.stop - self.start


def sample_grid(sample_nbytes: int, *, chunk_bytes: int = 4 * MiB, shard_bytes: int = 128 * MiB) -> SampleGrid:
    """Choose chunk and shard sizes, in samples, for samples of ``sample_nbytes`` bytes.

    A chunk holds as many whole samples as fit in ``chunk_bytes`` (at least one); a shard holds as many whole
    chunks as fit in ``shard_bytes`` (at least one).

    Parameters
    ----------
    sample_nbytes : int
        Decoded size of one sample of the largest array in the store.
    chunk_bytes, shard_bytes : int
        Targets for the decoded size of a chunk and of a shard.

    Returns
    -------
    SampleGrid

    Examples
    --------
    >>> sample_grid(128 * 128 * 4)  # 64 KiB float32 patches
    SampleGrid(chunk_samples=64, shard_samples=2048)
    >>> sample_grid(10 * 2**20).chunk_samples  # a sample larger than a chunk is a chunk of its own
    1
    """
    if sample_nbytes < 1:
        raise ValueError(f"sample_nbytes must be >= 1, got {sample_nbytes}")
    if chunk_bytes < 1 or shard_bytes < 1:
        raise ValueError(f"chunk_bytes and shard_bytes must be >= 1, got {chunk_bytes}, {shard_bytes}")
    chunk_samples = max(1, chunk_bytes // sample_nbytes)
    chunks_per_shard = max(1, shard_bytes // (chunk_samples * sample_nbytes))
    return SampleGrid(chunk_samples, chunk_samples * chunks_per_shard)


def plan_blocks(n_samples: int, shard_samples: int) -> list[Block]:
    """Cut ``n_samples`` into write blocks of one shard each; the last may be short.

    Examples
    --------
    >>> [(b.index, b.start, b.stop) for b in plan_blocks(5, 2)]
    [(0, 0, 2), (1, 2, 4), (2, 4, 5)]
    >>> plan_blocks(0, 2)
    []
    """
    if n_samples < 0 or shard_samples < 1:
        raise ValueError(f"need n_samples >= 0 and shard_samples >= 1, got {n_samples}, {shard_samples}")
    return [
        Block(i, start, min(start + shard_samples, n_samples))
        for i, start in enumerate(range(0, n_samples, shard_samples))
    ]


def plan_axis_blocks(axes: dict[str, tuple[int, int]]) -> list[Block]:
    """Write blocks of a store with several leading axes: ``{axis: (length, shard length)}``, axes in order.

    Blocks are numbered across the whole store, the axes one after the other; each block's ``shard`` counts
    along its own axis.

    Examples
    --------
    >>> blocks = plan_axis_blocks({"sample": (3, 2), "image": (2, 1)})
    >>> [(b.index, b.axis, b.shard, b.start, b.stop) for b in blocks]
    [(0, 'sample', 0, 0, 2), (1, 'sample', 1, 2, 3), (2, 'image', 0, 0, 1), (3, 'image', 1, 1, 2)]
    """
    blocks: list[Block] = []
    for axis, (length, shard_length) in axes.items():
        for b in plan_blocks(length, shard_length):
            blocks.append(Block(len(blocks), b.start, b.stop, axis, b.shard))
    return blocks
