"""HDF5 helpers shared by the plain-dataset and NeXus readers: opening, following links, naming what is there."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import h5py
import hdf5plugin  # noqa: F401  (registers the HDF5 compression filters before h5py reads)

from storage.errors import SourceError, SourceNotFoundError

__all__ = ["HDF5_SUFFIXES", "dataset_paths", "open_h5", "resolve_node"]

#: Suffixes a directory's HDF5/NeXus files may have.
HDF5_SUFFIXES = (".h5", ".hdf", ".hdf5", ".he5", ".nxs", ".nx5", ".nx")


def open_h5(path: Path) -> h5py.File:
    """Open an HDF5 file read-only, or raise a SourceError naming it."""
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise SourceError(f"{path}: not a readable HDF5 file ({exc})") from None


def dataset_paths(f: h5py.File, limit: int = 5) -> list[str]:
    """Up to ``limit`` dataset paths in ``f`` (external links are listed, not followed)."""
    found: list[str] = []

    def visit(name: str, link: Any) -> bool | None:
        if isinstance(link, h5py.ExternalLink | h5py.SoftLink):
            found.append("/" + name)
        else:
            try:
                if f.get(name, getclass=True) is h5py.Dataset:
                    found.append("/" + name)
            except (KeyError, OSError):  # pragma: no cover - unreadable node
                pass
        return True if len(found) >= limit else None

    f.visititems_links(visit)
    return found


def resolve_node(f: h5py.File, path: str, source: Path) -> h5py.Dataset | h5py.Group:
    """Follow ``path`` link by link; a missing node or external-link target raises SourceNotFoundError.

    The message names the external file a broken link points at, or lists a few datasets that do exist.
    """
    node: h5py.Group | h5py.Dataset = f
    walked = ""
    for part in [p for p in path.split("/") if p]:
        walked += "/" + part
        if not isinstance(node, h5py.Group) or part not in node:
            some = ", ".join(dataset_paths(f)) or "none"
            raise SourceNotFoundError(f"{source}: no dataset {path!r} (datasets: {some}, ...)")
        link = node.get(part, getlink=True)
        try:
            node = node[part]
        except (KeyError, OSError) as exc:
            if isinstance(link, h5py.ExternalLink):
                where = "" if os.path.isabs(link.filename) else f" (looked in {Path(node.file.filename).parent})"
                raise SourceNotFoundError(
                    f"{source}: {walked} is an external link to {link.path!r} in "
                    f"{link.filename!r}, which does not exist{where}; copy the linked file there"
                ) from None
            if isinstance(link, h5py.SoftLink):
                raise SourceNotFoundError(
                    f"{source}: {walked} is a link to {link.path!r}, which does not exist"
                ) from None
            raise SourceError(f"{source}: cannot open {walked} ({exc})") from None
    return node
