"""sample_grid and plan_blocks: examples and properties against brute force."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from storage.layout import Block, MiB, SampleGrid, plan_blocks, sample_grid


def test_sample_grid_examples() -> None:
    assert sample_grid(128 * 128 * 4) == SampleGrid(chunk_samples=64, shard_samples=2048)
    assert sample_grid(10 * MiB).chunk_samples == 1
    assert sample_grid(10 * MiB) == SampleGrid(1, 12)  # 12 × 10 MiB fit in 128 MiB
    assert sample_grid(200 * MiB) == SampleGrid(1, 1)  # one sample larger than a shard is a shard of its own
    assert sample_grid(1) == SampleGrid(4 * MiB, 128 * MiB)
    assert sample_grid(3, chunk_bytes=10, shard_bytes=25) == SampleGrid(3, 6)  # 9-byte chunks, 2 per 25 bytes
    assert sample_grid(100, chunk_bytes=1000, shard_bytes=500) == SampleGrid(10, 10)


def test_sample_grid_properties() -> None:
    grid = SampleGrid(4, 12)
    assert grid.chunks_per_shard == 3


@pytest.mark.parametrize(
    "args, kwargs",
    [((0,), {}), ((-5,), {}), ((10,), {"chunk_bytes": 0}), ((10,), {"shard_bytes": 0})],
)
def test_sample_grid_rejects_non_positive_sizes(args: tuple[int, ...], kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError, match=">= 1"):
        sample_grid(*args, **kwargs)


@pytest.mark.parametrize("chunk, shard", [(0, 4), (4, 0), (-1, 4), (3, 4), (4, 6)])
def test_sample_grid_validates(chunk: int, shard: int) -> None:
    with pytest.raises(ValueError, match=r"chunk|shard"):
        SampleGrid(chunk, shard)


def test_plan_blocks_examples() -> None:
    assert plan_blocks(5, 2) == [Block(0, 0, 2), Block(1, 2, 4), Block(2, 4, 5)]
    assert plan_blocks(4, 2) == [Block(0, 0, 2), Block(1, 2, 4)]
    assert plan_blocks(0, 2) == []
    assert plan_blocks(3, 100) == [Block(0, 0, 3)]
    assert [b.size for b in plan_blocks(7, 3)] == [3, 3, 1]


@pytest.mark.parametrize("n, shard", [(-1, 2), (5, 0), (5, -2)])
def test_plan_blocks_rejects(n: int, shard: int) -> None:
    with pytest.raises(ValueError, match="n_samples"):
        plan_blocks(n, shard)


@given(st.integers(0, 5000), st.integers(1, 700))
def test_blocks_partition_the_samples_in_order(n: int, shard: int) -> None:
    blocks = plan_blocks(n, shard)
    assert len(blocks) == -(-n // shard)
    assert [b.index for b in blocks] == list(range(len(blocks)))
    covered = [i for b in blocks for i in range(b.start, b.stop)]
    assert covered == list(range(n))  # a partition of [0, n), in order
    assert all(0 < b.size <= shard for b in blocks)
    assert all(b.size == shard for b in blocks[:-1])  # only the last may be short
    assert all(b.start == b.index * shard for b in blocks)  # block i is exactly shard i


@given(st.integers(1, 64 * MiB), st.integers(1, 8 * MiB), st.integers(1, 256 * MiB))
def test_sample_grid_against_brute_force(sample: int, chunk_bytes: int, shard_bytes: int) -> None:
    grid = sample_grid(sample, chunk_bytes=chunk_bytes, shard_bytes=shard_bytes)
    assert grid.shard_samples % grid.chunk_samples == 0
    assert grid.chunks_per_shard >= 1
    # chunk: the most whole samples that fit (at least one)
    assert grid.chunk_samples == 1 or grid.chunk_samples * sample <= chunk_bytes
    assert (grid.chunk_samples + 1) * sample > chunk_bytes
    # shard: the most whole chunks that fit (at least one)
    chunk_nbytes = grid.chunk_samples * sample
    assert grid.chunks_per_shard == 1 or grid.shard_samples * sample <= shard_bytes
    assert (grid.chunks_per_shard + 1) * chunk_nbytes > shard_bytes


@given(st.integers(1, 10**6), st.integers(1, 4 * MiB), st.integers(0, 10**5))
def test_blocks_of_a_grid_hold_whole_chunks(sample: int, chunk_bytes: int, n: int) -> None:
    grid = sample_grid(sample, chunk_bytes=chunk_bytes, shard_bytes=16 * chunk_bytes)
    blocks = plan_blocks(n, grid.shard_samples)
    # every block but the last is a whole number of chunks, so chunks never straddle two blocks
    assert all(b.size % grid.chunk_samples == 0 and b.start % grid.chunk_samples == 0 for b in blocks[:-1])
    if blocks:
        assert blocks[-1].start % grid.chunk_samples == 0
