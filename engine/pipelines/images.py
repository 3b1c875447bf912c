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
    train share of a seeded permutation), each part sorted by name.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise SourceError(f"{root}: no such folder of images")
    names = list(folders) if folders else [p.name for p in sorted(root.iterdir()) if p.is_dir()] or ["."]
    if not 0 < split <= 1:
        raise SourceError(f"split must be the train share in (0, 1], got {split}")
    per_folder = {}
    skipped: list[tuple[str, str]] = []
    for folder in names:
        images = open_tiff_images(root / folder, skipped=skipped if skip_bad else None)
        duplicated = sorted(name for name, n in Counter(im.name for im in images).items() if n > 1)
        if duplicated:
            raise SourceError(f"{root / folder}: image names used twice: {', '.join(duplicated[:10])}")
        per_folder[folder] = {im.name: im for im in images}
    if skipped:
        log.warning("skipped %d unreadable TIF files (first: %s)", len(skipped), skipped[0][1])
        if pairs:  # keep the pairs whole: a name bad in one folder leaves every folder
            bad = {Path(file).stem for file, _ in skipped}
            per_folder = {
                folder: {n: im for n, im in images.items() if Path(im.path).stem not in bad}
                for folder, images in per_folder.items()
            }
    if pairs:
        _check_pairs(root, per_folder)
    shapes = {im.data.shape for images in per_folder.values() for im in images.values()}
    if size is None:
        if len(shapes) > 1:
            some = ", ".join(f"{h}×{w}" for h, w in sorted(shapes)[:5])
            raise SourceError(f"{root}: images of {len(shapes)} sizes ({some}, ...); pass --size HxW")
        size = next(iter(shapes))
    if pairs:  # every folder holds these names (checked above)
        samples = [(None, name) for name in sorted(per_folder[names[0]])]
    else:
        samples = [(folder, name) for folder, images in per_folder.items() for name in sorted(images)]
    splits = _split_samples(len(samples), split, seed)
    order = np.argsort(splits, kind="stable")
    samples = [samples[i] for i in order]
    splits = splits[order]
    grid = store_grid(size[0] * size[1] * 4)
    variables: dict[str, xr.Variable] = {}
    if pairs:
        arrays = {f: [per_folder[f][n].data for _, n in samples] for f in names}
    else:
        arrays = {"images": [per_folder[str(f)][n].data for f, n in samples]}
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
        codes = np.array([names.index(str(f)) for f, _ in samples], dtype=np.int8)
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
        "split": split,
        "normalize": normalize,
        "resize": "skimage.transform.resize, order 1, anti-aliased when shrinking, aspect not kept",
    }
    folders_of = [[str(f)] for f, _ in samples] if not pairs else [names] * len(samples)
    ds.attrs["sources"] = [
        file_record(per_folder[f][n].path) for (_, n), fs in zip(samples, folders_of, strict=True) for f in fs
    ]
    ds.attrs["counts"] = {
        "train": {"samples": int((splits == 0).sum())},
        "val": {"samples": int((splits == 1).sum())},
        **({"skipped": {"unreadable_files": len(skipped)}} if skip_bad else {}),
    }
    ds.attrs["names"] = [n for _, n in samples]
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
    )


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
