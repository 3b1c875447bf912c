"""graphs.stripes, stripe_simulation, stripe_pairs: detection against known stripes, seeded simulation, pairs."""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import xarray as xr

from graphs.errors import ParameterError
from graphs.stripe_pairs import (
    detect_sinograms,
    pair_dataset,
    patch_flags,
    patch_grid,
    split_sinograms,
    unpack_detection,
)
from graphs.stripe_simulation import StripeParams, simulate_stripes
from graphs.stripes import DetectParams, detect_stripes
from storage.tomo_synthetic import phantom_projections


def _sinogram(seed: int, n_angles: int = 360, width: int = 200) -> np.ndarray:
    """A noisy phantom sinogram (transmission, ~0.7% photon noise)."""
    t = phantom_projections(np.linspace(0, 180, n_angles), 3, width, seed=seed, n_spheres=8)[:, 1, :]
    counts = 20000 * t
    noise = np.random.default_rng([seed, 1]).standard_normal(t.shape) * np.sqrt(counts)
    return ((counts + noise) / 20000).astype(np.float32)


def _add_stripes(sino: np.ndarray, seed: int, n: int = 3) -> np.ndarray:
    """Full multiplicative stripes of width 2-10 and contrast 2-10% of the local value; their columns."""
    rng = np.random.default_rng([seed, 9])
    truth = np.zeros(sino.shape[1], bool)
    for _ in range(n):
        w = int(rng.integers(2, 11))
        x0 = int(rng.integers(20, sino.shape[1] - w - 20))
        sino[:, x0 : x0 + w] *= 1 + rng.uniform(0.02, 0.1) * rng.choice([-1, 1])
        truth[x0 : x0 + w] = True
    return truth


def test_detection_finds_known_stripes_and_little_else() -> None:
    tp = fp = fn = 0
    for seed in range(8):
        sino = _sinogram(seed)
        truth = _add_stripes(sino, seed)
        found = detect_stripes(sino).any(axis=0)
        tp += int((found & truth).sum())
        fp += int((found & ~truth).sum())
        fn += int((~found & truth).sum())
    assert tp / (tp + fp) >= 0.95 and tp / (tp + fn) >= 0.95, (tp, fp, fn)


def test_dead_hot_and_partial_stripes() -> None:
    sino = _sinogram(1)
    sino[:, 40:43] = 0  # dead
    sino[:, 120] = sino.max()  # hot
    sino[100:300, 160:164] *= 1.08  # partial: 200 of 360 angles
    mask = detect_stripes(sino)
    columns = set(np.flatnonzero(mask.any(axis=0)).tolist())
    assert {40, 41, 42, 120, 160, 161, 162, 163} <= columns
    assert len(columns) <= 10
    rows = np.flatnonzero(mask[:, 161])
    assert 80 <= rows.min() <= 120 and 280 <= rows.max() <= 320  # the partial stripe's angle range


def test_lazy_detection_over_a_stack_equals_numpy() -> None:
    stack = np.stack([_sinogram(s, 120, 64) for s in range(5)])
    stack[:, :, 30:33] *= 1.05
    lazy = xr.DataArray(da.from_array(stack, chunks=(2, 60, 64)), dims=("detector_y", "angle", "detector_x"))
    mask = detect_stripes(lazy, threshold=0.02)
    assert isinstance(mask.data, da.Array) and mask.dims == lazy.dims and mask.dtype == bool
    eager = np.stack([detect_stripes(s, DetectParams(threshold=0.02)) for s in stack])
    np.testing.assert_array_equal(mask.values, eager)
    assert eager[:, :, 30:33].any(axis=(1, 2)).all()  # found in every sinogram


def test_detection_parameters_and_shapes() -> None:
    with pytest.raises(ParameterError, match="2-D"):
        detect_stripes(np.zeros(5))
    with pytest.raises(ParameterError, match="out of range"):
        detect_stripes(np.ones((10, 10)), threshold=0)
    assert not detect_stripes(np.ones((50, 40))).any()  # flat: nothing
    assert detect_stripes(np.zeros((0, 5))).shape == (0, 5)


@pytest.mark.real_data
def test_real_stripe_sinograms(real_data: Path) -> None:
    i12 = np.load(real_data / "sino-larix" / "sino_stripe_i12.npy")
    columns = np.flatnonzero(detect_stripes(i12).any(axis=0))
    assert set(range(198, 206)) <= set(columns.tolist())  # the saturated stripe
    outside = [c for c in columns if not 185 <= c <= 235]  # algotom's large-stripe profile flags 188-234
    assert len(outside) <= 5, columns
    crop = np.load(real_data / "sino-larix" / "sino_stripes_crop3D.npy")
    mask = detect_stripes(xr.DataArray(crop.transpose(1, 0, 2), dims=("detector_y", "angle", "detector_x")))
    columns = np.flatnonzero(mask.values[5].any(axis=0))
    assert set(range(29, 37)) <= set(columns.tolist()) and columns.min() >= 24 and columns.max() <= 43


def test_detection_beats_algotom_on_synthetic_stripes() -> None:
    from algotom.util.utility import detect_stripe

    ours = theirs = 0
    for seed in range(4):
        sino = _sinogram(seed + 20)
        truth = _add_stripes(sino, seed + 20)
        found = detect_stripes(sino).any(axis=0)
        ours += int((found != truth).sum())
        # algotom's large-stripe profile (sorted columns over their median-filtered copy), snr 3
        ordered = np.sort(sino, axis=0)
        from scipy.ndimage import median_filter

        smooth = median_filter(ordered, (1, 51))
        n = len(ordered)
        keep = slice(int(0.05 * n), int(0.95 * n))
        profile = ordered[keep].mean(0) / np.maximum(smooth[keep].mean(0), 1e-6)
        theirs += int((detect_stripe(profile, 3.0).astype(bool) != truth).sum())
    assert ours < theirs


# ------------------------------------------------------------------------------------------ simulation
def test_simulation_is_seeded_per_patch_and_masked() -> None:
    clean = _sinogram(3, 180, 64)
    a = simulate_stripes(clean, 7, (4, 2))
    b = simulate_stripes(clean, 7, (4, 2))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(simulate_stripes(clean, 7, (4, 3))[1], a[1])
    stripe, mask = a
    assert stripe.dtype == np.float32 and mask.dtype == bool
    np.testing.assert_array_equal(stripe[~mask], clean[~mask])  # only masked pixels change
    assert mask.any()


def test_simulated_kinds_widths_and_partial_ranges() -> None:
    clean = np.full((100, 80), 0.5, np.float32)
    clean[0, 0] = 0.9  # the patch's maximum: what a hot stripe takes
    for kind, odds in (("dead", (0, 0, 1, 0)), ("hot", (0, 0, 0, 1)), ("partial", (0, 1, 0, 0))):
        params = StripeParams(count=(1, 1), width=(2, 10), kinds=odds, min_partial=0.3)  # type: ignore[arg-type]
        for ids in range(20):
            stripe, mask = simulate_stripes(clean, 0, (ids,), params)
            columns = np.flatnonzero(mask.any(axis=0))
            assert 2 <= len(columns) <= 10 and np.all(np.diff(columns) == 1)
            rows = np.flatnonzero(mask.any(axis=1))
            if kind == "dead":
                assert (stripe[mask] == 0).all() and len(rows) == 100
            elif kind == "hot":
                assert np.allclose(stripe[mask], 0.9)
            else:
                assert 30 <= len(rows) <= 100 and np.all(np.diff(rows) == 1)  # non-empty, contiguous
    full = StripeParams(count=(2, 2), contrast=(0.05, 0.05), kinds=(1, 0, 0, 0))
    stripe, mask = simulate_stripes(np.ones((50, 200), np.float32), 1, (0,), full)
    assert np.isclose(np.unique(stripe[mask])[:, None], [0.95, 1.05]).any(axis=1).all()
    with pytest.raises(ParameterError, match="width"):
        StripeParams(width=(0, 3))
    with pytest.raises(ParameterError, match="contrast"):
        StripeParams(contrast=(0.2, 0.1))
    assert StripeParams.from_dict(StripeParams().as_dict()) == StripeParams()


# ------------------------------------------------------------------------------------------ pairs
def test_patch_grid_crops_evenly_and_refuses_large_patches() -> None:
    grid = patch_grid(10, 23, (4, 5))
    assert (grid.rows, grid.cols, grid.angle_offset, grid.column_offset) == (2, 4, 1, 1)
    sino = np.arange(230).reshape(10, 23)
    np.testing.assert_array_equal(grid.cut(sino, 5), sino[5:9, 6:11])
    with pytest.raises(ParameterError, match=r"patch 11x5 is larger than the sinograms \(10 angles"):
        patch_grid(10, 23, (11, 5))
    with pytest.raises(ParameterError, match="positive"):
        patch_grid(10, 23, (0, 5))


def test_split_by_sinogram() -> None:
    splits = split_sinograms(20, 0.75, seed=3)
    assert (splits == 0).sum() == 15 and set(splits.tolist()) == {0, 1}
    np.testing.assert_array_equal(splits, split_sinograms(20, 0.75, seed=3))
    with pytest.raises(ParameterError, match="between 0 and 1"):
        split_sinograms(5, 1.2, 0)


def test_pair_graph_is_lazy_and_ordered() -> None:
    rng = np.random.default_rng(0)
    stack = (1 + 0.005 * rng.standard_normal((6, 90, 60))).astype(np.float32)
    stack[:, :, 5:7] *= 1.1  # a real stripe in patch 0 of every sinogram

    def boom(block: np.ndarray) -> np.ndarray:
        raise AssertionError("computed before the write")

    grid = patch_grid(90, 60, (90, 20))
    sinograms = xr.DataArray(da.from_array(stack, chunks=(2, -1, -1)), dims=("detector_y", "angle", "detector_x"))
    detected = detect_sinograms(sinograms).compute()
    assert detected.dtype == np.uint8 and detected.shape == (6, 90, 8)  # 90 angles in bins of 1, 60 bits
    for s in range(6):  # the packed pass equals detection on the whole sinogram
        np.testing.assert_array_equal(unpack_detection(detected[s], 90, 60), detect_stripes(stack[s]))
    real = patch_flags(detected, grid, 90)
    assert real[:, 0].all() and not real[:, 1:].any()
    exploding = sinograms.copy(data=sinograms.data.map_blocks(boom, dtype=np.float32))
    ds = pair_dataset(exploding, detected, grid, seed=1, split=0.5, block_samples=4)
    assert ds.sizes["sample"] == 12 and ds.sizes["real_sample"] == 6
    assert ds.attrs["counts"] == {
        "train": {"samples": 6}, "val": {"samples": 6}, "real_artifacts": {"samples": 6}, "sinograms": 6,
        "patches_per_sinogram": 3,
    }  # fmt: skip
    assert ds.clean.data.chunks[0] == (4, 4, 4)
    np.testing.assert_array_equal(ds.patch.values % 3 != 0, True)
    good = pair_dataset(sinograms, detected, grid, seed=1, split=0.5, block_samples=4, virtual=True)
    assert "stripe" not in good and good.attrs["parameters"]["virtual"]
    s, p = int(good.sinogram[0]), int(good.patch[0])
    np.testing.assert_array_equal(good.clean.values[0], grid.cut(stack[s], p))
    real_masks = good["real_artifacts/mask"].values  # the detected masks, from the detection pass
    ids = zip(good["real_artifacts/sinogram"].values, good["real_artifacts/patch"].values, strict=True)
    for i, (s, p) in enumerate(ids):
        np.testing.assert_array_equal(real_masks[i], grid.cut(detect_stripes(stack[s]), p))
