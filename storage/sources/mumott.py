"""SAXS tensor-tomography scans in mumott's HDF5 layout: checked with h5py, loaded once per process, written.

:func:`open_mumott` checks the layout ``mumott.DataContainer`` reads (``/detector_angles``; ``/projections/0`` …
``/projections/{n-1}``, each with ``data``, ``diode`` and a rotation) without reading any projection, and returns
a small picklable :class:`MumottScan`. Its :meth:`~MumottScan.container` loads the scan into a
``DataContainer`` once per process (cached by path, size and modification time), so the reconstruction tasks a
worker runs share one copy. :func:`write_mumott_scan` writes that layout (the synthetic scans of the project).

mumott is an optional dependency (``pip install "zarrforge[mumott]"``); :func:`import_mumott` imports it without
the side effects it has at import time (a root-logger ``basicConfig`` at INFO on stdout, tqdm bars on stdout).
"""

from __future__ import annotations

import functools
import logging
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, cast

import h5py
import numpy as np

from ..errors import MissingDependencyError, SourceError, SourceNotFoundError
from ._paths import file_record

__all__ = ["MumottScan", "import_mumott", "open_mumott", "read_ground_truth", "write_mumott_scan"]

log = logging.getLogger(__name__)

#: Keys of a projection that give mumott its rotation (current and legacy names).
_ROTATION_KEYS = ("inner_angle", "outer_angle", "rotation_matrix", "rotations", "tilts", "rot_mat")


def import_mumott() -> ModuleType:
    """Import mumott quietly, or say what to install.

    mumott calls ``logging.basicConfig(level=INFO, stream=sys.stdout)`` when imported, which would send every
    library's INFO logs (distributed's too) to stdout, and shows tqdm bars on stdout. A handler on the root
    logger during the import makes its ``basicConfig`` a no-op; ``TQDM_DISABLE`` silences its bars.

    Returns
    -------
    module
        ``mumott``.

    Raises
    ------
    ImportError
        mumott is not installed (the message says ``pip install "zarrforge[mumott]"``).
    """
    os.environ.setdefault("TQDM_DISABLE", "1")
    root = logging.getLogger()
    guard = logging.NullHandler()
    level = root.level
    root.addHandler(guard)
    try:
        import mumott  # type: ignore[import-untyped]
    except ImportError as e:
        raise MissingDependencyError(
            f'tensor tomography needs mumott: pip install "zarrforge[mumott]" ({e})'
        ) from None
    finally:
        root.removeHandler(guard)
        root.setLevel(level)
    return cast(ModuleType, mumott)


@dataclass(frozen=True)
class MumottScan:
    """A checked mumott scan file: what the graph needs to know, and the data on demand.

    Pickles as these few fields; :meth:`container` loads the data in whichever process calls it.

    Attributes
    ----------
    path : str
        Absolute path of the HDF5 file.
    size, mtime : int, float
        The file's size and modification time when it was checked (the cache key, and provenance).
    n_projections : int
        Projections in the file.
    projection_shape : tuple of int
        ``(J, K)`` detector pixels of the largest projection.
    n_segments : int
        Azimuthal detector segments.
    volume_shape : tuple of int
        ``(X, Y, Z)`` of the reconstruction: ``/volume_shape``, or ``(J, J, K)`` as mumott defaults it.
    has_ground_truth : bool
        The file holds ``/ground_truth/coefficients`` (the project's synthetic scans do).
    """

    path: str
    size: int
    mtime: float
    n_projections: int
    projection_shape: tuple[int, int]
    n_segments: int
    volume_shape: tuple[int, int, int]
    has_ground_truth: bool

    def container(self) -> Any:
        """The scan as a ``mumott.DataContainer``, loaded once per process and then shared (do not modify it).

        Raises
        ------
        SourceError
            The file changed (size or modification time) since it was checked.
        """
        current = file_record(self.path)
        if (current["size"], current["mtime"]) != (self.size, self.mtime):
            raise SourceError(f"{self.path}: changed since it was checked (size or modification time); run again")
        return _load_container(self.path, self.size, self.mtime)

    def record(self) -> dict[str, Any]:
        """Provenance of the file: ``{"path", "size", "mtime"}`` as checked."""
        return {"path": self.path, "size": self.size, "mtime": self.mtime}


@functools.lru_cache(maxsize=2)
def _load_container(path: str, size: int, mtime: float) -> Any:
    """Load a scan (size and mtime are part of the key: a rewritten file is loaded again)."""
    mumott = import_mumott()
    log.debug("loading %s into a mumott DataContainer", path)
    return mumott.DataContainer(path)


def open_mumott(path: str | os.PathLike[str]) -> MumottScan:
    """Check that a file is a scan in mumott's HDF5 layout, reading only its metadata.

    Parameters
    ----------
    path : path
        An HDF5 file as ``mumott.DataContainer`` reads it.

    Returns
    -------
    MumottScan

    Raises
    ------
    SourceNotFoundError
        The file does not exist.
    SourceError
        The file is not HDF5, or not in mumott's layout: no ``/detector_angles``, no ``/projections``, a gap in
        ``projections/0 … n-1``, a projection without ``data``, ``diode`` or rotation (mumott would silently use
        the identity), or data whose last axis is not one value per detector segment.

    Examples
    --------
    >>> import tempfile
    >>> path = tempfile.mkdtemp() + "/scan.h5"
    >>> write_mumott_scan(path, np.ones((2, 4, 3, 8)), inner_angles=[0.0, 1.0], outer_angles=[0.0, 0.0],
    ...                   detector_angles=(np.arange(8) + 0.5) * np.pi / 8, volume_shape=(4, 4, 3))
    >>> scan = open_mumott(path)
    >>> scan.n_projections, scan.projection_shape, scan.n_segments, scan.volume_shape
    (2, (4, 3), 8, (4, 4, 3))
    """
    record = file_record(path)
    where = str(path)
    if not h5py.is_hdf5(where):
        raise SourceError(f"{where}: not an HDF5 file; tensor-tomo reads mumott's HDF5 layout")
    try:
        with h5py.File(where, "r") as f:
            return _check_layout(f, where, record)
    except OSError as e:
        raise SourceError(f"{where}: cannot read HDF5 file: {e}") from None


def _check_layout(f: h5py.File, where: str, record: Mapping[str, Any]) -> MumottScan:
    hint = "not a mumott scan"
    if "detector_angles" not in f:
        raise SourceError(f"{where}: {hint}: no /detector_angles (the detector segments' azimuths, radians)")
    n_segments = int(np.asarray(f["detector_angles"]).size)
    if n_segments < 1:
        raise SourceError(f"{where}: {hint}: /detector_angles is empty")
    group = f.get("projections")
    if not isinstance(group, h5py.Group) or not len(group):
        raise SourceError(f"{where}: {hint}: no /projections group holding projections/0, projections/1, ...")
    names = set(group.keys())
    n = len(names)
    missing = [str(i) for i in range(n) if str(i) not in names]
    if missing:
        extra = sorted(names - {str(i) for i in range(n)})
        raise SourceError(
            f"{where}: {hint}: projections/{missing[0]} is missing (found {n} entries, e.g. "
            f"projections/{extra[0]}); mumott reads projections/0 … projections/{n - 1} without gaps"
        )
    shape_j = shape_k = 0
    for i in range(n):
        p = group[str(i)]
        if not isinstance(p, h5py.Group) or "data" not in p:
            raise SourceError(f"{where}: {hint}: projections/{i} has no data")
        if "diode" not in p:
            raise SourceError(f"{where}: {hint}: projections/{i} has no diode (write ones for normalised data)")
        if not any(key in p for key in _ROTATION_KEYS):
            raise SourceError(
                f"{where}: {hint}: projections/{i} has no rotation (inner_angle, outer_angle or "
                "rotation_matrix); mumott would silently use the identity"
            )
        data_shape = p["data"].shape
        if len(data_shape) != 3 or data_shape[2] != n_segments:
            raise SourceError(
                f"{where}: projections/{i}/data has shape {data_shape}, not (J, K, {n_segments}): one value per "
                "detector segment of /detector_angles"
            )
        diode_shape = p["diode"].shape
        shape_j, shape_k = max(shape_j, int(diode_shape[0])), max(shape_k, int(diode_shape[-1]))
    if "volume_shape" in f:
        volume = tuple(int(v) for v in np.asarray(f["volume_shape"]).ravel())
        if len(volume) != 3 or min(volume) < 1:
            raise SourceError(f"{where}: /volume_shape is {volume}, not three positive sizes (X, Y, Z)")
    else:
        volume = (shape_j, shape_j, shape_k)  # mumott's default
    return MumottScan(
        path=str(record["path"]),
        size=int(record["size"]),
        mtime=float(record["mtime"]),
        n_projections=n,
        projection_shape=(shape_j, shape_k),
        n_segments=n_segments,
        volume_shape=(volume[0], volume[1], volume[2]),
        has_ground_truth="ground_truth/coefficients" in f,
    )


def read_ground_truth(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """The arrays of ``/ground_truth`` of a scan (``coefficients``, ``mask``, ``clean_data`` for synthetic scans).

    Raises
    ------
    SourceError
        The file has no ``/ground_truth`` group.
    """
    with h5py.File(str(path), "r") as f:
        group = f.get("ground_truth")
        if not isinstance(group, h5py.Group):
            raise SourceError(f"{path}: no /ground_truth group (only synthetic scans have one)")
        return {name: np.asarray(group[name]) for name in group}


def write_mumott_scan(
    path: str | os.PathLike[str],
    data: np.ndarray,
    *,
    inner_angles: Any,
    outer_angles: Any,
    detector_angles: Any,
    volume_shape: tuple[int, int, int],
    ground_truth: Mapping[str, np.ndarray] | None = None,
    attrs: Mapping[str, Any] | None = None,
) -> None:
    """Write a scan in mumott's HDF5 layout, atomically (a temporary file renamed into place).

    Parameters
    ----------
    path : path
        The file to write (replaced if it exists).
    data : numpy.ndarray
        ``(n, J, K, S)`` transmission-corrected intensities; diodes and weights are written as ones.
    inner_angles, outer_angles : sequence of float
        Rotation and tilt of each projection, radians (mumott's default axes).
    detector_angles : sequence of float
        ``(S,)`` azimuths of the detector segments, radians.
    volume_shape : tuple of int
        ``(X, Y, Z)``.
    ground_truth : mapping, optional
        Arrays written under ``/ground_truth`` (mumott ignores them).
    attrs : mapping, optional
        Root attributes (JSON-clean scalars and strings).
    """
    target = Path(path)
    if target.parent and not target.parent.exists():
        raise SourceNotFoundError(f"{target.parent}: no such folder for {target.name}")
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        with h5py.File(tmp, "w") as f:
            f["detector_angles"] = np.asarray(detector_angles, dtype=np.float64)
            f["volume_shape"] = np.asarray(volume_shape, dtype=np.int64)
            for key, value in (attrs or {}).items():
                f.attrs[key] = value
            ones = np.ones(data.shape[1:3])
            for i in range(data.shape[0]):
                g = f.create_group(f"projections/{i}")
                g["data"] = data[i]
                g["diode"] = ones
                g["weights"] = ones
                g["inner_angle"] = float(inner_angles[i])
                g["outer_angle"] = float(outer_angles[i])
            for name, values in (ground_truth or {}).items():
                f[f"ground_truth/{name}"] = values
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
