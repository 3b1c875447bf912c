"""Writing whole shards of a training-store array, byte for byte as zarr-python writes them, but faster.

A write block of a training store is exactly one shard of each array (storage/layout.py). zarr-python's
``arr[a:b] = x`` spends about as long in its async codec pipeline as in encoding; for the layout zarrforge
creates — chunked and sharded on the sample axis only, bytes → optional Blosc/zstd → CRC32C, shard index
(bytes + CRC32C) at the end — :class:`ShardWriter` encodes the inner chunks with numcodecs, lays out the shard
and its index, and writes it to a temporary file renamed into place (as zarr's LocalStore does). The bytes are
identical to zarr-python's (``tests/storage/test_shards.py`` compares them for every codec and dtype); any other
layout falls back to zarr-python.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import crc32c
import numcodecs
import numpy as np
import zarr
from zarr.core.indexing import morton_order_iter

__all__ = ["ShardLayout", "ShardWriter", "shard_layout"]

_MISSING = 2**64 - 1


@dataclass(frozen=True)
class ShardLayout:
    """How one array's chunks and shards sit on disk, when zarrforge can read and write them directly."""

    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    fill_value: Any
    chunk_samples: int
    #: Chunks per shard along the leading axis (0: the array is not sharded; each chunk is a file of its own).
    chunks_per_shard: int
    separator: str
    codec: numcodecs.abc.Codec | None
    crc: bool
    index_crc: bool
    big_endian: bool
    #: Rows (2nd dim) per chunk when the array is also chunked along its 2nd dim (row bands); else 0.
    rows_per_chunk: int = 0

    @property
    def row_chunks(self) -> int:
        """Chunks along the 2nd dim (1 unless the array is cut into row bands)."""
        return -(-self.shape[1] // self.rows_per_chunk) if self.rows_per_chunk else 1

    @property
    def shard_samples(self) -> int:
        """Samples per shard (per chunk file when unsharded)."""
        return self.chunk_samples * max(self.chunks_per_shard, 1)

    def key(self, shard: int) -> str:
        """The shard's (or unsharded chunk's) file name relative to the array folder, e.g. ``c/3/0/0``."""
        return self.separator.join(["c", str(shard), *(["0"] * (len(self.shape) - 1))])


def shard_layout(path: str | os.PathLike[str]) -> ShardLayout | None:
    """Parse an array's ``zarr.json``; ``None`` if its layout needs zarr-python."""
    meta = json.loads((Path(path) / "zarr.json").read_text())
    if meta.get("zarr_format") != 3 or meta.get("node_type") != "array":
        return None
    if not isinstance(meta.get("data_type"), str):
        return None
    try:
        dtype = np.dtype(meta["data_type"])
    except TypeError:
        return None
    shape = tuple(meta["shape"])
    grid, enc = meta.get("chunk_grid", {}), meta.get("chunk_key_encoding", {})
    if grid.get("name") != "regular" or enc.get("name") != "default":
        return None
    outer = tuple(grid["configuration"]["chunk_shape"])
    codecs = meta.get("codecs", [])
    if len(codecs) == 1 and codecs[0]["name"] == "sharding_indexed":
        conf = codecs[0]["configuration"]
        inner = tuple(conf["chunk_shape"])
        index = [c["name"] for c in conf.get("index_codecs", [])]
        if conf.get("index_location", "end") != "end" or index not in (["bytes"], ["bytes", "crc32c"]):
            return None
        index_endian = conf["index_codecs"][0].get("configuration", {}).get("endian", "little")
        if index_endian != "little" or outer[2:] != shape[2:] or outer[0] % inner[0]:
            return None
        chain, per_shard, index_crc = conf["codecs"], outer[0] // inner[0], index == ["bytes", "crc32c"]
    else:
        inner, chain, per_shard, index_crc = outer, codecs, 0, False
    rows_per_chunk = 0
    if inner[1:] != shape[1:]:
        # Row bands (a virtual picking store's micrographs): a shard spans every band of its items.
        banded = per_shard and inner[2:] == shape[2:] and outer[1] == -(-shape[1] // inner[1]) * inner[1]
        if not banded:
            return None  # chunked along other axes in a way zarrforge does not write
        rows_per_chunk = inner[1]
    names = [c["name"] for c in chain]
    if not names or names[0] != "bytes":
        return None
    crc = names[-1] == "crc32c"
    middle = chain[1:-1] if crc else chain[1:]
    if len(middle) > 1:
        return None
    codec = _numcodecs_codec(middle[0]) if middle else None
    if middle and codec is None:
        return None
    endian = chain[0].get("configuration", {}).get("endian", "little")
    return ShardLayout(
        shape=shape,
        dtype=dtype,
        fill_value=meta.get("fill_value", 0),
        chunk_samples=inner[0],
        chunks_per_shard=per_shard,
        separator=enc.get("configuration", {}).get("separator", "/"),
        codec=codec,
        crc=crc,
        index_crc=index_crc,
        big_endian=endian == "big" and dtype.itemsize > 1,
        rows_per_chunk=rows_per_chunk,
    )


def _numcodecs_codec(spec: dict[str, Any]) -> numcodecs.abc.Codec | None:
    """The numcodecs twin of a zarr v3 ``blosc`` or ``zstd`` codec (same parameters, same bytes)."""
    conf = spec.get("configuration", {})
    if spec["name"] == "blosc":
        shuffle = {"noshuffle": numcodecs.Blosc.NOSHUFFLE, "shuffle": numcodecs.Blosc.SHUFFLE}.get(
            conf.get("shuffle", "noshuffle"), numcodecs.Blosc.BITSHUFFLE
        )
        return numcodecs.Blosc(
            cname=conf.get("cname", "zstd"),
            clevel=conf.get("clevel", 5),
            shuffle=shuffle,
            blocksize=conf.get("blocksize", 0),
            typesize=conf.get("typesize"),
        )
    if spec["name"] == "zstd":
        return numcodecs.Zstd(level=conf.get("level", 0), checksum=conf.get("checksum", False))
    return None


class ShardWriter:
    """Write shard ``k`` of an array (its samples ``[k*s, (k+1)*s)``) in one atomic file write.

    Parameters
    ----------
    path : path
        The array's folder inside the store (``train.zarr/patches``).

    Examples
    --------
    >>> import tempfile, zarr, numpy as np
    >>> path = tempfile.mkdtemp() + "/a"
    >>> arr = zarr.create_array(path, shape=(5, 2), chunks=(2, 2), shards=(4, 2), dtype="int16")
    >>> writer = ShardWriter(path)
    >>> writer.write_shard(1, np.array([[8, 9]], dtype="int16"))
    >>> zarr.open_array(path)[4:].tolist()
    [[8, 9]]
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.layout = shard_layout(self.path)
        self._zarr: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"])  # type: ignore[misc]

    @property
    def direct(self) -> bool:
        """Whether shards are encoded here (``False``: through zarr-python)."""
        return self.layout is not None

    @property
    def shard_samples(self) -> int:
        """Samples per shard."""
        if self.layout is not None:
            return self.layout.shard_samples
        arr = self._array()
        return int((arr.shards or arr.chunks)[0])

    def _array(self) -> Any:
        if self._zarr is None:
            self._zarr = zarr.open_array(str(self.path), mode="r+")
        return self._zarr

    def write_shard(self, k: int, data: np.ndarray) -> None:
        """Write all samples of shard ``k``; ``data`` must hold exactly them."""
        start = k * self.shard_samples
        stop = start + len(data)
        n = self.layout.shape[0] if self.layout is not None else self._array().shape[0]
        if not (0 <= start < n and stop == min(start + self.shard_samples, n)):
            raise ValueError(
                f"{self.path}: shard {k} holds samples {start}-{min(start + self.shard_samples, n)}, "
                f"got {len(data)} samples"
            )
        if self.layout is None:
            self._array()[start:stop] = data
            return
        payload = self._encode(data)
        target = self.file(k)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f"{target.name}.{uuid.uuid4().hex}.partial")
        try:
            with open(tmp, "wb") as f:
                f.writelines(payload)
            os.replace(tmp, target)
        except BaseException:
            # A full disk fails mid-write: drop the torn temporary file at once (as zarr does), so the space
            # it holds is free for a retry and no stray file waits for the next resume to remove it.
            tmp.unlink(missing_ok=True)
            raise

    def file(self, k: int) -> Path:
        """The file that holds shard ``k`` (the array's folder when zarr-python lays out the files)."""
        if self.layout is None:
            return self.path
        return self.path / self.layout.key(k)

    def _encode(self, data: np.ndarray) -> list[bytes | memoryview]:
        layout = self.layout
        assert layout is not None
        data = np.ascontiguousarray(data, dtype=layout.dtype.newbyteorder(">" if layout.big_endian else "<"))
        c, rows = layout.chunk_samples, layout.rows_per_chunk
        n_chunks = -(-len(data) // c)
        parts: list[bytes | memoryview] = []
        index = np.full((max(layout.chunks_per_shard, 1) * layout.row_chunks, 2), _MISSING, dtype="<u8")
        offset = 0
        for i, j in _payload_order(layout, n_chunks):
            chunk = data[i * c : (i + 1) * c, j * rows : (j + 1) * rows] if rows else data[i * c : (i + 1) * c]
            full = (c, rows, *data.shape[2:]) if rows else (c, *data.shape[1:])
            if chunk.shape != full:  # at the array's edge: stored full size, padded with the fill value
                padded = np.full(full, layout.fill_value, dtype=data.dtype)
                padded[tuple(slice(0, n) for n in chunk.shape)] = chunk
                chunk = padded
            encoded = memoryview(layout.codec.encode(chunk) if layout.codec is not None else chunk.tobytes())
            parts.append(encoded)
            size = encoded.nbytes
            if layout.crc:
                parts.append(crc32c.crc32c(encoded).to_bytes(4, "little"))
                size += 4
            index[i * layout.row_chunks + j] = offset, size  # the index itself is in C order
            offset += size
        if not layout.chunks_per_shard:
            return parts
        index_bytes = index.tobytes()
        parts.append(index_bytes)
        if layout.index_crc:
            parts.append(crc32c.crc32c(index_bytes).to_bytes(4, "little"))
        return parts


def _payload_order(layout: ShardLayout, n_chunks: int) -> list[tuple[int, int]]:
    """The ``(item chunk, row band)`` chunks of a shard in the order zarr-python lays them out.

    That is the Morton order of the shard's chunk grid (C order when only the leading axis is chunked), skipping
    chunks past the array's end.
    """
    if layout.row_chunks == 1:
        return [(i, 0) for i in range(n_chunks)]
    grid = (layout.chunks_per_shard, layout.row_chunks, *([1] * (len(layout.shape) - 2)))
    return [(coords[0], coords[1]) for coords in morton_order_iter(grid) if coords[0] < n_chunks]
