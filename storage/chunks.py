"""Whole-chunk reads of a store array along its sample axis, decoded straight into numpy buffers.

Loaders read one chunk (a block of whole samples) at a time. Going through ``zarr.Array.__getitem__`` costs about
2 ms per 4 MiB chunk on top of decoding (its async codec pipeline and selection machinery; zarr-python#3524), which
is more than Blosc-LZ4 needs to decode the chunk. For the layout zarrforge writes — sharded or not, chunked only
on the sample axis, bytes → optional Blosc/zstd → optional CRC32C — :class:`ChunkReader` reads the shard index
and the chunk's byte range itself and decodes with numcodecs; anything else falls back to zarr-python. Both
paths give identical arrays (tested).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import crc32c
import numpy as np
import zarr

from .errors import StoreError
from .shards import ShardLayout, shard_layout

__all__ = ["ChunkReader"]

_MISSING = 2**64 - 1  # offset and length of a chunk a shard does not hold


class ChunkReader:
    """Read chunk ``k`` (samples ``[k*c, (k+1)*c)``) of one array of a store.

    Parameters
    ----------
    path : path
        The array's folder inside the store (``train.zarr/patches``).
    fast : bool
        Use the direct reader when the layout allows it (default); ``False`` always uses zarr-python.

    Examples
    --------
    >>> import tempfile, zarr, numpy as np
    >>> path = tempfile.mkdtemp() + "/a"
    >>> arr = zarr.create_array(path, shape=(5, 2), chunks=(2, 2), shards=(4, 2), dtype="int16")
    >>> arr[:] = np.arange(10).reshape(5, 2)
    >>> reader = ChunkReader(path)
    >>> reader.n_chunks, reader.read_chunk(2).tolist()
    (3, [[8, 9]])
    """

    def __init__(self, path: str | os.PathLike[str], *, fast: bool = True) -> None:
        self.path = Path(path)
        try:
            meta = json.loads((self.path / "zarr.json").read_text())
        except FileNotFoundError:
            raise StoreError(f"{self.path}: no such array") from None
        if meta.get("node_type") != "array":
            raise StoreError(f"{self.path}: not a zarr array")
        self.shape: tuple[int, ...] = tuple(meta["shape"])
        array = zarr.open_array(str(self.path), mode="r")  # once, for the dtype and (fallback) chunks
        self.dtype = np.dtype(array.dtype)
        self.fill_value = meta.get("fill_value", 0)
        self._plan: ShardLayout | None = shard_layout(self.path) if fast else None
        self.chunk_samples = self._plan.chunk_samples if self._plan is not None else int(array.chunks[0])
        #: Rows per chunk along the 2nd dim when the array is cut into row bands (0: chunks are whole there).
        self.rows_per_chunk = 0
        if len(self.shape) >= 2 and int(array.chunks[1]) < self.shape[1]:
            self.rows_per_chunk = int(array.chunks[1])
        self._zarr: Any = None
        self._indexes: dict[int, np.ndarray] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "fast": self._plan is not None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], fast=state["fast"])  # type: ignore[misc]

    @property
    def direct(self) -> bool:
        """Whether chunks are decoded directly (``False``: through zarr-python)."""
        return self._plan is not None

    @property
    def n_chunks(self) -> int:
        """Number of chunks along the sample axis."""
        return -(-self.shape[0] // self.chunk_samples)

    def chunk_bounds(self, k: int) -> tuple[int, int]:
        """Samples ``[start, stop)`` held by chunk ``k``."""
        start = k * self.chunk_samples
        return start, min(start + self.chunk_samples, self.shape[0])

    @property
    def n_row_chunks(self) -> int:
        """Number of row bands (chunks along the 2nd dim); 1 unless :attr:`rows_per_chunk` is set."""
        return -(-self.shape[1] // self.rows_per_chunk) if self.rows_per_chunk else 1

    @property
    def chunk_shape(self) -> tuple[int, ...]:
        """Shape of a whole chunk (those at the end of an axis may hold fewer).

        ``(chunk_samples, *shape[1:])``, or ``(chunk_samples, rows_per_chunk, *shape[2:])`` for row bands.
        """
        if self.rows_per_chunk:
            return (self.chunk_samples, self.rows_per_chunk, *self.shape[2:])
        return (self.chunk_samples, *self.shape[1:])

    def read_chunk(self, k: int, out: np.ndarray | None = None, *, row: int = 0) -> np.ndarray:
        """Decode chunk ``k`` (row band ``row``) into an array of shape ``(stop - start, *shape[1:])``.

        Parameters
        ----------
        k : int
            Chunk index along the sample axis.
        out : numpy.ndarray, optional
            A C-contiguous array of :attr:`chunk_shape` and :attr:`dtype` to decode into (its first
            ``stop - start`` samples are returned, as a view); default: a new array. Reusing buffers saves
            the page faults of fresh memory.
        row : int
            For an array cut into row bands (:attr:`rows_per_chunk`): which band; its rows are
            ``[row * rows_per_chunk, ...)``, fewer in the last band.

        Returns
        -------
        numpy.ndarray
        """
        if not 0 <= k < self.n_chunks:
            raise IndexError(f"chunk {k} out of range for {self.n_chunks} chunks of {self.path}")
        if not 0 <= row < self.n_row_chunks:
            raise IndexError(f"row band {row} out of range for {self.n_row_chunks} bands of {self.path}")
        if out is None:
            out = np.empty(self.chunk_shape, dtype=self.dtype)
        elif out.shape != self.chunk_shape or out.dtype != self.dtype or not out.flags.c_contiguous:
            raise ValueError(
                f"out must be a C-contiguous {self.dtype} array of shape {self.chunk_shape}, "
                f"got {out.dtype} {out.shape}"
            )
        start, stop = self.chunk_bounds(k)
        rows = slice(None)
        if self.rows_per_chunk:
            r0 = row * self.rows_per_chunk
            rows = slice(0, min(self.rows_per_chunk, self.shape[1] - r0))
        if self._plan is None:
            if self._zarr is None:
                self._zarr = zarr.open_array(str(self.path), mode="r")
            if self.rows_per_chunk:
                out[: stop - start, rows] = self._zarr[start:stop, r0 : r0 + rows.stop]
            else:
                out[: stop - start] = self._zarr[start:stop]
        else:
            self._decode_into(k, row, out)
        return out[: stop - start, rows] if self.rows_per_chunk else out[: stop - start]

    # ------------------------------------------------------------ direct path
    def _decode_into(self, k: int, row: int, out: np.ndarray) -> None:
        plan = self._plan
        assert plan is not None
        per_shard = plan.chunks_per_shard
        shard, inner = divmod(k, per_shard) if per_shard else (k, 0)
        inner = inner * plan.row_chunks + row  # the shard's index runs over (item chunk, row band) in C order
        file = self.path / plan.key(shard)
        try:
            fd = os.open(file, os.O_RDONLY)
        except FileNotFoundError:
            out[...] = self.fill_value  # never written: the fill value, as zarr reads it
            return
        decoder, crc = plan.codec, plan.crc
        buf = None
        try:
            if per_shard:
                offset, nbytes = self._shard_index(shard, fd, file)[inner]
                if offset == _MISSING:
                    out[...] = self.fill_value
                    return
                offset, nbytes = int(offset), int(nbytes)
            else:
                offset, nbytes = 0, os.fstat(fd).st_size
            if decoder is None:  # uncompressed: straight into ``out``, the CRC (if any) beside it
                target = out.reshape(-1).view(np.uint8).data  # a writable memoryview of ``out``
                tail = bytearray(4 if crc else 0)
                if nbytes != target.nbytes + len(tail) or os.preadv(fd, [target, tail], offset) != nbytes:
                    raise StoreError(f"{file}: chunk {k} is damaged ({nbytes} bytes stored); re-create the store")
                if crc and crc32c.crc32c(target) != int.from_bytes(tail, "little"):
                    raise StoreError(f"{file}: chunk {k} is damaged (CRC32C mismatch); re-create the store")
            else:
                # One reusable read buffer per reader; popped so that a concurrent read allocates its own.
                buf = self.__dict__.pop("_read_buffer", None)
                if buf is None or len(buf) < nbytes:
                    buf = bytearray(nbytes + nbytes // 8)
                payload = memoryview(buf)[:nbytes]
                if os.preadv(fd, [payload], offset) != nbytes:
                    raise StoreError(f"{file}: chunk {k} is truncated; re-create the store")
        finally:
            os.close(fd)
        if decoder is not None:
            try:
                decoder.decode(_checked(payload, file, k) if crc else payload, out=out)
            finally:
                self._read_buffer = buf
        if plan.big_endian:
            out.byteswap(inplace=True)

    def _shard_index(self, shard: int, fd: int, file: Path) -> np.ndarray:
        index = self._indexes.get(shard)
        if index is None:
            assert self._plan is not None
            per_shard = self._plan.chunks_per_shard
            entries = per_shard * self._plan.row_chunks
            size = entries * 16 + (4 if self._plan.index_crc else 0)
            end = os.fstat(fd).st_size
            raw = memoryview(os.pread(fd, size, end - size))
            if self._plan.index_crc:
                raw = _checked(raw, file, shard)
            index = np.frombuffer(raw, dtype="<u8").reshape(entries, 2)
            self._indexes[shard] = index
        return index


def _checked(payload: memoryview, file: Path, k: int) -> memoryview:
    body, stored = payload[:-4], int.from_bytes(payload[-4:], "little")
    if crc32c.crc32c(body) != stored:
        raise StoreError(f"{file}: chunk {k} is damaged (CRC32C mismatch); re-create the store")
    return body
