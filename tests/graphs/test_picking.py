"""Window labels from picks against a brute-force reference; the seeded choice of negatives."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from graphs.errors import ParameterError
from graphs.picking import keep_negatives, positive_windows
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
