"""Cluster profiles: ``local`` (the embedded default), ``slurm`` (dask-jobqueue), or a scheduler's address."""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

from distributed import Client, LocalCluster

from . import config
from .errors import ClusterError

__all__ = ["connect", "describe_profile"]

log = logging.getLogger(__name__)


def describe_profile(cluster: str | None = None) -> str:
    """Name the profile ``cluster`` resolves to (after dask config), e.g. ``"local"``.

    Raises
    ------
    ClusterError
        For a profile that does not exist (checked before anything is written).
    """
    profile = str(config.get("cluster", cluster))
    if profile == "slurm":
        from .slurm import check_sbatch, slurm_settings

        slurm_settings()  # every setting checked before anything is submitted or written
        check_sbatch()
        return profile
    if profile != "local" and ":" not in profile:
        raise ClusterError(
            f"unknown cluster {profile!r}: use local, slurm, or a scheduler address tcp://host:port"
        )
    return profile


@contextmanager
def connect(cluster: str | None = None, *, gil_bound: bool = False) -> Iterator[Client]:
    """Start or reach the cluster of a profile and yield a client; close what was started on exit.

    Parameters
    ----------
    cluster : str, optional
        ``"local"`` (default from ``zarrforge.cluster``) starts a distributed ``LocalCluster`` sized to this
        machine with its dashboard on loopback; ``"slurm"`` starts worker jobs through dask-jobqueue from the
        ``zarrforge.slurm`` settings (see :mod:`engine.slurm`) and cancels them on exit, also on an error or
        Ctrl-C; ``"tcp://host:port"`` (or ``host:port``) connects to a running scheduler.
    gil_bound : bool
        The work holds the GIL (e.g. scikit-image's resizing): a local cluster uses worker processes unless
        ``zarrforge.local.processes`` says otherwise.

    Yields
    ------
    distributed.Client
    """
    profile = describe_profile(cluster)
    if profile == "local":
        with _local_cluster(gil_bound) as lc, Client(lc, set_as_default=False) as client:
            log.info("dashboard: %s", client.dashboard_link)
            yield client
    elif profile == "slurm":
        from .slurm import slurm_cluster, slurm_settings, wait_for_workers

        settings = slurm_settings()
        with slurm_cluster(settings) as sc, Client(sc, set_as_default=False) as client:
            log.info("dashboard: %s", client.dashboard_link)
            wait_for_workers(client, settings)
            yield client
    else:
        try:
            client = Client(profile, timeout="10s", set_as_default=False)
        except OSError as e:
            raise ClusterError(f"cannot reach a Dask scheduler at {profile}: {e}") from None
        with client:
            log.info("connected to %s; dashboard: %s", profile, client.dashboard_link)
            yield client


@contextmanager
def _local_cluster(gil_bound: bool = False) -> Iterator[LocalCluster]:
    setting = config.get("local.processes")
    processes = gil_bound if setting is None else bool(setting)
    if not processes:
        keep_freed_memory(config.get("local.malloc-keep-bytes"))
    cores = os.cpu_count() or 1
    n_workers = config.get("local.n-workers") or (cores if processes else 1)
    threads = config.get("local.threads-per-worker") or (1 if processes else cores)
    with LocalCluster(
        n_workers=int(n_workers),
        threads_per_worker=int(threads),
        processes=processes,
        memory_limit=config.get("local.memory-limit"),
        # TCP on loopback only, also without worker processes, so the dashboard link names 127.0.0.1.
        protocol="tcp://",
        host="127.0.0.1",
        dashboard_address=str(config.get("local.dashboard-address")),
        silence_logs=logging.WARNING,
    ) as lc:
        yield lc


def keep_freed_memory(nbytes: int | None) -> bool:
    """Let glibc keep up to ``nbytes`` of freed heap in this process instead of returning it to the system.

    Every block of a pipeline allocates and frees arrays of tens of MiB. glibc returns freed memory at the top
    of the heap to the system beyond 128 KiB, so the next block faults in fresh pages, which on the VMs this was
    measured on cost as much as encoding them (``benchmarks/bench_picking.py``: a virtual picking build 10-15%
    faster, a materialized one up to 20%, with a 256 MiB threshold; peak RSS about 50 MiB higher). Only for
    workers that run as threads of this process; ``None`` or 0 leaves glibc's defaults. Returns whether it was
    applied (False off glibc).
    """
    if not nbytes:
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_top_pad = -1, -2  # glibc's mallopt parameters
    applied = bool(libc.mallopt(m_trim_threshold, int(nbytes))) and bool(libc.mallopt(m_top_pad, int(nbytes) // 4))
    log.debug("glibc keeps up to %d bytes of freed heap: %s", nbytes, applied)
    return applied
