"""What a training store holds, as a Dataset sees it: its arrays, the virtual arrays it describes, its splits.

Read from the stores' JSON metadata alone (and, for a split, its small ``split`` array), without zarr-python's
machinery, once when a :class:`~torch_bridge.ZarrDataset` is made.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from storage.chunks import ChunkReader
from storage.errors import StoreError


@dataclass(frozen=True)
class ArrayInfo:
    """What the dataset knows of one array without opening it: its shape, dtype, samples per chunk and dims."""

    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    chunk_samples: int
    dims: tuple[str, ...] = ()


@dataclass(frozen=True)
class VirtualPatches:
    """A ``(sample, size, size)`` array a store describes but does not hold (a virtual picking store's patches).

    Sample ``i`` is ``images[index[i], y0[i] // scale :, x0[i] // scale :]`` cut to ``size × size``.
    """

    images: str
    index: str
    y0: str
    x0: str
    size: int
    scale: int


def virtual_arrays(path: Path, available: Mapping[str, ArrayInfo]) -> dict[str, VirtualPatches]:
    """The virtual arrays a store describes in ``attrs["zarrforge"]["virtual"]``, checked against its arrays."""
    meta = read_json(path / "zarr.json") or {}
    described = meta.get("attributes", {}).get("zarrforge", {}).get("virtual") or {}
    virtual = {}
    for name, spec in described.items():
        try:
            v = VirtualPatches(
                images=spec["images"],
                index=spec["index"],
                y0=spec["y0"],
                x0=spec["x0"],
                size=int(spec["size"]),
                scale=int(spec.get("scale", 1)),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise StoreError(f"{path}: the description of virtual array {name!r} is damaged ({e})") from None
        missing = [n for n in (v.images, v.index, v.y0, v.x0) if n not in available]
        if missing:
            raise StoreError(f"{path}: virtual array {name!r} needs array {missing[0]!r}, which the store lacks")
        virtual[name] = v
    return virtual


def split_range(path: Path, split: str) -> tuple[int, int]:
    """Samples ``[start, stop)`` of ``split`` (a picking store holds each split's samples together)."""
    reader = ChunkReader(path / "split")  # raises a StoreError naming the path if there is none
    meta = read_json(path / "split" / "zarr.json") or {}
    attrs = meta.get("attributes", {})
    names = str(attrs.get("flag_meanings", "")).split()
    values = attrs.get("flag_values", [])
    if split not in names:
        raise ValueError(f"split={split!r}: {path} has splits {', '.join(names) or 'none named'}")
    code = values[names.index(split)]
    hits = np.flatnonzero(read_whole(reader) == code)
    if len(hits) == 0:
        raise ValueError(f"split={split!r}: {path} holds no {split} samples (too few micrographs for the ratios?)")
    start, stop = int(hits[0]), int(hits[-1]) + 1
    if stop - start != len(hits):
        raise StoreError(f"{path}: the {split} samples are not stored together; cannot open them as a split")
    return start, stop


def read_whole(reader: ChunkReader) -> np.ndarray:
    """Every chunk of an array read through ``reader``, joined (for small per-sample arrays)."""
    parts = [reader.read_chunk(k) for k in range(reader.n_chunks)]
    return np.concatenate(parts) if parts else np.empty((0, *reader.shape[1:]), reader.dtype)


def list_arrays(path: Path) -> dict[str, ArrayInfo]:
    """The arrays directly inside the group at ``path`` (hidden ``.``-names and text labels skipped), by name."""
    if not path.exists():
        raise StoreError(f"{path}: no such store; check the path")
    group_meta = read_json(path / "zarr.json")
    if group_meta is None or group_meta.get("node_type") != "group" or group_meta.get("zarr_format") != 3:
        raise StoreError(f"{path}: not a Zarr v3 group (no group zarr.json); pass the path of a training store")
    zf = group_meta.get("attributes", {}).get("zarrforge")
    if isinstance(zf, Mapping) and zf.get("complete") is False:
        raise StoreError(
            f"{path}: the store is unfinished (its writer has not called finalize()); finish the run that "
            "writes it before training on it"
        )
    found: dict[str, ArrayInfo] = {}
    for child in sorted(path.iterdir()):
        if child.name.startswith(".") or not child.is_dir():
            continue
        meta = read_json(child / "zarr.json")
        if meta is None or meta.get("node_type") != "array" or meta.get("data_type") == "string":
            continue
        reader = ChunkReader(child)
        dims = tuple(meta.get("dimension_names") or ())
        found[child.name] = ArrayInfo(tuple(reader.shape), reader.dtype, int(reader.chunk_samples), dims)
    return found


def read_json(file: Path) -> dict[str, Any] | None:
    try:
        meta = json.loads(file.read_text())
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return None
    return meta if isinstance(meta, dict) else None
