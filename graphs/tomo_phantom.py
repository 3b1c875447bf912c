"""Synthetic SAXS tensor-tomography scans with known ground truth, made with mumott's own forward model.

The ground truth is a fibre texture (after ../shared/research/mumott.md, section 4): in each voxel of a centred
ball, f(q) = ρ ((1 − a) + a exp(−6 (q·u)²)) with a smooth random fibre direction u, density ρ ∈ [0.5, 1.5] and
anisotropy a ∈ [0.3, 1], fitted to mumott's spherical-harmonic basis by least squares on a Fibonacci grid of
directions. The scan tilts the sample 0-45° in 5° steps and rotates it through 180° at tilt 0 and 360° at the
other tilts (247 projections by default, fewer per tilt as the tilt grows), images it on N × N pixels with 8
azimuthal segments on a half circle, and adds Poisson noise. Everything here is computed in memory; the engine
writes the file with :func:`storage.sources.mumott.write_mumott_scan`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.ndimage import gaussian_filter  # type: ignore[import-untyped]
from scipy.spatial.transform import Rotation  # type: ignore[import-untyped]

from storage.sources.mumott import import_mumott

from .errors import ParameterError
from .john_transform import projector_class
from .tensor_tomo import coefficient_table

__all__ = ["detector_angles", "fibre_phantom", "forward_project", "noisy", "scan_angles"]

#: Projections per tilt layer of the default 247-projection scan (tilts 0, 5, ..., 45 degrees).
_LAYER_COUNTS = (16, 29, 29, 28, 27, 26, 25, 24, 22, 21)
_TILT_STEP = np.deg2rad(5.0)
_INNER_AXIS = np.array([0.0, 0.0, -1.0])  # mumott's default rotation axis
_OUTER_AXIS = np.array([1.0, 0.0, 0.0])  # and tilt axis


def detector_angles(n_segments: int = 8) -> np.ndarray[Any, Any]:
    """Centres of ``n_segments`` azimuthal detector segments covering half a circle (SAXS), radians.

    Examples
    --------
    >>> np.round(np.rad2deg(detector_angles(4)), 1).tolist()
    [22.5, 67.5, 112.5, 157.5]
    """
    return (np.arange(n_segments) + 0.5) * np.pi / n_segments


def scan_angles(n_projections: int = 247) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """Rotation (inner) and tilt (outer) angles in radians of a realistic scan of ``n_projections``.

    The default 247 follows a real SAXS tensor-tomography scan's layers; other numbers scale the layers alike.

    Examples
    --------
    >>> inner, outer = scan_angles()
    >>> len(inner), round(float(np.rad2deg(outer.max())))
    (247, 45)
    >>> len(scan_angles(30)[0])
    30
    """
    if n_projections < 1:
        raise ParameterError(f"n_projections must be >= 1, got {n_projections}")
    weights = np.array(_LAYER_COUNTS, dtype=float)
    counts = np.floor(weights * n_projections / weights.sum()).astype(int)
    # Hand out what rounding down left, to the layers that lost the most.
    left = n_projections - counts.sum()
    counts[np.argsort(counts - weights * n_projections / weights.sum())[:left]] += 1
    inner, outer = [], []
    for layer, count in enumerate(counts):
        span = np.pi if layer == 0 else 2 * np.pi
        inner.extend(np.arange(count) * span / max(count, 1))
        outer.extend([layer * _TILT_STEP] * count)
    return np.array(inner), np.array(outer)


def _smooth_field(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray[Any, Any]:
    """A smooth random field in [0, 1]."""
    field = gaussian_filter(rng.standard_normal((size, size, size)), sigma, mode="wrap")
    return np.asarray((field - field.min()) / max(float(np.ptp(field)), 1e-12))


def _fibonacci_sphere(n: int) -> np.ndarray[Any, Any]:
    k = np.arange(n) + 0.5
    polar = np.arccos(1 - 2 * k / n)
    azimuth = np.pi * (1 + 5**0.5) * k
    return np.stack([np.cos(azimuth) * np.sin(polar), np.sin(azimuth) * np.sin(polar), np.cos(polar)], axis=1)


def fibre_phantom(size: int, ell_max: int = 8, seed: int = 0) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """Ground-truth coefficients ``(size, size, size, C)`` of a fibre texture in a ball, and the ball's mask.

    The ball (radius ``size / 2 - 1.5`` voxels) lies strictly inside the field of view of every projection.

    Parameters
    ----------
    size : int
        Side of the cube, >= 4.
    ell_max : int
        Even order of mumott's basis that the texture is fitted to.
    seed : int
        Seed of the random fields.

    Returns
    -------
    coefficients : numpy.ndarray
        float64, zero outside the ball.
    mask : numpy.ndarray
        bool ``(size, size, size)``.
    """
    if size < 4:
        raise ParameterError(f"size must be >= 4 voxels, got {size}")
    coefficient_table(ell_max)
    import_mumott()
    from mumott import ProbedCoordinates  # type: ignore[import-untyped]
    from mumott.methods.basis_sets import SphericalHarmonics  # type: ignore[import-untyped]

    rng = np.random.default_rng([int(seed), 0x66696272])
    sigma = size / 6
    direction = np.stack([_smooth_field(rng, size, sigma) - 0.5 for _ in range(3)], axis=-1)
    direction /= np.maximum(np.linalg.norm(direction, axis=-1, keepdims=True), 1e-12)
    density = 0.5 + _smooth_field(rng, size, sigma)
    anisotropy = 0.3 + 0.7 * _smooth_field(rng, size, sigma)
    centre = (size - 1) / 2
    grid = np.indices((size, size, size)) - centre
    mask = np.sqrt((grid**2).sum(axis=0)) <= size / 2 - 1.5
    basis = SphericalHarmonics(ell_max=ell_max)
    n_coefficients = len(coefficient_table(ell_max)[0])
    q = _fibonacci_sphere(max(200, 4 * n_coefficients))
    design = basis._get_projection_matrix(ProbedCoordinates(vector=q.reshape(1, len(q), 1, 3)))
    design = design.reshape(len(q), n_coefficients)
    cos2 = (direction[mask] @ q.T) ** 2  # (voxels, directions)
    a, rho = anisotropy[mask][:, None], density[mask][:, None]
    values = rho * ((1 - a) + a * np.exp(-6 * cos2))
    fitted, *_ = np.linalg.lstsq(design, values.T, rcond=None)
    coefficients = np.zeros((size, size, size, n_coefficients))
    coefficients[mask] = fitted.T
    return coefficients, mask


def forward_project(
    coefficients: np.ndarray[Any, Any],
    inner: np.ndarray[Any, Any],
    outer: np.ndarray[Any, Any],
    n_segments: int = 8,
) -> np.ndarray[Any, Any]:
    """Noise-free intensities ``(n, J, K, S)`` of a coefficient field seen at the given angles.

    mumott's forward model: the John transform of the coefficients (its SAXS projector, see
    :mod:`graphs.john_transform`), then its spherical-harmonic basis evaluated at each detector segment's probed
    direction. The detector has ``X × Z`` pixels for an ``(X, Y, Z)`` field, the beam along y at zero angles.
    """
    import_mumott()
    from mumott import DataContainer
    from mumott.core.projection_stack import Projection  # type: ignore[import-untyped]
    from mumott.methods.basis_sets import SphericalHarmonics

    x, _, z = coefficients.shape[:3]
    n_coefficients = coefficients.shape[3]
    ell_max = int(np.sqrt(8 * n_coefficients + 1) - 3) // 2  # C = (ell_max + 1)(ell_max / 2 + 1)
    container = DataContainer()
    ones = np.ones((x, z, n_segments))
    for a, b in zip(np.asarray(inner).tolist(), np.asarray(outer).tolist(), strict=True):
        # As DataContainer computes it from inner_angle and outer_angle when it loads a file.
        rotation = (
            Rotation.from_rotvec(b * _OUTER_AXIS).as_matrix() @ Rotation.from_rotvec(a * _INNER_AXIS).as_matrix()
        )
        container.projections.append(
            Projection(
                data=ones, diode=ones[..., 0], weights=ones, rotation=rotation, inner_angle=a, outer_angle=b
            )
        )
    geometry = container.geometry
    geometry.volume_shape = np.array(coefficients.shape[:3])
    geometry.detector_angles = detector_angles(n_segments)
    projector = projector_class()(geometry)
    basis = SphericalHarmonics(ell_max=ell_max, probed_coordinates=geometry.probed_coordinates)
    return np.asarray(basis.forward(projector.forward(np.ascontiguousarray(coefficients))))


def noisy(clean: np.ndarray[Any, Any], counts: float, seed: int) -> np.ndarray[Any, Any]:
    """Poisson noise with ``counts`` photons in the brightest pixel (SNR ≈ √counts there), in units of ``clean``.

    Examples
    --------
    >>> data = noisy(np.full((2, 2), 4.0), counts=1e6, seed=0)
    >>> bool(np.allclose(data, 4.0, rtol=0.01))
    True
    """
    scale = counts / max(float(np.max(clean)), 1e-30)
    rng = np.random.default_rng([int(seed), 0x6E6F6973])
    return np.asarray(rng.poisson(np.clip(clean, 0, None) * scale) / scale)
