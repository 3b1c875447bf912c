"""Window labels from picks against a brute-force reference; the seeded choice of negatives."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

from graphs.errors import ParameterError
from graphs.picking import assign_splits, keep_negatives, picking_dataset, positive_windows
from graphs.windows import window_grid


def brute_force(grid, centers, radius, scale=1.0):  # type: ignore[no-untyped-def]
    ys = (np.arange(grid.ny) * grid.stride + grid.size / 2) * scale
    xs = (np.arange(grid.nx) * grid.stride + grid.size / 2) * scale
    cy, cx = np.meshgrid(ys, xs, indexing="ij")
    out = np.zeros(cy.shape, dtype=bool)
    for y, x in centers:
        out |= (cy - y) ** 2 + (cx - x) ** 2 <= radius**2
    return out.reshape(-1)


@settings(max_examples=150, deadline=None)
@given(
    height=st.integers(8, 300),
    width=st.integers(8, 300),
    size=st.integers(2, 64),
    stride=st.integers(1, 64),
    radius=st.floats(0.5, 80),
    scale=st.sampled_from([1.0, 2.0, 3.0]),
    edges=st.sampled_from(["drop", "pad"]),
    data=st.data(),
)
def test_matches_brute_force(height, width, size, stride, radius, scale, edges, data) -> None:  # type: ignore[no-untyped-def]
    size = min(size, height, width)
    grid = window_grid(height, width, size, stride, edges=edges)
    n = data.draw(st.integers(0, 20))
    coordinate = st.floats(-50, 400 * scale, allow_nan=False)
    centers = np.array([[data.draw(coordinate), data.draw(coordinate)] for _ in range(n)]).reshape(-1, 2)
    got = positive_windows(grid, centers, radius, scale=scale)
    np.testing.assert_array_equal(got, brute_force(grid, centers, radius, scale))


def test_a_center_exactly_at_the_radius_counts() -> None:
    grid = window_grid(128, 128, size=64, stride=64)  # centers at 32 and 96
    assert positive_windows(grid, np.array([[32.0, 52.0]]), radius=20).tolist() == [True, False, False, False]
    assert positive_windows(grid, np.array([[32.0, 52.5]]), radius=20).tolist() == [False, False, False, False]


@pytest.mark.parametrize("radius", [0, -1, float("nan"), float("inf")])
def test_bad_radius(radius: float) -> None:
    with pytest.raises(ParameterError, match="radius"):
        positive_windows(window_grid(64, 64, 32), np.zeros((1, 2)), radius)


def test_nan_centers_are_refused() -> None:
    with pytest.raises(ParameterError, match="1 particle centers are NaN"):
        positive_windows(window_grid(64, 64, 32), np.array([[1.0, 2.0], [np.nan, 3.0]]), 5)


@pytest.mark.parametrize("ratio", [0.0, 0.1, 0.3, 0.5, 1.0])
def test_keeps_every_positive_and_that_share_of_negatives(ratio: float) -> None:
    positive = np.random.default_rng(1).random(1000) < 0.2
    keep = keep_negatives(positive, ratio, seed=np.random.SeedSequence([7, 3]))
    assert keep[positive].all()
    assert keep[~positive].sum() == round(ratio * (~positive).sum())


def test_negatives_are_reproducible_and_depend_on_the_seed() -> None:
    positive = np.zeros(500, dtype=bool)
    a = keep_negatives(positive, 0.3, seed=0)
    assert np.array_equal(a, keep_negatives(positive, 0.3, seed=0))
    assert not np.array_equal(a, keep_negatives(positive, 0.3, seed=1))


@pytest.mark.parametrize("ratio", [-0.1, 1.5])
def test_bad_ratio(ratio: float) -> None:
    with pytest.raises(ParameterError, match="between 0 and 1"):
        keep_negatives(np.zeros(3, dtype=bool), ratio, seed=0)


# ------------------------------------------------------------------------------------------ splits
@settings(max_examples=100, deadline=None)
@given(
    n=st.integers(0, 200),
    ratios=st.sampled_from([(0.8, 0.1, 0.1), (1.0, 0.0, 0.0), (0.34, 0.33, 0.33), (0.5, 0.5, 0.0)]),
    seed=st.integers(0, 2**32 - 1),
)
def test_splits_cover_every_image_once_in_rounded_shares(n: int, ratios: tuple[float, ...], seed: int) -> None:
    splits = assign_splits(n, ratios, seed)
    assert splits.shape == (n,) and splits.dtype == np.int8
    counts = np.bincount(splits, minlength=3)
    assert counts.sum() == n
    assert (np.abs(counts - np.asarray(ratios) * n) < 1).all()  # largest-remainder rounding
    np.testing.assert_array_equal(splits, assign_splits(n, ratios, seed))


@pytest.mark.parametrize(
    "ratios, match", [((0.8, 0.1, 0.2), "sum to 1"), ((0.5, 0.5), "3 numbers"), ((1.5, -0.5, 0), "3 numbers")]
)
def test_bad_split_ratios(ratios: tuple[float, ...], match: str) -> None:
    with pytest.raises(ParameterError, match=match):
        assign_splits(10, ratios, 0)


# ------------------------------------------------------------------------------------------ the dataset
def _images(stack: np.ndarray, chunks: tuple[int, int, int]) -> xr.DataArray:
    return xr.DataArray(da.from_array(stack, chunks=chunks), dims=("micrograph", "y", "x"))


@pytest.mark.parametrize("chunks", [(1, 23, 41), (2, 7, 13), (3, 50, 41)])
@pytest.mark.parametrize("block_samples", [1, 7, 64])
@pytest.mark.parametrize("mode", ["materialized", "virtual"])
def test_picking_dataset_matches_eager_selection(
    chunks: tuple[int, int, int], block_samples: int, mode: str
) -> None:
    """The kept windows, labels and splits against a numpy loop over the eager windows, on odd chunks."""
    stack = np.random.default_rng(1).normal(size=(3, 50, 41)).astype("float32")
    centers = [np.array([[12.0, 9.0], [30.0, 30.0]]), None, np.empty((0, 2))]
    ds = picking_dataset(
        _images(stack, chunks),
        centers,
        size=8,
        stride=5,
        radius=4,
        negative_ratio=0.5,
        split=(0.34, 0.33, 0.33),
        seed=2,
        mode=mode,
        block_samples=block_samples,  # type: ignore[arg-type]
    ).compute()
    grid = window_grid(50, 41, 8, 5)
    splits = assign_splits(3, (0.34, 0.33, 0.33), 2)
    expected: dict[str, list[int]] = {k: [] for k in ("source_index", "y0", "x0", "label", "sample_type", "split")}
    for image in np.argsort(splits, kind="stable"):
        picks = centers[image]
        positive = np.zeros(grid.per_image, bool) if picks is None else brute_force(grid, picks, 4)
        keep = keep_negatives(positive, 0.5, np.random.SeedSequence([2, int(image)]))
        for w in np.flatnonzero(keep):
            expected["source_index"].append(int(image))
            expected["y0"].append(int(w // grid.nx) * 5)
            expected["x0"].append(int(w % grid.nx) * 5)
            expected["label"].append(int(positive[w]))
            expected["sample_type"].append(2 if picks is None else int(positive[w]))
            expected["split"].append(int(splits[image]))
    for name, values in expected.items():
        np.testing.assert_array_equal(ds[name].values, values, err_msg=name)
    mean = stack.astype(np.float64).mean(axis=(1, 2), keepdims=True)
    normalized = ((stack - mean) / stack.astype(np.float64).std(axis=(1, 2), keepdims=True)).astype("float32")
    for i, (s, y, x) in enumerate(zip(expected["source_index"], expected["y0"], expected["x0"], strict=True)):
        if mode == "materialized":
            np.testing.assert_allclose(ds.patches.values[i], normalized[s, y : y + 8, x : x + 8], atol=1e-5)
        else:
            assert int(ds.micrograph_index[i]) == s
    if mode == "virtual":
        np.testing.assert_allclose(ds.micrographs.values, normalized, atol=1e-5)
        assert ds.attrs["virtual"]["patches"]["size"] == 8


def test_picking_dataset_is_lazy() -> None:
    calls: list[int] = []

    def count(block: np.ndarray) -> np.ndarray:
        calls.append(1)
        return block

    stack = np.random.default_rng(1).normal(size=(2, 40, 40)).astype("float32")
    meta = np.empty((0, 0, 0), stack.dtype)
    data = da.from_array(stack, chunks=(1, 10, 40)).map_blocks(count, dtype=stack.dtype, meta=meta)
    images = xr.DataArray(data, dims=("micrograph", "y", "x"))
    for mode in ("materialized", "virtual"):
        ds = picking_dataset(
            images, [np.array([[20.0, 20.0]]), None], size=8, stride=4, radius=3, negative_ratio=0.2, mode=mode
        )  # type: ignore[arg-type]
        _ = (ds.attrs["counts"], {k: v.data.chunks for k, v in ds.data_vars.items()})
        assert calls == []
    names = {str(k[0]).rsplit("-", 1)[0] for k in dict(ds.__dask_graph__())}
    assert {"picking-label", "picking-sample_type", "picking-split", "picking-micrograph"} <= names


def test_picking_dataset_bad_input() -> None:
    images = _images(np.zeros((2, 40, 40), "float32"), (1, 40, 40))
    with pytest.raises(ParameterError, match="2 micrographs"):
        picking_dataset(images, [None], size=8, radius=3, negative_ratio=0.2)
    with pytest.raises(ParameterError, match="mode must be"):
        picking_dataset(images, [None, None], size=8, radius=3, negative_ratio=0.2, mode="both")  # type: ignore[arg-type]
    with pytest.raises(ParameterError, match="radius"):
        picking_dataset(images, [None, None], size=8, radius=0, negative_ratio=0.2)
    with pytest.raises(ParameterError, match="NaN"):
        picking_dataset(images, [np.array([[np.nan, 1.0]]), None], size=8, radius=3, negative_ratio=0.2)
