"""``zarrforge preview``: a PNG montage of a store, to look at before training on it.

- a pair store (``zarrforge stripes``): rows of clean patch, striped patch and mask for a few samples, and the
  real-artifact patches with their detected masks;
- a sinogram store (``zarrforge sinograms``): one sinogram with its detected stripes outlined in red, beside
  the mask.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from storage.errors import StoreError
from storage.store import TrainingStore

__all__ = ["preview"]


def preview(
    store: str | os.PathLike[str], output: str | os.PathLike[str], *, n: int = 6, index: int | None = None
) -> str:
    """Draw a montage of ``store`` into the PNG file ``output``; return a one-line description.

    Parameters
    ----------
    store : path
        A finished pair store or sinogram store.
    output : path
        The PNG to write.
    n : int
        Pairs (and real-artifact patches) to show, spread evenly over the store.
    index : int, optional
        For a sinogram store: the detector row to show (default: the middle one).
    """
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    path = Path(store)
    meta = TrainingStore.open(path).attrs
    if not meta.get("complete"):
        raise StoreError(f"{path}: the store is unfinished; finish the run that writes it first")
    pipeline = meta.get("pipeline")
    if pipeline == "stripes":
        return _pairs(path, Path(output), n)
    if pipeline == "sinograms":
        return _sinogram(path, Path(output), index)
    raise StoreError(f"{path}: preview draws pair stores and sinogram stores, not a {pipeline} store")


def _pick(total: int, n: int) -> list[int]:
    return sorted({int(i) for i in np.linspace(0, total - 1, min(n, total))}) if total else []


def _pairs(path: Path, output: Path, n: int) -> str:
    import matplotlib.pyplot as plt

    from graphs.stripe_simulation import StripeParams, simulate_stripes

    group = zarr.open_group(str(path), mode="r")
    meta = TrainingStore.open(path).attrs
    virtual = bool(meta["parameters"].get("virtual"))
    params = StripeParams.from_dict(dict(meta["parameters"]["stripes"]))
    total = group["clean"].shape[0]
    chosen = _pick(total, n)
    real = group.get("real_artifacts")
    n_real = real["stripe"].shape[0] if real is not None else 0
    real_chosen = _pick(n_real, n)
    columns = max(len(chosen), len(real_chosen), 1)
    rows = 3 + (2 if real_chosen else 0)
    fig, axes = plt.subplots(rows, columns, figsize=(2.2 * columns, 2.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for c, i in enumerate(chosen):
        clean = np.asarray(group["clean"][i])
        ids = (int(group["sinogram"][i]), int(group["patch"][i]))
        if virtual:  # simulated as the PairDataset does, from the stored seed
            stripe, mask = simulate_stripes(clean, int(meta["seed"]), ids, params)
        else:
            stripe, mask = np.asarray(group["stripe"][i]), np.asarray(group["mask"][i])
        lo, hi = np.percentile(clean, [1, 99])
        _show(axes[0, c], clean, f"clean s{ids[0]} p{ids[1]}", lo, hi)
        _show(axes[1, c], stripe, "stripe", lo, hi)
        _show(axes[2, c], mask.astype(np.float32), f"mask ({mask.mean():.0%})", 0, 1)
    for c, i in enumerate(real_chosen):
        assert real is not None
        patch = np.asarray(real["stripe"][i])
        lo, hi = np.percentile(patch, [1, 99])
        title = f"real s{int(real['sinogram'][i])} p{int(real['patch'][i])}"
        _show(axes[3, c], patch, title, lo, hi)
        _show(axes[4, c], np.asarray(real["mask"][i]).astype(np.float32), "detected", 0, 1)
    fig.suptitle(f"{path.name}: {total} pairs, {n_real} real-artifact patches")
    _save(fig, output)
    return f"{output}: {len(chosen)} pairs and {len(real_chosen)} real-artifact patches of {path}"


def _sinogram(path: Path, output: Path, index: int | None) -> str:
    import matplotlib.pyplot as plt

    from graphs.stripes import detect_stripes

    array = zarr.open_array(str(path / "sinograms"), mode="r")
    height = array.shape[0]
    row = height // 2 if index is None else int(index)
    if not 0 <= row < height:
        raise StoreError(f"{path}: no sinogram {row}; it holds detector rows 0 to {height - 1}")
    sinogram = np.asarray(array[row])
    mask = detect_stripes(sinogram)
    columns = np.flatnonzero(mask.any(axis=0))
    fig, axes = plt.subplots(1, 2, figsize=(12, 6), squeeze=False)
    lo, hi = np.percentile(sinogram, [1, 99])
    _show(axes[0, 0], sinogram, f"sinogram {row} (angle × detector_x)", lo, hi)
    if mask.any():
        axes[0, 0].contour(mask, levels=[0.5], colors="red", linewidths=0.8)
    _show(axes[0, 1], mask.astype(np.float32), f"detected stripes: {len(columns)} columns", 0, 1)
    fig.suptitle(f"{path.name}: sinogram {row} of {height}")
    _save(fig, output)
    return f"{output}: sinogram {row} of {path}, {len(columns)} stripe columns detected"


def _show(ax: Any, image: np.ndarray, title: str, lo: float, hi: float) -> None:
    ax.imshow(image, cmap="gray", vmin=lo, vmax=hi, aspect="auto", interpolation="nearest")
    ax.set_title(title, fontsize=8)
    ax.axis("off")


def _save(fig: Any, output: Path) -> None:
    import matplotlib.pyplot as plt

    output.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(output, dpi=80)
    except OSError as e:
        raise StoreError(f"{output}: cannot write the preview ({e.strerror or e})") from e
    finally:
        plt.close(fig)
