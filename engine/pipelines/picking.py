"""``zarrforge picking``: particle-picking training sets from micrographs and pick files."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np

from graphs.picking import Mode, picking_dataset
from graphs.windows import Edges
from storage.errors import SourceError
from storage.sources import open_images
from storage.sources._paths import resolve_paths
from storage.sources.picks import PICK_SUFFIXES, match_picks, micrograph_stem

from ..run import RunSummary
from .common import store_grid, write_pipeline

__all__ = ["run_picking"]

log = logging.getLogger(__name__)


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
