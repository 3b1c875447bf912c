"""``zarrforge images``: folders of TIF images, single or paired, resized and mask-normalized."""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from dask.base import tokenize

from graphs.images import normalize_stack, resize_images
from graphs.patches import literal_array
from storage.dims import SAMPLE
from storage.errors import SourceError
from storage.sources._paths import file_record
from storage.sources.tiff import open_tiff_images

from ..run import RunSummary
from .common import store_grid, write_pipeline

__all__ = ["run_images"]

log = logging.getLogger(__name__)


def run_images(
    data_dir: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    folders: Sequence[str] | None = None,
    size: tuple[int, int] | None = None,
    pairs: bool = False,
    split: float = 0.9,
    val_dir: str | os.PathLike[str] | None = None,
    normalize: bool = True,
    skip_bad: bool = False,
    seed: int = 0,
    cluster: str | None = None,
    overwrite: bool = False,
    codec: str | None = None,
    progress: bool | None = None,
) -> RunSummary:
    """Ingest folders of TIF images into a training store (``zarrforge images``).

    With ``skip_bad`` unreadable or truncated files are left out (with ``pairs``, their name in every folder)
    and counted in a warning and in ``attrs["zarrforge"]["counts"]["skipped"]``; otherwise they are errors.

    Every image is resized to ``size`` (stretched, anti-aliased) and, with ``normalize``, mask-normalized (see
    :mod:`graphs.images`). With ``pairs`` the folders must hold the same image names; each folder becomes an
    array, sample ``i`` of every array being the same name. Without it, the images of all folders go into one
    ``images`` array with a per-sample ``folder``. Samples are stored train first, then val (``split`` is the
    train share of a seeded permutation), each part sorted by name. With ``val_dir`` (holding the same folders)
    every image of ``data_dir`` is train and every image of ``val_dir`` is val; ``split`` is not used.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise SourceError(f"{root}: no such folder of images")
    names = list(folders) if folders else [p.name for p in sorted(root.iterdir()) if p.is_dir()] or ["."]
    if not 0 < split <= 1:
        raise SourceError(f"split must be the train share in (0, 1], got {split}")
    if val_dir is not None and not Path(val_dir).is_dir():
        raise SourceError(f"{val_dir}: no such folder of validation images")
    skipped: list[tuple[str, str]] = []
    # One {folder: {name: image}} per part: the images, or train and val when val_dir is given.
    parts = [_gather(Path(part), names, pairs, skipped if skip_bad else None) for part in (root, val_dir) if part]
    if skipped:
        log.warning("skipped %d unreadable TIF files (first: %s)", len(skipped), skipped[0][1])
    shapes = {im.data.shape for part in parts for images in part.values() for im in images.values()}
    if size is None:
        if len(shapes) > 1:
            some = ", ".join(f"{h}×{w}" for h, w in sorted(shapes)[:5])
            raise SourceError(f"{root}: images of {len(shapes)} sizes ({some}, ...); pass --size HxW")
        size = next(iter(shapes))
    # A sample: (part, folder or None with pairs, name); ``samples`` in store order, ``splits`` theirs.
    samples: list[tuple[int, str | None, str]] = []
    for p, part in enumerate(parts):
        if pairs:  # every folder holds these names (checked in _gather)
            samples += [(p, None, name) for name in sorted(part[names[0]])]
        else:
            samples += [(p, folder, name) for folder, images in part.items() for name in sorted(images)]
    if val_dir is None:
        splits = _split_samples(len(samples), split, seed)
    else:
        splits = np.array([p for p, _, _ in samples], dtype=np.int8)
    order = np.argsort(splits, kind="stable")
    samples = [samples[i] for i in order]
    splits = splits[order]
    grid = store_grid(size[0] * size[1] * 4)
    variables: dict[str, xr.Variable] = {}
    if pairs:
        arrays = {f: [parts[p][f][n].data for p, _, n in samples] for f in names}
    else:
        arrays = {"images": [parts[p][str(f)][n].data for p, f, n in samples]}
    for array_name, lazy in arrays.items():
        stack = resize_images(lazy, size)
        if normalize:
            stack, mean, std = normalize_stack(stack)
            for stat, values in (("mean", mean), ("std", std)):
                variables[f"{array_name}_{stat}"] = xr.Variable(
                    (SAMPLE,),
                    values.rechunk(grid.shard_samples),
                    {"long_name": f"{stat} of the image's non-zero pixels before normalization"},
                )
        variables[array_name] = xr.Variable(
            (SAMPLE, "y", "x"), stack.rechunk((grid.shard_samples, -1, -1)), {"long_name": "resized image"}
        )
    variables["split"] = xr.Variable(
        (SAMPLE,),
        literal_array(splits, grid.shard_samples, f"images-split-{seed}-{split}-{len(splits)}"),
        {"long_name": "dataset split", "flag_values": [0, 1], "flag_meanings": "train val"},
    )
    if not pairs:
        codes = np.array([names.index(str(f)) for _, f, _ in samples], dtype=np.int8)
        variables["folder"] = xr.Variable(
            (SAMPLE,),
            literal_array(codes, grid.shard_samples, f"images-folder-{tokenize(names, samples)}"),
            {
                "long_name": "folder of the image",
                "flag_values": list(range(len(names))),
                "flag_meanings": " ".join(names),
            },
        )
    ds = xr.Dataset(variables)
    ds.attrs["parameters"] = {
        "folders": names,
        "size": list(size),
        "pairs": pairs,
        "split": split if val_dir is None else None,
        "val_dir": str(val_dir) if val_dir is not None else None,
        "normalize": normalize,
        "resize": "skimage.transform.resize, order 1, anti-aliased when shrinking, aspect not kept",
    }
    ds.attrs["sources"] = [
        file_record(parts[p][f][n].path) for p, folder, n in samples for f in ([folder] if folder else names)
    ]
    ds.attrs["counts"] = {
        "train": {"samples": int((splits == 0).sum())},
        "val": {"samples": int((splits == 1).sum())},
        **({"skipped": {"unreadable_files": len(skipped)}} if skip_bad else {}),
    }
    ds.attrs["names"] = [n for _, _, n in samples]
    ds.coords["name"] = (SAMPLE, np.array(ds.attrs["names"], dtype=object))
    return write_pipeline(
        ds,
        output,
        grid=grid,
        pipeline="images",
        seed=seed,
        cluster=cluster,
        overwrite=overwrite,
        codec=codec,
        progress=progress,
        gil_bound=True,  # scikit-image's anti-aliasing (scipy.ndimage) holds the GIL: threads would take turns
    )


def _gather(
    root: Path, folders: Sequence[str], pairs: bool, skipped: list[tuple[str, str]] | None
) -> dict[str, dict[str, Any]]:
    """``{folder: {name: TiffImage}}`` of ``root``; bad files go to ``skipped`` if given (else are errors)."""
    first_bad = len(skipped) if skipped is not None else 0
    per_folder = {}
    for folder in folders:
        images = open_tiff_images(root / folder, skipped=skipped)
        duplicated = sorted(name for name, n in Counter(im.name for im in images).items() if n > 1)
        if duplicated:
            raise SourceError(f"{root / folder}: image names used twice: {', '.join(duplicated[:10])}")
        per_folder[folder] = {im.name: im for im in images}
    if pairs:
        if skipped:  # keep the pairs whole: a name bad in one folder leaves every folder
            bad = {Path(file).stem for file, _ in skipped[first_bad:]}
            per_folder = {
                folder: {n: im for n, im in images.items() if Path(im.path).stem not in bad}
                for folder, images in per_folder.items()
            }
        _check_pairs(root, per_folder)
    return per_folder


def _check_pairs(root: Path, per_folder: dict[str, dict[str, Any]]) -> None:
    """Every folder must hold the same image names; else list the first mismatches and their count."""
    everything = set().union(*per_folder.values())
    missing = [
        (name, folder) for folder, images in per_folder.items() for name in sorted(everything - set(images))
    ]
    if missing:
        some = "; ".join(f"{name} missing from {folder}" for name, folder in missing[:10])
        raise SourceError(
            f"{root}: the folders {', '.join(per_folder)} do not hold the same images ({len(missing)} "
            f"mismatches: {some}{'; ...' if len(missing) > 10 else ''}); nothing was written"
        )


def _split_samples(n: int, share: float, seed: int) -> np.ndarray:
    """int8 split of ``n`` samples: a seeded ``round(share * n)`` (at least 1) are train (0), the rest val (1)."""
    n_train = min(n, max(1, round(share * n))) if n else 0
    splits = np.ones(n, dtype=np.int8)
    splits[np.random.default_rng([seed, 0x696D6773]).permutation(n)[:n_train]] = 0
    return splits
