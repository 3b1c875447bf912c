"""Clean/stripe training pairs from sinograms: patches, real-stripe screening, seeded simulation, splits.

Each sinogram ``(angle, detector_x)`` is cut into non-overlapping patches (``patch_grid``; what does not fit
is cropped evenly from both ends, the odd pixel from the end). A patch where :func:`~graphs.stripes.detect_stripes`
finds a real stripe is a *real-artifact* patch, kept apart (with its detected mask) for visual analysis; every
other patch is *clean* and gets a synthetic *stripe* partner from :func:`~graphs.stripes.simulate_stripes`,
seeded by ``[seed, sinogram, patch]``. Whole sinograms go to ``train`` or ``val``.

Which patches are clean depends on the data, so :func:`detect_sinograms` is computed first (a pass that keeps
only small bit-packed masks); :func:`pair_dataset` then knows every sample's place before a block is written, and
takes the real-artifact masks from that pass instead of detecting again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
from dask.base import tokenize
from dask.delayed import delayed

from .errors import ParameterError
from .stripe_simulation import StripeParams, simulate_stripes
from .stripes import DetectParams, angle_bins, detect_stripes_binned, expand_bins

__all__ = [
    "SPLITS",
    "PatchGrid",
    "detect_sinograms",
    "pair_dataset",
    "patch_flags",
    "patch_grid",
    "split_sinograms",
    "unpack_detection",
]

#: ``split`` values of a pair store.
SPLITS = {"train": 0, "val": 1}
_SPLIT_TAG = 0x73706C74  # the split draw's last seed word, never a patch's ``[seed, sinogram, patch]``


@dataclass(frozen=True)
class PatchGrid:
    """Non-overlapping ``height × width`` patches of a sinogram ``(n_angles, n_columns)``, row-major."""

    height: int
    width: int
    rows: int
    cols: int
    angle_offset: int
    column_offset: int

    @property
    def per_sinogram(self) -> int:
        """Patches per sinogram."""
        return self.rows * self.cols

    def origin(self, patch: int) -> tuple[int, int]:
        """``(angle0, x0)``: the first angle and column of ``patch``."""
        i, j = divmod(int(patch), self.cols)
        return self.angle_offset + i * self.height, self.column_offset + j * self.width

    def cut(self, sinogram: np.ndarray, patch: int) -> np.ndarray:
        """Patch ``patch`` of a sinogram (a view)."""
        a, x = self.origin(patch)
        return sinogram[a : a + self.height, x : x + self.width]


def patch_grid(
    n_angles: int, n_columns: int, patch: tuple[int, int], *, source: str = "the sinograms"
) -> PatchGrid:
    """The patch grid of sinograms of ``n_angles × n_columns``; a patch larger than them is an error.

    Examples
    --------
    >>> g = patch_grid(1801, 1000, (1801, 256))
    >>> g.per_sinogram, g.origin(0), g.origin(2)
    (3, (0, 116), (0, 628))
    """
    height, width = (int(v) for v in patch)
    if height < 1 or width < 1:
        raise ParameterError(f"patch must be positive ANGLESxCOLUMNS, got {height}x{width}")
    if height > n_angles or width > n_columns:
        raise ParameterError(
            f"patch {height}x{width} is larger than {source} ({n_angles} angles × {n_columns} columns); pass "
            f"--patch {min(height, n_angles)}x{min(width, n_columns)} or smaller"
        )
    rows, cols = n_angles // height, n_columns // width
    return PatchGrid(height, width, rows, cols, (n_angles - rows * height) // 2, (n_columns - cols * width) // 2)


def detect_sinograms(sinograms: xr.DataArray, params: DetectParams | None = None) -> da.Array:
    """Lazy detection of every sinogram, kept small: ``(sinogram, bins, ceil(columns / 8))`` uint8.

    Each sinogram's :func:`~graphs.stripes.detect_stripes_binned` mask, bit-packed along the columns
    (``np.packbits``): 1/64 of a byte per pixel of a 1801-angle sinogram, so the pass's whole result fits the
    driver and the writes reuse it instead of detecting again. Tasks are named ``stripes-detect``.
    """
    data = sinograms.data
    if not isinstance(data, da.Array):
        data = da.from_array(np.asarray(data), chunks=(1, -1, -1))
    if len(data.chunks[1]) != 1 or len(data.chunks[2]) != 1:
        data = data.rechunk({1: -1, 2: -1})
    p = params or DetectParams()
    n_angles, width = data.shape[1:]
    n_bins = -(-n_angles // angle_bins(n_angles, p))
    packed: da.Array = data.map_blocks(
        _detect_block,
        p,
        dtype=np.uint8,
        chunks=(data.chunks[0], (n_bins,), (-(-width // 8),)),
        name=f"stripes-detect-{tokenize(data.name, p)}",
        meta=np.empty((0, 0, 0), np.uint8),
    )
    return packed


def _detect_block(block: np.ndarray, params: DetectParams) -> np.ndarray:
    return np.stack([np.packbits(detect_stripes_binned(s, params), axis=1) for s in block])


def unpack_detection(
    packed: np.ndarray, n_angles: int, width: int, params: DetectParams | None = None
) -> np.ndarray:
    """One sinogram's full ``(n_angles, width)`` mask from its :func:`detect_sinograms` row."""
    binned = np.unpackbits(packed, axis=1, count=width).astype(bool)
    return expand_bins(binned, n_angles, params)


def patch_flags(
    packed: np.ndarray, grid: PatchGrid, n_angles: int, params: DetectParams | None = None
) -> np.ndarray:
    """``(sinogram, patch)`` booleans from :func:`detect_sinograms`: whether a detected stripe is in the patch."""
    k = angle_bins(n_angles, params)
    out = np.zeros((len(packed), grid.per_sinogram), dtype=bool)
    for s, row in enumerate(packed):
        binned = np.unpackbits(row, axis=1).astype(bool)
        for p in range(grid.per_sinogram):
            a0, x0 = grid.origin(p)
            out[s, p] = binned[a0 // k : (a0 + grid.height - 1) // k + 1, x0 : x0 + grid.width].any()
    return out


def split_sinograms(n: int, train: float, seed: int) -> np.ndarray:
    """``train`` share (rounded) of ``n`` sinograms to train (0), the rest to val (1), by a seeded permutation.

    Examples
    --------
    >>> split_sinograms(10, 0.9, seed=0).tolist().count(0)
    9
    """
    if not 0 <= train <= 1:
        raise ParameterError(f"split (the train share) must be between 0 and 1, got {train}")
    splits = np.ones(n, dtype=np.int8)
    splits[np.random.default_rng([seed, _SPLIT_TAG]).permutation(n)[: round(train * n)]] = SPLITS["train"]
    return splits


def pair_dataset(
    sinograms: xr.DataArray,
    detected: np.ndarray,
    grid: PatchGrid,
    *,
    seed: int = 0,
    split: float = 0.9,
    stripe_params: StripeParams | None = None,
    detect_params: DetectParams | None = None,
    virtual: bool = False,
    block_samples: int = 64,
    real_block_samples: int | None = None,
) -> xr.Dataset:
    """The lazy pair store: clean/stripe/mask per clean patch, and the real-artifact patches apart.

    Parameters
    ----------
    sinograms : xarray.DataArray
        Lazy ``(detector_y, angle, detector_x)``.
    detected : numpy.ndarray
        :func:`detect_sinograms` of ``sinograms``, computed: which patches hold real stripes, and their masks.
    grid : PatchGrid
    seed : int
        Of the split and of every patch's stripes (``[seed, sinogram, patch]``).
    split : float
        Train share of the sinograms.
    stripe_params, detect_params
        Simulation and detection parameters (the latter as ``detected`` was made with).
    virtual : bool
        Store ``clean`` only; a :class:`~torch_bridge.PairDataset` simulates ``stripe``/``mask`` when reading,
        from the seed and parameters in the attrs.
    block_samples, real_block_samples : int
        Samples per block (one store shard) of the pairs and of the real-artifact patches.

    Returns
    -------
    xarray.Dataset
        Per ``sample`` (split order, then sinogram, then patch): ``clean``, ``stripe`` (float32) and ``mask``
        (bool) ``(sample, angle, patch_x)``, ``sinogram``, ``patch``, ``angle0``, ``x0`` (int32), ``split``
        (int8, CF flags). Per ``real_sample``, in the group ``real_artifacts`` (only when there are real-artifact
        patches): ``stripe``, ``mask`` (detected), ``sinogram``, ``patch``. Attrs ``parameters`` and ``counts``.
    """
    stripe_params = stripe_params or StripeParams()
    detect_params = detect_params or DetectParams()
    n_sinograms, n_angles = sinograms.shape[:2]
    detected = np.asarray(detected, dtype=np.uint8)
    real = patch_flags(detected, grid, n_angles, detect_params)
    splits = split_sinograms(n_sinograms, split, seed)
    order = np.argsort(splits, kind="stable")  # train sinograms first, each part in sinogram order
    clean_ids = [(int(s), p) for s in order for p in range(grid.per_sinogram) if not real[s, p]]
    real_ids = [(s, p) for s in range(n_sinograms) for p in range(grid.per_sinogram) if real[s, p]]
    data = sinograms.data
    if not isinstance(data, da.Array):
        data = da.from_array(np.asarray(data), chunks=(1, -1, -1))
    token = tokenize(data.name, detected, grid, seed, split, stripe_params, detect_params, virtual)
    ds = xr.Dataset()
    patch_dims = ("angle", "patch_x")
    names = ("clean",) if virtual else ("clean", "stripe", "mask")
    pairs = _blocks(data, grid, clean_ids, block_samples, "pairs", token, names, seed, stripe_params, None)
    for name, array in zip(names, pairs, strict=True):
        ds[name] = xr.Variable(("sample", *patch_dims), array, _ATTRS[name])
    ids = np.asarray(clean_ids, dtype=np.int64).reshape(-1, 2)
    origins = np.asarray([grid.origin(p) for _, p in clean_ids], dtype=np.int64).reshape(-1, 2)
    per_sample = {
        "sinogram": (ids[:, 0], _ID_LONG_NAMES["sinogram"]),
        "patch": (ids[:, 1], _ID_LONG_NAMES["patch"]),
        "angle0": (origins[:, 0], "first angle index of the patch"),
        "x0": (origins[:, 1], "first detector column of the patch"),
    }
    for name, (values, long_name) in per_sample.items():
        ds[name] = xr.Variable(("sample",), _literal(values.astype(np.int32), block_samples, f"{name}-{token}"))
        ds[name].attrs["long_name"] = long_name
    ds["split"] = xr.Variable(
        ("sample",),
        _literal(splits[ids[:, 0]].astype(np.int8), block_samples, f"split-{token}"),
        {
            "long_name": "dataset split of the patch's sinogram",
            "flag_values": list(SPLITS.values()),
            "flag_meanings": " ".join(SPLITS),
        },
    )
    coordinates = " ".join(str(n) for n in ds.data_vars if ds[n].ndim == 1)
    for name in names:
        ds[name].attrs["coordinates"] = coordinates
    real_block = real_block_samples or block_samples
    if real_ids:  # the group real_artifacts exists only when detection found real stripes
        _add_real(ds, data, grid, real_ids, real_block, token, detected, detect_params)
    ds.attrs["parameters"] = {
        "patch": [grid.height, grid.width],
        "split": float(split),
        "virtual": bool(virtual),
        "stripes": stripe_params.as_dict(),
        "detect": detect_params.as_dict(),
    }
    n_train = int((splits[ids[:, 0]] == SPLITS["train"]).sum()) if len(ids) else 0
    ds.attrs["counts"] = {  # per split as zarrforge info shows them
        "train": {"samples": n_train},
        "val": {"samples": len(clean_ids) - n_train},
        "real_artifacts": {"samples": len(real_ids)},
        "sinograms": int(n_sinograms),
        "patches_per_sinogram": grid.per_sinogram,
    }
    return ds


def _add_real(
    ds: xr.Dataset,
    data: da.Array,
    grid: PatchGrid,
    real_ids: Sequence[tuple[int, int]],
    block: int,
    token: str,
    detected: np.ndarray,
    detect_params: DetectParams,
) -> None:
    """The real-artifact patches, their detected masks and ids, as the group ``real_artifacts`` of ``ds``."""
    masks = (detected, detect_params)
    arrays = _blocks(data, grid, real_ids, block, "real", token, ("stripe", "mask"), 0, StripeParams(), masks)
    for name, array in zip(("stripe", "mask"), arrays, strict=True):
        attrs = dict(_ATTRS[name], long_name=_REAL_LONG_NAMES[name])
        ds[f"real_artifacts/{name}"] = xr.Variable(("real_sample", "angle", "patch_x"), array, attrs)
    table = np.asarray(real_ids, dtype=np.int64).reshape(-1, 2)
    for i, name in enumerate(("sinogram", "patch")):
        ds[f"real_artifacts/{name}"] = xr.Variable(
            ("real_sample",),
            _literal(table[:, i].astype(np.int32), block, f"real-{name}-{token}"),
            {"long_name": _ID_LONG_NAMES[name]},
        )


_ATTRS: dict[str, dict[str, Any]] = {
    "clean": {"long_name": "sinogram patch without a detected stripe"},
    "stripe": {"long_name": "the clean patch with simulated stripes"},
    "mask": {"long_name": "pixels a simulated stripe changed"},
}
_ID_LONG_NAMES = {
    "sinogram": "detector row (sinogram index) the patch is cut from",
    "patch": "patch index within its sinogram (row-major)",
}
_REAL_LONG_NAMES = {"stripe": "sinogram patch with a real (detected) stripe", "mask": "detected stripe pixels"}


def _literal(values: np.ndarray, block: int, name: str) -> da.Array:
    array: da.Array = da.from_array(values, chunks=(block,), name=name)
    return array


def _blocks(
    data: da.Array,
    grid: PatchGrid,
    ids: Sequence[tuple[int, int]],
    block: int,
    kind: str,
    token: str,
    names: Sequence[str],
    seed: int,
    stripe_params: StripeParams,
    detected: tuple[np.ndarray, DetectParams] | None,
) -> list[da.Array]:
    """One dask array per name, a task per block of ``block`` samples (named ``stripes-<kind>``).

    ``detected`` (the packed detection and its parameters) gives the real-artifact blocks their masks.
    """
    shape = (grid.height, grid.width)
    dtypes = {"clean": np.float32, "stripe": np.float32, "mask": np.bool_}
    parts: list[list[da.Array]] = [[] for _ in names]
    n_angles, width = data.shape[1:]
    for b, start in enumerate(range(0, len(ids), block)):
        chunk = ids[start : start + block]
        # Each patch sliced from its sinogram's chunk: a block holds its patches, not whole sinograms.
        cuts = [data[(s, *_window(grid, p))] for s, p in chunk]
        masks = None
        if detected is not None:
            masks = ({s: detected[0][s] for s, _ in chunk}, detected[1], (n_angles, width))
        task = delayed(_make_block, pure=True)(
            cuts, list(chunk), grid, kind, tuple(names), seed, stripe_params, masks,
            dask_key_name=f"stripes-{kind}-{token}-{b}",
        )  # fmt: skip
        for i, name in enumerate(names):
            item = delayed(_pick, pure=True)(task, i, dask_key_name=f"stripes-{kind}-{name}-{token}-{b}")
            parts[i].append(da.from_delayed(item, (len(chunk), *shape), dtype=dtypes[name]))
    if not ids:
        return [da.zeros((0, *shape), dtype=dtypes[n], chunks=(block, *shape)) for n in names]
    return [da.concatenate(p, axis=0) for p in parts]


def _pick(values: tuple[np.ndarray, ...], i: int) -> np.ndarray:
    return values[i]


def _window(grid: PatchGrid, patch: int) -> tuple[slice, slice]:
    a0, x0 = grid.origin(patch)
    return slice(a0, a0 + grid.height), slice(x0, x0 + grid.width)


def _make_block(
    cuts: list[np.ndarray],
    ids: list[tuple[int, int]],
    grid: PatchGrid,
    kind: str,
    names: tuple[str, ...],
    seed: int,
    stripe_params: StripeParams,
    detected: tuple[dict[int, np.ndarray], DetectParams, tuple[int, int]] | None,
) -> tuple[np.ndarray, ...]:
    """Stack the patches ``cuts`` of one block with their simulated stripes, or their detected masks."""
    out: dict[str, np.ndarray] = {}
    for n in names:
        out[n] = np.empty((len(ids), grid.height, grid.width), np.bool_ if n == "mask" else np.float32)
    masks: dict[int, np.ndarray] = {}
    for i, ((s, p), patch) in enumerate(zip(ids, cuts, strict=True)):
        if kind == "real" and detected is not None:
            if s not in masks:
                packed, params, (n_angles, width) = detected
                masks[s] = unpack_detection(packed[s], n_angles, width, params)
            out["stripe"][i] = patch
            out["mask"][i] = grid.cut(masks[s], p)
            continue
        out["clean"][i] = patch
        if "stripe" in out:
            out["stripe"][i], out["mask"][i] = simulate_stripes(patch, seed, (s, p), stripe_params)
    return tuple(out[n] for n in names)
