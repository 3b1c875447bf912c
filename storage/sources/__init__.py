"""Lazy readers of source files: MRC, TIF, ``.npy``, HDF5, NeXus tomography scans, mumott scans and meshes.

Each opener reads only headers and metadata and returns xarray objects over dask arrays whose tasks
(``read-mrc-…``, ``read-tiff-…``, ``read-npy-…``, ``read-hdf5-…``) open the file, read the selected region and
close it again, so graphs pickle and run in any worker process.
"""

from __future__ import annotations

from storage.sources._paths import file_record, resolve_paths
from storage.sources.hdf5 import open_hdf5
from storage.sources.images import SOURCE_SUFFIXES, open_images
from storage.sources.meshes import read_mesh
from storage.sources.mrc import open_mrc
from storage.sources.mumott import open_mumott
from storage.sources.npy import open_npy
from storage.sources.picks import PickMatch, match_picks, read_picks
from storage.sources.tiff import open_tiffs
from storage.sources.tomo import open_scan

__all__ = [
    "SOURCE_SUFFIXES",
    "PickMatch",
    "file_record",
    "open_hdf5",
    "open_images",
    "open_mrc",
    "open_mumott",
    "open_npy",
    "open_scan",
    "open_tiffs",
    "match_picks",
    "read_mesh",
    "read_picks",
    "resolve_paths",
]
