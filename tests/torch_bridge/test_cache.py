from __future__ import annotations

import numpy as np
import pytest

from torch_bridge import ChunkCache


def chunk(value: int, n: int = 10) -> np.ndarray:
    return np.full(n, value, dtype="int64")  # 80 bytes


def test_hit_does_not_call_the_loader() -> None:
    cache = ChunkCache(1000)
    first = cache.get(("a", 0), lambda: chunk(1))
    second = cache.get(("a", 0), lambda: pytest.fail("loader called on a hit"))
    assert second is first
    assert cache.stats == {
        "hits": 1,
        "misses": 1,
        "decodes": 1,
        "evictions": 0,
        "prefetched": 0,
        "nbytes": 80,
        "entries": 1,
    }


def test_keys_are_distinct_per_array_and_chunk() -> None:
    cache = ChunkCache(1000)
    for key, value in [(("a", 0), 1), (("a", 1), 2), (("b", 0), 3)]:
        cache.get(key, lambda v=value: chunk(v))
    assert [int(cache.get(k, lambda: chunk(-1))[0]) for k in [("a", 0), ("a", 1), ("b", 0)]] == [1, 2, 3]
    assert cache.stats["decodes"] == 3


def test_evicts_least_recently_used_by_bytes() -> None:
    cache = ChunkCache(3 * 80)
    for k in range(3):
        cache.get(k, lambda k=k: chunk(k))
    cache.get(0, lambda: chunk(-1))  # touch 0: 1 is now the oldest
    cache.get(3, lambda: chunk(3))
    assert 1 not in cache and {0, 2, 3} <= {k for k in range(4) if k in cache}
    assert cache.nbytes == 240 and len(cache) == 3 and cache.stats["evictions"] == 1


def test_evicts_as_many_as_needed_for_a_big_chunk() -> None:
    cache = ChunkCache(200)
    cache.get(0, lambda: chunk(0))
    cache.get(1, lambda: chunk(1))
    cache.get(2, lambda: chunk(2, n=20))  # 160 bytes: both others must go
    assert len(cache) == 1 and cache.nbytes == 160 and cache.stats["evictions"] == 2


def test_chunk_larger_than_capacity_is_returned_not_kept() -> None:
    cache = ChunkCache(50)
    assert cache.get(0, lambda: chunk(7))[0] == 7
    assert len(cache) == 0 and cache.nbytes == 0
    cache.get(0, lambda: chunk(7))
    assert cache.stats["decodes"] == 2


def test_zero_capacity_disables_caching() -> None:
    cache = ChunkCache(0)
    for _ in range(3):
        cache.get(0, lambda: chunk(0))
    assert cache.stats["decodes"] == 3 and cache.stats["hits"] == 0


def test_cached_chunks_are_read_only() -> None:
    cache = ChunkCache(1000)
    value = cache.get(0, lambda: chunk(0))
    with pytest.raises(ValueError, match="read-only"):
        value[0] = 1


def test_clear_resets_everything() -> None:
    cache = ChunkCache(1000)
    cache.get(0, lambda: chunk(0))
    cache.get(0, lambda: chunk(0))
    cache.clear()
    assert len(cache) == 0
    assert cache.stats == {
        "hits": 0,
        "misses": 0,
        "decodes": 0,
        "evictions": 0,
        "prefetched": 0,
        "nbytes": 0,
        "entries": 0,
    }


def test_negative_capacity_is_refused() -> None:
    with pytest.raises(ValueError, match="capacity_bytes"):
        ChunkCache(-1)


def test_spare_hands_out_evicted_memory_once_unreferenced() -> None:
    cache = ChunkCache(80, spares=2)
    first = cache.get(0, lambda: chunk(0, 11)[:10])  # a view, as ChunkReader returns them
    owner = id(first.base)  # an id, not a reference: a referenced buffer is never handed out
    assert cache.spare((11,), np.dtype("int64")) is None  # nothing evicted yet
    cache.get(1, lambda: chunk(1))  # evicts chunk 0, whose view ``first`` is still held here
    assert cache.spare((11,), np.dtype("int64")) is None
    del first
    assert cache.spare((10,), np.dtype("int64")) is None  # the wrong shape
    assert cache.spare((11,), np.dtype("float64")) is None  # the wrong dtype
    spare = cache.spare((11,), np.dtype("int64"))
    assert spare is not None and id(spare) == owner and spare.flags.writeable
    assert cache.spare((11,), np.dtype("int64")) is None  # handed out once


def test_spares_are_bounded() -> None:
    cache = ChunkCache(80, spares=2)
    for k in range(6):
        cache.get(k, lambda k=k: chunk(k))
    taken = [cache.spare((10,), np.dtype("int64")) for _ in range(3)]
    assert [t is not None for t in taken] == [True, True, False]
    assert [int(t[0]) for t in taken if t is not None] == [3, 4]  # the most recently evicted


def test_no_spares_when_disabled() -> None:
    cache = ChunkCache(80, spares=0)
    cache.get(0, lambda: chunk(0))
    cache.get(1, lambda: chunk(1))
    assert cache.spare((10,), np.dtype("int64")) is None
