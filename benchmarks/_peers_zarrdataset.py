"""zarrdataset for bench_loader.py, in an environment of its own: it needs ``zarr<3``, zarrforge needs zarr 3.

:func:`ensure_env` makes a virtual environment with ``zarrdataset``, ``zarr<3`` and ``torch==2.13.0`` (the release
that lies on this machine's disk; any other would download GBs) and says exactly why when it cannot. Run with that
environment's Python, this file writes a Zarr v2 copy of the benchmark's samples (``write``) and times one epoch of
zarrdataset's loader over it (``run``), printing one JSON line as bench_loader.py's workers do. It imports only
the standard library at module level, so bench_loader.py can import :func:`ensure_env` beside zarr 3.

zarrdataset is an IterableDataset that extracts patches from images: the copy is one image with axes ``ZYX``
whose patches are ``1 × 128 × 128`` (one sample each), in chunks of the store's samples per chunk. Its two modes:
``draw_same_chunk=True`` (chunks in a random order, every patch of a chunk before the next) and ``False`` (each
patch from a randomly chosen chunk). ``return_positions=True`` gives each patch's ``Z``: its sample index, used
for the first-batch check and the randomness of the order it yields.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import venv
from pathlib import Path
from typing import Any

PACKAGES = ("zarrdataset", "zarr<3", "torch==2.13.0")


def ensure_env(path: Path, *, timeout: float = 900) -> tuple[str | None, str]:
    """A Python with zarrdataset installed, made at ``path`` unless it has one already; ``(python, note)``.

    ``python`` is None when the environment cannot be made or zarrdataset not imported there; ``note`` then says
    why (the step that failed and the end of its output), else how long the set-up took.
    """
    python = path / "bin" / "python"
    check = [str(python), "-c", "import zarrdataset, zarr, torch; print(zarr.__version__, torch.__version__)"]
    start = time.perf_counter()
    if python.exists() and subprocess.run(check, capture_output=True, timeout=120).returncode == 0:
        return str(python), f"reused {path}"
    try:
        venv.EnvBuilder(with_pip=True, clear=True).create(path)
    except Exception as exc:  # any failure of venv is a reason to report, not to stop the benchmark
        return None, f"python -m venv {path} failed: {exc!r}"
    try:
        pip = subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *PACKAGES],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return None, f"pip install {' '.join(PACKAGES)} ran past {timeout:.0f} s"
    if pip.returncode != 0:
        tail = " | ".join((pip.stderr or pip.stdout).strip().splitlines()[-4:])
        return None, f"pip install {' '.join(PACKAGES)} failed (exit {pip.returncode}): {tail}"
    done = subprocess.run(check, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        return None, f"zarrdataset does not import after install: {done.stderr.strip().splitlines()[-1:]}"
    return str(python), f"made {path} in {time.perf_counter() - start:.0f} s (zarr, torch {done.stdout.strip()})"


# --------------------------------------------------------------------------- inside the zarrdataset environment
def write(cfg: dict[str, Any]) -> dict[str, Any]:
    """Copy the ``.npy`` samples to a Zarr v2 array with ``chunk`` samples per chunk, Blosc-LZ4 or uncompressed."""
    import numcodecs
    import numpy as np
    import zarr

    src = np.load(cfg["npy"], mmap_mode="r")
    compressor = (
        numcodecs.Blosc(cname="lz4", clevel=5, shuffle=numcodecs.Blosc.SHUFFLE) if cfg["codec"] != "none" else None
    )
    t = time.perf_counter()
    arr = zarr.open_array(
        cfg["out"],
        mode="w",
        shape=src.shape,
        chunks=(cfg["chunk"], *src.shape[1:]),
        dtype=src.dtype,
        compressor=compressor,
    )
    step = cfg["chunk"] * 32
    for start in range(0, len(src), step):
        arr[start : start + step] = np.asarray(src[start : start + step])
    return {"seconds": time.perf_counter() - t, "zarr": zarr.__version__}


def run(cfg: dict[str, Any]) -> dict[str, Any]:
    """One timed epoch of zarrdataset's loader, as bench_loader.py's ``worker`` times the others."""
    import random

    import numpy as np
    import torch
    import zarrdataset as zds

    torch.set_num_threads(1)  # as bench_loader.py's workers
    random.seed(0)  # zarrdataset shuffles with the global `random`
    torch.manual_seed(0)  # the DataLoader's base seed, from which zarrdataset's worker_init_fn reseeds `random`
    workers, batch, cap = cfg["workers"], cfg["batch"], cfg.get("cap")
    shape = np.load(cfg["npy"], mmap_mode="r").shape
    ds = zds.ZarrDataset(
        [zds.ImagesDatasetSpecs(filenames=[cfg["path"]], source_axes="ZYX")],
        patch_sampler=zds.PatchSampler(patch_size={"Z": 1, "Y": shape[1], "X": shape[2]}, spatial_axes="ZYX"),
        shuffle=True,
        draw_same_chunk=cfg["same_chunk"],
        return_positions=True,
    )
    loader = torch.utils.data.DataLoader(
        ds,
        batch_size=batch,
        num_workers=workers,
        worker_init_fn=zds.zarrdataset_worker_init_fn,
        multiprocessing_context="spawn" if workers else None,
        persistent_workers=False,
    )
    t0 = time.perf_counter()
    batches = iter(loader)
    warm = [next(batches) for _ in range(max(1, workers))]  # one warm-up batch per worker, before the clock
    startup = time.perf_counter() - t0
    positions, x = warm[0]
    first_idx = positions[:, 0, 0].numpy()
    first = x.reshape(len(first_idx), *shape[1:]).numpy()
    expected = np.asarray(np.load(cfg["npy"], mmap_mode="r")[first_idx])
    if not np.array_equal(first, expected):
        raise SystemExit("zarrdataset: the first batch differs from the .npy samples at its positions")
    first_sum, ref_sum = float(first.sum(dtype=np.float64)), float(expected.sum(dtype=np.float64))
    order = [int(i) for pos, _ in warm for i in pos[:, 0, 0].tolist()]

    checksum, samples = 0.0, 0
    load = os.getloadavg()[0]
    t1, c1 = time.perf_counter(), time.process_time()
    for positions, x in batches:
        checksum += float(x.sum())
        samples += x.shape[0]
        order.extend(positions[:, 0, 0].tolist())
        if cap and samples >= cap:
            break
    elapsed, cpu = time.perf_counter() - t1, time.process_time() - c1
    return {
        "samples_timed": samples,
        "seconds": elapsed,
        "samples_per_s": samples / elapsed,
        "startup_s": startup,
        "main_cpu_s": cpu,
        "load_average_1min": load,
        "checksum": checksum,
        "first_batch_sum": first_sum,
        "reference_sum": ref_sum,
        "order": order,
        "versions": {name: _version(name) for name in ("zarrdataset", "zarr", "torch")},
    }


def _version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


if __name__ == "__main__":
    step, config = sys.argv[1], json.loads(sys.argv[2])
    print(json.dumps({"write": write, "run": run}[step](config)))
