"""``zarrforge tensor-tomo``: training sets of tensor-tomography reconstructions from random projection subsets.

Needs mumott (``pip install "zarrforge[mumott]"``). Each sample is one task and one write block (one sample per
chunk and per shard), so a killed run resumes at the first unfinished sample and recomputes nothing finished.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from graphs.errors import ParameterError
from graphs.tensor_tomo import ReconstructionSettings, tensor_tomo_dataset
from graphs.tomo_phantom import detector_angles, fibre_phantom, forward_project, noisy, scan_angles
from storage.layout import SampleGrid
from storage.sources.mumott import MumottScan, open_mumott, write_mumott_scan

from ..run import RunSummary
from .common import write_pipeline

__all__ = ["run_tensor_tomo", "write_synthetic_scan"]

log = logging.getLogger(__name__)


def run_tensor_tomo(
    scan: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    ell_max: int = 8,
    num_projections: int = 60,
    num_samples: int = 100,
    regularization_weight: float = 10.0,
    maxiter: int = 20,
    maxfun: int = 40,
    ftol: float = 1e-6,
    device: str = "auto",
    threads: int = 1,
    seed: int = 0,
    cluster: str | None = None,
    overwrite: bool = False,
    codec: str | None = None,
    progress: bool | None = None,
) -> RunSummary:
    """Reconstruct ``num_samples`` random projection subsets of a scan into a training store.

    Sample ``k`` reconstructs from ``num_projections`` projections drawn by ``default_rng([seed, k])``; see
    :func:`graphs.tensor_tomo.tensor_tomo_dataset` for the store's arrays and the README for its layout. On the
    local cluster the workers are processes with one thread each (scipy's optimizer holds the GIL), unless
    ``zarrforge.local.processes`` says otherwise.

    Parameters
    ----------
    scan : path
        An HDF5 file in mumott's layout (e.g. from :func:`write_synthetic_scan`).
    output : path
        The store to write.
    ell_max : int
        Highest spherical-harmonic order, even (8 gives 45 coefficients).
    num_projections, num_samples : int
        Projections per reconstruction, and reconstructions.
    regularization_weight, maxiter, maxfun, ftol
        Laplacian weight and L-BFGS-B limits (see :class:`graphs.tensor_tomo.ReconstructionSettings`).
    device : {"auto", "cpu", "cuda"}
        ``auto``: mumott's CUDA projector when this machine has a CUDA device, else the CPU projector. The
        device used is recorded in the store's parameters (the two differ in the last digits).
    threads : int
        numba threads per task (results do not depend on it).
    seed, cluster, overwrite, codec, progress
        As for every pipeline.

    Returns
    -------
    RunSummary

    Raises
    ------
    SourceError
        The scan is not in mumott's layout (nothing is written).
    ParameterError
        ``ell_max`` odd or negative, ``num_projections`` < 1 or more than the scan holds, ``num_samples`` < 1.
    StoreMismatchError
        ``output`` was made with other parameters and ``overwrite`` is false.
    """
    settings = ReconstructionSettings(
        ell_max=ell_max,
        regularization_weight=float(regularization_weight),
        maxiter=int(maxiter),
        maxfun=int(maxfun),
        ftol=float(ftol),
        device=_resolve_device(device),
    )
    source = open_mumott(scan)
    ds = tensor_tomo_dataset(
        source,
        num_samples=num_samples,
        num_projections=num_projections,
        settings=settings,
        seed=seed,
        threads=threads,
    )
    log.info(
        "%s: %d projections of %d × %d pixels, %d segments; %d samples of %d projections, ell_max %d",
        source.path,
        source.n_projections,
        *source.projection_shape,
        source.n_segments,
        num_samples,
        num_projections,
        ell_max,
    )
    return write_pipeline(
        ds,
        output,
        grid=SampleGrid(1, 1),  # one sample per chunk and per write block: a sample is a task
        pipeline="tensor-tomo",
        seed=seed,
        cluster=cluster,
        overwrite=overwrite,
        codec=codec,
        progress=progress,
        # scipy's optimizer and mumott's Python between the numba kernels hold the GIL: one process per core
        gil_bound=True,
    )


def _resolve_device(device: str) -> Any:
    if device not in ("auto", "cpu", "cuda"):
        raise ParameterError(f"device must be auto, cpu or cuda, got {device!r}")
    if device != "auto":
        return device
    try:
        from numba import cuda  # type: ignore[import-untyped]

        return "cuda" if cuda.is_available() else "cpu"
    except Exception:  # a broken CUDA driver is no reason to fail a CPU run
        return "cpu"


def write_synthetic_scan(
    output: str | os.PathLike[str],
    size: int = 32,
    *,
    ell_max: int = 8,
    n_projections: int = 247,
    counts: float = 1000.0,
    seed: int = 0,
) -> MumottScan:
    """Write a synthetic scan of a ``size``³ fibre-texture sample with its ground truth, in mumott's layout.

    See :mod:`graphs.tomo_phantom`. The file holds ``/ground_truth/coefficients`` (``(size,)*3 + (C,)``),
    ``/ground_truth/mask`` and ``/ground_truth/clean_data`` (the noise-free projections) besides the scan.

    Parameters
    ----------
    output : path
        The HDF5 file to write (replaced if it exists).
    size : int
        Side of the volume and of the detector, voxels.
    ell_max : int
        Order of the ground truth's spherical-harmonic expansion.
    n_projections : int
        Projections of the scan.
    counts : float
        Photons in the brightest pixel (Poisson noise).
    seed : int
        Seed of the sample and the noise.

    Returns
    -------
    MumottScan
        The written file, checked.
    """
    if Path(output).is_dir():
        raise ParameterError(f"{output}: is a folder; give the HDF5 file to write, e.g. demo_scan.h5")
    coefficients, mask = fibre_phantom(size, ell_max, seed)
    inner, outer = scan_angles(n_projections)
    clean = forward_project(coefficients, inner, outer)
    write_mumott_scan(
        output,
        noisy(clean, counts, seed),
        inner_angles=inner,
        outer_angles=outer,
        detector_angles=detector_angles(clean.shape[-1]),
        volume_shape=(size, size, size),
        ground_truth={"coefficients": coefficients, "mask": mask, "clean_data": clean},
        attrs={"zarrforge_synthetic": f"fibre texture, ell_max {ell_max}, seed {seed}, {counts:g} counts"},
    )
    return open_mumott(output)
