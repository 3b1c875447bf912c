"""graphs.sinograms: normalization and the projection → sinogram transpose, lazy vs eager, every method."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr
from hypothesis import given
from hypothesis import strategies as st

from graphs.errors import ParameterError
from graphs.sinograms import (
    average_frames,
    dead_pixels,
    flat_field_inverse,
    normalize_band,
    plan_band,
    sinogram_dataset,
    to_sinograms,
)
from storage.dims import PROJECTION_DIMS, SINOGRAM_DIMS


def _scan(seed: int = 0, shape: tuple[int, int, int] = (23, 11, 9)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    flat = rng.uniform(500, 1000, shape[1:])
    dark = rng.uniform(0, 50, shape[1:])
    raw = dark + flat * rng.uniform(0.1, 1.0, shape)
    return raw.astype(np.float32), flat.astype(np.float32), dark.astype(np.float32)


def _eager(raw: np.ndarray, flat: np.ndarray, dark: np.ndarray, log: bool = False) -> np.ndarray:
    out = (raw.astype(np.float64) - dark) / (flat.astype(np.float64) - dark)
    if log:
        out = -np.log(np.maximum(out, 1e-6))
    return np.transpose(out, (1, 0, 2))


@pytest.mark.parametrize("method", ["slab", "rechunk", "rechunk-tasks"])
@pytest.mark.parametrize("log", [False, True])
def test_lazy_sinograms_equal_the_eager_transpose(method: str, log: bool) -> None:
    raw, flat, dark = _scan()
    band = 4  # odd: 11 rows give bands of 4, 4, 3
    chunks = (-1, band, -1) if method == "slab" else (5, 3, 4)  # deliberately odd source chunks otherwise
    projections = xr.DataArray(da.from_array(raw, chunks=chunks), dims=PROJECTION_DIMS)
    projections = projections.assign_coords(angle=np.linspace(0, 180, raw.shape[0]))
    sino = to_sinograms(projections, flat, dark, band=band, log=log, method=method)  # type: ignore[arg-type]
    assert sino.dims == SINOGRAM_DIMS
    assert sino.data.chunks == ((4, 4, 3), (23,), (9,))
    np.testing.assert_allclose(sino.values, _eager(raw, flat, dark, log), rtol=2e-5, atol=2e-6)
    np.testing.assert_array_equal(sino.angle.values, projections.angle.values)
    assert any(name.startswith("sinograms-normalize-") for name in sino.data.dask.layers)


def test_the_graph_stays_lazy() -> None:
    raw, flat, dark = _scan()

    def boom(block: np.ndarray) -> np.ndarray:
        raise AssertionError("computed before the write")

    source = da.from_array(raw, chunks=(-1, 4, -1)).map_blocks(boom, dtype=raw.dtype)
    projections = xr.DataArray(source, dims=PROJECTION_DIMS).assign_coords(angle=np.arange(raw.shape[0]))
    ds = sinogram_dataset(projections, flat, dark, band=4)
    assert set(ds.data_vars) == {"sinograms", "rotation_angle", "flat", "dark"}
    assert ds.sinograms.attrs["coordinates"] == "rotation_angle"
    assert ds.attrs["parameters"]["band"] == 4


def test_dead_pixels_give_zero_not_a_division_by_zero() -> None:
    raw, flat, dark = _scan()
    flat[3, 4] = dark[3, 4]  # no signal
    flat[5, 1] = dark[5, 1] + 1e-4 * float(np.median(flat - dark))  # ~0 signal
    assert dead_pixels(flat, dark, 1e-3).sum() == 2
    inverse = flat_field_inverse(flat, dark, 1e-3)
    out = normalize_band(raw, dark, inverse)
    assert np.isfinite(out).all()
    assert (out[3, :, 4] == 0).all() and (out[5, :, 1] == 0).all()
    with np.errstate(all="ignore"):
        expected = _eager(raw, flat, dark)
    expected[3, :, 4] = expected[5, :, 1] = 0
    np.testing.assert_allclose(out, expected, rtol=2e-5)


def test_flat_averages() -> None:
    rng = np.random.default_rng(1)
    frames = rng.uniform(0, 10, (5, 4, 3)).astype(np.float32)
    stack = xr.DataArray(da.from_array(frames, chunks=(2, 4, 3)), dims=("flat", "detector_y", "detector_x"))
    np.testing.assert_allclose(average_frames(stack, "mean").values, frames.mean(0), rtol=1e-6)
    np.testing.assert_allclose(average_frames(stack, "median").values, np.median(frames, 0), rtol=1e-6)
    assert (average_frames(stack[:0]).values == 0).all()
    with pytest.raises(ParameterError, match="flat average"):
        average_frames(stack, "mode")  # type: ignore[arg-type]


def test_bad_parameters() -> None:
    raw, flat, dark = _scan()
    projections = xr.DataArray(da.from_array(raw, chunks=(1, -1, -1)), dims=PROJECTION_DIMS)
    with pytest.raises(ParameterError, match="slab transpose needs projections chunked"):
        to_sinograms(projections, flat, dark, band=4)
    with pytest.raises(ParameterError, match="band"):
        to_sinograms(projections, flat, dark, band=0, method="rechunk")
    with pytest.raises(ParameterError, match="detector shape"):
        to_sinograms(projections, flat[:2], dark, band=4, method="rechunk")


def test_same_result_whatever_the_scheduler() -> None:
    raw, flat, dark = _scan(2)
    projections = xr.DataArray(da.from_array(raw, chunks=(-1, 3, -1)), dims=PROJECTION_DIMS)
    sino = to_sinograms(projections, flat, dark, band=3).data
    with dask.config.set(scheduler="sync"):
        one = sino.compute()
    with dask.config.set(scheduler="threads", num_workers=4):
        many = sino.compute()
    np.testing.assert_array_equal(one, many)


@given(
    n_angles=st.integers(1, 4000),
    height=st.integers(1, 600),
    width=st.integers(1, 3000),
    block=st.integers(1, 2**28),
    chunk=st.integers(1, 2**23),
    source_rows=st.one_of(st.none(), st.integers(1, 64)),
)
def test_plan_band_properties(
    n_angles: int, height: int, width: int, block: int, chunk: int, source_rows: int | None
) -> None:
    chunk_rows, band = plan_band(
        n_angles, height, width, block_bytes=block, chunk_bytes=chunk, source_rows=source_rows
    )
    row = n_angles * width * 4
    assert 1 <= chunk_rows <= height and band % chunk_rows == 0
    assert band >= chunk_rows
    assert chunk_rows == 1 or chunk_rows * row <= chunk  # a chunk fits its budget unless it is one sinogram
    assert band == chunk_rows or band * row <= block  # so does a band, unless it is one chunk
    assert band < height + chunk_rows  # never more than one partial chunk past the detector
