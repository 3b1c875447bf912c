"""Image folders: an epoch from the store vs re-reading and resizing the TIF files every epoch, and ingest speed.

Generated 1024² 16-bit TIFs with a zero background band (the default 2,000; ``--quick`` 200), resized to 256²:

- **baseline** (the tool zarrforge replaces, ``cache_rate=0``): a map-style Dataset that reads each TIF with
  tifffile, resizes it with ``skimage.transform.resize`` (anti-aliased) and mask-normalizes it, every epoch;
- **zarrforge**: ``image_loaders`` over the store ``zarrforge images`` made, with ``cache_rate`` 0, 0.5 and 1,
  its workers as threads (the default) and as DataLoader worker processes;

all with the same loader settings (batch 8, 2 workers, shuffled), one timed epoch after a warm-up epoch, page
cache warm. Ingest: ``zarrforge images`` on its default LocalCluster of single-threaded worker processes (the
resizing holds the GIL), 2 workers vs 1, each run in a fresh process timed from launch. Prints a table and
ratios; ``--json`` writes them.
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

from benchmarks._common import median, print_table, run_worker, warm_page_cache, write_json

SIZE = 256


def make_tifs(folder: Path, n: int, side: int) -> Path:
    """``n`` 16-bit ``side``² TIFs (once)."""
    import tifffile

    if len(list(folder.glob("*.tif"))) == n:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        image = rng.integers(1, 60000, (side, side), dtype=np.uint16)
        image[: side // 8] = 0
        tifffile.imwrite(folder / f"im{i:05d}.tif", image)
    return folder


class TifDataset:
    """The baseline: read, resize and mask-normalize one TIF per sample, every time."""

    def __init__(self, files: list[str]) -> None:
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> Any:
        import tifffile
        import torch
        from skimage.transform import resize

        from graphs.images import masked_normalize

        image = tifffile.imread(self.files[i]).astype(np.float32)
        small = resize(image, (SIZE, SIZE), order=1, anti_aliasing=True, preserve_range=True).astype(np.float32)
        return torch.from_numpy(masked_normalize(small))[None]


def epoch_worker(
    kind: str, path: str, cache_rate: float, workers: int = 2, what: str = "threads"
) -> dict[str, Any]:
    """Seconds of one epoch of a loader over the TIFs, or over the store's train split after a warm-up epoch."""
    import torch

    if kind == "tif":
        files = sorted(str(p) for p in Path(path).glob("*.tif"))
        loader: Any = torch.utils.data.DataLoader(
            TifDataset(files), batch_size=8, shuffle=True, num_workers=workers, persistent_workers=workers > 0
        )
    else:
        from torch_bridge import image_loaders

        start = time.perf_counter()
        loader, _ = image_loaders(path, batch_size=8, num_workers=workers, workers=what, cache_rate=cache_rate)
        setup = time.perf_counter() - start
    seconds = []
    for epoch in range(2 if kind != "tif" else 1):  # the TIF baseline is slow and caches nothing: one epoch
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        total, seen = 0.0, 0
        start = time.perf_counter()
        for batch in loader:
            total += float(batch.sum())
            seen += len(batch)
        seconds.append(time.perf_counter() - start)
    result = {
        "kind": kind,
        "workers": what,
        "cache_rate": cache_rate,
        "images": seen,
        "seconds": seconds[-1],
        "checksum": total,
    }
    if kind != "tif":
        result["setup_seconds"] = setup
    result["images_per_s"] = seen / seconds[-1]
    return result


def ingest(folder: Path, store: Path, workers: int) -> float:
    shutil.rmtree(store, ignore_errors=True)
    warm_page_cache([folder])
    env = {
        **os.environ,
        "DASK_ZARRFORGE__LOCAL__N_WORKERS": str(workers),
        "DASK_ZARRFORGE__LOCAL__DASHBOARD_ADDRESS": "127.0.0.1:0",
    }
    start = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "engine",
            "images",
            str(folder.parent),
            "--folders",
            folder.name,
            "-o",
            str(store),
            "--size",
            f"{SIZE}x{SIZE}",
            "-q",
        ],
        check=True,
        env=env,
        capture_output=True,
    )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="200 images")
    parser.add_argument("--images", type=int, help="number of TIFs (default 2,000; quick 200)")
    parser.add_argument("--side", type=int, default=1024, help="TIF side in pixels (default 1024)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of both loaders (default 2)")
    parser.add_argument("--skip-ingest", action="store_true", help="reuse the store of an earlier run's workdir")
    parser.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        kind, path, rate, workers, what = args.worker
        print(json.dumps(epoch_worker(kind, path, float(rate), int(workers), what)))
        return
    n = args.images or (200 if args.quick else 2000)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-images-", dir="."))
    folder = make_tifs(work / "data" / "images", n, args.side)
    print(f"{n} TIFs of {args.side}² uint16 -> {SIZE}²", flush=True)
    ingests: dict[int, list[float]] = {1: [], 2: []}
    for workers in () if args.skip_ingest else (1, 2):
        ingests[workers] = [ingest(folder, work / f"ingest-{workers}.zarr", workers) for _ in range(2)]
    store = work / "ingest-2.zarr"
    warm_page_cache([folder, store])
    runs = {}
    kinds = [("store", what, rate) for what in ("threads", "processes") for rate in (0.0, 0.5, 1.0)]
    for kind, what, rate in [*kinds, ("tif", "processes", 0.0)]:
        path = folder if kind == "tif" else store
        command = [sys.executable, __file__, "--worker", kind, str(path), str(rate), str(args.workers), what]
        runs[(kind, what, rate)] = run_worker(command, timeout=3600).result
        print(
            f"{kind} {what} cache_rate {rate}: {runs[(kind, what, rate)]['images_per_s']:,.0f} images/s",
            flush=True,
        )
    tif = runs[("tif", "processes", 0.0)]
    tif_seconds = tif["seconds"] / tif["images"]  # seconds per image, re-reading TIFs
    rows = [
        {
            "what": "re-read + resize the TIFs each epoch (cache_rate=0)",
            "rate": 1 / tif_seconds,
            "epoch": tif_seconds * n,
        },
        *[
            {
                "what": f"image_loaders over the store, {what}, cache_rate={rate}",
                "rate": runs[("store", what, rate)]["images_per_s"],
                "epoch": runs[("store", what, rate)]["seconds"],
            }
            for _, what, rate in kinds
        ],
        *[
            {"what": f"ingest, {t} worker{'s' if t > 1 else ''}", "rate": n / median(ingests[t]), "epoch": None}
            for t in (1, 2)
            if ingests[t]
        ],
    ]
    print_table(rows, [("what", "what"), ("rate", "images/s", ",.0f"), ("epoch", "epoch s (train split)", ".2f")])
    ratios = {
        f"vs_tif_{what}_cache_{rate}": runs[("store", what, rate)]["images_per_s"] * tif_seconds
        for _, what, rate in kinds
    }
    if ingests[1] and ingests[2]:
        ratios["ingest_2_vs_1_workers"] = median(ingests[1]) / median(ingests[2])
    print()
    for key, value in ratios.items():
        goal = 1.6 if key.startswith("ingest") else 50
        print(f"{key}: {value:.2f}  (goal >= {goal}: {'PASS' if value >= goal else 'FAIL'})")
    if args.json:
        write_json(
            args.json,
            {"runs": [dict(v) for v in runs.values()], "ingest_seconds": ingests},
            ratios,
            parameters={"images": n, "side": args.side, "size": SIZE},
        )
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
