"""Helpers shared by the benchmark scripts: fresh-process runs with peak RSS, interleaving, tables, JSON.

Every measured configuration runs in its own interpreter (``python script.py --worker CONFIG``) that prints one
JSON line as its last line of output; the parent samples the resident memory of the worker's whole process tree
(DataLoader workers included) while it runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

__all__ = [
    "RSSSampler",
    "WorkerRun",
    "dir_nbytes",
    "environment",
    "interleaved",
    "median",
    "peak_rss_of",
    "print_table",
    "run_worker",
    "warm_page_cache",
    "write_json",
]

GB = 1e9
MB = 1e6


def _tree_rss(proc: psutil.Process) -> int:
    """Resident bytes of ``proc`` and all its descendants (0 for those that are gone)."""
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total


class RSSSampler:
    """Sample the summed RSS of a process tree in a background thread; ``peak`` is the largest sum seen.

    RSS counts shared pages (libraries, a memory-mapped file's page-cache pages) once per process that maps them,
    so the sum over a tree is an upper bound on the memory it really holds.

    Examples
    --------
    >>> import subprocess, sys
    >>> proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.2)"])
    >>> with RSSSampler(proc.pid) as sampler:
    ...     _ = proc.wait()
    >>> sampler.peak > 0
    True
    """

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        self.interval = interval
        self.peak = 0
        self._proc = psutil.Process(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _tree_rss(self._proc))
            self._stop.wait(self.interval)

    def __enter__(self) -> RSSSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def peak_rss_of(popen: subprocess.Popen[Any], interval: float = 0.02, timeout: float | None = None) -> int:
    """Wait for ``popen`` to exit and return the peak summed RSS of its process tree, in bytes.

    Use it when the process writes to files; with ``stdout=PIPE`` use :func:`run_worker` (which reads the pipes
    while sampling, so a chatty child cannot block).
    """
    with RSSSampler(popen.pid, interval) as sampler:
        popen.wait(timeout)
    return sampler.peak


@dataclass
class WorkerRun:
    """What one fresh-process run gave: its JSON result, peak RSS of its tree and wall time."""

    result: dict[str, Any]
    peak_rss: int
    wall_s: float


def run_worker(
    cmd: Sequence[str], *, timeout: float = 600, cwd: str | os.PathLike[str] | None = None
) -> WorkerRun:
    """Run ``cmd``, sample its tree's RSS, and parse the last line of its stdout as JSON.

    Raises
    ------
    RuntimeError
        The command failed or printed no JSON; the message holds the end of its stderr.
    """
    start = time.perf_counter()
    proc = subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd)
    with RSSSampler(proc.pid) as sampler:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            raise RuntimeError(f"{' '.join(cmd)} ran past {timeout} s; stderr:\n{err[-2000:]}") from None
    wall = time.perf_counter() - start
    return WorkerRun(last_json_line(" ".join(cmd), proc.returncode, out, err), sampler.peak, wall)


def last_json_line(what: str, returncode: int, out: str, err: str) -> dict[str, Any]:
    """The JSON object a worker printed as its last line of stdout.

    Raises
    ------
    RuntimeError
        ``what`` failed (``returncode`` not 0) or printed no JSON; the message holds the end of its output.
    """
    lines = [line for line in out.splitlines() if line.strip()]
    if returncode != 0 or not lines:
        raise RuntimeError(f"{what} failed (exit {returncode}); stderr:\n{err[-3000:]}")
    try:
        result: dict[str, Any] = json.loads(lines[-1])
    except json.JSONDecodeError:
        raise RuntimeError(f"{what} printed no JSON last line; stdout ends:\n{out[-2000:]}") from None
    return result


def interleaved(configs: Sequence[Any], repeats: int) -> Iterator[tuple[int, Any]]:
    """Yield ``(repeat, config)`` round by round, each round rotated by one so no config is always first.

    Examples
    --------
    >>> list(interleaved("ab", 2))
    [(0, 'a'), (0, 'b'), (1, 'b'), (1, 'a')]
    """
    n = len(configs)
    for r in range(repeats):
        for j in range(n):
            yield r, configs[(j + r) % n]


def median(values: Iterable[float]) -> float:
    """Median of ``values`` (NaN if there are none)."""
    values = list(values)
    return statistics.median(values) if values else float("nan")


def warm_page_cache(paths: Iterable[str | os.PathLike[str]], block: int = 16 * 2**20) -> int:
    """Read every file under ``paths`` once so later reads come from the page cache; return bytes read."""
    total = 0
    buf = bytearray(block)
    for root in paths:
        root = Path(root)
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for file in files:
            with open(file, "rb", buffering=0) as f:
                while n := f.readinto(buf):
                    total += n
    return total


def dir_nbytes(path: str | os.PathLike[str]) -> int:
    """Bytes of all files under ``path`` (or of the file ``path``)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def environment() -> dict[str, Any]:
    """Machine and package versions, for the JSON."""
    versions = {}
    for name in ("numpy", "zarr", "numcodecs", "torch"):
        module = sys.modules.get(name)
        if module is not None:
            versions[name] = getattr(module, "__version__", "?")
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / GB, 1),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "versions": versions,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _cell(value: Any, fmt: str | None) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    if fmt:
        return format(value, fmt)
    return str(value)


def _numeric(rows: Sequence[Mapping[str, Any]], key: str) -> bool:
    return all(isinstance(row.get(key), int | float) for row in rows if row.get(key) is not None)


def print_table(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[tuple[str, str] | tuple[str, str, str]],
    *,
    file: Any = None,
) -> None:
    """Print ``rows`` as a Markdown table; ``columns`` are ``(key, header)`` or ``(key, header, format spec)``.

    Examples
    --------
    >>> print_table([{"a": 1, "b": 2.5}], [("a", "A"), ("b", "B", ".2f")])
    | A | B |
    | ---: | ---: |
    | 1 | 2.50 |
    """
    file = file or sys.stdout
    headers = [c[1] for c in columns]
    formats = [c[2] if len(c) > 2 else None for c in columns]
    body = [[_cell(row.get(c[0]), f) for c, f in zip(columns, formats, strict=True)] for row in rows]
    aligns = ["---:" if _numeric(rows, c[0]) else "---" for c in columns]
    print("| " + " | ".join(headers) + " |", file=file)
    print("| " + " | ".join(aligns) + " |", file=file)
    for cells in body:
        print("| " + " | ".join(cells) + " |", file=file)


def write_json(
    path: str | os.PathLike[str],
    results: Any,
    ratios: Mapping[str, float],
    **extra: Any,
) -> None:
    """Write ``{"environment", **extra, "results", "ratios"}`` to ``path`` (temp file + rename)."""
    path = Path(path)
    doc = {"environment": environment(), **extra, "results": results, "ratios": dict(ratios)}
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(doc, indent=2, default=float) + "\n")
    os.replace(tmp, path)
