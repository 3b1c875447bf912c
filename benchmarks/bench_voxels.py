"""Hierarchical voxels: dedup savings, the ray loader's speed with 0/1/2 workers, cache size, memory.

1. **Dedup**: ``zarrforge voxels --synthetic N --resolution 64 --min-resolution 4`` (N = 100; ``--quick``: 20),
   bytes of the subvolumes of every level with and without content hashing, and the store on disk.
2. **Rays**: ``zarrforge rays --sphere-divisions 2 --samples-per-view 1024 --levels 3,4`` (one of 162 views per
   subvolume: 1,024 rays each), timed.
3. **Loader** (each configuration in a fresh process, its process tree's peak RSS sampled): the issue's example,
   ``VoxelRayDataset(split="train", levels=[3, 4])`` with its four transforms, ``RayBatchSampler(rays_per_batch=
   4096, subvolumes_per_batch=8)``, ``collate_ray_batch``, ``num_workers`` 0/1/2, 1 GiB cache; ``--batches``
   timed after 100 warm-up batches. Beside it, in the same run, the baseline *naive-zarr*: the same dataset,
   transforms, sampler and collate, but each item's five rows read with ``zarr.open_array(...)[index]`` (handles
   opened once per process) instead of through the byte-sized chunk cache; and the *ceiling*: the same
   DataLoader, sampler and collate over a dataset that makes fresh zero tensors of the same shapes for every
   item (nothing read, nothing transformed), i.e. what the DataLoader machinery alone allows on this machine.
4. **Cache**: ``num_workers=0``, cache sizes from 64 KiB to 1 GiB: hit rate and batches/s over the same batches.

Prints tables and ``ratios``; ``--json PATH`` writes everything.
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

from benchmarks._common import dir_nbytes, print_table, run_worker, write_json

MiB = 2**20
ENV = {**os.environ, "DASK_ZARRFORGE__LOCAL__DASHBOARD_ADDRESS": "127.0.0.1:0"}


def build(root: Path, n_objects: int) -> dict[str, Any]:
    """Write the voxel and rays stores with the CLI; return their timings and the voxel store's counts.

    A command whose store is already complete (``--workdir`` of an earlier run) finds nothing to do.
    """
    v, r = root / "voxels.zarr", root / "rays.zarr"
    out: dict[str, Any] = {}
    for name, cmd in (
        (
            "voxels",
            [
                "voxels",
                "--synthetic",
                str(n_objects),
                "-o",
                str(v),
                "--resolution",
                "64",
                "--min-resolution",
                "4",
                "--split",
                "0.8,0.2,0",
            ],
        ),
        (
            "rays",
            [
                "rays",
                str(v),
                "-o",
                str(r),
                "--sphere-divisions",
                "2",
                "--samples-per-view",
                "1024",
                "--levels",
                "3,4",
            ],
        ),
    ):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "engine", *cmd, "-q"], check=True, env=ENV)
        out[f"{name}_seconds"] = time.perf_counter() - start
        out[f"{name}_bytes_on_disk"] = dir_nbytes(root / f"{name}.zarr")
    meta = json.loads((v / "zarr.json").read_text())["attributes"]["zarrforge"]
    out["levels"] = meta["counts"]["levels"]
    return out


def worker(config: dict[str, Any]) -> dict[str, Any]:
    """One loader configuration, in this fresh process."""
    import numpy as np
    from torch.utils.data import DataLoader

    from torch_bridge import RayBatchSampler, VoxelRayDataset, collate_ray_batch, transforms

    ds = VoxelRayDataset(
        config["voxels"],
        config["rays"],
        split="train",
        levels=[3, 4],
        cache_bytes=config["cache_bytes"],
        transform=transforms.Compose(
            [
                transforms.RandomRotation90(p=0.5),
                transforms.RandomFlip(axes=(0, 1, 2)),
                transforms.NormalizeRayOrigins(),
                transforms.RandomRaySubsample(1024),
            ]
        ),
    )
    dataset: Any = ds
    if config["kind"] == "naive-zarr":
        dataset = _naive(ds)
    elif config["kind"] == "ceiling":
        dataset = _Ceiling(ds)
    sampler = RayBatchSampler(ds, rays_per_batch=4096, subvolumes_per_batch=8, seed=0)
    loader = DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate_ray_batch,
        num_workers=config["workers"],
        persistent_workers=config["workers"] > 0,
    )
    warm, timed = config["warm"], config["batches"]
    it = iter(loader)
    for _ in range(warm):
        next(it)
    before = dict(ds.cache.stats) if config["workers"] == 0 else {}
    start = time.perf_counter()
    checksum = 0.0
    for _ in range(timed):
        batch = next(it)
        distances = batch["distances"].numpy()  # numpy: torch's masked select starts threads (slow when busy)
        checksum += float(distances[np.isfinite(distances)].sum())
    seconds = time.perf_counter() - start
    result = {
        "batches_per_s": timed / seconds,
        "seconds": seconds,
        "items": len(ds),
        "epoch_batches": len(sampler),
    }
    if before:
        after = ds.cache.stats
        hits, misses = after["hits"] - before["hits"], after["misses"] - before["misses"]
        result["hit_rate"] = hits / max(hits + misses, 1)
    return result


def _naive(ds: Any) -> Any:
    """The same dataset reading each item's rows through zarr-python, without the chunk cache (the baseline)."""
    import numpy as np
    import zarr

    class Naive(type(ds)):  # type: ignore[misc]
        def _row(self, cache: Any, name: str, index: int) -> np.ndarray:
            arrays = self.__dict__.setdefault("_zarr", {})
            if name not in arrays:
                root = self.voxels_path if name.startswith("subvolumes") else self.rays_path
                arrays[name] = zarr.open_array(str(root / name), mode="r")
            return np.asarray(arrays[name][index])

    naive = Naive.__new__(Naive)
    naive.__dict__.update(ds.__dict__)
    return naive


class _Ceiling:
    """Fresh tensors of the loader's shapes per item, nothing read or transformed: the DataLoader's ceiling."""

    def __init__(self, ds: Any) -> None:
        self.n, self.levels = len(ds), ds.items[:, 0].copy()

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        import torch

        side, rays = 64 >> int(self.levels[key[0]]), key[1]
        return {
            "voxels": torch.zeros(1, side, side, side),
            "origins": torch.zeros(rays, 3),
            "directions": torch.zeros(rays, 3),
            "distances": torch.zeros(rays),
            "hits": torch.zeros(rays, dtype=torch.bool),
            "center": side / 2,
            "level": int(self.levels[key[0]]),
            "object": 0,
            "position": torch.zeros(3, dtype=torch.int64),
            "subvolume": 0,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="20 objects, fewer batches")
    parser.add_argument("--objects", type=int, default=None)
    parser.add_argument("--batches", type=int, default=None, help="timed batches per loader configuration")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the stores here (default: a temp dir)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    n_objects = args.objects or (20 if args.quick else 100)
    batches = args.batches or (300 if args.quick else 1500)
    root = args.workdir or Path(tempfile.mkdtemp(prefix="bench-voxels-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        built = build(root, n_objects)
        dedup_rows = []
        for level, c in built["levels"].items():
            dedup_rows.append(
                {
                    "level": int(level),
                    "side": c["side"],
                    "cells": c["cells"],
                    "unique": c["unique"],
                    "empty": c["empty"],
                    "full": c["full"],
                    "mib_without": c["bytes_without_dedup"] / MiB,
                    "mib_with": c["bytes_with_dedup"] / MiB,
                    "saved": 1 - c["bytes_with_dedup"] / c["bytes_without_dedup"],
                }
            )
        without = sum(c["bytes_without_dedup"] for c in built["levels"].values())
        with_ = sum(c["bytes_with_dedup"] for c in built["levels"].values())
        print(f"dedup on {n_objects} procedural objects, 64³ down to 4³ (uint8 voxels, decoded bytes)")
        print_table(
            dedup_rows,
            [
                ("level", "level"),
                ("side", "side"),
                ("cells", "cells"),
                ("unique", "unique"),
                ("empty", "empty"),
                ("full", "full"),
                ("mib_without", "MiB without dedup", ".2f"),
                ("mib_with", "MiB with", ".2f"),
                ("saved", "saved", ".1%"),
            ],
        )
        print(
            f"all levels: {without / MiB:.1f} MiB → {with_ / MiB:.1f} MiB ({1 - with_ / without:.1%} saved); "
            f"store on disk {built['voxels_bytes_on_disk'] / MiB:.1f} MiB, "
            f"built in {built['voxels_seconds']:.1f} s; "
            f"rays store {built['rays_bytes_on_disk'] / MiB:.1f} MiB in {built['rays_seconds']:.1f} s\n"
        )
        base = {"voxels": str(root / "voxels.zarr"), "rays": str(root / "rays.zarr")}
        configs: list[dict[str, Any]] = []
        for w in (0, 1, 2):
            configs.append({"kind": "loader", "workers": w, "cache_bytes": 2**30, "warm": 100, "batches": batches})
            # The baseline decodes a whole chunk per row: far slower, so fewer batches.
            naive = {"warm": 5, "batches": max(batches // 10, 5)}
            configs.append({"kind": "naive-zarr", "workers": w, "cache_bytes": 0, **naive})
            configs.append({"kind": "ceiling", "workers": w, "cache_bytes": 0, "warm": 100, "batches": batches})
        # Small caches decode whole chunks for nearly every item: fewer batches, from a cold cache.
        configs += [
            {"kind": "loader", "workers": 0, "cache_bytes": c, "warm": 10, "batches": batches // 10}
            for c in (MiB, 16 * MiB, 64 * MiB, 256 * MiB)
        ]
        rows = []
        for config in configs:
            run = run_worker([sys.executable, __file__, "--worker", json.dumps({**base, **config})], timeout=1200)
            rows.append({**config, **run.result, "peak_rss_mib": run.peak_rss / MiB})
        print("loader: RayBatchSampler, 4,096 rays and 8 subvolumes per batch, the issue's transforms")
        print_table(
            rows,
            [
                ("kind", "dataset"),
                ("workers", "workers"),
                ("cache_bytes", "cache bytes"),
                ("batches_per_s", "batches/s", ".0f"),
                ("hit_rate", "cache hit rate", ".3f"),
                ("peak_rss_mib", "peak RSS MiB", ".0f"),
            ],
        )

        def rate(kind: str, workers: int) -> float:
            cache = 2**30 if kind == "loader" else 0
            return next(
                r["batches_per_s"]
                for r in rows
                if r["kind"] == kind and r["workers"] == workers and r["cache_bytes"] == cache
            )

        ratios = {
            "dedup_bytes_saved_share": 1 - with_ / without,
            "dedup_mib_saved": (without - with_) / MiB,
            **{f"loader_batches_per_s_workers_{w}": rate("loader", w) for w in (0, 1, 2)},
            **{f"loader_vs_naive_zarr_workers_{w}": rate("loader", w) / rate("naive-zarr", w) for w in (0, 1, 2)},
            **{f"loader_vs_ceiling_workers_{w}": rate("loader", w) / rate("ceiling", w) for w in (0, 1, 2)},
            "workers_2_vs_0": rate("loader", 2) / rate("loader", 0),
        }
        print()
        print_table(
            [{"what": k, "value": v} for k, v in ratios.items()], [("what", "ratio"), ("value", "value", ".3f")]
        )
        if args.json:
            write_json(args.json, {"dedup": dedup_rows, "build": built, "loader": rows}, ratios, objects=n_objects)
    finally:
        if args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
