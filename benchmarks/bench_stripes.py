"""Stripe detection against algotom, and the stripes pipeline against one TIF per patch, in one run.

**Detection** (default): noisy synthetic sinograms (random spheres, ``--angles`` × 256 columns, ~0.7% photon
noise) with stripes of known columns, width 2-10, contrast 2-10% of the local value, in families:

- ``full``: multiplicative stripes over every angle;
- ``dead-hot``: zero or saturated (the sinogram's maximum) columns;
- ``partial``: multiplicative stripes over a contiguous 60-100% of the angles;
- ``algotom-*``: stripes made by ``algotom.util.simulation.add_stripe_artifact`` (types ``full``, ``dead``,
  ``partial``), an independent family zarrforge did not generate.

Column-level precision and recall (a column is flagged when any of its pixels is) of
``graphs.stripes.detect_stripes`` (defaults) and of algotom's stripe location (``util.detect_stripe`` on the
column profiles of ``prep.removal.remove_large_stripe`` and ``remove_dead_stripe``, each dilated by a column, as
algotom does, and their union) over algotom's ``snr`` range (3 is its default). Then the false columns on the
real stripe sinograms of ``../shared/data/real/sino-larix``.

**Pipeline** (``--pipeline``): a synthetic scan → ``zarrforge sinograms`` (not timed) → ``zarrforge stripes
--patch 1801x256`` (materialized and ``--virtual``), each timed from launch to the end of a sync, against a
NoStripesNet-style script writing one TIF per patch (uint16, rescaled by each sinogram's min/max, under
``fake_artifacts/{clean,stripe}`` and ``real_artifacts/stripe``) with the same detection and simulation
kernels, single process, as that tool runs; plus bytes on disk and ``PairDataset`` samples/s of both stores.
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

from benchmarks._common import GB, RSSSampler, dir_nbytes, print_table, write_json

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "sino-larix"
SNRS = (1.5, 2.0, 2.5, 3.0, 4.0, 5.0)
FAMILIES = ("full", "dead-hot", "partial", "algotom-full", "algotom-dead", "algotom-partial")


# ----------------------------------------------------------------------------------------------- detection
def sinogram(seed: int, n_angles: int, width: int = 256) -> np.ndarray:
    from storage.tomo_synthetic import phantom_projections

    t = phantom_projections(np.linspace(0, 180, n_angles), 3, width, seed=seed, n_spheres=8)[:, 1, :]
    counts = 20000 * t
    noise = np.random.default_rng([seed, 1]).standard_normal(t.shape) * np.sqrt(counts)
    return ((counts + noise) / 20000).astype(np.float32)


def add_stripes(sino: np.ndarray, family: str, seed: int) -> np.ndarray:
    """Add 1-3 stripes of ``family`` in place; return the boolean truth per column."""
    rng = np.random.default_rng([seed, 77])
    n_angles, width = sino.shape
    truth = np.zeros(width, bool)
    top = float(sino.max())
    for _ in range(int(rng.integers(1, 4))):
        w = int(rng.integers(2, 11))
        x0 = int(rng.integers(0, width - w - 1))
        contrast = float(rng.uniform(0.02, 0.1)) * float(rng.choice([-1, 1]))
        cols = slice(x0, x0 + w)
        if family == "full":
            sino[:, cols] *= 1 + contrast
        elif family == "dead-hot":
            sino[:, cols] = 0 if rng.random() < 0.5 else top
        elif family == "partial":
            length = int(rng.uniform(0.6, 1.0) * n_angles)
            a0 = int(rng.integers(0, n_angles - length + 1))
            sino[a0 : a0 + length, cols] *= 1 + contrast
        else:
            from algotom.util.simulation import add_stripe_artifact

            kind = family.split("-", 1)[1]
            strength = abs(contrast) if kind != "partial" else float(rng.uniform(0.2, 0.5))
            sino[:] = add_stripe_artifact(sino, w, x0, strength_ratio=strength, stripe_type=kind)
        truth[cols] = True
    return truth


def algotom_profiles(sino: np.ndarray) -> dict[str, np.ndarray]:
    """algotom's column profiles: of ``remove_large_stripe`` (sorted columns over their median-filtered copy,
    10% dropped) and ``remove_dead_stripe`` (summed departure from a 10-angle mean over its median filter)."""
    import scipy.ndimage as ndi

    n = sino.shape[0]
    drop = int(0.5 * 0.1 * n)
    ordered = np.sort(sino, axis=0)
    smooth = ndi.median_filter(ordered, (1, 51))
    a, b = ordered[drop : n - drop].mean(0), smooth[drop : n - drop].mean(0)
    large = np.divide(a, b, out=np.ones_like(a), where=b != 0)
    diff = np.abs(sino - ndi.uniform_filter1d(sino, 10, axis=0)).sum(0)
    background = ndi.median_filter(diff, 51)
    background[background == 0] = np.mean(np.abs(background))
    return {"large": large, "dead": diff / background}


def algotom_masks(sino: np.ndarray, snr: float, profiles: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """algotom's stripe location: ``util.detect_stripe`` on each profile, dilated by a column, and the union."""
    import scipy.ndimage as ndi
    from algotom.util.utility import detect_stripe

    masks = {}
    for name, profile in (profiles or algotom_profiles(sino)).items():
        try:
            found = detect_stripe(profile, snr) > 0
        except ValueError:  # algotom refuses noise-free profiles
            found = np.zeros(len(profile), bool)
        masks[name] = ndi.binary_dilation(found, iterations=1)
    masks["union"] = masks["large"] | masks["dead"]
    return masks


def detection(n: int, n_angles: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from graphs.stripes import detect_stripes

    counts: dict[tuple[str, str], list[int]] = {}
    seconds = 0.0
    for family in FAMILIES:
        for i in range(n):
            sino = sinogram(1000 * FAMILIES.index(family) + i, n_angles)
            truth = add_stripes(sino, family, i)
            start = time.perf_counter()
            ours = detect_stripes(sino).any(axis=0)
            seconds += time.perf_counter() - start
            found = {"zarrforge": ours}
            profiles = algotom_profiles(sino)
            for snr in SNRS:
                for name, mask in algotom_masks(sino, snr, profiles).items():
                    found[f"algotom {name}, snr {snr:g}"] = mask
            for who, mask in found.items():
                c = counts.setdefault((family, who), [0, 0, 0])
                c[0] += int((mask & truth).sum())
                c[1] += int((mask & ~truth).sum())
                c[2] += int((~mask & truth).sum())
    rows = []
    for (family, who), (tp, fp, fn) in counts.items():
        precision = tp / (tp + fp) if tp + fp else 1.0
        recall = tp / (tp + fn) if tp + fn else 1.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        rows.append({"family": family, "detector": who, "precision": precision, "recall": recall, "f1": f1})
    timing = {"seconds_per_sinogram": seconds / (n * len(FAMILIES)), "shape": [n_angles, 256]}
    return rows, timing


def real_false_columns() -> list[dict[str, Any]]:
    """Columns flagged on the real stripe sinograms outside the known stripe regions."""
    from graphs.stripes import detect_stripes

    rows = []
    if not REAL.is_dir():
        return rows
    cases = [
        ("sino_stripe_i12 (stripe 198-205, ramps 190-213)", np.load(REAL / "sino_stripe_i12.npy"), (190, 214)),
        (
            "sino_stripes_crop3D row 5 (stripe ~26-41)",
            np.load(REAL / "sino_stripes_crop3D.npy")[:, 5, :],
            (26, 42),
        ),
    ]
    for name, sino, (lo, hi) in cases:
        truth = np.zeros(sino.shape[1], bool)
        truth[lo:hi] = True
        found = {"zarrforge": detect_stripes(sino).any(axis=0), **{
            f"algotom {k}, snr 3": v for k, v in algotom_masks(sino, 3.0).items()}}  # fmt: skip
        for who, mask in found.items():
            rows.append(
                {
                    "sinogram": name,
                    "detector": who,
                    "stripe_columns_found": int((mask & truth).sum()),
                    "stripe_columns": int(truth.sum()),
                    "false_columns": int((mask & ~truth).sum()),
                }
            )
    return rows


# ----------------------------------------------------------------------------------------------- pipeline
def tif_worker(sino_store: str, out: str, patch: tuple[int, int], seed: int) -> dict[str, Any]:
    """NoStripesNet-style: per sinogram detect, cut, simulate, and write one uint16 TIF per patch image."""
    import tifffile
    import zarr

    from graphs.stripe_pairs import patch_grid
    from graphs.stripe_simulation import simulate_stripes
    from graphs.stripes import detect_stripes_numpy

    start = time.perf_counter()
    sinograms = zarr.open_array(f"{sino_store}/sinograms", mode="r")
    grid = patch_grid(sinograms.shape[1], sinograms.shape[2], patch)
    root = Path(out)
    for sub in ("fake_artifacts/clean", "fake_artifacts/stripe", "real_artifacts/stripe"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    files = 0
    for s in range(sinograms.shape[0]):
        sino = np.asarray(sinograms[s])
        lo, hi = float(sino.min()), float(sino.max())

        def u16(image: np.ndarray, lo: float = lo, hi: float = hi) -> np.ndarray:
            return np.clip((image - lo) / max(hi - lo, 1e-12) * 65535, 0, 65535).astype(np.uint16)

        mask = detect_stripes_numpy(sino)
        for p in range(grid.per_sinogram):
            name = f"0000_shift00_{s:04d}_w{p:02d}.tif"
            clean = grid.cut(sino, p)
            if grid.cut(mask, p).any():
                tifffile.imwrite(root / "real_artifacts/stripe" / name, u16(clean))
                files += 1
                continue
            stripe, _ = simulate_stripes(clean, seed, (s, p))
            tifffile.imwrite(root / "fake_artifacts/clean" / name, u16(clean))
            tifffile.imwrite(root / "fake_artifacts/stripe" / name, u16(stripe))
            files += 2
    return {"seconds": time.perf_counter() - start, "files": files}


def timed(cmd: list[str], out: Path) -> dict[str, Any]:
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with RSSSampler(proc.pid) as sampler:
        _, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{err[-3000:]}")
    os.sync()
    return {"seconds": time.perf_counter() - start, "peak_rss": sampler.peak, "bytes_on_disk": dir_nbytes(out)}


def loader_rate(store: Path) -> float:
    """PairDataset samples/s, one pass in chunk-shuffled order, batch 8, no workers (after a warm-up pass)."""
    import torch

    from torch_bridge import ChunkShuffleSampler, PairDataset

    ds = PairDataset(store, return_mask=True)
    loader = torch.utils.data.DataLoader(ds, batch_size=8, sampler=ChunkShuffleSampler(ds, seed=0))
    rate = 0.0
    for _ in range(2):
        start, n = time.perf_counter(), 0
        for clean, _stripe, _mask in loader:
            n += len(clean)
        rate = n / (time.perf_counter() - start)
    return rate


def pipeline(work: Path, rows: int, cols: int) -> tuple[list[dict[str, Any]], dict[str, float]]:
    from storage.tomo_synthetic import write_nxtomo_scan

    scan = work / f"scan-1801x{rows}x{cols}.nxs"
    if not scan.exists():
        write_nxtomo_scan(scan, n_angles=1801, height=rows, width=cols, stripe_columns=(100, 101, 700), seed=0)
    sino = work / "sino.zarr"
    engine = [sys.executable, "-m", "engine"]
    if not sino.exists():
        subprocess.run([*engine, "sinograms", str(scan), "-o", str(sino), "-q"], check=True, capture_output=True)
    args = ["--patch", "1801x256", "--seed", "0", "--split", "0.9", "-q"]
    stores = {"materialized": work / "stripes.zarr", "virtual": work / "stripes-virtual.zarr"}
    results = {
        "zarrforge stripes": timed([*engine, "stripes", str(sino), "-o", str(stores["materialized"]), *args],
                                   stores["materialized"]),
        "zarrforge stripes --virtual": timed(
            [*engine, "stripes", str(sino), "-o", str(stores["virtual"]), *args, "--virtual"], stores["virtual"]
        ),
        "one TIF per patch": timed(
            [sys.executable, __file__, "--worker", "tif", "--sino", str(sino), "--out", str(work / "tifs")],
            work / "tifs",
        ),
    }  # fmt: skip
    results["zarrforge stripes"]["samples_per_s"] = loader_rate(stores["materialized"])
    results["zarrforge stripes --virtual"]["samples_per_s"] = loader_rate(stores["virtual"])
    table = [{"approach": k, **v} for k, v in results.items()]
    base = results["one TIF per patch"]["seconds"]
    ratios = {
        "pipeline_speed_vs_one_tif_per_patch": base / results["zarrforge stripes"]["seconds"],
        "virtual_speed_vs_one_tif_per_patch": base / results["zarrforge stripes --virtual"]["seconds"],
        "virtual_bytes_vs_materialized": results["zarrforge stripes --virtual"]["bytes_on_disk"]
        / results["zarrforge stripes"]["bytes_on_disk"],
        "virtual_loader_vs_materialized": results["zarrforge stripes --virtual"]["samples_per_s"]
        / results["zarrforge stripes"]["samples_per_s"],
    }
    return table, ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter sinograms")
    parser.add_argument("--n", type=int, default=None, help="sinograms per family")
    parser.add_argument("--angles", type=int, default=None)
    parser.add_argument("--pipeline", action="store_true", help="also the pipeline vs one TIF per patch")
    parser.add_argument("--pipeline-only", action="store_true", help="only the pipeline part")
    parser.add_argument("--rows", type=int, default=None, help="pipeline: detector rows (sinograms)")
    parser.add_argument("--cols", type=int, default=1024)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--sino", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker == "tif":
        print(json.dumps(tif_worker(args.sino, args.out, (1801, 256), 0)))
        return
    n = args.n or (6 if args.quick else 30)
    n_angles = args.angles or (360 if args.quick else 900)
    if args.pipeline_only:  # detection on one sinogram per family (its figures are not for reporting)
        n, args.pipeline = 1, True
    print(f"detection: {n} sinograms of {n_angles} × 256 per family", flush=True)
    rows, timing = detection(n, n_angles)
    shown = [r for r in rows if r["detector"] == "zarrforge" or "snr 3" in r["detector"]]
    print_table(shown, [("family", "stripes"), ("detector", "detector"), ("precision", "precision", ".3f"),
                        ("recall", "recall", ".3f"), ("f1", "F1", ".3f")])  # fmt: skip
    print("\nalgotom over its snr range (mean over the families):")
    snr_rows = []
    for snr in SNRS:
        for name in ("large", "dead", "union"):
            picked = [r for r in rows if r["detector"] == f"algotom {name}, snr {snr:g}"]
            mean = {k: float(np.mean([r[k] for r in picked])) for k in ("precision", "recall", "f1")}
            snr_rows.append({"snr": snr, "profile": name, **mean})
    print_table(snr_rows, [("snr", "snr", ".1f"), ("profile", "profile"), ("precision", "precision", ".3f"),
                           ("recall", "recall", ".3f"), ("f1", "F1", ".3f")])  # fmt: skip
    real = real_false_columns()
    print("\nreal stripe sinograms:")
    columns = [("sinogram", "sinogram"), ("detector", "detector"), ("stripe_columns_found", "stripe cols found"),
               ("stripe_columns", "of"), ("false_columns", "false columns")]  # fmt: skip
    print_table(real, columns)
    ours = {r["family"]: r for r in rows if r["detector"] == "zarrforge"}
    best_algotom = {
        f: max(
            (r for r in rows if r["family"] == f and r["detector"].startswith("algotom")), key=lambda r: r["f1"]
        )
        for f in FAMILIES
    }
    ratios: dict[str, float] = {}
    for f in FAMILIES:
        ratios[f"{f}_precision"] = ours[f]["precision"]
        ratios[f"{f}_recall"] = ours[f]["recall"]
        default = next(r for r in rows if r["family"] == f and r["detector"] == "algotom union, snr 3")
        ratios[f"{f}_f1_vs_algotom_default_union"] = ours[f]["f1"] / max(default["f1"], 1e-9)
        ratios[f"{f}_f1_vs_algotom_best_any_snr"] = ours[f]["f1"] / max(best_algotom[f]["f1"], 1e-9)
    print(f"\ndetect_stripes: {timing['seconds_per_sinogram'] * 1000:.0f} ms per {n_angles} × 256 sinogram")
    pipeline_rows: list[dict[str, Any]] = []
    if args.pipeline:
        work = args.work or Path(tempfile.mkdtemp(prefix="bench-stripes-"))
        work.mkdir(parents=True, exist_ok=True)
        rows_n = args.rows or (16 if args.quick else 64)
        print(f"\npipeline: {rows_n} sinograms of 1801 × {args.cols}, patches 1801 × 256, in {work}", flush=True)
        pipeline_rows, pipeline_ratios = pipeline(work, rows_n, args.cols)
        print_table(pipeline_rows, [("approach", "approach"), ("seconds", "wall s", ".1f"),
                                    ("peak_rss", "peak RSS B", ",.0f"), ("bytes_on_disk", "bytes on disk", ",.0f"),
                                    ("samples_per_s", "PairDataset samples/s", ",.0f")])  # fmt: skip
        ratios.update(pipeline_ratios)
    print("ratios:", json.dumps({k: round(v, 3) for k, v in ratios.items()}))
    if args.json:
        write_json(args.json, rows, ratios, real=real, snr=snr_rows, timing=timing, pipeline=pipeline_rows, GB=GB)


if __name__ == "__main__":
    main()
