"""The tensor-tomography graph: coefficient table, subset draws, the once-compiled projector, reconstructions."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import graphs.tensor_tomo as tt
from engine.pipelines.tensor_tomo import write_synthetic_scan
from graphs.errors import ParameterError
from graphs.john_transform import compiled_kernels, john_transform, john_transform_adjoint, projector_class
from graphs.tensor_tomo import (
    ReconstructionSettings,
    coefficient_table,
    draw_projections,
    reconstruct,
    subset_container,
    tensor_tomo_dataset,
)
from graphs.tomo_phantom import forward_project, scan_angles
from storage.sources.mumott import MumottScan, import_mumott, read_ground_truth

SETTINGS = ReconstructionSettings(ell_max=2, maxiter=5, maxfun=10)


@pytest.fixture(scope="module")
def scan(tmp_path_factory: pytest.TempPathFactory) -> MumottScan:
    """An 8³ synthetic scan of 24 projections with its ground truth (ell_max 2)."""
    return write_synthetic_scan(tmp_path_factory.mktemp("scan") / "scan.h5", 8, ell_max=2, n_projections=24)


@pytest.mark.parametrize("ell_max", [0, 2, 4, 8])
def test_the_coefficient_table_is_mumotts_basis(ell_max: int) -> None:
    import_mumott()
    from mumott.methods.basis_sets import SphericalHarmonics

    basis = SphericalHarmonics(ell_max=ell_max)
    ell, m = coefficient_table(ell_max)
    np.testing.assert_array_equal(ell, basis.ell_indices)
    np.testing.assert_array_equal(m, basis.emm_indices)
    assert len(ell) == (ell_max + 1) * (ell_max // 2 + 1)


@pytest.mark.parametrize("ell_max", [-2, 3, 1.5])
def test_odd_or_negative_ell_max_is_refused(ell_max: float) -> None:
    with pytest.raises(ParameterError, match="ell_max must be an even number"):
        coefficient_table(ell_max)  # type: ignore[arg-type]
    with pytest.raises(ParameterError, match="ell_max"):
        ReconstructionSettings(ell_max=ell_max)  # type: ignore[arg-type]


@given(n=st.integers(1, 300), data=st.data(), seed=st.integers(0, 2**32), sample=st.integers(0, 10**6))
def test_a_samples_draw_is_sorted_unique_in_range_and_depends_only_on_seed_and_sample(
    n: int, data: st.DataObject, seed: int, sample: int
) -> None:
    k = data.draw(st.integers(1, n))
    drawn = draw_projections(n, k, seed, sample)
    assert drawn.dtype == np.int32 and len(drawn) == k
    assert np.all(np.diff(drawn) > 0) and drawn[0] >= 0 and drawn[-1] < n
    expected = np.sort(np.random.default_rng([seed, sample]).choice(n, k, replace=False))
    np.testing.assert_array_equal(drawn, expected)


@pytest.mark.parametrize(("k", "message"), [(0, ">= 1"), (-3, ">= 1"), (11, "has only 10 projections")])
def test_bad_subset_sizes_are_refused(k: int, message: str) -> None:
    with pytest.raises(ParameterError, match=message):
        draw_projections(10, k, 0, 0)


def _random_geometry_container(n: int = 9, seed: int = 0):  # type: ignore[no-untyped-def]
    import_mumott()
    from mumott import DataContainer
    from mumott.core.projection_stack import Projection
    from scipy.spatial.transform import Rotation

    rng = np.random.default_rng(seed)
    dc = DataContainer()
    ones = np.ones((7, 6, 8))
    for _ in range(n):
        a, b = rng.uniform(0, 2 * np.pi), rng.uniform(0, 0.8)
        rotation = Rotation.from_rotvec([b, 0, 0]).as_matrix() @ Rotation.from_rotvec([0, 0, -a]).as_matrix()
        dc.projections.append(
            Projection(data=ones, diode=ones[..., 0], weights=ones, rotation=rotation, j_offset=rng.uniform(-1, 1))
        )
    dc.geometry.volume_shape = np.array([7, 7, 6])
    dc.geometry.detector_angles = (np.arange(8) + 0.5) * np.pi / 8
    return dc


def test_the_projector_equals_mumotts_and_compiles_once_whatever_the_subset() -> None:
    """Forward to rounding, adjoint bit for bit, on tilted, offset projections; kernels compiled once."""
    import_mumott()
    from mumott.methods.projectors import SAXSProjector

    dc = _random_geometry_container()
    field = np.random.default_rng(1).normal(size=(7, 7, 6, 6))
    ours, theirs = projector_class()(dc.geometry), SAXSProjector(dc.geometry)
    forward = ours.forward(field)
    np.testing.assert_allclose(forward, theirs.forward(field), rtol=0, atol=1e-12 * np.abs(forward).max())
    np.testing.assert_array_equal(ours.adjoint(forward), theirs.adjoint(forward))
    compiled = compiled_kernels()
    for seed in range(3):  # new subsets, new geometries: nothing compiles again
        sub = subset_container(dc, draw_projections(9, 4, seed, 0))
        projector = projector_class()(sub.geometry)
        projector.adjoint(projector.forward(field))
    assert compiled_kernels() == compiled == 2  # forward and adjoint, float64


def test_the_low_level_transforms_are_adjoint_on_an_axis_aligned_geometry() -> None:
    """<A x, y> = <x, Aᵀ y> where every ray runs along voxel centres (no interpolation edge effects)."""
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(5, 5, 5, 2)), rng.normal(size=(2, 5, 5, 2))
    p = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    j = np.array([[1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    k = np.array([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    ax = john_transform(x, np.zeros_like(y), p, j, k, np.zeros(2), np.zeros(2))
    aty = john_transform_adjoint(np.zeros_like(x), y, p, j, k, np.zeros(2), np.zeros(2))
    assert np.isclose((ax * y).sum(), (x * aty).sum(), rtol=1e-12)


def test_a_subset_container_equals_deleting_the_other_projections(scan: MumottScan) -> None:
    dc = scan.container()
    keep = draw_projections(scan.n_projections, 7, 3, 0)
    deleted = copy.deepcopy(dc)
    for i in sorted(set(range(scan.n_projections)) - set(keep.tolist()), reverse=True):
        del deleted.projections[i]
    sub = subset_container(dc, keep)
    assert hash(sub.geometry) == hash(deleted.geometry)
    np.testing.assert_array_equal(sub.data, deleted.data)
    assert len(dc.projections) == scan.n_projections  # the scan is not modified


def test_a_reconstruction_is_mumotts_lbfgs_result_bit_for_bit(scan: MumottScan) -> None:
    import_mumott()
    from mumott.methods.basis_sets import SphericalHarmonics
    from mumott.methods.residual_calculators import GradientResidualCalculator
    from mumott.optimization.loss_functions import SquaredLoss
    from mumott.optimization.optimizers import LBFGS
    from mumott.optimization.regularizers import Laplacian

    indices = draw_projections(scan.n_projections, 10, 42, 0)
    ours = reconstruct(scan.container(), indices, SETTINGS)
    sub = subset_container(scan.container(), indices)
    rc = GradientResidualCalculator(
        data_container=sub, basis_set=SphericalHarmonics(ell_max=2), projector=projector_class()(sub.geometry)
    )
    loss = SquaredLoss(rc)
    loss.add_regularizer(name="laplacian", regularizer=Laplacian(), regularization_weight=10.0)
    with warnings.catch_warnings():  # mumott passes L-BFGS-B options scipy deprecates (disp, iprint)
        warnings.simplefilter("ignore", DeprecationWarning)
        theirs = LBFGS(loss, maxiter=5, maxfun=10, ftol=1e-6).optimize()
    np.testing.assert_array_equal(ours.coefficients, theirs["x"])
    assert (ours.loss, ours.iterations, ours.evaluations) == (theirs["fun"], theirs["nit"], theirs["nfev"])


def test_the_dataset_is_lazy_and_its_samples_are_the_direct_reconstructions(
    scan: MumottScan, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("reconstructed while building the graph")

    with monkeypatch.context() as m:
        m.setattr(tt, "reconstruct", refuse)
        ds = tensor_tomo_dataset(scan, num_samples=3, num_projections=8, settings=SETTINGS, seed=5)
    assert dict(ds.sizes) == {"sample": 3, "x": 8, "y": 8, "z": 8, "coefficient": 6, "projection": 8}
    assert ds.reconstructions.data.chunks[0] == (1, 1, 1) and ds.reconstructions.dtype == np.float32
    assert ds.reconstructions.attrs["ell"] == [0, 2, 2, 2, 2, 2]
    assert ds.attrs["parameters"]["ell_max"] == 2 and ds.attrs["counts"]["scan_projections"] == 24
    names = {key[0].rsplit("-", 1)[0] for key in dict(ds.reconstructions.data.__dask_graph__())}
    assert "tensor-tomo-reconstruct" in names
    sample = ds.isel(sample=slice(1, 2)).compute(scheduler="sync")
    indices = draw_projections(24, 8, 5, 1)
    np.testing.assert_array_equal(sample.projection_indices.values[0], indices)
    direct = reconstruct(scan.container(), indices, SETTINGS)
    np.testing.assert_array_equal(sample.reconstructions.values[0], direct.coefficients.astype(np.float32))
    assert sample.iterations.values[0] == direct.iterations and sample.final_loss.values[0] == direct.loss


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_samples": 0}, "num_samples must be"),
        ({"num_projections": 0}, "num_projections must be"),
        ({"num_projections": 25}, "has only 24 projections"),
    ],
)
def test_bad_dataset_parameters_are_refused(scan: MumottScan, kwargs: dict[str, int], message: str) -> None:
    args = {"num_samples": 2, "num_projections": 5, **kwargs}
    with pytest.raises(ParameterError, match=message):
        tensor_tomo_dataset(scan, settings=SETTINGS, **args)


def test_the_synthetic_scan_is_mumotts_forward_model_of_its_ground_truth(scan: MumottScan) -> None:
    """Reloaded by mumott, the file's geometry reproduces the stored noise-free data from the ground truth."""
    import_mumott()
    from mumott.methods.basis_sets import SphericalHarmonics

    truth = read_ground_truth(scan.path)
    dc = scan.container()
    basis = SphericalHarmonics(ell_max=2, probed_coordinates=dc.geometry.probed_coordinates)
    projected = basis.forward(projector_class()(dc.geometry).forward(truth["coefficients"]))
    np.testing.assert_allclose(projected, truth["clean_data"], rtol=0, atol=1e-12)
    inner, outer = scan_angles(24)
    np.testing.assert_allclose(dc.geometry.inner_angles, inner)
    np.testing.assert_allclose(dc.geometry.outer_angles, outer)
    np.testing.assert_array_equal(forward_project(truth["coefficients"], inner, outer), truth["clean_data"])
    assert not truth["coefficients"][~truth["mask"]].any() and truth["mask"].sum() > 0
    noise = np.abs(dc.data - truth["clean_data"]).max() / truth["clean_data"].max()
    assert 0 < noise < 0.2  # Poisson noise, ~1000 counts at the brightest pixel


def test_scan_angles_follow_the_layers_of_a_real_scan() -> None:
    inner, outer = scan_angles(247)
    layers, counts = np.unique(np.round(np.rad2deg(outer)), return_counts=True)
    assert layers.tolist() == list(range(0, 50, 5))
    assert counts.tolist() == [16, 29, 29, 28, 27, 26, 25, 24, 22, 21]
    assert np.rad2deg(inner[outer == 0]).max() < 180 and np.rad2deg(inner[outer > 0]).max() > 300
    assert len(scan_angles(60)[0]) == 60


def test_full_data_reconstructs_the_ground_truth_better_than_a_subset(scan: MumottScan) -> None:
    truth = read_ground_truth(scan.path)
    mask = truth["mask"]
    settings = ReconstructionSettings(ell_max=2, maxiter=20, maxfun=40)

    def error(indices: np.ndarray) -> float:
        x = reconstruct(scan.container(), indices, settings).coefficients
        return float(
            np.linalg.norm((x - truth["coefficients"])[mask]) / np.linalg.norm(truth["coefficients"][mask])
        )

    full, subset = error(np.arange(24)), error(draw_projections(24, 6, 0, 0))
    assert full < subset < 1.0  # better than the zero field, and more data helps
