"""Memory safety: a run over an input three times larger than its workers' memory stays under their limits."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import dask.config
import mrcfile
import numpy as np
import psutil
import pytest
import xarray as xr

from engine.pipelines import run_patches
from storage.synthetic import make_micrograph
from storage.testing import verify_store

LIMIT = 300_000_000  # bytes per worker, as a profile sets it
# 16 MiB images: a worker peaks at its ~150 MiB of libraries plus about one image (each is read whole by one
# task), whatever the input's size. A stride of twice the size keeps the output a quarter of the input.
SIDE, SIZE, STRIDE = 2048, 128, 256


def write_copies(folder: Path, n: int) -> list[Path]:
    """``n`` distinct float32 micrographs, fast: one synthetic image plus a different offset each."""
    folder.mkdir()
    base, _ = make_micrograph((SIDE, SIDE), seed=5)
    files = []
    for i in range(n):
        files.append(folder / f"m{i:03d}.mrc")
        with mrcfile.new(files[-1]) as mrc:
            mrc.set_data(base + np.float32(i))
    return files


@pytest.mark.slow
def test_input_three_times_the_workers_memory_completes_under_their_limits(tmp_path: Path):
    n_workers = 2
    image_bytes = SIDE * SIDE * 4
    n_images = -(-3 * n_workers * LIMIT // image_bytes) + 1
    files = write_copies(tmp_path / "mics", n_images)
    input_bytes = n_images * image_bytes
    seen: set[int] = set()  # every worker process seen during the run: a restarted worker adds one
    stop = threading.Event()

    def watch_workers() -> None:
        me = psutil.Process()
        while not stop.is_set():
            for child in me.children():
                try:
                    if "spawn_main" in " ".join(child.cmdline()):
                        seen.add(child.pid)
                except psutil.Error:
                    pass
            time.sleep(0.1)

    settings = {
        "zarrforge.local.processes": True,
        "zarrforge.local.n-workers": n_workers,
        "zarrforge.local.threads-per-worker": 1,
        "zarrforge.local.memory-limit": LIMIT,
        "zarrforge.local.dashboard-address": "127.0.0.1:0",
        "zarrforge.store.chunk-bytes": 2**20,
        "zarrforge.store.shard-bytes": 4 * 2**20,
    }
    before = {p.pid for p in psutil.Process().children()}
    watcher = threading.Thread(target=watch_workers, daemon=True)
    with dask.config.set(settings):
        watcher.start()
        try:
            summary = run_patches(tmp_path / "mics", tmp_path / "t.zarr", size=SIZE, stride=STRIDE, progress=False)
        finally:
            stop.set()
            watcher.join()

    print(f"\n{input_bytes / 2**30:.2f} GiB input, {n_images} images: {summary.line()}")
    assert len(summary.workers) == n_workers, summary.workers
    limits = [w["memory_limit"] for w in summary.workers.values()]
    peaks = [w["peak_rss"] for w in summary.workers.values()]
    assert all(limit is not None and limit <= LIMIT for limit in limits), limits  # the profile's limit
    assert input_bytes >= 3 * sum(limit or 0 for limit in limits)
    assert all(peak is not None and 0 < peak < (limit or 0) for peak, limit in zip(peaks, limits, strict=True))
    assert len(seen - before) == n_workers, "a worker was restarted (killed for its memory?)"
    assert summary.blocks_written == summary.blocks_total

    verify_store(tmp_path / "t.zarr")
    ds = xr.open_zarr(tmp_path / "t.zarr")
    last = mrcfile.read(files[-1])
    i = ds.sizes["sample"] - 1
    y0, x0 = int(ds.y0[i]), int(ds.x0[i])
    np.testing.assert_array_equal(ds.patches[i].values, last[y0 : y0 + SIZE, x0 : x0 + SIZE])
    shutil.rmtree(tmp_path)  # 2 GB: not worth keeping among pytest's last three temporary folders


def test_a_worker_process_reports_its_own_peak_not_the_client_s():
    """``getrusage`` would report a spawned worker's peak as at least the client's memory at the fork."""
    from engine.clusters import connect
    from engine.run import _worker_memory

    ballast = np.ones(400 * 2**20, dtype=np.uint8)  # the client holds 400 MiB while the worker starts
    settings = {"zarrforge.local.processes": True, "zarrforge.local.n-workers": 1}
    with dask.config.set({**settings, "zarrforge.local.dashboard-address": "127.0.0.1:0"}), connect() as client:
        [(name, worker)] = _worker_memory(client).items()
    del ballast
    assert name == "0"
    assert 20 * 2**20 < (worker["peak_rss"] or 0) < 400 * 2**20, worker
