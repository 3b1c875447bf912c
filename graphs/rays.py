"""Ray-traced supervision for voxel subvolumes: views on an icosphere, rays, and exact voxel traversal.

Conventions (also in the README):

- **Frame.** A subvolume of side ``n`` spans ``[0, n]**3`` in voxel units, axes ``(z, y, x)`` as its array;
  origins and directions are ``(z, y, x)`` too, directions unit length, distances in voxels along the ray.
- **Views.** The vertices of an icosphere subdivided ``sphere_divisions`` times (12, 42, 162, 642, 2562, ...
  views), unit vectors from the subvolume's center. Each subvolume is seen from ``views_per_subvolume`` of
  them, drawn without replacement from ``default_rng([seed, level, subvolume])`` (all of them in order when it
  equals the number of views).
- **Rays.** A view is an orthographic camera: ``samples_per_view`` parallel rays with direction ``-view``, their
  origins on the plane tangent to the subvolume's bounding sphere (radius ``n·√3/2``) on the view's side,
  uniform over the disk of that radius (so every ray that can meet the cube is possible). With ``adaptive``,
  every second ray instead passes through a uniform point of a uniformly chosen *surface voxel* (occupied,
  with an empty or out-of-grid face neighbour), which concentrates rays where the hit distance changes.
- **Hits.** ``distance`` is where the ray enters the first occupied voxel (``inf`` and ``hit`` false when it
  meets none), found by Amanatides–Woo traversal in float64.

Three traversals give the same answers: :func:`cast_rays_numba` (a compiled per-ray loop, the default on CPU),
:func:`cast_rays_numpy` (all rays stepping together, the plain vectorized baseline) and :func:`cast_rays_torch`
(the same vectorized steps in torch, on a GPU when there is one).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any, Literal, cast

import dask.array as da
import numba
import numpy as np
import xarray as xr
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

from .errors import ParameterError
from .patches import literal_array

__all__ = [
    "RAY_FIELDS",
    "cast_rays",
    "cast_rays_numba",
    "cast_rays_numpy",
    "cast_rays_torch",
    "generate_rays",
    "icosphere_views",
    "rays_dataset",
    "rays_for_subvolumes",
    "surface_voxels",
]

Backend = Literal["auto", "numba", "numpy", "torch"]
#: Columns of the packed per-ray record :func:`rays_for_subvolumes` returns.
RAY_FIELDS = ("oz", "oy", "ox", "dz", "dy", "dx", "distance", "hit")


def icosphere_views(divisions: int) -> np.ndarray:
    """Unit view directions: the vertices of an icosahedron subdivided ``divisions`` times, ``(V, 3)`` float64.

    Examples
    --------
    >>> [len(icosphere_views(d)) for d in range(3)]
    [12, 42, 162]
    """
    import trimesh.creation

    if not isinstance(divisions, int | np.integer) or not 0 <= divisions <= 7:
        raise ParameterError(f"sphere divisions must be an integer from 0 to 7, got {divisions}")
    vertices = np.asarray(trimesh.creation.icosphere(subdivisions=int(divisions)).vertices, dtype=np.float64)
    unit: np.ndarray = vertices / np.linalg.norm(vertices, axis=1, keepdims=True)
    return unit


def surface_voxels(grid: np.ndarray) -> np.ndarray:
    """Indices ``(m, 3)`` of occupied voxels with an empty or out-of-grid face neighbour.

    Examples
    --------
    >>> surface_voxels(np.ones((3, 3, 3), bool)).shape  # all but the center
    (26, 3)
    """
    occ = np.asarray(grid, dtype=bool)
    padded = np.pad(occ, 1, constant_values=False)
    inner = np.ones_like(occ)
    for axis in range(3):
        for shift in (-1, 1):
            inner &= np.roll(padded, shift, axis=axis)[1:-1, 1:-1, 1:-1]
    return np.argwhere(occ & ~inner)


def generate_rays(
    grid: np.ndarray,
    views: np.ndarray,
    samples_per_view: int,
    rng: np.random.Generator,
    *,
    adaptive: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Rays of one subvolume seen from ``views``: ``(origins, directions)``, each ``(len(views) * samples, 3)``.

    See the module docstring for the cameras and the ``adaptive`` sampling.

    Examples
    --------
    >>> o, d = generate_rays(np.ones((4, 4, 4), bool), icosphere_views(0)[:2], 5, np.random.default_rng(0))
    >>> o.shape, bool(np.allclose(np.linalg.norm(d, axis=1), 1))
    ((10, 3), True)
    """
    n = grid.shape[0]
    center = np.full(3, n / 2)
    radius = n * np.sqrt(3) / 2
    views = np.asarray(views, dtype=np.float64).reshape(-1, 3)
    surface = surface_voxels(grid) if adaptive else np.zeros((0, 3), np.int64)
    # Two unit vectors spanning each camera plane.
    helper = np.where(np.abs(views[:, :1]) < 0.9, [[1.0, 0, 0]], [[0, 1.0, 0]])
    u = np.cross(views, helper)
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    w = np.cross(views, u)
    r = radius * np.sqrt(rng.random((len(views), samples_per_view)))
    theta = 2 * np.pi * rng.random((len(views), samples_per_view))
    origins = (
        center
        + radius * views[:, None, :]
        + (r * np.cos(theta))[..., None] * u[:, None, :]
        + (r * np.sin(theta))[..., None] * w[:, None, :]
    )
    if len(surface):
        aimed = np.arange(1, samples_per_view, 2)
        picked = surface[rng.integers(len(surface), size=(len(views), len(aimed)))]
        target = picked + rng.random((len(views), len(aimed), 3))
        # Move each target point along its view onto the camera plane: the ray then passes through it.
        along = radius - np.einsum("vai,vi->va", target - center, views)
        origins[:, aimed] = target + along[..., None] * views[:, None, :]
    directions = np.broadcast_to(-views[:, None, :], origins.shape)
    return origins.reshape(-1, 3), np.ascontiguousarray(directions).reshape(-1, 3)


# ---------------------------------------------------------------- traversal: compiled
@numba.njit(nogil=True, cache=True)  # type: ignore[misc]
def _dda_numba(
    occ: np.ndarray, origins: np.ndarray, directions: np.ndarray, out: np.ndarray
) -> int:  # pragma: no cover
    n0, n1, n2 = occ.shape
    dims = np.array([n0, n1, n2], dtype=np.int64)
    steps = 0
    idx = np.empty(3, np.int64)
    step = np.empty(3, np.int64)
    t_max = np.empty(3, np.float64)
    t_delta = np.empty(3, np.float64)
    for r in range(origins.shape[0]):
        out[r] = np.inf
        t_enter = -np.inf
        t_exit = np.inf
        miss = False
        for a in range(3):
            o = origins[r, a]
            d = directions[r, a]
            if d == 0.0:
                if o < 0.0 or o > dims[a]:
                    miss = True
            else:
                t0 = (0.0 - o) / d
                t1 = (dims[a] - o) / d
                if t0 > t1:
                    t0, t1 = t1, t0
                t_enter = max(t_enter, t0)
                t_exit = min(t_exit, t1)
        t = max(t_enter, 0.0)
        if miss or t_exit < t:
            continue
        for a in range(3):
            o = origins[r, a]
            d = directions[r, a]
            i = int(np.floor(o + t * d))
            i = min(max(i, 0), dims[a] - 1)
            idx[a] = i
            if d > 0:
                step[a] = 1
                t_delta[a] = 1.0 / d
                t_max[a] = (i + 1 - o) / d
            elif d < 0:
                step[a] = -1
                t_delta[a] = -1.0 / d
                t_max[a] = (i - o) / d
            else:
                step[a] = 0
                t_delta[a] = np.inf
                t_max[a] = np.inf
        while True:
            steps += 1
            if occ[idx[0], idx[1], idx[2]]:
                out[r] = t
                break
            a = 0
            if t_max[1] < t_max[a]:
                a = 1
            if t_max[2] < t_max[a]:
                a = 2
            t = t_max[a]
            idx[a] += step[a]
            if idx[a] < 0 or idx[a] >= dims[a]:
                break
            t_max[a] += t_delta[a]
    return steps


def cast_rays_numba(grid: np.ndarray, origins: np.ndarray, directions: np.ndarray) -> tuple[np.ndarray, int]:
    """Distance to the first occupied voxel of every ray (``inf`` if none), and the voxel steps taken.

    The Amanatides–Woo traversal compiled with numba, one ray after the other (release the GIL: Dask threads
    run blocks side by side).

    Examples
    --------
    >>> grid = np.zeros((4, 4, 4), bool); grid[2, 1, 1] = True
    >>> d, steps = cast_rays_numba(grid, np.array([[-1.0, 1.5, 1.5]]), np.array([[1.0, 0, 0]]))
    >>> float(d[0]), steps
    (3.0, 3)
    """
    occ, o, d = _prepare(grid, origins, directions)
    out = np.empty(len(o), dtype=np.float64)
    steps = _dda_numba(occ, o, d, out)
    return out, int(steps)


def _prepare(grid: np.ndarray, origins: np.ndarray, directions: np.ndarray) -> tuple[np.ndarray, ...]:
    occ = np.ascontiguousarray(grid, dtype=np.uint8)
    if occ.ndim != 3:
        raise ParameterError(f"the voxel grid must be 3-D, got shape {occ.shape}")
    o = np.ascontiguousarray(origins, dtype=np.float64).reshape(-1, 3)
    d = np.ascontiguousarray(directions, dtype=np.float64).reshape(-1, 3)
    if o.shape != d.shape:
        raise ParameterError(f"{len(o)} origins but {len(d)} directions")
    return occ, o, d


# ---------------------------------------------------------------- traversal: vectorized numpy / torch
def _entry(o: Any, d: Any, dims: Any, xp: Any) -> tuple[Any, Any]:
    """Slab test of every ray against the box ``[0, dims]``: ``(t_enter clipped at 0, hits the box)``."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t0 = (0.0 - o) / d
        t1 = (dims - o) / d
    lo, hi = xp.minimum(t0, t1), xp.maximum(t0, t1)
    parallel = d == 0
    inside = (o >= 0) & (o <= dims)
    lo = xp.where(parallel, xp.where(inside, -np.inf, np.inf), lo)
    hi = xp.where(parallel, xp.where(inside, np.inf, -np.inf), hi)
    t_enter = xp.clip(lo.max(1) if xp is np else lo.amax(1), 0, None)
    t_exit = hi.min(1) if xp is np else hi.amin(1)
    return t_enter, t_exit >= t_enter


def cast_rays_numpy(grid: np.ndarray, origins: np.ndarray, directions: np.ndarray) -> tuple[np.ndarray, int]:
    """The same traversal with all rays stepping together in numpy (the plain vectorized baseline).

    Examples
    --------
    >>> grid = np.zeros((4, 4, 4), bool); grid[2, 1, 1] = True
    >>> d, _ = cast_rays_numpy(grid, np.array([[-1.0, 1.5, 1.5]]), np.array([[1.0, 0, 0]]))
    >>> float(d[0])
    3.0
    """
    occ, o, d = _prepare(grid, origins, directions)
    dims = np.asarray(occ.shape, dtype=np.float64)
    out = np.full(len(o), np.inf)
    t, live = _entry(o, d, dims, np)
    rays = np.flatnonzero(live)
    t = t[rays]
    o, d = o[rays], d[rays]
    idx = np.clip(np.floor(o + t[:, None] * d).astype(np.int64), 0, np.asarray(occ.shape) - 1)
    step = np.sign(d).astype(np.int64)
    with np.errstate(divide="ignore"):
        t_delta = np.where(d != 0, np.abs(1 / np.where(d != 0, d, 1)), np.inf)
        t_max = np.where(d > 0, (idx + 1 - o) / np.where(d != 0, d, 1), (idx - o) / np.where(d != 0, d, 1))
    t_max = np.where(d != 0, t_max, np.inf)
    limit = np.asarray(occ.shape)
    steps = 0
    flat = occ.reshape(-1)
    strides = np.array([occ.shape[1] * occ.shape[2], occ.shape[2], 1])
    while len(rays):
        steps += len(rays)
        hit = flat[idx @ strides].astype(bool)
        out[rays[hit]] = t[hit]
        keep = ~hit
        rays, t, idx, t_max, t_delta, step = rays[keep], t[keep], idx[keep], t_max[keep], t_delta[keep], step[keep]
        a = np.argmin(t_max, axis=1)
        rows = np.arange(len(rays))
        t = t_max[rows, a]
        idx[rows, a] += step[rows, a]
        t_max[rows, a] += t_delta[rows, a]
        inside = (idx[rows, a] >= 0) & (idx[rows, a] < limit[a])
        rays, t, idx, t_max, t_delta, step = (
            rays[inside],
            t[inside],
            idx[inside],
            t_max[inside],
            t_delta[inside],
            step[inside],
        )
    return out, steps


def cast_rays_torch(
    grid: np.ndarray, origins: np.ndarray, directions: np.ndarray, *, device: str | None = None
) -> tuple[np.ndarray, int]:
    """The vectorized traversal in torch (float64), on ``device`` (default: CUDA when available, else CPU).

    Examples
    --------
    >>> grid = np.zeros((4, 4, 4), bool); grid[2, 1, 1] = True
    >>> d, _ = cast_rays_torch(grid, np.array([[-1.0, 1.5, 1.5]]), np.array([[1.0, 0, 0]]), device="cpu")
    >>> float(d[0])
    3.0
    """
    import torch

    occ_np, o_np, d_np = _prepare(grid, origins, directions)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    occ = torch.as_tensor(occ_np, device=dev).reshape(-1).bool()
    o = torch.as_tensor(o_np, device=dev)
    d = torch.as_tensor(d_np, device=dev)
    shape = torch.as_tensor(occ_np.shape, device=dev)
    dims = shape.double()
    out = torch.full((len(o),), float("inf"), dtype=torch.float64, device=dev)
    t, live = _entry(o, d, dims, torch)
    rays = torch.nonzero(live).reshape(-1)
    t, o, d = t[rays], o[rays], d[rays]
    idx = torch.minimum(torch.clamp(torch.floor(o + t[:, None] * d).long(), min=0), shape - 1)
    step = torch.sign(d).long()
    safe = torch.where(d != 0, d, torch.ones_like(d))
    t_delta = torch.where(d != 0, (1 / safe).abs(), torch.full_like(d, float("inf")))
    t_max = torch.where(d > 0, (idx + 1 - o) / safe, (idx - o) / safe)
    t_max = torch.where(d != 0, t_max, torch.full_like(d, float("inf")))
    strides = torch.as_tensor([occ_np.shape[1] * occ_np.shape[2], occ_np.shape[2], 1], device=dev)
    steps = 0
    while len(rays):
        steps += len(rays)
        hit = occ[(idx * strides).sum(1)]
        out[rays[hit]] = t[hit]
        keep = ~hit
        rays, t, idx, t_max, t_delta, step = rays[keep], t[keep], idx[keep], t_max[keep], t_delta[keep], step[keep]
        a = torch.argmin(t_max, dim=1)
        rows = torch.arange(len(rays), device=dev)
        t = t_max[rows, a]
        idx[rows, a] += step[rows, a]
        t_max[rows, a] += t_delta[rows, a]
        inside = (idx[rows, a] >= 0) & (idx[rows, a] < shape[a])
        rays, t, idx, t_max, t_delta, step = (
            rays[inside],
            t[inside],
            idx[inside],
            t_max[inside],
            t_delta[inside],
            step[inside],
        )
    return out.cpu().numpy(), steps


def _torch_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def cast_rays(
    grid: np.ndarray, origins: np.ndarray, directions: np.ndarray, *, backend: Backend = "auto"
) -> np.ndarray:
    """Distance to the first occupied voxel of every ray (``inf`` when none).

    ``backend="auto"`` uses torch on a CUDA device when the process has one, else the numba kernel.

    Examples
    --------
    >>> grid = np.zeros((2, 2, 2), bool); grid[1, 0, 0] = True
    >>> cast_rays(grid, np.array([[0.5, 0.5, -3], [1.5, 0.5, -3]]), np.array([[0, 0, 1.0], [0, 0, 1.0]])).tolist()
    [inf, 3.0]
    """
    if backend == "auto":
        backend = "torch" if _torch_cuda() else "numba"
    if backend == "numba":
        return cast_rays_numba(grid, origins, directions)[0]
    if backend == "numpy":
        return cast_rays_numpy(grid, origins, directions)[0]
    if backend == "torch":
        return cast_rays_torch(grid, origins, directions)[0]
    raise ParameterError(f"backend must be auto, numba, numpy or torch, got {backend!r}")


# ---------------------------------------------------------------- the graph
def rays_for_subvolumes(
    subvolumes: np.ndarray,
    *,
    start: int,
    level: int,
    views: np.ndarray,
    views_per_subvolume: int,
    samples_per_view: int,
    adaptive: bool,
    seed: int,
    backend: Backend = "auto",
) -> np.ndarray:
    """Rays of consecutive unique subvolumes ``start, start + 1, ...``: ``(m, rays, 8)`` float32 (``RAY_FIELDS``).

    Each subvolume's views and rays come from ``default_rng([seed, level, subvolume])``, so a block's result does
    not depend on which other blocks exist or where they run.
    """
    m = subvolumes.shape[0]
    n_rays = views_per_subvolume * samples_per_view
    out = np.empty((m, n_rays, len(RAY_FIELDS)), dtype=np.float32)
    for i in range(m):
        rng = np.random.default_rng([seed, level, start + i])
        if views_per_subvolume == len(views):
            chosen = np.arange(len(views))
        else:
            chosen = np.sort(rng.choice(len(views), size=views_per_subvolume, replace=False))
        grid = np.asarray(subvolumes[i], dtype=bool)
        origins, directions = generate_rays(grid, views[chosen], samples_per_view, rng, adaptive=adaptive)
        distance = cast_rays(grid, origins, directions, backend=backend)
        out[i, :, 0:3] = origins
        out[i, :, 3:6] = directions
        out[i, :, 6] = distance
        out[i, :, 7] = np.isfinite(distance)
    return out


def rays_dataset(
    subvolumes: Mapping[int, xr.DataArray],
    *,
    sphere_divisions: int,
    samples_per_view: int,
    views_per_subvolume: int | None = None,
    adaptive: bool = False,
    seed: int = 0,
    block_items: Mapping[int, int],
    backend: Backend = "auto",
) -> xr.Dataset:
    """A lazy rays store for the unique subvolumes of some levels of a voxel store.

    Parameters
    ----------
    subvolumes : mapping of int to xarray.DataArray
        Level → lazy ``(subvolume_<k>, z, y, x)`` uint8 subvolumes (a voxel store's ``subvolumes_<k>``).
    sphere_divisions : int
        Views are the icosphere's vertices after this many subdivisions (:func:`icosphere_views`).
    samples_per_view : int
        Rays per view and subvolume.
    views_per_subvolume : int, optional
        How many of the views see each subvolume; default: all.
    adaptive : bool
        Aim every second ray at a surface voxel (see the module docstring).
    seed : int
    block_items : mapping of int to int
        Subvolumes per write block (one shard) of each level.
    backend : str
        Traversal (:func:`cast_rays`); every backend gives the same hits.

    Returns
    -------
    xarray.Dataset
        Per level ``k``: ``origins_<k>``, ``directions_<k>`` (float32 ``(subvolume_<k>, ray_<k>, 3)``, z y x),
        ``distances_<k>`` (float32, ``inf`` on a miss), ``hits_<k>`` (bool); and ``view_directions`` (the
        icosphere, ``(view, 3)``). ``attrs["parameters"]`` holds the parameters.
    """
    views = icosphere_views(sphere_divisions)
    per_subvolume = len(views) if views_per_subvolume is None else int(views_per_subvolume)
    if not 1 <= per_subvolume <= len(views):
        raise ParameterError(
            f"views per subvolume must be 1 to {len(views)} (the views of {sphere_divisions} sphere divisions), "
            f"got {per_subvolume}"
        )
    if samples_per_view < 1:
        raise ParameterError(f"samples per view must be >= 1, got {samples_per_view}")
    if not subvolumes:
        raise ParameterError("no levels to cast rays for")
    n_rays = per_subvolume * samples_per_view
    ds = xr.Dataset()
    ds["view_directions"] = xr.Variable(
        ("view", "axis"),
        literal_array(views, len(views), f"rays-views-{tokenize(sphere_divisions)}"),
        {"long_name": "unit view directions (z, y, x): icosphere vertices"},
    )
    for level, array in sorted(subvolumes.items()):
        data = array.data
        block = int(block_items[level])
        data = data.rechunk({0: block, 1: -1, 2: -1, 3: -1})
        starts = np.cumsum((0, *data.chunks[0][:-1]))
        token = tokenize(data.name, level, sphere_divisions, samples_per_view, per_subvolume, adaptive, seed)
        name = f"rays-cast-{token}"
        cast_block = functools.partial(
            rays_for_subvolumes,
            level=level,
            views=views,
            views_per_subvolume=per_subvolume,
            samples_per_view=samples_per_view,
            adaptive=adaptive,
            seed=seed,
            backend=backend,
        )
        # One task per block of subvolumes; it knows the index of its first subvolume (the seeds).
        layer: dict[Any, Any] = {
            (name, b, 0, 0): (_cast_block, cast_block, (data.name, b, 0, 0, 0), int(start))
            for b, start in enumerate(starts)
        }
        graph = HighLevelGraph.from_collections(name, layer, dependencies=[cast(Any, data)])
        packed = da.Array(graph, name, chunks=(data.chunks[0], (n_rays,), (len(RAY_FIELDS),)), dtype=np.float32)
        axis, ray = f"subvolume_{level}", f"ray_{level}"
        ds[f"origins_{level}"] = xr.Variable((axis, ray, "axis"), packed[:, :, 0:3], {"units": "voxel"})
        ds[f"directions_{level}"] = xr.Variable((axis, ray, "axis"), packed[:, :, 3:6], {"long_name": "unit"})
        ds[f"distances_{level}"] = xr.Variable(
            (axis, ray), packed[:, :, 6], {"units": "voxel", "long_name": "to the first occupied voxel; inf: none"}
        )
        ds[f"hits_{level}"] = xr.Variable((axis, ray), packed[:, :, 7].astype(bool), {"long_name": "ray hits"})
    ds.attrs["parameters"] = {
        "sphere_divisions": int(sphere_divisions),
        "samples_per_view": int(samples_per_view),
        "views_per_subvolume": per_subvolume,
        "adaptive": bool(adaptive),
        "levels": sorted(int(k) for k in subvolumes),
        "rays_per_subvolume": n_rays,
    }
    return ds


def _cast_block(cast_block: Any, subvolumes: np.ndarray, start: int) -> np.ndarray:
    return np.asarray(cast_block(subvolumes, start=start))


def check_levels(levels: Sequence[int], available: Sequence[int], store: str) -> list[int]:
    """The requested levels, each one the voxel store has (all of them when ``levels`` is empty)."""
    if not levels:
        return list(available)
    missing = [k for k in levels if k not in available]
    if missing:
        raise ParameterError(f"{store}: has no level {missing[0]} (levels {list(available)}); check --levels")
    return sorted(set(levels))
