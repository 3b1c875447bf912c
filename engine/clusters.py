"""Cluster profiles: ``local`` (the embedded default), ``slurm`` (dask-jobqueue), or a scheduler's address."""

from __future__ import annotations

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
def connect(cluster: str | None = None) -> Iterator[Client]:
    """Start or reach the cluster of a profile and yield a client; close what was started on exit.

    Parameters
    ----------
    cluster : str, optional
        ``"local"`` (default from ``zarrforge.cluster``) starts a distributed ``LocalCluster`` sized to this
        machine with its dashboard on loopback; ``"slurm"`` starts worker jobs through dask-jobqueue from the
        ``zarrforge.slurm`` settings (see :mod:`engine.slurm`) and cancels them on exit, also on an error or
        Ctrl-C; ``"tcp://host:port"`` (or ``host:port``) connects to a running scheduler.

    Yields
    ------
    distributed.Client
    """
    profile = describe_profile(cluster)
    if profile == "local":
        with _local_cluster() as lc, Client(lc, set_as_default=False) as client:
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
def _local_cluster() -> Iterator[LocalCluster]:
    processes = bool(config.get("local.processes"))
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
