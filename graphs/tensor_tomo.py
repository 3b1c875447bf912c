"""Tensor-tomography training sets: spherical-harmonic reconstructions from random subsets of a scan's projections.

Sample ``k`` reconstructs the coefficients of mumott's spherical-harmonic basis (even orders ℓ only, Friedel
symmetric: ``(ell_max + 1) (ell_max / 2 + 1)`` coefficients) from ``num_projections`` projections drawn by
``np.random.default_rng([seed, k])``, by minimising mumott's squared residual plus a Laplacian regulariser with
scipy's L-BFGS-B (as ``mumott.optimization.optimizers.LBFGS`` runs it, without its progress bar). Every sample is
one task, a pure function of the scan, its projection subset and the settings, so a retried or resumed sample gives
the same bytes. The projector is :func:`graphs.john_transform.projector_class`, compiled once per process; on a
worker with a CUDA device (``device="cuda"``), mumott's ``SAXSProjectorCUDA``.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
from dataclasses import asdict, dataclass
from typing import Any, Literal

import dask.array as da
import numpy as np
import xarray as xr
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

from storage.dims import SAMPLE
from storage.sources.mumott import MumottScan, import_mumott

from .errors import ParameterError
from .john_transform import projector_class

__all__ = [
    "COEFFICIENT_DIMS",
    "Reconstruction",
    "ReconstructionSettings",
    "coefficient_table",
    "draw_projections",
    "reconstruct",
    "subset_container",
    "tensor_tomo_dataset",
]

log = logging.getLogger(__name__)

#: Dims of the ``reconstructions`` array of a tensor-tomography store.
COEFFICIENT_DIMS = (SAMPLE, "x", "y", "z", "coefficient")

Device = Literal["cpu", "cuda"]


def coefficient_table(ell_max: int) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """The order ℓ and degree m of each coefficient of mumott's Friedel-symmetric spherical-harmonic basis.

    ℓ runs over the even orders up to ``ell_max``, m from −ℓ to ℓ within each (``SphericalHarmonics.ell_indices``
    and ``emm_indices``); coefficient 0 (ℓ = 0) is the mean intensity over the sphere.

    Raises
    ------
    ParameterError
        ``ell_max`` is odd or negative (the basis holds only even orders).

    Examples
    --------
    >>> ell, m = coefficient_table(2)
    >>> ell.tolist(), m.tolist()
    ([0, 2, 2, 2, 2, 2], [0, -2, -1, 0, 1, 2])
    >>> len(coefficient_table(8)[0])
    45
    """
    if isinstance(ell_max, bool) or int(ell_max) != ell_max or ell_max < 0 or ell_max % 2:
        raise ParameterError(
            f"ell_max must be an even number >= 0 (mumott's basis keeps only even orders), got {ell_max}"
        )
    ell = [order for order in range(0, int(ell_max) + 1, 2) for _ in range(2 * order + 1)]
    m = [degree for order in range(0, int(ell_max) + 1, 2) for degree in range(-order, order + 1)]
    return np.array(ell, dtype=np.int32), np.array(m, dtype=np.int32)


def draw_projections(n_available: int, num_projections: int, seed: int, sample: int) -> np.ndarray[Any, Any]:
    """The sorted projection indices of sample ``sample``: ``num_projections`` of ``n_available`` without repeats.

    Drawn by ``np.random.default_rng([seed, sample])``, so a sample's subset depends on nothing else.

    Examples
    --------
    >>> draw_projections(10, 4, seed=42, sample=0).tolist() == draw_projections(10, 4, 42, 0).tolist()
    True
    >>> len(set(draw_projections(10, 4, 42, 0)))
    4
    """
    _check_num_projections(num_projections, n_available)
    rng = np.random.default_rng([int(seed), int(sample)])
    return np.sort(rng.choice(n_available, size=num_projections, replace=False)).astype(np.int32)


def _check_num_projections(num_projections: int, n_available: int, where: str = "the scan") -> None:
    if isinstance(num_projections, bool) or int(num_projections) != num_projections or num_projections < 1:
        raise ParameterError(f"num_projections must be a whole number >= 1, got {num_projections}")
    if num_projections > n_available:
        raise ParameterError(
            f"num_projections is {num_projections}, but {where} has only {n_available} projections"
        )


@dataclass(frozen=True)
class ReconstructionSettings:
    """What decides a reconstruction besides its data: basis, regulariser, optimizer, device.

    Attributes
    ----------
    ell_max : int
        Highest (even) spherical-harmonic order.
    regularization_weight : float
        Weight of the Laplacian regulariser (not scale-free: it grows with the volume; 10-100 suits 16³-32³).
    maxiter, maxfun : int
        L-BFGS-B iterations and loss evaluations at most.
    ftol, gtol : float
        L-BFGS-B's tolerances on the relative loss decrease and on the projected gradient.
    device : {"cpu", "cuda"}
        ``cpu``: the once-compiled CPU projector; ``cuda``: mumott's ``SAXSProjectorCUDA`` (float32, results differ
        from the CPU's in the last digits).
    """

    ell_max: int = 8
    regularization_weight: float = 10.0
    maxiter: int = 20
    maxfun: int = 40
    ftol: float = 1e-6
    gtol: float = 1e-5
    device: Device = "cpu"

    def __post_init__(self) -> None:
        coefficient_table(self.ell_max)  # checks ell_max
        if not self.regularization_weight >= 0 or not np.isfinite(self.regularization_weight):
            raise ParameterError(f"regularization_weight must be >= 0, got {self.regularization_weight}")
        for name in ("maxiter", "maxfun"):
            if int(getattr(self, name)) < 1:
                raise ParameterError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("ftol", "gtol"):
            if not getattr(self, name) > 0:
                raise ParameterError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.device not in ("cpu", "cuda"):
            raise ParameterError(f"device must be cpu or cuda, got {self.device!r}")

    def as_dict(self) -> dict[str, Any]:
        """The settings as JSON-clean values (the store's parameters hold them)."""
        return asdict(self)


@dataclass(frozen=True)
class Reconstruction:
    """One reconstruction: ``coefficients`` ``(X, Y, Z, C)`` float64 and how the optimizer ended."""

    coefficients: np.ndarray[Any, Any]
    loss: float
    iterations: int
    evaluations: int
    message: str


def subset_container(container: Any, indices: Any) -> Any:
    """A new ``DataContainer`` holding projections ``indices`` of ``container`` (arrays shared, not copied).

    Equivalent to deleting every other projection from a deep copy (same geometry, same data), without copying
    the scan; ``container`` is not modified.
    """
    import_mumott()
    from mumott import DataContainer  # type: ignore[import-untyped]
    from mumott.core.projection_stack import Projection  # type: ignore[import-untyped]

    sub = DataContainer()
    for i in np.asarray(indices).tolist():
        p = container.projections[i]
        sub.projections.append(
            Projection(
                data=p.data,
                diode=p.diode,
                weights=p.weights,
                rotation=p.rotation,
                j_offset=p.j_offset,
                k_offset=p.k_offset,
                inner_angle=p.inner_angle,
                outer_angle=p.outer_angle,
                inner_axis=p.inner_axis,
                outer_axis=p.outer_axis,
            )
        )
    source, target = container.geometry, sub.geometry
    for name in (
        "volume_shape",
        "detector_angles",
        "two_theta",
        "full_circle_covered",
        "p_direction_0",
        "j_direction_0",
        "k_direction_0",
        "detector_direction_origin",
        "detector_direction_positive_90",
    ):
        setattr(target, name, getattr(source, name))
    return sub


def reconstruct(
    container: Any, indices: Any, settings: ReconstructionSettings, *, threads: int | None = 1
) -> Reconstruction:
    """Reconstruct spherical-harmonic coefficients from projections ``indices`` of a scan.

    mumott's ``GradientResidualCalculator`` with ``SquaredLoss`` and a ``Laplacian`` regulariser, minimised by
    scipy's L-BFGS-B from zeros, exactly as ``mumott.optimization.optimizers.LBFGS(maxiter=..., maxfun=...,
    ftol=..., gtol=...)`` does it (the same result), without its progress bar.

    Parameters
    ----------
    container : mumott.DataContainer
        The whole scan (see :meth:`storage.sources.mumott.MumottScan.container`).
    indices : sequence of int
        The projections to use.
    settings : ReconstructionSettings
    threads : int or None
        numba and BLAS threads of this call (set here, inside the task: numba's count is thread-local, and
        mumott's import leaves OpenBLAS at one thread per core, which made a 16³ reconstruction 2× slower on
        1.5 cores); None leaves both as they are.

    Returns
    -------
    Reconstruction
    """
    import_mumott()
    import numba  # type: ignore[import-untyped]
    from mumott.methods.basis_sets import SphericalHarmonics  # type: ignore[import-untyped]
    from mumott.methods.residual_calculators import GradientResidualCalculator  # type: ignore[import-untyped]
    from mumott.optimization.loss_functions import SquaredLoss  # type: ignore[import-untyped]
    from mumott.optimization.regularizers import Laplacian  # type: ignore[import-untyped]
    from scipy.optimize import minimize  # type: ignore[import-untyped]
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

    if threads is not None:
        numba.set_num_threads(max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS)))  # type: ignore[attr-defined]
    logging.getLogger("mumott").setLevel(logging.WARNING)
    sub = subset_container(container, indices)
    if settings.device == "cuda":
        from mumott.methods.projectors import SAXSProjectorCUDA  # type: ignore[import-untyped]

        projector = SAXSProjectorCUDA(sub.geometry)
    else:
        projector = projector_class()(sub.geometry)
    basis = SphericalHarmonics(ell_max=settings.ell_max)
    residuals = GradientResidualCalculator(data_container=sub, basis_set=basis, projector=projector)
    loss = SquaredLoss(residuals)
    loss.add_regularizer(
        name="laplacian", regularizer=Laplacian(), regularization_weight=settings.regularization_weight
    )
    shape: list[tuple[int, ...]] = []

    def loss_and_gradient(x: np.ndarray[Any, Any]) -> tuple[float, np.ndarray[Any, Any]]:
        d = loss.get_loss(x, get_gradient=True)
        if not shape:
            shape.append(d["gradient"].shape)
        return d["loss"], d["gradient"].ravel().astype(np.float64)

    blas = threadpool_limits(threads, user_api="blas") if threads is not None else contextlib.nullcontext()
    with blas:
        result = minimize(
            fun=loss_and_gradient,
            x0=loss.initial_values.ravel(),
            jac=True,
            method="L-BFGS-B",
            options={
                "maxiter": settings.maxiter,
                "maxfun": settings.maxfun,
                "ftol": settings.ftol,
                "gtol": settings.gtol,
                "maxcor": 10,
            },
        )
    return Reconstruction(
        coefficients=np.asarray(result.x).reshape(shape[0]),
        loss=float(result.fun),
        iterations=int(result.nit),
        evaluations=int(result.nfev),
        message=str(result.message),
    )


def _reconstruct_sample(
    scan: MumottScan, indices: np.ndarray[Any, Any], settings: ReconstructionSettings, threads: int | None
) -> Reconstruction:
    """The task of one sample: the scan is loaded once per worker process (cached), then reconstructed."""
    return reconstruct(scan.container(), indices, settings, threads=threads)


def _coefficients(r: Reconstruction) -> np.ndarray[Any, Any]:
    return r.coefficients.astype(np.float32)[None]


def _scalar(r: Reconstruction, field: str, dtype: str) -> np.ndarray[Any, Any]:
    return np.array([getattr(r, field)], dtype=dtype)


def tensor_tomo_dataset(
    scan: MumottScan,
    *,
    num_samples: int,
    num_projections: int,
    settings: ReconstructionSettings,
    seed: int = 0,
    threads: int | None = 1,
) -> xr.Dataset:
    """The lazy training set: ``num_samples`` reconstructions, one task (``tensor-tomo-reconstruct``) each.

    Parameters
    ----------
    scan : MumottScan
        From :func:`storage.sources.mumott.open_mumott`.
    num_samples : int
        Reconstructions to make.
    num_projections : int
        Projections per reconstruction, drawn per sample (:func:`draw_projections`).
    settings : ReconstructionSettings
    seed : int
        Seed of every draw.
    threads : int or None
        numba threads per task (results do not depend on it).

    Returns
    -------
    xarray.Dataset
        Chunked one sample per chunk: ``reconstructions`` ``(sample, x, y, z, coefficient)`` float32 (its attrs
        hold the ``ell`` and ``m`` of each coefficient), ``projection_indices`` ``(sample, projection)`` int32,
        ``final_loss`` float64, ``iterations`` and ``evaluations`` int32 ``(sample,)``; attrs ``parameters``
        and ``counts``.

    Raises
    ------
    ParameterError
        ``num_samples`` < 1, or ``num_projections`` < 1 or more than the scan holds.
    """
    if isinstance(num_samples, bool) or int(num_samples) != num_samples or num_samples < 1:
        raise ParameterError(f"num_samples must be a whole number >= 1, got {num_samples}")
    _check_num_projections(num_projections, scan.n_projections, where=scan.path)
    ell, m = coefficient_table(settings.ell_max)
    n = int(num_samples)
    subsets = [draw_projections(scan.n_projections, num_projections, seed, k) for k in range(n)]
    token = tokenize(scan, n, num_projections, settings, seed)
    tasks = f"tensor-tomo-reconstruct-{token}"
    layers: dict[str, dict[Any, Any]] = {
        tasks: {(tasks, k): (_reconstruct_sample, scan, subsets[k], settings, threads) for k in range(n)}
    }
    dependencies: dict[str, set[str]] = {tasks: set()}

    def take(step: str, make: Any, *args: Any, ndim: int = 1) -> str:
        name = f"tensor-tomo-{step}-{token}"
        layers[name] = {(name, k, *(0,) * (ndim - 1)): (make, (tasks, k), *args) for k in range(n)}
        dependencies[name] = {tasks}
        return name

    names = {
        "reconstructions": take("coefficients", _coefficients, ndim=5),
        "final_loss": take("loss", _scalar, "loss", "float64"),
        "iterations": take("iterations", _scalar, "iterations", "int32"),
        "evaluations": take("evaluations", _scalar, "evaluations", "int32"),
    }
    graph = HighLevelGraph(layers, dependencies)
    x, y, z = scan.volume_shape
    c = len(ell)
    samples = (1,) * n
    reconstructions = da.Array(
        graph, names["reconstructions"], chunks=(samples, (x,), (y,), (z,), (c,)), dtype="f4"
    )
    indices_name = f"tensor-tomo-indices-{token}"
    indices = da.Array(
        HighLevelGraph.from_collections(
            indices_name, {(indices_name, k, 0): subsets[k][None] for k in range(n)}, dependencies=[]
        ),
        indices_name,
        chunks=(samples, (int(num_projections),)),
        dtype=np.int32,
    )
    ds = xr.Dataset(
        {
            "reconstructions": (
                COEFFICIENT_DIMS,
                reconstructions,
                {
                    "long_name": "spherical-harmonic coefficients (mumott SphericalHarmonics, even orders)",
                    "ell": ell.tolist(),
                    "m": m.tolist(),
                },
            ),
            "projection_indices": (
                (SAMPLE, "projection"),
                indices,
                {"long_name": "projections of the scan used by the sample (sorted)"},
            ),
            "final_loss": (
                (SAMPLE,),
                da.Array(graph, names["final_loss"], chunks=(samples,), dtype=np.float64),
                {"long_name": "loss (squared residual + regulariser) at the end of the optimization"},
            ),
            "iterations": (
                (SAMPLE,),
                da.Array(graph, names["iterations"], chunks=(samples,), dtype=np.int32),
                {"long_name": "L-BFGS-B iterations"},
            ),
            "evaluations": (
                (SAMPLE,),
                da.Array(graph, names["evaluations"], chunks=(samples,), dtype=np.int32),
                {"long_name": "loss and gradient evaluations"},
            ),
        }
    )
    ds.attrs["parameters"] = {
        "num_samples": n,
        "num_projections": int(num_projections),
        "basis": "SphericalHarmonics",
        "friedel_symmetric": True,
        "loss": "SquaredLoss",
        "regularizer": "Laplacian",
        "optimizer": "L-BFGS-B",
        **settings.as_dict(),
        # The reconstruction is mumott's: another version may give other bytes, so resuming across one is refused.
        "mumott": importlib.metadata.version("mumott"),
    }
    ds.attrs["counts"] = {"scan_projections": scan.n_projections, "coefficients": c}
    ds.attrs["sources"] = [scan.record()]
    return ds
