"""Loaders over an image-folder store (``zarrforge images``): single and paired, cached, augmented, DDP-ready.

:func:`image_loaders` yields batches of images ``[B, 1, H, W]``; :func:`paired_loaders` yields ``(target,
condition)`` pairs of such batches, the same random transform applied to both. Both return ``(train, val)``
loaders over the store's split, read chunk-aware (shuffled chunks, shuffled within each chunk, dealt to ranks),
with ``cache_rate`` of the training set (and all of the validation set when caching is on) decoded once into RAM.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from storage.chunks import ChunkReader

from ._layout import list_arrays, read_json, read_whole
from ._torch import torch
from .dataset import ZarrDataset, _empty_batch
from .threaded import ThreadedLoader

__all__ = ["ImageSet", "PairedTransform", "image_loaders", "paired_loaders"]

log = logging.getLogger(__name__)

# One item of an ImageSet: (array name, sample index in the store).
Item = tuple[str, int]
# What the factories return: batches read by threads, or by a DataLoader (no workers, or worker processes).
Loader = ThreadedLoader | torch.utils.data.DataLoader[Any]


class ImageSet(torch.utils.data.Dataset[Any]):
    """Items ``(array, sample)`` of an images store as ``[1, H, W]`` tensors; a leading share cached in RAM.

    With ``paired`` arrays, item ``(name, i)`` gives a tuple of sample ``i`` of every array in ``paired``. With
    ``normalize`` each image is mask-normalized as it is read (:func:`graphs.masked.masked_normalize`).
    ``cache`` items are decoded when the set is made (before DataLoader workers fork, which then share them).
    A DataLoader with a ``batch_size`` gets whole batches from :meth:`__getitems__`: one ``[B, 1, H, W]`` tensor
    per view, gathered chunk by chunk straight into the batch (in shared memory inside a worker).
    """

    def __init__(
        self,
        store: str | os.PathLike[str],
        items: Sequence[Item],
        *,
        paired: Sequence[str] = (),
        cache: int = 0,
        normalize: bool = False,
    ) -> None:
        self.path = Path(store)
        self.items = list(items)
        self.paired = tuple(paired)
        self.normalize = normalize
        arrays = sorted({name for name, _ in self.items} | set(self.paired))
        self._datasets = {name: ZarrDataset(self.path, arrays=[name]) for name in arrays}
        self._cached: dict[Item, tuple[torch.Tensor, ...]] = {}
        cache = min(cache, len(self.items))
        for start in range(0, cache, 256):
            block = self.items[start : min(start + 256, cache)]
            views = self._gather(block)
            for row, item in enumerate(block):
                self._cached[item] = tuple(view[row].clone() for view in views)

    def __len__(self) -> int:
        return len(self.items)

    def _views(self, name: str) -> tuple[str, ...]:
        return self.paired or (name,)

    def _gather(self, items: Sequence[Item]) -> tuple[torch.Tensor, ...]:
        """The items as one ``[B, 1, H, W]`` tensor per view, the cached ones copied from RAM."""
        first = self._datasets[self._views(items[0][0])[0]]
        shape = (len(items), 1, *first._info[first.arrays[0]].shape[1:])
        n_views = len(self._views(items[0][0]))
        batches = tuple(_empty_batch(shape, np.dtype(np.float32)) for _ in range(n_views))
        by_array: dict[str, tuple[list[int], list[int]]] = {}
        for row, item in enumerate(items):
            cached = self._cached.get(item)
            if cached is not None:
                for batch, view in zip(batches, cached, strict=True):
                    batch[row] = view
                continue
            for v, name in enumerate(self._views(item[0])):
                rows, samples = by_array.setdefault(f"{v}:{name}", ([], []))
                rows.append(row)
                samples.append(item[1])
        for key, (rows, samples) in by_array.items():
            v, name = key.split(":", 1)
            values = self._datasets[name].__getitems__(samples).stacked[name]
            batches[int(v)][rows, 0] = values
            if self.normalize:  # read from the store: normalized here (the cached items were, once)
                from graphs.masked import masked_normalize  # numpy only: no dask in the loader

                for row in rows:
                    image = batches[int(v)][row, 0]
                    image.copy_(masked_normalize(image))
        return batches

    def __getitems__(self, positions: Sequence[int]) -> tuple[torch.Tensor, ...]:
        """The views of items ``positions`` as batches ``[B, 1, H, W]`` (what ``_Collate`` takes)."""
        return self._gather([self.items[p] for p in positions])

    def __getitem__(self, position: int) -> tuple[torch.Tensor, ...]:
        return tuple(view[0] for view in self._gather([self.items[position]]))


class _ChunkOrder(torch.utils.data.Sampler[int]):
    """Positions of an ImageSet, chunk by chunk: chunks shuffled by ``[seed, epoch]``, dealt to ranks."""

    def __init__(
        self, chunk_of: Sequence[tuple[str, int]], *, seed: int, shuffle: bool, num_replicas: int, rank: int
    ) -> None:
        groups: dict[tuple[str, int], list[int]] = {}
        for position, key in enumerate(chunk_of):
            groups.setdefault(key, []).append(position)
        self.groups = list(groups.values())
        self.seed, self.shuffle, self.num_replicas, self.rank = seed, shuffle, num_replicas, rank
        self.epoch = 0
        self.num_samples = math.ceil(len(chunk_of) / num_replicas)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(len(self.groups)) if self.shuffle else np.arange(len(self.groups))
        mine: list[int] = []
        for g in order[self.rank :: self.num_replicas]:
            group = np.asarray(self.groups[g])
            mine.extend((rng.permutation(group) if self.shuffle else group).tolist())
        if not mine:  # fewer chunks than ranks: take from the whole order
            mine = [p for g in order for p in self.groups[g]]
        return iter(np.resize(np.asarray(mine, dtype=np.int64), self.num_samples).tolist())


class PairedTransform:
    """The same random flips, quarter turns (square images), small affine warp and gain for every view.

    kornia's ``AugmentationSequential`` draws each sample's parameters and applies them to every view, so target
    and condition stay aligned (torchvision's v2 transforms would do as well, but torchvision's wheels are built
    against CUDA builds of torch). Random numbers come from torch's generator (seeded per DataLoader worker).
    Needs ``kornia`` (the ``torch`` extra).

    Parameters
    ----------
    degrees : float
        Largest rotation of the affine warp, in degrees.
    scale, translate : float
        Largest relative zoom, and shift as a share of the side.
    intensity : float
        Largest relative change of the gain (1 ± intensity).
    """

    def __init__(
        self, degrees: float = 10.0, scale: float = 0.1, translate: float = 0.05, intensity: float = 0.1
    ) -> None:
        self.degrees, self.scale, self.translate, self.intensity = degrees, scale, translate, intensity
        self._pipelines: dict[tuple[bool, int], Any] = {}

    def _pipeline(self, square: bool, views: int) -> Any:
        import kornia.augmentation as K

        key = (square, views)
        if key not in self._pipelines:
            steps = [K.RandomHorizontalFlip(), K.RandomVerticalFlip()]
            if square:
                steps.append(K.RandomRotation90(times=(0, 3)))
            steps += [
                K.RandomAffine(
                    degrees=self.degrees,
                    translate=(self.translate, self.translate),
                    scale=(1 - self.scale, 1 + self.scale),
                    padding_mode="zeros",
                    p=1.0,
                ),
                # kornia's contrast is a gain (image × factor); unclipped, as normalized images are not in [0, 1].
                K.RandomContrast(contrast=(1 - self.intensity, 1 + self.intensity), clip_output=False, p=1.0),
            ]
            self._pipelines[key] = K.AugmentationSequential(*steps, data_keys=["input"] * views)
        return self._pipelines[key]

    def __call__(self, *views: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Transform the views ``[B, 1, H, W]`` alike, each sample with its own draw."""
        height, width = views[0].shape[-2:]
        out = self._pipeline(height == width, len(views))(*(view.float() for view in views))
        return tuple(out) if isinstance(out, list | tuple) else (out,)


class _Collate:
    """Take the batches of :meth:`ImageSet.__getitems__` (or stack samples); apply the paired transform.

    A lone view is returned as one tensor, several as a tuple.
    """

    def __init__(self, transform: PairedTransform | None) -> None:
        self.transform = transform

    def __call__(self, batch: Any) -> Any:
        if isinstance(batch, tuple):  # already [B, 1, H, W] per view
            views = batch
        else:
            views = tuple(torch.stack([sample[v] for sample in batch]) for v in range(len(batch[0])))
        if self.transform is not None:
            views = self.transform(*views)
        return views[0] if len(views) == 1 else views


def image_loaders(
    store: str | os.PathLike[str], batch_size: int = 8, *, source: str = "both", **options: Any
) -> tuple[Loader, Loader]:
    """``(train, val)`` loaders of single images ``[B, 1, H, W]`` from an images store.

    Parameters
    ----------
    store : path
        Made by ``zarrforge images`` (with or without ``--pairs``).
    batch_size : int
    source : str
        A folder name, or ``"both"`` (every folder: all the images of a single store, each array of a paired one).
    **options
        ``num_workers``, ``workers``, ``normalize``, ``cache_rate``, ``augment``, ``distributed``, ``rank``,
        ``world_size``, ``subset_size``, ``seed``, ``val_store``: see :func:`paired_loaders`.
    """
    folders, single = _folders(Path(store))
    chosen = folders if source == "both" else [source]
    unknown = [f for f in chosen if f not in folders]
    if unknown:
        raise ValueError(f"source={source!r}: {store} holds folders {', '.join(folders)} (or 'both')")
    return _loaders(Path(store), batch_size, chosen, (), single, folders, **options)


def paired_loaders(
    store: str | os.PathLike[str], batch_size: int = 8, *, target: str, condition: str, **options: Any
) -> tuple[Loader, Loader]:
    """``(train, val)`` loaders of ``(target, condition)`` batches, each ``[B, 1, H, W]`` float32.

    Parameters
    ----------
    store : path
        Made by ``zarrforge images --pairs``.
    target, condition : str
        Folder names of the store.
    num_workers : int
        Workers reading batches (default 0: the training process reads them).
    workers : {"threads", "processes"}
        What the workers are. Threads of the training process (a :class:`~torch_bridge.ThreadedLoader`, the
        default) hand batches over as they are; a DataLoader's worker processes copy every batch between
        processes, which on a few cores caps an epoch at the copy's speed (``benchmarks/bench_images.py``).
    cache_rate : float
        Share of the training set decoded once into RAM (default 0); the validation set is fully cached when
        it is above 0.
    augment : bool
        Random flips, quarter turns, small affine warp and intensity change on the training batches, the same
        for target and condition.
    distributed : bool
        Split the samples between ranks by chunk (``rank``/``world_size`` arguments, else torch.distributed).
    subset_size : int, optional
        Use only the first this many training samples (debugging).
    seed : int
        Seeds the order (call ``loader.sampler.set_epoch(epoch)`` each epoch).
    val_store : path, optional
        Take the validation set from this store (all of its samples) instead of the store's own val split.
    normalize : {None, "local"}
        ``"local"``: mask-normalize each image on the fly (mean and std of its non-zero pixels), for a store
        ingested with ``--no-normalize``; ``None`` (default): the images as stored.
    """
    folders, single = _folders(Path(store))
    if single:
        raise ValueError(f"{store} holds single images; paired_loaders needs a store made with --pairs")
    for name in (target, condition):
        if name not in folders:
            raise ValueError(f"{name!r} is not a folder of {store} ({', '.join(folders)})")
    return _loaders(Path(store), batch_size, [target], (target, condition), single, folders, **options)


def _parameters(store: Path) -> dict[str, Any]:
    meta = (read_json(store / "zarr.json") or {}).get("attributes", {}).get("zarrforge", {})
    if meta.get("pipeline") != "images":
        raise ValueError(f"{store}: not a store made by zarrforge images")
    return dict(meta.get("parameters", {}))


def _folders(store: Path) -> tuple[list[str], bool]:
    folders = list(_parameters(store).get("folders", []))
    return folders, "images" in list_arrays(store)


def _items(
    store: Path, chosen: Sequence[str], single: bool, folders: Sequence[str], split: int | None
) -> list[Item]:
    """The items of the chosen folders (and split, if given), in store order."""
    split_values = read_whole(ChunkReader(store / "split"))
    keep = np.ones(len(split_values), bool) if split is None else split_values == split
    if single:
        codes = read_whole(ChunkReader(store / "folder"))
        wanted = [folders.index(f) for f in chosen]
        return [("images", int(i)) for i in np.flatnonzero(keep & np.isin(codes, wanted))]
    return [(name, int(i)) for name in chosen for i in np.flatnonzero(keep)]


def _loaders(
    store: Path,
    batch_size: int,
    chosen: Sequence[str],
    paired: Sequence[str],
    single: bool,
    folders: Sequence[str],
    *,
    num_workers: int = 0,
    workers: str = "threads",
    cache_rate: float = 0.0,
    augment: bool = False,
    distributed: bool = False,
    rank: int | None = None,
    world_size: int | None = None,
    subset_size: int | None = None,
    seed: int = 0,
    val_store: str | os.PathLike[str] | None = None,
    normalize: str | None = None,
) -> tuple[Loader, Loader]:
    if normalize not in (None, "local"):
        raise ValueError(f"normalize must be None or 'local', got {normalize!r}")
    for path in {store, Path(val_store) if val_store is not None else store}:
        if normalize == "local" and _parameters(path).get("normalize", True):
            raise ValueError(
                f"{path} holds normalized images already; normalize='local' is for --no-normalize stores"
            )
    if not 0 <= cache_rate <= 1:
        raise ValueError(f"cache_rate must be in [0, 1], got {cache_rate}")
    if workers not in ("threads", "processes"):
        raise ValueError(f"workers must be 'threads' or 'processes', got {workers!r}")
    if distributed:
        dist = torch.distributed
        world_size = (
            world_size if world_size is not None else (dist.get_world_size() if dist.is_initialized() else 1)
        )
        rank = rank if rank is not None else (dist.get_rank() if dist.is_initialized() else 0)
    world_size, rank = (world_size or 1, rank or 0) if distributed else (1, 0)
    train_items = _items(store, chosen, single, folders, 0)
    if subset_size is not None:
        train_items = train_items[:subset_size]
    if val_store is not None:
        val_path = Path(val_store)
        val_folders, val_single = _folders(val_path)
        val_items = _items(val_path, chosen, val_single, val_folders, None)
    else:
        val_path, val_items = store, _items(store, chosen, single, folders, 1)
    local = normalize == "local"
    train = ImageSet(
        store, train_items, paired=paired, cache=round(cache_rate * len(train_items)), normalize=local
    )
    val = ImageSet(
        val_path, val_items, paired=paired, cache=len(val_items) if cache_rate > 0 else 0, normalize=local
    )
    loaders = []
    for data, shuffle, transform in ((train, True, PairedTransform() if augment else None), (val, False, None)):
        chunk = list_arrays(data.path)[data.items[0][0]].chunk_samples if data.items else 1
        sampler = _ChunkOrder(
            [(name, i // chunk) for name, i in data.items],
            seed=seed,
            shuffle=shuffle,
            num_replicas=world_size,
            rank=rank,
        )
        loader: Loader
        if num_workers > 0 and workers == "threads":
            loader = ThreadedLoader(
                data,
                batch_size,
                batch_sampler=torch.utils.data.BatchSampler(sampler, batch_size, drop_last=False),
                num_threads=num_workers,
                collate_fn=_Collate(transform),
            )
        else:
            loader = torch.utils.data.DataLoader(
                data,
                batch_size=batch_size,
                sampler=sampler,
                num_workers=num_workers,
                collate_fn=_Collate(transform),
                persistent_workers=num_workers > 0,
            )
        loaders.append(loader)
    if rank == 0:
        log.info("%s", _summary(train, val))
    return loaders[0], loaders[1]


def _summary(train: ImageSet, val: ImageSet) -> str:
    """Counts, shape, dtype, range, mean and std of the first (up to 64) training samples."""
    if not len(train):
        return f"train 0, val {len(val)} samples"
    first = train.__getitems__(list(range(min(64, len(train)))))[0]
    return (
        f"train {len(train)}, val {len(val)} samples of {tuple(first.shape[1:])} {first.dtype}; first "
        f"{len(first)}: range [{float(first.min()):.3g}, {float(first.max()):.3g}], "
        f"mean {float(first.mean()):.3g}, std {float(first.std()):.3g}"
    )
