"""An LRU cache of decoded chunks, bounded in bytes, one per process."""

from __future__ import annotations

import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import Executor, Future

import numpy as np

__all__ = ["ChunkCache"]


class ChunkCache:
    """Keep recently decoded chunks in memory, evicting the least recently used beyond ``capacity_bytes``.

    Keys are any hashable, by convention ``(array name, chunk index)``. A chunk larger than the whole capacity is
    returned but not kept. Cached arrays are made read-only so that a caller cannot change what later callers get.

    The memory of evicted chunks is kept for reuse (at most ``spares`` buffers, beside the capacity): a loader
    can decode into :meth:`spare` instead of fresh memory, whose page faults cost as much as decoding LZ4. A buffer
    is handed out only once nothing else references it.

    Parameters
    ----------
    capacity_bytes : int
        Most bytes of decoded chunks kept at once; ``0`` disables caching.
    spares : int
        Most evicted buffers kept for :meth:`spare`.

    Attributes
    ----------
    stats : dict of str to int
        ``hits``, ``misses``, ``decodes`` (calls of a loader), ``evictions``, ``prefetched`` (decodes started
        ahead of use by :meth:`prefetch`), and the current ``nbytes`` and ``entries``.

    Examples
    --------
    >>> import numpy as np
    >>> cache = ChunkCache(capacity_bytes=100)
    >>> a = cache.get(("x", 0), lambda: np.zeros(10, "int64"))  # 80 bytes: decoded and kept
    >>> b = cache.get(("x", 0), lambda: np.ones(10, "int64"))  # a hit: the loader is not called
    >>> bool(b.sum() == 0), cache.stats["hits"], cache.stats["decodes"]
    (True, 1, 1)
    >>> _ = cache.get(("x", 1), lambda: np.zeros(10, "int64"))  # does not fit beside chunk 0: evicts it
    >>> ("x", 0) in cache, cache.stats["evictions"]
    (False, 1)
    """

    def __init__(self, capacity_bytes: int, spares: int = 2) -> None:
        if capacity_bytes < 0:
            raise ValueError(f"capacity_bytes must be >= 0, got {capacity_bytes}")
        self.capacity_bytes = int(capacity_bytes)
        self.spares = int(spares)
        self._spares: list[np.ndarray] = []  # memory of evicted chunks (the arrays owning it)
        self._entries: OrderedDict[Hashable, np.ndarray] = OrderedDict()
        self._nbytes = 0
        self._lock = threading.Lock()
        self._counts = {"hits": 0, "misses": 0, "decodes": 0, "evictions": 0, "prefetched": 0}
        self._pending: dict[Hashable, Future[np.ndarray]] = {}  # chunks a prefetch thread is decoding

    def __repr__(self) -> str:
        return (
            f"ChunkCache(capacity_bytes={self.capacity_bytes}, entries={len(self._entries)}, "
            f"nbytes={self._nbytes})"
        )

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    @property
    def nbytes(self) -> int:
        """Bytes of the chunks held now."""
        return self._nbytes

    @property
    def stats(self) -> dict[str, int]:
        """Counters since creation (or :meth:`clear`), and the current size."""
        return {**self._counts, "nbytes": self._nbytes, "entries": len(self._entries)}

    def get(self, key: Hashable, loader_fn: Callable[[], np.ndarray]) -> np.ndarray:
        """Return the chunk under ``key``, calling ``loader_fn()`` to decode it on a miss.

        Parameters
        ----------
        key : hashable
            Usually ``(array name, chunk index)``.
        loader_fn : callable
            Returns the decoded chunk as a numpy array; called only on a miss.

        Returns
        -------
        numpy.ndarray
            The chunk, read-only when it is kept in the cache.
        """
        with self._lock:
            value = self._entries.get(key)
            if value is not None:
                self._entries.move_to_end(key)
                self._counts["hits"] += 1
                return value
            pending = self._pending.get(key)
            if pending is None:
                self._counts["misses"] += 1
                # Threads that want this chunk meanwhile wait for this decode instead of repeating it.
                pending = self._pending[key] = Future()
                mine = True
            else:
                mine = False
        if not mine:  # being decoded by a prefetch or another thread: wait for it rather than decode it twice
            return pending.result()
        try:
            value = self._store(key, loader_fn())  # decode outside the lock
        except BaseException as e:
            pending.set_exception(e)
            raise
        else:
            pending.set_result(value)
            return value
        finally:
            with self._lock:
                self._pending.pop(key, None)

    def prefetch(self, key: Hashable, loader_fn: Callable[[], np.ndarray], executor: Executor) -> None:
        """Decode ``key`` on ``executor`` unless it is cached or already on its way; :meth:`get` waits for it."""
        with self._lock:
            if key in self._entries or key in self._pending or self.capacity_bytes == 0:
                return
            self._counts["prefetched"] += 1
            self._pending[key] = executor.submit(self._load, key, loader_fn)

    def _load(self, key: Hashable, loader_fn: Callable[[], np.ndarray]) -> np.ndarray:
        try:
            return self._store(key, loader_fn())
        finally:
            with self._lock:
                self._pending.pop(key, None)

    def _store(self, key: Hashable, value: np.ndarray) -> np.ndarray:
        with self._lock:
            self._counts["decodes"] += 1
            if value.nbytes > self.capacity_bytes or key in self._entries:
                return value
            value.flags.writeable = False
            self._entries[key] = value
            self._nbytes += value.nbytes
            while self._nbytes > self.capacity_bytes:
                _, old = self._entries.popitem(last=False)
                self._nbytes -= old.nbytes
                self._counts["evictions"] += 1
                owner = old if old.base is None else old.base
                if isinstance(owner, np.ndarray) and owner.base is None and self.spares:
                    self._spares = [*self._spares[-(self.spares - 1) :], owner] if self.spares > 1 else [owner]
        return value

    def spare(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray | None:  # type: ignore[type-arg]
        """An evicted chunk's memory of this ``shape`` and ``dtype`` that nothing references any more, or None.

        The caller owns it from then on (typically to decode the next chunk into it).
        """
        with self._lock:
            for i in range(len(self._spares)):
                buf = self._spares[i]
                # References: the list, ``buf`` and getrefcount's argument; any more is a view still in use.
                if buf.shape == shape and buf.dtype == dtype and sys.getrefcount(buf) == 3:
                    del self._spares[i]
                    buf.flags.writeable = True
                    return buf
        return None

    def clear(self) -> None:
        """Drop every chunk and reset the counters."""
        with self._lock:
            self._entries.clear()
            self._spares.clear()
            self._nbytes = 0
            self._counts = dict.fromkeys(self._counts, 0)
