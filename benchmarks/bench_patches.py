"""Patch extraction: ``zarrforge patches`` vs one TIF file per patch, vs this machine's raw write bandwidth.

Micrographs (synthetic, float32, like motion-corrected cryo-EM sums) are cut into 128×128 patches every 64 pixels,
the foundation issue's workload. In one run, interleaved:

- **raw write bandwidth**: sequential writes of 64 MiB buffers, then fsync (what the disk can take), and the
  cold read of them back; from both, the **disk ceiling**: patches/s of a tool that only read its input cold and
  wrote zarrforge's output bytes (``disk_ceiling_vs_tif_per_patch``; ``vs_disk_ceiling`` is ours over it);
- **TIF per patch**: the old NoStripesNet way, ``tifffile.imwrite`` of every patch to its own file, in a fresh
  process timed from its launch (imports included) to the end of its ``sync``, as zarrforge is;
- **zarrforge**: ``python -m engine patches ... -q`` in a fresh process on the embedded LocalCluster, timed from
  launch (cluster start included) to the end of a ``sync`` of the written data, with the peak RSS of its whole
  process tree (client, scheduler, workers); once on all micrographs and once on a quarter of them, to show that
  memory does not grow with the input.

Input is made cold before each run where the kernel allows it (``/proc/sys/vm/drop_caches``, as root); the JSON
says whether it could. Run ``python benchmarks/bench_patches.py --quick`` (under a minute) or without ``--quick``
for the issue's figures (24 micrographs of 4096², about 6 GB of patches).
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

import numpy as np

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import GB, RSSSampler, dir_nbytes, median, print_table, run_worker, write_json

SIZE, STRIDE = 128, 64


def drop_caches() -> bool:
    """Flush dirty pages and drop the page cache (root only); return whether the cache was dropped."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True


def make_micrographs(folder: Path, n: int, shape: int) -> list[Path]:
    """Generate (once) ``n`` synthetic micrographs of ``shape``² pixels."""
    from storage.synthetic import write_micrographs

    existing = sorted(folder.glob("*.mrc"))
    if len(existing) == n:
        return existing
    shutil.rmtree(folder, ignore_errors=True)
    return write_micrographs(folder, n, (shape, shape), seed=0)


def raw_bandwidth(path: Path, nbytes: int) -> tuple[float, float]:
    """Bytes/s of sequential 64 MiB writes of ``nbytes`` followed by fsync, then of reading them back cold."""
    buf = np.random.default_rng(0).integers(0, 255, 64 * 2**20, dtype=np.uint8).tobytes()
    start = time.perf_counter()
    with open(path, "wb", buffering=0) as f:
        written = 0
        while written < nbytes:
            written += f.write(buf)
        os.fsync(f.fileno())
    write_seconds = time.perf_counter() - start
    drop_caches()
    into = bytearray(len(buf))
    start = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while f.readinto(into):
            pass
    read_seconds = time.perf_counter() - start
    path.unlink()
    return written / write_seconds, written / read_seconds


def tif_worker(files: list[str], out: str) -> dict[str, Any]:
    """One TIF per patch, as NoStripesNet's tool writes them (runs in a fresh process)."""
    import mrcfile
    import tifffile

    out_dir = Path(out)
    start = time.perf_counter()
    n = 0
    for i, file in enumerate(files):
        image = mrcfile.read(file)
        h, w = image.shape
        for y in range(0, h - SIZE + 1, STRIDE):
            for x in range(0, w - SIZE + 1, STRIDE):
                tifffile.imwrite(out_dir / f"{i:04d}_{y:05d}_{x:05d}.tif", image[y : y + SIZE, x : x + SIZE])
                n += 1
    os.sync()
    seconds = time.perf_counter() - start
    return {"patches": n, "seconds": seconds, "bytes_on_disk": dir_nbytes(out_dir)}


def run_tif(files: list[Path], work: Path) -> dict[str, Any]:
    out = work / "tif"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    cold = drop_caches()
    cmd = [sys.executable, __file__, "--worker-tif", str(out), *map(str, files)]
    run = run_worker(cmd)
    shutil.rmtree(out, ignore_errors=True)
    # Like zarrforge's, the baseline's time runs from the launch of its process to the end of its sync.
    return {
        **run.result,
        "seconds_in_process": run.result["seconds"],
        "seconds": run.wall_s,
        "peak_rss": run.peak_rss,
        "cold": cold,
    }


def run_zarrforge(files: list[Path], work: Path, label: str) -> dict[str, Any]:
    store = work / f"{label}.zarr"
    shutil.rmtree(store, ignore_errors=True)
    cold = drop_caches()
    cmd = [sys.executable, "-m", "engine", "patches", *map(str, files), "-o", str(store)]
    cmd += ["--size", str(SIZE), "--stride", str(STRIDE), "-q"]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with RSSSampler(proc.pid) as sampler:
        _, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"zarrforge patches failed:\n{err[-3000:]}")
    os.sync()
    wall = time.perf_counter() - start
    meta = json.loads((store / "zarr.json").read_text())["attributes"]["zarrforge"]
    summary = meta["summary"]
    result = {
        "label": label,
        "micrographs": len(files),
        "patches": meta["n_samples"],
        "seconds": wall,
        "run_seconds": summary["seconds"],
        "bytes_decoded": summary["nbytes"],
        "bytes_on_disk": dir_nbytes(store),
        "peak_rss": sampler.peak,
        "cold": cold,
    }
    shutil.rmtree(store, ignore_errors=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 micrographs of 2048² (under a minute)")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--micrographs", type=int, help="number of micrographs (default 24, quick 8)")
    parser.add_argument("--shape", type=int, help="micrograph side (default 4096, quick 2048)")
    parser.add_argument(
        "--tif-micrographs", type=int, help="micrographs for the TIF baseline (default 2, quick 1)"
    )
    parser.add_argument("--repeats", type=int, default=None, help="rounds (default 2, quick 1)")
    parser.add_argument("--workdir", type=Path, help="where inputs and outputs go (default: a temporary folder)")
    parser.add_argument("--worker-tif", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker_tif:
        print(json.dumps(tif_worker(args.worker_tif[1:], args.worker_tif[0])))
        return

    n = args.micrographs or (8 if args.quick else 24)
    shape = args.shape or (2048 if args.quick else 4096)
    n_tif = args.tif_micrographs or (1 if args.quick else 2)
    repeats = args.repeats or (1 if args.quick else 2)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-patches-", dir="."))
    work.mkdir(parents=True, exist_ok=True)
    files = make_micrographs(work / f"mics-{n}x{shape}", n, shape)
    quarter = files[: max(1, n // 4)]
    print(
        f"{n} micrographs of {shape}² float32 in {work}; patches {SIZE}/{STRIDE}; {repeats} round(s)", flush=True
    )

    per_image = ((shape - SIZE) // STRIDE + 1) ** 2
    raw_bytes = min(2 * 2**30, n * per_image * SIZE * SIZE * 4 // 2)
    raw, raw_read, tif, full, small = [], [], [], [], []
    for r in range(repeats):
        write_bps, read_bps = raw_bandwidth(work / "raw.bin", raw_bytes)
        raw.append(write_bps)
        raw_read.append(read_bps)
        if r % 2 == 0:
            full.append(run_zarrforge(files, work, "all"))
            tif.append(run_tif(files[:n_tif], work))
        else:
            tif.append(run_tif(files[:n_tif], work))
            full.append(run_zarrforge(files, work, "all"))
        small.append(run_zarrforge(quarter, work, "quarter"))
        print(f"round {r + 1}: raw {raw[-1] / GB:.2f} GB/s, ours {full[-1]['seconds']:.1f} s", flush=True)
    raw_bw, raw_read_bw = median(raw), median(raw_read)

    def rate(runs: list[dict[str, Any]], key: str = "seconds") -> float:
        return median(run["patches"] / run[key] for run in runs)

    ours_rate, tif_rate = rate(full), rate(tif)
    ours_disk_bw = median(run["bytes_on_disk"] / run["seconds"] for run in full)
    ours_decoded_bw = median(run["bytes_decoded"] / run["seconds"] for run in full)
    rss_full = median(run["peak_rss"] for run in full)
    rss_small = median(run["peak_rss"] for run in small)
    # The fastest any tool could go on this disk: read the input cold and write these bytes, nothing else.
    input_bytes = n * shape * shape * 4
    ceiling_rate = median(
        run["patches"] / (input_bytes / raw_read_bw + run["bytes_on_disk"] / raw_bw) for run in full
    )
    rows = [
        {"approach": "raw sequential write + fsync", "rate": None, "bw": raw_bw / GB, "rss": None},
        {"approach": "raw sequential read, cold", "rate": None, "bw": raw_read_bw / GB, "rss": None},
        {"approach": "disk ceiling: read input + write output", "rate": ceiling_rate, "bw": None, "rss": None},
        {
            "approach": f"one TIF per patch ({n_tif} micrographs)",
            "rate": tif_rate,
            "bw": median(t["bytes_on_disk"] / t["seconds"] for t in tif) / GB,
            "rss": median(t["peak_rss"] for t in tif) / GB,
        },
        {
            "approach": f"zarrforge patches ({len(quarter)} micrographs)",
            "rate": rate(small),
            "bw": median(s["bytes_on_disk"] / s["seconds"] for s in small) / GB,
            "rss": rss_small / GB,
        },
        {
            "approach": f"zarrforge patches ({n} micrographs)",
            "rate": ours_rate,
            "bw": ours_disk_bw / GB,
            "rss": rss_full / GB,
        },
        {
            "approach": f"  same, run only (no cluster start, {n} micrographs)",
            "rate": rate(full, "run_seconds"),
            "bw": None,
            "rss": None,
        },
    ]
    print_table(
        rows,
        [
            ("approach", "approach"),
            ("rate", "patches/s", ",.0f"),
            ("bw", "GB/s to disk", ".2f"),
            ("rss", "peak RSS GB", ".2f"),
        ],
    )
    ratios = {
        "vs_tif_per_patch": ours_rate / tif_rate,
        "vs_write_bandwidth": ours_disk_bw / raw_bw,
        "vs_write_bandwidth_decoded": ours_decoded_bw / raw_bw,
        "rss_growth_4x": rss_full / rss_small - 1,
        "disk_ceiling_vs_tif_per_patch": ceiling_rate / tif_rate,
        "vs_disk_ceiling": ours_rate / ceiling_rate,
    }
    goals = {"vs_tif_per_patch": (">=", 10), "vs_write_bandwidth": (">=", 0.4), "rss_growth_4x": ("<", 0.2)}
    print()
    for key, value in ratios.items():
        goal = goals.get(key)
        verdict = ""
        if goal:
            ok = value >= goal[1] if goal[0] == ">=" else value < goal[1]
            verdict = f"  (goal {goal[0]} {goal[1]}: {'PASS' if ok else 'FAIL'})"
        print(f"{key}: {value:.2f}{verdict}")
    print(
        f"input cold: {all(run['cold'] for run in full + tif)}; compression ratio on disk: "
        f"{median(r['bytes_decoded'] / r['bytes_on_disk'] for r in full):.2f}"
    )
    if args.json:
        results = {
            "raw_write_bps": raw,
            "raw_read_bps": raw_read,
            "tif": tif,
            "zarrforge": full,
            "zarrforge_quarter": small,
        }
        write_json(
            args.json,
            results,
            ratios,
            parameters={
                "micrographs": n,
                "shape": shape,
                "size": SIZE,
                "stride": STRIDE,
                "tif_micrographs": n_tif,
            },
        )
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
