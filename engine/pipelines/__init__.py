"""Pipelines as the CLI runs them: open sources, build the lazy graph, create the store, write, finalize.

One module per pipeline; each entry point ``run_<pipeline>`` checks everything that can be checked without
reading pixels (files, headers, parameters, the output path) before the output is touched, so bad input never
damages an existing store. :mod:`.common` holds what they share: the store grid and ``write_pipeline``.
"""

from __future__ import annotations

from .common import store_grid, write_pipeline
from .images import run_images
from .patches import run_patches
from .picking import run_picking
from .sinograms import run_sinograms
from .stripes import run_stripes
from .tensor_tomo import run_tensor_tomo, write_synthetic_scan
from .voxels import reassign_splits, run_rays, run_voxels

__all__ = [
    "run_images",
    "run_patches",
    "run_picking",
    "run_sinograms",
    "run_stripes",
    "store_grid",
    "write_pipeline",
    "run_tensor_tomo",
    "write_synthetic_scan",
    "reassign_splits",
    "run_rays",
    "run_voxels",
]
