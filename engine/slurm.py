"""The ``slurm`` cluster profile: dask-jobqueue's ``SLURMCluster``, set up and checked from ``zarrforge.slurm``.

Every value that ends up in the job script (job name, queue, account, walltime, memory, extra ``#SBATCH``
directives, directories) is validated here first: the script is a bash script, so a newline or a shell
character in any of them would run as a command on the compute node.
"""

from __future__ import annotations

import logging
import re
import shutil
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask.utils

from . import config
from .errors import ClusterError

__all__ = ["SlurmSettings", "job_script", "slurm_cluster", "slurm_settings"]

log = logging.getLogger(__name__)

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_PARTITIONS = re.compile(r"[A-Za-z0-9._-]+(,[A-Za-z0-9._-]+)*")
_WALLTIME = re.compile(r"(?:(\d+)-)?(\d+)(?::(\d{1,2}))?(?::(\d{1,2}))?")
# An sbatch option: -x, --long, --long=value; values without spaces, quotes or shell characters.
_DIRECTIVE = re.compile(r"--?[A-Za-z][A-Za-z0-9-]*(?:[= ][A-Za-z0-9_.,:=@%/+-]+)?")
_PATH = re.compile(r"[A-Za-z0-9_.,:@%/+~-]+")
# Placeholder scheduler of a dry run: nothing is started to print a job script.
_DRY_RUN_SCHEDULER = "tcp://SCHEDULER-ADDRESS:8786"


@dataclass(frozen=True)
class SlurmSettings:
    """The settings of a SLURM cluster, validated; see ``zarrforge.slurm`` in ``engine/zarrforge.yaml``."""

    jobs: int
    cores: int
    processes: int
    memory: str
    walltime: str
    queue: str | None
    account: str | None
    job_name: str
    job_extra: tuple[str, ...]
    minimum_jobs: int
    maximum_jobs: int
    lifetime: str
    interface: str | None
    dashboard_address: str
    log_directory: str | None
    local_directory: str | None
    timeout: float

    @property
    def walltime_seconds(self) -> int:
        """The walltime in seconds."""
        return _walltime_seconds(self.walltime)


def slurm_settings(overrides: Mapping[str, Any] | None = None) -> SlurmSettings:
    """Read ``zarrforge.slurm`` from dask config, apply ``overrides`` (same keys) and validate everything.

    Parameters
    ----------
    overrides : mapping, optional
        Keys of ``zarrforge.slurm`` (``jobs``, ``cores``, ``memory``, ``job-name``, ...), e.g. from CLI options;
        ``None`` values are ignored.

    Returns
    -------
    SlurmSettings

    Raises
    ------
    ClusterError
        A value that SLURM or the job script cannot take safely, naming the setting.

    Examples
    --------
    >>> s = slurm_settings({"jobs": 3, "walltime": "02:00:00"})
    >>> s.jobs, s.minimum_jobs, s.maximum_jobs, s.lifetime
    (3, 3, 3, '6900s')
    >>> try:
    ...     slurm_settings({"job-name": "x; rm -rf ~"})
    ... except ClusterError as e:
    ...     print(e)  # doctest: +ELLIPSIS
    zarrforge.slurm.job-name 'x; rm -rf ~' is not a valid job name: use letters, digits, ...
    """
    given = {k: v for k, v in (overrides or {}).items() if v is not None}

    def get(key: str) -> Any:
        return given[key] if key in given else config.get(f"slurm.{key}")

    jobs = _positive_int("jobs", get("jobs"))
    adaptive = get("adaptive") or {}
    minimum = adaptive.get("minimum")
    minimum = _positive_int("adaptive.minimum", jobs if minimum is None else minimum, zero=True)
    maximum = adaptive.get("maximum")
    maximum = _positive_int("adaptive.maximum", max(jobs, minimum) if maximum is None else maximum)
    if minimum > maximum:
        raise ClusterError(f"zarrforge.slurm.adaptive: minimum {minimum} is larger than maximum {maximum}")
    walltime = str(get("walltime"))
    seconds = _walltime_seconds(walltime)
    lifetime = get("lifetime")
    if lifetime is None:
        # Workers retire (handing their tasks over) before SLURM kills the job at its walltime
        # (dask-jobqueue#122): 5 minutes before it, or at 80% of a short walltime.
        lifetime = f"{max(seconds - 300, int(seconds * 0.8))}s"
    else:
        lifetime = str(lifetime)
        try:
            life = dask.utils.parse_timedelta(lifetime)
        except (ValueError, KeyError):
            raise ClusterError(f"zarrforge.slurm.lifetime {lifetime!r} is not a duration (e.g. 55m)") from None
        if life is None or life >= seconds:
            raise ClusterError(f"zarrforge.slurm.lifetime {lifetime} must be shorter than the walltime {walltime}")
    memory = str(get("memory"))
    try:
        dask.utils.parse_bytes(memory)
    except (ValueError, TypeError):
        raise ClusterError(f"zarrforge.slurm.memory {memory!r} is not a size (e.g. 8GB)") from None
    if not re.fullmatch(r"[0-9.]+ ?[A-Za-z]*", memory):
        raise ClusterError(f"zarrforge.slurm.memory {memory!r} is not a size (e.g. 8GB)")
    job_extra = get("job-extra") or []
    if isinstance(job_extra, str):
        job_extra = [job_extra]
    for directive in job_extra:
        if not isinstance(directive, str) or not _DIRECTIVE.fullmatch(directive):
            raise ClusterError(
                f"zarrforge.slurm.job-extra: {directive!r} is not an sbatch option this profile accepts "
                "(e.g. --gres=gpu:1; no spaces, quotes or shell characters)"
            )
    try:
        timeout = float(dask.utils.parse_timedelta(get("timeout")) or 0)
    except (ValueError, KeyError):
        raise ClusterError(f"zarrforge.slurm.timeout {get('timeout')!r} is not a duration") from None
    return SlurmSettings(
        jobs=jobs,
        cores=_positive_int("cores", get("cores")),
        processes=_positive_int("processes", get("processes")),
        memory=memory,
        walltime=walltime,
        queue=_optional("queue", get("queue"), _PARTITIONS, "partition name(s)"),
        account=_optional("account", get("account"), _NAME, "account name"),
        job_name=_checked("job-name", str(get("job-name")), _NAME, "job name"),
        job_extra=tuple(job_extra),
        minimum_jobs=minimum,
        maximum_jobs=maximum,
        lifetime=lifetime,
        interface=_optional("interface", get("interface"), _NAME, "network interface name"),
        dashboard_address=str(get("dashboard-address")),
        log_directory=_directory("log-directory", get("log-directory")),
        local_directory=_directory("local-directory", get("local-directory")),
        timeout=timeout,
    )


def cluster_kwargs(settings: SlurmSettings) -> dict[str, Any]:
    """Keyword arguments of ``dask_jobqueue.SLURMCluster`` for ``settings``."""
    python = sys.executable
    if not _PATH.fullmatch(python):
        raise ClusterError(f"the Python executable path {python!r} has characters a job script cannot take")
    kwargs: dict[str, Any] = {
        "cores": settings.cores,
        "processes": settings.processes,
        "memory": settings.memory,
        "walltime": settings.walltime,
        "queue": settings.queue,
        "account": settings.account,
        "job_name": settings.job_name,
        "job_extra_directives": list(settings.job_extra),
        "python": python,  # the same environment on the compute nodes (a shared filesystem)
        "interface": settings.interface,
        "scheduler_options": {"dashboard_address": settings.dashboard_address},
        # Each worker's own HTTP server would listen on all interfaces otherwise; retire before the walltime.
        "worker_extra_args": ["--dashboard-address", "127.0.0.1:0", "--lifetime", settings.lifetime],
    }
    if settings.log_directory:
        kwargs["log_directory"] = settings.log_directory
    if settings.local_directory:
        kwargs["local_directory"] = settings.local_directory
    return kwargs


def job_script(settings: SlurmSettings) -> str:
    """The batch script each worker job would be submitted with, without starting anything.

    The scheduler address is a placeholder (``SCHEDULER-ADDRESS``): a real run fills in its own.
    """
    from dask_jobqueue.slurm import SLURMJob

    kwargs = cluster_kwargs(settings)
    kwargs.pop("scheduler_options")
    script: str = SLURMJob(scheduler=_DRY_RUN_SCHEDULER, name="zarrforge-worker", **kwargs).job_script()
    return script


@contextmanager
def slurm_cluster(settings: SlurmSettings) -> Iterator[Any]:
    """Start a ``SLURMCluster``, keep ``minimum_jobs``–``maximum_jobs`` jobs, and cancel them all on exit.

    The cluster adapts rather than scales, so a job that is cancelled or reaches its walltime is replaced.
    On leaving the context, also by an error or Ctrl-C, the cluster is closed, which cancels every job.

    Yields
    ------
    dask_jobqueue.SLURMCluster
    """
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError:
        raise ClusterError("--cluster slurm needs dask-jobqueue: pip install 'zarrforge[slurm]'") from None
    check_sbatch()
    started = time.perf_counter()
    try:
        cluster = SLURMCluster(**cluster_kwargs(settings))
    except (OSError, ValueError) as e:
        raise ClusterError(f"cannot start a SLURM cluster: {e}") from None
    try:
        # Hold job ids, never Job objects: SpecCluster.close() asserts that every Job still referenced is
        # closed, and dask-jobqueue 0.9 never marks them so (../shared/research/slurm.md).
        cluster.adapt(minimum_jobs=settings.minimum_jobs, maximum_jobs=settings.maximum_jobs)
        log.info(
            "SLURM: %s job(s) %r of %d core(s), %s, walltime %s",
            settings.minimum_jobs
            if settings.minimum_jobs == settings.maximum_jobs
            else f"{settings.minimum_jobs}-{settings.maximum_jobs}",
            settings.job_name,
            settings.cores,
            settings.memory,
            settings.walltime,
        )
        yield cluster
    finally:
        cluster.close()
        log.info("SLURM: jobs cancelled, cluster closed after %.1f s", time.perf_counter() - started)


def check_sbatch() -> None:
    """Fail early, naming what is missing, where SLURM's ``sbatch`` is not on the PATH."""
    if shutil.which("sbatch") is None:
        raise ClusterError(
            "--cluster slurm needs SLURM's sbatch on the PATH: run zarrforge on a SLURM login node "
            "(or use --cluster local, or a scheduler address)"
        )


def wait_for_workers(client: Any, settings: SlurmSettings) -> None:
    """Wait until the first worker has joined, or fail naming where the job logs are."""
    try:
        client.wait_for_workers(1, timeout=settings.timeout or None)
    except TimeoutError:
        where = settings.log_directory or "the directory sbatch ran in (slurm-*.out)"
        raise ClusterError(
            f"no SLURM worker joined within {settings.timeout:.0f} s; check `squeue -n {settings.job_name}` "
            f"and the job logs in {where}"
        ) from None


# ------------------------------------------------------------------ validation helpers
def _positive_int(key: str, value: Any, *, zero: bool = False) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = -1
    if number < (0 if zero else 1) or (isinstance(value, float) and not value.is_integer()):
        raise ClusterError(f"zarrforge.slurm.{key} must be a whole number >= {0 if zero else 1}, got {value!r}")
    return number


def _checked(key: str, value: str, pattern: re.Pattern[str], what: str) -> str:
    if not pattern.fullmatch(value):
        raise ClusterError(
            f"zarrforge.slurm.{key} {value!r} is not a valid {what}: use letters, digits, '.', '_' and '-'"
            + (" (at most 64)" if pattern is _NAME else "")
        )
    return value


def _optional(key: str, value: Any, pattern: re.Pattern[str], what: str) -> str | None:
    return None if value in (None, "") else _checked(key, str(value), pattern, what)


def _directory(key: str, value: Any) -> str | None:
    if value in (None, ""):
        return None
    path = str(Path(str(value)).expanduser().absolute())
    if not _PATH.fullmatch(path):
        raise ClusterError(
            f"zarrforge.slurm.{key} {path!r} has characters a job script cannot take "
            "(spaces, quotes or shell characters)"
        )
    return path


def _walltime_seconds(walltime: str) -> int:
    """Seconds of a SLURM time (``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH``, ``D-HH:MM``, ``D-HH:MM:SS``)."""
    match = _WALLTIME.fullmatch(walltime)
    if not match:
        raise ClusterError(f"zarrforge.slurm.walltime {walltime!r} is not a SLURM time such as 01:30:00")
    days, first, second, third = match.groups()
    parts = [int(p) for p in (first, second, third) if p is not None]
    if days is not None:  # D-HH[:MM[:SS]]
        h, m, s = [*parts, 0, 0][:3]
        seconds = int(days) * 86400 + h * 3600 + m * 60 + s
    elif len(parts) == 3:
        seconds = parts[0] * 3600 + parts[1] * 60 + parts[2]
    elif len(parts) == 2:  # MM:SS
        seconds = parts[0] * 60 + parts[1]
    else:  # MM
        seconds = parts[0] * 60
    if seconds <= 0:
        raise ClusterError(f"zarrforge.slurm.walltime {walltime!r} must be longer than zero")
    return seconds
