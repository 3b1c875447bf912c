"""``zarrforge stripes``: clean/stripe training pairs from a sinogram store."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import xarray as xr

from graphs.stripe_pairs import PatchGrid, detect_sinograms, pair_dataset, patch_flags, patch_grid
from graphs.stripes import DetectParams, StripeParams
from storage.errors import SourceError, StoreError
from storage.layout import SampleGrid
from storage.sources import file_record
from storage.store import TrainingStore

from .. import config
from ..clusters import connect, describe_profile
from ..run import RunSummary
from .common import store_grid, write_pipeline

__all__ = ["run_stripes"]

log = logging.getLogger(__name__)


def open_sinogram_store(path: str | os.PathLike[str]) -> xr.DataArray:
    """The ``sinograms`` of a finished ``zarrforge sinograms`` store, lazily; other inputs are a clear error."""
    path = Path(path)
    try:
        store = TrainingStore.open(path)
        meta = store.attrs
    except StoreError as e:
        raise SourceError(f"{path}: not a sinogram store ({e}); make one with zarrforge sinograms") from None
    if meta.get("pipeline") != "sinograms":
        raise SourceError(
            f"{path}: a {meta.get('pipeline')} store, not sinograms; make one with zarrforge sinograms"
        )
    if not store.complete:
        raise SourceError(
            f"{path}: the sinogram store is unfinished; re-run its zarrforge sinograms command first"
        )
    return xr.open_zarr(path, consolidated=True)["sinograms"]


def run_stripes(
    sinograms: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    patch: tuple[int, int] = (1801, 256),
    split: float = 0.9,
    virtual: bool = False,
    stripe_params: StripeParams | None = None,
    detect_params: DetectParams | None = None,
    seed: int = 0,
    cluster: str | None = None,
    overwrite: bool = False,
    codec: str | None = None,
    progress: bool | None = None,
) -> RunSummary:
    """Build a clean/stripe pair store from a sinogram store (``zarrforge stripes``).

    First a detection pass finds the real stripes (bit-packed masks at the detection's angle resolution,
    computed on the cluster and kept), then every block is written at its known place. See
    :func:`graphs.stripe_pairs.pair_dataset` for the layout and the README for the public part.

    Parameters
    ----------
    sinograms : path
        A store written by ``zarrforge sinograms``.
    output : path
        The pair store.
    patch : (int, int)
        Angles × columns of a patch; larger than the sinograms is an error.
    split : float
        Train share of the sinograms.
    virtual : bool
        Store the clean patches only (stripes are simulated when reading, see :class:`torch_bridge.PairDataset`).
    stripe_params, detect_params : optional
        Simulation and detection parameters.
    seed, cluster, overwrite, codec, progress
        As for every pipeline.
    """
    describe_profile(cluster)
    sino = open_sinogram_store(sinograms)
    n_rows, n_angles, n_columns = sino.shape
    grid = patch_grid(n_angles, n_columns, patch, source=f"the sinograms of {sinograms}")
    if grid.per_sinogram == 0 or n_rows == 0:
        raise SourceError(f"{sinograms}: holds no sinograms to cut")
    detect_params = detect_params or DetectParams()
    stripe_params = stripe_params or StripeParams()
    if not 0 <= split <= 1:
        raise SourceError(f"--split is the train share of the sinograms, between 0 and 1; got {split}")
    # One cluster for both passes: the writes reach it by its address (a SLURM cluster's jobs start once).
    with connect(cluster) as client:
        # The detection pass: small bit-packed masks, reused by the writes.
        detected = np.asarray(client.compute(detect_sinograms(sino, detect_params)).result())
        return _write_pairs(
            sino, detected, grid, Path(sinograms), output, split=split, virtual=virtual, seed=seed,
            stripe_params=stripe_params, detect_params=detect_params, cluster=client.scheduler.address,
            overwrite=overwrite, codec=codec, progress=progress,
        )  # fmt: skip


def _write_pairs(
    sino: xr.DataArray,
    detected: np.ndarray,
    grid: PatchGrid,
    sinograms: Path,
    output: str | os.PathLike[str],
    *,
    split: float,
    virtual: bool,
    seed: int,
    stripe_params: StripeParams,
    detect_params: DetectParams,
    cluster: str,
    overwrite: bool,
    codec: str | None,
    progress: bool | None,
) -> RunSummary:
    """The pair store from the detection pass's result (see :func:`run_stripes`)."""
    real = patch_flags(detected, grid, sino.shape[1], detect_params)
    log.info(
        "%s: %d of %d patches hold a real stripe (kept apart in real_artifacts)", sinograms, real.sum(), real.size
    )
    if real.all():
        raise SourceError(
            f"{sinograms}: detection finds a stripe in every patch, so there is no clean patch to pair; raise "
            "--threshold or check the sinograms (zarrforge preview)"
        )
    pair_grid, real_grid = _grids(grid.height * grid.width * 4, virtual)
    ds = pair_dataset(
        sino,
        detected,
        grid,
        seed=seed,
        split=split,
        stripe_params=stripe_params,
        detect_params=detect_params,
        virtual=virtual,
        block_samples=pair_grid.shard_samples,
        real_block_samples=real_grid.shard_samples,
    )
    ds.attrs["sources"] = [file_record(sinograms / "zarr.json")]
    ds.attrs["parameters"]["sinograms"] = str(sinograms.resolve())
    return write_pipeline(
        ds,
        output,
        grid={"sample": pair_grid, "real_sample": real_grid},
        pipeline="stripes",
        seed=seed,
        cluster=cluster,
        overwrite=overwrite,
        codec=codec,
        progress=progress,
    )


def _grids(patch_bytes: int, virtual: bool) -> tuple[SampleGrid, SampleGrid]:
    """Grids of the pairs and of the real-artifact patches.

    Chunks as for any store (``store.chunk-bytes`` of one array); a block (one shard of every array on the
    axis) holds about ``store.shard-bytes`` in all, not per array: clean, stripe and a bool mask (2.25 patches
    per sample), or clean alone (virtual), or stripe and mask (real artifacts).
    """
    chunk = store_grid(patch_bytes).chunk_samples
    shard_bytes = int(config.get("store.shard-bytes"))

    def grid(arrays: float) -> SampleGrid:
        return SampleGrid(chunk, chunk * max(1, int(shard_bytes // (chunk * patch_bytes * arrays))))

    return grid(1.0 if virtual else 2.25), grid(1.25)
