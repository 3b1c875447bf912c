"""Pipelines as the CLI runs them: open sources, build the lazy graph, create the store, write, finalize.

Everything that can be checked without reading pixels (files, headers, parameters, the output path) is checked
before the output is touched, so bad input never damages an existing store.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import xarray as xr

from graphs.patches import extract_patches
from graphs.windows import Edges
from storage.layout import SampleGrid, sample_grid
from storage.sources import open_images
from storage.store import ArraySpec, TrainingStore

from . import config
from .clusters import connect, describe_profile
from .run import RunSummary, write_dataset

__all__ = ["run_patches", "store_grid", "write_pipeline"]


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

    ``ds`` must be chunked on ``sample`` by ``grid.shard_samples``; its ``attrs`` hold ``parameters`` and
    ``sources``. The cluster is started only if there is work to do.
    """
    describe_profile(cluster)  # an unknown cluster is an error before the store is touched
    specs = [
        ArraySpec(name, tuple(map(str, var.dims)), tuple(var.shape), np.dtype(var.dtype), dict(var.attrs))
        for name, var in ds.data_vars.items()
    ]
    record = {
        "pipeline": pipeline,
        "parameters": ds.attrs.get("parameters", {}),
        "seed": seed,
        "sources": ds.attrs.get("sources", []),
    }
    store = TrainingStore.open_for_writing(
        output,
        specs,
        grid=grid,
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
