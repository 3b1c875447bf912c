"""Loader throughput: zarrforge's ZarrDataset + ChunkShuffleSampler vs a raw .npy memmap and naive zarr reads.

All loaders serve the same N samples of 128×128 float32 patches (windows of 128 px, stride 64, of 4096² synthetic
micrographs) through ``torch.utils.data.DataLoader(batch_size=64)`` with 0 or 2 workers (``spawn``, not
persistent). Each configuration runs in a fresh process, configurations interleaved round by round; the table
shows medians. The page cache is warm (every file read once before each round). Each timed epoch starts after
one warm-up batch per worker (one with no workers), so worker start-up (spawn, imports) is excluded; every batch
is summed (every byte touched) and the first batch is compared with the same samples read straight from the .npy
file. The measuring process uses one torch thread (``torch.set_num_threads(1)``), as DataLoader workers do.

Loaders:

- ``zarrforge-loader``: ``make_loader(ZarrDataset(store, arrays=["patches"]), 64, seed=0, num_workers=w)``, the
  loader we recommend: ChunkShuffleSampler batches that tell each reader which chunk its next batch needs (decoded
  in a background thread while the current batch is gathered) and the stacked-batch ``collate``. The ratios
  ``vs_memmap``, ``vs_memmap_w0`` and ``vs_naive_zarr`` use it.
- ``zarrforge``: a plain ``DataLoader`` over ``ZarrDataset(store, arrays=["patches"])`` with
  ``ChunkShuffleSampler(ds, seed=0)`` (ratios ``*_plain_dataloader``) on a store
  written by ``TrainingStore`` (chunks of 64 samples, shards of 2048, Blosc-LZ4 + CRC32C);
  ``zarrforge-nocomp`` the same with ``codec="none"``.
- ``memmap``: a Dataset returning ``torch.from_numpy(np.array(mm[i]))`` from ``np.load(..., mmap_mode="r")``,
  in a uniformly random order (``RandomSampler`` with a seeded generator).
- ``naive-zarr``: ``torch.from_numpy(arr[i])`` on a plain zarr v3 array with the same chunks, shards and codec,
  same random order; it decodes a whole chunk per sample, so it reads only the first ``--naive-cap`` samples
  of the order and its samples/s comes from those.

Usage::

    python benchmarks/bench_loader.py --quick --json loader.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import (
    MB,
    dir_nbytes,
    interleaved,
    median,
    print_table,
    run_worker,
    warm_page_cache,
    write_json,
)

PATCH = 128
STRIDE = 64
MICROGRAPH = (4096, 4096)
BATCH = 64
SAMPLE_BYTES = PATCH * PATCH * 4
LOADERS = ("zarrforge-loader", "zarrforge", "zarrforge-nocomp", "memmap", "naive-zarr")
WORKERS = (0, 2)
# Figures the foundation issue asks for: (ratio key, threshold).
FIGURES = {"vs_memmap": 0.8, "vs_memmap_w0": 0.35, "vs_naive_zarr": 10.0}


# --------------------------------------------------------------------------- datasets (picklable for spawn)
class MemmapDataset:
    """Samples of a ``.npy`` file through a memory map opened lazily in each process."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._mm: np.ndarray | None = None
        self._n = int(np.load(path, mmap_mode="r").shape[0])

    def __len__(self) -> int:
        return self._n

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "_n": self._n, "_mm": None}

    def __getitem__(self, i: int) -> Any:
        import torch

        if self._mm is None:
            self._mm = np.load(self.path, mmap_mode="r")
        return torch.from_numpy(np.array(self._mm[i]))


class NaiveZarrDataset:
    """Samples of a zarr v3 array read one by one with ``arr[i]`` (zarr-python decodes the whole chunk)."""

    def __init__(self, path: str) -> None:
        import zarr

        self.path = path
        self._arr: Any = None
        self._n = int(zarr.open_array(path, mode="r").shape[0])

    def __len__(self) -> int:
        return self._n

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "_n": self._n, "_arr": None}

    def __getitem__(self, i: int) -> Any:
        import torch
        import zarr

        if self._arr is None:
            self._arr = zarr.open_array(self.path, mode="r")
        return torch.from_numpy(self._arr[i])


# --------------------------------------------------------------------------- worker: one timed epoch
def worker(cfg: dict[str, Any]) -> dict[str, Any]:
    import torch
    from torch.utils.data import DataLoader, RandomSampler

    from torch_bridge import ChunkShuffleSampler, ZarrDataset, make_loader

    # One intra-op thread in the measuring process, as DataLoader workers use: on 2 shared cores, torch's default
    # of 2 OpenMP threads makes each batch's sum and collate 10-50x slower whenever another process is busy.
    torch.set_num_threads(1)
    loader_name, workers, paths = cfg["loader"], cfg["workers"], cfg["paths"]
    loader: Any = None
    if loader_name == "zarrforge-loader":
        ds: Any = ZarrDataset(paths["zarrforge"], arrays=["patches"])
        loader = make_loader(ds, BATCH, seed=0, num_workers=workers, persistent_workers=False)
        order = loader.sampler.indices()[:BATCH]
    elif loader_name in ("zarrforge", "zarrforge-nocomp"):
        ds = ZarrDataset(paths[loader_name], arrays=["patches"])
        sampler: Any = ChunkShuffleSampler(ds, seed=0)
        order = sampler.indices()[:BATCH]
    else:
        ds = MemmapDataset(paths["npy"]) if loader_name == "memmap" else NaiveZarrDataset(paths["naive-zarr"])
        n = len(ds) if loader_name == "memmap" else min(len(ds), cfg["naive_cap"])

        def make_sampler() -> RandomSampler:
            return RandomSampler(ds, num_samples=n, generator=torch.Generator().manual_seed(0))

        sampler = make_sampler()
        order = np.array(list(make_sampler())[:BATCH])  # the same seed gives the same order
    if loader is None:
        loader = DataLoader(
            ds,
            batch_size=BATCH,
            sampler=sampler,
            num_workers=workers,
            multiprocessing_context="spawn" if workers else None,
            persistent_workers=False,
        )

    t0 = time.perf_counter()
    batches = iter(loader)
    first = next(batches)
    for _ in range(workers - 1):  # one warm-up batch per worker: every worker has started before the clock
        next(batches)
    startup = time.perf_counter() - t0
    first = first["patches"] if isinstance(first, dict) else first
    expected = np.asarray(np.load(paths["npy"], mmap_mode="r")[order])  # the same samples, same order
    if not np.array_equal(first.numpy(), expected):
        raise SystemExit(f"{loader_name}: the first batch differs from the .npy reference")
    first_sum = float(first.sum(dtype=torch.float64))
    ref_sum = float(expected.sum(dtype=np.float64))
    if not np.isclose(first_sum, ref_sum, rtol=1e-12, atol=0):
        raise SystemExit(f"{loader_name}: first batch sums to {first_sum}, the .npy reference to {ref_sum}")

    checksum, samples = 0.0, 0
    load = os.getloadavg()[0]
    t1, c1 = time.perf_counter(), time.process_time()
    for batch in batches:
        x = batch["patches"] if isinstance(batch, dict) else batch
        checksum += float(x.sum())
        samples += x.shape[0]
    elapsed, cpu = time.perf_counter() - t1, time.process_time() - c1
    result = {
        "loader": loader_name,
        "workers": workers,
        "samples_timed": samples,
        "seconds": elapsed,
        "samples_per_s": samples / elapsed,
        "startup_s": startup,
        "main_cpu_s": cpu,  # CPU time of the measuring process (all its threads), workers not included
        "load_average_1min": load,
        "checksum": checksum,
        "first_batch_sum": first_sum,
    }
    if loader_name.startswith("zarrforge") and workers == 0:
        result["cache"] = ds.cache.stats
    return result


# --------------------------------------------------------------------------- data
def write_data(root: Path, n: int) -> dict[str, Any]:
    """Write the same ``n`` patches as .npy, two training stores and a naive zarr array; return paths and times."""
    import zarr
    from numpy.lib.stride_tricks import sliding_window_view

    from storage.codecs import compressors
    from storage.layout import sample_grid
    from storage.store import ArraySpec, TrainingStore
    from storage.synthetic import make_micrograph

    paths = {
        "npy": str(root / "patches.npy"),
        "zarrforge": str(root / "train-lz4.zarr"),
        "zarrforge-nocomp": str(root / "train-none.zarr"),
        "naive-zarr": str(root / "naive.zarr"),
    }
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    mm = np.lib.format.open_memmap(paths["npy"], mode="w+", dtype=np.float32, shape=(n, PATCH, PATCH))
    filled, index = 0, 0
    while filled < n:
        image, _ = make_micrograph(MICROGRAPH, seed=0, index=index)
        windows = sliding_window_view(image, (PATCH, PATCH))[::STRIDE, ::STRIDE].reshape(-1, PATCH, PATCH)
        take = min(len(windows), n - filled)
        mm[filled : filled + take] = windows[:take]
        filled += take
        index += 1
    mm.flush()
    seconds["make_npy"] = time.perf_counter() - t

    grid = sample_grid(SAMPLE_BYTES)
    spec = ArraySpec("patches", ("sample", "patch_y", "patch_x"), (n, PATCH, PATCH), np.dtype("float32"))
    for name, codec in (("zarrforge", "blosc-lz4"), ("zarrforge-nocomp", "none")):
        t = time.perf_counter()
        with TrainingStore.open_for_writing(
            paths[name], [spec], grid=grid, record={"pipeline": "bench"}, codec=codec
        ) as store:
            for block in store.blocks():
                store.write_block(block, {"patches": np.asarray(mm[block.start : block.stop])})
            store.finalize()
        seconds[f"write_{name}"] = time.perf_counter() - t

    t = time.perf_counter()
    arr = zarr.create_array(
        store=paths["naive-zarr"],
        shape=(n, PATCH, PATCH),
        dtype="float32",
        chunks=(grid.chunk_samples, PATCH, PATCH),
        shards=(grid.shard_samples, PATCH, PATCH),
        compressors=compressors("blosc-lz4"),
    )
    for start in range(0, n, grid.shard_samples):
        arr[start : start + grid.shard_samples] = np.asarray(mm[start : start + grid.shard_samples])
    seconds["write_naive-zarr"] = time.perf_counter() - t
    del mm
    t = time.perf_counter()
    os.sync()  # no write-back of these files during the timed epochs
    seconds["sync"] = time.perf_counter() - t
    return {
        "paths": paths,
        "seconds": seconds,
        "nbytes": {name: dir_nbytes(path) for name, path in paths.items()},
        "grid": {"chunk_samples": grid.chunk_samples, "shard_samples": grid.shard_samples},
    }


# --------------------------------------------------------------------------- parent
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="6,000 samples, one round (under a minute)")
    parser.add_argument("--samples", type=int, help="samples (default 20,000; --quick 6,000)")
    parser.add_argument("--repeats", type=int, help="rounds of all configurations (default 3; --quick 1)")
    parser.add_argument("--naive-cap", type=int, help="samples read by naive zarr (default 3,200; --quick 640)")
    parser.add_argument("--json", type=Path, help="write all measurements here")
    parser.add_argument("--dir", type=Path, help="where to write the data (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the data folder")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0

    n = args.samples or (6_000 if args.quick else 20_000)
    repeats = args.repeats or (1 if args.quick else 3)
    naive_cap = args.naive_cap or (640 if args.quick else 3_200)
    root = Path(tempfile.mkdtemp(prefix="zf-bench-loader-", dir=args.dir))
    try:
        print(f"writing {n:,} samples of {PATCH}×{PATCH} float32 to {root} ...", flush=True)
        data = write_data(root, n)
        print("  " + ", ".join(f"{k} {v:.1f} s" for k, v in data["seconds"].items()), flush=True)
        configs = [(loader, w) for w in WORKERS for loader in LOADERS]
        runs: list[dict[str, Any]] = []
        warmed = -1
        for rep, (loader, w) in interleaved(configs, repeats):
            if rep != warmed:  # read every file once at the start of each round
                warm_page_cache(data["paths"].values())
                warmed = rep
            cfg = {"loader": loader, "workers": w, "paths": data["paths"], "naive_cap": naive_cap}
            run = run_worker([sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(cfg)])
            record = {**run.result, "repeat": rep, "peak_rss": run.peak_rss, "wall_s": run.wall_s}
            runs.append(record)
            print(
                f"  round {rep + 1}/{repeats} {loader:>16} w{w}: {record['samples_per_s']:>9,.0f} samples/s, "
                f"peak RSS {run.peak_rss / 2**20:,.0f} MiB",
                flush=True,
            )
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)

    summary = summarize(runs)

    def rate(loader: str, workers: int) -> float:
        return float(summary[(loader, workers)]["samples_per_s"])

    ratios = {
        # Ours is the loader we recommend (make_loader: ChunkShuffleSampler batches with prefetch hints and the
        # stacked-batch collate); the plain DataLoader over the same dataset and sampler follows.
        "vs_memmap": rate("zarrforge-loader", 2) / rate("memmap", 2),
        "vs_memmap_w0": rate("zarrforge-loader", 0) / rate("memmap", 0),
        "vs_naive_zarr": rate("zarrforge-loader", 0) / rate("naive-zarr", 0),
        "vs_memmap_plain_dataloader": rate("zarrforge", 2) / rate("memmap", 2),
        "vs_memmap_w0_plain_dataloader": rate("zarrforge", 0) / rate("memmap", 0),
        "vs_memmap_w0_nocompression": summary[("zarrforge-nocomp", 0)]["samples_per_s"]
        / summary[("memmap", 0)]["samples_per_s"],
    }
    print()
    print(
        textwrap.fill(
            f"{n:,} samples of {PATCH}×{PATCH} float32 ({n * SAMPLE_BYTES / 2**30:.2f} GiB), batch {BATCH}, page "
            f"cache warm; medians of {repeats} fresh-process run(s) per row; epoch timed after one warm-up batch "
            f"per worker (start-up excluded); torch.set_num_threads(1) in the main process; naive zarr reads "
            f"{min(naive_cap, n):,} samples.",
            115,
        )
    )
    print_table(
        list(summary.values()),
        [
            ("loader", "loader"),
            ("workers", "workers"),
            ("samples_per_s", "samples/s", ",.0f"),
            ("mb_per_s", "MB/s", ",.0f"),
            ("vs_memmap", "× memmap", ".3f"),
            ("peak_rss_mib", "peak RSS MiB", ",.0f"),
            ("spread", "min–max samples/s"),
            ("cpu_samples_per_s", "samples/CPU-s", ",.0f"),
            ("startup_s", "start-up s", ".2f"),
        ],
    )
    print()
    print(f"on disk: {', '.join(f'{k} {v / 2**20:,.0f} MiB' for k, v in data['nbytes'].items())}")
    print("peak RSS: summed over the process tree (main + DataLoader workers); a memmap's page-cache pages count")
    print("samples/CPU-s: workers 0 only, samples per CPU second of the loading process (less sensitive to load)")
    loads = [r["load_average_1min"] for r in runs]
    print(f"1-minute load average during the runs: {min(loads):.1f}–{max(loads):.1f} on {os.cpu_count()} CPUs")
    print()
    rows = []
    for key, value in ratios.items():
        need = FIGURES.get(key)
        verdict = "-" if need is None else ("PASS" if value >= need else "FAIL")
        rows.append({"ratio": key, "value": value, "needed": "-" if need is None else f"≥ {need:g}", "": verdict})
    print_table(rows, [("ratio", "ratio"), ("value", "value", ".3f"), ("needed", "needed"), ("", "")])
    if args.json:
        write_json(
            args.json,
            {"runs": runs, "summary": [{**v} for v in summary.values()], "data": data},
            ratios,
            parameters={"samples": n, "repeats": repeats, "naive_cap": naive_cap, "batch_size": BATCH},
            figures=FIGURES,
        )
        print(f"\nwrote {args.json}")
    return 0


def summarize(runs: list[dict[str, Any]]) -> dict[tuple[str, int], dict[str, Any]]:
    """Median per (loader, workers), with MB/s and the ratio to the memmap at the same number of workers."""
    summary: dict[tuple[str, int], dict[str, Any]] = {}
    for w in WORKERS:
        for loader in LOADERS:
            mine = [r for r in runs if r["loader"] == loader and r["workers"] == w]
            rates = [r["samples_per_s"] for r in mine]
            rate = median(rates)
            summary[(loader, w)] = {
                "loader": loader,
                "workers": w,
                "samples_per_s": rate,
                "mb_per_s": rate * SAMPLE_BYTES / MB,
                "peak_rss_mib": median(r["peak_rss"] for r in mine) / 2**20,
                "startup_s": median(r["startup_s"] for r in mine),
                "cpu_samples_per_s": median(r["samples_timed"] / r["main_cpu_s"] for r in mine)
                if w == 0
                else None,
                "spread": f"{min(rates):,.0f}–{max(rates):,.0f}",
                "runs": len(mine),
            }
    for (_, w), row in summary.items():
        row["vs_memmap"] = row["samples_per_s"] / summary[("memmap", w)]["samples_per_s"]
    return summary


if __name__ == "__main__":
    sys.exit(main())
