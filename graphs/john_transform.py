# This Source Code Form is subject to the terms of the Mozilla Public License, v. 2.0. If a copy of the MPL was
# not distributed with this file, You can obtain one at https://mozilla.org/MPL/2.0/.
#
# Ported from mumott 2.3, mumott/core/john_transform.py (Copyright the mumott developers, MPL-2.0,
# https://gitlab.com/liebi-group/software/mumott), following the idea of GenericSAXSProjector in
# ../shared/research/mumott.md. Changes: the per-projection geometry is passed to the kernels at run time instead
# of being baked into closures as compile-time constants, so the kernels compile once per process (and cache on
# disk) instead of once per projection subset; the axis permutation of the forward interpolation is a branch
# instead of a numba dict built in the innermost loop. The arithmetic is otherwise unchanged.
"""mumott's CPU John transform (SAXS projector) with kernels that compile once, whatever the geometry.

mumott's ``SAXSProjector`` compiles new numba kernels for every new set of projections (5-7 s each, and two cache
files that are never hit again); a training set draws a new random subset of projections for every sample.
:func:`john_transform` and :func:`john_transform_adjoint` take the geometry as arrays, and
:func:`projector_class` gives a ``SAXSProjector`` subclass that uses them (a drop-in for mumott's residual
calculators). :func:`compiled_kernels` counts the compilations of this process.
"""

from __future__ import annotations

import functools
from math import floor
from typing import Any

import numba  # type: ignore[import-untyped]
import numpy as np

__all__ = ["compiled_kernels", "john_transform", "john_transform_adjoint", "projector_class"]


@numba.njit(fastmath=True, nogil=True, cache=True)  # the flags mumott compiles with
def _interpolate_volume(
    field: Any, direction_0: int, r0: float, r1: float, r2: float, dim0: int, dim1: int, dim2: int, acc: Any
) -> None:  # pragma: no cover (compiled)
    """Add the bilinear interpolation of ``field`` at ray position ``(r0, r1, r2)`` to ``acc``."""
    if not ((0 <= r0 < dim0) and (-1 <= r1 < dim1) and (-1 <= r2 < dim2)):
        return
    max_x, max_y, max_z = field.shape[0], field.shape[1], field.shape[2]
    # Positions are (main direction, direction 1, direction 2); x, y, z are picked from them as mumott does.
    if direction_0 == 0:
        px, py, pz = r0, r1, r2
    elif direction_0 == 1:
        px, py, pz = r1, r0, r2
    else:
        px, py, pz = r1, r2, r0
    weight_1 = r1 - floor(r1)
    weight_2 = r2 - floor(r2)
    t0 = (1 - weight_1) * (1 - weight_2) * (r1 >= 0) * (r2 >= 0)
    t1 = ((1 - weight_2) * weight_1) * (r1 < (dim1 - 1)) * (r2 >= 0)
    t2 = ((1 - weight_1) * weight_2) * (r2 < (dim2 - 1)) * (r1 >= 0)
    t3 = (weight_1 * weight_2) * (r1 < (dim1 - 1)) * (r2 < (dim2 - 1))
    x0 = np.int32(max(floor(px), 0))
    x1 = x0 + np.int32((direction_0 != 0) * (x0 < (max_x - 1)))
    y0 = np.int32(max(floor(py), 0))
    y1 = y0 + np.int32((direction_0 == 0) * (y0 < (max_y - 1)))
    y2 = y0 + np.int32((direction_0 == 2) * (y0 < (max_y - 1)))
    y3 = y0 + np.int32((direction_0 != 1) * (y0 < (max_y - 1)))
    z0 = np.int32(max(floor(pz), 0))
    z1 = z0 + np.int32((direction_0 != 2) * (z0 < (max_z - 1)))
    for i in range(acc.size):
        acc[i] += (
            field[x0, y0, z0, i] * t0
            + field[x1, y1, z0, i] * t1
            + field[x0, y2, z1, i] * t2
            + field[x1, y3, z1, i] * t3
        )


@numba.njit(fastmath=True, nogil=True, cache=True, parallel=True)
def _forward_kernel(
    field: Any,
    projections: Any,
    step_sizes_1: Any,
    step_sizes_2: Any,
    j_vectors: Any,
    k_vectors: Any,
    s_vectors: Any,
    dimensions: Any,
    direction_indices: Any,
    distance_multipliers: Any,
) -> None:  # pragma: no cover (compiled)
    channels = field.shape[3]
    for index in range(projections.shape[0]):
        step_size_1 = step_sizes_1[index]
        step_size_2 = step_sizes_2[index]
        d0, d1, d2 = direction_indices[index, 0], direction_indices[index, 1], direction_indices[index, 2]
        dim0, dim1, dim2 = dimensions[index, 0], dimensions[index, 1], dimensions[index, 2]
        for j in numba.prange(projections.shape[1]):
            acc = np.empty(channels, field.dtype)
            fj = j + 0.5
            for k in range(projections.shape[2]):
                for i in range(channels):
                    acc[i] = 0.0
                fk = k + 0.5
                start_0 = s_vectors[index, d0] + fj * j_vectors[index, d0] + fk * k_vectors[index, d0]
                start_1 = s_vectors[index, d1] + fj * j_vectors[index, d1] + fk * k_vectors[index, d1]
                start_2 = s_vectors[index, d2] + fj * j_vectors[index, d2] + fk * k_vectors[index, d2]
                centering_1 = start_1 - step_size_1 * start_0
                centering_2 = start_2 - step_size_2 * start_0
                position_0 = 0.5
                position_1 = step_size_1 * (-0.5 * dim0 + 0.5) + centering_1 + 0.5 * dim1 - 0.5
                position_2 = step_size_2 * (-0.5 * dim0 + 0.5) + centering_2 + 0.5 * dim2 - 0.5
                for _ in range(dim0):
                    _interpolate_volume(field, d0, position_0, position_1, position_2, dim0, dim1, dim2, acc)
                    position_0 += 1.0
                    position_1 += step_size_1
                    position_2 += step_size_2
                for i in range(channels):
                    projections[index, j, k, i] = acc[i] * distance_multipliers[index]


@numba.njit(fastmath=True, nogil=True, cache=True)
def _interpolate_projection(
    projections: Any, index: int, fj: float, fk: float, acc: Any
) -> None:  # pragma: no cover (compiled)
    """Add the bilinear interpolation of projection ``index`` at pixel position ``(fj, fk)`` to ``acc``."""
    max_j, max_k = projections.shape[1], projections.shape[2]
    if not (-1 <= fj < max_j and -1 <= fk < max_k):
        return
    y_weight = fj - floor(fj)
    z_weight = fk - floor(fk)
    y0 = np.int32(max(floor(fj), 0))
    y1 = y0 + (y0 < (max_j - 1))
    z0 = np.int32(max(floor(fk), 0))
    z1 = z0 + (z0 < (max_k - 1))
    t0 = (1 - y_weight) * (1 - z_weight) * (fj >= 0) * (fk >= 0)
    t1 = ((1 - z_weight) * y_weight) * (fj < (max_j - 1)) * (fk >= 0)
    t2 = ((1 - y_weight) * z_weight) * (fk < (max_k - 1)) * (fj >= 0)
    t3 = (z_weight * y_weight) * (fj < (max_j - 1)) * (fk < (max_k - 1))
    for i in range(acc.size):
        acc[i] += (
            projections[index, y0, z0, i] * t0
            + projections[index, y1, z0, i] * t1
            + projections[index, y0, z1, i] * t2
            + projections[index, y1, z1, i] * t3
        )


@numba.njit(fastmath=True, nogil=True, cache=True, parallel=True)
def _adjoint_kernel(
    field: Any, projections: Any, norm_j: Any, norm_k: Any, norm_offset_j: Any, norm_offset_k: Any
) -> None:  # pragma: no cover (compiled)
    max_x, max_y, max_z, channels = field.shape
    for x in range(max_x):
        fx = x - 0.5 * max_x + 0.5
        for y in numba.prange(max_y):
            acc = np.empty(channels, field.dtype)
            fy = y - 0.5 * max_y + 0.5
            for z in range(max_z):
                fz = z - 0.5 * max_z + 0.5
                for i in range(channels):
                    acc[i] = 0.0
                for a in range(projections.shape[0]):
                    fj = norm_offset_j[a] + fx * norm_j[a, 0] + fy * norm_j[a, 1] + fz * norm_j[a, 2] - 0.5
                    fk = norm_offset_k[a] + fx * norm_k[a, 0] + fy * norm_k[a, 1] + fz * norm_k[a, 2] - 0.5
                    _interpolate_projection(projections, a, fj, fk, acc)
                for i in range(channels):
                    field[x, y, z, i] = acc[i]


def _s_vectors(
    vector_j: np.ndarray[Any, Any],
    vector_k: np.ndarray[Any, Any],
    offsets_j: np.ndarray[Any, Any],
    offsets_k: np.ndarray[Any, Any],
    shape_jk: tuple[int, int],
) -> np.ndarray[Any, Any]:
    """Where each projection's pixel (0, 0) sits, as mumott computes it."""
    max_j, max_k = shape_jk
    return np.asarray(
        vector_k * (-0.5 * max_k + offsets_k.reshape(-1, 1)) + vector_j * (-0.5 * max_j + offsets_j.reshape(-1, 1))
    )


def john_transform(
    field: np.ndarray[Any, Any],
    projections: np.ndarray[Any, Any],
    vector_p: np.ndarray[Any, Any],
    vector_j: np.ndarray[Any, Any],
    vector_k: np.ndarray[Any, Any],
    offsets_j: np.ndarray[Any, Any],
    offsets_k: np.ndarray[Any, Any],
) -> np.ndarray[Any, Any]:
    """Project ``field`` ``(X, Y, Z, C)`` into ``projections`` ``(n, J, K, C)`` in place, and return them.

    The arguments are those of ``mumott.core.john_transform.john_transform`` (``field`` and ``projections`` of one
    float dtype, C-contiguous; per projection its beam direction, detector axes and offsets), with the same result.

    Examples
    --------
    >>> field = np.ones((4, 4, 4, 1))
    >>> out = np.zeros((1, 4, 4, 1))
    >>> p, j, k = np.array([[0.0, 1, 0]]), np.array([[1.0, 0, 0]]), np.array([[0.0, 0, 1]])
    >>> john_transform(field, out, p, j, k, np.zeros(1), np.zeros(1))[0, :, :, 0]  # 4 voxels along every ray
    array([[4., 4., 4., 4.],
           [4., 4., 4., 4.],
           [4., 4., 4., 4.],
           [4., 4., 4., 4.]])
    """
    dtype = field.dtype
    abs_p = np.abs(vector_p)
    d0 = np.argmax(abs_p, axis=1).reshape(-1, 1).astype(np.int32)
    d1 = (1 * (d0 == 0)).astype(np.int32)
    d2 = (2 - (d0 == 2)).astype(np.int32)
    step_1 = (np.take_along_axis(vector_p, d1, 1) / np.take_along_axis(vector_p, d0, 1)).astype(dtype).ravel()
    step_2 = (np.take_along_axis(vector_p, d2, 1) / np.take_along_axis(vector_p, d0, 1)).astype(dtype).ravel()
    shape = np.array(field.shape[:3])
    dimensions = np.stack([shape[d.ravel()] for d in (d0, d1, d2)], axis=1).astype(np.int32)
    multipliers = np.sqrt(1.0 + step_1**2 + step_2**2).astype(dtype)
    s_vectors = _s_vectors(vector_j, vector_k, offsets_j, offsets_k, projections.shape[1:3]).astype(dtype)
    directions = np.ascontiguousarray(np.concatenate([d0, d1, d2], axis=1))
    _forward_kernel(
        field,
        projections,
        step_1,
        step_2,
        np.ascontiguousarray(vector_j, dtype=dtype),
        np.ascontiguousarray(vector_k, dtype=dtype),
        np.ascontiguousarray(s_vectors),
        dimensions,
        directions,
        multipliers,
    )
    return projections


def john_transform_adjoint(
    field: np.ndarray[Any, Any],
    projections: np.ndarray[Any, Any],
    vector_p: np.ndarray[Any, Any],
    vector_j: np.ndarray[Any, Any],
    vector_k: np.ndarray[Any, Any],
    offsets_j: np.ndarray[Any, Any],
    offsets_k: np.ndarray[Any, Any],
) -> np.ndarray[Any, Any]:
    """Back-project ``projections`` ``(n, J, K, C)`` into ``field`` ``(X, Y, Z, C)`` in place, and return it.

    The arguments are those of ``mumott.core.john_transform.john_transform_adjoint``, with the same result.
    """
    dtype = field.dtype
    p = vector_p.astype(dtype)
    j = vector_j.astype(dtype)
    k = vector_k.astype(dtype)
    s = _s_vectors(vector_j, vector_k, offsets_j, offsets_k, projections.shape[1:3]).astype(dtype)
    vector_norm = np.einsum("...i, ...i", p, np.cross(j, k))
    norm_j = -np.cross(p, k) / vector_norm[..., None]
    norm_k = np.cross(p, j) / vector_norm[..., None]
    norm_offset_j = -np.einsum("...i, ...i", p, np.cross(s, k)) / vector_norm
    norm_offset_k = np.einsum("...i, ...i", p, np.cross(s, j)) / vector_norm
    _adjoint_kernel(
        field,
        projections,
        np.ascontiguousarray(norm_j),
        np.ascontiguousarray(norm_k),
        np.ascontiguousarray(norm_offset_j),
        np.ascontiguousarray(norm_offset_k),
    )
    return field


def compiled_kernels() -> int:
    """How many projector kernels this process compiled or loaded from numba's cache (one per dtype and kernel).

    A process that reconstructed any number of projection subsets in float64 reports 2: the forward and the
    adjoint kernel, each compiled once.
    """
    return sum(len(kernel.overloads) for kernel in (_forward_kernel, _adjoint_kernel))


@functools.cache
def projector_class() -> type:
    """A ``mumott`` ``SAXSProjector`` whose John transforms are :func:`john_transform` and its adjoint.

    Built on first use, so that mumott (optional) is imported only where reconstructions run. It plugs into
    ``GradientResidualCalculator(projector=...)`` and mumott's pipelines (``Projector=``) like mumott's own.
    """
    from storage.sources.mumott import import_mumott

    import_mumott()
    from mumott.methods.projectors import SAXSProjector  # type: ignore[import-untyped]

    class RuntimeGeometrySAXSProjector(SAXSProjector):  # type: ignore[misc]
        """mumott's CPU SAXS projector, with kernels compiled once per process instead of once per geometry."""

        def _john_transform(self, field: Any, projections: Any, *args: Any) -> Any:
            return john_transform(field, projections, *args)

        def _john_transform_adjoint(self, field: Any, projections: Any, *args: Any) -> Any:
            return john_transform_adjoint(field, projections, *args)

    return RuntimeGeometrySAXSProjector
