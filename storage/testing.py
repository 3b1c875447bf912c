"""Checks users (and our tests) can run on their own stores.

>>> from storage.testing import assert_stores_identical, verify_store  # doctest: +SKIP
>>> verify_store("train.zarr")  # doctest: +SKIP
>>> assert_stores_identical("a.zarr", "b.zarr")  # doctest: +SKIP

``verify_store`` decodes every chunk and checks its CRC32C; ``assert_stores_identical`` compares two stores byte
for byte, apart from run times.
"""

from __future__ import annotations

import filecmp
import json
import os
from pathlib import Path
from typing import Any

from .chunks import ChunkReader
from .errors import StoreError
from .store import TrainingStore

__all__ = ["assert_stores_identical", "finished_block_files", "store_files", "verify_store"]

#: Attributes that record when and how fast a run went, not what it made.
RUN_ONLY_ATTRS = ("created", "finished", "summary")


def _store_paths(path: str | os.PathLike[str]) -> list[str]:
    """Relative paths of every file of a store, except the root metadata and the lock file."""
    root = Path(path)
    rels = (file.relative_to(root).as_posix() for file in sorted(root.rglob("*")) if file.is_file())
    return [rel for rel in rels if rel not in ("zarr.json", ".zarrforge/write.lock")]


def finished_block_files(path: str | os.PathLike[str]) -> int:
    """Blocks a run has marked done, counted from the ledger's files, without opening the store.

    Safe to call while another process writes the store (a test watching a run). A ``.partial`` file is a
    ledger write still under way, or one that a kill interrupted: not a finished block.
    """
    ledger = Path(path) / ".zarrforge" / "ledger" / "c"
    if not ledger.is_dir():
        return 0
    return sum(1 for f in ledger.iterdir() if not f.name.endswith(".partial"))


def store_files(path: str | os.PathLike[str]) -> dict[str, bytes]:
    """Every file of a store by relative path, except the root metadata and the lock file.

    The bytes are read into memory: meant for small stores and tests (see :func:`assert_stores_identical`).
    """
    return {rel: (Path(path) / rel).read_bytes() for rel in _store_paths(path)}


def _root_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    meta: dict[str, Any] = json.loads((Path(path) / "zarr.json").read_text())
    attrs = meta.get("attributes", {}).get("zarrforge", {})
    for key in RUN_ONLY_ATTRS:
        attrs.pop(key, None)
    return meta


def assert_stores_identical(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> None:
    """Raise ``AssertionError`` unless two stores hold the same bytes.

    Every array file and array metadata file must be byte-identical; the root metadata must be equal apart from
    the run times and summary (``created``, ``finished``, ``summary``).
    """
    # File by file, never the whole store in memory: users run this on stores of many GB.
    names_a, names_b = _store_paths(a), _store_paths(b)
    if names_a != names_b:
        only_a = sorted(set(names_a) - set(names_b))[:5]
        only_b = sorted(set(names_b) - set(names_a))[:5]
        raise AssertionError(f"stores hold different files: only in {a}: {only_a}; only in {b}: {only_b}")
    differ = [name for name in names_a if not filecmp.cmp(Path(a) / name, Path(b) / name, shallow=False)]
    if differ:
        raise AssertionError(f"{len(differ)} files differ between {a} and {b}, e.g. {differ[:5]}")
    if _root_meta(a) != _root_meta(b):
        raise AssertionError(f"root metadata of {a} and {b} differ beyond run times")


def verify_store(path: str | os.PathLike[str]) -> int:
    """Decode every chunk of every array (checking CRC32C); return the number of chunks read.

    Raises
    ------
    StoreError
        If the store is unfinished or a chunk is damaged.
    """
    store = TrainingStore.open(path)
    if not store.complete:
        done, total = store.progress()
        raise StoreError(f"{path}: unfinished ({done} of {total} blocks written)")
    n = 0
    for name in store.describe()["arrays"]:
        reader = ChunkReader(Path(path) / name)
        for k in range(reader.n_chunks):
            reader.read_chunk(k)
            n += 1
    return n
