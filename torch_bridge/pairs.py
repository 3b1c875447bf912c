"""``PairDataset``: ``(clean, stripe)`` sinogram patches of a ``zarrforge stripes`` store, stored or simulated."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from storage.errors import StoreError

from ._layout import read_json
from ._torch import torch
from .dataset import ZarrDataset

__all__ = ["PairDataset"]

#: The per-sample arrays of a pair store, returned as metadata on request.
PAIR_METADATA = ("sinogram", "patch", "angle0", "x0", "split")


class PairDataset(ZarrDataset):
    """Clean/stripe pairs of a ``zarrforge stripes`` store, as ``(clean, stripe)`` tensors ``(angle, patch_x)``.

    A *virtual* store (``zarrforge stripes --virtual``) holds the clean patches only: the stripes are simulated
    here, from the store's seed and parameters and each patch's ``(sinogram, patch)`` ids, with the same numpy
    kernel the pipeline uses (:func:`graphs.stripes.simulate_stripes`), so both kinds of store give the same
    pairs. It is a :class:`~torch_bridge.ZarrDataset` (chunk-aware samplers, ``make_loader``, DataLoader workers
    all work), whose samples are tuples.

    Parameters
    ----------
    store : path
        A pair store.
    split : {"train", "val"}, optional
        Only the samples of this split (whole sinograms are split).
    return_mask : bool
        Add the boolean mask of the pixels a stripe changed: ``(clean, stripe, mask)``.
    return_metadata : bool
        Add a dict of ``sinogram``, ``patch``, ``angle0``, ``x0`` and ``split`` last.
    transform : callable, optional
        Applied to each sample tuple; its result is returned.
    load_in_memory, cache_bytes
        As for :class:`~torch_bridge.ZarrDataset`.

    Raises
    ------
    StoreError
        ``store`` is not a finished pair store.

    Examples
    --------
    >>> train = PairDataset("stripes.zarr", split="train")  # doctest: +SKIP
    >>> clean, stripe = train[0]  # doctest: +SKIP
    >>> full = PairDataset("stripes.zarr", return_mask=True, return_metadata=True)  # doctest: +SKIP
    >>> clean, stripe, mask, meta = full[0]  # doctest: +SKIP
    """

    def __init__(
        self,
        store: str | os.PathLike[str],
        split: str | None = None,
        *,
        return_mask: bool = False,
        return_metadata: bool = False,
        transform: Callable[[tuple[Any, ...]], Any] | None = None,
        load_in_memory: bool = False,
        cache_bytes: int | None = None,
    ) -> None:
        path = os.fspath(store)
        meta = (read_json(Path(path) / "zarr.json") or {}).get("attributes", {}).get("zarrforge", {})
        if meta.get("pipeline") != "stripes":
            raise StoreError(f"{path}: not a pair store (made by zarrforge stripes); got {meta.get('pipeline')!r}")
        parameters = meta.get("parameters", {})
        self.virtual = bool(parameters.get("virtual", False))
        self.seed = int(meta.get("seed", 0))
        self.stripe_params: dict[str, Any] = dict(parameters.get("stripes", {}))
        self.return_mask = bool(return_mask)
        self.return_pair_metadata = bool(return_metadata)
        self.pair_transform = transform
        arrays: Sequence[str] = (
            ["clean"] if self.virtual else ["clean", "stripe", *(["mask"] if return_mask else [])]
        )
        super().__init__(
            store,
            arrays,
            return_metadata=self.virtual or self.return_pair_metadata,
            metadata=PAIR_METADATA,
            load_in_memory=load_in_memory,
            cache_bytes=cache_bytes,
            split=split,
        )

    def _pair(self, sample: dict[str, Any]) -> Any:
        clean = sample["clean"]
        meta = sample.get("meta", {})
        if self.virtual:
            # Imported here: ``import torch_bridge`` stays free of graphs (and the kernel is numpy only).
            from graphs.stripe_simulation import StripeParams, simulate_stripes

            ids = (int(meta["sinogram"]), int(meta["patch"]))
            params = StripeParams.from_dict(self.stripe_params)
            stripe_np, mask_np = simulate_stripes(clean.numpy(), self.seed, ids, params)
            stripe, mask = torch.from_numpy(stripe_np), torch.from_numpy(mask_np)
        else:
            stripe, mask = sample["stripe"], sample.get("mask")
        out: tuple[Any, ...] = (clean, stripe)
        if self.return_mask:
            out += (mask,)
        if self.return_pair_metadata:
            out += (meta,)
        return self.pair_transform(out) if self.pair_transform is not None else out

    def __getitem__(self, index: int) -> Any:
        return self._pair(super().__getitem__(index))

    def __getitems__(self, indices: Sequence[int]) -> list[Any]:
        """The samples ``indices`` as a list of tuples, read chunk by chunk (as a DataLoader asks for a batch)."""
        return [self._pair(sample) for sample in super().__getitems__(indices)]

    def __repr__(self) -> str:
        kind = "virtual" if self.virtual else "materialized"
        split = f", split={self.split!r}" if self.split is not None else ""
        return f"PairDataset({str(self.path)!r}{split}, {kind}, samples={len(self)})"
