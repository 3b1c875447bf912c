"""zarrforge torch_bridge: map-style PyTorch Datasets over training stores, chunk-aware samplers and loaders.

Needs PyTorch (``pip install "zarrforge[torch]"``). Never imports dask, dask.distributed or ``engine``: it reads
stores directly, chunk by chunk, so it is safe and light inside DataLoader worker processes.

Examples
--------
>>> from torch_bridge import ZarrDataset, ChunkShuffleSampler, make_loader  # doctest: +SKIP
>>> ds = ZarrDataset("train.zarr", arrays=["patches"], return_metadata=True)  # doctest: +SKIP
>>> loader = make_loader(ds, batch_size=64, num_workers=2)  # doctest: +SKIP
"""

from __future__ import annotations

from . import (
    _torch,  # noqa: F401  (first: a missing torch raises an ImportError that says what to install)
    transforms,
)
from .augment import WeakStrongBatch, WeakStrongCollate, strong_augment, weak_augment
from .balanced import BalancedBatchSampler
from .cache import ChunkCache
from .dataset import SampleBatch, ZarrDataset
from .images import image_loaders, paired_loaders
from .loader import collate, make_loader
from .pairs import PairDataset
from .reconstructions import ReconstructionDataset, coefficient_subset
from .sampler import BatchIndices, ChunkBatchSampler, ChunkShuffleSampler, order_randomness
from .threaded import ThreadedLoader
from .voxels import RayBatchSampler, VoxelRayDataset, collate_ray_batch

__all__ = [
    "RayBatchSampler",
    "VoxelRayDataset",
    "collate_ray_batch",
    "transforms",
    "ReconstructionDataset",
    "coefficient_subset",
    "BalancedBatchSampler",
    "BatchIndices",
    "ChunkBatchSampler",
    "ChunkCache",
    "ChunkShuffleSampler",
    "PairDataset",
    "SampleBatch",
    "ThreadedLoader",
    "WeakStrongBatch",
    "WeakStrongCollate",
    "ZarrDataset",
    "collate",
    "image_loaders",
    "make_loader",
    "order_randomness",
    "paired_loaders",
    "strong_augment",
    "weak_augment",
]
