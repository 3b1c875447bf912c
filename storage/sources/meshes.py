"""Triangle meshes (STL, OBJ, PLY, OFF, GLB, ...) read with trimesh, checked up front, loaded lazily per task."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from storage.errors import SourceError
from storage.sources._paths import PathsLike, file_record, resolve_paths

__all__ = ["MESH_SUFFIXES", "MeshInfo", "check_meshes", "read_mesh"]

log = logging.getLogger(__name__)

#: File suffixes a folder of meshes contributes (trimesh reads them all).
MESH_SUFFIXES = (".stl", ".obj", ".ply", ".off", ".glb", ".gltf")


@dataclass(frozen=True)
class MeshInfo:
    """What :func:`check_meshes` learned of one mesh file without keeping it."""

    path: Path
    n_faces: int
    watertight: bool

    @property
    def record(self) -> dict[str, Any]:
        """Provenance: path, size, mtime, faces, watertight."""
        return {**file_record(self.path), "faces": self.n_faces, "watertight": self.watertight}


def read_mesh(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """Vertices ``(n, 3)`` float64 (x, y, z) and triangles ``(m, 3)`` int64 of a mesh file.

    A scene of several meshes is merged into one. Raises :class:`SourceError` naming the file when it cannot be
    read or holds no triangles.

    Examples
    --------
    >>> import tempfile, trimesh
    >>> path = tempfile.mkdtemp() + "/box.stl"
    >>> _ = trimesh.creation.box().export(path)
    >>> v, f = read_mesh(path)
    >>> f.shape
    (12, 3)
    """
    import trimesh

    path = Path(path)
    try:
        mesh = trimesh.load(path, force="mesh", process=True)
    except Exception as e:  # trimesh raises many types for a broken file
        raise SourceError(f"{path}: cannot be read as a mesh ({type(e).__name__}: {e})") from None
    vertices = np.asarray(getattr(mesh, "vertices", np.zeros((0, 3))), dtype=np.float64)
    faces = np.asarray(getattr(mesh, "faces", np.zeros((0, 3))), dtype=np.int64)
    if not len(faces):
        raise SourceError(f"{path}: the mesh is empty (no triangles); remove it from the inputs")
    if not np.isfinite(vertices).all():
        raise SourceError(f"{path}: the mesh has NaN or infinite vertex coordinates")
    if float(np.ptp(vertices, axis=0).max()) <= 0:
        raise SourceError(f"{path}: the mesh is degenerate (all its vertices coincide)")
    return vertices, faces


def check_meshes(paths: PathsLike) -> list[MeshInfo]:
    """Resolve mesh paths (files, folders, quoted globs) and check each mesh before anything is written.

    Empty, unreadable or degenerate meshes are errors naming the file. A mesh that is not watertight is
    accepted with a warning: it is voxelized by filling what its surface voxels enclose (see
    :func:`graphs.voxels.voxelize_mesh`), so holes wider than a voxel leave it hollow there.

    Returns
    -------
    list of MeshInfo
        In input order (globs and folders sorted).
    """
    import trimesh

    infos = []
    for path in resolve_paths(paths, suffixes=MESH_SUFFIXES):
        vertices, faces = read_mesh(path)
        watertight = bool(trimesh.Trimesh(vertices, faces, process=False).is_watertight)
        if not watertight:
            log.warning(
                "%s: the mesh is not watertight; it is voxelized by filling what its surface voxels enclose, "
                "so it may stay hollow where a hole is wider than a voxel",
                path,
            )
        infos.append(MeshInfo(path, len(faces), watertight))
    return infos
