"""Pipelines as the CLI runs them: open sources, build the lazy graph, create the store, write, finalize.

Everything that can be checked without reading pixels (files, headers, parameters, the output path) is checked
before the output is touched, so bad input never damages an existing store.
"""

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

from graphs.patches import extract_patches
from graphs.picking import Mode, picking_dataset
from graphs.windows import Edges
from storage.dims import SAMPLE
from storage.errors import SourceError
from storage.layout import SampleGrid, sample_grid
from storage.sources import open_images
from storage.sources._paths import resolve_paths
from storage.sources.picks import PICK_SUFFIXES, match_picks, micrograph_stem
from storage.store import ArraySpec, TrainingStore

from . import config
from .clusters import connect, describe_profile
from .run import RunSummary, write_dataset

__all__ = ["run_images", "run_patches", "run_picking", "store_grid", "write_pipeline"]

log = logging.getLogger(__name__)


def store_grid(sample_nbytes: int) -> SampleGrid:
    """Samples per chunk and per shard (= per write block) from the ``zarrforge.store`` settings."""
    return sample_grid(
        sample_nbytes,
        chunk_bytes=int(config.get("store.chunk-bytes")),
        shard_bytes=int(config.get("store.shard-bytes")),
    )


def write_pipeline(
    ds: xr.Dataset,
    output: str | os.PathLike[str],
    *,
    grid: SampleGrid,
    pipeline: str,
    seed: int,
    cluster: str | None = None,
    overwrite: bool = False,
    codec: str | None = None,
    progress: bool | None = None,
) -> RunSummary:
    """Create (or resume) the store for a lazy dataset and write it on a cluster.

    ``ds`` must be chunked on ``sample`` by ``grid.shard_samples`` (and any other leading axis by one item per
    block); its ``attrs`` hold ``parameters`` and ``sources``, and optionally ``counts`` and ``virtual`` (kept in
    the store's attrs) and ``rows_per_chunk`` (arrays stored in row bands). The cluster is started only if there
    is work to do.
    """
    describe_profile(cluster)  # an unknown cluster is an error before the store is touched
    rows = ds.attrs.get("rows_per_chunk", {})
    specs = [
        ArraySpec(
            name,
            tuple(map(str, var.dims)),
            tuple(var.shape),
            np.dtype(var.dtype),
            dict(var.attrs),
            rows_per_chunk=rows.get(name),
        )
        for name, var in ds.data_vars.items()
    ]
    # Other leading axes (a virtual picking store's micrographs): one item per chunk and per write block.
    grids = {SAMPLE: grid, **{spec.axis: SampleGrid(1, 1) for spec in specs if spec.axis != SAMPLE}}
    record = {
        "pipeline": pipeline,
        "parameters": ds.attrs.get("parameters", {}),
        "seed": seed,
        "sources": ds.attrs.get("sources", []),
        **{key: ds.attrs[key] for key in ("counts", "virtual", "names") if key in ds.attrs},
    }
    store = TrainingStore.open_for_writing(
        output,
        specs,
        grid=grids,
        record=record,
        codec=config.get("store.codec", codec),
        level=config.get("store.level"),
        attrs={"title": f"zarrforge {pipeline} training store"},
        overwrite=overwrite,
    )
    with store:
        if store.complete:
            done, total = store.progress()
            return RunSummary(str(store.path), ds.sizes["sample"], total, 0, done, 0, store.nbytes_on_disk(), 0.0)
        with connect(cluster) as client:
            summary = write_dataset(ds, store, client, progress=progress)
        store.finalize(summary.as_dict())
    return summary


def run_patches(
    inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    *,
    size: int,
    stride: int | None = None,
    edges: Edges = "drop",
    normalize: bool = False,
    bin: int = 1,
    fmt: str = "auto",
    dataset: str | None = None,
    seed: int = 0,
    cluster: str | None = None,
    overwrite: bool = False,
    codec: str | None = None,
    progress: bool | None = None,
) -> RunSummary:
    """Cut sliding-window patches from images on disk into a training store (``zarrforge patches``).

    Examples
    --------
    >>> import tempfile
    >>> from storage.synthetic import write_micrographs
    >>> folder = tempfile.mkdtemp()
    >>> _ = write_micrographs(folder, 2, (256, 256))
    >>> summary = run_patches(f"{folder}/*.mrc", f"{folder}/train.zarr", size=128, stride=64,
    ...                       cluster="local", progress=False)  # doctest: +SKIP
    """
    images = open_images(inputs, fmt=fmt, dataset=dataset)
    out_dtype = np.dtype(np.float32) if (normalize or bin > 1) else np.dtype(images.dtype)
    grid = store_grid(size * size * out_dtype.itemsize)
    ds = extract_patches(
        images,
        size=size,
        stride=stride,
        edges=edges,
        normalize=normalize,
        bin=bin,
        block_samples=grid.shard_samples,
    )
    return write_pipeline(
        ds,
        output,
        grid=grid,
        pipeline="patches",
        seed=seed,
        cluster=cluster,
        overwrite=overwrite,
        codec=codec,
        progress=progress,
    )


def run_picking(
    inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    picks: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    *,
    size: int,
    stride: int | None = None,
    radius: float,
    negative_ratio: float,
    split: Sequence[float] = (0.8, 0.1, 0.1),
    mode: Mode = "materialized",
    edges: Edges = "drop",
    normalize: bool = True,
    bin: int = 1,
    fmt: str = "auto",
    seed: int = 0,
    cluster: str | None = None,
    overwrite: bool = False,
    codec: str | None = None,
    progress: bool | None = None,
) -> RunSummary:
    """Build a particle-picking training store from micrographs and pick files (``zarrforge picking``).

    Pick files are matched to micrographs by stem (:func:`storage.sources.match_picks`); what did not match is
    logged as a warning with counts, and so are picks outside their micrograph (they are dropped). Micrographs
    without any pick file give ``unlabeled`` windows. See :func:`graphs.picking.picking_dataset` for the labels,
    the negative sampling and the splits, and the README for the store layout of both modes.
    """
    images = open_images(inputs, fmt=fmt)
    sources = images.attrs.get("sources", [])
    frames = images.coords["frame"].values if "frame" in images.coords else np.zeros(images.shape[0])
    if np.any(frames):
        first = images.coords["source"].values[int(np.flatnonzero(frames)[0])]
        raise SourceError(f"{first}: holds several images; picking needs one micrograph per file")
    paths = [str(images.coords["source"].values[i]) for i in range(images.shape[0])]
    pick_files = resolve_paths(picks, suffixes=PICK_SUFFIXES)
    matched = match_picks(paths, pick_files)
    log.info("picks: %s", matched.report())
    if matched.micrographs_without_picks or matched.picks_without_micrograph:
        log.warning("picks: %s", matched.report())
    without = set(matched.micrographs_without_picks)
    centers: list[np.ndarray | None] = []
    outside = 0
    example = ""
    height, width = images.shape[1:]
    for path in paths:
        stem = micrograph_stem(path)
        if stem in without:
            centers.append(None)
            continue
        c = matched.picks[stem]
        inside = (c[:, 0] >= 0) & (c[:, 0] < height) & (c[:, 1] >= 0) & (c[:, 1] < width)
        if not inside.all():
            outside += int((~inside).sum())
            y, x = c[np.flatnonzero(~inside)[0]]
            example = example or f"{stem}: (y={y:g}, x={x:g})"
        centers.append(c[inside])
    if outside:
        log.warning(
            "picks: %d picks lie outside their %d × %d micrograph and are ignored (first: %s); check the pick "
            "files' coordinate convention and binning",
            outside,
            height,
            width,
            example,
        )
    grid = store_grid(size * size * 4 if (normalize or bin > 1) else size * size * np.dtype(images.dtype).itemsize)
    ds = picking_dataset(
        images,
        centers,
        size=size,
        stride=stride,
        radius=radius,
        negative_ratio=negative_ratio,
        split=split,
        seed=seed,
        mode=mode,
        edges=edges,
        normalize=normalize,
        bin=bin,
        block_samples=grid.shard_samples,
    )
    ds.attrs["sources"] = sources
    ds.attrs["counts"]["unmatched"] = {
        "micrographs_without_picks": len(matched.micrographs_without_picks),
        "picks_without_micrograph": sum(matched.picks_without_micrograph.values()),
        "picks_outside_micrograph": outside,
    }
    return write_pipeline(
        ds,
        output,
        grid=grid,
        pipeline="picking",
        seed=seed,
        cluster=cluster,
        overwrite=overwrite,
        codec=codec,
        progress=progress,
    )


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
    from graphs.images import normalize_stack, resize_images
    from graphs.patches import literal_array
    from storage.sources._paths import file_record
    from storage.sources.tiff import open_tiff_images

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
