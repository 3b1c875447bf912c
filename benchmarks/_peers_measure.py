"""Run a benchmark worker and measure the peak memory of each process of its tree.

bench_loader.py reports the measuring process and its DataLoader workers apart; ``_common.run_worker`` gives only
their sum.
"""

from __future__ import annotations

import contextlib
import subprocess
import threading
import time
from dataclasses import dataclass

import psutil

from benchmarks._common import WorkerRun, last_json_line

__all__ = ["Measured", "run_measured"]


@dataclass
class Measured(WorkerRun):
    """A :class:`WorkerRun` with each process's own peak: the measuring process and its largest child."""

    main_peak: int = 0
    child_peak: int = 0
    #: Peak of the tree's summed PSS: each shared page (torch's libraries, mapped by every process) counted once
    #: in all, split between the processes that map it; RSS counts it once per process.
    pss_peak: int = 0


def run_measured(cmd: list[str], *, timeout: float = 900) -> Measured:
    """Run ``cmd`` as ``_common.run_worker`` does, also reading each process's own peak (``VmHWM``).

    The summed RSS of the tree is sampled every 20 ms (its peak is ``peak_rss``); ``VmHWM`` is each process's
    exact high-water mark, read while it lives (``getrusage`` in the child would not do: Linux carries the parent's
    peak across fork and exec).
    """
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peaks = {"tree": 0, "main": 0, "child": 0, "pss": 0}
    stop = threading.Event()

    def sample() -> None:
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(proc.pid)
            tick = 0
            while not stop.is_set():
                total = pss = 0
                for p in [root, *root.children(recursive=True)]:
                    with contextlib.suppress(psutil.Error, OSError, ValueError):
                        total += p.memory_info().rss
                        key = "main" if p.pid == proc.pid else "child"
                        peaks[key] = max(peaks[key], _vm_hwm(p.pid))
                        if tick % 5 == 0:  # smaps_rollup costs more than status: every 100 ms
                            pss += _pss(p.pid)
                peaks["tree"] = max(peaks["tree"], total)
                peaks["pss"] = max(peaks["pss"], pss)
                tick += 1
                stop.wait(0.02)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise RuntimeError(f"{cmd[-2]} ran past {timeout:.0f} s; stderr: {err[-2000:]}") from None
    finally:
        stop.set()
        thread.join()
    result = last_json_line(cmd[-2], proc.returncode, out, err)
    wall = time.perf_counter() - start
    return Measured(
        result, peaks["tree"], wall, main_peak=peaks["main"], child_peak=peaks["child"], pss_peak=peaks["pss"]
    )


def _vm_hwm(pid: int) -> int:
    """Peak resident bytes of process ``pid`` (``VmHWM`` of /proc/PID/status)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def _pss(pid: int) -> int:
    """Proportional set size of process ``pid`` (``Pss`` of /proc/PID/smaps_rollup), in bytes."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    return 0
