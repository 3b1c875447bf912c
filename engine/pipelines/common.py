"""What every pipeline shares: the store grid from the config, and writing a lazy dataset to a store."""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
import xarray as xr

from storage.dims import SAMPLE
from storage.layout import SampleGrid, sample_grid
from storage.store import ArraySpec, TrainingStore

from .. import config
from ..clusters import connect, describe_profile
from ..run import RunSummary, write_dataset

__all__ = ["store_grid", "write_pipeline"]


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
    grid: SampleGrid | Mapping[str, SampleGrid],
    pipeline: str,
    seed: int,
    cluster: str | None = None,
    overwrite: bool = False,
    codec: str | None = None,
    progress: bool | None = None,
    gil_bound: bool = False,
) -> RunSummary:
    """Create (or resume) the store for a lazy dataset and write it on a cluster.

    ``grid`` is the sample axis' grid, or a grid per leading axis; a leading axis without one (a virtual picking
    store's micrographs) gets one item per chunk and per write block. ``ds`` must be chunked on each leading axis
    by its grid's ``shard_samples``; its ``attrs`` hold ``parameters`` and ``sources``, and optionally ``counts``,
    ``virtual`` and ``names`` (kept in the store's attrs) and ``rows_per_chunk`` (arrays stored in row bands); its
    text coordinates (e.g. file names) become text labels of their axis (see ``TrainingStore``). The
    cluster is started only if there is work to do; ``gil_bound`` work gets local worker processes
    (:func:`engine.clusters.connect`).
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
    given = {SAMPLE: grid} if isinstance(grid, SampleGrid) else dict(grid)
    grids = {spec.axis: given.get(spec.axis, SampleGrid(1, 1)) for spec in specs}
    record = {
        "pipeline": pipeline,
        "parameters": ds.attrs.get("parameters", {}),
        "seed": seed,
        "sources": ds.attrs.get("sources", []),
        **{key: ds.attrs[key] for key in ("counts", "virtual", "names") if key in ds.attrs},
    }
    # Text coordinates (file names): stored whole as labels of their axis (dask would only build them in memory).
    labels = {
        str(name): (str(coord.dims[0]), [str(v) for v in coord.values])
        for name, coord in ds.coords.items()
        if coord.ndim == 1 and coord.dtype.kind in "UO"
    }
    store = TrainingStore.open_for_writing(
        output,
        specs,
        labels=labels,
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
            n_items = ds.sizes.get(SAMPLE, ds.sizes[specs[0].axis])
            return RunSummary(str(store.path), n_items, total, 0, done, 0, store.nbytes_on_disk(), 0.0)
        with connect(cluster, gil_bound=gil_bound) as client:
            summary = write_dataset(ds, store, client, progress=progress)
        store.finalize(summary.as_dict())
    return summary
