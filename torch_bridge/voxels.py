"""Voxel subvolumes with their rays as a PyTorch Dataset, a ray batch sampler and its collate function.

An item is one cell of one object at one level (``object → (level, position) → subvolume``): its voxels and the
rays cast at its unique subvolume. Everything a sample needs is read chunk by chunk from the two stores through
one byte-sized :class:`~torch_bridge.ChunkCache` per process.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from storage.chunks import ChunkReader
from storage.errors import StoreError, StoreMismatchError

from ._layout import read_json, read_whole
from ._torch import torch
from .cache import ChunkCache

__all__ = ["RayBatchSampler", "VoxelRayDataset", "collate_ray_batch"]

MiB = 2**20
#: ``kinds=`` names, as the voxel store's ``flags_<k>`` arrays hold them.
KINDS = {"partial": 0, "empty": 1, "full": 2}
_RAY_ARRAYS = ("origins", "directions", "distances", "hits")


def _store_attrs(path: Path, pipeline: str) -> dict[str, Any]:
    """The ``zarrforge`` attrs of a finished store of ``pipeline``, read from its ``zarr.json``."""
    meta = read_json(path / "zarr.json")
    if meta is None:
        raise StoreError(f"{path}: no such store (no zarr.json); check the path")
    attrs = meta.get("attributes", {}).get("zarrforge") or {}
    if attrs.get("pipeline") != pipeline:
        raise StoreError(f"{path}: not a zarrforge {pipeline} store (made by {attrs.get('pipeline')!r})")
    if not attrs.get("complete"):
        raise StoreError(f"{path}: the store is unfinished; finish the run that writes it first")
    return dict(attrs)


class VoxelRayDataset(torch.utils.data.Dataset[dict[str, Any]]):
    """Subvolumes of a voxel store with the rays of a rays store cast from it.

    Sample ``i`` is a dict: ``voxels`` (float32 ``(1, D, H, W)``, 1 = occupied), ``origins`` and ``directions``
    (float32 ``(R, 3)``, z y x, in voxels of the subvolume, which spans ``[0, D]**3``), ``distances`` (float32
    ``(R,)``, ``inf`` for a miss), ``hits`` (bool ``(R,)``), ``center`` (the cube's center, ``D / 2``: the
    transforms rotate and flip about it), and ``level``, ``object``, ``position`` (the cell's ``(cz, cy, cx)``)
    and ``subvolume`` (its index in the level's unique subvolumes).

    Indexed with ``(i, n)`` (as :class:`RayBatchSampler` does) the sample holds exactly ``n`` of its rays, drawn
    after the transform (without replacement when it has enough).

    Parameters
    ----------
    voxels, rays : path
        A voxel store (``zarrforge voxels``) and a rays store cast from it (``zarrforge rays``); a rays store
        cast from another voxel store, or from this one before it was rebuilt, is refused.
    split : {"train", "val", "test"}, optional
        Only the cells of the objects in this split (the voxel store's ``split``, reassignable with
        ``zarrforge splits``); default: all objects.
    levels : sequence of int, optional
        Only these levels (each must have rays); default: every level of the rays store.
    kinds : sequence of str
        Which subvolumes: ``partial`` (default), ``empty``, ``full``.
    cache_bytes : int
        Capacity of the per-process chunk cache in bytes (decoded chunks of both stores).
    transform : callable, optional
        Applied to each sample dict (see :mod:`torch_bridge.transforms`); must pickle for ``spawn`` workers.

    Raises
    ------
    StoreMismatchError
        The rays store was not cast from this voxel store (as it is now).
    StoreError, ValueError
        A store is missing or unfinished, or ``split``/``levels``/``kinds`` name something it lacks.
    """

    def __init__(
        self,
        voxels: str | os.PathLike[str],
        rays: str | os.PathLike[str],
        split: str | None = None,
        levels: Sequence[int] | None = None,
        *,
        kinds: Sequence[str] = ("partial",),
        cache_bytes: int = 256 * MiB,
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> None:
        self.voxels_path, self.rays_path = Path(voxels), Path(rays)
        if cache_bytes < 0:
            raise ValueError(f"cache_bytes must be >= 0, got {cache_bytes}")
        vmeta = _store_attrs(self.voxels_path, "voxels")
        rmeta = _store_attrs(self.rays_path, "rays")
        made_from = rmeta.get("parameters", {}).get("voxels", {})
        now = {"fingerprint": vmeta.get("fingerprint"), "digest": vmeta.get("counts", {}).get("digest")}
        for key, value in now.items():
            if made_from.get(key) != value:
                raise StoreMismatchError(
                    f"{self.rays_path}: was cast from the voxel store {made_from.get('path')} ({key} "
                    f"{made_from.get(key)}), not from {self.voxels_path} ({key} {value}); re-run zarrforge rays "
                    f"{self.voxels_path}"
                )
        ray_levels = [int(k) for k in rmeta["parameters"]["levels"]]
        chosen = list(ray_levels if levels is None else levels)
        for level in chosen:
            if level not in ray_levels:
                raise ValueError(f"levels={list(chosen)}: {self.rays_path} has rays for levels {ray_levels} only")
        bad = [k for k in kinds if k not in KINDS]
        if bad or not kinds:
            raise ValueError(f"kinds={list(kinds)}: choose from {', '.join(KINDS)}")
        self.levels = tuple(sorted(set(chosen)))
        self.split = split
        self.transform = transform
        self.cache_bytes = int(cache_bytes)
        self.sides = {k: int(vmeta["counts"]["levels"][str(k)]["side"]) for k in self.levels}

        objects = np.arange(int(vmeta["counts"]["objects"]))
        if split is not None:
            split_meta = read_json(self.voxels_path / "split" / "zarr.json") or {}
            names = str(split_meta.get("attributes", {}).get("flag_meanings", "")).split()
            if split not in names:
                raise ValueError(f"split={split!r}: {self.voxels_path} has splits {', '.join(names)}")
            codes = read_whole(ChunkReader(self.voxels_path / "split"))
            objects = np.flatnonzero(codes == names.index(split))
        wanted = np.asarray([KINDS[k] for k in kinds])
        parts: list[np.ndarray] = []
        for level in self.levels:
            maps = read_whole(ChunkReader(self.voxels_path / f"map_{level}"))
            maps = maps.reshape(len(maps), -1)[objects]
            flags = read_whole(ChunkReader(self.voxels_path / f"flags_{level}"))
            keep = np.isin(flags[maps], wanted)
            obj, cell = np.nonzero(keep)
            rows = np.empty((len(obj), 4), dtype=np.int64)
            rows[:, 0] = level
            rows[:, 1] = objects[obj]
            rows[:, 2] = cell
            rows[:, 3] = maps[obj, cell]
            parts.append(rows)
        #: One row per item: ``(level, object, cell, subvolume)``.
        self.items = np.concatenate(parts) if parts else np.zeros((0, 4), np.int64)
        self._reset_process_state()

    # ------------------------------------------------------------ process state
    def _reset_process_state(self) -> None:
        self._pid: int | None = None
        self._readers: dict[str, ChunkReader] = {}
        self._cache: ChunkCache | None = None

    def _ensure_process(self) -> ChunkCache:
        if self._pid != os.getpid() or self._cache is None:
            self._reset_process_state()
            self._cache = ChunkCache(self.cache_bytes)
            for level in self.levels:
                self._readers[f"subvolumes_{level}"] = ChunkReader(self.voxels_path / f"subvolumes_{level}")
                for name in _RAY_ARRAYS:
                    self._readers[f"{name}_{level}"] = ChunkReader(self.rays_path / f"{name}_{level}")
            self._pid = os.getpid()
        return self._cache

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for key in ("_pid", "_readers", "_cache"):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset_process_state()

    @property
    def cache(self) -> ChunkCache:
        """The chunk cache of the calling process (see its ``stats``)."""
        return self._ensure_process()

    # ------------------------------------------------------------ reading
    def __len__(self) -> int:
        return len(self.items)

    def _row(self, cache: ChunkCache, name: str, index: int) -> np.ndarray:
        reader = self._readers[name]
        k, j = divmod(index, reader.chunk_samples)
        chunk = cache.get((name, k), lambda: reader.read_chunk(k))
        return np.array(chunk[j])  # a copy: cached chunks are read-only, and tensors want their own memory

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        i, n_rays = (key, None) if isinstance(key, int | np.integer) else (int(key[0]), int(key[1]))
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} items")
        level, obj, cell, sub = (int(v) for v in self.items[i])
        cache = self._ensure_process()
        side = self.sides[level]
        n = 2**level  # cells per axis
        sample: dict[str, Any] = {
            "voxels": torch.from_numpy(self._row(cache, f"subvolumes_{level}", sub).astype(np.float32))[None],
            **{name: torch.from_numpy(self._row(cache, f"{name}_{level}", sub)) for name in _RAY_ARRAYS},
            "center": float(side) / 2,
            "level": level,
            "object": obj,
            "position": torch.tensor(np.unravel_index(cell, (n, n, n)), dtype=torch.int64),
            "subvolume": sub,
        }
        if self.transform is not None:
            sample = self.transform(sample)
        if n_rays is not None:
            sample = _take_rays(sample, n_rays)
        return sample

    def item_levels(self) -> np.ndarray:
        """The level of every item (what :class:`RayBatchSampler` groups by)."""
        return self.items[:, 0]


def _take_rays(sample: dict[str, Any], n: int) -> dict[str, Any]:
    """Keep ``n`` rays: a random subset when the sample has enough, else a draw with replacement."""
    have = len(sample["distances"])
    if have == n:
        return sample
    if have == 0:
        raise ValueError("a sample without rays cannot give rays to a batch")
    pick = torch.randperm(have)[:n] if have >= n else torch.randint(have, (n,))
    out = dict(sample)
    for name in _RAY_ARRAYS:
        out[name] = sample[name].index_select(0, pick)  # not fancy indexing: see transforms.RandomRaySubsample
    return out


class RayBatchSampler(torch.utils.data.Sampler[list[tuple[int, int]]]):
    """Batches of ``subvolumes_per_batch`` items of one level and ``rays_per_batch`` rays in all.

    Each batch is a list of ``(index, n_rays)``: the rays are shared out evenly (the first items get one more
    when they do not divide). Items of a level are shuffled with ``default_rng([seed, epoch, level])``, cut into
    batches, and the batches of all levels shuffled together; :meth:`set_epoch` changes the order.

    Parameters
    ----------
    dataset : VoxelRayDataset
    rays_per_batch, subvolumes_per_batch : int
    seed : int
    shuffle : bool
        ``False``: items in dataset order, levels one after the other.
    drop_last : bool
        Drop each level's last, short batch (default), so every batch has ``subvolumes_per_batch`` items.
    """

    def __init__(
        self,
        dataset: VoxelRayDataset,
        *,
        rays_per_batch: int = 4096,
        subvolumes_per_batch: int = 8,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = True,
    ) -> None:
        if subvolumes_per_batch < 1 or rays_per_batch < subvolumes_per_batch:
            raise ValueError(
                f"need subvolumes_per_batch >= 1 and rays_per_batch >= subvolumes_per_batch, got "
                f"{subvolumes_per_batch} and {rays_per_batch}"
            )
        self.levels = np.asarray(dataset.item_levels())
        self.rays_per_batch, self.subvolumes_per_batch = int(rays_per_batch), int(subvolumes_per_batch)
        self.seed, self.shuffle, self.drop_last = int(seed), bool(shuffle), bool(drop_last)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Use the order of ``epoch``."""
        self.epoch = int(epoch)

    def _batches(self) -> list[np.ndarray]:
        batches: list[np.ndarray] = []
        b = self.subvolumes_per_batch
        for level in np.unique(self.levels):
            items = np.flatnonzero(self.levels == level)
            if self.shuffle:
                items = np.random.default_rng([self.seed, self.epoch, int(level)]).permutation(items)
            stop = len(items) - len(items) % b if self.drop_last else len(items)
            batches.extend(items[s : s + b] for s in range(0, stop, b))
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(len(batches))
            batches = [batches[k] for k in order]
        return batches

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for batch in self._batches():
            share, extra = divmod(self.rays_per_batch, len(batch))
            yield [(int(i), share + (k < extra)) for k, i in enumerate(batch)]

    def __len__(self) -> int:
        b = self.subvolumes_per_batch
        counts = np.unique(self.levels, return_counts=True)[1]
        return int(sum(c // b if self.drop_last else -(-c // b) for c in counts))


def collate_ray_batch(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack subvolumes and concatenate their rays: ``voxels (B, 1, D, H, W)``, ``origins (N, 3)``, ...

    ``ray_to_voxel (N,)`` says which of the ``B`` subvolumes each ray belongs to; ``level``, ``object``,
    ``subvolume`` are ``(B,)`` and ``position`` ``(B, 3)``.
    """
    if not samples:
        raise ValueError("an empty batch")
    shapes = {tuple(s["voxels"].shape) for s in samples}
    if len(shapes) != 1:
        raise ValueError(f"a batch mixes subvolume shapes {sorted(shapes)}; batch one level at a time")
    counts = [len(s["distances"]) for s in samples]
    batch: dict[str, Any] = {"voxels": torch.stack([s["voxels"] for s in samples])}
    for name in _RAY_ARRAYS:
        batch[name] = torch.cat([s[name] for s in samples])
    # numpy: torch.repeat_interleave starts intra-op threads, milliseconds on a busy CPU for 4,096 values.
    batch["ray_to_voxel"] = torch.from_numpy(np.repeat(np.arange(len(samples), dtype=np.int64), counts))
    for name in ("level", "object", "subvolume", "center"):
        batch[name] = torch.tensor([s[name] for s in samples])
    batch["position"] = torch.stack([s["position"] for s in samples])
    return batch
