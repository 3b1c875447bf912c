"""Resizing and mask-aware normalization of image stacks against eager scikit-image and numpy."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import torch
from skimage.transform import resize

from graphs.errors import ParameterError
from graphs.images import masked_moments, masked_normalize, normalize_stack, resize_images


def _images(shapes: list[tuple[int, int]], seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for h, w in shapes:
        image = rng.integers(0, 4000, (h, w)).astype(np.uint16)
        image[: h // 4] = 0  # a background band
        out.append(image)
    return out


@pytest.mark.parametrize("size", [(32, 32), (50, 17), (300, 200)])
def test_resize_matches_skimage(size: tuple[int, int]) -> None:
    eager = _images([(64, 64), (100, 37), (45, 80)])
    lazy = resize_images([da.from_array(x, chunks=-1) for x in eager], size).compute()
    assert lazy.shape == (3, *size) and lazy.dtype == np.float32
    for image, got in zip(eager, lazy, strict=True):
        shrink = size[0] < image.shape[0] or size[1] < image.shape[1]
        want = resize(image.astype(np.float32), size, order=1, anti_aliasing=shrink, preserve_range=True)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-3)


def test_resize_is_lazy_and_named() -> None:
    calls = []

    def count(block: np.ndarray) -> np.ndarray:
        calls.append(1)
        return block

    meta = np.empty((0, 0), np.uint16)
    images = [da.from_array(x, chunks=-1).map_blocks(count, meta=meta) for x in _images([(40, 30)] * 2)]
    stack, _, _ = normalize_stack(resize_images(images, (16, 16)))
    names = {str(k[0]).rsplit("-", 1)[0] for k in dict(stack.__dask_graph__())}
    assert {"images-resize", "images-normalize", "images-stats"} <= names
    assert calls == []
    stack.compute()
    assert calls


def test_bad_resize_parameters() -> None:
    image = da.zeros((4, 4), chunks=-1)
    with pytest.raises(ParameterError, match="size"):
        resize_images([image], (0, 4))
    with pytest.raises(ParameterError, match="order"):
        resize_images([image], (4, 4), order=7)
    with pytest.raises(ParameterError, match="one 2-D chunk"):
        resize_images([da.zeros((4, 4), chunks=2)], (4, 4))


def test_masked_normalize_keeps_the_background_and_standardizes_the_foreground() -> None:
    image = _images([(50, 40)])[0].astype(np.float32)
    out = masked_normalize(image)
    foreground = image != 0
    assert (out[~foreground] == 0).all()
    assert abs(out[foreground].mean()) < 1e-5 and abs(out[foreground].std() - 1) < 1e-5
    mean, std = masked_moments(image)
    np.testing.assert_allclose(out[foreground] * std + mean, image[foreground], rtol=1e-5, atol=1e-3)
    tensor = masked_normalize(torch.from_numpy(image))
    assert isinstance(tensor, torch.Tensor)
    np.testing.assert_allclose(tensor.numpy(), out, atol=1e-5)
    assert masked_normalize(torch.zeros(3, 3, dtype=torch.int16)).dtype == torch.float32


@pytest.mark.parametrize("image", [np.zeros((5, 5)), np.full((5, 5), 7.0), np.eye(5) * 3])
def test_flat_or_empty_images_are_not_divided_by_zero(image: np.ndarray) -> None:
    with np.errstate(all="raise"):
        out = masked_normalize(image)
    assert np.isfinite(out).all() and (out == 0).all()


def test_normalize_stack_keeps_statistics_to_undo_it() -> None:
    eager = np.stack([x.astype(np.float32) for x in _images([(30, 30)] * 5, seed=3)])
    normalized, mean, std = (a.compute() for a in normalize_stack(da.from_array(eager, chunks=(2, 30, 30))))
    assert normalized.dtype == mean.dtype == std.dtype == np.float32
    for i, image in enumerate(eager):
        np.testing.assert_allclose(normalized[i], masked_normalize(image), atol=1e-5)
        foreground = image != 0
        np.testing.assert_allclose(normalized[i][foreground] * std[i] + mean[i], image[foreground], rtol=1e-4)
