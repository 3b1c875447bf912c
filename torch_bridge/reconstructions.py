"""A Dataset over a tensor-tomography store (``zarrforge tensor-tomo``): reconstructed volumes and their metadata.

Sample ``i`` is the volume ``(H, W, D, C)`` float32 of spherical-harmonic coefficients of reconstruction ``i``,
and, with ``return_metadata``, a dict of its ``index``, the run's ``seed``, its ``projection_indices``, ``loss``
and ``iterations``. :func:`coefficient_subset` keeps only some coefficients (channels), by index or up to an
order ℓ, using the store's own table of the (ℓ, m) of each coefficient.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from storage.errors import StoreError

from ._layout import read_json
from ._torch import torch
from .dataset import ZarrDataset

__all__ = ["ReconstructionDataset", "coefficient_subset"]

_ARRAY = "reconstructions"
_META = ("projection_indices", "final_loss", "iterations")


class ReconstructionDataset(torch.utils.data.Dataset[Any]):
    """Reconstructions of a tensor-tomography store as ``(H, W, D, C)`` float32 tensors.

    Reads go through :class:`~torch_bridge.ZarrDataset` (one sample per chunk, a per-process chunk cache,
    safe in DataLoader workers: it pickles as its path and options).

    Parameters
    ----------
    store : path
        A store written by ``zarrforge tensor-tomo``.
    load_in_memory : bool
        Read the whole store once per process and serve samples from RAM.
    transform : callable, optional
        Applied to each volume tensor; its result is returned instead. Must pickle for ``spawn`` workers.
    return_metadata : bool
        Return ``(volume, meta)`` with ``meta = {"index", "seed", "projection_indices", "loss", "iterations"}``.
    channels : sequence of int, optional
        Coefficients to keep, in this order (see :func:`coefficient_subset`); default all.
    split : str, optional
        As for :class:`~torch_bridge.ZarrDataset` (for stores that record splits).

    Attributes
    ----------
    ell, m : numpy.ndarray
        Order and degree of each returned coefficient.
    ell_max : int
        The store's highest order.
    seed : int
        Seed of the run that made the store.

    Raises
    ------
    StoreError
        The store is not a finished tensor-tomography store.

    Examples
    --------
    >>> ds = ReconstructionDataset("recon.zarr", return_metadata=True)  # doctest: +SKIP
    >>> volume, meta = ds[0]  # doctest: +SKIP
    >>> volume.shape, meta["loss"]  # doctest: +SKIP
    (torch.Size([16, 16, 16, 45]), 1234.5)
    """

    def __init__(
        self,
        store: str | os.PathLike[str],
        *,
        load_in_memory: bool = False,
        transform: Callable[[Any], Any] | None = None,
        return_metadata: bool = False,
        channels: Sequence[int] | None = None,
        split: str | None = None,
    ) -> None:
        self.path = Path(store)
        self._samples = ZarrDataset(
            self.path,
            arrays=[_ARRAY],
            metadata=list(_META),
            return_metadata=return_metadata,
            load_in_memory=load_in_memory,
            split=split,
        )
        group = read_json(self.path / "zarr.json") or {}
        record = group.get("attributes", {}).get("zarrforge", {})
        if not isinstance(record, dict) or record.get("pipeline") != "tensor-tomo":
            raise StoreError(f"{self.path}: not a tensor-tomo store (no 'pipeline': 'tensor-tomo' in its attrs)")
        array = read_json(self.path / _ARRAY / "zarr.json") or {}
        attrs = array.get("attributes", {})
        all_ell, all_m = np.asarray(attrs.get("ell", []), np.int64), np.asarray(attrs.get("m", []), np.int64)
        n_channels = self._samples._info[_ARRAY].shape[-1]
        if len(all_ell) != n_channels or len(all_m) != n_channels:
            raise StoreError(
                f"{self.path}: the attrs of {_ARRAY!r} lack the (ell, m) of its {n_channels} coefficients"
            )
        self._all_ell, self._all_m = all_ell, all_m
        self.ell_max = int(record.get("parameters", {}).get("ell_max", all_ell.max(initial=0)))
        self.seed = int(record.get("seed", 0))
        self.transform = transform
        self.return_metadata = bool(return_metadata)
        self.load_in_memory = bool(load_in_memory)
        self.channels: tuple[int, ...] | None = None
        self._select(channels)

    def _select(self, channels: Iterable[int] | None) -> None:
        n = len(self._all_ell)
        if channels is None:
            self.channels = None
            self.ell, self.m = self._all_ell, self._all_m
            return
        chosen = tuple(int(c) for c in channels)
        bad = [c for c in chosen if not 0 <= c < n]
        if bad or not chosen:
            raise ValueError(f"channels must be coefficient indices 0-{n - 1}, at least one, got {list(chosen)}")
        self.channels = chosen
        self.ell, self.m = self._all_ell[list(chosen)], self._all_m[list(chosen)]
        self._index = torch.as_tensor(chosen)

    def __len__(self) -> int:
        return len(self._samples)

    def __repr__(self) -> str:
        return (
            f"ReconstructionDataset({str(self.path)!r}, samples={len(self)}, volume={tuple(self.volume_shape)}, "
            f"ell_max={self.ell_max}, channels={len(self.ell)})"
        )

    @property
    def volume_shape(self) -> tuple[int, ...]:
        """``(H, W, D, C)`` of each returned volume."""
        shape = self._samples._info[_ARRAY].shape[1:]
        return (*shape[:-1], len(self.ell))

    def __getitem__(self, index: int) -> Any:
        sample = self._samples[index]
        volume = sample[_ARRAY]
        if self.channels is not None:
            volume = volume.index_select(-1, self._index)
        if self.transform is not None:
            volume = self.transform(volume)
        if not self.return_metadata:
            return volume
        i = int(index) if int(index) >= 0 else int(index) + len(self)
        meta = sample["meta"]
        return volume, {
            "index": i,
            "seed": self.seed,
            "projection_indices": meta["projection_indices"],
            "loss": meta["final_loss"],
            "iterations": meta["iterations"],
        }


def coefficient_subset(
    dataset: ReconstructionDataset, channels: Iterable[int] | None = None, *, ell_max: int | None = None
) -> ReconstructionDataset:
    """The same dataset returning only some coefficients: ``channels`` by index, or all of order ≤ ``ell_max``.

    mumott's basis holds only even orders, so ``ell_max=2`` keeps 6 coefficients (ℓ = 0 and the five of ℓ = 2).
    The dataset given is not changed.

    Parameters
    ----------
    dataset : ReconstructionDataset
    channels : iterable of int, optional
        Coefficient indices of the store (e.g. ``range(6)``).
    ell_max : int, optional
        Keep the coefficients with ℓ ≤ ``ell_max`` (an even order ≤ the store's).

    Returns
    -------
    ReconstructionDataset

    Raises
    ------
    ValueError
        Neither or both of ``channels`` and ``ell_max``, an index out of range, or an ``ell_max`` that is odd,
        negative or above the store's.

    Examples
    --------
    >>> low = coefficient_subset(ds, ell_max=2)  # doctest: +SKIP
    >>> low.ell.tolist(), low.m.tolist()  # doctest: +SKIP
    ([0, 2, 2, 2, 2, 2], [0, -2, -1, 0, 1, 2])
    """
    if (channels is None) == (ell_max is None):
        raise ValueError("give either channels (coefficient indices) or ell_max, not both or neither")
    if ell_max is not None:
        if int(ell_max) != ell_max or ell_max < 0 or ell_max % 2 or ell_max > dataset.ell_max:
            raise ValueError(
                f"ell_max must be an even order 0-{dataset.ell_max} (the store's basis has even orders only), "
                f"got {ell_max}"
            )
        channels = np.flatnonzero(dataset._all_ell <= ell_max).tolist()
    subset = ReconstructionDataset.__new__(ReconstructionDataset)
    subset.__dict__.update(dataset.__dict__)
    subset._select(channels)
    return subset
