"""Particle picking: the two storage modes against each other and against ``zarrforge patches``, and at scale.

**Modes** (default): synthetic 4096² float32 micrographs with 300 particle-like blobs each and RELION ``.star``
picks of their true centers, 128×128 windows every 64 pixels (stride = size / 2), each command in a fresh process
on the embedded LocalCluster, timed from its launch to the end of a ``sync`` of what it wrote, rounds interleaved,
the input read into the page cache just before each build (``--cold``: dropped from it instead):

- ``zarrforge patches --normalize`` on the same micrographs: the foundation's pipeline, the per-byte baseline;
- ``zarrforge picking --mode materialized`` and ``--mode virtual`` at ``--negative-ratio`` (default 1.0: every
  window, where stride = size / 2 stores each pixel four times in patches and once as a micrograph);
- the loader over each picking store: ``make_loader`` (chunk-shuffled random order, batch 64, 2 workers, and no
  worker for the decoding cost alone), page cache warm, one warm-up epoch, then a timed epoch; every batch is
  summed (the checksums of both modes are equal).

**Scale** (``--scale``): 150 and 600 micrographs of 4096² int16 (MRC mode 1: half the disk of float32, so 600 fit
beside their store) with 300 picks each, ``zarrforge picking`` at ``--scale-ratio`` (default 0.1), reporting
patches/s, peak RSS of the whole process tree and bytes on disk, to show time growing linearly and memory flat.

Prints tables and the ratios the picking issue sets goals for; ``--json`` writes everything. ``--quick`` runs the
modes on 4 micrographs of 2048² (about a minute).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import (
    GB,
    RSSSampler,
    dir_nbytes,
    median,
    print_table,
    run_worker,
    warm_page_cache,
    write_json,
)
from benchmarks.bench_patches import drop_caches

SIZE, STRIDE, RADIUS, PICKS = 128, 64, 20, 300


def make_set(folder: Path, n: int, shape: int, dtype: str) -> Path:
    """Generate (once, two processes) ``n`` micrographs of ``shape``² with ``PICKS`` picks each."""
    if len(list((folder / "picks").glob("*.star"))) == n:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    starts = list(range(0, n, max(1, n // 16)))
    jobs = [(str(folder), min(n, s + max(1, n // 16)) - s, shape, dtype, s) for s in starts]
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        pool.starmap(_write_part, jobs)
    return folder


def _write_part(folder: str, n: int, shape: int, dtype: str, first: int) -> None:
    from storage.synthetic import write_picking_set

    write_picking_set(folder, n, (shape, shape), seed=0, n_particles=PICKS, dtype=dtype, first=first)


def run_cli(args: list[str], store: Path) -> dict[str, Any]:
    """Run ``python -m engine ARGS -o STORE -q`` fresh; time it to the end of a sync, sample its tree's RSS."""
    shutil.rmtree(store, ignore_errors=True)
    cmd = [sys.executable, "-m", "engine", *args, "-o", str(store), "-q"]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with RSSSampler(proc.pid) as sampler:
        _, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{err[-3000:]}")
    os.sync()
    wall = time.perf_counter() - start
    meta = json.loads((store / "zarr.json").read_text())["attributes"]["zarrforge"]
    return {
        "samples": meta["n_samples"],
        "seconds": wall,
        "run_seconds": meta["summary"]["seconds"],
        "bytes_decoded": meta["summary"]["nbytes"],
        "bytes_on_disk": dir_nbytes(store),
        "peak_rss": sampler.peak,
        "counts": meta.get("counts"),
    }


def loader_worker(store: str, max_samples: int, workers: int) -> dict[str, Any]:
    """Samples/s of ``make_loader`` (random chunk-shuffled order, batch 64) over a picking store."""
    import torch

    from torch_bridge import ZarrDataset, make_loader

    ds = ZarrDataset(store, arrays=["patches"])
    loader = make_loader(ds, batch_size=64, num_workers=workers, seed=0, persistent_workers=workers > 0)
    total = torch.zeros((), dtype=torch.float64)
    rates = []
    for epoch in range(2):  # the first warms the page cache and starts the workers
        if hasattr(loader.batch_sampler, "set_epoch"):
            loader.batch_sampler.set_epoch(epoch)
        n = 0
        start = time.perf_counter()
        for batch in loader:
            total += batch["patches"].sum(dtype=torch.float64)
            n += len(batch["patches"])
            if n >= max_samples:
                break
        rates.append(n / (time.perf_counter() - start))
    return {"samples_per_s": rates[-1], "samples": n, "checksum": float(total)}


def modes(args: argparse.Namespace, work: Path) -> tuple[list[dict[str, Any]], dict[str, float], dict[str, Any]]:
    n = args.micrographs or (4 if args.quick else 24)
    shape = args.shape or (2048 if args.quick else 4096)
    ratio = args.negative_ratio
    folder = make_set(work / f"set-{n}x{shape}-float32", n, shape, "float32")
    mics, picks = str(folder / "micrographs"), str(folder / "picks")
    window = ["--size", str(SIZE), "--stride", str(STRIDE)]
    picking = ["picking", mics, "--picks", picks, *window, "--radius", str(RADIUS), "--negative-ratio", str(ratio)]
    configs = {
        "patches": ["patches", mics, *window, "--normalize"],
        "materialized": [*picking, "--mode", "materialized"],
        "virtual": [*picking, "--mode", "virtual"],
    }
    print(
        f"modes: {n} micrographs of {shape}², negative ratio {ratio}, {args.repeats} round(s) in {work}",
        flush=True,
    )
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in configs}
    loads: dict[str, list[dict[str, Any]]] = {"materialized": [], "virtual": []}
    loads_w0: dict[str, list[dict[str, Any]]] = {"materialized": [], "virtual": []}
    for r in range(args.repeats):
        order = list(configs) if r % 2 == 0 else list(reversed(configs))
        for name in order:
            store = work / f"{name}.zarr"
            # This VM reclaims idle page cache within minutes (DAMON): make the input's state explicit.
            if args.cold:
                cold = drop_caches()
            else:
                warm_page_cache([folder])
                cold = False
            runs[name].append({**run_cli(configs[name], store), "input_cold": cold})
            if name in loads:
                cmd = [sys.executable, __file__, "--worker-loader", str(store), str(args.loader_samples)]
                loads[name].append(run_worker([*cmd, "2"]).result)
                loads_w0[name].append(run_worker([*cmd, "0"]).result)
            if name == "patches":
                shutil.rmtree(store, ignore_errors=True)
            print(f"round {r + 1}: {name} {runs[name][-1]['seconds']:.1f} s", flush=True)
    for name in ("materialized", "virtual"):
        shutil.rmtree(work / f"{name}.zarr", ignore_errors=True)

    def m(name: str, key: str) -> float:
        return median(run[key] for run in runs[name])

    rows = []
    for name in configs:
        rows.append(
            {
                "run": f"zarrforge {name}" if name == "patches" else f"zarrforge picking --mode {name}",
                "samples": m(name, "samples"),
                "seconds": m(name, "seconds"),
                "rate": median(run["samples"] / run["seconds"] for run in runs[name]),
                "decoded_bw": median(run["bytes_decoded"] / run["seconds"] for run in runs[name]) / GB,
                "disk": m(name, "bytes_on_disk") / GB,
                "rss": m(name, "peak_rss") / GB,
                "loader": median(x["samples_per_s"] for x in loads[name]) if name in loads else None,
                "loader_w0": median(x["samples_per_s"] for x in loads_w0[name]) if name in loads else None,
                "run_seconds": m(name, "run_seconds"),
            }
        )
    print_table(
        rows,
        [
            ("run", "run"),
            ("samples", "samples", ",.0f"),
            ("seconds", "seconds", ".1f"),
            ("run_seconds", "run only s", ".1f"),
            ("rate", "samples/s", ",.0f"),
            ("decoded_bw", "GB/s written (decoded)", ".2f"),
            ("disk", "GB on disk", ".2f"),
            ("rss", "peak RSS GB", ".2f"),
            ("loader", "loader samples/s (w2)", ",.0f"),
            ("loader_w0", "loader samples/s (w0)", ",.0f"),
        ],
    )
    by = {row["run"].split()[-1]: row for row in rows}
    ratios = {
        "materialized_vs_patches_per_byte": by["materialized"]["decoded_bw"] / by["patches"]["decoded_bw"],
        "virtual_build_speedup": by["materialized"]["seconds"] / by["virtual"]["seconds"],
        "virtual_build_speedup_run_only": by["materialized"]["run_seconds"] / by["virtual"]["run_seconds"],
        "virtual_bytes_saving": by["materialized"]["disk"] / by["virtual"]["disk"],
        "virtual_loader_vs_materialized": by["virtual"]["loader"] / by["materialized"]["loader"],
        "virtual_loader_vs_materialized_w0": by["virtual"]["loader_w0"] / by["materialized"]["loader_w0"],
    }
    goals = {
        "materialized_vs_patches_per_byte": 0.5,
        "virtual_build_speedup": 3.0,
        "virtual_bytes_saving": 3.0,
        "virtual_loader_vs_materialized": 0.5,
    }
    _print_ratios(ratios, goals)
    raw = {"runs": runs, "loader": loads, "loader_w0": loads_w0, "micrographs": n, "shape": shape}
    return rows, ratios, {**raw, "negative_ratio": ratio}


def scale(args: argparse.Namespace, work: Path) -> tuple[list[dict[str, Any]], dict[str, float], dict[str, Any]]:
    sizes = sorted(int(s) for s in args.scale_micrographs.split(","))
    shape = args.shape or 4096
    folder = make_set(work / f"set-{sizes[-1]}x{shape}-int16", sizes[-1], shape, "int16")
    files = sorted((folder / "micrographs").glob("*.mrc"))
    print(f"scale: {sizes} micrographs of {shape}² int16, negative ratio {args.scale_ratio}", flush=True)
    rows, runs = [], {}
    for n in sizes:
        mics = [str(f) for f in files[:n]]
        cmd = ["picking", *mics, "--picks", str(folder / "picks"), "--size", str(SIZE), "--stride", str(STRIDE)]
        cmd += ["--radius", str(RADIUS), "--negative-ratio", str(args.scale_ratio), "--mode", args.scale_mode]
        cold = drop_caches()  # 600 micrographs do not fit in the page cache: start every size cold
        run = {**run_cli(cmd, work / f"scale-{n}.zarr"), "input_cold": cold}
        shutil.rmtree(work / f"scale-{n}.zarr", ignore_errors=True)
        runs[n] = run
        rows.append(
            {
                "micrographs": n,
                "samples": run["samples"],
                "seconds": run["seconds"],
                "rate": run["samples"] / run["seconds"],
                "per_mic": run["seconds"] / n,
                "disk": run["bytes_on_disk"] / GB,
                "rss": run["peak_rss"] / GB,
            }
        )
        print(f"{n} micrographs: {run['seconds']:.0f} s, peak RSS {run['peak_rss'] / GB:.2f} GB", flush=True)
    print_table(
        rows,
        [
            ("micrographs", "micrographs"),
            ("samples", "samples", ",.0f"),
            ("seconds", "seconds", ".0f"),
            ("rate", "patches/s", ",.0f"),
            ("per_mic", "s per micrograph", ".2f"),
            ("disk", "GB on disk", ".2f"),
            ("rss", "peak RSS GB", ".2f"),
        ],
    )
    small, large = runs[sizes[0]], runs[sizes[-1]]
    ratios = {
        "time_per_micrograph_growth": (large["seconds"] / sizes[-1]) / (small["seconds"] / sizes[0]) - 1,
        "rss_growth": large["peak_rss"] / small["peak_rss"] - 1,
    }
    _print_ratios(ratios, {}, below={"rss_growth": 0.2, "time_per_micrograph_growth": 0.2})
    return rows, ratios, {"runs": runs, "shape": shape, "negative_ratio": args.scale_ratio}


def _print_ratios(
    ratios: dict[str, float], goals: dict[str, float], below: dict[str, float] | None = None
) -> None:
    print()
    for key, value in ratios.items():
        verdict = ""
        if key in goals:
            verdict = f"  (goal >= {goals[key]}: {'PASS' if value >= goals[key] else 'FAIL'})"
        if below and key in below:
            verdict = f"  (goal < {below[key]}: {'PASS' if value < below[key] else 'FAIL'})"
        print(f"{key}: {value:.2f}{verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="modes on 4 micrographs of 2048² (about a minute)")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--micrographs", type=int, help="micrographs for the modes (default 24, quick 4)")
    parser.add_argument("--shape", type=int, help="micrograph side (default 4096, quick 2048)")
    parser.add_argument("--negative-ratio", type=float, default=1.0, help="for the modes (default 1.0)")
    parser.add_argument("--repeats", type=int, default=1, help="interleaved rounds of the modes (default 1)")
    parser.add_argument("--cold", action="store_true", help="drop the page cache before each build (root)")
    parser.add_argument("--loader-samples", type=int, default=40_000, help="samples per timed loader epoch")
    parser.add_argument("--scale", action="store_true", help="also run the scale benchmark (long, ~45 GB disk)")
    parser.add_argument("--only-scale", action="store_true", help="run only the scale benchmark")
    parser.add_argument("--scale-micrographs", default="150,600", help="micrograph counts (default 150,600)")
    parser.add_argument("--scale-ratio", type=float, default=0.1, help="negative ratio at scale (default 0.1)")
    parser.add_argument("--scale-mode", default="materialized", choices=["materialized", "virtual"])
    parser.add_argument("--workdir", type=Path, help="where inputs and outputs go (default: a temporary folder)")
    parser.add_argument("--worker-loader", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker_loader:
        store, samples, workers = args.worker_loader
        print(json.dumps(loader_worker(store, int(samples), int(workers))))
        return
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-picking-", dir="."))
    work.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    ratios: dict[str, float] = {}
    if not args.only_scale:
        rows, r, raw = modes(args, work)
        results["modes"] = {"table": rows, **raw}
        ratios.update(r)
    if args.scale or args.only_scale:
        rows, r, raw = scale(args, work)
        results["scale"] = {"table": rows, **raw}
        ratios.update(r)
    if args.json:
        write_json(args.json, results, ratios, parameters={"size": SIZE, "stride": STRIDE, "radius": RADIUS})
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
