"""``zarrforge patches``: sliding-window patches of images on disk."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from graphs.patches import extract_patches
from graphs.windows import Edges
from storage.sources import open_images

from ..run import RunSummary
from .common import store_grid, write_pipeline

__all__ = ["run_patches"]


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
