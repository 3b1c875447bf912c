"""Loader throughput and randomness: zarrforge's loaders beside raw-memmap limits, naive zarr and peer libraries.

Every loader serves the same N samples of 128×128 float32 patches (windows of 128 px, stride 64, of 4096²
synthetic micrographs) in batches of 64 through ``torch.utils.data.DataLoader`` with 0 or 2 workers (``spawn``, not
persistent), from the same training store (chunks of 64 samples, shards of 2048, written by ``TrainingStore``)
with Blosc-LZ4 + CRC32C (``lz4``) or uncompressed (``none``); zarrdataset, which needs zarr<3, reads a Zarr v2
copy with the same chunks and codec. Each configuration runs in a fresh process, configurations interleaved round
by round; the table shows medians. The page cache is warm (every file read once before each round). Each timed
epoch starts after one warm-up batch per worker (one with no workers), so worker start-up is excluded; every batch
is summed (every byte touched) and the first batch is compared, sample by sample and by its sum, with the same
samples read straight from the .npy file. The measuring process uses one torch thread, as DataLoader workers do.

Loaders (the order they read in, in brackets):

- ``zarrforge-batch``: ``make_loader(ZarrDataset(store), 64, seed=0)``, the batch path we recommend (chunk order:
  ChunkShuffleSampler batches with prefetch hints, one gather per chunk into the batch, no collate copy);
  ``-window4`` / ``-window16``: the same with ``window=4`` / ``16`` chunks shuffled together (the cost of
  randomness). ``zarrforge-sample``: its per-sample path, ``ds[i]`` per sample and ``default_collate`` (a wrapper
  hides ``__getitems__``). ``zarrforge-plain``: a plain ``DataLoader(ds, 64, sampler=ChunkShuffleSampler(ds))``
  (``__getitems__`` + ``default_collate``). ``zarrforge-threaded``: ``ThreadedLoader(ds, 64, num_threads=2)``, the
  same batches read by 2 threads of the measuring process instead of 2 worker processes (its row says workers 2).
- ``memmap`` / ``memmap-batch``: ``np.load(mmap_mode="r")``, one copy per sample / one gather per batch into the
  batch tensor: the limits of reading raw samples [uniform shuffle]. ``no-io``: batches copied from one batch in
  memory, the transfer ceiling of a DataLoader [uniform].
- ``naive-zarr``: ``arr[i]`` per sample on the store's array with zarr-python [uniform].
- ``xbatcher-sample`` / ``xbatcher-batch``: xbatcher's ``MapDataset`` over ``xr.open_zarr(store)``, one sample per
  item [uniform] / 64 consecutive samples per item, batches shuffled [batch order shuffled, samples in order].
- ``zarrdataset-same-chunk`` / ``-random-chunk``: zarrdataset's ``ZarrDataset(shuffle=True, draw_same_chunk=...)``
  [chunks shuffled, a chunk at a time / each sample from a random chunk].
- ``tensorstore-sample``: one ``read()`` per sample, no cache [uniform]; ``tensorstore-cache``: one ``read()``
  per batch with a ``cache_pool`` as large as our chunk cache [ChunkShuffleSampler's order, without which the
  cache would not help].

Per-sample readers of zarr decode a whole chunk for every sample, so they read only the first ``--cap`` samples of
their order. Randomness (``torch_bridge.sampler.order_randomness``) is that of the order each loader yields over an
epoch: distinct chunks per batch (a uniform shuffle of 20,000 samples mixes about 58 chunks in a batch of 64),
its ratio to the uniform expectation ("mixing"), and the lag-1 correlation of neighbouring positions. Peers come
from the ``bench`` extra; one that is missing or fails is reported with the reason and the rest go on.

Usage::

    python benchmarks/bench_loader.py --quick --json loader.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import _peers_zarrdataset
from benchmarks._common import (
    MB,
    dir_nbytes,
    interleaved,
    median,
    print_table,
    warm_page_cache,
    write_json,
)
from benchmarks._peers_measure import run_measured

PATCH = 128
STRIDE = 64
MICROGRAPH = (4096, 4096)
BATCH = 64
SAMPLE_BYTES = PATCH * PATCH * 4
# ZarrDataset's default chunk cache (16 MiB: 4 chunks of 4 MiB here); tensorstore's cache pool gets the same.
CACHE_BYTES = 16 * 2**20
WORKERS = (0, 2)
CODECS = {"lz4": "blosc-lz4", "none": "none"}


@dataclass(frozen=True)
class Loader:
    """A row of the comparison: who it is, which stores it reads, and whether it reads only ``--cap`` samples."""

    name: str
    kind: str  # "ours", "limit" (raw data, no zarr), "baseline" or "peer"
    codecs: tuple[str, ...] = ("lz4", "none")
    capped: bool = False
    peer: str | None = None  # the peer library, for vs_<peer> and its availability
    workers: tuple[int, ...] = WORKERS


LOADERS = (
    Loader("zarrforge-batch", "ours"),
    Loader("zarrforge-sample", "ours"),
    Loader("zarrforge-plain", "ours", ("lz4",)),
    Loader("zarrforge-threaded", "ours", workers=(2,)),
    Loader("zarrforge-batch-window4", "ours", ("lz4",)),
    Loader("zarrforge-batch-window16", "ours", ("lz4",)),
    Loader("memmap", "limit", ("-",)),
    Loader("memmap-batch", "limit", ("-",)),
    Loader("no-io", "limit", ("-",)),
    Loader("naive-zarr", "baseline", capped=True),
    Loader("xbatcher-sample", "peer", capped=True, peer="xbatcher"),
    Loader("xbatcher-batch", "peer", peer="xbatcher"),
    Loader("zarrdataset-same-chunk", "peer", peer="zarrdataset"),
    Loader("zarrdataset-random-chunk", "peer", capped=True, peer="zarrdataset"),
    Loader("tensorstore-sample", "peer", capped=True, peer="tensorstore"),
    Loader("tensorstore-cache", "peer", peer="tensorstore"),
)
BY_NAME = {loader.name: loader for loader in LOADERS}
PEERS = ("xbatcher", "zarrdataset", "tensorstore")

# Figures the issues ask for: ratio key -> (comparison, threshold). Ours per-sample path is ``zarrforge-sample``,
# ours batch path ``zarrforge-batch``; peers are compared at their best mode; all on the Blosc-LZ4 store.
FIGURES = {
    "vs_memmap_w0": (">=", 0.5),
    "vs_best_peer_w0": (">=", 3.0),
    "vs_memmap": (">=", 0.95),
    "vs_memmap_batch": (">=", 1.2),
    "vs_best_peer": (">=", 1.3),
    "vs_naive_zarr": (">=", 10.0),
    "rss_vs_budget": ("<=", 1.0),
}
RATIO_DEFINITIONS = {
    "vs_memmap_w0": "zarrforge-sample / memmap, lz4, workers 0",
    "vs_memmap": "zarrforge-sample / memmap, lz4, workers 2",
    "vs_memmap_batch": "zarrforge-batch / memmap, lz4, workers 2",
    "vs_memmap_batch_w0": "zarrforge-batch / memmap, lz4, workers 0",
    "vs_memmap_gather": "zarrforge-batch / memmap-batch, lz4, workers 2",
    "vs_best_peer_w0": "zarrforge-batch / the fastest peer row (any mode), lz4, workers 0",
    "vs_best_peer": "zarrforge-batch / the fastest peer row (any mode), lz4, workers 2",
    "vs_memmap_threaded": "zarrforge-threaded (2 threads) / memmap (2 workers), lz4",
    "vs_best_peer_threaded": "zarrforge-threaded (2 threads) / the fastest peer row, lz4, workers 2",
    "vs_<peer>": "zarrforge-batch / that peer's fastest mode, lz4, workers 2 (vs_<peer>_w0: workers 0)",
    "vs_naive_zarr": "zarrforge-batch / naive-zarr, lz4, workers 0",
    "vs_memmap_plain_dataloader": "zarrforge-plain / memmap, workers 2 (w0: workers 0)",
    "vs_memmap_w0_nocompression": "zarrforge-batch on the uncompressed store / memmap, workers 0",
    "window<N>_cost": "zarrforge-batch-window<N> / zarrforge-batch, lz4, workers 2 (_w0: workers 0)",
    "rss_vs_budget": "peak RSS of zarrforge-batch's process tree (main + 2 workers), lz4 / (2 × cache + 500 MB), "
    "cache: the chunk caches of both workers (2 × cache_bytes); rss_vs_budget_w0: workers 0, one cache",
    "pss_vs_budget": "the same with the tree's summed PSS: a page shared by several processes (torch's libraries "
    "in the main process and each worker) counted once in all instead of once per process",
}


# --------------------------------------------------------------------------- worker: one timed epoch
def build(cfg: dict[str, Any]) -> tuple[Any, list[int], Any]:
    """The DataLoader of one configuration, the order of sample indices it yields over an epoch, and our dataset
    (for its cache statistics) or None."""
    import torch
    from torch.utils.data import DataLoader, RandomSampler

    from benchmarks import _peers
    from torch_bridge import ChunkShuffleSampler, ThreadedLoader, ZarrDataset, make_loader

    name, workers, paths = cfg["loader"], cfg["workers"], cfg["paths"]
    store = paths.get(f"store-{cfg['codec']}", "")
    spawn: dict[str, Any] = {"multiprocessing_context": "spawn" if workers else None, "persistent_workers": False}

    def uniform(n: int) -> RandomSampler:
        return RandomSampler(range(n), generator=torch.Generator().manual_seed(0))

    if name.startswith("zarrforge"):
        ds = ZarrDataset(store, arrays=["patches"], cache_bytes=cfg["cache_bytes"])
        if name.startswith("zarrforge-batch"):
            window = int(name.rpartition("window")[2]) if "window" in name else 1
            loader = make_loader(ds, BATCH, seed=0, window=window, num_workers=workers, persistent_workers=False)
            return loader, loader.sampler.indices().tolist(), ds
        if name == "zarrforge-threaded":  # "workers" are threads of the measuring process
            loader = ThreadedLoader(ds, BATCH, seed=0, num_threads=workers)
            return loader, loader.sampler.indices().tolist(), ds
        sampler = ChunkShuffleSampler(ds, seed=0)
        served = _peers.PerSample(ds) if name == "zarrforge-sample" else ds
        return DataLoader(served, BATCH, sampler=sampler, num_workers=workers, **spawn), list(sampler), ds
    if name == "xbatcher-batch":
        ds = _peers.XbatcherDataset(store, "patches", BATCH)
        batches = list(uniform(len(ds)))
        loader = DataLoader(ds, None, sampler=uniform(len(ds)), num_workers=workers, **spawn)
        return loader, [b * BATCH + j for b in batches for j in range(BATCH)], None
    if name == "tensorstore-cache":
        ds = _peers.TensorstoreBatchDataset(f"{store}/patches", cache_bytes=cfg["cache_bytes"])
        sampler = ChunkShuffleSampler(ZarrDataset(store, arrays=["patches"]), seed=0)
        collate = _peers.passthrough
        return (
            DataLoader(ds, BATCH, sampler=sampler, collate_fn=collate, num_workers=workers, **spawn),
            list(sampler),
            None,
        )
    mm = np.load(paths["npy"], mmap_mode="r")
    order = list(uniform(len(mm)))
    batched = {"collate_fn": _peers.passthrough}
    if name == "memmap":
        ds, extra = _peers.MemmapDataset(paths["npy"]), {}
    elif name == "memmap-batch":
        ds, extra = _peers.MemmapBatchDataset(paths["npy"]), batched
    elif name == "no-io":
        ds, extra = _peers.NoIODataset(np.asarray(mm[order[:BATCH]]), len(mm)), batched
    elif name == "naive-zarr":
        ds, extra = _peers.NaiveZarrDataset(f"{store}/patches"), {}
    elif name == "xbatcher-sample":
        ds, extra = _peers.XbatcherDataset(store, "patches", 1), {}
    elif name == "tensorstore-sample":
        ds, extra = _peers.TensorstoreDataset(f"{store}/patches"), {}
    else:
        raise SystemExit(f"unknown loader {name!r}")
    return DataLoader(ds, BATCH, sampler=uniform(len(mm)), num_workers=workers, **spawn, **extra), order, None


def worker(cfg: dict[str, Any]) -> dict[str, Any]:
    import torch

    # One intra-op thread in the measuring process, as DataLoader workers use: on 2 shared cores, torch's default
    # of 2 OpenMP threads makes each batch's sum and collate 10-50x slower whenever another process is busy.
    torch.set_num_threads(1)
    name, workers = cfg["loader"], cfg["workers"]
    loader, order, ours = build(cfg)

    def tensor(batch: Any) -> Any:
        x = batch["patches"] if isinstance(batch, dict) else batch
        return x.reshape(-1, PATCH, PATCH)  # xbatcher's per-sample items are (1, 128, 128)

    t0 = time.perf_counter()
    batches = iter(loader)
    first = tensor(next(batches))
    for _ in range(workers - 1):  # one warm-up batch per worker: every worker has started before the clock
        next(batches)
    startup = time.perf_counter() - t0
    expected = np.asarray(np.load(cfg["paths"]["npy"], mmap_mode="r")[order[: len(first)]])
    if not np.array_equal(first.numpy(), expected):
        raise SystemExit(f"{name}: the first batch differs from the .npy samples of its order")
    first_sum = float(first.sum(dtype=torch.float64))
    ref_sum = float(expected.sum(dtype=np.float64))
    if not np.isclose(first_sum, ref_sum, rtol=1e-12, atol=0):
        raise SystemExit(f"{name}: first batch sums to {first_sum}, the .npy reference to {ref_sum}")

    cap = cfg["cap"] if BY_NAME[name].capped else None
    checksum, samples = 0.0, 0
    load = os.getloadavg()[0]
    t1, c1 = time.perf_counter(), time.process_time()
    for batch in batches:
        x = tensor(batch)
        checksum += float(x.sum())
        samples += x.shape[0]
        if cap and samples >= cap:
            break
    elapsed, cpu = time.perf_counter() - t1, time.process_time() - c1
    result = {
        "samples_timed": samples,
        "seconds": elapsed,
        "samples_per_s": samples / elapsed,
        "startup_s": startup,
        "main_cpu_s": cpu,  # CPU time of the measuring process (all its threads), workers not included
        "load_average_1min": load,
        "checksum": checksum,
        "first_batch_sum": first_sum,
        "reference_sum": ref_sum,
        "order": order,
    }
    if ours is not None and (workers == 0 or name == "zarrforge-threaded"):  # the cache of this process
        result["cache"] = ours.cache.stats
    return result


# --------------------------------------------------------------------------- data
def write_data(root: Path, n: int) -> dict[str, Any]:
    """Write the same ``n`` patches as .npy and as two training stores; return paths and times."""
    from numpy.lib.stride_tricks import sliding_window_view

    from storage.layout import sample_grid
    from storage.store import ArraySpec, TrainingStore
    from storage.synthetic import make_micrograph

    paths = {"npy": str(root / "patches.npy"), **{f"store-{c}": str(root / f"train-{c}.zarr") for c in CODECS}}
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
    for codec, codec_name in CODECS.items():
        t = time.perf_counter()
        with TrainingStore.open_for_writing(
            paths[f"store-{codec}"], [spec], grid=grid, record={"pipeline": "bench"}, codec=codec_name
        ) as store:
            for block in store.blocks():
                store.write_block(block, {"patches": np.asarray(mm[block.start : block.stop])})
            store.finalize()
        seconds[f"write_store-{codec}"] = time.perf_counter() - t
    del mm
    t = time.perf_counter()
    os.sync()  # no write-back of these files during the timed epochs
    seconds["sync"] = time.perf_counter() - t
    return {
        "paths": paths,
        "seconds": seconds,
        "grid": {"chunk_samples": grid.chunk_samples, "shard_samples": grid.shard_samples},
    }


def prepare_zarrdataset(root: Path, data: dict[str, Any], venv_dir: Path | None) -> tuple[str | None, str]:
    """zarrdataset's environment and its Zarr v2 copies of the data; ``(python or None, what happened)``."""
    python, note = _peers_zarrdataset.ensure_env(venv_dir or root / "zarrdataset-venv")
    if python is None:
        return None, note
    script = str(Path(_peers_zarrdataset.__file__).resolve())
    for codec in CODECS:
        out = str(root / f"v2-{codec}.zarr")
        cfg = {"npy": data["paths"]["npy"], "out": out, "codec": codec, "chunk": data["grid"]["chunk_samples"]}
        try:
            run = run_measured([python, script, "write", json.dumps(cfg)], timeout=900)
        except RuntimeError as exc:
            return None, f"writing the Zarr v2 copy failed: {_last_line(str(exc))}"
        data["paths"][f"v2-{codec}"] = out
        data["seconds"][f"write_v2-{codec}"] = run.result["seconds"]
    return python, note


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else text[:300]


# --------------------------------------------------------------------------- parent
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="6,000 samples, one round, peers on the Blosc-LZ4 store only"
    )
    parser.add_argument("--samples", type=int, help="samples (default 20,000; --quick 6,000)")
    parser.add_argument("--repeats", type=int, help="rounds of all configurations (default 3; --quick 1)")
    parser.add_argument(
        "--cap",
        "--naive-cap",
        type=int,
        help="samples read by per-sample zarr readers (default 1,280; --quick 640)",
    )
    parser.add_argument("--only", nargs="+", metavar="LOADER", help="run only these loaders (and memmap)")
    parser.add_argument(
        "--cache-mib",
        type=int,
        help="chunk cache / cache pool per process (default 16 MiB, ZarrDataset's default)",
    )
    parser.add_argument("--json", type=Path, help="write all measurements here")
    parser.add_argument("--dir", type=Path, help="where to write the data (default: a temporary folder)")
    parser.add_argument("--zarrdataset-venv", type=Path, help="reuse (or make) zarrdataset's environment here")
    parser.add_argument("--keep", action="store_true", help="keep the data folder")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0

    n = args.samples or (6_000 if args.quick else 20_000)
    repeats = args.repeats or (1 if args.quick else 3)
    cap = args.cap or (640 if args.quick else 1_280)
    cache_bytes = args.cache_mib * 2**20 if args.cache_mib else CACHE_BYTES
    wanted = [loader for loader in LOADERS if not args.only or loader.name in {*args.only, "memmap"}]
    root = Path(tempfile.mkdtemp(prefix="zf-bench-loader-", dir=args.dir))
    unavailable: dict[str, str] = {}  # peer -> why it did not run
    failures: dict[tuple[str, str, int], str] = {}
    runs: list[dict[str, Any]] = []
    try:
        print(f"writing {n:,} samples of {PATCH}×{PATCH} float32 to {root} ...", flush=True)
        data = write_data(root, n)
        zd_python = None
        for peer in PEERS:
            if not any(loader.peer == peer for loader in wanted):
                continue
            if peer == "zarrdataset":
                print("making zarrdataset's environment (zarr<3) and its Zarr v2 copies ...", flush=True)
                zd_python, note = prepare_zarrdataset(root, data, args.zarrdataset_venv)
                print(f"  {note}", flush=True)
                data["zarrdataset_env"] = note
                if zd_python is None:
                    unavailable[peer] = note
            elif reason := _peers_missing(peer):
                unavailable[peer] = reason
        print("  " + ", ".join(f"{k} {v:.1f} s" for k, v in data["seconds"].items()), flush=True)
        for peer, reason in unavailable.items():
            print(f"  {peer}: not run: {reason}", flush=True)
        configs = [
            (loader.name, codec, w)
            for w in WORKERS
            for loader in wanted
            if loader.peer not in unavailable and w in loader.workers
            for codec in loader.codecs
            if not args.quick or codec != "none" or loader.kind == "ours"  # --quick: the codecs for ours only
        ]
        warmed = -1
        for rep, (name, codec, w) in interleaved(configs, repeats):
            if rep != warmed:  # read every file once at the start of each round
                warm_page_cache(data["paths"].values())
                warmed = rep
            cfg = {"loader": name, "codec": codec, "workers": w, "paths": data["paths"], "cap": cap}
            cfg["cache_bytes"] = cache_bytes
            if name.startswith("zarrdataset"):
                cfg |= {"path": data["paths"][f"v2-{codec}"], "npy": data["paths"]["npy"], "batch": BATCH}
                cfg |= {"same_chunk": name.endswith("same-chunk"), "cap": cap if BY_NAME[name].capped else None}
                cmd = [str(zd_python), str(Path(_peers_zarrdataset.__file__).resolve()), "run", json.dumps(cfg)]
            else:
                cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(cfg)]
            try:
                run = run_measured(cmd, timeout=900)
            except RuntimeError as exc:
                failures[(name, codec, w)] = _last_line(str(exc))
                print(
                    f"  round {rep + 1}/{repeats} {name:>24} {codec:>4} w{w}: FAILED {failures[(name, codec, w)]}"
                )
                continue
            record = {**run.result, "loader": name, "codec": codec, "workers": w, "repeat": rep}
            record.update(
                peak_rss=run.peak_rss,
                peak_pss=run.pss_peak,
                main_rss=run.main_peak,
                worker_rss=run.child_peak,
                wall_s=run.wall_s,
            )
            record["randomness"] = _randomness(record.pop("order"), data["grid"]["chunk_samples"])
            runs.append(record)
            print(
                f"  round {rep + 1}/{repeats} {name:>24} {codec:>4} w{w}: {record['samples_per_s']:>9,.0f} "
                f"samples/s, peak RSS {run.peak_rss / 2**20:,.0f} MiB",
                flush=True,
            )
        nbytes = {k: dir_nbytes(v) for k, v in data["paths"].items()}
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)

    summary = summarize(runs)
    ratios = compute_ratios(summary, cache_bytes)
    print()
    print(
        textwrap.fill(
            f"{n:,} samples of {PATCH}×{PATCH} float32 ({n * SAMPLE_BYTES / 2**30:.2f} GiB), batch {BATCH}, page "
            f"cache warm; medians of {repeats} fresh-process run(s) per row; epoch timed after one warm-up batch "
            f"per worker (start-up excluded); torch.set_num_threads(1) in the main process; per-sample zarr "
            f"readers (*) read {min(cap, n):,} samples; chunk cache / cache pool {cache_bytes / 2**20:.0f} MiB "
            "per process.",
            115,
        )
    )
    rows = sorted(summary.values(), key=lambda r: (r["workers"], -r["samples_per_s"]))
    for row in rows:
        row["name"] = row["loader"] + (" *" if BY_NAME[row["loader"]].capped else "")
    rows += [
        {"name": name, "codec": codec, "workers": w, "spread": f"FAILED: {why}"}
        for (name, codec, w), why in failures.items()
        if (name, codec, w) not in summary
    ]
    print_table(
        rows,
        [
            ("name", "loader"),
            ("codec", "codec"),
            ("workers", "workers"),
            ("samples_per_s", "samples/s", ",.0f"),
            ("mb_per_s", "MB/s", ",.0f"),
            ("vs_memmap", "× memmap", ".3f"),
            ("chunks_per_batch", "chunks/batch", ".1f"),
            ("mixing", "mixing", ".2f"),
            ("lag1_corr", "lag-1 corr", ".2f"),
            ("peak_rss_mib", "RSS tree MiB", ",.0f"),
            ("peak_pss_mib", "PSS tree MiB", ",.0f"),
            ("main_rss_mib", "main MiB", ",.0f"),
            ("worker_rss_mib", "worker MiB", ",.0f"),
            ("decodes", "decodes", ",.0f"),
            ("spread", "min–max samples/s"),
        ],
    )
    print()
    print(f"on disk: {', '.join(f'{k} {v / 2**20:,.0f} MiB' for k, v in nbytes.items())}")
    print(
        textwrap.fill(
            "chunks/batch: distinct chunks in a batch of 64 (a uniform shuffle: "
            f"{_uniform_chunks(rows):.1f}); mixing: that / the uniform expectation; lag-1 corr: correlation of "
            "neighbouring samples' positions (0 for a uniform shuffle). RSS tree: peak of main + workers summed "
            "(a memmap's page-cache pages count); main / worker: each process's own peak (the largest worker). "
            "decodes: chunks decoded in the epoch (ours, in the measuring process). RSS budget (2 × the chunk "
            f"caches of the reading processes + 500 MB): workers 0 {rss_budget(cache_bytes, 0) / 2**20:,.0f} MiB, "
            f"workers 2 {rss_budget(cache_bytes, 2) / 2**20:,.0f} MiB.",
            115,
        )
    )
    for peer, reason in unavailable.items():
        print(f"{peer}: not run: {reason}")
    loads = [r["load_average_1min"] for r in runs]
    if loads:
        print(f"1-minute load average during the runs: {min(loads):.1f}–{max(loads):.1f} on {os.cpu_count()} CPUs")
    print()
    verdicts = []
    for key, value in ratios.items():
        op, need = FIGURES.get(key, (None, None))
        verdict = "-" if op is None else ("PASS" if (value >= need if op == ">=" else value <= need) else "FAIL")
        verdicts.append({"ratio": key, "value": value, "needed": f"{op} {need:g}" if op else "-", "": verdict})
    print_table(verdicts, [("ratio", "ratio"), ("value", "value", ".3f"), ("needed", "needed"), ("", "")])
    if args.json:
        write_json(
            args.json,
            {
                "runs": runs,
                "summary": list(summary.values()),
                "failures": [
                    {"loader": k[0], "codec": k[1], "workers": k[2], "error": v} for k, v in failures.items()
                ],
                "not_run": unavailable,
                "data": {**data, "nbytes": nbytes},
            },
            ratios,
            parameters={
                "samples": n,
                "repeats": repeats,
                "cap": cap,
                "batch_size": BATCH,
                "cache_bytes": cache_bytes,
                "versions": _versions(runs),
                "ratio_definitions": RATIO_DEFINITIONS,
            },
            figures={k: f"{op} {v:g}" for k, (op, v) in FIGURES.items()},
        )
        print(f"\nwrote {args.json}")
    return 0


def _peers_missing(peer: str) -> str | None:
    from benchmarks._peers import missing_peer

    return missing_peer(peer)


def _versions(runs: list[dict[str, Any]]) -> dict[str, str]:
    """Versions of the packages compared (zarrdataset's, and its zarr's, from its own environment)."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("torch", "zarr", "numcodecs", "xarray", "dask", "xbatcher", "tensorstore"):
        with contextlib.suppress(PackageNotFoundError):
            found[name] = version(name)
    for run in runs:
        found |= {f"zarrdataset-env:{k}": v for k, v in run.get("versions", {}).items()}
    return found


def _randomness(order: list[int], chunk_samples: int) -> dict[str, float]:
    from torch_bridge.sampler import order_randomness

    return order_randomness(order, chunk_samples, BATCH)


def _uniform_chunks(rows: list[dict[str, Any]]) -> float:
    values = [r["chunks_per_batch_uniform"] for r in rows if r.get("chunks_per_batch_uniform") is not None]
    return median(values)


def summarize(runs: list[dict[str, Any]]) -> dict[tuple[str, str, int], dict[str, Any]]:
    """Median per (loader, codec, workers), with MB/s, randomness and the ratio to the memmap."""
    summary: dict[tuple[str, str, int], dict[str, Any]] = {}
    keys = dict.fromkeys((r["loader"], r["codec"], r["workers"]) for r in runs)
    for name, codec, w in keys:
        mine = [r for r in runs if (r["loader"], r["codec"], r["workers"]) == (name, codec, w)]
        rates = [r["samples_per_s"] for r in mine]
        rate = median(rates)
        randomness = mine[0]["randomness"]
        summary[(name, codec, w)] = {
            "loader": name,
            "codec": codec,
            "workers": w,
            "samples_per_s": rate,
            "mb_per_s": rate * SAMPLE_BYTES / MB,
            "peak_rss_mib": median(r["peak_rss"] for r in mine) / 2**20,
            "peak_pss_mib": median(r.get("peak_pss", 0) for r in mine) / 2**20 or None,
            "main_rss_mib": median(r["main_rss"] for r in mine) / 2**20,
            "worker_rss_mib": median(r["worker_rss"] for r in mine) / 2**20 or None,  # None: no worker process
            "startup_s": median(r["startup_s"] for r in mine),
            "cpu_samples_per_s": median(r["samples_timed"] / r["main_cpu_s"] for r in mine) if w == 0 else None,
            "decodes": median(r["cache"]["decodes"] for r in mine) if "cache" in mine[0] else None,
            "spread": f"{min(rates):,.0f}–{max(rates):,.0f}",
            "runs": len(mine),
            **{k: randomness[k] for k in ("chunks_per_batch", "chunks_per_batch_uniform", "mixing", "lag1_corr")},
        }
    for (_, _, w), row in summary.items():
        memmap = summary.get(("memmap", "-", w))
        row["vs_memmap"] = row["samples_per_s"] / memmap["samples_per_s"] if memmap else None
    return summary


def compute_ratios(summary: dict[tuple[str, str, int], dict[str, Any]], cache_bytes: int) -> dict[str, float]:
    """The ratios of RATIO_DEFINITIONS that the rows measured allow."""

    def rate(name: str, w: int, codec: str = "lz4") -> float | None:
        row = summary.get((name, "-" if BY_NAME[name].kind == "limit" else codec, w))
        return row["samples_per_s"] if row else None

    def best_peer(w: int, peer: str | None = None) -> float | None:
        rates = [
            row["samples_per_s"]
            for (name, codec, workers), row in summary.items()
            if workers == w and codec == "lz4" and BY_NAME[name].peer and peer in (None, BY_NAME[name].peer)
        ]
        return max(rates) if rates else None

    pairs: dict[str, tuple[float | None, float | None]] = {
        "vs_memmap_w0": (rate("zarrforge-sample", 0), rate("memmap", 0)),
        "vs_memmap": (rate("zarrforge-sample", 2), rate("memmap", 2)),
        "vs_memmap_batch": (rate("zarrforge-batch", 2), rate("memmap", 2)),
        "vs_memmap_batch_w0": (rate("zarrforge-batch", 0), rate("memmap", 0)),
        "vs_memmap_gather": (rate("zarrforge-batch", 2), rate("memmap-batch", 2)),
        "vs_memmap_gather_w0": (rate("zarrforge-batch", 0), rate("memmap-batch", 0)),
        "vs_no_io": (rate("zarrforge-batch", 2), rate("no-io", 2)),
        "vs_best_peer_w0": (rate("zarrforge-batch", 0), best_peer(0)),
        "vs_best_peer": (rate("zarrforge-batch", 2), best_peer(2)),
        "vs_memmap_threaded": (rate("zarrforge-threaded", 2), rate("memmap", 2)),
        "vs_best_peer_threaded": (rate("zarrforge-threaded", 2), best_peer(2)),
    }
    for peer in PEERS:
        pairs[f"vs_{peer}"] = (rate("zarrforge-batch", 2), best_peer(2, peer))
        pairs[f"vs_{peer}_w0"] = (rate("zarrforge-batch", 0), best_peer(0, peer))
    pairs |= {
        "vs_naive_zarr": (rate("zarrforge-batch", 0), rate("naive-zarr", 0)),
        "vs_memmap_plain_dataloader": (rate("zarrforge-plain", 2), rate("memmap", 2)),
        "vs_memmap_w0_plain_dataloader": (rate("zarrforge-plain", 0), rate("memmap", 0)),
        "vs_memmap_w0_nocompression": (rate("zarrforge-batch", 0, "none"), rate("memmap", 0)),
        "vs_memmap_nocompression": (rate("zarrforge-batch", 2, "none"), rate("memmap", 2)),
    }
    for window in (4, 16):
        pairs[f"window{window}_cost"] = (rate(f"zarrforge-batch-window{window}", 2), rate("zarrforge-batch", 2))
        pairs[f"window{window}_cost_w0"] = (rate(f"zarrforge-batch-window{window}", 0), rate("zarrforge-batch", 0))
    ratios = {key: a / b for key, (a, b) in pairs.items() if a and b}
    for w, suffix in ((2, ""), (0, "_w0")):
        if ours := summary.get(("zarrforge-batch", "lz4", w)):
            ratios[f"rss_vs_budget{suffix}"] = ours["peak_rss_mib"] * 2**20 / rss_budget(cache_bytes, w)
            if ours["peak_pss_mib"]:
                ratios[f"pss_vs_budget{suffix}"] = ours["peak_pss_mib"] * 2**20 / rss_budget(cache_bytes, w)
    return ratios


def rss_budget(cache_bytes: int, workers: int) -> float:
    """The memory a loader may use: twice its chunk caches (one per reading process) and 500 MB."""
    return 2 * cache_bytes * max(1, workers) + 500 * MB


if __name__ == "__main__":
    sys.exit(main())
