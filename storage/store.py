"""Training stores: one Zarr v3 group whose arrays share a leading ``sample`` axis, written block by block.

A store may have further leading axes (a picking store in ``virtual`` mode keeps its normalized ``micrographs``
beside the per-sample arrays); each axis has its own grid, and its blocks are written like the samples'.

Layout of ``train.zarr`` (see the README for the public part)::

    zarr.json              group; attrs["zarrforge"] = provenance, fingerprint, progress
    patches/ ...           arrays, chunked and sharded on the sample axis only, dimension_names set
    source_index/ ...
    .zarrforge/zarr.json   a hidden group that xarray ignores, holding
    .zarrforge/ledger/     uint8 array (block,), one chunk file per block: 1 once the block is fully written
    .zarrforge/write.lock  held by the one process writing the store

A block is one shard of every array, so each write task owns whole shards. A block is marked in the ledger only
after all of its shards are written (each shard goes to a temporary file renamed into place), so a block is
either done or redone, never half-counted. The fingerprint that lets a re-run resume is written only once every
array exists, and the store counts as complete only once its metadata is consolidated: a run stopped at any
point (a kill, a full disk) leaves a store the same command resumes.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import zarr
from filelock import FileLock, Timeout

from .codecs import DEFAULT_CODEC, compressors
from .dims import SAMPLE
from .errors import StoreError, StoreExistsError, StoreLockedError, StoreMismatchError
from .layout import Block, SampleGrid, plan_axis_blocks
from .provenance import diff_keys, fingerprint, json_clean, package_versions, utc_now
from .shards import ShardWriter

__all__ = ["FORMAT_VERSION", "ArraySpec", "TrainingStore", "is_training_store"]

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
_META = ".zarrforge"
_LEDGER = "ledger"
_LOCK = "write.lock"


@dataclass(frozen=True)
class ArraySpec:
    """One array of a training store: its name, dims, full shape, dtype and CF attrs.

    The first dim is the array's leading axis (``sample`` for the arrays a Dataset indexes), chunked and
    sharded by the store's grid for that axis. ``rows_per_chunk`` optionally splits the second dim into chunks
    of that many rows (e.g. row bands of a micrograph); the other dims are never split.
    """

    name: str
    dims: tuple[str, ...]
    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    attrs: Mapping[str, Any] = field(default_factory=dict)
    rows_per_chunk: int | None = None

    def __post_init__(self) -> None:
        if len(self.dims) != len(self.shape):
            raise ValueError(f"array {self.name!r}: dims {self.dims} do not match shape {self.shape}")
        if not self.dims:
            raise ValueError(f"array {self.name!r}: needs at least one dim (the leading axis)")
        if self.rows_per_chunk is not None and (len(self.shape) < 2 or self.rows_per_chunk < 1):
            raise ValueError(f"array {self.name!r}: rows_per_chunk needs a 2nd dim and must be >= 1")

    @property
    def axis(self) -> str:
        """The leading axis."""
        return self.dims[0]

    def inner_chunks(self, chunk_length: int) -> tuple[int, ...]:
        """Chunk shape for ``chunk_length`` items of the leading axis."""
        rest = list(self.shape[1:])
        if self.rows_per_chunk is not None:
            rest[0] = min(self.rows_per_chunk, max(rest[0], 1))
        return (chunk_length, *rest)

    def shard_shape(self, shard_length: int) -> tuple[int, ...]:
        """Shard shape for ``shard_length`` items of the leading axis.

        Whole along the other dims, rounded up to whole row chunks (Zarr requires it).
        """
        rest = list(self.shape[1:])
        if self.rows_per_chunk is not None:
            rows = self.inner_chunks(1)[1]
            rest[0] = -(-rest[0] // rows) * rows
        return (shard_length, *rest)

    def describe(self) -> dict[str, Any]:
        """A JSON-clean description, part of the store's fingerprint."""
        described: dict[str, Any] = {
            "dims": list(self.dims),
            "shape": list(self.shape),
            "dtype": np.dtype(self.dtype).str,
        }
        if self.rows_per_chunk is not None:
            described["rows_per_chunk"] = self.rows_per_chunk
        return described


def is_training_store(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` holds a zarrforge training store (finished or not)."""
    return (Path(path) / _META).is_dir()


def _dir_is_empty(path: Path) -> bool:
    return not any(path.iterdir())


class TrainingStore:
    """A zarrforge training store on local disk.

    Instances pickle as their path alone, so a store can be handed to Dask workers, which open arrays lazily.
    Use :meth:`open_for_writing` to create or resume a store (it takes the writer lock) and :meth:`open` to
    read one.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> from storage.layout import SampleGrid
    >>> spec = ArraySpec("x", ("sample", "v"), (5, 3), np.dtype("float32"))
    >>> path = tempfile.mkdtemp() + "/demo.zarr"
    >>> with TrainingStore.open_for_writing(path, [spec], grid=SampleGrid(2, 4),
    ...                                    record={"pipeline": "doc"}) as store:
    ...     for block in store.blocks():
    ...         _ = store.write_block(block, {"x": np.ones((block.size, 3), "float32")})
    ...     store.finalize()
    >>> TrainingStore.open(path).progress()
    (2, 2)
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._arrays: dict[str, Any] = {}
        self._writers: dict[str, ShardWriter] = {}
        self._ledger: Any = None
        self._lock: FileLock | None = None
        self._names: dict[str, set[str]] | None = None

    # Pickle as the path alone: no zarr handles or locks travel to workers.
    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"])  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"TrainingStore({str(self.path)!r})"

    # ---------------------------------------------------------------- opening
    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> TrainingStore:
        """Open an existing store for reading; raise :class:`StoreError` if ``path`` is not one."""
        path = Path(path)
        if not path.exists():
            raise StoreError(f"{path}: no such store")
        if not is_training_store(path):
            raise StoreError(f"{path}: not a zarrforge training store (no {_META} folder)")
        return cls(path)

    @classmethod
    def open_for_writing(
        cls,
        path: str | os.PathLike[str],
        arrays: Sequence[ArraySpec],
        *,
        grid: SampleGrid | Mapping[str, SampleGrid],
        record: Mapping[str, Any],
        codec: str = DEFAULT_CODEC,
        level: int | None = None,
        attrs: Mapping[str, Any] | None = None,
        overwrite: bool = False,
        labels: Mapping[str, tuple[str, Sequence[str]]] | None = None,
    ) -> TrainingStore:
        """Create a store, or reopen an unfinished one made with the same parameters, and lock it.

        Parameters
        ----------
        path : path
            The store (a directory). It may not exist yet, or be an empty directory.
        arrays : sequence of ArraySpec
            The arrays; those with the same leading axis agree on its length.
        grid : SampleGrid or mapping of str to SampleGrid
            Items per chunk and per shard (one shard = one write block) of the ``sample`` axis, or of each
            leading axis by name.
        record : mapping
            What makes the content: ``pipeline``, ``parameters``, ``seed``, ``sources``. Stored in the group
            attrs and hashed, with the layout, into the fingerprint that decides whether a re-run may resume.
        codec, level : str, int
            Compression (see :func:`storage.codecs.compressors`).
        attrs : mapping, optional
            Further group attributes (``title``, ...).
        overwrite : bool
            Replace a zarrforge store made with other parameters instead of refusing.
        labels : mapping of str to (axis, strings), optional
            Text coordinates of a leading axis (e.g. file names): each one a variable-length UTF-8 array written
            whole when the store is created, named in the ``coordinates`` attribute of that axis' arrays so
            xarray shows it as a coordinate. Hashed into the fingerprint with the rest.

        Returns
        -------
        TrainingStore
            Holding the writer lock until :meth:`close` (or the end of a ``with`` block).

        Raises
        ------
        StoreExistsError
            ``path`` exists and is not a zarrforge store (nothing is touched).
        StoreMismatchError
            ``path`` is a store made with other parameters and ``overwrite`` is false.
        StoreLockedError
            Another process is writing the store.
        """
        path = Path(path)
        lengths = _axis_lengths(arrays)
        grids = _axis_grids(grid, lengths)
        labels = {name: (axis, [str(v) for v in values]) for name, (axis, values) in (labels or {}).items()}
        for name, (axis, values) in labels.items():
            if lengths.get(axis) != len(values) or name in {a.name for a in arrays}:
                raise ValueError(f"label {name!r}: {len(values)} strings for axis {axis!r} of {lengths.get(axis)}")
        arrays = [
            _naming_labels(spec, [n for n, (axis, _) in labels.items() if axis == spec.axis]) for spec in arrays
        ]
        content = {
            **json_clean(dict(record)),
            "arrays": {a.name: a.describe() for a in arrays},
            **(
                {"labels": {name: {"axis": axis, "values": values} for name, (axis, values) in labels.items()}}
                if labels
                else {}
            ),
            **_grid_content(grids, lengths),
            "codec": {"name": codec, "level": level},
        }
        fp = fingerprint(content)

        if path.exists() and not path.is_dir():
            raise StoreExistsError(f"{path}: exists and is a file, not a store; choose another output")
        if path.is_dir() and not is_training_store(path) and not _dir_is_empty(path):
            raise StoreExistsError(
                f"{path}: exists and is not a zarrforge store; choose another output or remove it"
            )
        (path / _META).mkdir(parents=True, exist_ok=True)
        store = cls(path)
        store._acquire_lock()
        try:
            existing = store._read_attrs()
            if existing is not None and existing.get("fingerprint") == fp:
                log.info("resuming %s (%d of %d blocks done)", path, *store.progress())
                store._remove_partial_files()
                return store
            # No fingerprint: our own creation stopped half-way (a full disk); nothing was written, start again.
            if existing is not None and existing.get("fingerprint") is not None and not overwrite:
                # Name what the user changed (parameters, seed, sources) before the layout it implies.
                changes = sorted(
                    diff_keys(existing.get("content", {}), content) or ["layout"],
                    key=lambda change: change.startswith(("arrays", "grid", "codec")),
                )
                raise StoreMismatchError(
                    f"{path} was made with other parameters ({'; '.join(changes[:3])}); "
                    "pass --overwrite to replace it"
                )
            try:
                store._clear()
                store._create(arrays, grids, lengths, codec, level, content, fp, attrs or {})
            except OSError as e:
                raise StoreError(f"{path}: creating the store failed: {_reason(e)}") from e
            return store
        except BaseException:
            store.close()
            raise

    def _acquire_lock(self) -> None:
        lock = FileLock(self.path / _META / _LOCK, timeout=0)
        try:
            lock.acquire()
        except Timeout:
            raise StoreLockedError(
                f"{self.path} is being written by another process (lock {self.path / _META / _LOCK}); "
                "wait for it to finish"
            ) from None
        self._lock = lock

    @contextmanager
    def locked(self) -> Iterator[TrainingStore]:
        """Hold the writer lock for a change in place of a finished store (e.g. reassigning its splits).

        Raises
        ------
        StoreLockedError
            Another process is writing the store.
        """
        self._acquire_lock()
        try:
            yield self
        finally:
            self.close()

    def close(self) -> None:
        """Release the writer lock (if held)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> TrainingStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- creation
    def _clear(self) -> None:
        """Remove everything but our lock file (we hold it)."""
        for child in self.path.iterdir():
            if child.name == _META:
                for meta_child in child.iterdir():
                    if meta_child.name != _LOCK:
                        _remove(meta_child)
            else:
                _remove(child)

    def _create(
        self,
        arrays: Sequence[ArraySpec],
        grids: Mapping[str, SampleGrid],
        lengths: Mapping[str, int],
        codec: str,
        level: int | None,
        content: dict[str, Any],
        fp: str,
        attrs: Mapping[str, Any],
    ) -> None:
        n_samples = lengths.get(SAMPLE, 0)
        n_blocks = len(_plan(content))
        meta: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            **{k: v for k, v in content.items() if k not in ("arrays", "grid", "axes", "codec", "labels")},
            "versions": package_versions(),
            "created": utc_now(),
            "fingerprint": fp,
            "n_samples": n_samples,
            "n_blocks": n_blocks,
            "complete": False,
            "content": content,
        }
        # The fingerprint goes in last, once every array exists (see open_for_writing).
        group_attrs = {
            **json_clean(dict(attrs)),
            "zarrforge": {k: v for k, v in meta.items() if k != "fingerprint"},
        }
        group = zarr.create_group(store=str(self.path), attributes=group_attrs)
        for spec in arrays:
            axis_grid = grids[spec.axis]
            group.create_array(
                spec.name,
                shape=spec.shape,
                dtype=spec.dtype,
                chunks=spec.inner_chunks(axis_grid.chunk_samples),
                shards=spec.shard_shape(axis_grid.shard_samples),
                compressors=compressors(codec, level),
                fill_value=0,
                dimension_names=spec.dims,
                attributes=json_clean(dict(spec.attrs)),
                config={"write_empty_chunks": True},
            )
        for name, described in content.get("labels", {}).items():
            values = np.asarray(described["values"], dtype=object)
            label = group.create_array(
                name,
                shape=values.shape,
                dtype=str,
                chunks=(max(len(values), 1),),
                compressors=compressors(codec, level),
                dimension_names=(described["axis"],),
                attributes={"long_name": name.replace("_", " ")},
            )
            label[:] = values
        hidden = group.create_group(_META, attributes={"description": "zarrforge run bookkeeping"})
        hidden.create_array(
            _LEDGER,
            shape=(max(n_blocks, 1),),
            chunks=(1,),
            dtype="uint8",
            fill_value=0,
            compressors=None,
            dimension_names=("block",),
            attributes={"long_name": "1 once the block's shards are fully written"},
        )
        group.attrs["zarrforge"] = meta

    # ---------------------------------------------------------------- state
    def _read_attrs(self) -> dict[str, Any] | None:
        if not (self.path / "zarr.json").exists():
            return None
        try:
            meta = zarr.open_group(str(self.path), mode="r").attrs.get("zarrforge")
        except Exception:  # a torn root zarr.json: treat as not created
            return None
        return dict(meta) if isinstance(meta, Mapping) else None

    @property
    def attrs(self) -> dict[str, Any]:
        """The store's ``zarrforge`` provenance attributes."""
        meta = self._read_attrs()
        if meta is None:
            raise StoreError(f"{self.path}: the store was never fully created; re-run with --overwrite")
        return meta

    def blocks(self) -> list[Block]:
        """All write blocks of the store, in order."""
        return _plan(self.attrs["content"])

    def done_blocks(self) -> set[int]:
        """Indices of the blocks whose shards are fully written."""
        ledger = self._ledger_array()
        return {int(i) for i in np.flatnonzero(ledger[:])}

    def progress(self) -> tuple[int, int]:
        """``(done, total)`` blocks."""
        return len(self.done_blocks()), self.attrs["n_blocks"]

    @property
    def complete(self) -> bool:
        """Whether a run finished and consolidated the store."""
        if not self.attrs.get("complete"):
            return False
        # finalize marks the store complete, then consolidates; if the disk filled in between, a re-run must
        # consolidate again rather than find "nothing to do".
        root = json.loads((self.path / "zarr.json").read_text())
        return root.get("consolidated_metadata") is not None

    def _ledger_array(self) -> Any:
        if self._ledger is None:
            self._ledger = zarr.open_array(str(self.path / _META / _LEDGER), mode="r+")
        return self._ledger

    def array(self, name: str) -> Any:
        """The zarr array ``name`` (opened once per process)."""
        if name not in self._arrays:
            self._arrays[name] = zarr.open_array(str(self.path / name), mode="r+")
        return self._arrays[name]

    # ---------------------------------------------------------------- writing
    def write_block(self, block: Block, data: Mapping[str, np.ndarray]) -> int:
        """Write one block of every array, then mark it done in the ledger.

        Parameters
        ----------
        block : Block
            Which samples (one shard of every array).
        data : mapping of str to numpy.ndarray
            One array per store array, each of ``block.size`` samples.

        Returns
        -------
        int
            Decoded bytes written.
        """
        if self._names is None:
            self._names = {}
            for name, described in self.attrs["content"]["arrays"].items():
                self._names.setdefault(described["dims"][0], set()).add(name)
        expected_names = self._names.get(block.axis, set())
        if set(data) != expected_names:
            # The block is marked done below: it must hold every array, or the missing ones stay fill values.
            raise StoreError(
                f"{self.path}: block {block.index} has arrays {sorted(data)}, expected {sorted(expected_names)}"
            )
        nbytes = 0
        for name, values in data.items():
            target = self.array(name)
            expected = (block.size, *target.shape[1:])
            if values.shape != expected:
                raise StoreError(
                    f"{self.path}: block {block.index} of {name!r} has shape {values.shape}, expected {expected}"
                )
            self._write_shard(name, block, values)
            nbytes += values.nbytes
        # Only now is the block done: a crash (or a full disk) before this line leaves it unmarked, and it is
        # simply redone.
        self._write_shard(f"{_META}/{_LEDGER}", block, np.ones(1, dtype=np.uint8))
        return nbytes

    def _write_shard(self, name: str, block: Block, values: np.ndarray) -> None:
        """Write one shard; an ``OSError`` becomes a :class:`StoreError` naming the file and the fix."""
        writer = self._writer(name)
        shard = block.index if name.startswith(_META) else block.shard  # the ledger counts every block
        try:
            writer.write_shard(shard, values)
        except OSError as e:
            raise StoreError(f"{writer.file(shard)}: writing block {block.index} failed: {_reason(e)}") from e

    def _writer(self, name: str) -> ShardWriter:
        """The shard writer of array ``name`` (made once per process)."""
        if name not in self._writers:
            self._writers[name] = ShardWriter(self.path / name)
        return self._writers[name]

    def finalize(self, summary: Mapping[str, Any] | None = None) -> None:
        """Mark the run complete, record its summary and consolidate the metadata once."""
        done, total = self.progress()
        if done != total:
            raise StoreError(f"{self.path}: cannot finalize, only {done} of {total} blocks are written")
        try:
            group = zarr.open_group(str(self.path), mode="r+")
            meta: dict[str, Any] = dict(cast(Mapping[str, Any], group.attrs["zarrforge"]))
            meta.update(complete=True, finished=utc_now(), summary=json_clean(dict(summary or {})))
            group.attrs["zarrforge"] = meta
            self._remove_partial_files()
            with warnings.catch_warnings():
                # Consolidated metadata is outside the v3 spec (zarr warns), and our lock file is not a zarr node.
                warnings.simplefilter("ignore")
                zarr.consolidate_metadata(str(self.path))
        except OSError as e:
            raise StoreError(f"{self.path}: finishing the store failed: {_reason(e)}") from e
        log.debug("consolidated %s", self.path)

    def _remove_partial_files(self) -> None:
        """Delete temporary files left by a writer that was killed mid-write (zarr writes ``*.partial``)."""
        for partial in self.path.rglob("*.partial"):
            partial.unlink(missing_ok=True)

    # ---------------------------------------------------------------- reporting
    def nbytes_on_disk(self) -> int:
        """Bytes of all files of the store."""
        return sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())

    def describe(self) -> dict[str, Any]:
        """Arrays (shape, dtype, dims, chunks, shards, codecs), size on disk, progress and provenance."""
        arrays = {}
        group = zarr.open_group(str(self.path), mode="r", use_consolidated=False)
        for name, arr in sorted(group.arrays()):
            meta = arr.metadata
            codecs = [type(c).__name__ for c in getattr(arr, "compressors", ())]
            arrays[name] = {
                "shape": list(arr.shape),
                "dtype": str(arr.dtype),
                "dims": list(getattr(meta, "dimension_names", None) or ()),
                "chunks": list(arr.chunks),
                "shards": list(arr.shards) if arr.shards else None,
                "codecs": codecs,
                "nbytes": int(arr.nbytes),
            }
        done, total = self.progress()
        return {
            "path": str(self.path),
            "arrays": arrays,
            "nbytes_on_disk": self.nbytes_on_disk(),
            "blocks_done": done,
            "blocks_total": total,
            "zarrforge": {k: v for k, v in self.attrs.items() if k != "content"},
        }


def _axis_lengths(arrays: Sequence[ArraySpec]) -> dict[str, int]:
    """The length of each leading axis, ``sample`` first, the others in the order of the arrays."""
    if not arrays:
        raise ValueError("a training store needs at least one array")
    lengths: dict[str, set[int]] = {}
    for a in sorted(arrays, key=lambda a: a.axis != SAMPLE):
        lengths.setdefault(a.axis, set()).add(a.shape[0])
    for axis, sizes in lengths.items():
        if len(sizes) != 1:
            what = "samples" if axis == SAMPLE else f"{axis!r} items"
            raise ValueError(f"arrays disagree on the number of {what}: {sorted(sizes)}")
    return {axis: sizes.pop() for axis, sizes in lengths.items()}


def _naming_labels(spec: ArraySpec, labels: Sequence[str]) -> ArraySpec:
    """``spec`` with ``labels`` added to its ``coordinates`` attribute (CF: names of its coordinate variables)."""
    if not labels:
        return spec
    named = str(spec.attrs.get("coordinates", "")).split()
    attrs = {**spec.attrs, "coordinates": " ".join([*named, *(n for n in labels if n not in named)])}
    return replace(spec, attrs=attrs)


def _axis_grids(grid: SampleGrid | Mapping[str, SampleGrid], lengths: Mapping[str, int]) -> dict[str, SampleGrid]:
    grids = {SAMPLE: grid} if isinstance(grid, SampleGrid) else dict(grid)
    missing = [axis for axis in lengths if axis not in grids]
    if missing:
        axis = missing[0]
        raise ValueError(f"no grid for the leading axis {axis!r}; pass grid={{{axis!r}: SampleGrid(...)}}")
    return {axis: grids[axis] for axis in lengths}


def _grid_content(grids: Mapping[str, SampleGrid], lengths: Mapping[str, int]) -> dict[str, Any]:
    """The grids as the fingerprinted content holds them.

    ``grid`` for the samples (as a store with one axis always had it), ``axes`` for the other leading axes.
    """
    content: dict[str, Any] = {}
    if SAMPLE in grids:
        sample = grids[SAMPLE]
        content["grid"] = {"chunk_samples": sample.chunk_samples, "shard_samples": sample.shard_samples}
    others = {
        axis: {"length": lengths[axis], "chunk": g.chunk_samples, "shard": g.shard_samples}
        for axis, g in grids.items()
        if axis != SAMPLE
    }
    if others:
        content["axes"] = others
    return content


def _plan(content: Mapping[str, Any]) -> list[Block]:
    """Every write block of a store, from its fingerprinted content: the samples', then each other axis'."""
    axes: dict[str, tuple[int, int]] = {}
    if "grid" in content:
        n_samples = next(iter(a["shape"][0] for a in content["arrays"].values() if a["dims"][0] == SAMPLE), 0)
        axes[SAMPLE] = (n_samples, content["grid"]["shard_samples"])
    for axis, g in content.get("axes", {}).items():
        axes[axis] = (g["length"], g["shard"])
    return plan_axis_blocks(axes)


def _reason(error: OSError) -> str:
    """What went wrong and what to do, for an ``OSError`` met while writing a store."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        what = "no space left on device" if error.errno == errno.ENOSPC else "disk quota exceeded"
        return f"{what}; free space (or write elsewhere), then re-run the same command to resume"
    return str(error.strerror or error)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()
