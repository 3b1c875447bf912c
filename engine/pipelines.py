"""Pipelines as the CLI runs them: open sources, build the lazy graph, create the store, write, finalize.

Everything that can be checked without reading pixels (files, headers, parameters, the output path) is checked
before the output is touched, so bad input never damages an existing store.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np
import xarray as xr

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

__all__ = ["run_patches", "run_picking", "store_grid", "write_pipeline"]

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
        **{key: ds.attrs[key] for key in ("counts", "virtual") if key in ds.attrs},
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
