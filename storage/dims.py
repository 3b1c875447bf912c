"""One vocabulary of dimension names, used by every source, graph, store and loader.

Code selects axes by these names (``.isel(micrograph=0)``), never by position.
"""

from __future__ import annotations

__all__ = [
    "IMAGE_DIMS",
    "MICROGRAPH_DIMS",
    "PATCH_DIMS",
    "PROJECTION_DIMS",
    "SAMPLE",
    "SINOGRAM_DIMS",
    "VOLUME_DIMS",
]

#: The leading axis of every training store.
SAMPLE = "sample"

#: A stack of 2-D images (micrographs, TIF frames, npy stacks).
MICROGRAPH_DIMS = ("micrograph", "y", "x")
#: One 2-D image.
IMAGE_DIMS = ("y", "x")
#: One 3-D volume.
VOLUME_DIMS = ("z", "y", "x")
#: Tomography projections, as NXtomo orders them.
PROJECTION_DIMS = ("angle", "detector_y", "detector_x")
#: Sinograms: the same names, one detector row per sinogram.
SINOGRAM_DIMS = ("detector_y", "angle", "detector_x")
#: A store of 2-D patches.
PATCH_DIMS = (SAMPLE, "patch_y", "patch_x")
