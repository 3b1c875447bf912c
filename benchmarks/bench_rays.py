"""Ray casting speed: ray-voxel steps per second per core, the numba kernel against plain vectorized numpy.

The same rays are traced through the same 64³ grids by every traversal in one run, each in this one thread
(``NUMBA_NUM_THREADS``, OpenMP/MKL and torch held to 1 thread, so the figure is per core):

- ``numba``: :func:`graphs.rays.cast_rays_numba`, the compiled Amanatides–Woo loop the pipeline uses on CPU;
- ``numpy``: :func:`graphs.rays.cast_rays_numpy`, all rays stepping together (the baseline the issue names);
- ``torch-cpu``: :func:`graphs.rays.cast_rays_torch` on the CPU; ``torch-cuda`` as well when a GPU is present
  (its rays/s is what counts there, not per core).

Grids: three procedural objects (a sphere, a box, a torus union: the shapes ``zarrforge voxels --synthetic``
makes) and a sparse random grid (0.2% occupied: long rays, the worst case for per-step cost). Rays: the
pipeline's own, from 162 icosphere views. A step is one voxel visited. Each traversal is timed ``--repeats``
times (best of, after a warm-up that also compiles), results checked equal between traversals.

Prints a table and the ratio numba / numpy; ``--json PATH`` writes everything. ``--quick``: fewer rays.
"""

from __future__ import annotations

import os

for _var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import print_table, write_json  # noqa: E402
from graphs.rays import cast_rays_numba, cast_rays_numpy, cast_rays_torch, generate_rays, icosphere_views  # noqa: E402
from graphs.voxels import procedural_object  # noqa: E402


def grids(size: int) -> dict[str, np.ndarray]:
    """The grids every traversal runs on."""
    rng = np.random.default_rng(0)
    out = {f"procedural-{i}": procedural_object(i, seed=0, resolution=size) for i in (0, 1, 2)}
    out["random-0.2%"] = rng.random((size, size, size)) < 0.002
    return out


def time_one(
    fn: Any, grid: np.ndarray, origins: np.ndarray, directions: np.ndarray, repeats: int
) -> dict[str, Any]:
    fn(grid, origins[:1000], directions[:1000])  # warm-up (numba: compile or load from cache)
    best, result, steps = np.inf, None, 0
    for _ in range(repeats):
        start = time.perf_counter()
        result, steps = fn(grid, origins, directions)
        best = min(best, time.perf_counter() - start)
    return {"seconds": best, "steps": int(steps), "distances": result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer rays (about 20 s)")
    parser.add_argument("--size", type=int, default=64, help="grid side")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    samples = 200 if args.quick else 1000
    views = icosphere_views(2)
    traversals: dict[str, Any] = {
        "numba": cast_rays_numba,
        "numpy": cast_rays_numpy,
        "torch-cpu": lambda g, o, d: cast_rays_torch(g, o, d, device="cpu"),
    }
    if torch.cuda.is_available():
        traversals["torch-cuda"] = lambda g, o, d: cast_rays_torch(g, o, d, device="cuda")
    rows: list[dict[str, Any]] = []
    for name, grid in grids(args.size).items():
        origins, directions = generate_rays(grid, views, samples, np.random.default_rng(1))
        reference = None
        for kind, fn in traversals.items():
            r = time_one(fn, grid, origins, directions, args.repeats)
            if reference is None:
                reference = r["distances"]
            else:  # every traversal finds the same hits
                np.testing.assert_array_equal(np.isfinite(r["distances"]), np.isfinite(reference))
            rows.append(
                {
                    "grid": name,
                    "traversal": kind,
                    "rays": len(origins),
                    "steps": r["steps"],
                    "seconds": r["seconds"],
                    "msteps_per_s": r["steps"] / r["seconds"] / 1e6,
                    "mrays_per_s": len(origins) / r["seconds"] / 1e6,
                    "hit_share": float(np.isfinite(r["distances"]).mean()),
                }
            )
    print(
        f"ray casting on {args.size}³ grids, one thread, {len(views)} views × {samples} rays "
        f"(best of {args.repeats})"
    )
    print_table(
        rows,
        [
            ("grid", "grid"),
            ("traversal", "traversal"),
            ("rays", "rays"),
            ("steps", "steps"),
            ("msteps_per_s", "M steps/s/core", ".1f"),
            ("mrays_per_s", "M rays/s", ".2f"),
            ("hit_share", "hits", ".2f"),
        ],
    )
    total = {k: sum(r["steps"] for r in rows if r["traversal"] == k) for k in traversals}
    secs = {k: sum(r["seconds"] for r in rows if r["traversal"] == k) for k in traversals}
    rate = {k: total[k] / secs[k] / 1e6 for k in traversals}
    ratios = {f"{k}_msteps_per_s_per_core": v for k, v in rate.items()}
    ratios["numba_vs_numpy"] = rate["numba"] / rate["numpy"]
    ratios["torch_cpu_vs_numpy"] = rate["torch-cpu"] / rate["numpy"]
    if "torch-cuda" in rate:
        ratios["torch_cuda_mrays_per_s"] = (
            sum(r["rays"] for r in rows if r["traversal"] == "torch-cuda") / secs["torch-cuda"] / 1e6
        )
    print()
    print_table(
        [{"what": k, "value": v} for k, v in ratios.items()], [("what", "ratio"), ("value", "value", ".2f")]
    )
    if args.json:
        write_json(args.json, rows, ratios, size=args.size, samples_per_view=samples, views=len(views))


if __name__ == "__main__":
    main()
