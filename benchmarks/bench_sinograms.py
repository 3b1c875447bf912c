"""Projections → sinograms: zarrforge's slab transpose against dask's rechunks and plain numpy, in one run.

A synthetic NXtomo scan (float32 frames, HDF5 chunked one projection per chunk, uncompressed; 10 flats and 5
darks first) of ``--angles × --rows × --cols`` (default 900 × 512 × 1024: 1.9 GB) is written once; then each
approach runs in a fresh process, input dropped from the page cache first when allowed (root), and is timed from
its launch to the end of an ``os.sync()`` of its output, its process tree's peak RSS sampled:

- ``slab``: ``zarrforge sinograms`` (default ``--method slab``): each block reads all angles × a band of rows
  straight from the file, normalizes and transposes it;
- ``rechunk-tasks`` / ``rechunk-p2p``: the same command with ``--method rechunk-tasks`` / ``rechunk-p2p``: dask
  rechunks the projection-chunked source into bands (on the same embedded LocalCluster);
- ``numpy``: h5py reads every projection into memory, the same normalization kernel, one ``zarr`` write of the
  same layout (chunks, shards, codec).

Every approach writes the same sinograms (checked). ``--scale`` adds a run of ``slab`` at 4× the angles, for
its peak RSS. ``--quick``: 300 × 128 × 512. Prints a table, writes JSON with ``ratios``.
"""

from __future__ import annotations

import argparse
import json
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

import numpy as np

from benchmarks._common import GB, RSSSampler, dir_nbytes, median, print_table, write_json
from benchmarks.bench_patches import drop_caches

N_FLATS, N_DARKS = 10, 5


def make_scan(path: Path, n_angles: int, rows: int, cols: int) -> Path:
    """Write (once) a float32 NXtomo scan, one projection per HDF5 chunk, uncompressed."""
    import h5py

    if path.exists():
        return path
    tmp = path.with_suffix(".partial")
    n = N_DARKS + N_FLATS + n_angles
    keys = np.concatenate([np.full(N_DARKS, 2.0), np.full(N_FLATS, 1.0), np.zeros(n_angles)])
    y = np.linspace(0, 1, rows, dtype=np.float32)[:, None]
    x = np.linspace(-1, 1, cols, dtype=np.float32)[None, :]
    rng = np.random.default_rng(0)
    with h5py.File(tmp, "w") as f:
        entry = f.create_group("entry1/tomo_entry")
        f["entry1"].attrs["NX_class"] = "NXentry"
        entry.attrs["NX_class"] = "NXsubentry"
        entry["definition"] = np.array([b"NXtomo"])
        det = entry.create_group("instrument/detector")
        data = det.create_dataset("data", (n, rows, cols), dtype="float32", chunks=(1, rows, cols))
        flat = (20000 * (1 + 0.05 * np.cos(3 * x) * y)).astype(np.float32)
        for i in range(N_DARKS):
            data[i] = 100 + rng.standard_normal((rows, cols), dtype=np.float32)
        for i in range(N_FLATS):
            data[N_DARKS + i] = flat
        noise = rng.standard_normal((rows, cols), dtype=np.float32)
        for a in range(n_angles):
            theta = np.pi * a / n_angles
            t = 0.3 + 0.6 * np.abs(np.sin(4 * (x - 0.4 * np.cos(theta)) + y))
            data[N_DARKS + N_FLATS + a] = 100 + flat * t + 30 * np.roll(noise, a, axis=1)
        det["image_key"] = keys
        angles = np.concatenate([np.zeros(N_DARKS + N_FLATS), np.linspace(0, 180, n_angles)])
        entry.create_dataset("sample/rotation_angle", data=angles).attrs["units"] = "degree"
    os.replace(tmp, path)
    return path


def numpy_worker(scan: str, out: str) -> dict[str, Any]:
    """Everything in memory: read, normalize, transpose, write the same store layout with zarr."""
    import h5py
    import zarr

    from engine import config
    from graphs.sinograms import flat_field_inverse, normalize_band, plan_band
    from storage.codecs import compressors

    start = time.perf_counter()
    with h5py.File(scan, "r") as f:
        keys = f["entry1/tomo_entry/instrument/detector/image_key"][()]
        data = f["entry1/tomo_entry/instrument/detector/data"]
        flat = data[N_DARKS : N_DARKS + N_FLATS].astype(np.float32).mean(0, dtype=np.float64).astype(np.float32)
        dark = data[:N_DARKS].astype(np.float32).mean(0, dtype=np.float64).astype(np.float32)
        projections = data[int(np.flatnonzero(keys == 0)[0]) :]
    sino = normalize_band(projections, dark, flat_field_inverse(flat, dark))
    del projections
    n_angles, cols = sino.shape[1:]
    chunk_rows, band = plan_band(
        n_angles,
        sino.shape[0],
        cols,
        block_bytes=int(config.get("sinograms.block-bytes")),
        chunk_bytes=int(config.get("store.chunk-bytes")),
    )
    array = zarr.create_array(
        out,
        shape=sino.shape,
        dtype="float32",
        chunks=(chunk_rows, n_angles, cols),
        shards=(band, n_angles, cols),
        compressors=compressors("blosc-lz4", None),
    )
    array[:] = sino
    return {"seconds": time.perf_counter() - start}


def run(cmd: list[str], out: Path) -> dict[str, Any]:
    """Run ``cmd`` fresh; time it to the end of a sync of ``out``; sample its tree's RSS."""
    shutil.rmtree(out, ignore_errors=True)
    cold = drop_caches()
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with RSSSampler(proc.pid) as sampler:
        stdout, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{err[-3000:]}")
    os.sync()
    return {"seconds": time.perf_counter() - start, "peak_rss": sampler.peak, "cold": cold, "out": stdout[-300:]}


def commands(scan: Path, out: Path) -> dict[str, list[str]]:
    cli = [sys.executable, "-m", "engine", "sinograms", str(scan), "-o", str(out), "-q"]
    return {
        "slab": [*cli, "--method", "slab"],
        "rechunk-tasks": [*cli, "--method", "rechunk-tasks"],
        "rechunk-p2p": [*cli, "--method", "rechunk-p2p"],
        "numpy": [sys.executable, __file__, "--worker", "numpy", "--scan", str(scan), "--out", str(out)],
    }


def same_sinograms(a: Path, b: Path) -> bool:
    import zarr

    x = zarr.open_array(str(a / "sinograms") if (a / "sinograms").exists() else str(a), mode="r")
    y = zarr.open_array(str(b / "sinograms") if (b / "sinograms").exists() else str(b), mode="r")
    step = max(1, x.shape[0] // 8)
    return all(np.array_equal(x[i], y[i]) for i in range(0, x.shape[0], step))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--angles", type=int, default=None)
    parser.add_argument("--rows", type=int, default=None)
    parser.add_argument("--cols", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="300 × 128 × 512")
    parser.add_argument("--scale", action="store_true", help="also slab at 4× the angles (peak RSS)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--methods", default="slab,rechunk-tasks,rechunk-p2p,numpy")
    parser.add_argument("--work", type=Path, default=None, help="folder for the scans and stores (kept)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--scan", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker == "numpy":
        print(json.dumps(numpy_worker(args.scan, args.out)))
        return
    shape = (args.angles or (300 if args.quick else 900), args.rows or (128 if args.quick else 512))
    shape = (*shape, args.cols or (512 if args.quick else 1024))
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-sinograms-"))
    work.mkdir(parents=True, exist_ok=True)
    scan = make_scan(work / f"scan-{'x'.join(map(str, shape))}.nxs", *shape)
    nbytes = shape[0] * shape[1] * shape[2] * 4
    print(f"scan {shape} float32 ({nbytes / GB:.2f} GB) in {work}; {args.repeats} round(s)", flush=True)
    methods = args.methods.split(",")
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    outs = {m: work / f"out-{m}.zarr" for m in methods}
    for r in range(args.repeats):
        for m in methods:
            result = run(commands(scan, outs[m])[m], outs[m])
            result["bytes_on_disk"] = dir_nbytes(outs[m])
            runs[m].append(result)
            print(
                f"  round {r + 1} {m}: {result['seconds']:.1f} s, peak RSS {result['peak_rss'] / GB:.2f} GB",
                flush=True,
            )
    reference = outs[methods[0]]
    identical = {m: same_sinograms(reference, outs[m]) for m in methods[1:]}
    rows = [
        {
            "method": m,
            "seconds": median(x["seconds"] for x in runs[m]),
            "peak_rss_gb": max(x["peak_rss"] for x in runs[m]) / GB,
            "gb_per_s": nbytes / GB / median(x["seconds"] for x in runs[m]),
        }
        for m in methods
    ]
    scaled: dict[str, Any] = {}
    if args.scale:
        big_shape = (4 * shape[0], shape[1], shape[2])
        big = make_scan(work / f"scan-{'x'.join(map(str, big_shape))}.nxs", *big_shape)
        out = work / "out-slab-4x.zarr"
        scaled = run(commands(big, out)["slab"], out)
        rows.append(
            {
                "method": f"slab, 4× angles {big_shape}",
                "seconds": scaled["seconds"],
                "peak_rss_gb": scaled["peak_rss"] / GB,
                "gb_per_s": 4 * nbytes / GB / scaled["seconds"],
            }
        )
        shutil.rmtree(out, ignore_errors=True)
    print_table(
        rows,
        [("method", "approach"), ("seconds", "wall s", ".1f"), ("peak_rss_gb", "peak RSS GB", ".2f"),
         ("gb_per_s", "GB/s", ".2f")],
    )  # fmt: skip
    cold = all(x["cold"] for v in runs.values() for x in v)
    print(f"same sinograms as {methods[0]}: {identical}; input dropped from the page cache: {cold}")
    by = {row["method"]: row for row in rows}
    ratios: dict[str, float] = {}
    if "slab" in by:
        others = [by[m]["seconds"] for m in methods if m != "slab"]
        if others:
            ratios["slab_speed_vs_best_other"] = min(others) / by["slab"]["seconds"]
        for m in methods:
            if m != "slab":
                ratios[f"slab_speed_vs_{m}"] = by[m]["seconds"] / by["slab"]["seconds"]
        ratios["slab_peak_rss_gb"] = by["slab"]["peak_rss_gb"]
        if scaled:
            ratios["slab_4x_angles_peak_rss_gb"] = scaled["peak_rss"] / GB
    print("ratios:", json.dumps(ratios))
    if args.json:
        write_json(args.json, rows, ratios, shape=list(shape), runs=runs, identical=identical)
    for out in outs.values():
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
