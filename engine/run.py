"""Execute a lazy dataset into a training store block by block, with progress, retries and resume."""

from __future__ import annotations

import errno
import itertools
import logging
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xarray as xr
from dask.base import tokenize
from dask.core import get_dependencies
from dask.highlevelgraph import HighLevelGraph
from distributed import Client, as_completed

from storage.errors import StoreError, ZarrforgeError
from storage.layout import Block
from storage.store import TrainingStore

from . import config
from .errors import RunError

__all__ = ["RunSummary", "write_dataset"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunSummary:
    """What a run did: counts, bytes and time, and each worker's peak memory against its limit.

    ``workers`` maps a worker's name to ``{"peak_rss": bytes, "memory_limit": bytes or None}``: the most memory
    its process held (the operating system's high-water mark, exact, since the process started; with a
    process-less cluster, the whole client process's) and the limit its nanny enforces.
    """

    store: str
    samples: int
    blocks_total: int
    blocks_written: int
    blocks_skipped: int
    nbytes: int
    nbytes_on_disk: int
    seconds: float
    workers: dict[str, dict[str, int | None]] = field(default_factory=dict)

    def line(self) -> str:
        """One line for the terminal, e.g. ``wrote 1,800 samples (112.5 MiB, 55.1 MiB on disk) in 3.2 s ...``."""
        if self.blocks_written == 0:
            return f"{self.store}: complete, nothing to do ({self.samples:,} samples, {self.blocks_total} blocks)"
        samples_written = self.samples * self.blocks_written // max(self.blocks_total, 1)
        resumed = f", {self.blocks_skipped} blocks already done" if self.blocks_skipped else ""
        memory = f"; {self.memory_line()}" if self.workers else ""
        return (
            f"wrote {samples_written:,} samples ({_mib(self.nbytes)}, {_mib(self.nbytes_on_disk)} on disk) "
            f"in {self.seconds:.1f} s: {_per_second(samples_written, self.seconds)} samples/s, "
            f"{_per_second(self.nbytes / 2**20, self.seconds)} MiB/s{resumed}{memory} -> {self.store}"
        )

    def memory_line(self) -> str:
        """Peak memory per worker against its limit, e.g. ``peak RSS per worker 212, 205 MiB (limit 300 MiB)``.

        Examples
        --------
        >>> s = RunSummary("t.zarr", 10, 2, 2, 0, 80, 40, 1.0, workers={
        ...     "0": {"peak_rss": 212 * 2**20, "memory_limit": 300 * 2**20},
        ...     "1": {"peak_rss": 205 * 2**20, "memory_limit": 300 * 2**20}})
        >>> s.memory_line()
        'peak RSS per worker 212, 205 MiB (limit 300 MiB)'
        """
        peaks = [w["peak_rss"] or 0 for _, w in sorted(self.workers.items())]
        limits = {w["memory_limit"] for w in self.workers.values()}
        limit = f" (limit {_mib_number(limits.pop())} MiB)" if len(limits) == 1 and None not in limits else ""
        if len(peaks) > 4:  # a large cluster: the worst worker says enough on one line
            return f"peak RSS {_mib_number(max(peaks))} MiB on the fullest of {len(peaks)} workers{limit}"
        return f"peak RSS per worker {', '.join(_mib_number(p) for p in peaks)} MiB{limit}"

    def as_dict(self) -> dict[str, Any]:
        """The summary as JSON-clean values."""
        return dict(self.__dict__)


def _per_second(amount: float, seconds: float) -> str:
    """A rate with the digits it needs: ``1,234``, ``12.3``, ``0.00833`` (a slow pipeline makes a sample a minute).

    Examples
    --------
    >>> _per_second(2468, 2), _per_second(37, 3), _per_second(1, 120)
    ('1,234', '12.3', '0.00833')
    """
    rate = amount / max(seconds, 1e-9)
    return f"{rate:,.0f}" if rate >= 100 else f"{rate:.3g}"


def _mib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _mib_number(n: int | None) -> str:
    return f"{(n or 0) / 2**20:,.0f}"


def write_dataset(
    ds: xr.Dataset,
    store: TrainingStore,
    client: Client,
    *,
    progress: bool | None = None,
    retries: int | None = None,
    max_in_flight: int | None = None,
) -> RunSummary:
    """Compute every unfinished block of ``ds`` on ``client`` and write it into ``store``.

    Each block is one task named ``store-write`` that computes one shard's worth of samples of every variable,
    writes them, and marks the block done in the store's ledger. Blocks already marked are skipped, so a re-run
    after a crash recomputes nothing that was finished. Blocks are submitted in a sliding window, so memory
    stays bounded however large the input is.

    Parameters
    ----------
    ds : xarray.Dataset
        Lazy variables whose sample chunks are the store's shards (as the graphs build them).
    store : TrainingStore
        Created with :meth:`TrainingStore.open_for_writing` for the same variables.
    client : distributed.Client
        Where to run.
    progress : bool, optional
        Show a progress bar; default (``zarrforge.run.progress: auto``): only on a terminal.
    retries, max_in_flight : int, optional
        Per-block retries and blocks in flight; default from ``zarrforge.run``.

    Returns
    -------
    RunSummary
    """
    start_time = time.perf_counter()
    blocks = store.blocks()
    done = store.done_blocks()
    todo = [b for b in blocks if b.index not in done]
    _check_chunks(ds, blocks)
    retries = int(config.get("run.retries", retries))
    n_threads = sum(client.nthreads().values()) or 1
    max_in_flight = int(config.get("run.max-in-flight", max_in_flight) or 2 * n_threads)

    names = list(ds.data_vars)
    arrays = [ds[name].data for name in names]
    axes = {name: str(ds[name].dims[0]) for name in names}
    writes = f"store-write-{tokenize(store.path, *(a.name for a in arrays))}"
    layer = {}
    for block in todo:
        # A block writes one shard of every array on its leading axis (the samples, or e.g. the micrographs).
        on_axis = [(name, a) for name, a in zip(names, arrays, strict=True) if axes[name] == block.axis]
        layer[(writes, block.index)] = (
            _BlockWriter(store, block, tuple(name for name, _ in on_axis)),
            *[(a.name, block.shard, *(0,) * (a.ndim - 1)) for _, a in on_axis],
        )
    # Materialize the graph once, without optimization (fusion would rename the steps the dashboard shows:
    # read-mrc, patches-extract, store-write), then submit each block with just the tasks it needs.
    graph = dict(HighLevelGraph.from_collections(writes, layer, dependencies=arrays)) if todo else {}

    def submit(block: Block) -> Any:
        key = (writes, block.index)
        return client.get(_closure(graph, key), key, sync=False, retries=retries)

    bar = _progress_bar(len(blocks), len(done), progress)
    written = nbytes = 0
    pending = iter(todo)
    futures = as_completed(loop=client.loop)
    try:
        for block in itertools.islice(pending, max_in_flight):
            futures.add(submit(block))
        for future in futures:
            try:
                result = future.result()
                if isinstance(result, _BlockFailure):
                    raise StoreError(result.message)
                nbytes += result
            except ZarrforgeError:
                raise
            except Exception as e:
                raise RunError(f"{store.path}: a block failed: {type(e).__name__}: {e}") from e
            finally:
                future.release()
            written += 1
            bar.update(1)
            if (block := next(pending, None)) is not None:
                futures.add(submit(block))
    except BaseException:
        for future in list(futures.futures):
            future.cancel()
        raise
    finally:
        bar.close()
    workers = _worker_memory(client)
    for name, w in sorted(workers.items()):
        log.info("worker %s: peak RSS %s MiB, limit %s MiB", name, *map(_mib_number, w.values()))
    return RunSummary(
        store=str(store.path),
        samples=int(store.attrs["n_samples"]),
        blocks_total=len(blocks),
        blocks_written=written,
        blocks_skipped=len(done),
        nbytes=nbytes,
        nbytes_on_disk=store.nbytes_on_disk(),
        seconds=time.perf_counter() - start_time,
        workers=workers,
    )


def _worker_memory(client: Client) -> dict[str, dict[str, int | None]]:
    """Each worker's peak RSS and memory limit, asked once at the end of a run (one message per worker)."""
    try:
        answers = client.run(_peak_rss_and_limit, on_error="return")
    except Exception as e:  # a worker lost at the very end: the summary goes without, the store is fine
        log.debug("could not ask the workers for their peak memory: %s", e)
        return {}
    return {name: info for name, info in answers.values() if not isinstance(info, BaseException)}


def _peak_rss_and_limit(dask_worker: Any) -> tuple[str, dict[str, int | None]]:
    """On a worker: its name, and its process's peak resident memory and its memory limit in bytes."""
    limit = getattr(getattr(dask_worker, "memory_manager", None), "memory_limit", None)
    return str(dask_worker.name), {"peak_rss": _peak_rss(), "memory_limit": int(limit) if limit else None}


def _peak_rss() -> int | None:
    """The calling process's peak resident memory in bytes: the kernel's high-water mark, exact and free."""
    # Linux: VmHWM, not getrusage's ru_maxrss, which a spawned worker inherits from the process that forked it
    # (a worker started by a 500 MB client reports at least 500 MB there).
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import resource
    except ImportError:  # Windows
        return None
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(maxrss if sys.platform == "darwin" else maxrss * 1024)  # bytes on macOS, KiB elsewhere


def _closure(graph: Mapping[Any, Any], key: Any) -> dict[Any, Any]:
    """The tasks ``key`` depends on, transitively, and ``key`` itself."""
    sub, stack = {}, [key]
    while stack:
        k = stack.pop()
        if k in sub:
            continue
        sub[k] = graph[k]
        stack.extend(get_dependencies(graph, k))
    return sub


@dataclass(frozen=True)
class _BlockFailure:
    """A block's write failed for a reason a retry cannot fix; :func:`write_dataset` raises it as a StoreError."""

    message: str


#: Write errors no retry fixes: retrying would only log the same traceback on a worker ``retries`` more times.
_PERMANENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})


class _BlockWriter:
    """The ``store-write`` task of one block: write every array's samples, then mark the block done."""

    def __init__(self, store: TrainingStore, block: Block, names: tuple[str, ...]) -> None:
        self.store, self.block, self.names = store, block, names

    def __call__(self, *arrays: np.ndarray) -> int | _BlockFailure:
        try:
            return self.store.write_block(self.block, dict(zip(self.names, arrays, strict=True)))
        except StoreError as e:
            cause = e.__cause__
            if isinstance(cause, OSError) and cause.errno not in _PERMANENT_ERRNOS:
                raise  # maybe passing (EIO on a network filesystem): dask retries the block
            # A full disk or a block of the wrong shape: returned, not raised, so it is not retried.
            return _BlockFailure(str(e))


def _check_chunks(ds: xr.Dataset, blocks: list[Block]) -> None:
    for name in ds.data_vars:
        var = ds[name]
        axis = str(var.dims[0])
        expected = tuple(b.size for b in blocks if b.axis == axis)
        got = tuple(var.data.chunks[0])
        if got != expected or any(len(c) != 1 for c in var.data.chunks[1:]):
            raise RunError(
                f"variable {name!r} is chunked {got[:3]}... on {axis!r}, not on the store's shards "
                "(and must be whole along its other dims)"
            )


class _LogProgress:
    """Progress as log lines every 10% (CI logs, pipes)."""

    def __init__(self, total: int, initial: int) -> None:
        self.total, self.n, self.next_report = total, initial, 0.1
        self.start = time.perf_counter()

    def update(self, n: int) -> None:
        self.n += n
        frac = self.n / max(self.total, 1)
        if frac >= self.next_report:
            log.info("%d/%d blocks (%.0f%%) after %.1f s", self.n, self.total, 100 * frac, self._elapsed())
            while self.next_report <= frac:
                self.next_report += 0.1

    def _elapsed(self) -> float:
        return time.perf_counter() - self.start

    def close(self) -> None:
        pass


def _progress_bar(total: int, initial: int, progress: bool | None) -> Any:
    setting = config.get("run.progress", progress)
    show = sys.stderr.isatty() if setting == "auto" else bool(setting)
    if show:
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=initial, unit="block", desc="writing", file=sys.stderr)
    return _LogProgress(total, initial)
