"""Tensor tomography (``zarrforge tensor-tomo``): throughput, projector compilations, memory, fidelity.

On synthetic scans the project makes itself (``write_synthetic_scan``: 247 projections, fibre texture, ground
truth), all with ell_max 8 (45 coefficients), 60 projections per reconstruction, LBFGS maxiter 20 / maxfun 40,
Laplacian weight 10:

- **Throughput**: ``run_tensor_tomo`` on a LocalCluster of worker processes with one thread each, 1 worker against
  2, at 16³ and 32³, reconstructions per minute. The cluster is started and each worker warmed up (mumott
  imported, the scan loaded, the projector compiled) before the clock starts; the run reaches it by address. Also
  the projector kernels each worker compiled (``graphs.john_transform.compiled_kernels``).
- **mumott's own projector**: the same reconstruction with ``SAXSProjector`` (which compiles per subset) for a
  few new subsets in one process: compilations and seconds per reconstruction, against ours.
- **Memory**: peak RSS (VmHWM) of each worker for 10 and 100 samples (16³, maxiter 5 to keep it short).
- **Fidelity**: relative L2 error to the ground truth, inside the sample and over the cube, of reconstructions
  from all 247 projections and of the store's 60-projection samples; and the store's sample 0 against a
  reconstruction run directly through mumott (``LBFGS`` + ``SAXSProjector`` on a copy of the scan with the other
  projections deleted) from the same subset.

Prints tables and ratios; ``--json`` writes everything. ``--quick``: 16³ only, fewer samples (a few minutes).
"""

from __future__ import annotations

import argparse
import copy
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import median, print_table, write_json

ELL_MAX, PROJECTIONS, REGULARIZATION = 8, 60, 10.0


def _warm(scan_path: str) -> float:
    """On a worker: import mumott, load the scan, compile the projector; seconds it took."""
    from graphs.tensor_tomo import ReconstructionSettings, reconstruct
    from storage.sources.mumott import open_mumott

    start = time.perf_counter()
    scan = open_mumott(scan_path)
    reconstruct(scan.container(), [0, 1], ReconstructionSettings(ell_max=ELL_MAX, maxiter=1, maxfun=2))
    return time.perf_counter() - start


def _cpu_seconds() -> float:
    """On a worker: CPU seconds (user + system) its process has used."""
    import psutil

    times = psutil.Process().cpu_times()
    return float(times.user + times.system)


def _compiled() -> int:
    from graphs.john_transform import compiled_kernels

    return compiled_kernels()


def timed_run(scan: Path, out: Path, workers: int, samples: int, seed: int, **kwargs: Any) -> dict[str, Any]:
    """``run_tensor_tomo`` on a warmed-up LocalCluster of ``workers`` single-threaded processes."""
    import dask.config
    from distributed import Client, LocalCluster

    from engine.pipelines import run_tensor_tomo

    shutil.rmtree(out, ignore_errors=True)
    with (
        dask.config.set({"distributed.worker.daemon": True}),
        LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0", silence_logs=40
        ) as lc,
        Client(lc) as client,
    ):
        warm = client.run(_warm, str(scan))
        cpu_before = client.run(_cpu_seconds)
        start = time.perf_counter()
        summary = run_tensor_tomo(
            scan,
            out,
            ell_max=ELL_MAX,
            num_projections=PROJECTIONS,
            num_samples=samples,
            seed=seed,
            device="cpu",
            cluster=lc.scheduler_address,
            progress=False,
            **kwargs,
        )
        seconds = time.perf_counter() - start
        cpu = sum(client.run(_cpu_seconds).values()) - sum(cpu_before.values())
        compiled = client.run(_compiled)
    peaks = [w["peak_rss"] or 0 for w in summary.workers.values()]
    return {
        "workers": workers,
        "samples": samples,
        "seconds": seconds,
        "per_minute": samples / seconds * 60,
        # CPU time the workers spent per reconstruction: flat from 1 to 2 workers means the work splits
        # perfectly, and the wall-clock ratio is set by the cores the machine's other load leaves free.
        "cpu_s_per_recon": cpu / samples,
        "load_average": os.getloadavg()[0],
        "warmup_s": median(warm.values()),
        "compiled_per_worker": sorted(compiled.values()),
        "peak_rss_mib": [p / 2**20 for p in peaks],
    }


def throughput(scans: dict[int, Path], work: Path, samples: dict[int, int]) -> list[dict[str, Any]]:
    rows = []
    for size, scan in scans.items():
        for workers in (1, 2):
            row = timed_run(scan, work / f"t{size}-{workers}.zarr", workers, samples[size], seed=42)
            row["size"] = size
            rows.append(row)
            print(f"  {size}³, {workers} worker(s): {row['per_minute']:.1f} recon/min", flush=True)
    return rows


def mumott_projector(scan: Path, subsets: int) -> list[dict[str, Any]]:
    """Seconds per reconstruction and compilations, mumott's SAXSProjector against ours, new subsets in turn."""
    from graphs.john_transform import compiled_kernels
    from graphs.tensor_tomo import ReconstructionSettings, draw_projections, reconstruct
    from storage.sources.mumott import open_mumott

    opened = open_mumott(scan)
    settings = ReconstructionSettings(ell_max=ELL_MAX)
    rows = []
    for projector in ("ours", "mumott"):
        compiles = _count_mumott_compiles()
        for k in range(subsets):
            indices = draw_projections(opened.n_projections, PROJECTIONS, 7, k)
            start = time.perf_counter()
            if projector == "ours":
                reconstruct(opened.container(), indices, settings)
            else:
                direct_mumott(opened.container(), indices)
            rows.append(
                {
                    "projector": projector,
                    "subset": k,
                    "seconds": time.perf_counter() - start,
                    "compiled": compiled_kernels() if projector == "ours" else compiles[0],
                }
            )
            print(f"  {projector} projector, subset {k}: {rows[-1]['seconds']:.1f} s", flush=True)
    return rows


_compile_counter = [0]


def _count_mumott_compiles() -> list[int]:
    """Count mumott SAXSProjector compilations (each builds a forward and an adjoint kernel) from now on."""
    from storage.sources.mumott import import_mumott

    import_mumott()
    from mumott.methods.projectors import SAXSProjector

    if not getattr(SAXSProjector, "_bench_counted", False):
        original = SAXSProjector._compile_john_transform

        def counting(self: Any, *args: Any) -> Any:
            _compile_counter[0] += 1
            return original(self, *args)

        SAXSProjector._compile_john_transform = counting
        SAXSProjector._bench_counted = True
    _compile_counter[0] = 0
    return _compile_counter


def direct_mumott(container: Any, indices: Any, maxiter: int = 20, maxfun: int = 40) -> np.ndarray:
    """A reconstruction the way mumott's documentation builds one, with its own projector, on a pruned copy."""
    from mumott.methods.basis_sets import SphericalHarmonics
    from mumott.methods.projectors import SAXSProjector
    from mumott.methods.residual_calculators import GradientResidualCalculator
    from mumott.optimization.loss_functions import SquaredLoss
    from mumott.optimization.optimizers import LBFGS
    from mumott.optimization.regularizers import Laplacian

    sub = copy.deepcopy(container)
    for i in sorted(set(range(len(container.projections))) - set(np.asarray(indices).tolist()), reverse=True):
        del sub.projections[i]
    rc = GradientResidualCalculator(
        data_container=sub, basis_set=SphericalHarmonics(ell_max=ELL_MAX), projector=SAXSProjector(sub.geometry)
    )
    loss = SquaredLoss(rc)
    loss.add_regularizer(name="laplacian", regularizer=Laplacian(), regularization_weight=REGULARIZATION)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(LBFGS(loss, maxiter=maxiter, maxfun=maxfun, ftol=1e-6).optimize()["x"])


def memory(scan: Path, work: Path, counts: list[int]) -> list[dict[str, Any]]:
    rows = []
    for n in counts:
        row = timed_run(scan, work / f"m{n}.zarr", 2, n, seed=0, maxiter=5, maxfun=10)
        rows.append(row)
        print(f"  {n} samples: peak RSS per worker {row['peak_rss_mib']}", flush=True)
    return rows


def _errors(x: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    cube = float(np.linalg.norm(x - truth) / np.linalg.norm(truth))
    inside = float(np.linalg.norm((x - truth)[mask]) / np.linalg.norm(truth[mask]))
    return inside, cube


def fidelity(scan: Path, store: Path, full: bool) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    import xarray as xr

    from graphs.tensor_tomo import ReconstructionSettings, reconstruct
    from storage.sources.mumott import open_mumott, read_ground_truth

    opened = open_mumott(scan)
    truth = read_ground_truth(scan)
    gt, mask = truth["coefficients"], truth["mask"]
    size = opened.volume_shape[0]
    ds = xr.open_zarr(store)
    rows = []
    if full:
        start = time.perf_counter()
        x = reconstruct(
            opened.container(), np.arange(opened.n_projections), ReconstructionSettings(ell_max=ELL_MAX)
        )
        inside, cube = _errors(x.coefficients, gt, mask)
        rows.append(
            {
                "size": size,
                "data": f"all {opened.n_projections}",
                "samples": 1,
                "in_mask": inside,
                "cube": cube,
                "seconds": time.perf_counter() - start,
            }
        )
    errors = [
        _errors(ds.reconstructions.values[k].astype(np.float64), gt, mask) for k in range(ds.sizes["sample"])
    ]
    rows.append(
        {
            "size": size,
            "data": f"{PROJECTIONS} (store samples)",
            "samples": len(errors),
            "in_mask": median(e[0] for e in errors),
            "cube": median(e[1] for e in errors),
            "in_mask_range": [min(e[0] for e in errors), max(e[0] for e in errors)],
        }
    )
    # The store's sample 0 against mumott run directly (its own projector and optimizer) on the same subset.
    direct = direct_mumott(opened.container(), ds.projection_indices.values[0])
    stored = ds.reconstructions.values[0].astype(np.float64)
    check = {
        "size": size,
        "max_abs_diff": float(np.abs(stored - direct).max()),
        "relative_l2": float(np.linalg.norm(stored - direct) / np.linalg.norm(direct)),
        "bit_identical_float32": bool(np.array_equal(ds.reconstructions.values[0], direct.astype(np.float32))),
    }
    return rows, check


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="16³ only, fewer samples")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--workdir", type=Path, help="where scans and stores go (default: a temporary folder)")
    parser.add_argument("--samples-16", type=int, default=None, help="samples per throughput run at 16³")
    parser.add_argument("--samples-32", type=int, default=None, help="samples per throughput run at 32³")
    parser.add_argument("--memory", default="10,100", help="sample counts of the memory runs (default 10,100)")
    parser.add_argument("--subsets", type=int, default=3, help="new subsets for the projector comparison")
    parser.add_argument("--full-32", action="store_true", help="also reconstruct 32³ from all projections")
    parser.add_argument(
        "--parts", default="throughput,projector,memory,fidelity", help="which parts to run (default all)"
    )
    args = parser.parse_args()
    from engine.pipelines import write_synthetic_scan

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-tensor-tomo-", dir="."))
    work.mkdir(parents=True, exist_ok=True)
    sizes = [16] if args.quick else [16, 32]
    samples = {16: args.samples_16 or (6 if args.quick else 12), 32: args.samples_32 or 4}
    scans = {}
    for size in sizes:
        scans[size] = work / f"scan{size}.h5"
        if not scans[size].exists():
            start = time.perf_counter()
            write_synthetic_scan(scans[size], size, ell_max=ELL_MAX, seed=0)
            print(f"synthetic {size}³ scan written in {time.perf_counter() - start:.1f} s", flush=True)

    parts = set(args.parts.split(","))
    results: dict[str, Any] = {}
    ratios: dict[str, float] = {}
    if "throughput" in parts:
        _throughput_part(scans, work, samples, sizes, results, ratios)
    if "projector" in parts:
        _projector_part(scans, args.subsets, results, ratios)
    if "memory" in parts:
        _memory_part(scans, work, [int(c) for c in args.memory.split(",")], results, ratios)
    if "fidelity" in parts:
        _fidelity_part(scans, work, sizes, args.full_32, results)
    print("\nratios:", {k: round(v, 3) for k, v in ratios.items()})
    if args.json:
        write_json(
            args.json,
            results,
            ratios,
            parameters={"ell_max": ELL_MAX, "num_projections": PROJECTIONS, "regularization": REGULARIZATION},
        )
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


def _throughput_part(
    scans: dict[int, Path],
    work: Path,
    samples: dict[int, int],
    sizes: list[int],
    results: dict[str, Any],
    ratios: dict[str, float],
) -> None:
    print("throughput:", flush=True)
    rows = throughput(scans, work, samples)
    print_table(
        rows,
        [
            ("size", "volume"),
            ("workers", "workers × 1 thread"),
            ("samples", "samples"),
            ("seconds", "s", ".1f"),
            ("per_minute", "recon/min", ".1f"),
            ("cpu_s_per_recon", "worker CPU s / recon", ".1f"),
            ("load_average", "load (1 min)", ".1f"),
            ("warmup_s", "warm-up s/worker", ".1f"),
            ("compiled_per_worker", "kernels compiled per worker"),
        ],
    )
    results["throughput"] = rows
    for size in sizes:
        one, two = (r["per_minute"] for r in rows if r["size"] == size)
        ratios[f"throughput_2_vs_1_workers_{size}"] = two / one
        cpu_one, cpu_two = (r["cpu_s_per_recon"] for r in rows if r["size"] == size)
        ratios[f"cpu_per_recon_2_vs_1_workers_{size}"] = cpu_two / cpu_one


def _projector_part(
    scans: dict[int, Path], subsets: int, results: dict[str, Any], ratios: dict[str, float]
) -> None:
    print("\nprojector, one process, new subsets (16³):", flush=True)
    projector_rows = mumott_projector(scans[16], subsets)
    results["projector"] = projector_rows
    print_table(
        projector_rows,
        [
            ("projector", "projector"),
            ("subset", "subset"),
            ("seconds", "s / recon", ".1f"),
            ("compiled", "compilations (ours: kernels; mumott: kernel pairs)"),
        ],
    )
    ours = median(r["seconds"] for r in projector_rows if r["projector"] == "ours")
    theirs = median(r["seconds"] for r in projector_rows if r["projector"] == "mumott")
    ratios["mumott_projector_vs_ours_seconds_per_recon_16"] = theirs / ours


def _memory_part(
    scans: dict[int, Path], work: Path, counts: list[int], results: dict[str, Any], ratios: dict[str, float]
) -> None:
    print("\nmemory (16³, maxiter 5, 2 workers):", flush=True)
    memory_rows = memory(scans[16], work, counts)
    results["memory"] = memory_rows
    print_table(
        memory_rows,
        [("samples", "samples"), ("seconds", "s", ".1f"), ("peak_rss_mib", "peak RSS per worker (MiB)")],
    )
    first, last = (max(r["peak_rss_mib"]) for r in (memory_rows[0], memory_rows[-1]))
    ratios[f"peak_rss_{counts[-1]}_vs_{counts[0]}_samples"] = last / first


def _fidelity_part(
    scans: dict[int, Path], work: Path, sizes: list[int], full_32: bool, results: dict[str, Any]
) -> None:
    print("\nfidelity (the stores of the 2-worker throughput runs):", flush=True)
    fidelity_rows, checks = [], []
    for size in sizes:
        store = work / f"t{size}-2.zarr"
        r, check = fidelity(scans[size], store, full=size == 16 or full_32)
        fidelity_rows += r
        checks.append(check)
    print_table(
        fidelity_rows,
        [
            ("size", "volume"),
            ("data", "projections"),
            ("samples", "reconstructions"),
            ("in_mask", "rel. error in sample", ".3f"),
            ("cube", "rel. error in cube", ".3f"),
        ],
    )
    print()
    print_table(
        checks,
        [
            ("size", "volume"),
            ("max_abs_diff", "store sample 0 vs direct mumott: max |diff|", ".2e"),
            ("relative_l2", "relative L2", ".2e"),
            ("bit_identical_float32", "bit-identical (float32)"),
        ],
    )
    results["fidelity"] = fidelity_rows
    results["direct_mumott"] = checks


if __name__ == "__main__":
    main()
